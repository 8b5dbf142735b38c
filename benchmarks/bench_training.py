"""Training speed: the fast replay path vs the plain full forward, in one run; and held-out accuracy.

    python benchmarks/bench_training.py                 # speed table (3.3 min measured with other jobs on 2 cores; --steps 2 shortens it)
    python benchmarks/bench_training.py --accuracy      # also train a SPLIT vector (99 steps, ~22 min here) and score held-out pairs

Both paths run the same SPLIT loss on the same rows (default model, `sentiment` train data,
vector at layer 15, batch 4 x [orig_add, orig_sub] = 16 sequences per step) and the same
optimizer step. Measured per optimizer step:
  fast            capture layer inputs and the chat-template prefix's keys/values once; replay
                  layers 15..29 at the positions after that prefix (up to the step's longest
                  row), LM head at completion tokens
  plain           full forward of all 30 layers and the LM head at every position
  plain + refs    plain, plus the unsteered reference forward EasyEdit runs every step
                  (even with ref_loss_weight: 0)
The fast path's one-off cost (tokenize, capture 258 sequences) is reported separately.
Results go to benchmarks/results_training.md: a run replaces the sections it measured and keeps
the others (the speed table and the accuracy section come from separate runs).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from easyedit_split.data import load_dataset
from easyedit_split.hparams import load_hparams
from easyedit_split.methods.split import split_loss
from easyedit_split.models import load_model_and_tokenizer
from easyedit_split.prompts import PromptFormat, encode_batch
from easyedit_split.replay import full_forward_nll
from easyedit_split.training import plan_step, prepare_pairs, step_loss, train_layer

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "hparams/sentiment/smollm2-135m-instruct/spilt/generate_spilt_vector.yaml"
RESULTS = Path(__file__).resolve().parent / "results_training.md"


def time_steps(model, prepared, hp, layer, steps, fast, needs_reference, seed=0):
    """Seconds per optimizer step (loss, backward, clip, AdamW) over `steps` steps."""
    torch.manual_seed(seed)
    from easyedit_split.training import new_update

    update = new_update(model, hp)
    update.train()
    optimizer = torch.optim.AdamW(update.parameters(), lr=hp.lr)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(prepared.n_examples, generator=generator)
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        examples = order[step * hp.batch_size : (step + 1) * hp.batch_size].tolist()
        plan = plan_step(examples, hp, generator)
        loss = step_loss(model, prepared, layer, update, plan, split_loss, hp, needs_reference=needs_reference, fast=fast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(update.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return (time.perf_counter() - started) / steps, losses


def load_note(label):
    one, five, _ = os.getloadavg()
    return f"load average {label}: {one:.2f} (1 min), {five:.2f} (5 min)"


def speed(model, tokenizer, hp, steps):
    layer = hp.layers[0]
    load_before = load_note("before")
    pairs = load_dataset("sentiment", split="train")
    started = time.perf_counter()
    prepared = prepare_pairs(tokenizer, pairs, hp)
    prepared.capture(model, layer)
    one_off = time.perf_counter() - started
    fast, fast_losses = time_steps(model, prepared, hp, layer, steps, fast=True, needs_reference=False)
    plain, plain_losses = time_steps(model, prepared, hp, layer, steps, fast=False, needs_reference=False)
    plain_ref, _ = time_steps(model, prepared, hp, layer, steps, fast=False, needs_reference=True)
    same = max(abs(a - b) for a, b in zip(fast_losses, plain_losses))
    load_after = load_note("after")
    prefix = prepared.prefix_cache.length
    rows = [
        "| path | s / optimizer step | steps / s | speed-up of fast |",
        "|---|---|---|---|",
        f"| fast (replay layers {layer}..{model.config.num_hidden_layers - 1} after the cached {prefix}-token prefix) "
        f"| {fast:.2f} | {1 / fast:.3f} | 1.00x |",
        f"| plain full forward | {plain:.2f} | {1 / plain:.3f} | {plain / fast:.2f}x |",
        f"| plain + references every step (EasyEdit) | {plain_ref:.2f} | {1 / plain_ref:.3f} | {plain_ref / fast:.2f}x |",
    ]
    notes = [
        f"{steps} optimizer steps per path, batch {hp.batch_size} x {len(hp.preference_pairs)} pairs "
        f"({2 * hp.batch_size * len(hp.preference_pairs)} sequences/step), SPLIT vector at layer {layer}, "
        f"{len(pairs)} training pairs ({prepared.batch.input_ids.shape[1]} tokens padded).",
        f"Fast path one-off cost (tokenize + capture all {len(prepared.batch)} sequences + prefix keys/values): {one_off:.1f} s.",
        f"Fast path replays positions {prefix}..(longest row of the step - 1): each row's own "
        f"{(prepared.lengths.float().mean() - prefix).item():.1f} of {prepared.lengths.float().mean().item():.1f} tokens on average, "
        f"padded to the step's longest row; the plain path runs every position up to that row in all {model.config.num_hidden_layers} layers.",
        f"Largest |loss fast - loss plain| over the same {steps} steps: {same:.2e}.",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; {load_before}, {load_after} "
        "(this run's own 2 threads count ~2); other processes may share the CPU, so absolute times are noisy, "
        "the ratio (same run, paths back to back) less so.",
    ]
    return "\n".join(rows), notes


def sequence_nll(model, tokenizer, fmt, pairs, updates, multiplier):
    """Sequence NLL (sum over completion tokens) of matching and not-matching completions."""
    questions = [p.question for p in pairs]
    with torch.no_grad():
        matching = full_forward_nll(model, encode_batch(tokenizer, fmt, questions, [p.matching for p in pairs]), updates, multiplier).sum
        not_matching = full_forward_nll(model, encode_batch(tokenizer, fmt, questions, [p.not_matching for p in pairs]), updates, multiplier).sum
    return matching, not_matching


def accuracy(model, tokenizer, hp, multipliers):
    """Train on `sentiment` train with the hparams file; score held-out `sentiment` test pairs."""
    layer = hp.layers[0]
    train_pairs, test_pairs = load_dataset("sentiment", split="train"), load_dataset("sentiment", split="test")
    started = time.perf_counter()
    update, log = train_layer(model, prepare_pairs(tokenizer, train_pairs, hp), hp, layer, split_loss, progress=True)
    seconds = time.perf_counter() - started
    fmt = PromptFormat.from_hparams(hp)
    rows = ["| multiplier | held-out accuracy | mean PrefOdds (nats) |", "|---|---|---|"]
    for m in multipliers:
        updates = {} if m == 0 else {layer: update}
        matching, not_matching = sequence_nll(model, tokenizer, fmt, test_pairs, updates, m)
        pref = not_matching - matching
        label = "0 (no steering)" if m == 0 else f"{m:g}"
        rows.append(f"| {label} | {(pref > 0).float().mean().item():.3f} | {pref.mean().item():+.2f} |")
    notes = [
        f"SPLIT vector trained with `{HPARAMS.relative_to(ROOT)}` (layer {layer}, lr {hp.lr}, {hp.n_epochs} epochs, "
        f"batch {hp.batch_size}, factors {hp.steering_factors[0]:g}..{hp.steering_factors[-1]:g}, pairs {hp.preference_pairs}, "
        f"seed {hp.seed}) on {len(train_pairs)} `sentiment` train pairs: {log.optimizer_steps} optimizer steps in {seconds:.0f} s "
        f"(fast path), loss {log.losses[0]:.3f} -> {sum(log.losses[-5:]) / 5:.3f} (mean of last 5 batches).",
        f"Scored on the {len(test_pairs)} held-out `sentiment` test pairs: accuracy = share of pairs whose matching "
        "(positive) completion has a lower sequence NLL than the not-matching one; PrefOdds = NLL(not matching) - NLL(matching). "
        "Multiplier 0 = no intervention.",
    ]
    return "\n".join(rows), notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps timed per path")
    parser.add_argument("--accuracy", action="store_true", help="also train a SPLIT vector and score held-out pairs")
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    hp = load_hparams(HPARAMS, kind="train")
    model, tokenizer = load_model_and_tokenizer(hp.model_name_or_path, hp.dtype, hp.device)
    sections = {}
    if not args.skip_speed:
        table, notes = speed(model, tokenizer, hp, args.steps)
        print(table)
        print("\n".join(notes))
        sections[SPEED_TITLE] = [table, ""] + [f"- {n}" for n in notes]
    if args.accuracy:
        table, notes = accuracy(model, tokenizer, hp, args.multipliers)
        print(table)
        print("\n".join(notes))
        sections[ACCURACY_TITLE] = [table, ""] + [f"- {n}" for n in notes]
    write_sections(RESULTS, sections)
    print(f"written {RESULTS}", file=sys.stderr)


SPEED_TITLE = "## Speed: fast replay path vs plain full forward (one run)"
ACCURACY_TITLE = "## Held-out accuracy of a trained SPLIT vector"


def write_sections(path, sections):
    """Replace the measured `## ` sections of `path` (in order; new ones at the end), keep the rest."""
    kept: dict[str, list[str]] = {}
    header = ["# Training benchmark (`benchmarks/bench_training.py`)", ""]
    current = None
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("## "):
                current = line
                kept[current] = []
            elif current is not None:
                kept[current].append(line)
    for title, body in sections.items():
        kept[title] = [""] + body + [""]
    lines = list(header)
    for title, body in kept.items():
        lines += [title] + body
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
