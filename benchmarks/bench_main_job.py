"""The main job's arithmetic: FLOPs per phase, against the time each phase takes and this CPU's matmul rate.

Why: "the main job takes N s" says nothing about how far it is from what its results need. This runs
`demo.run_main_job` once under a FLOP-counting dispatch mode (matrix multiplies and attention, with
`torch.utils.flop_counter`'s formulas, as `measure.count_flops` counts them; not `FlopCounterMode`
itself, whose module tracker puts global forward hooks on every module and so turns off the prefix
reuse that refuses hooked models) with each phase's FLOPs read at its boundaries, then times
matrix multiplies of the job's own shapes on this machine. A phase's floor is its FLOPs at that
rate: the time it would take if it did nothing but its multiplies at full speed. The timed run is
a separate, uncounted run of the same job (`--timed`, default on), so the counter's overhead
does not enter the seconds.

Not counted: the local judge's forwards run in a worker thread (`asyncio.to_thread`) and the FLOP
counter only sees the main thread, so the generation-side phase's FLOPs leave the judge out
(`bench_judge.py` counts it: about 8.4 GFLOP per question with the shared rubric prefix).

    python benchmarks/bench_main_job.py [--json main_job.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from measure import _register_cpu_attention, load

from easyedit_split import demo
from easyedit_split.editor import SteerEditor
from easyedit_split.evaluation import PreferenceUtilityEvaluator

PHASES: dict[str, tuple[Any, str]] = {
    "caa + generation": (demo, "run_steering_demo"),
    "train": (SteerEditor, "train"),
    "evaluate": (PreferenceUtilityEvaluator, "compare"),
    "generation eval (judge not counted)": (demo, "run_demo_generation"),
}


class FlopCount(TorchDispatchMode):
    """Sums `torch.utils.flop_counter`'s formulas over the ops this thread dispatches (no module hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out

    def get_total_flops(self) -> int:
        return self.total


@contextmanager
def phase_counters(counter: Any, flops: dict[str, float]) -> Iterator[None]:
    """Wrap each phase's entry point so the FLOPs it adds to `counter` are summed under its name."""
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PHASES.items()}

    def wrapped(name: str, function: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = counter.get_total_flops()
            try:
                return function(*args, **kwargs)
            finally:
                flops[name] = flops.get(name, 0.0) + float(counter.get_total_flops() - before)
        return run

    try:
        for name, (owner, attr) in PHASES.items():
            setattr(owner, attr, wrapped(name, originals[name]))
        yield
    finally:
        for name, (owner, attr) in PHASES.items():
            setattr(owner, attr, originals[name])


def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """GFLOP/s of `torch.mm` on these (M, K, N) shapes (median of `repeats` runs of all of them)."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    work = sum(2.0 * m * k * n for m, k, n in shapes)
    for a, b in mats:  # warm-up
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for a, b in mats:
            torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return work / sorted(times)[len(times) // 2] / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the values to this JSON file")
    parser.add_argument("--no-timed", action="store_true", help="skip the separate timed run")
    args = parser.parse_args(argv)
    _register_cpu_attention()
    loads = {"start": load()}
    seconds: dict[str, float] = {}
    if not args.no_timed:
        with tempfile.TemporaryDirectory() as out:
            result = demo.run_main_job(out_dir=out)
        seconds = dict(result.seconds)
        loads["after timed run"] = load()
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out, FlopCount() as counter, \
            phase_counters(counter, flops):
        demo.run_main_job(out_dir=out)
    loads["after counted run"] = load()
    # the job's own shapes: a replayed chunk through the MLP and attention projections, the LM head
    hidden, inner, vocab = 576, 1536, 49152
    rate = matmul_rate([(4096, hidden, inner), (4096, inner, hidden), (4096, hidden, hidden), (1024, hidden, vocab)])
    loads["after matmul rate"] = load()
    rows = []
    for name in PHASES:
        timed_key = "train sft" if name == "train" else name.split(" (")[0]
        timed = seconds.get(timed_key)
        if name == "train" and seconds:
            timed = sum(value for key, value in seconds.items() if key.startswith("train "))
        floor = flops.get(name, 0.0) / 1e9 / rate
        rows.append({"phase": name, "gflop": flops.get(name, 0.0) / 1e9, "floor_seconds": floor, "seconds": timed})
    values = {"matmul_gflop_per_second": rate, "phases": rows, "seconds": seconds, "load_1_5_min": loads,
              "definitions": {"floor_seconds": "the phase's matrix-multiply and attention FLOPs at this CPU's torch.mm rate",
                              "seconds": "the phase in a separate run without the FLOP counter (demo's own clock)"}}
    print(f"| phase | GFLOP | floor at {rate:.0f} GFLOP/s | measured |")
    print("|---|---|---|---|")
    for row in rows:
        measured = "" if row["seconds"] is None else f"{row['seconds']:.1f} s"
        print(f"| {row['phase']} | {row['gflop']:.0f} | {row['floor_seconds']:.1f} s | {measured} |")
    if seconds:
        print(f"whole job (demo's clock): {seconds.get('total', float('nan')):.1f} s; load {loads}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(values, handle, indent=2)
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
