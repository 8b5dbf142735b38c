"""Benchmark: scoring a multiplier sweep, naive (EasyEdit-style) vs the batched cached path.

Setup: the offline default model (SmolLM2-135M-Instruct, fp32, CPU), a CAA-style vector at
layer 15 computed inline as the mean over the 129 sentiment *train* pairs of (mean layer-15
output over the matching completion's tokens - the same for the not-matching completion), 40
sentiment *test* pairs, K = 9 multipliers, sequence NLL, chat template on.

- naive: one full forward per sequence per multiplier, batch 1, matching and not-matching
  scored separately (2 x 40 x 9 = 720 forwards), as EasyEdit's loss mode does;
- batched cached: `score_pairs` (layers 0..14 once per pair, layers 15..29 for the 9
  multipliers as rows of one batch, the chat template's never-steered prefix run once per
  chunk, both completions on one shared prompt pass, LM head at completion positions only).

Both paths must give the same NLLs (max abs difference printed and asserted). Prints a markdown
table and writes it to benchmarks/results_sweep.md.

    python benchmarks/bench_sweep.py [--threads N] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from easyedit_split.data import load_dataset
from easyedit_split.evaluation.scoring import score_pairs
from easyedit_split.interventions import DynamicWeightUpdate
from easyedit_split.models import load_model_and_tokenizer
from easyedit_split.prompts import PromptFormat, encode_batch, steering_prefix_length
from easyedit_split.replay import capture_layer_inputs, full_forward_nll

LAYER = 15
MULTIPLIERS = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def caa_vector(model, tokenizer, fmt, pairs, layer):
    """Mean difference of layer-`layer` outputs over completion tokens (matching - not matching).

    The output of layer `layer` is the captured input of layer `layer + 1` (no LM head is run).
    """
    means = []
    for field in ("matching", "not_matching"):
        batch = encode_batch(tokenizer, fmt, [p.question for p in pairs], [getattr(p, field) for p in pairs])
        hidden = capture_layer_inputs(model, batch, layer + 1).hidden_states
        mask = (batch.labels != -100).unsqueeze(-1).float()
        means.append(((hidden * mask).sum(1) / mask.sum(1)).mean(0))
    return means[0] - means[1]


def naive_sweep(model, tokenizer, fmt, pairs, updates, multipliers):
    """EasyEdit's way: one full forward per sequence per multiplier, batch 1, steering the same
    positions as the batched path (from the first token after the chat template's common prefix)."""
    steer_from = steering_prefix_length(tokenizer, fmt)
    out = np.zeros((len(multipliers), len(pairs), 2))
    for k, m in enumerate(multipliers):
        for i, pair in enumerate(pairs):
            for j, completion in enumerate((pair.matching, pair.not_matching)):
                batch = encode_batch(tokenizer, fmt, [pair.question], [completion])
                steered = torch.arange(batch.input_ids.shape[1]).unsqueeze(0) >= steer_from
                with torch.no_grad():
                    out[k, i, j] = float(full_forward_nll(model, batch, updates, m, positions=steered).sum[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_sweep.md")))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32", device="cpu")
    fmt = PromptFormat(use_chat_template=True)
    train = load_dataset("sentiment", "train")
    test = load_dataset("sentiment", "test")[:40]
    updates = {LAYER: DynamicWeightUpdate.from_vector(caa_vector(model, tokenizer, fmt, train, LAYER))}

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    naive = naive_sweep(model, tokenizer, fmt, test, updates, MULTIPLIERS)
    naive_seconds = time.perf_counter() - started

    started = time.perf_counter()
    scores = score_pairs(model, tokenizer, test, updates, MULTIPLIERS, fmt, batch_size=args.batch_size)
    fast_seconds = time.perf_counter() - started
    fast = np.stack([scores.matching_sum, scores.not_matching_sum], axis=-1)

    max_diff = float(np.abs(fast - naive).max())
    assert max_diff < 1e-3, f"batched path differs from the naive path by {max_diff}"
    ratio = naive_seconds / fast_seconds
    pref = (naive[..., 1] - naive[..., 0]).mean(axis=1)
    table = "\n".join([
        "# Sweep scoring benchmark (`benchmarks/bench_sweep.py`, one run)",
        "",
        f"SmolLM2-135M-Instruct fp32 on CPU ({torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}), "
        f"CAA mean-difference vector at layer {LAYER} (129 sentiment train pairs, |v| = "
        f"{float(updates[LAYER].bias.detach().norm()):.2f}), {len(test)} sentiment test pairs, K = {len(MULTIPLIERS)} "
        f"multipliers {MULTIPLIERS}, sequence NLL, chat template on.",
        "",
        "| path | forwards | seconds | speed-up |",
        "|---|---|---|---|",
        f"| naive: full forward per sequence per multiplier, batch 1 | {2 * len(test) * len(MULTIPLIERS)} | {naive_seconds:.1f} | 1.00x |",
        f"| batched cached: replay layers {LAYER}..29, K rows per batch, chat-template prefix run once, shared prompt pass, LM head at completion positions "
        f"| {int(np.ceil(len(test) / args.batch_size))} capture(s) + {int(np.ceil(len(test) * len(MULTIPLIERS) / args.batch_size))} replays | {fast_seconds:.1f} | {ratio:.2f}x |",
        "",
        f"Max abs difference of the {fast.size} NLLs between the two paths: {max_diff:.2e} nats.",
        "",
        f"1-minute load average at start / end: {load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes share the "
        "CPU: the ratio is only meaningful when the load stays constant through the run).",
        "",
        "Mean PrefOdds per multiplier (sanity: the vector moves the preference): "
        + ", ".join(f"m={m:g}: {p:.2f}" for m, p in zip(MULTIPLIERS, pref)),
        "",
    ])
    print(table)
    Path(args.out).write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
