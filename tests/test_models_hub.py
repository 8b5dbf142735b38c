"""Models by name: Hub ids from a temporary Hugging Face cache (never the network), the offline switch,
clear errors for missing models, and the default model's per-transformers-version cache."""
from __future__ import annotations

import json
import socket

import pytest
import torch

from easyedit_split import models
from easyedit_split.errors import ModelError
from easyedit_split.models import hub_offline, load_model_and_tokenizer, resolve_model_path

from conftest import build_tiny_model

REPO_ID = "tiny-org/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(94)]  # 97 ids, as build_tiny_model's vocabulary


def _tiny_tokenizer():
    """A word-level tokenizer over the tiny model's 97 ids, with EOS and no pad token."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   model_input_names=["input_ids", "attention_mask"])


def _refuse_network(*args, **kwargs):
    raise ConnectionRefusedError("tests never touch the network")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, the Hub offline, and every socket connection refused.

    huggingface_hub and transformers read HF_HUB_OFFLINE and the cache path once at import, so their
    module constants are patched as well as the environment; the socket guard holds even if both fail.
    """
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as transformers_hub

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for name, value in {"_is_offline_mode": True, "TRANSFORMERS_CACHE": str(cache), "HF_HUB_CACHE": str(cache)}.items():
        if hasattr(transformers_hub, name):  # transformers 4 keeps its own copies
            monkeypatch.setattr(transformers_hub, name, value)
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse_network)
    return cache


@pytest.fixture
def cached_tiny_llama(hub_cache):
    """A tiny random Llama and its tokenizer saved under REPO_ID in the hub cache layout."""
    repo = hub_cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    model = build_tiny_model("llama", seed=3)
    model.save_pretrained(snapshot)
    _tiny_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return model


def test_a_cached_hub_id_loads_offline(cached_tiny_llama):
    model, tokenizer = load_model_and_tokenizer(REPO_ID)
    ids = tokenizer("w1 w5 w9 w2", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[4, 8, 12, 5]]  # word i sits at id i + 3
    with torch.no_grad():
        # same weights; the reloaded model may pick another attention kernel than eager, hence the 1e-6
        torch.testing.assert_close(model(ids).logits, cached_tiny_llama(ids).logits, rtol=0, atol=1e-6)
    assert tokenizer.pad_token == "</s>"  # no pad token in the files: EOS pads


def test_an_uncached_hub_id_offline_names_the_id_and_how_to_get_it(hub_cache):
    with pytest.raises(ModelError) as caught:
        load_model_and_tokenizer("tiny-org/not-downloaded")
    message = str(caught.value)
    assert "'tiny-org/not-downloaded'" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download tiny-org/not-downloaded" in message and "local checkpoint directory" in message


