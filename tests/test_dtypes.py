"""bfloat16 models on CPU (dtype mismatches show up here, without a GPU): interventions and optimizer
state stay fp32, m = 0 is exact, steering agrees with fp32 within bf16 tolerance, NLLs are fp32 sums."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, build_tiny_model, seeded_update
from easyedit_split import prepared_pairs, training
from easyedit_split.evaluation.sweep_nll import EncodedPair, score_encoded_pairs
from easyedit_split.fastpath.token_nll import completion_token_nll
from easyedit_split.hparams import SplitHyperParams
from easyedit_split.interventions import DynamicWeightUpdate, steer
from easyedit_split.methods.split import split_loss
from easyedit_split.prompts import IGNORE_INDEX, TokenBatch

LAYER = 2
FORMS = {"vector": "block", "lora": "mlp_mid", "local_weight": "mlp"}
cuda_only = pytest.mark.cuda  # skipped without a GPU (tests/conftest.py); `pytest -m cuda` selects it


def _bf16_pair(family: str):
    """The same random model in fp32 and in bf16."""
    fp32 = build_tiny_model(family)
    return fp32, copy.deepcopy(fp32).to(torch.bfloat16)


def _random_update(model, method: str, seed: int = 5, scale: float = 0.3) -> DynamicWeightUpdate:
    return seeded_update(model, method, FORMS[method], seed, scale)


def _ids() -> torch.Tensor:
    return torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(FORMS))
def test_m0_is_bit_identical_and_steering_matches_fp32(family, method):
    fp32, bf16 = _bf16_pair(family)
    update = _random_update(fp32, method, scale=1.0 if method == "lora" else 0.3)  # A @ B: product of two draws
    assert all(p.dtype == torch.float32 for p in update.parameters())  # sized from a bf16 model too:
    assert all(p.dtype == torch.float32 for p in DynamicWeightUpdate.for_model(bf16, method, FORMS[method]).parameters())
    ids = _ids()
    with torch.no_grad():
        plain = bf16(ids).logits
        with steer(bf16, {LAYER: update}, 0.0):
            assert torch.equal(bf16(ids).logits, plain)
        with steer(bf16, {LAYER: update}, 2.0):
            steered_bf16 = bf16(ids).logits
        assert steered_bf16.dtype == torch.bfloat16
        assert torch.equal(bf16(ids).logits, plain)  # hooks removed
        unsteered_fp32 = fp32(ids).logits
        with steer(fp32, {LAYER: update}, 2.0):
            steered_fp32 = fp32(ids).logits
    noise = (plain.float() - unsteered_fp32).abs().max()  # what bf16 costs without any steering
    effect = (steered_fp32 - unsteered_fp32).abs().max()
    error = (steered_bf16.float() - steered_fp32).abs().max()
    assert effect > 3 * noise, (float(effect), float(noise))
    assert error <= 2 * noise + 0.05 * effect, (float(error), float(noise), float(effect))


def _prepared_pairs(n_examples: int = 4, vocab: int = 97) -> prepared_pairs.PreparedPairs:
    """Rows 2i / 2i+1 share a 4-token prompt; 3- and 4-token completions."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(n_examples):
        prompt = torch.randint(3, vocab, (4,), generator=generator).tolist()
        rows += [prompt + torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (3, 4)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE_INDEX)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, 4 : len(row)] = ids[r, 4 : len(row)]
    return prepared_pairs.PreparedPairs(TokenBatch(ids, mask, labels), prefix_length=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(FORMS))
