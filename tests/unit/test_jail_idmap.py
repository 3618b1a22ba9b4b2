"""Which host ids a jail's guest gets: nobody as root, a subordinate id otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from isolates.jail import _idmap
from isolates.jail._errors import JailUnavailableError


def test_subordinate_ranges_are_read_by_user_name_or_uid(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:100000:65536\nsvc:200000:65536\n1234:300000:10\nbroken\n"
                      "svc:x:1\nsvc:0:5\n")
    assert _idmap.subordinate_ranges(subuid, "svc", 1234) == [range(200000, 265536),
                                                              range(300000, 300010)]
    assert _idmap.subordinate_ranges(subuid, "nobody-here", 1) == []
    assert _idmap.subordinate_ranges(tmp_path / "missing", "svc", 1234) == []


def test_root_maps_the_guest_to_nobody_and_never_to_root() -> None:
    assert _idmap.resolve(None, None) == _idmap.GuestIds(65534, 65534, use_newidmap=False)
    assert _idmap.resolve(4242, 4243) == _idmap.GuestIds(4242, 4243, use_newidmap=False)
    with pytest.raises(JailUnavailableError, match="uid/gid 0"):
        _idmap.resolve(0, 65534)


def _as_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subid_lines: str) -> None:
    """Resolve as if sandboxd ran as uid 999 ("svc") with these /etc/subuid and subgid lines."""
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(subid_lines)
    monkeypatch.setattr(_idmap, "SUBUID_FILE", tmp_path / "subuid")
    monkeypatch.setattr(_idmap, "SUBGID_FILE", tmp_path / "subgid")
    monkeypatch.setattr(_idmap.os, "geteuid", lambda: 999)
    monkeypatch.setattr(_idmap.os, "getegid", lambda: 999)
    monkeypatch.setattr(_idmap.pwd, "getpwuid", lambda uid: type("P", (), {"pw_name": "svc"}))


def test_a_non_root_service_maps_the_guest_to_its_first_subordinate_id(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _as_user(monkeypatch, tmp_path, "svc:200000:65536\n")
    assert _idmap.resolve(None, None) == _idmap.GuestIds(200000, 200000, use_newidmap=True)
    assert _idmap.resolve(201000, 201000) == _idmap.GuestIds(201000, 201000, use_newidmap=True)


def test_a_non_root_service_refuses_ids_it_was_not_granted(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _as_user(monkeypatch, tmp_path, "svc:200000:65536\n")
    with pytest.raises(JailUnavailableError, match="not in svc's subordinate uids"):
        _idmap.resolve(65534, None)
    _as_user(monkeypatch, tmp_path, "someone-else:200000:65536\n")
    with pytest.raises(JailUnavailableError, match="grants no subordinate uids to svc"):
        _idmap.resolve(None, None)


def test_a_non_root_service_needs_the_id_mapping_helpers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _as_user(monkeypatch, tmp_path, "svc:200000:65536\n")
    monkeypatch.setattr(_idmap.shutil, "which", lambda tool: None)
    with pytest.raises(JailUnavailableError, match=r"newuidmap and newgidmap not found.*uidmap"):
        _idmap.resolve(None, None)
