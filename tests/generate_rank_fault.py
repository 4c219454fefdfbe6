"""``dd generate`` with one rank made slow, or failing, at its last batch (for
tests/test_data_gen.py: a multi-process run returns only once every rank is done, and does
not exit 0 when a rank failed).

``python -m tests.generate_rank_fault {slow,fail} RANK SECONDS <dd generate arguments>``;
Lightning's ``ddp`` launcher starts the other ranks with the same command.
"""

from __future__ import annotations

import functools
import sys
import time

from lightning.pytorch.callbacks import Callback

import data_gen.engine
from data_gen.generate_command import main


class RankFault(Callback):
    """Before rank ``rank``'s last batch is mapped (so before its last shard is published):
    sleep ``seconds``, then raise if ``mode`` is ``fail``."""

    def __init__(self, mode: str, rank: int, seconds: float):
        self.mode, self.rank, self.seconds = mode, rank, seconds

    def on_predict_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.global_rank != self.rank:
            return
        if not trainer.predict_loop.batch_progress.is_last_batch:
            return
        time.sleep(self.seconds)
        if self.mode == "fail":
            raise RuntimeError(f"simulated crash of rank {self.rank}")


if __name__ == "__main__":
    mode, rank, seconds, *arguments = sys.argv[1:]
    fault = RankFault(mode, int(rank), float(seconds))
    data_gen.engine.run_generation = functools.partial(
        data_gen.engine.run_generation, callbacks=[fault]
    )
    sys.exit(main(arguments))
