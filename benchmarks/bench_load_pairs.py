"""Time and peak memory of loading a pair folder for training (``dd.data.load_pairs``).

    dd generate --recipe recipes/generate_tiny_var.yaml --output.folder /tmp/var20k
    PYTHONPATH=. python3 benchmarks/bench_load_pairs.py --pairs /tmp/var20k

Printed: seconds, the pairs' own bytes (what stays in memory) and the growth of the process'
peak RSS during the load (``ru_maxrss`` after it, less before it): the transient copies a
loader makes on top of what it keeps. Run it on another commit's tree (a git worktree on
``PYTHONPATH``) to compare loaders on the same folder, one process each.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from common import machine_description

from dd.data import load_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="a finished pair folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = json.loads((Path(args.pairs) / "manifest.json").read_text())
    fingerprint = manifest["teacher"]["fingerprint"]
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    pairs = load_pairs(args.pairs, teacher_fingerprint=fingerprint)
    seconds = time.perf_counter() - started
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024
    kept_mb = (
        sum(
            t.numel() * t.element_size()
            for t in (pairs.index, pairs.labels, pairs.noise, pairs.tokens)
        )
        / 2**20
    )
    print(machine_description(args.threads))
    print(
        f"{len(pairs)} pairs, noise {tuple(pairs.noise.shape[1:])} {pairs.noise.dtype}: "
        f"{seconds:.1f} s, kept {kept_mb:.1f} MB, peak RSS growth {peak_growth_mb:.1f} MB"
    )


if __name__ == "__main__":
    main()
