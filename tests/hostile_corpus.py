"""A generated corpus of hostile inputs: intervention directories, datasets, hparams files, arguments.

`build_corpus(root, hidden, n_layers, inner)` writes every case under `root` and returns them as
`Case`s: which CLI command reads the input, the argument list, and a string the error must
contain (the file or directory at fault). Payload cases are generated as the product of payload
forms (vector, stacked vectors, LoRA, local weight, multi-concept dicts) and corruptions (nan,
+inf, -inf, integer/bool/complex dtypes, wrong widths, extra dimensions, empty tensors), then
file-level corruptions (truncation, zero bytes, text, pickles with code or foreign classes) and
directory-level ones (manifest missing/incomplete/stale, unlisted or misnamed layer files, a live
lock). The tests feed each through `python -m easyedit_split.cli`; they never list the cases.

Run as a script to write the corpus somewhere and print it: `python tests/hostile_corpus.py DIR`.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.storage.units import LOCK_FILE, MANIFEST_FILE, METADATA_FILE, save_interventions


@dataclass
class Case:
    name: str
    command: str  # "generate", "evaluate" or "train"
    args: list[str]
    names: str  # the error message must contain this (the file or directory at fault)
    inputs: list[Path] = field(default_factory=list)


class _Evil:
    """Unpickling this runs a shell command: the loader must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Foreign:
    """A harmless class that is still not a tensor: refused as well."""


# ----------------------------------------------------------------------------- payload forms


def _forms(hidden: int, inner: int) -> dict[str, Callable[[Callable[[torch.Tensor], torch.Tensor]], Any]]:
    """Payload forms; each takes a corruption applied to one of its tensors."""
    def vec(c):
        return c(torch.randn(hidden))

    def stacked(c):
        return c(torch.randn(3, hidden))

    def lora_a(c):
        return {"lora_A": c(torch.randn(inner, 2)), "lora_B": torch.randn(2, hidden), "r": 2, "alpha": 2,
                "intervention_components": "mlp_mid", "concept_id": 0}

    def lora_b(c):
        return {"lora_A": torch.randn(inner, 2), "lora_B": c(torch.randn(2, hidden)), "r": 2, "alpha": 2,
                "intervention_components": "mlp_mid", "concept_id": 0}

    def weight(c):
        return {"weight": c(torch.randn(inner, hidden)), "bias": torch.randn(hidden),
                "intervention_components": "mlp_mid", "concept_id": 0}

    def bias(c):
        return {"weight": torch.randn(inner, hidden), "bias": c(torch.randn(hidden)),
                "intervention_components": "mlp_mid", "concept_id": 0}

    def multi_lora(c):
        return {0: lora_a(c)}

    return {"vector": vec, "stacked": stacked, "lora_A": lora_a, "lora_B": lora_b, "weight": weight, "bias": bias,
            "multi_lora": multi_lora}


def _set_first(value: float):
    def corrupt(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[0] = value
        return t
    return corrupt


CORRUPTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nan": _set_first(float("nan")),
    "posinf": _set_first(float("inf")),
    "neginf": _set_first(float("-inf")),
    "int32": lambda t: (t * 10).to(torch.int32),
    "int64": lambda t: (t * 10).to(torch.int64),
    "bool": lambda t: t > 0,
    "complex": lambda t: t.to(torch.complex64),
    "wider": lambda t: torch.cat([t, t[..., :1]], dim=-1),
    "extra_dim": lambda t: t.unsqueeze(0).unsqueeze(0),
    "empty": lambda t: t[..., :0],
}


# ----------------------------------------------------------------------------- writers


def _valid_dir(directory: Path, hidden: int, layers: tuple[int, ...] = (1,)) -> Path:
    """A correct directory of ours (manifest and all), for the directory-level corruptions."""
    torch.manual_seed(0)
    save_interventions(directory, {layer: DynamicWeightUpdate.from_vector(torch.randn(hidden)) for layer in layers})
    return directory


