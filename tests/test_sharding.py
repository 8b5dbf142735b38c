"""Concept sharding: a 2-process run writes the same files as a 1-process run; resume skips finished concepts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from easyedit_split.data import load_dataset
from easyedit_split.hparams import load_hparams
from easyedit_split.models import load_model_and_tokenizer
from easyedit_split.sharding import (
    DONE_MARKER,
    ProcessInfo,
    merge_concepts,
    shard_concepts,
    shard_dir,
    train_sharded,
)

from conftest import build_tiny_model

pytestmark = pytest.mark.slow  # real multi-process launches

REPO = Path(__file__).resolve().parent.parent
HPARAMS = REPO / "hparams/sentiment/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml"
N_CONCEPTS = 4
SETTINGS = {"layers": [2], "max_concepts": 500, "n_epochs": 1, "batch_size": 2, "steering_factors": [1.0, 2.0]}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, default_tokenizer):
    """A tiny Llama with the default tokenizer, saved as a local checkpoint each process can load."""
    directory = tmp_path_factory.mktemp("tiny_chat")
    build_tiny_model("llama", vocab_size=len(default_tokenizer)).save_pretrained(directory)
    default_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def axbench_parquet(tmp_path_factory):
    """AxBench's columns: N_CONCEPTS concepts with 3 positive rows each, plus negative rows the loader drops."""
    rows = []
    for concept_id in range(N_CONCEPTS):
        for index in range(3):
            rows.append({"input": f"Tell me about topic {index} number {concept_id}.",
                         "winning_output": f"Concept {concept_id} answer {index} is bright.",
                         "losing_output": f"A plain reply {index}.", "output_concept": f"concept {concept_id}",
                         "concept_id": concept_id, "category": "positive"})
    rows.append({"input": "Unrelated.", "winning_output": "x", "losing_output": "y", "output_concept": "none",
                 "concept_id": -1, "category": "negative"})
    path = tmp_path_factory.mktemp("axbench") / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def _hparams(checkpoint):
    from dataclasses import replace

    return replace(load_hparams(HPARAMS, kind="train"), model_name_or_path=str(checkpoint), **SETTINGS)


def _set_flags():
    return [flag for key, value in SETTINGS.items() for flag in ("--set", f"{key}={value}")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_env(rank: int, world_size: int, port: int) -> dict:
    """What torchrun / accelerate launch set for each process."""
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _command(checkpoint, data, out):
    return [sys.executable, "-m", "easyedit_split.sharding", "--hparams", str(HPARAMS), "--data", str(data),
            "--output-dir", str(out), "--model_name_or_path", str(checkpoint), "--threads", "1", *_set_flags()]


def _assert_same_files(left: Path, right: Path) -> None:
    a = torch.load(left / "layer_2.pt", weights_only=True)
    b = torch.load(right / "layer_2.pt", weights_only=True)
    assert a.shape == b.shape == (N_CONCEPTS, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_shard_concepts_round_robin():
    assert shard_concepts([3, 0, 2, 1, 4], 0, 2) == [0, 2, 4]
    assert shard_concepts([3, 0, 2, 1, 4], 1, 2) == [1, 3]
    assert shard_concepts([5], 1, 2) == []


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_checkpoint, axbench_parquet):
    out = tmp_path_factory.mktemp("one") / "axbench" / "spilt_vector"
    hparams = _hparams(tiny_checkpoint)
    model, tokenizer = load_model_and_tokenizer(str(tiny_checkpoint))
    result = train_sharded(hparams, load_dataset(axbench_parquet), model, tokenizer, out, info=ProcessInfo(0, 1))
    assert result.trained == list(range(N_CONCEPTS))
    return out, hparams, model, tokenizer


def test_one_process_equals_the_trainers_own_multi_concept_run(one_process_run, axbench_parquet, tmp_path):
    """Merged shards hold what the trainer writes when it runs all concepts itself."""
    from easyedit_split.producing import train_and_save

    out, hparams, model, tokenizer = one_process_run
    own = tmp_path / "spilt_vector"
    train_and_save(hparams, load_dataset(axbench_parquet), model, tokenizer, own, "axbench", progress=False)
    _assert_same_files(out, own)


def test_two_processes_write_the_same_files_as_one(one_process_run, tiny_checkpoint, axbench_parquet, tmp_path):
    one, *_ = one_process_run
    two = tmp_path / "axbench" / "spilt_vector"
    port = _free_port()
    processes = [subprocess.Popen(_command(tiny_checkpoint, axbench_parquet, two), env=_launch_env(rank, 2, port),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    # each rank trained its own share, rank 0 merged
    assert "trained [0, 2]" in outputs[0] and "trained [1, 3]" in outputs[1]
    _assert_same_files(one, two)
    state = (two / "train_state_layer_2.json").read_text()
    assert '"finished_concepts"' in state


def test_resume_skips_finished_concepts(one_process_run, tmp_path):
    source, hparams, model, tokenizer = one_process_run
    out = tmp_path / "spilt_vector"
    shutil.copytree(source, out)
    before = torch.load(out / "layer_2.pt", weights_only=True)
    (shard_dir(out, 2) / DONE_MARKER).unlink()
    (out / "layer_2.pt").unlink()
    from easyedit_split.data import PolarityPair

    fake = [PolarityPair("q", "a", "b", concept_id=c) for c in range(N_CONCEPTS)]
    # concepts 0, 1, 3 are finished; only 2 is retrained (on different pairs, so its row changes)
    result = train_sharded(hparams, fake, model, tokenizer, out, info=ProcessInfo(0, 1))
    assert result.skipped == [0, 1, 3] and result.trained == [2]
    after = torch.load(out / "layer_2.pt", weights_only=True)
    torch.testing.assert_close(after[[0, 1, 3]], before[[0, 1, 3]], rtol=0, atol=0)
    assert not torch.equal(after[2], before[2])


def test_merge_refuses_unfinished_concepts(one_process_run, tmp_path):
    source, *_ = one_process_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    (shard_dir(out, 1) / DONE_MARKER).unlink()
    with pytest.raises(Exception, match=r"concepts \[1\] are not finished"):
        merge_concepts(out, range(N_CONCEPTS))


def test_torchrun_runs_two_cpu_processes(one_process_run, tiny_checkpoint, axbench_parquet, tmp_path):
    """The documented CPU launcher really starts two ranks: each logs itself, world_size 2 is recorded."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to python")
    one, *_ = one_process_run
    out = tmp_path / "torchrun" / "spilt_vector"
    logs = tmp_path / "logs"
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "--log_dir", str(logs),
               "--tee", "3", "-m", "easyedit_split.sharding", *_command(tiny_checkpoint, axbench_parquet, out)[3:]]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert "rank 0/2 started" in text and "rank 1/2 started" in text
    assert "trained [0, 2]" in text and "trained [1, 3]" in text  # each rank its own share
    assert json.loads((out / "metadata.json").read_text())["world_size"] == 2
    _assert_same_files(one, out)


def test_accelerate_cpu_launch_says_it_runs_one_process(one_process_run, tiny_checkpoint, axbench_parquet, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (accelerate 1.x): right files, and a warning."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("accelerate is not installed")
    one, *_ = one_process_run
    out = tmp_path / "accelerate" / "spilt_vector"
    command = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "easyedit_split.sharding",
               *_command(tiny_checkpoint, axbench_parquet, out)[3:]]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - started < 180
    _assert_same_files(one, out)
    assert "starts ONE process" in done.stdout + done.stderr
