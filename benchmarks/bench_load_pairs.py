"""Time and memory of loading a pair folder for training (``dd.data.load_pairs``), in memory
and memory-mapped (``pairs.memory_map``), by several processes at once as on a DDP node.

    dd generate --recipe recipes/generate_tiny_var.yaml --output.folder /tmp/var20k
    PYTHONPATH=. python3 benchmarks/bench_load_pairs.py --pairs /tmp/var20k --processes 2

Both ways run side by side in one run. Each way starts ``--processes`` processes together;
each loads the pairs, reads every row once (an epoch's gathers), and, while all of them still
hold the pairs, reports: the load's seconds, the growth of its peak RSS during the load
(``ru_maxrss``: the transient copies a loader makes), the growth of its private (anonymous)
memory and its proportional set size (PSS: a page mapped by k processes counts 1/k in each),
both against the process before the load, in MiB. The memory-mapped way first makes its copy in
``--memory-map`` (default: a fresh temporary folder), timed on its own; its processes then map
that copy. Run it on another commit's tree (a git worktree on ``PYTHONPATH``) to compare loaders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import machine_description

from dd.data import load_pairs

ROWS_PER_GATHER = 512


def memory_kib() -> dict[str, int]:
    """This process' private (anonymous) memory and proportional set size, in KiB (Linux)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            values["anon"] = int(line.split()[1])
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            values["pss"] = int(line.split()[1])
    return values


def one_process(pairs: str, memory_map: str | None, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    fingerprint = json.loads((Path(pairs) / "manifest.json").read_text())["teacher"]["fingerprint"]
    before, peak_before = memory_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loaded = load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=memory_map)
    seconds = time.perf_counter() - started
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    for start in range(0, len(loaded), ROWS_PER_GATHER):  # every row once, as an epoch gathers
        rows = torch.arange(start, min(start + ROWS_PER_GATHER, len(loaded)))
        loaded.noise[rows].float().sum()
        loaded.tokens[rows].sum()
    barrier.wait()  # every process holds the pairs now: shared pages count 1/k in each PSS
    after = memory_kib()
    barrier.wait()
    kept = sum(t.numel() * t.element_size() for t in (loaded.labels, loaded.noise, loaded.tokens))
    results.put(
        {
            "seconds": seconds,
            "kept_mib": kept / 2**20,
            "peak_growth_mib": peak_growth / 1024,
            "private_growth_mib": (after["anon"] - before["anon"]) / 1024,
            "pss_growth_mib": (after["pss"] - before["pss"]) / 1024,
        }
    )


def run_processes(pairs: str, memory_map: str | None, count: int, threads: int) -> list[dict]:
    context = mp.get_context("spawn")  # fresh interpreters, as DDP's processes
    barrier, results = context.Barrier(count), context.Queue()
    workers = [
        context.Process(target=one_process, args=(pairs, memory_map, threads, barrier, results))
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    measured = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise RuntimeError(f"a process exited with {worker.exitcode}")
    return measured


def make_copy(pairs: str, memory_map: str, threads: int) -> float:
    """Seconds to make the memory-mapped copy (one process, as dd train's first)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=_timed_copy, args=(pairs, memory_map, threads, results))
    worker.start()
    seconds = results.get()
    worker.join()
    return seconds


def _timed_copy(pairs: str, memory_map: str, threads: int, results) -> None:
    torch.set_num_threads(threads)
    fingerprint = json.loads((Path(pairs) / "manifest.json").read_text())["teacher"]["fingerprint"]
    started = time.perf_counter()
    load_pairs(pairs, teacher_fingerprint=fingerprint, memory_map=memory_map)
    results.put(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="a finished pair folder")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--memory-map", help="the copy's folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(machine_description(args.threads))
    given = contextlib.nullcontext(args.memory_map) if args.memory_map else None
    with given or tempfile.TemporaryDirectory(prefix="bench_load_pairs_") as memory_map:
        copy_seconds = make_copy(args.pairs, memory_map, args.threads)
        print(f"making the memory-mapped copy (one process): {copy_seconds:.1f} s")
        for name, where in (("in memory", None), ("memory-mapped", memory_map)):
            for rank, r in enumerate(
                run_processes(args.pairs, where, args.processes, args.threads)
            ):
                print(
                    f"{name}, process {rank} of {args.processes}: load {r['seconds']:.2f} s, "
                    f"pairs {r['kept_mib']:.1f} MiB, "
                    f"peak RSS growth {r['peak_growth_mib']:.1f} MiB, "
                    f"private growth {r['private_growth_mib']:.1f} MiB, "
                    f"PSS growth {r['pss_growth_mib']:.1f} MiB"
                )


if __name__ == "__main__":
    main()
