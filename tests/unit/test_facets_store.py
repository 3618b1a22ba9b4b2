"""The facet store: names, creation, persistence, queries with caps, export and import."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolates.facets import (
    DB_FILE,
    FacetCorrupt,
    FacetExists,
    FacetLimits,
    FacetNotFound,
    FacetQueryError,
    FacetStore,
    InvalidFacetImport,
    InvalidFacetName,
    validate_facet_name,
)


@pytest.fixture
def store(tmp_path: Path) -> FacetStore:
    return FacetStore(tmp_path / "data")


def _guest_write(facet_dir: Path, rows: list[tuple[int, str]]) -> None:
    """What a guest does with /facet/db.sqlite: plain sqlite3 on the granted directory."""
    conn = sqlite3.connect(facet_dir / DB_FILE)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", rows)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("name", ["a", "app-1", "my_app", "0", "x" * 63])
def test_valid_names(name: str) -> None:
    assert validate_facet_name(name) is None


@pytest.mark.parametrize(
    "name", ["", "A", "-x", "_x", ".tmp", "a/b", "../x", "/etc", "a\x00b", "x" * 64, "é"]
)
def test_invalid_names(name: str) -> None:
    assert validate_facet_name(name) is not None


def test_created_on_first_grant_with_an_empty_database(store: FacetStore) -> None:
    assert not store.exists("app")
    with store.grant("app", timeout=1) as facet_dir:
        assert facet_dir == store.root / "app"
        db = facet_dir / DB_FILE
        assert db.is_file()
        assert db.read_bytes()[:16] == b"SQLite format 3\x00"
    assert store.exists("app")
    assert [f.name for f in store.list()] == ["app"]
    assert store.list()[0].size_bytes == (store.root / "app" / DB_FILE).stat().st_size


def test_query_of_missing_facet_is_not_found_and_creates_nothing(store: FacetStore) -> None:
    with pytest.raises(FacetNotFound):
        store.query("nope", "SELECT 1")
    assert store.list() == []


def test_rows_written_in_a_grant_persist_across_store_instances(tmp_path: Path) -> None:
    first = FacetStore(tmp_path / "data")
    with first.grant("app") as facet_dir:
        _guest_write(facet_dir, [(1, "one"), (2, "two")])
    second = FacetStore(tmp_path / "data")  # a server restart
    result = second.query("app", "SELECT id, body FROM notes ORDER BY id")
    assert result.columns == ("id", "body")
    assert result.rows == [(1, "one"), (2, "two")]
    with second.grant("app") as facet_dir:
        _guest_write(facet_dir, [(3, "three")])
    assert FacetStore(tmp_path / "data").query("app", "SELECT count(*) FROM notes").rows == [(3,)]


def test_query_types_params_and_writes(store: FacetStore) -> None:
    with store.grant("app"):
        pass
    store.query("app", "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)")
    changed = store.query(
        "app", "INSERT INTO t VALUES (?, ?, ?, ?, ?)", [2**62, 1.5, "héllo", b"\x00\xff", None]
    )
    assert changed.rows_changed == 1
    named = store.query("app", "SELECT * FROM t WHERE s = :s", {"s": "héllo"})
    assert named.rows == [(2**62, 1.5, "héllo", b"\x00\xff", None)]
    assert store.query("app", "SELECT * FROM t WHERE s = ?", ["other"]).rows == []


def test_row_and_byte_caps_set_truncated(store: FacetStore) -> None:
    with store.grant("app") as facet_dir:
        _guest_write(facet_dir, [(i, "x" * 100) for i in range(50)])
    capped = store.query("app", "SELECT id FROM notes ORDER BY id", max_rows=10)
    assert capped.rows == [(i,) for i in range(10)] and capped.truncated
    exact = store.query("app", "SELECT id FROM notes", max_rows=50)
    assert len(exact.rows) == 50 and not exact.truncated
    by_bytes = store.query("app", "SELECT body FROM notes", max_bytes=1000)
    assert len(by_bytes.rows) == 10 and by_bytes.truncated


def test_caps_are_clamped_to_the_limits(tmp_path: Path) -> None:
    store = FacetStore(tmp_path / "data", FacetLimits(max_rows=5, default_max_rows=3))
    with store.grant("app") as facet_dir:
        _guest_write(facet_dir, [(i, "") for i in range(20)])
    assert len(store.query("app", "SELECT id FROM notes").rows) == 3
    huge = store.query("app", "SELECT id FROM notes", max_rows=10**12)
    assert len(huge.rows) == 5 and huge.truncated
    negative = store.query("app", "SELECT id FROM notes", max_rows=-1)
    assert len(negative.rows) == 3  # never read as "unlimited"


def test_read_only_refuses_writes(store: FacetStore) -> None:
    with store.grant("app") as facet_dir:
        _guest_write(facet_dir, [(1, "a")])
    with pytest.raises(FacetQueryError):
        store.query("app", "DELETE FROM notes", read_only=True)
    assert store.query("app", "SELECT count(*) FROM notes").rows == [(1,)]


def test_bad_sql_and_params_name_the_field(store: FacetStore) -> None:
    with store.grant("app"):
        pass
    with pytest.raises(FacetQueryError) as syntax:
        store.query("app", "SELEC 1")
    assert syntax.value.field == "sql"
    with pytest.raises(FacetQueryError) as binding:
        store.query("app", "SELECT ?", [1, 2])
    assert binding.value.field == "params"
    with pytest.raises(FacetQueryError) as two:
        store.query("app", "SELECT 1; SELECT 2")
    assert two.value.field == "sql"


def test_invalid_utf8_text_from_a_guest_is_readable(store: FacetStore) -> None:
    with store.grant("app") as facet_dir:
        conn = sqlite3.connect(facet_dir / DB_FILE)
        conn.execute("CREATE TABLE t (s TEXT)")
        conn.execute("INSERT INTO t VALUES (CAST(X'6869FF' AS TEXT))")
        conn.commit()
        conn.close()
    assert store.query("app", "SELECT s FROM t").rows == [("hi\ufffd",)]


def test_export_is_a_consistent_database(store: FacetStore, tmp_path: Path) -> None:
    with store.grant("app") as facet_dir:
        _guest_write(facet_dir, [(i, f"row {i}") for i in range(1000)])
    target = tmp_path / "export.sqlite"
    size = store.export_to("app", target)
    assert size == target.stat().st_size > 0
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT count(*), sum(id) FROM notes").fetchone() == (1000, 499500)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert b"".join(store.iter_export("app")) == target.read_bytes()
    assert list((store.root / ".tmp").iterdir()) == []  # snapshots are cleaned up


def test_import_round_trip_and_replace(store: FacetStore, tmp_path: Path) -> None:
    source = tmp_path / "source.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v)")
    conn.execute("INSERT INTO kv VALUES ('a', 1)")
    conn.commit()
    conn.close()
    info = store.import_file("copy", source)
    assert info.name == "copy" and info.size_bytes == source.stat().st_size
    assert store.query("copy", "SELECT * FROM kv").rows == [("a", 1)]
    with pytest.raises(FacetExists):
        store.import_file("copy", source)
    store.query("copy", "INSERT INTO kv VALUES ('b', 2)")
    store.import_file("copy", source, replace=True)
    assert store.query("copy", "SELECT count(*) FROM kv").rows == [(1,)]


def test_import_of_a_wal_database_is_converted_to_rollback_journal(
    store: FacetStore, tmp_path: Path
) -> None:
    source = tmp_path / "wal.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    store.import_chunks("w", [source.read_bytes()])
    header = (store.root / "w" / DB_FILE).read_bytes()[:20]
    assert header[18:20] == b"\x01\x01"  # rollback-journal file format
    assert store.query("w", "SELECT x FROM t").rows == [(1,)]


def test_import_rejects_garbage_and_truncation(store: FacetStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidFacetImport):
        store.import_chunks("bad", [b"not a database" * 100])
    source = tmp_path / "s.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"\x00" * 500,) for _ in range(100)])
    conn.commit()
    conn.close()
    data = source.read_bytes()
    with pytest.raises(InvalidFacetImport):
        store.import_chunks("bad", [data[: len(data) - 100]])
    assert not store.exists("bad")
    assert list((store.root / ".tmp").iterdir()) == []


def test_import_size_cap(tmp_path: Path) -> None:
    store = FacetStore(tmp_path / "data", FacetLimits(max_import_bytes=4096))
    with pytest.raises(InvalidFacetImport, match="larger than"):
        store.import_chunks("big", [b"\x00" * 4096, b"\x00"])


def test_delete_removes_the_facet(store: FacetStore) -> None:
    with store.grant("app") as facet_dir:
        _guest_write(facet_dir, [(1, "a")])
    store.delete("app")
    assert not store.exists("app") and store.list() == []
    with pytest.raises(FacetNotFound):
        store.delete("app")
    with store.grant("app"):  # a new, empty facet of the same name
        pass
    with pytest.raises(FacetQueryError, match="no such table"):
        store.query("app", "SELECT * FROM notes")


def test_names_are_checked_before_anything_touches_disk(store: FacetStore) -> None:
    for bad in ("../x", "/etc", "a\x00b", ".tmp"):
        with pytest.raises(InvalidFacetName):
            store.grant(bad)
        with pytest.raises(InvalidFacetName):
            store.query(bad, "SELECT 1")
        with pytest.raises(InvalidFacetName):
            store.import_chunks(bad, [b""])
        with pytest.raises(InvalidFacetName):
            store.delete(bad)
    assert sorted(p.name for p in store.root.iterdir()) == [".tmp"]


def test_a_database_the_guest_damaged_is_reported_as_corrupt(store: FacetStore) -> None:
    with store.grant("app") as facet_dir:
        (facet_dir / DB_FILE).write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    with pytest.raises(FacetCorrupt):
        store.query("app", "SELECT * FROM sqlite_schema")


def test_async_api(store: FacetStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with store.grant("app", timeout=1) as facet_dir:
            await asyncio.to_thread(_guest_write, facet_dir, [(i, str(i)) for i in range(600)])
        result = await store.aquery("app", "SELECT id FROM notes ORDER BY id")
        assert [r[0] for r in result.rows] == list(range(600))
        data = b"".join([chunk async for chunk in store.aiter_export("app")])

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        info = await store.aimport_chunks("copy", chunks())
        assert info.size_bytes == len(data)
        assert (await store.aquery("copy", "SELECT count(*) FROM notes")).rows == [(600,)]
        await store.adelete("copy")
        assert not store.exists("copy")

    asyncio.run(scenario())


def test_guest_owner_lets_an_unprivileged_guest_write() -> None:
    """A jail guest runs as an unprivileged host uid: the grant hands it the facet's files."""
    nobody = (65534, 65534)
    # A jail reaches /facet through its bind mount; this stand-in guest walks the host path,
    # so the directories above the facet must be traversable (the store keeps them 0700).
    base = Path(tempfile.mkdtemp(prefix="facet-owner-", dir="/tmp"))
    try:
        base.chmod(0o711)
        store = FacetStore(base / "data", guest_owner=nobody)
        (base / "data").chmod(0o711)
        store.root.chmod(0o711)
        with store.grant("jailed") as facet_dir:
            assert (os.stat(facet_dir).st_uid, os.stat(facet_dir).st_gid) == nobody
            assert os.stat(facet_dir / DB_FILE).st_uid == nobody[0]
            guest = subprocess.run(
                [
                    "/usr/bin/python3",
                    "-c",
                    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                    "c.execute('CREATE TABLE t (x)'); c.execute('INSERT INTO t VALUES (7)');"
                    "c.commit()",
                    str(facet_dir / DB_FILE),
                ],
                user=nobody[0],
                group=nobody[1],
                capture_output=True,
                check=False,
            )
            assert guest.returncode == 0, guest.stderr
        assert store.query("jailed", "SELECT x FROM t").rows == [(7,)]
        # An import installs a root-owned file; the next grant hands it to the guest again.
        data = b"".join(store.iter_export("jailed"))
        store.import_chunks("jailed", [data], replace=True)
        with store.grant("jailed") as facet_dir:
            assert os.stat(facet_dir / DB_FILE).st_uid == nobody[0]
    finally:
        shutil.rmtree(base)
