"""The ``meerkat`` command: one entry point for the jobs and the local stack.

meerkat stack up|down|status        the embedded local stack (Ray, MLflow, S3 on loopback)
meerkat demo [key=value ...]        the whole pipeline on this machine (make demo)
meerkat build|train|evaluate|ablate [--config FILE] [key=value ...]
                                    the jobs, as python -m pipelines.<job> (dotted overrides)
meerkat quickstart                  one training step and one generation, in process
meerkat compare [--ablation ID] [--metrics PATTERN ...]
                                    side-by-side table of evaluation runs, read from MLflow
                                    (runs of one metrics.protocol_version only)
meerkat serve [up|status|down] ...  the Serve application on the local stack (serve/deploy.py)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

JOBS = {
    "build": "pipelines.build_avfit",
    "train": "pipelines.train",
    "evaluate": "pipelines.evaluate",
    "ablate": "pipelines.ablate",
    "quickstart": "pipelines.quickstart",
    "demo": "infra.demo",
}
"""``meerkat <command>``: the module whose ``main(argv)`` runs it, with the rest of the command line."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("stack", *JOBS, "compare", "serve")
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "stack":
        from infra.local.stack import main as stack_main

        return stack_main(rest)
    if command == "serve":
        return _serve(rest)
    if command == "compare":
        from pipelines.ablate import compare

        p = argparse.ArgumentParser(prog="meerkat compare")
        p.add_argument("--ablation", default=None)
        p.add_argument("--experiment", default="meerkat")
        p.add_argument("--runs", nargs="*", default=None)
        p.add_argument(
            "--metrics",
            nargs="*",
            default=None,
            help="<task>/<dataset>/<metric> patterns (e.g. 'arig/*/mean_ciou', '*'); default: the headline ones",
        )
        a = p.parse_args(rest)
        print(compare(a.ablation, a.experiment, a.runs, a.metrics))
        return 0
    importlib.import_module(JOBS[command]).main(rest)
    return 0


def _serve(argv: list[str]) -> int:
    """``serve.deploy`` pointed at the local stack recorded in ``--dir``."""
    from infra.local.stack import DEFAULT_DIR, load_state

    p = argparse.ArgumentParser(prog="meerkat serve", add_help=False)
    p.add_argument("--dir", default=DEFAULT_DIR)
    a, rest = p.parse_known_args(argv)
    state = load_state(a.dir)
    if state is None:
        print(f"no local stack recorded in {a.dir}: run `meerkat stack up` first", file=sys.stderr)
        return 1
    # The stack's variables carry the dashboard address and Ray's token settings.
    os.environ.update(state[0].env())
    from serve import deploy

    return deploy.main(rest, prog="meerkat serve")


if __name__ == "__main__":
    raise SystemExit(main())
