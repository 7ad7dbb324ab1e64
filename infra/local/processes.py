"""Detached service processes: launch one in its own session, find all of its processes, stop them.

A :class:`Service` records enough (process group, start time, a command-line marker, ports) to find
its processes again from another Python process (``state.json`` of the local stack), including
Ray workers that sit in process groups of their own. Used by the local stack
(``infra/local/stack.py``) and by the test fixtures that start the same services.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """A service did not start, answer or stop; the message names its log file where there is one."""


@dataclass
class Service:
    """A started service, as recorded in ``state.json``: enough to find and end its processes."""

    name: str
    pgid: int
    started: float  # time.time() just before launch: older processes are never ours
    marker: str  # a cmdline substring of the service's own processes
    ports: list[int] = field(default_factory=list)
    # True when the marker is unique to this stack (Ray's private temp dir), so marked processes
    # are ours even outside the recorded group (Ray workers may sit in groups of their own).
    marker_unique: bool = False
    # Seconds since boot just before launch (Linux): unlike ``started`` this does not move when the
    # wall clock is stepped, so a clock jump cannot hide the service's processes from ``down``.
    # None in records written before it existed, and where the platform has no boot clock.
    started_since_boot: float | None = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any interface: Ray's GCS binds the wildcard)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_get(
    url: str, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes] | None:
    """``(status, body)``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=timeout
        ) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except (OSError, ValueError):
        return None


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until true; raise StackError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise StackError(f"{what}: not done after {timeout:.0f} s")


def launch(
    name: str,
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    marker: str,
    ports: list[int],
    check: Callable[[], bool],
    timeout: float,
    *,
    marker_unique: bool = False,
) -> Service:
    """Start ``cmd`` detached in a new session (its own process group), output to ``log``, and
    wait until ``check`` passes; on failure stop what was started and raise StackError.

    The process may exit with status 0 and leave its daemons running (``ray start``); any other
    exit before ``check`` passes fails at once instead of waiting out ``timeout``.
    """
    started, started_since_boot = time.time(), since_boot()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    service = Service(name, proc.pid, started, marker, ports, marker_unique, started_since_boot)
    deadline = time.monotonic() + timeout
    while not check():
        rc = proc.poll()
        failure = f"exited with status {rc}" if rc not in (None, 0) else None
        if failure is None and time.monotonic() > deadline:
            failure = f"not ready after {timeout:.0f} s"
        if failure is not None:
            stop_service(service)
            raise StackError(f"{name} {failure}; see {log}")
        time.sleep(0.25)
    return service


def service_processes(service: Service) -> list[psutil.Process]:
    """This service's live processes (zombies excluded: they hold no port and cannot be killed)."""
    by_group: dict[int, list[tuple[psutil.Process, bool]]] = {}
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or _older(proc, service):
                continue
            pgid = os.getpgid(proc.pid)
        except (OSError, psutil.Error):
            continue
        marked = service.marker in " ".join(proc.info["cmdline"] or ())
        by_group.setdefault(pgid, []).append((proc, marked))
    # The recorded group is ours only while a marked process is in it: once the group has died,
    # its number can be reused by an unrelated session.
    group = by_group.get(service.pgid, [])
    ours = {p.pid: p for p, _ in group} if any(m for _, m in group) else {}
    if service.marker_unique:
        ours.update({p.pid: p for members in by_group.values() for p, m in members if m})
    # Ray workers run in process groups of their own under names like `ray::Actor`, with neither
    # group nor marker: they are found as descendants of the raylet.
    for proc in list(ours.values()):
        try:
            ours.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return [p for p in ours.values() if _alive(p)]


def since_boot() -> float | None:
    """Seconds since boot on the clock ``/proc/<pid>/stat`` counts process start in; None off Linux."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None and Path("/proc/self/stat").exists() else None


def _started_since_boot(pid: int) -> float | None:
    """When ``pid`` started, seconds since boot (field 22 of ``/proc/<pid>/stat``); None if unreadable.

    psutil's ``create_time`` adds this to the boot time derived from the wall clock, so a stepped
    clock moves every process's start time with it; read the boot-relative figure instead.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # fields[0] is field 3 (state)
    except (OSError, ValueError, IndexError):
        return None


def _older(proc: psutil.Process, service: Service) -> bool:
    """Whether ``proc`` started before ``service`` was launched (so cannot be one of its processes):
    on the boot clock where both sides have it, else on the wall clock; 1 s of slack either way."""
    if service.started_since_boot is not None:
        start = _started_since_boot(proc.pid)
        if start is not None:
            return start < service.started_since_boot - 1
    return proc.info["create_time"] < service.started - 1


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_service(service: Service, grace_s: float = 5.0, ports_s: float = 15.0) -> None:
    """SIGTERM the service's processes, SIGKILL what is left after ``grace_s``, wait up to
    ``ports_s`` for its ports to close."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        procs = service_processes(service)
        if not procs:
            break
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and service_processes(service):
            time.sleep(0.2)
    left = service_processes(service)
    if left:
        raise StackError(f"{service.name}: processes {[p.pid for p in left]} survived SIGKILL")
    # When the caller launched the service itself (the pytest fixtures), reap the group leader.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(service.pgid, os.WNOHANG)
    try:
        wait_for(
            lambda: not any(port_in_use(p) for p in service.ports), ports_s, f"{service.name}: closing ports"
        )
    except StackError:
        busy = [p for p in service.ports if port_in_use(p)]
        raise StackError(
            f"{service.name}: its processes ended but ports {busy} are still listened on after"
            f" {ports_s:g} s ({_listeners(busy)})"
        ) from None


def _listeners(ports: list[int]) -> str:
    """Who listens on ``ports``, as ``port: pid name`` where psutil can tell (for the error above)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
                name = "?"
                with contextlib.suppress(psutil.Error):
                    name = psutil.Process(conn.pid).name() if conn.pid else "?"
                found.append(f"{conn.laddr.port}: pid {conn.pid} {name}")
    return ", ".join(found) or "listener not found"
