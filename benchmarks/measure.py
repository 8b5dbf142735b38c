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


_CPU_ATTENTION_REGISTERED = False


def _register_cpu_attention() -> None:
    """Teach `torch.utils.flop_counter` the CPU flash-attention kernels (it has formulas only for the
    CUDA ones, so on CPU attention would silently count as zero). Same formula as the CUDA kernels:
    4 * B * H * S_q * S_k * D forward (QK^T and PV), 2.5x that backward; masked-out pairs are counted
    like the others, as the kernels compute them."""
    global _CPU_ATTENTION_REGISTERED
    if _CPU_ATTENTION_REGISTERED:
        return
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in fc.flop_registry:
        @fc.register_flop_formula(forward)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if backward is not None and backward not in fc.flop_registry:
        @fc.register_flop_formula(backward)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    _CPU_ATTENTION_REGISTERED = True


def count_flops(run: Callable[[], Any]) -> float:
    """Floating-point operations of `run()`: matrix multiplies and attention (the CPU flash-attention
    kernels included, `_register_cpu_attention`), forward and backward, as `torch.utils.flop_counter`
    counts them; element-wise work (norms, activations, softmax outside SDPA) is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())