def _easyedit_dir(directory: Path, payload: Any, name: str = "layer_1.pt", save: Callable = torch.save) -> Path:
    """An EasyEdit-style directory (layer files only, no metadata, no manifest) holding `payload`."""
    directory.mkdir(parents=True)
    save(payload, directory / name)
    return directory


def _vector_cases(root: Path, hidden: int, inner: int, n_layers: int) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, directory: Path, names: Any = None) -> None:
        target = str(names if names is not None else directory)
        cases.append(Case(f"generate:{name}", "generate", ["--vectors", str(directory)], target, [directory]))
        cases.append(Case(f"evaluate:{name}", "evaluate", [str(directory)], target, [directory]))

    for form_name, form in _forms(hidden, inner).items():
        for corruption_name, corruption in CORRUPTIONS.items():
            directory = root / "payload" / f"{form_name}-{corruption_name}"
            _easyedit_dir(directory, form(corruption))
            add(f"{form_name}-{corruption_name}", directory, directory / "layer_1.pt")

    # file-level corruptions of a valid EasyEdit file
    good = torch.randn(hidden)
    marker = root / "PWNED"
    file_cases: dict[str, Callable[[Path], None]] = {
        "truncated": lambda p: (torch.save(good, p), p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        "zero_bytes": lambda p: p.write_bytes(b""),
        "text": lambda p: p.write_text("not a tensor\n"),
        "pickle_code": lambda p: p.write_bytes(pickle.dumps(_Evil(marker))),
        "torch_pickle_code": lambda p: torch.save(_Evil(marker), p),
        "pickle_foreign": lambda p: torch.save({"vector": _Foreign()}, p),
        "dict_vector_key": lambda p: torch.save({"vector": good}, p),
        "dict_empty": lambda p: torch.save({}, p),
        "list_payload": lambda p: torch.save([good], p),
        "number_payload": lambda p: torch.save(3.0, p),
        "lora_rank_mismatch": lambda p: torch.save({"lora_A": torch.randn(inner, 2), "lora_B": torch.randn(3, hidden)}, p),
        "lora_missing_B": lambda p: torch.save({"lora_A": torch.randn(inner, 2)}, p),
        "lora_string_A": lambda p: torch.save({"lora_A": "x", "lora_B": torch.randn(2, hidden)}, p),
        "weight_1d": lambda p: torch.save({"weight": torch.randn(hidden)}, p),
        "weight_wrong_input": lambda p: torch.save({"weight": torch.randn(inner + 1, hidden), "bias": torch.randn(hidden)}, p),
        "directory_as_file": lambda p: p.mkdir(),
    }
    for name, write in file_cases.items():
        directory = root / "file" / name
        directory.mkdir(parents=True)
        write(directory / "layer_1.pt")
        add(name, directory, directory / "layer_1.pt")

    # names
    for name in ("layer_-1.pt", "layer_x.pt", "layer_1.5.pt", f"layer_{n_layers + 5}.pt", "layer_99999999999999999999.pt"):
        directory = _easyedit_dir(root / "name" / name.replace(".", "_"), torch.randn(hidden), name=name)
        add(f"name-{name}", directory)
    empty = root / "name" / "no_layer_files"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("hello\n")
    add("no_layer_files", empty)

    # directory-level: our directories that are not one complete unit
    def ours(name: str) -> Path:
        return _valid_dir(root / "dir" / name, hidden)

    d = ours("manifest_missing"); (d / MANIFEST_FILE).unlink(); add("manifest_missing", d)
    d = ours("manifest_incomplete")
    (d / MANIFEST_FILE).write_text(json.dumps({"format": "easyedit_split.manifest", "version": 1, "complete": False}))
    add("manifest_incomplete", d)
    d = ours("manifest_malformed"); (d / MANIFEST_FILE).write_text("{not json"); add("manifest_malformed", d, d / MANIFEST_FILE)
    d = ours("manifest_list"); (d / MANIFEST_FILE).write_text("[1, 2]"); add("manifest_list", d, d / MANIFEST_FILE)
    d = ours("manifest_foreign"); (d / MANIFEST_FILE).write_text('{"files": {}}'); add("manifest_foreign", d, d / MANIFEST_FILE)
    d = ours("unlisted_layer"); torch.save(torch.randn(hidden), d / "layer_0.pt"); add("unlisted_layer", d)
    d = ours("listed_missing"); (d / "layer_1.pt").unlink(); add("listed_missing", d, d / "layer_1.pt")
    d = ours("swapped_after_save"); torch.save(torch.randn(hidden + 0) * 3, d / "layer_1.pt")
    with open(d / "layer_1.pt", "ab") as handle:
        handle.write(b"\0" * 7)
    add("swapped_after_save", d, d / "layer_1.pt")
    d = ours("live_lock"); (d / LOCK_FILE).write_text("1 elsewhere\n"); add("live_lock", d)  # pid 1 always runs
    d = ours("metadata_malformed"); (d / METADATA_FILE).write_text("{oops")
    add("metadata_malformed", d, d / METADATA_FILE)
    d = ours("metadata_other_model"); meta = json.loads((d / METADATA_FILE).read_text())
    meta["hidden_size"] = hidden * 4
    save_interventions(d, {1: DynamicWeightUpdate.from_vector(torch.randn(hidden))}, meta)
    add("metadata_other_model", d)
    d = root / "dir" / "half_written"  # what a killed save leaves: layer files, a temporary, a dead lock
    d.mkdir(parents=True)
    for layer in range(2):
        torch.save(torch.randn(hidden), d / f"layer_{layer}.pt")
    (d / ".layer_2.pt.abc.tmp").write_bytes(b"PK\x03")
    (d / LOCK_FILE).write_text("999999999 elsewhere\n")
    add("half_written", d)
    add("missing_directory", root / "dir" / "does_not_exist")
    return cases


def _dataset_cases(root: Path, model_dir: Path, hparams_ok: Path) -> list[Case]:
    cases: list[Case] = []
    rows = {  # steer_eval layout: it has a concept_id column
        "negative_concept": [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": -1}],
        "huge_concept": [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 10 ** 12}]
        + [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 0}] * 3,
        "large_concept": [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 100_000}]
        + [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 0}] * 3,
        "float_concept": [{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 1.5}],
        "missing_field": [{"question": "q", "matching": "a"}],
        "empty_field": [{"question": "", "matching": "a", "not_matching": "b"}],
        "number_field": [{"question": 3, "matching": "a", "not_matching": "b"}],
    }
    out = root / "train_out"
    for name, records in rows.items():
        path = root / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        cases.append(Case(f"train:{name}", "train", ["--hparams", str(hparams_ok), "--dataset", str(path),
                                                      "--output-dir", str(out)], str(path), [path]))
    for name, text in {"malformed_json": "{\"question\": \n", "not_objects": "[1, 2]\n", "empty": ""}.items():
        path = root / "data" / f"{name}.jsonl"
        path.write_text(text)
        cases.append(Case(f"train:{name}", "train", ["--hparams", str(hparams_ok), "--dataset", str(path),
                                                      "--output-dir", str(out)], str(path), [path]))
    # bounds and encodings (issue 21): a row past data.MAX_ROW_BYTES, invalid UTF-8, a concept id that overflows
    raw_cases: dict[str, bytes] = {
        "huge_row": (json.dumps({"question": "q", "matching": "x" * (2 << 20), "not_matching": "b"}) + "\n").encode(),
        "invalid_utf8": b'{"question": "caf\xe9", "matching": "a", "not_matching": "b"}\n',
        "invalid_utf8_second_line": b'{"question": "q", "matching": "a", "not_matching": "b"}\n\xff\xfe\n',
        "concept_overflow": b'{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": 1e999}\n',
        "concept_bigint": b'{"question": "q", "pos_answer": "a", "neg_answer": "b", "concept_id": ' + b"9" * 400 + b"}\n",
        "deep_nesting": b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    }
    for name, raw in raw_cases.items():
        path = root / "data" / f"{name}.jsonl"
        path.write_bytes(raw)
        cases.append(Case(f"train:{name}", "train", ["--hparams", str(hparams_ok), "--dataset", str(path),
                                                      "--output-dir", str(out)], str(path), [path]))
    csv_path = root / "data" / "invalid_utf8.csv"
    csv_path.write_bytes(b"question,matching,not_matching\nq,a,b\ncaf\xe9,a,b\n")
    cases.append(Case("train:invalid_utf8_csv", "train", ["--hparams", str(hparams_ok), "--dataset", str(csv_path),
                                                          "--output-dir", str(out)], str(csv_path), [csv_path]))
    # a dataset whose name escapes the output directory: `some/dir/sub/..` is named '..'
    escape = root / "data" / "some" / "dir" / "sub"
    escape.mkdir(parents=True)
    (escape.parent / "train.jsonl").write_text(json.dumps({"question": "q", "matching": "a", "not_matching": "b"}) + "\n")
    cases.append(Case("train:escaping_name", "train", ["--hparams", str(hparams_ok), "--dataset", f"{escape}/..",
                                                        "--output-dir", str(out)], str(out), [escape.parent]))
    return cases


