"""Helpers shared by the benchmark scripts (imported as ``common``: a script's own folder is
first on ``sys.path`` when it runs as ``python3 benchmarks/<script>.py``)."""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine_description(threads: int) -> str:
    """Processor, thread count and torch version, for the head of a result table."""
    processor = platform.processor() or platform.machine()
    return f"{processor}, {threads} threads, torch {torch.__version__}"


def cpu_kernels() -> str:
    """The CPU model, the ISA level torch dispatches its kernels for, and the bf16 / fp16 flags
    the kernel reports (Linux ``/proc/cpuinfo``): CPU bf16 results depend on them."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    wanted = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16")
    found = ", ".join(flag for flag in wanted if flag in flags) or "none"
    return (
        f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16/fp16 flags: {found}"
    )


def median_seconds(run: Callable[[], object], repeats: int, *, warmup: bool = False) -> float:
    """Median wall time of ``repeats`` calls of ``run`` (after one untimed call if ``warmup``)."""
    if warmup:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
