"""Local judge speed: forced digit ratings, batched with the LM head at the last position, against
one full forward per prompt with the LM head at every position (the judge before issue 23).

    python benchmarks/bench_judge.py [--prompts 48] [--batch-size 8] [--json PATH]

Same prompts (the package's rubrics rendered for sentiment test questions as the generations), the
default model as judge with `force_rating="expected"`, `max_new_tokens=0` (the demo's judge). The
ratings of both paths are asserted equal to 3 decimals' rounding. Prints the times, the ratio and the load.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from measure import count_flops, load

from easyedit_split.data import load_dataset
from easyedit_split.judging import LocalJudge
from easyedit_split.judging.parsing import parse_rating
from easyedit_split.judging.rubrics import judge_prompts
from easyedit_split.models import load_model_and_tokenizer


def unbatched_full_logits(judge: LocalJudge, prompts: list[str]) -> list[float]:
    """The old path: per prompt, one batch-1 forward with the LM head at every position."""
    suffix = judge.tokenizer("\nRating: ", add_special_tokens=False)["input_ids"]
    digits = judge._digit_ids()
    out = []
    for prompt in prompts:
        with torch.no_grad():
            logits = judge.model(input_ids=torch.tensor([judge._encode(prompt) + suffix])).logits[0, -1].float()
        p = torch.softmax(logits[digits], dim=-1)
        out.append(float((p * torch.arange(len(digits), dtype=torch.float32)).sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    judge = LocalJudge(model, tokenizer, max_new_tokens=0, force_rating="expected", batch_size=args.batch_size)
    pairs = load_dataset("sentiment", "test")
    prompts = []
    for pair in pairs:
        prompts.extend(judge_prompts(pair.matching, pair.question, "positive sentiment").values())
        if len(prompts) >= args.prompts:
            break
    prompts = prompts[: args.prompts]
    start_load = load()
    started = time.perf_counter()
    old = unbatched_full_logits(judge, prompts)
    old_s = time.perf_counter() - started
    started = time.perf_counter()
    new = []
    for i in range(0, len(prompts), args.batch_size):
        new.extend(parse_rating(a) for a in judge.generate_batch(prompts[i:i + args.batch_size]))
    new_s = time.perf_counter() - started
    diff = max(abs(a - b) for a, b in zip(old, new))
    assert diff <= 1.5e-3, f"batched ratings differ from the unbatched full-logits ones by {diff}"
    old_flops = count_flops(lambda: unbatched_full_logits(judge, prompts[:8]))
    new_flops = count_flops(lambda: judge.generate_batch(prompts[:8]))
    tokens = sum(len(judge._encode(p)) for p in prompts)
    values = {"prompts": len(prompts), "mean_prompt_tokens": tokens / len(prompts), "batch_size": args.batch_size,
              "unbatched_full_logits_seconds": old_s, "batched_last_position_seconds": new_s,
              "speed_up": old_s / new_s, "flop_ratio_first_8": old_flops / new_flops, "max_abs_rating_diff": diff,
              "load_1_5_min": {"start": start_load, "end": load()}}
    print(json.dumps(values, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
