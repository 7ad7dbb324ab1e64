"""The ``meerkat`` command: one entry point for the jobs and the local stack.

meerkat stack up|down|status        the embedded local stack (Ray, MLflow, S3 on loopback)
meerkat demo                        the whole pipeline on this machine (make demo)
meerkat build|train|evaluate ...    the Ray jobs (same arguments as python -m pipelines.<job>)
meerkat ablate ...                  train + evaluate the ablation variants
meerkat compare [--ablation ID]     side-by-side table of evaluation runs, read from MLflow
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("stack", "demo", "quickstart", "build", "train", "evaluate", "ablate", "compare")
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "stack":
        from infra.local.stack import main as stack_main

        return stack_main(rest)
    if command == "compare":
        from pipelines.ablate import compare

        p = argparse.ArgumentParser(prog="meerkat compare")
        p.add_argument("--ablation", default=None)
        p.add_argument("--experiment", default="meerkat")
        p.add_argument("--runs", nargs="*", default=None)
        a = p.parse_args(rest)
        print(compare(a.ablation, a.experiment, a.runs))
        return 0
    module = {"build": "build_avfit"}.get(command, command)
    job = __import__(f"pipelines.{module}", fromlist=["main"])
    job.main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
