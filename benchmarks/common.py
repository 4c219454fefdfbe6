"""Helpers shared by the benchmark scripts (imported as ``common``: a script's own folder is
first on ``sys.path`` when it runs as ``python3 benchmarks/<script>.py``)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine_description(threads: int) -> str:
    """Processor, thread count and torch version, for the head of a result table."""
    processor = platform.processor() or platform.machine()
    return f"{processor}, {threads} threads, torch {torch.__version__}"


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
