"""The flow map of this tree against the one of an earlier commit, side by side in one process.

Loads `dd/flow.py` as it was at `--against` (via `git show`; that file may import only
`dd.solver` and torch, as every version so far did) and times `flow_match_tokens` of both on
the same inputs, alternating old and new call by call, at the LlamaGen (V=16384, C=8) and
VAR (V=4096, C=32) shapes, default settings. Reports medians, the speed-up and how many tokens
agree. Results go to docs/benchmarks.md ("AR flow-matching map").

    PYTHONPATH=. python3 benchmarks/flow_versions.py --against bc54e1f
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine_description

from dd import flow as flow_new

SHAPES = (("LlamaGen", 16384, 8), ("VAR", 4096, 32))


def load_flow_at(commit: str):
    """The module dd/flow.py at `commit`, imported under the name `flow_at_commit`."""
    source = subprocess.run(
        ["git", "show", f"{commit}:dd/flow.py"], check=True, capture_output=True, text=True
    ).stdout
    with tempfile.TemporaryDirectory(prefix="flow_versions_") as folder:
        path = Path(folder) / "flow_at_commit.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("flow_at_commit", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["flow_at_commit"] = module
        spec.loader.exec_module(module)  # the code is compiled now: the file can go
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="an earlier commit")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    flow_old = load_flow_at(args.against)
    print(f"{machine_description(torch.get_num_threads())}; {args.tokens} tokens\n")
    print(f"| shape | {args.against} s | this tree s | speed-up | identical tokens |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for name, vocab_size, code_dim in SHAPES:
        codebook = torch.randn(vocab_size, code_dim)
        noise = torch.randn(args.tokens, code_dim)
        logits = 3.0 * torch.randn(args.tokens, vocab_size)
        seconds = {"old": [], "new": []}
        tokens = {}
        for repeat in range(args.repeats + 1):  # the first round is a warm-up
            for key, module in (("old", flow_old), ("new", flow_new)):
                start = time.perf_counter()
                tokens[key] = module.flow_match_tokens(noise, logits, codebook)
                if repeat:
                    seconds[key].append(time.perf_counter() - start)
        old_s, new_s = statistics.median(seconds["old"]), statistics.median(seconds["new"])
        same = int((tokens["old"] == tokens["new"]).sum())
        print(
            f"| {name} V={vocab_size} C={code_dim} | {old_s:.3f} | {new_s:.3f} | "
            f"{old_s / new_s:.2f}x | {same}/{args.tokens} |"
        )


if __name__ == "__main__":
    main()
