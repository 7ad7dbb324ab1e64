"""Fault injection for the training tests: a Ray Train worker that SIGKILLs itself mid-run.

In process::

    train.run(cfg, after_step=KillAt(7))

As a submitted job (``ray job submit --working-dir . -- ...``), the training command line with
``--kill-at N`` in front::

    python -m tests.pipelines.faults --kill-at 3 --config pipelines/configs/paper.yaml name=...

Why a hook the test installs (``pipelines.train.AfterStep``) rather than a field of the training
config or an environment variable: the production config carries nothing that kills workers, and
the hook reaches every worker with the loop's own config (pickled by reference to this module,
which the workers import from the driver's working directory, the repository). An environment
variable set in the test process would reach neither a submitted job's driver nor the Train
workers, which take their environment from their Ray node, so the kill would silently not happen
and a resume test would pass without resuming; the tests assert the restart in MLflow
(``train/resumed_at_step``) for that reason too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("tests.pipelines.faults")


@dataclass(frozen=True)
class KillAt:
    """``after_step`` hook: rank ``rank`` SIGKILLs its own process after optimizer step ``step``,
    on the first attempt only (a restarted group trains on).

    Ray Train's controller collects reports (and registers checkpoints) when it polls the workers;
    a crash within one poll of a report can lose that checkpoint. The hook waits out three polls
    first, so that the test is of resuming from the latest registered checkpoint.
    """

    step: int
    rank: int = 1

    def __call__(self, rank: int, state: dict[str, Any]) -> None:
        if rank != self.rank or state["step"] != self.step or state["attempt"]:
            return
        delay = 3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))
        logger.error(
            "rank %d kills itself after step %d in %.0f s (fault-tolerance test)", rank, self.step, delay
        )
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``pipelines.train.main`` with a :class:`KillAt` hook installed."""
    from pipelines import train

    parser = argparse.ArgumentParser(description="The training job with a worker killed mid-run.")
    parser.add_argument(
        "--kill-at", type=int, required=True, help="the optimizer step after which rank 1 dies"
    )
    parser.add_argument("--kill-rank", type=int, default=1)
    args, rest = parser.parse_known_args(argv)
    return train.main(rest, after_step=KillAt(args.kill_at, args.kill_rank))


if __name__ == "__main__":
    # The importable module's KillAt, not __main__'s: the workers unpickle it by module name.
    from tests.pipelines.faults import main as _main

    _main()
