"""Which host uid and gid a jail's guest runs as, and how nsjail gets to map them.

The guest is uid/gid 1000 inside its user namespace; outside, it must be an id that owns
nothing. As root, sandboxd maps it to nobody/nogroup (65534) and nsjail writes the mapping
itself. A non-root sandboxd may only map ids it was granted: the first id of its subordinate
range in /etc/subuid and /etc/subgid, mapped through the setuid helpers `newuidmap` and
`newgidmap` (Debian package `uidmap`). Mapping the guest to the service's own uid is refused:
the guest would then own the service's files.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from isolates.jail._errors import JailUnavailableError

NOBODY = 65534
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")


@dataclass(frozen=True)
class GuestIds:
    """The host ids of a jail's guest, and whether nsjail maps them with the setuid helpers."""

    uid: int
    gid: int
    use_newidmap: bool


def subordinate_ranges(path: Path, user: str, uid: int) -> list[range]:
    """The id ranges granted to `user` (by name or uid) in a subuid/subgid file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    ranges = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start > 0 and count > 0:
            ranges.append(range(start, start + count))
    return ranges


def resolve(uid: int | None, gid: int | None) -> GuestIds:
    """The guest's host ids: `uid`/`gid` when given, else the default for this process.

    Raises:
        JailUnavailableError: an id would be 0 or this service's own, a non-root service has
            no subordinate range holding the id, or `newuidmap`/`newgidmap` is missing.
    """
    euid = os.geteuid()
    if euid == 0:
        ids = GuestIds(NOBODY if uid is None else uid, NOBODY if gid is None else gid, False)
        if 0 in (ids.uid, ids.gid):
            raise JailUnavailableError("the guest must never map to host uid/gid 0")
        return ids
    user = pwd.getpwuid(euid).pw_name
    uid = _subordinate(SUBUID_FILE, "uid", user, euid, uid)
    gid = _subordinate(SUBGID_FILE, "gid", user, euid, gid)
    if uid == euid or gid == os.getegid():
        raise JailUnavailableError("the guest must not map to the service's own uid or gid")
    missing = [tool for tool in ("newuidmap", "newgidmap") if shutil.which(tool) is None]
    if missing:
        raise JailUnavailableError(
            f"{' and '.join(missing)} not found: a non-root sandboxd maps the guest to a "
            "subordinate id through them (install the Debian package uidmap)")
    return GuestIds(uid, gid, True)


def _subordinate(path: Path, kind: str, user: str, own: int, wanted: int | None) -> int:
    ranges = subordinate_ranges(path, user, own)
    if not ranges:
        raise JailUnavailableError(
            f"{path} grants no subordinate {kind}s to {user}: a non-root sandboxd runs jails "
            f"as one of them (add a line such as '{user}:200000:65536'; see docs/jail.md)")
    if wanted is None:
        return ranges[0].start
    if not any(wanted in r for r in ranges):
        raise JailUnavailableError(
            f"guest {kind} {wanted} is not in {user}'s subordinate {kind}s in {path}")
    return wanted