def test_training_on_bf16_keeps_update_and_optimizer_state_fp32(family, method, monkeypatch):
    _, bf16 = _bf16_pair(family)
    optimizers = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    hparams = SplitHyperParams(
        layers=[LAYER], batch_size=2, gradient_accumulation_steps=1, n_epochs=1, lr=0.05, weight_decay=0.0,
        dropout=0.0, steering_factors=[1.0, 2.0], preference_pairs=["orig_add"], intervention_method=method,
        intervention_components=FORMS[method], low_rank_dimension=2, seed=7, use_chat_template=False,
    )
    update, log = training.train_layer(bf16, _prepared_pairs(), hparams, LAYER, split_loss, progress=False)
    assert log.optimizer_steps > 0 and all(torch.isfinite(torch.tensor(log.losses)))
    assert all(p.dtype == torch.float32 for p in update.parameters())
    (optimizer,) = optimizers
    states = [optimizer.state[p] for group in optimizer.param_groups for p in group["params"]]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # the model itself is untouched


def test_token_nlls_of_bf16_hidden_states_are_fp32():
    """The LM head output is cast to fp32 before log-softmax: bf16 logits summed as bf16 lose whole nats."""
    _, bf16 = _bf16_pair("llama")
    hidden = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    positions = torch.arange(64)
    tokens = torch.randint(3, 97, (64,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        nll = completion_token_nll(bf16, hidden, torch.zeros(64, dtype=torch.long), positions, tokens)
        logits = bf16.lm_head(bf16.model.norm(hidden[0])).double()
    expected = torch.logsumexp(logits, -1) - logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll.double(), expected, rtol=0, atol=1e-5)


def test_sequence_nlls_of_a_bf16_model_are_summed_in_high_precision():
    """A 120-token completion's NLL (~550 nats, where bf16 steps by 4) matches an fp64 sum of the same
    model's token NLLs; a bf16 accumulator would be off by several nats."""
    _, bf16 = _bf16_pair("llama")
    generator = torch.Generator().manual_seed(2)
    prompt = torch.randint(3, 97, (5,), generator=generator).tolist()
    matching = torch.randint(3, 97, (120,), generator=generator).tolist()
    other = torch.randint(3, 97, (7,), generator=generator).tolist()
    pair = EncodedPair(prompt, matching, other)
    scores = score_encoded_pairs(bf16, [pair], {}, [0.0], layout="rows")
    ids = torch.tensor([prompt + matching])
    with torch.no_grad():
        logits = bf16(ids).logits[0, len(prompt) - 1 : -1].double()
    expected = (torch.logsumexp(logits, -1) - logits.gather(-1, torch.tensor(matching).unsqueeze(-1)).squeeze(-1)).sum()
    assert float(expected) > 400
    assert abs(float(scores.matching_nll[0, 0]) - float(expected)) < 1.0


@cuda_only
def test_bf16_model_on_cuda_steers_with_fp32_parameters():
    _, bf16 = _bf16_pair("llama")
    bf16 = bf16.to("cuda")
    update = _random_update(bf16, "lora").to("cuda")
    ids = _ids().to("cuda")
    with torch.no_grad():
        plain = bf16(ids).logits
        with steer(bf16, {LAYER: update}, 0.0):
            assert torch.equal(bf16(ids).logits, plain)
        with steer(bf16, {LAYER: update}, 1.0):
            assert not torch.equal(bf16(ids).logits, plain)
    assert all(p.dtype == torch.float32 for p in update.parameters())


@cuda_only
def test_device_auto_places_the_model_through_device_map(tmp_path):
    from easyedit_split.models import load_model_and_tokenizer

    build_tiny_model("llama").save_pretrained(tmp_path)
    _word_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model_and_tokenizer(str(tmp_path), dtype="bfloat16", device="auto")
    assert getattr(model, "hf_device_map", None) and next(model.parameters()).device.type == "cuda"


def _word_tokenizer():
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(tk_models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", eos_token="w2")


def test_the_dtype_names_depend_on_neither_hparams_nor_models():
    # one way only: hparams and models both read the dtype table, neither imports the other for it
    import subprocess
    import sys

    code = ("import sys, easyedit_split.dtypes as d, easyedit_split.hparams; "
            "print(sorted(m for m in ('torch', 'easyedit_split.models') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
