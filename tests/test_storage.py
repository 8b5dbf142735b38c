"""EasyEdit's on-disk layout: round trips, EasyEdit-built files, atomic writes, safe loads, clear
errors; and a saved directory as one unit: manifest last, lock against a second writer, nothing
stale or half-written loads (staging and foreign files: test_storage_staging.py).

Expectations: files built by hand in EasyEdit's documented format, a real second process holding
the lock, and saves killed half-way by a real second process.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from easyedit_split.errors import StorageError
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.easyedit_layout import intervention_dir
from easyedit_split.storage.files import atomic_torch_save, safe_torch_load
from easyedit_split.storage.units import load_interventions, read_metadata, save_interventions
from easyedit_split.steering import SteeringInterventions
from easyedit_split.storage.units import (
    DirectoryLock, LOCK_FILE, MANIFEST_FILE, METADATA_FILE, SAVE_DELAY_ENV, read_manifest,
)


def _updates(model):
    torch.manual_seed(0)
    updates = {
        0: DynamicWeightUpdate.from_vector(torch.randn(model.config.hidden_size)),
        1: DynamicWeightUpdate.for_model(model, "lora", "mlp_mid", rank=3),
        2: DynamicWeightUpdate.for_model(model, "local_weight", "attn"),
    }
    with torch.no_grad():
        for update in updates.values():
            for p in update.parameters():
                p.normal_()
    return updates


def test_layout_matches_easyedit():
    assert str(intervention_dir("vecs", "psychopathy", "caa")) == os.path.join("vecs", "psychopathy", "caa_vector")
    assert str(intervention_dir("vecs", "psychopathy", "split", "lora")) == os.path.join("vecs", "psychopathy", "spilt_lora")
    assert str(intervention_dir("vecs", None, "reps", "vector")) == os.path.join("vecs", "reps_vector")


def test_round_trip_gives_identical_logits(tiny_model, token_batch, tmp_path):
    updates = _updates(tiny_model)
    save_interventions(tmp_path, updates, {"model": "tiny"})
    loaded = load_interventions(tmp_path, model=tiny_model)
    assert sorted(loaded) == [0, 1, 2]
    assert [loaded[k].method for k in (0, 1, 2)] == ["vector", "lora", "local_weight"]
    with torch.no_grad(), steer(tiny_model, updates, 1.3):
        expected = tiny_model(token_batch).logits
    with torch.no_grad(), steer(tiny_model, loaded, 1.3):
        got = tiny_model(token_batch).logits
    assert torch.equal(expected, got)
    assert read_metadata(tmp_path)["layers"] == [0, 1, 2]


def test_files_hold_easyedit_payloads(tiny_model, tmp_path):
    save_interventions(tmp_path, _updates(tiny_model))
    vector = torch.load(tmp_path / "layer_0.pt", weights_only=True)
    lora = torch.load(tmp_path / "layer_1.pt", weights_only=True)
    local = torch.load(tmp_path / "layer_2.pt", weights_only=True)
    assert vector.shape == (tiny_model.config.hidden_size,)
    assert set(lora) == {"lora_A", "lora_B", "r", "alpha", "intervention_components", "concept_id"}
    assert lora["lora_A"].shape == (tiny_model.config.intermediate_size, 3) and lora["r"] == 3
    assert set(local) == {"weight", "bias", "intervention_components", "concept_id"}
    assert local["intervention_components"] == "attn"


def test_easyedit_built_files_load(tiny_model, tmp_path):
    """Files built by hand in EasyEdit's documented format (stacked vectors, multi-concept dicts)."""
    hidden, inner = tiny_model.config.hidden_size, tiny_model.config.intermediate_size
    stacked = torch.randn(3, hidden)
    torch.save(stacked, tmp_path / "layer_1.pt")
    loaded = load_interventions(tmp_path, layers=[1], concept_id=2, model=tiny_model)
    assert torch.equal(loaded[1].bias, stacked[2])
    multi = {c: {"lora_A": torch.randn(inner, 2), "lora_B": torch.randn(2, hidden), "r": 2, "alpha": 32,
                 "intervention_components": "mlp_mid", "concept_id": c} for c in (0, 1)}
    torch.save(multi, tmp_path / "layer_2.pt")
    lora = load_interventions(tmp_path, layers=[2], concept_id=1, model=tiny_model)[2]
    assert torch.equal(lora.lora_A, multi[1]["lora_A"]) and lora.component == "mlp_mid"
    with pytest.raises(StorageError, match="concept_id 5"):
        load_interventions(tmp_path, layers=[2], concept_id=5)


