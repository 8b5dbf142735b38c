"""Shared fixtures (tiny random models of every supported family, built from a config in milliseconds),
the setups several test files share (a saved tiny checkpoint and a CAA vector trained on it through
the CLI; the stand-in judge and a judge cache that dies mid-run; an empty capture cache), the fast
tier (every test not marked `slow` or `default_model` is marked `fast` at collection) and the `cuda`
marker (skipped, with the reason, where the GPUs are missing)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

FAMILIES = ("llama", "qwen2", "gemma2")


def build_tiny_model(family: str, seed: int = 0, num_layers: int = 4, vocab_size: int = 97):
    """A randomly initialised causal LM of `family` small enough for unit tests."""
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    if family == "llama":
        config = LlamaConfig(**common)
    elif family == "qwen2":
        config = Qwen2Config(**common)
    elif family == "gemma2":
        config = Gemma2Config(**common, head_dim=8, sliding_window=4, final_logit_softcapping=30.0,
                              attn_logit_softcapping=50.0, query_pre_attn_scalar=8)
    else:
        raise ValueError(family)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def seeded_update(model, method: str, component: str, seed: int = 0, scale: float = 0.3):
    """A `DynamicWeightUpdate` of `method` at `component` (rank 2) with N(0, scale) parameters drawn
    after `torch.manual_seed(seed)`: the random update the replay, scoring and dtype tests steer with."""
    from easyedit_split.interventions import DynamicWeightUpdate

    torch.manual_seed(seed)
    update = DynamicWeightUpdate.for_model(model, method, component=component, rank=2)
    with torch.no_grad():
        for parameter in update.parameters():
            parameter.normal_(0, scale)
    return update


@pytest.fixture(params=FAMILIES)
def tiny_model(request):
    return build_tiny_model(request.param)


@pytest.fixture
def token_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 97, (3, 9), generator=generator)


@pytest.fixture(scope="session")
def default_model_and_tokenizer():
    """The offline default model (converted and cached once per machine), shared by the session."""
    from easyedit_split.models import load_model_and_tokenizer

    return load_model_and_tokenizer()


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (chat template included), from the converted cache."""
    from transformers import AutoTokenizer

    from easyedit_split.models import ensure_default_model_cached

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model_cached(), local_files_only=True)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_chat_model(default_tokenizer):
    """A tiny random Llama that shares the default tokenizer's vocabulary (real chat template, fast)."""
    return build_tiny_model("llama", vocab_size=len(default_tokenizer))


@pytest.fixture
def tiny_chat_model_dir(tmp_path, tiny_chat_model, default_tokenizer) -> Path:
    """The tiny chat model and the default tokenizer saved as a checkpoint directory, `tmp_path/tiny`."""
    directory = tmp_path / "tiny"
    tiny_chat_model.save_pretrained(directory)
    default_tokenizer.save_pretrained(directory)
    return directory


def train_caa_through_cli(model_dir: Path, work: Path, layers=(1,), output_dir: bool = True) -> Path:
    """`easyedit-split train` of a CAA vector on `model_dir` from `work/generate_caa.yaml` (sentiment
    data); without `output_dir` it writes under the current directory. Returns the vector directory."""
    from easyedit_split.cli import main

    hparams = work / "generate_caa.yaml"
    hparams.write_text(f"alg_name: caa\nlayers: {list(layers)}\nuse_chat_template: true\n", encoding="utf-8")
    where = ["--output-dir", str(work)] if output_dir else []
    assert main(["train", "--hparams", str(hparams), "--model", str(model_dir), *where]) == 0
    return (work if output_dir else Path.cwd()) / "sentiment" / "caa_vector"


def stub_judge(server, **options):
    """The HTTP judge pointed at a `StubServer` (tests/openai_stub.py), with test timings."""
    from easyedit_split.judging import OpenAICompatibleJudge

    settings = {"api_key": "test-key", "concurrency": 4, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **options}
    return OpenAICompatibleJudge("stub-judge", base_url=server.base_url, **settings)


class KilledRun(Exception):
    """Raised by a `dying_cache`: the judging 'process' died after its last durable answer."""


@pytest.fixture
def dying_cache():
    """A judge-cache class whose instances store `survive` answers durably, then 'die' (`KilledRun`)."""
    from easyedit_split.judging import JudgeCache

    class DyingCache(JudgeCache):
        def __init__(self, path, survive: int):
            super().__init__(path)
            self.survive = survive

        def put(self, key, entry):
            super().put(key, entry)
            self.survive -= 1
            if self.survive == 0:
                raise KilledRun()

    return DyingCache


@pytest.fixture
def empty_capture_cache():
    """The fast path's in-memory capture cache, empty before and after the test."""
    from easyedit_split.fastpath import capture_cache

    capture_cache.clear_memory_cache()
    yield
    capture_cache.clear_memory_cache()


def pytest_collection_modifyitems(config, items):
    """`-m fast` is the inner loop: whatever is not marked slow or default_model (test, class or module
    `pytestmark`) and does not load the default model, so a new test is fast until it is measured
    slow (docs/testing.md)."""
    for item in items:
        _skip_without_cuda(item)
        loads_default_model = "default_model_and_tokenizer" in getattr(item, "fixturenames", ())
        if not loads_default_model and not any(item.get_closest_marker(name) for name in ("slow", "default_model")):
            item.add_marker(pytest.mark.fast)


def _skip_without_cuda(item) -> None:
    """`@pytest.mark.cuda` (or `cuda(min_devices=2)`): skipped, with the reason, where the GPUs are missing."""
    marker = item.get_closest_marker("cuda")
    if marker is None:
        return
    needed = int(marker.kwargs.get("min_devices", 1))
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < needed:
        item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s), {available} here"))


@pytest.fixture(scope="module")
def easyedit_steer(tmp_path_factory):
    """EasyEdit's `steer` package from a patched temporary copy of the snapshot (0001 makes
    `steer.utils` importable, 0002 makes chat templates give ids under transformers 5), on sys.path
    for one test module."""
    import shutil
    import sys

    from easyedit_host import PATCHES, apply_patches, easyedit_cannot_run, forget_steer, snapshot_dir

    source = snapshot_dir()
    if source is None:
        pytest.skip("EasyEdit's snapshot is not on this machine (set EASYEDIT_SNAPSHOT)")
    if easyedit_cannot_run():
        pytest.skip(easyedit_cannot_run())
    root = tmp_path_factory.mktemp("easyedit") / "EasyEdit"
    shutil.copytree(source, root)
    apply_patches(root, [p for p in PATCHES if p.name[:4] in ("0001", "0002")])
    forget_steer()
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        forget_steer()
