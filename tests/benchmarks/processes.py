"""CPU time by process for the benchmarks: who used the machine's cores during a measured span."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable

import psutil


def process_cpu_s(
    label: Callable[[str], str] = lambda t: t, own: str = "this process"
) -> dict[int, tuple[str, float]]:
    """``pid -> (title, CPU seconds)`` of every process: Ray's workers by their title
    (``ray::ServeReplica:...``, ``ray::_StatsActor``), others by name, passed through ``label``;
    this process as ``own``."""
    out = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = proc.info
        if info["cpu_times"] is None:
            continue
        cmd = info["cmdline"] or []
        title = label(cmd[0] if cmd and cmd[0].startswith("ray::") else (info["name"] or "?"))
        if proc.pid == os.getpid():
            title = own
        out[proc.pid] = (title[:60], info["cpu_times"].user + info["cpu_times"].system)
    return out


def cpu_by_title(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each title spent between two :func:`process_cpu_s` snapshots (a process that
    exited between them is not counted)."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (title, secs) in after.items():
        spent[title] += secs - before.get(pid, (title, 0.0))[1]
    return dict(spent)
