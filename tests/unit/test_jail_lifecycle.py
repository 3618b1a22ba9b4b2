"""Creation, teardown, factory shutdown and the start-up reaper of JAIL isolates (real nsjail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest

from isolates.base import ExecutionRequest, Language, Status
from isolates.jail import JailFactory, JailSettings, JailStartError, reap_stale_jails
from isolates.jail._cgroups import JailCgroup, remove_tree

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_destroy_kills_the_jail_and_removes_its_cgroups_and_state(tmp_path: Path) -> None:
    factory = JailFactory(tmp_path)
    try:
        isolate = factory.create()
        state_dirs = list(factory.instance_dir.glob("j*"))
        cgroups = [factory.layout.jail_dir(c, isolate.jail_id) for c in factory.layout.parents]
        assert len(state_dirs) == 1 and all(c.is_dir() for c in cgroups)
        assert _alive(isolate.pid)
        isolate.destroy()
        isolate.destroy()  # idempotent
        assert not _alive(isolate.pid)
        assert not any(c.exists() for c in cgroups)
        assert list(factory.instance_dir.glob("j*")) == []
        with pytest.raises(RuntimeError):
            isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON, code="1"))
    finally:
        factory.close()


def test_destroy_of_a_busy_jail(tmp_path: Path) -> None:
    factory = JailFactory(tmp_path)
    try:
        isolate = factory.create()
        import threading

        results = []
        runner = threading.Thread(target=lambda: results.append(isolate.run(ExecutionRequest(
            execution_id="t", language=Language.SHELL, code="sleep 60"))))
        runner.start()
        time.sleep(0.3)
        isolate.destroy()
        runner.join(10)
        assert not runner.is_alive() and not _alive(isolate.pid)
        # The run ends with a result, not an exception from a descriptor closed under it.
        assert [r.status for r in results] == [Status.CANCELLED]
        assert list(factory.instance_dir.glob("j*")) == []
    finally:
        factory.close()


def _cgroup_paths(proc: str) -> dict[str, str]:
    """Controller -> cgroup path of a /proc/<pid> or /proc/thread-self entry."""
    paths = {}
    for line in Path(proc, "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    return paths


def test_nsjail_is_born_in_the_jails_cgroups_and_the_caller_goes_back(tmp_path: Path) -> None:
    """create() starts nsjail from inside the jail's cgroups (no attach, no grace-period wait):
    nsjail and the guest are in them, the calling thread is back where it was, and the guest's
    cgroup namespace is rooted at the jail's cgroup."""
    factory = JailFactory(tmp_path)
    try:
        before = _cgroup_paths("/proc/thread-self")
        isolate = factory.create()
        try:
            assert _cgroup_paths("/proc/thread-self") == before
            nsjail = _cgroup_paths(f"/proc/{isolate.pid}")
            for controller in ("memory", "pids", "cpu"):
                assert nsjail[controller].endswith(f"/{isolate.jail_id}"), nsjail
            cpu = factory.layout.jail_dir("cpu", isolate.jail_id)
            assert int((cpu / "cpu.cfs_quota_us").read_text()) * 1000 == (
                int((cpu / "cpu.cfs_period_us").read_text()) * factory.settings.cpu_ms_per_sec)
            pids = factory.layout.jail_dir("pids", isolate.jail_id)
            assert int((pids / "pids.max").read_text()) == factory.settings.pids_max + 1
            result = isolate.run(ExecutionRequest(
                execution_id="t", language=Language.SHELL,
                code="grep -E ':(memory|pids|cpu):' /proc/self/cgroup | cut -d: -f3 | sort -u"))
            assert result.stdout == b"/\n", result
        finally:
            isolate.destroy()
    finally:
        factory.close()


def test_remove_tree_never_kills_sandboxd(tmp_path: Path) -> None:
    """A sandboxd thread inside a jail's cgroup (as while it starts nsjail) makes the cgroup
    list sandboxd's pid; removing the cgroup must fail rather than kill this process."""
    factory = JailFactory(tmp_path)
    try:
        cgroup = JailCgroup(factory.layout, "jtest")
        cgroup.create(64 * 1024 * 1024, 8, 100)
        with cgroup.joined(), pytest.raises(OSError):
            remove_tree(list(cgroup.dirs.values()), timeout_s=0.2)
        cgroup.remove()
        assert not any(d.exists() for d in cgroup.dirs.values())
    finally:
        factory.close()


def test_close_removes_parent_cgroups_and_instance_dir(tmp_path: Path) -> None:
    factory = JailFactory(tmp_path)
    parents = [factory.layout.parent_dir(c) for c in factory.layout.parents]
    assert all(p.is_dir() for p in parents)
    factory.close()
    assert not any(p.exists() for p in parents)
    assert not factory.instance_dir.exists()
    with pytest.raises(JailStartError):
        factory.create()


def test_guest_never_maps_to_root() -> None:
    with pytest.raises(pydantic.ValidationError):
        JailSettings(outside_uid=0)


def test_missing_facet_dir_is_a_start_error(tmp_path: Path) -> None:
    factory = JailFactory(tmp_path)
    try:
        with pytest.raises(JailStartError, match="does not exist"):
            factory.create(facet_dir=tmp_path / "nope")
    finally:
        factory.close()


CRASHING_SERVER = """
import os, sys
from pathlib import Path
from isolates.jail import JailFactory
from isolates.base import ExecutionRequest, Language
factory = JailFactory(Path(sys.argv[1]))
warm = factory.create()
busy = factory.create()
import threading
threading.Thread(target=lambda: busy.run(ExecutionRequest(
    execution_id="x", language=Language.SHELL, code="sleep 600"))).start()
import time; time.sleep(0.5)
print(factory.instance, warm.pid, busy.pid, flush=True)
time.sleep(600)
"""


def test_reaper_removes_what_a_crashed_server_left(tmp_path: Path) -> None:
    live = JailFactory(tmp_path)
    try:
        server = subprocess.Popen([sys.executable, "-c", CRASHING_SERVER, str(tmp_path)],
                                  stdout=subprocess.PIPE, cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        assert server.stdout is not None
        instance, warm_pid, busy_pid = server.stdout.readline().split()
        server.send_signal(signal.SIGKILL)
        server.wait()
        crashed_dir = live.instance_dir.parent / instance.decode()
        assert crashed_dir.is_dir()
        report = reap_stale_jails(tmp_path)
        assert report.instances == [instance.decode()]
        assert report.cgroups and not any(Path(p).exists() for p in report.cgroups)
        assert not crashed_dir.exists()
        # The live factory's instance is left alone and still works.
        assert live.instance_dir.is_dir()
        isolate = live.create()
        try:
            result = isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON,
                                                  code="print(1)"))
        finally:
            isolate.destroy()
        assert result.status is Status.OK
        # Orphaned nsjail processes exit once their jails are emptied.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(int(warm_pid)) or _alive(int(busy_pid))):
            time.sleep(0.05)
        assert not _alive(int(warm_pid)) and not _alive(int(busy_pid))
    finally:
        live.close()
