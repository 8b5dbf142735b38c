"""Shared by the benchmarks: peak memory of a block of code, its floating-point work, the machine's load.

Peak memory is the peak RSS of this process while the block runs on CPU (sampled every 5 ms
by a thread, psutil), or `torch.cuda.max_memory_allocated` on CUDA (reset at the start).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psutil
import torch


class Peak:
    """`with peak_memory(device) as peak: ...`, then `peak.mb` (MiB) and `peak.seconds`."""

    mb: float = 0.0
    seconds: float = 0.0


@contextmanager
def peak_memory(device: str = "cpu") -> Iterator[Peak]:
    peak = Peak()
    started = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            yield peak
        finally:
            torch.cuda.synchronize()
            peak.mb = torch.cuda.max_memory_allocated() / 2**20
            peak.seconds = time.perf_counter() - started
        return
    process, stop = psutil.Process(), threading.Event()
    samples = [process.memory_info().rss]

    def sample() -> None:
        while not stop.is_set():
            samples.append(process.memory_info().rss)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        samples.append(process.memory_info().rss)
        peak.mb = max(samples) / 2**20
        peak.seconds = time.perf_counter() - started


def memory_kind(device: str) -> str:
    return "peak allocated (CUDA)" if device.startswith("cuda") else "peak RSS of the process"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def count_flops(run: Callable[[], Any]) -> float:
    """Floating-point operations of `run()` (matrix multiplies and attention, forward and backward,
    as `torch.utils.flop_counter` counts them; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())
