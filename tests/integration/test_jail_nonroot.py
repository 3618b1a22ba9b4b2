"""JAIL isolates under a non-root service user, set up as docs/jail.md describes.

The fixture does what an operator does once as root: a system user, a subordinate id range for
it in /etc/subuid and /etc/subgid, and a cgroup delegated to it in each v1 hierarchy. The user
and its ranges stay (creating them again is a no-op); the cgroups are removed afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "sandboxd-nonroot"
CGROUP = "sandboxd-nonroot-test"
CONTROLLERS = ("memory", "pids", "cpu")
PROBE = Path(__file__).with_name("nonroot_jail_probe.py")


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True)
        return pwd.getpwnam(USER)


def _ensure_subordinate_range(path: Path) -> range:
    """This user's range in a subuid/subgid file, added after every existing one if absent."""
    lines = path.read_text().splitlines() if path.exists() else []
    end = 100000
    for line in lines:
        name, start, count = line.split(":")
        if name == USER:
            return range(int(start), int(start) + int(count))
        end = max(end, int(start) + int(count))
    with path.open("a") as file:
        file.write(f"{USER}:{end}:65536\n")
    return range(end, end + 65536)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[pwd.struct_passwd, range, Path]]:
    if os.geteuid() != 0:
        pytest.fail("this test sets up a service user and needs root, as `make test` runs")
    account = _ensure_user()
    uids = _ensure_subordinate_range(Path("/etc/subuid"))
    _ensure_subordinate_range(Path("/etc/subgid"))
    cgroups = [Path(f"/sys/fs/cgroup/{c}/{CGROUP}") for c in CONTROLLERS]
    for directory in cgroups:
        directory.mkdir(exist_ok=True)
        for path in (directory, *directory.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-nonroot-", dir="/tmp"))
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    try:
        yield account, uids, data_dir
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        for directory in cgroups:
            directory.rmdir()


@pytest.fixture(scope="module")
def report(service: tuple[pwd.struct_passwd, range, Path]) -> dict[str, object]:
    account, _, data_dir = service
    done = subprocess.run([sys.executable, str(PROBE), account.pw_name, CGROUP, str(data_dir)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_jails_run_python_and_shell_as_a_non_root_service(
        service: tuple[pwd.struct_passwd, range, Path], report: dict[str, object]) -> None:
    account, _, _ = service
    assert report["service_uid"] == account.pw_uid
    assert report["python"] == ["ok", "42 1000\n", "", ""]
    assert report["shell"] == ["ok", "42\n1000\nwrote\n", "", ""]


def test_the_guest_runs_as_a_subordinate_id_never_the_service_or_root(
        service: tuple[pwd.struct_passwd, range, Path], report: dict[str, object]) -> None:
    account, uids, _ = service
    assert report["use_newidmap"] is True
    assert report["outside_uid"] == uids.start
    for name in ("python", "shell"):
        assert report[f"{name}_nsjail_uid"] == account.pw_uid
        assert report[f"{name}_guest_host_uid"] == uids.start


def test_facets_in_jails_are_refused_with_a_reason_when_not_root(
        report: dict[str, object]) -> None:
    assert report["facet"] == ("facet: facets in JAIL isolates need sandboxd to run as root; "
                               "run this execution in a wasm isolate")
