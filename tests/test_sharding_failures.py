"""A sharded run whose rank fails ends on every rank with an error naming it, within a minute, instead of
hanging; nothing is merged. Two real processes in a gloo process group, as `torchrun`/`accelerate launch` start them."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real multi-process launches

REPO = Path(__file__).resolve().parents[1]

# Each rank gets two concepts; rank 0 "trains" for 4 s per concept, rank 1 fails on its first one.
SCRIPT = textwrap.dedent('''
    import os, sys, time
    from easyedit_split import sharding
    from easyedit_split.data import PolarityPair
    from easyedit_split.hparams import CAAHyperParams

    MODE = sys.argv[2]

    def fake_train_one(hparams, group, concept_id, model, tokenizer, output_dir, info, result):
        if info.rank == 1:
            if MODE == "kill":
                os._exit(9)  # as a killed process: no exception handling, no goodbye
            raise RuntimeError("CUDA out of memory (simulated) on concept %d" % concept_id)
        time.sleep(4)
        result.trained.append(concept_id)

    sharding._train_one = fake_train_one
    print("ready at", time.time(), flush=True)  # imports done: the failure handling is timed from here
    pairs = [PolarityPair("q%d" % c, "yes", "no", concept_id=c) for c in range(4)]
    sharding.train_sharded(CAAHyperParams(layers=[1]), pairs, None, None, sys.argv[1], wait_timeout=600)
    print("rank finished without error")
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_two_ranks(tmp_path: Path, mode: str) -> tuple[list[subprocess.Popen], list[str], float]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT, encoding="utf-8")
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        processes.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), mode], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    ended = time.time()
    ready = [float(line.split()[-1]) for out in outputs for line in out.splitlines() if line.startswith("ready at ")]
    assert len(ready) == 2, outputs
    return processes, outputs, ended - max(ready)


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failed_rank_ends_the_other_with_a_clear_error(tmp_path, mode):
    processes, outputs, seconds = _run_two_ranks(tmp_path, mode)
    healthy = outputs[0]
    assert processes[0].returncode != 0, healthy
    assert processes[1].returncode != 0, outputs[1]
    assert "rank finished without error" not in healthy
    assert "TrainingError" in healthy
    if mode == "raise":  # the failure's own message reaches the healthy rank
        assert "rank 1" in healthy and "CUDA out of memory (simulated)" in healthy, healthy
        assert "CUDA out of memory (simulated)" in outputs[1]
    else:
        assert "another rank died" in healthy, healthy
    assert seconds < 60  # from both ranks being ready (imports take long on a loaded machine); a hang would not end
    assert not (tmp_path / "out" / "layer_1.pt").exists()  # nothing merged


def test_the_shipped_axbench_config_runs_on_one_gpu_with_a_hub_id():
    """hparams/axbench/axbench_config.yaml: `cuda` (not EasyEdit's cuda:1) and a Hub id (not ./models/...)."""
    from easyedit_split.hparams import TopLevelConfig

    root = Path(__file__).resolve().parents[1]
    config = TopLevelConfig.from_hparams(root / "hparams/axbench/axbench_config.yaml")
    assert config.device == "cuda" and config.model_name_or_path == "google/gemma-2-9b-it"
    easyedit = TopLevelConfig.from_hparams(root / "tests/fixtures/easyedit_hparams/axbench_config.yaml")  # EasyEdit's own file
    assert easyedit.device == "cuda:1"


def test_max_concepts_cutting_the_data_is_said(caplog):
    import logging

    from easyedit_split.sharding import _warn_when_cut

    class H:
        max_concepts, alg_name = 1, "spilt"

    with caplog.at_level(logging.WARNING, logger="easyedit_split.sharding"):
        _warn_when_cut(H(), 500, 1)
        _warn_when_cut(H(), 1, 1)
    assert len(caplog.records) == 1 and "keeps 1 of the 500 concepts" in caplog.text  # said once, only when cut
    assert "--set max_concepts=500" in caplog.text