def test_concept_updates_stack_like_easyedit(tiny_model, tmp_path):
    hidden = tiny_model.config.hidden_size
    concepts = {}
    for concept in (0, 1):  # one concept at a time, as a multi-concept run saves them
        concepts[concept] = DynamicWeightUpdate.from_vector(torch.full((hidden,), float(concept + 1)))
        save_interventions(tmp_path, {3: dict(concepts)})
    stacked = torch.load(tmp_path / "layer_3.pt", weights_only=True)
    assert stacked.shape == (2, hidden) and stacked[1, 0].item() == 2.0


def test_wrong_shape_and_model_are_clear_errors(tiny_model, tmp_path):
    torch.save(torch.randn(tiny_model.config.hidden_size + 1), tmp_path / "layer_0.pt")
    with pytest.raises(StorageError, match="hidden size"):
        load_interventions(tmp_path, model=tiny_model)
    other = tmp_path / "other"
    save_interventions(other, {0: DynamicWeightUpdate.from_vector(torch.zeros(tiny_model.config.hidden_size))},
                       {"hidden_size": 4096, "model": "big"})
    with pytest.raises(StorageError, match="4096"):
        load_interventions(other, model=tiny_model)
    with pytest.raises(StorageError, match="missing"):
        load_interventions(tmp_path, layers=[7])


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "layer_0.pt", "wb") as handle:
        pickle.dump(Evil(), handle)
    with pytest.raises(StorageError, match="weights-only"):
        safe_torch_load(tmp_path / "layer_0.pt")
    assert not (tmp_path / "pwned").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "layer_0.pt"
    atomic_torch_save(torch.ones(3), path)

    def broken_save(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(torch.zeros(3), path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True), torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["layer_0.pt"]


REPO = Path(__file__).resolve().parents[1]
HIDDEN = 32


def _vec(seed: int) -> DynamicWeightUpdate:
    return DynamicWeightUpdate.from_vector(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)))


def test_second_save_replaces_the_first_instead_of_mixing(tmp_path):
    """Saving layer 14 and then layer 15 into one directory holds layer 15 only (it used to steer both)."""
    save_interventions(tmp_path, {14: _vec(0)})
    save_interventions(tmp_path, {15: _vec(1)})
    assert sorted(load_interventions(tmp_path)) == [15]
    assert not (tmp_path / "layer_14.pt").exists()
    manifest = read_manifest(tmp_path)
    assert manifest["complete"] and manifest["layers"] == [15] and manifest["n_concepts"] == 1
    assert set(manifest["files"]) == {"layer_15.pt", METADATA_FILE}


def test_unlisted_layer_file_is_an_error_naming_the_directory(tmp_path):
    save_interventions(tmp_path, {15: _vec(0)})
    torch.save(torch.randn(HIDDEN), tmp_path / "layer_3.pt")
    with pytest.raises(StorageError, match=r"layer_3\.pt not listed in manifest\.json") as info:
        load_interventions(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_file_changed_after_saving_is_refused(tmp_path):
    save_interventions(tmp_path, {1: _vec(0)})
    data = bytearray((tmp_path / "layer_1.pt").read_bytes())
    start = bytes(data).index(_vec(0).bias.detach().numpy().tobytes())
    data[start] ^= 0xFF  # one byte of the vector: same size, other values
    (tmp_path / "layer_1.pt").write_bytes(bytes(data))
    with pytest.raises(StorageError, match="SHA-256"):
        load_interventions(tmp_path)


def test_our_directory_without_manifest_is_refused_unless_allowed(tmp_path):
    save_interventions(tmp_path, {1: _vec(0)})
    (tmp_path / MANIFEST_FILE).unlink()
    with pytest.raises(StorageError, match="no manifest.json") as info:
        load_interventions(tmp_path)
    assert "allow_unmanifested=True" in str(info.value) and str(tmp_path) in str(info.value)
    loaded = SteeringInterventions.load(tmp_path, allow_unmanifested=True)
    assert torch.equal(loaded[1].bias, _vec(0).bias)


def test_easyedit_directories_need_no_manifest(tmp_path):
    """EasyEdit writes layer files only; such a directory loads by its file names."""
    torch.save(_vec(3).bias, tmp_path / "layer_2.pt")
    (tmp_path / ".layer_5.pt.xyz.tmp").write_bytes(b"garbage")  # a stale temporary is ignored
    assert torch.equal(load_interventions(tmp_path)[2].bias, _vec(3).bias)


def test_layer_minus_one_names_its_directory(tmp_path):
    torch.save(torch.randn(HIDDEN), tmp_path / "layer_-1.pt")
    with pytest.raises(StorageError, match=r"layer_-1\.pt.*layer_<L>\.pt") as info:
        load_interventions(tmp_path)
    assert str(info.value).startswith(str(tmp_path))


@pytest.mark.parametrize("payload, key", [
    (torch.tensor([1.0, float("nan")] + [0.0] * (HIDDEN - 2)), "vector"),
    (torch.tensor([float("inf")] + [0.0] * (HIDDEN - 1)), "vector"),
    ({"lora_A": torch.full((48, 2), float("nan")), "lora_B": torch.randn(2, HIDDEN)}, "lora_A"),
    ({"weight": torch.randn(48, HIDDEN), "bias": torch.full((HIDDEN,), float("-inf"))}, "bias"),
])
def test_non_finite_values_are_refused_naming_the_file(tmp_path, payload, key):
    torch.save(payload, tmp_path / "layer_1.pt")
    with pytest.raises(StorageError, match=f"'{key}' holds .* non-finite") as info:
        load_interventions(tmp_path)
    assert str(tmp_path / "layer_1.pt") in str(info.value)


def test_lora_with_disagreeing_ranks_names_the_file(tmp_path):
    torch.save({"lora_A": torch.randn(48, 2), "lora_B": torch.randn(3, HIDDEN)}, tmp_path / "layer_1.pt")
    with pytest.raises(StorageError, match="lora_A") as info:
        load_interventions(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "layer_1.pt"))


