"""A multi-concept run resumed with other settings, data, model or code refuses, naming what differs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import build_tiny_model
from test_training import LAYER, WordTokenizer, make_hparams, word_pairs
from easyedit_split import training
from easyedit_split.producing import FINGERPRINT_KEY, ResumeMismatchError, train_and_save
from easyedit_split.storage.files import safe_torch_load


def pairs3():
    return word_pairs(4, 0) + word_pairs(4, 1) + word_pairs(4, 2)


def interrupted_run(tmp_path, monkeypatch, hp, model, pairs):
    """Train concept 0, crash in concept 1: a resumable directory holding one finished concept."""
    out = tmp_path / "spilt_vector"
    real = training.train_layer

    def crash(*args, **kwargs):
        if kwargs["concept_id"] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_layer", crash)
    with pytest.raises(KeyboardInterrupt):
        train_and_save(hp, pairs, model, WordTokenizer(), out, progress=False)
    monkeypatch.setattr(training, "train_layer", real)
    return out


def test_a_changed_lr_is_refused_by_name_and_nothing_is_rewritten(tmp_path, monkeypatch):
    model = build_tiny_model("llama")
    out = interrupted_run(tmp_path, monkeypatch, make_hparams(n_epochs=1, lr=0.08), model, pairs3())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ResumeMismatchError) as info:
        train_and_save(make_hparams(n_epochs=1, lr=0.01), pairs3(), model, WordTokenizer(), out, progress=False)
    message = str(info.value)
    assert "hparams.lr: 0.08 -> 0.01" in message and str(out) in message and "new output directory" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in before} == before
    assert json.loads((out / "metadata.json").read_text())["hparams"]["lr"] == 0.08


@pytest.mark.parametrize("what", ["data", "weights", "dtype", "seed"])
def test_every_input_of_a_finished_concept_is_checked(tmp_path, monkeypatch, what):
    model, hp, pairs = build_tiny_model("llama"), make_hparams(n_epochs=1), pairs3()
    out = interrupted_run(tmp_path, monkeypatch, hp, model, pairs)
    if what == "data":  # concept 0's rows edited
        pairs = [dataclasses.replace(p, matching="good great nice") if p.concept_id == 0 else p for p in pairs]
    elif what == "weights":
        model = build_tiny_model("llama", seed=1)
    elif what == "dtype":
        model = model.to(torch.float64)
    else:
        hp = make_hparams(n_epochs=1, seed=8)
    expected = {"data": "data.0", "weights": "model.weights_sha256", "dtype": "model.dtype", "seed": "hparams.seed"}[what]
    with pytest.raises(ResumeMismatchError, match=expected.replace(".", r"\.")):
        train_and_save(hp, pairs, model, WordTokenizer(), out, progress=False)


def test_cosmetic_keys_and_a_changed_unfinished_concept_resume(tmp_path, monkeypatch):
    model, pairs = build_tiny_model("llama"), pairs3()
    out = interrupted_run(tmp_path, monkeypatch, make_hparams(n_epochs=1), model, pairs)
    first = safe_torch_load(out / f"layer_{LAYER}.pt")
    pairs = [dataclasses.replace(p, matching="good great nice") if p.concept_id == 2 else p for p in pairs]
    hp = make_hparams(n_epochs=1, fast_path_memory_mb=1.0, loss_output_dir=str(tmp_path / "losses"))
    train_and_save(hp, pairs, model, WordTokenizer(), out, progress=False)
    stacked = safe_torch_load(out / f"layer_{LAYER}.pt")
    assert stacked.shape[0] == 3 and torch.equal(stacked[0], first[0])
    assert json.loads((out / "metadata.json").read_text())[FINGERPRINT_KEY]["data"].keys() == {"0", "1", "2"}


def test_finished_concepts_without_a_fingerprint_are_refused(tmp_path, monkeypatch):
    model, hp = build_tiny_model("llama"), make_hparams(n_epochs=1)
    out = interrupted_run(tmp_path, monkeypatch, hp, model, pairs3())
    metadata = json.loads((out / "metadata.json").read_text())
    del metadata[FINGERPRINT_KEY]  # an older version's directory (the manifest check aside)
    (out / "metadata.json").write_text(json.dumps(metadata))
    from easyedit_split.errors import EasyEditSplitError

    with pytest.raises(EasyEditSplitError, match="fingerprint|metadata"):
        train_and_save(hp, pairs3(), model, WordTokenizer(), out, progress=False)


def test_a_changed_lr_through_the_cli_exits_non_zero_without_traceback(tmp_path, monkeypatch, capsys):
    from easyedit_split.cli.common import run_command

    model = build_tiny_model("llama")
    out = interrupted_run(tmp_path, monkeypatch, make_hparams(n_epochs=1, lr=0.08), model, pairs3())

    def command(args):
        train_and_save(make_hparams(n_epochs=1, lr=0.01), pairs3(), model, WordTokenizer(), out, progress=False)
        return 0

    code = run_command(command, None)
    err = capsys.readouterr().err
    assert code == 2 and "hparams.lr" in err and "Traceback" not in err