def test_the_offline_switch_wins_over_the_environment(hub_cache, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    assert hub_offline() is False and hub_offline(True) is True
    with pytest.raises(ModelError, match="offline=True"):
        resolve_model_path("tiny-org/not-downloaded", offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: still honoured
    assert hub_offline() is True and hub_offline(False) is False


@pytest.mark.slow
def test_an_online_failure_is_one_clear_error(hub_cache, monkeypatch):
    """Online, an id that cannot be fetched (here: every connection refused) is a ModelError naming it."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelError, match="(?s)cannot load 'tiny-org/not-downloaded'.*huggingface-cli download"):
        load_model_and_tokenizer("tiny-org/not-downloaded", offline=False)


@pytest.mark.parametrize("name, message", [
    ("./no/such/dir", "does not exist"),
    ("org/name/extra", "neither an existing directory nor a valid"),
])
def test_names_that_are_neither_directories_nor_ids(hub_cache, name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model_path(name)


def test_a_file_is_not_a_model_directory(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(weights))


# --------------------------------------------------------------------------- the default model's cache


def _gguf_fields():
    from gguf import GGUFReader

    return GGUFReader(models.locate_default_gguf()).fields


def test_default_model_cache_is_keyed_by_transformers_major():
    import transformers

    major = transformers.__version__.split(".")[0]
    path = models.ensure_default_model_cached()
    assert path.name == f"{models.DEFAULT_MODEL_NAME}-transformers{major}"
    written_by = json.loads((path / "config.json").read_text())["transformers_version"]
    assert written_by.split(".")[0] == major


def test_a_conversion_by_another_transformers_major_is_not_reused(tmp_path):
    import transformers

    other = int(transformers.__version__.split(".")[0]) + 1
    for name in ("model.safetensors", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"transformers_version": f"{other}.0.0"}))
    assert not models._is_clean_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"transformers_version": transformers.__version__}))
    assert models._is_clean_checkpoint(tmp_path)


def test_default_model_keeps_the_gguf_rope_theta_and_special_tokens(default_model_and_tokenizer):
    """transformers 4 reading a 5.x config dropped rope_theta (logits off by up to 10) and its GGUF reader
    made EOS `<|im_start|>`; the values must be the ones the GGUF file declares, under every version."""
    model, tokenizer = default_model_and_tokenizer
    fields = _gguf_fields()
    config = model.config
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    assert theta == pytest.approx(float(fields["llama.rope.freq_base"].contents()))
    for attribute, key in (("eos_token_id", "eos_token_id"), ("bos_token_id", "bos_token_id"),
                           ("pad_token_id", "padding_token_id")):
        assert getattr(tokenizer, attribute) == int(fields[f"tokenizer.ggml.{key}"].contents()), attribute
    assert tokenizer.eos_token == "<|im_end|>"
    assert bool(fields["tokenizer.ggml.add_bos_token"].contents()) is False
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # no BOS prepended, no token_type_ids
    assert set(tokenizer("Hello world")) == {"input_ids", "attention_mask"}


# --------------------------------------------------------------------------- offline=True means no network at all


@pytest.fixture
def online_hub_with_recorded_sockets(hub_cache, monkeypatch):
    """The cache of `hub_cache`, but the Hub *online* by environment and constant; every connection
    attempt is recorded (and refused). Returns the list of attempts."""
    import huggingface_hub.constants as hub_constants

    attempts: list = []

    def record(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise ConnectionRefusedError("tests never touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # teardown restores what offline=True sets
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: record(self, *a))
    monkeypatch.setattr(socket, "create_connection", record)
    monkeypatch.setattr(socket, "getaddrinfo", record)
    return attempts


@pytest.mark.slow
@pytest.mark.skipif(int(__import__("transformers").__version__.split(".")[0]) < 5,
                    reason="the adapter lookup that ignores local_files_only is transformers 5's")
def test_local_files_only_alone_still_reaches_for_the_hub(cached_tiny_llama, online_hub_with_recorded_sockets):
    """The control: the adapter-config lookup of transformers' auto classes ignores local_files_only,
    so the guard below must see attempts when only that flag is passed (else the next test proves nothing)."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("peft") is None:
        pytest.skip("the adapter lookup only happens with peft installed")
    AutoModelForCausalLM.from_pretrained(REPO_ID, local_files_only=True)
    assert online_hub_with_recorded_sockets, "expected the adapter lookup to try the network"


def test_offline_true_makes_no_network_request(cached_tiny_llama, online_hub_with_recorded_sockets):
    import huggingface_hub.constants as hub_constants

    model, tokenizer = load_model_and_tokenizer(REPO_ID, offline=True)
    assert online_hub_with_recorded_sockets == []
    assert hub_constants.HF_HUB_OFFLINE is True and models.hub_offline() is True  # the whole process
    assert tokenizer("w1", return_tensors="pt")["input_ids"].tolist() == [[4]]


# --------------------------------------------------------------------------- straight onto the device


def test_the_device_is_passed_to_from_pretrained(cached_tiny_llama, monkeypatch):
    """`device: cuda` loads onto the GPU (device_map), not on the CPU and then moved."""
    from transformers import AutoModelForCausalLM

    calls: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(source, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("device_map", None)  # no GPU here: load on the CPU, as recorded above
        return real(source, **kwargs)

    moves: list = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(a) or self)
    for device in ("cuda:1", "auto", "cpu"):
        load_model_and_tokenizer(REPO_ID, device=device)
    assert [call.get("device_map") for call in calls] == ["cuda:1", "auto", None]
    assert moves == []  # never loaded on one device and moved to another