def test_unrecognised_dict_payload_names_the_file_and_keys(tmp_path):
    torch.save({"vector": torch.randn(HIDDEN)}, tmp_path / "layer_1.pt")
    with pytest.raises(StorageError, match=r"unrecognised intervention payload \(a dict with keys \['vector'\]\)") as info:
        load_interventions(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "layer_1.pt"))


def test_pickle_refusal_says_why_and_never_suggests_unsafe_loading(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save(Evil(), tmp_path / "layer_1.pt")
    with pytest.raises(StorageError) as info:
        safe_torch_load(tmp_path / "layer_1.pt")
    message = str(info.value)
    assert "refused" in message and "carries pickled code" in message and "system" in message
    assert str(tmp_path / "layer_1.pt") in message
    assert "weights_only=False" not in message and "likely succeed" not in message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_interventions(tmp_path / "out", {1: _vec(0)})
    finally:
        os.umask(old)
    for name in ("layer_1.pt", METADATA_FILE, MANIFEST_FILE):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath(LOCK_FILE).write_text(f"{holder.pid} host\n")
        with pytest.raises(StorageError, match=rf"another process \(pid {holder.pid}\) is writing") as info:
            save_interventions(tmp_path, {1: _vec(0)})
        assert str(tmp_path) in str(info.value)
        assert not (tmp_path / "layer_1.pt").exists()
        with pytest.raises(StorageError, match="still writing"):  # nor does a reader take it half-way
            load_interventions(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    save_interventions(tmp_path, {1: _vec(0)})  # the holder is gone: its lock is stale and taken over
    assert not (tmp_path / LOCK_FILE).exists()
    assert sorted(load_interventions(tmp_path)) == [1]


@pytest.mark.slow
def test_two_concurrent_trainings_into_one_directory(tmp_path):
    """The second `train_and_save` into a locked directory fails before training anything (no model is even needed)."""
    with DirectoryLock(tmp_path / "run"):
        script = ("import sys; from easyedit_split.hparams import load_hparams; "
                  "from easyedit_split.producing import train_and_save; "
                  "from easyedit_split.errors import StorageError\n"
                  "try:\n    train_and_save(load_hparams({'alg_name': 'caa', 'layers': [1]}), [], None, None, sys.argv[1])\n"
                  "except StorageError as e:\n    print(e); sys.exit(3)\n")
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert result.returncode == 3, result.stderr
        assert f"another process (pid {os.getpid()})" in result.stdout and str(tmp_path / "run") in result.stdout
    assert not (tmp_path / "run").joinpath(LOCK_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_lock_is_reentrant_and_released(tmp_path):
    with DirectoryLock(tmp_path):
        save_interventions(tmp_path, {1: _vec(0)})  # the save takes the same lock again
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


_SAVER = """
import sys, torch
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.storage import save_interventions
save_interventions(sys.argv[1], {layer: DynamicWeightUpdate.from_vector(torch.ones(32) * layer) for layer in range(30)})
"""


def _kill_mid_save(directory: Path) -> None:
    """Kill a real saver (SIGKILL, no cleanup) once it has staged 3 of its 30 layer files."""
    env = {**os.environ, "PYTHONPATH": str(REPO), SAVE_DELAY_ENV: "0.2"}
    directory.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", _SAVER, str(directory)], env=env)
    deadline = time.monotonic() + 120
    while len(list(directory.parent.glob(f".{directory.name}.staging-*/layer_*.pt"))) < 3:
        assert time.monotonic() < deadline and process.poll() is None, "the saver ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_a_directory_killed_while_saving_never_loads(tmp_path):
    directory = tmp_path / "caa_vector"
    _kill_mid_save(directory)
    assert not list(directory.glob("layer_*.pt")) and not (directory / MANIFEST_FILE).exists()  # all staged beside
    with pytest.raises(StorageError, match="interrupted") as info:
        load_interventions(directory)
    assert str(directory) in str(info.value)
    with pytest.raises(StorageError):
        load_interventions(directory, allow_unmanifested=True)
    # the CLI refuses it too, with a one-line error and no traceback
    result = subprocess.run([sys.executable, "-m", "easyedit_split.cli", "generate", "--vectors", str(directory),
                             "--prompt", "hi"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(directory) in result.stderr
    # a new save takes over the dead writer's lock, removes its staging directory and completes the unit
    save_interventions(directory, {4: _vec(0)})
    assert sorted(load_interventions(directory)) == [4]
    assert not list(tmp_path.glob(".caa_vector.*")) and not (directory / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_killed_resave_of_a_good_directory_leaves_it_loadable(tmp_path):
    """The new unit is staged beside the directory: a kill before the swap leaves the old one whole."""
    directory = tmp_path / "caa_vector"
    save_interventions(directory, {0: _vec(0)})
    _kill_mid_save(directory)
    assert sorted(load_interventions(directory)) == [0]
    assert torch.equal(load_interventions(directory)[0].bias, _vec(0).bias)
    save_interventions(directory, {4: _vec(0)})
    assert sorted(load_interventions(directory)) == [4] and not list(tmp_path.glob(".caa_vector.*"))


def test_multi_concept_save_and_load_round_trip(tmp_path):
    concepts = {0: {1: _vec(0)}, 3: {1: _vec(3)}}
    SteeringInterventions(concepts[0], concepts, 0).save(tmp_path)
    assert read_manifest(tmp_path)["n_concepts"] == 4  # stacked rows 0..3
    assert torch.equal(SteeringInterventions.load(tmp_path, concept_id=3)[1].bias, _vec(3).bias)
    with pytest.raises(StorageError, match="concept_id 7"):
        SteeringInterventions.load(tmp_path, concept_id=7)


def test_refused_pickle_kept_out_of_pickle_module_errors(tmp_path):
    (tmp_path / "layer_1.pt").write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(StorageError, match="truncated") as info:
        load_interventions(tmp_path)
    assert str(tmp_path / "layer_1.pt") in str(info.value)


def test_ctrl_c_during_multi_concept_training_leaves_a_loadable_unit_and_resumes(tmp_path, monkeypatch):
    """Interrupted in concept 1: the lock is released, concept 0 loads, and a rerun trains only 1 and 2."""
    from easyedit_split import training
    from easyedit_split.producing import train_and_save

    from test_training import LAYER, WordTokenizer, make_hparams, word_pairs
    from conftest import build_tiny_model

    model = build_tiny_model("llama")
    pairs = word_pairs(4, 0) + word_pairs(4, 1) + word_pairs(4, 2)
    hparams = make_hparams(n_epochs=1)
    out = tmp_path / "spilt_vector"
    real = training.train_layer
    trained: list[int] = []

    def interrupted(*args, **kwargs):
        if kwargs["concept_id"] == 1:
            raise KeyboardInterrupt
        trained.append(kwargs["concept_id"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_and_save(hparams, pairs, model, WordTokenizer(), out, progress=False)
    assert not (out / LOCK_FILE).exists()
    assert read_manifest(out)["complete"] and read_manifest(out)["n_concepts"] == 1
    assert sorted(load_interventions(out, concept_id=0)) == [LAYER]
    monkeypatch.setattr(training, "train_layer", lambda *a, **k: (trained.append(k["concept_id"]), real(*a, **k))[1])
    train_and_save(hparams, pairs, model, WordTokenizer(), out, progress=False)
    assert trained == [0, 1, 2]
    assert read_manifest(out)["n_concepts"] == 3
    assert sorted(load_interventions(out, concept_id=2)) == [LAYER]
