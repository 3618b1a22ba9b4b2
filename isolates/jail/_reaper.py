"""Start-up cleanup: remove what a crashed sandboxd left behind in DATA_DIR/jail.

Each live factory holds an flock on DATA_DIR/jail/<instance>/lock. An instance directory whose
lock can be taken belongs to a dead server: its recorded parent cgroups are emptied (every
process in them is SIGKILLed; their nsjail parents then exit on their own) and removed, and the
directory with its jails' state goes too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from isolates.jail._cgroups import remove_tree
from isolates.jail._factory import CGROUPS_FILE, LOCK_FILE, jail_root


@dataclass
class ReapReport:
    """What `reap_stale_jails` removed."""

    instances: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)


def reap_stale_jails(data_dir: Path) -> ReapReport:
    """Remove cgroups and state left by sandboxd processes that are gone.

    Call once at server start-up, before creating a `JailFactory`. Instances of live servers
    (their lock is held) are left alone.

    Args:
        data_dir: sandboxd's data directory.

    Returns:
        The instances and cgroup directories removed.
    """
    report = ReapReport()
    root = jail_root(Path(data_dir).resolve())
    if not root.is_dir():
        return report
    for instance in sorted(root.iterdir()):
        if not instance.is_dir() or instance.is_symlink():
            continue
        try:
            lock_fd = os.open(instance / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live server owns it
            cgroups: list[str] = []
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads((instance / CGROUPS_FILE).read_text())
                cgroups = [str(p) for p in loaded if str(p).startswith("/sys/fs/cgroup/")]
            remove_tree([Path(p) for p in cgroups])
            report.cgroups.extend(cgroups)
            shutil.rmtree(instance, ignore_errors=True)
            report.instances.append(instance.name)
        finally:
            os.close(lock_fd)
    return report