def _hparams_cases(root: Path, n_layers: int, dataset: Path) -> list[Case]:
    cases: list[Case] = []
    base = {"alg_name": "caa", "layers": [1]}
    variants: dict[str, Any] = {
        "layer_out_of_range": {**base, "layers": [n_layers + 3]},
        "layer_negative": {**base, "layers": [-1]},
        "unknown_key": {**base, "layerz": [1]},
        "wrong_type": {**base, "layers": "one"},
        "sft_nan_factor": {"alg_name": "sft", "layers": [1], "steering_factors": [float("nan")]},
        "sft_inf_lr": {"alg_name": "sft", "layers": [1], "lr": float("inf")},
        "not_a_mapping": [1, 2, 3],
    }
    import yaml

    out = root / "train_out"
    for name, data in variants.items():
        path = root / "hparams" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        cases.append(Case(f"train-hparams:{name}", "train", ["--hparams", str(path), "--dataset", str(dataset),
                                                             "--output-dir", str(out)], str(path), [path]))
    bomb = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    missing_weights = root / "no_such_weights.safetensors"
    bounded: dict[str, str] = {  # issue 21: alias bombs, non-finite and overflowing numbers, a missing override
        "alias_bomb": "alg_name: caa\nlayers: [1]\n" + "\n".join(bomb) + "\n",
        "inf_memory": "alg_name: sft\nlayers: [1]\nfast_path_memory_mb: .inf\n",
        "overflow_memory": "alg_name: sft\nlayers: [1]\nfast_path_memory_mb: 1e999\n",
        "bigint_layer": "alg_name: caa\nlayers: [" + "9" * 40 + "]\n",
        "bigint_lr": "alg_name: sft\nlayers: [1]\nlr: " + "9" * 400 + "\n",
        "nan_seed": "alg_name: caa\nlayers: [1]\nseed: .nan\n",
        "missing_override": f"alg_name: caa\nlayers: [1]\noverride_model_weights_path: {missing_weights}\n",
        "latin1": "alg_name: caa\nsystem_prompt: caf\udce9\n",
        "huge_value": "alg_name: caa\nlayers: [1]\nsteer_positions: " + "y" * 200_000 + "\n",
    }
    for name, text in bounded.items():
        path = root / "hparams" / f"{name}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        names = str(missing_weights) if name == "missing_override" else str(path)
        cases.append(Case(f"train-hparams:{name}", "train", ["--hparams", str(path), "--dataset", str(dataset),
                                                             "--output-dir", str(out)], names, [path]))
    cases.append(Case("train-flags:inf_memory", "train", ["--hparams", str(root / "hparams" / "ok.yaml"), "--dataset",
                                                          str(dataset), "--output-dir", str(out),
                                                          "--fast-path-memory-mb=inf"], "--fast-path-memory-mb"))
    for name, text in {"malformed_yaml": "alg_name: caa\nlayers: [1\n", "yaml_nan": "alg_name: sft\nlayers: [1]\nsteering_factors: [.nan]\n",
                       "binary": "\x00\x01\x02"}.items():
        path = root / "hparams" / f"{name}.yaml"
        path.write_text(text)
        cases.append(Case(f"train-hparams:{name}", "train", ["--hparams", str(path), "--dataset", str(dataset),
                                                             "--output-dir", str(out)], str(path), [path]))
    # output locations that cannot be written: under a regular file
    blocker = root / "a_file"
    blocker.write_text("x")
    ok = root / "hparams" / "ok.yaml"
    cases.append(Case("train:output_under_file", "train", ["--hparams", str(ok), "--dataset", str(dataset),
                                                         "--output-dir", str(blocker / "out")], str(blocker), [blocker]))
    # apply files for evaluate: non-finite multipliers, layers outside the model
    good_vectors = root / "good_vectors"
    for name, data in {"apply_nan_multiplier": {"alg_name": "caa", "layers": [1], "multipliers": [float("nan")],
                                                "steer_vector_load_dir": str(good_vectors)},
                       "apply_layer_out_of_range": {"alg_name": "caa", "layers": [n_layers + 3], "multipliers": [1.0],
                                                    "steer_vector_load_dir": str(good_vectors)},
                       "apply_concept_overflow": {"alg_name": "caa", "layers": [1], "multipliers": [1.0],
                                                  "concept_id": 10 ** 30, "steer_vector_load_dir": str(good_vectors)},
                       "apply_huge_multiplier": {"alg_name": "caa", "layers": [1], "multipliers": [float("inf")],
                                                 "steer_vector_load_dir": str(good_vectors)},
                       "apply_missing_override": {"alg_name": "caa", "layers": [1], "multipliers": [1.0],
                                                  "override_model_weights_path": str(root / "no_such_weights.pt"),
                                                  "steer_vector_load_dir": str(good_vectors)}}.items():
        path = root / "hparams" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        names = str(root / "no_such_weights.pt") if name == "apply_missing_override" else str(path)
        cases.append(Case(f"evaluate-hparams:{name}", "evaluate", ["--hparams", str(path)], names, [path]))
    return cases


