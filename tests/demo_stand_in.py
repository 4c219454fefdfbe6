"""Stand-in stages of ``dd demo`` (for tests/test_evaluate.py): the demo's processes and pool,
none of its work. ``python -m tests.demo_stand_in <dd demo arguments>`` runs ``dd demo``'s
``main`` with ``stage`` as every stage.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from data_gen.shards import ShardError

SLEEP_SECONDS = 60  # a stage's "work": far longer than any test waits
FAIL_VARIABLE = "DD_DEMO_STAND_IN_FAIL"  # the teacher whose stage fails (the workers inherit it)


def stage(stage, name, settings, output, done, *, seed, progress):
    """``dd.demo.run_stage``'s signature: writes its process id to ``output/<name>.pid``, then
    sleeps. The teacher named by ``FAIL_VARIABLE`` raises a ShardError instead, once another
    teacher's stage has written its id (so that one is running)."""
    Path(output, f"{name}.pid").write_text(str(os.getpid()))
    if os.environ.get(FAIL_VARIABLE) == name:
        while not [path for path in Path(output).glob("*.pid") if path.stem != name]:
            time.sleep(0.05)
        raise ShardError(f"{output} holds pairs of other settings (stand-in)")
    time.sleep(SLEEP_SECONDS)
    return None, 0.0


if __name__ == "__main__":
    import dd.demo
    from tests.demo_stand_in import stage as importable_stage  # pickled by this name

    dd.demo.run_stage = importable_stage
    sys.exit(dd.demo.main(sys.argv[1:]))
