"""The facet items of the adversarial catalogue (security.md, "Later parts: Facets").

Host-side queries treat every facet as hostile: the guest wrote its bytes and its directory.
Each test asserts the safe outcome: the denial, and that nothing outside the facet changed.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from isolates.facets import (
    DB_FILE,
    FacetLimits,
    FacetNotFound,
    FacetQueryAborted,
    FacetQueryDenied,
    FacetQueryError,
    FacetStore,
    InvalidFacetImport,
    InvalidFacetName,
)

ENDLESS = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def store(tmp_path: Path) -> FacetStore:
    store = FacetStore(tmp_path / "data")
    with store.grant("app") as facet_dir:
        conn = sqlite3.connect(facet_dir / DB_FILE)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.close()
    return store


def _secret_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE secrets (s)")
    conn.execute("INSERT INTO secrets VALUES ('other tenant')")
    conn.commit()
    conn.close()


def test_facets_attach_of_another_path_denied(store: FacetStore, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    _secret_db(other)
    with store.grant("other") as other_dir:
        _secret_db(other_dir / "db2.sqlite")
    for sql in (
        f"ATTACH DATABASE '{other}' AS o",
        f"ATTACH DATABASE 'file:{other}?mode=ro' AS o",
        f"ATTACH DATABASE '{store.root / 'other' / DB_FILE}' AS o",
        "ATTACH DATABASE ':memory:' AS o",
        "DETACH DATABASE main",
        f"VACUUM INTO '{tmp_path / 'copy.sqlite'}'",
    ):
        with pytest.raises(FacetQueryDenied):
            store.query("app", sql)
    assert not (tmp_path / "copy.sqlite").exists()
    assert store.query("app", "PRAGMA database_list").rows == [
        (0, "main", str(store.root / "app" / DB_FILE))
    ]


def test_facets_load_extension_denied(store: FacetStore, tmp_path: Path) -> None:
    for sql in (
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')",
        "SELECT load_extension('libc.so.6', 'system')",
    ):
        with pytest.raises(FacetQueryDenied, match="load_extension"):
            store.query("app", sql)


def test_facets_load_extension_in_a_hostile_view_denied(store: FacetStore, tmp_path: Path) -> None:
    """A database can carry SQL that runs when the host reads it: views and triggers."""
    hostile = tmp_path / "hostile.sqlite"
    conn = sqlite3.connect(hostile)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("CREATE VIEW v AS SELECT load_extension('libc.so.6') AS x")
    conn.commit()
    conn.close()
    store.import_file("hostile", hostile)
    with pytest.raises(FacetQueryDenied):
        store.query("hostile", "SELECT * FROM v")


def test_facets_writable_schema_denied(store: FacetStore) -> None:
    for sql in (
        "PRAGMA writable_schema = ON",
        "PRAGMA writable_schema = 1",
        "PRAGMA main.writable_schema = RESET",
        "PRAGMA trusted_schema = ON",
        "PRAGMA journal_mode = WAL",
        "PRAGMA temp_store_directory = '/tmp'",
    ):
        with pytest.raises(FacetQueryDenied, match="PRAGMA"):
            store.query("app", sql)
    # Defensive mode: even the schema table itself cannot be written.
    with pytest.raises((FacetQueryDenied, FacetQueryError)):
        store.query("app", "UPDATE sqlite_schema SET sql = 'CREATE TABLE t (y)'")
    assert store.query("app", "PRAGMA table_info(t)").rows[0][1] == "x"
    assert store.query("app", "PRAGMA integrity_check").rows == [("ok",)]


def test_facets_runaway_query_aborted_by_time_budget(store: FacetStore) -> None:
    with pytest.raises(FacetQueryAborted, match="time budget"):
        store.query("app", ENDLESS, time_s=0.2)
    # The facet is free and sound afterwards.
    assert store.query("app", "SELECT x FROM t", timeout=0).rows == [(1,)]


def test_facets_runaway_query_aborted_by_instruction_budget(tmp_path: Path) -> None:
    store = FacetStore(tmp_path / "data", FacetLimits(query_instructions=200_000))
    with store.grant("app"):
        pass
    with pytest.raises(FacetQueryAborted, match="instruction budget"):
        store.query("app", ENDLESS, time_s=60)


def test_facets_huge_values_are_capped(tmp_path: Path) -> None:
    store = FacetStore(tmp_path / "data", FacetLimits(max_value_bytes=1024**2))
    with store.grant("app"):
        pass
    for sql in ("SELECT randomblob(100000000)", "SELECT zeroblob(100000000)"):
        with pytest.raises(FacetQueryError, match="too big"):
            store.query("app", sql)


@pytest.mark.parametrize("name", ["../x", "..", "/etc", "/etc/passwd", "a/../../b", "a\x00", ""])
def test_facets_name_traversal_rejected(store: FacetStore, name: str) -> None:
    with pytest.raises(InvalidFacetName):
        store.grant(name)
    with pytest.raises(InvalidFacetName):
        store.facet_dir(name)
    with pytest.raises(InvalidFacetName):
        store.query(name, "SELECT 1")
    with pytest.raises(InvalidFacetName):
        store.export_to(name, store.root.parent / "out")
    assert sorted(p.name for p in store.root.iterdir()) == [".tmp", "app"]


def test_facets_import_of_garbage_rejected(store: FacetStore) -> None:
    for data in (
        b"",
        b"SQLite format 3\x00",
        b"SQLite format 3\x00" + b"\x00" * 4080,
        os.urandom(8192),
    ):
        with pytest.raises(InvalidFacetImport):
            store.import_chunks("imp", [data])
    assert not store.exists("imp")


def test_facets_import_of_a_corrupt_database_rejected(store: FacetStore, tmp_path: Path) -> None:
    source = tmp_path / "src.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, y)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "v" * 200) for i in range(2000)])
    conn.commit()
    conn.close()
    data = bytearray(source.read_bytes())
    page = 4096
    # Scribble over the middle of an interior b-tree page: the header stays valid.
    data[page * 3 + 8 : page * 3 + 600] = os.urandom(592)
    with pytest.raises(InvalidFacetImport):
        store.import_chunks("imp", [bytes(data)])
    assert not store.exists("imp")


def test_facets_import_of_a_hostile_schema_rejected(store: FacetStore, tmp_path: Path) -> None:
    source = tmp_path / "src.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_schema SET sql = 'CREATE TABLE t (x' WHERE name = 't'")
    conn.commit()
    conn.close()
    with pytest.raises(InvalidFacetImport):
        store.import_file("imp", source)
    assert not store.exists("imp")


def test_facets_planted_journal_symlink_not_followed(store: FacetStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"host file")
    with store.grant("app") as facet_dir:
        os.symlink(victim, facet_dir / f"{DB_FILE}-journal")
    # A write creates the rollback journal; through the link it would overwrite the victim.
    store.query("app", "INSERT INTO t VALUES (2)")
    assert victim.read_bytes() == b"host file"
    assert store.query("app", "SELECT count(*) FROM t").rows == [(2,)]


def test_facets_planted_database_symlink_not_followed(store: FacetStore, tmp_path: Path) -> None:
    with store.grant("victim") as victim_dir:
        _secret_db(victim_dir / DB_FILE)
    with store.grant("app") as facet_dir:
        (facet_dir / DB_FILE).unlink()
        os.symlink(victim_dir / DB_FILE, facet_dir / DB_FILE)
    with pytest.raises(FacetNotFound):
        store.query("app", "SELECT * FROM secrets")
    with pytest.raises(FacetNotFound):
        store.export_to("app", tmp_path / "export.sqlite")
    assert not (tmp_path / "export.sqlite").exists()
    assert store.query("victim", "SELECT s FROM secrets").rows == [("other tenant",)]
