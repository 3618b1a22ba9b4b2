"""Execute with a facet: WASM and jail executions share one private SQLite database."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandboxd import Client, InvalidArgumentError

CREATE = ("import sqlite3\n"
          "db = sqlite3.connect('/facet/db.sqlite')\n"
          "db.execute('CREATE TABLE IF NOT EXISTS notes (who TEXT, n INTEGER)')\n")


@pytest.fixture(scope="module")
def client(target: str) -> Client:
    with Client(target) as c:
        yield c


def facet_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


def test_wasm_and_jail_executions_see_each_others_rows(client: Client) -> None:
    name = facet_name()
    wasm = client.run_code(CREATE + "db.execute(\"INSERT INTO notes VALUES ('wasm', 1)\")\n"
                           "db.commit()", facet=name, isolate="wasm")
    assert wasm.ok, wasm.stderr
    jail = client.run_code(CREATE + "db.execute(\"INSERT INTO notes VALUES ('jail', 2)\")\n"
                           "db.commit()\n"
                           "print(db.execute('SELECT who FROM notes ORDER BY n').fetchall())",
                           facet=name, isolate="jail")
    assert jail.ok, jail.stderr
    assert jail.stdout == "[('wasm',), ('jail',)]\n"
    rows = client.facets.query(name, "SELECT who, n FROM notes ORDER BY n")
    assert rows.rows == [("wasm", 1), ("jail", 2)]


def test_a_facet_cannot_reach_another_facets_file(client: Client) -> None:
    secret, other = facet_name(), facet_name()
    assert client.run_code(CREATE + "db.execute(\"INSERT INTO notes VALUES ('secret', 1)\")\n"
                           "db.commit()", facet=secret).ok
    probe = (
        "import os\n"
        f"name = {secret!r}\n"
        "found = []\n"
        "for root in ('/facet/..', '/facet/../..', '/', '/facets', '/data'):\n"
        "    for dirpath, dirnames, filenames in os.walk(root):\n"
        "        if name in dirpath or name in dirnames:\n"
        "            found.append(dirpath)\n"
        "        if dirpath.count('/') > 6:\n"
        "            dirnames.clear()\n"
        "print(found)\n"
    )
    for isolate in ("wasm", "jail"):
        execution = client.run_code(probe, facet=other, isolate=isolate, timeout=20)
        assert execution.ok, execution.stderr
        assert execution.stdout == "[]\n", isolate


def test_concurrent_writers_from_both_kinds_never_corrupt(client: Client) -> None:
    name = facet_name()
    assert client.run_code(CREATE + "db.commit()", facet=name).ok
    insert = CREATE + "for i in range(20):\n    db.execute('INSERT INTO notes VALUES (?, ?)', " \
        "('{who}', i))\ndb.commit()\n"

    def write(i: int) -> str:
        isolate = "jail" if i % 4 == 0 else "wasm"
        execution = client.run_code(insert.format(who=f"w{i}"), facet=name, isolate=isolate,
                                    timeout=30)
        return execution.status + execution.stderr

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(write, range(24)))
    assert statuses == ["ok"] * 24
    assert client.facets.query(name, "SELECT count(*) FROM notes").rows == [(480,)]
    assert client.facets.query(name, "PRAGMA integrity_check").rows == [("ok",)]


def test_javascript_rejects_a_facet(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code("console.log(1)", "javascript", facet="anything")
    assert info.value.field_violations[0].field == "facet"
