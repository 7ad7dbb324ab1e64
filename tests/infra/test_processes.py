"""infra.local.processes: a launched service's processes are found, and only they, and all of them stop."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from infra.local import processes


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _launch_sleeper(tmp_path: Path, marker: str, *, with_detached_child: bool = False) -> processes.Service:
    child = (
        "import subprocess; subprocess.Popen(['sleep', '120'], start_new_session=True); "
        if with_detached_child
        else ""
    )
    cmd = [sys.executable, "-c", f"{child}import time; time.sleep(120)", marker]
    return processes.launch(
        "sleeper", cmd, tmp_path / "sleeper.log", dict(os.environ), marker, [], lambda: True, 10
    )


def test_a_group_without_its_marker_is_not_ours(tmp_path):
    service = _launch_sleeper(tmp_path, f"marker-{uuid.uuid4().hex}")
    try:
        impostor = processes.Service("sleeper", service.pgid, service.started, "some-other-marker", [])
        assert processes.service_processes(impostor) == []
        assert [p.pid for p in processes.service_processes(service)] == [service.pgid]
    finally:
        processes.stop_service(service)
    assert not _alive(service.pgid)


def test_stop_service_ends_descendants_in_other_groups(tmp_path):
    # Like a Ray worker: a child of a marked process, in a session of its own, without the marker.
    marker = f"marker-{uuid.uuid4().hex}"
    service = _launch_sleeper(tmp_path, marker, with_detached_child=True)
    service.marker_unique = True
    deadline = time.monotonic() + 10
    while len(processes.service_processes(service)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [p.pid for p in processes.service_processes(service)]
    assert len(pids) == 2
    processes.stop_service(service, grace_s=2)
    assert not any(_alive(pid) for pid in pids)


def test_a_port_left_open_after_the_processes_end_is_named():
    # Something else listens on the service's port once its processes are gone: the error says
    # which port and who holds it, instead of only that the wait timed out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ghost = processes.Service("ghost", 2**22 + 7, time.time(), f"marker-{uuid.uuid4().hex}", [port])
        with pytest.raises(processes.StackError, match=rf"ports \[{port}\].*{port}: pid {os.getpid()}"):
            processes.stop_service(ghost, ports_s=0.5)


@pytest.mark.skipif(processes.since_boot() is None, reason="needs Linux's boot clock and /proc")
def test_a_stepped_wall_clock_neither_hides_our_processes_nor_adopts_older_ones(tmp_path):
    # The VM's clock was stepped back after launch: on the wall clock the service's own process now
    # looks older than the service. The boot clock does not move, so it is still found (and stopped).
    service = _launch_sleeper(tmp_path, f"marker-{uuid.uuid4().hex}")
    try:
        assert service.started_since_boot is not None
        service.started += 3600.0
        assert [p.pid for p in processes.service_processes(service)] == [service.pgid]
        # A process that started before the service is not ours, however the wall clock reads.
        later = processes.Service(
            "sleeper", service.pgid, 0.0, service.marker, [], started_since_boot=processes.since_boot() + 5.0
        )
        assert processes.service_processes(later) == []
    finally:
        processes.stop_service(service)
    assert not _alive(service.pgid)