def build_corpus(root: Path, hidden: int, n_layers: int, inner: int, model_dir: Path) -> list[Case]:
    """Write the corpus under `root` (plus a valid dataset, apply directory and hparams file it needs)."""
    root.mkdir(parents=True, exist_ok=True)
    dataset = root / "good_data.jsonl"
    dataset.write_text("".join(json.dumps({"question": f"q{i}", "matching": "yes", "not_matching": "no"}) + "\n"
                               for i in range(4)))
    _valid_dir(root / "good_vectors", hidden)
    hparams_ok = root / "hparams" / "ok.yaml"
    hparams_ok.parent.mkdir(parents=True, exist_ok=True)
    hparams_ok.write_text("alg_name: caa\nlayers: [1]\n")
    cases = _vector_cases(root, hidden, inner, n_layers)
    cases += _dataset_cases(root, model_dir, hparams_ok)
    cases += _hparams_cases(root, n_layers, dataset)
    for name, value in {"nan": "nan", "inf": "inf", "empty": "", "neg_inf_range": "-inf:0:1", "zero_step": "0:2:0",
                        "word": "two", "overflow": "1e999", "huge": "1e300", "endless_range": "-1e6:1e6:1e-6"}.items():
        cases.append(Case(f"generate-multipliers:{name}", "generate",
                          ["--vectors", str(root / "good_vectors"), f"--multipliers={value}"], "multipliers"))
        cases.append(Case(f"evaluate-multipliers:{name}", "evaluate",
                          [str(root / "good_vectors"), f"--multipliers={value}"], "multipliers"))
    for flag, value in {"--concept-id": "1e999", "--fast-path-memory-mb": "nan", "--max-examples": "0",
                        "--bootstrap": "1e999", "--seed": "-1"}.items():
        cases.append(Case(f"evaluate-flags:{flag.lstrip('-')}", "evaluate", [str(root / "good_vectors"), f"{flag}={value}"],
                          flag))
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus")
    for case in build_corpus(target, hidden=32, n_layers=4, inner=48, model_dir=Path("-")):
        print(case.command, *case.args)
