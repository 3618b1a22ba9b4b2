"""Adversarial catalogue, "Later parts: Artifacts": every way in refuses bad objects and bombs.

Each test names the catalogue item it covers and asserts the safe outcome: the input is
refused with a reason, no ref moves and nothing lands in the shared store.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import struct
import subprocess
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts import (
    ArtifactStore,
    FileInput,
    GitHttpServer,
    InvalidArgumentError,
    LimitExceededError,
    StoreLimits,
)
from artifacts._packscan import PackGuard

TYPES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}
GIT_ENV = {
    **os.environ,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def oid(kind: str, data: bytes) -> str:
    return hashlib.sha1(kind.encode() + b" %d\x00" % len(data) + data).hexdigest()


def tree(*entries: tuple[bytes, bytes, str]) -> bytes:
    """Raw tree from (mode, name, hex id) in the order given (no sorting, no checks)."""
    return b"".join(m + b" " + n + b"\x00" + bytes.fromhex(i) for m, n, i in entries)


def commit_raw(tree_id: str, parents: list[str] = ()) -> bytes:  # type: ignore[assignment]
    lines = [f"tree {tree_id}"] + [f"parent {p}" for p in parents]
    lines += ["author A <a@x> 1700000000 +0000", "committer A <a@x> 1700000000 +0000", "", "m"]
    return "\n".join(lines).encode()


def entry_header(type_num: int, size: int) -> bytes:
    out = bytearray()
    c = (type_num << 4) | (size & 15)
    size >>= 4
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


def pack(entries: list[bytes]) -> bytes:
    body = b"PACK" + struct.pack(">LL", 2, len(entries)) + b"".join(entries)
    return body + hashlib.sha1(body).digest()


def plain_entry(kind: str, data: bytes) -> bytes:
    return entry_header(TYPES[kind], len(data)) + zlib.compress(data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ArtifactStore]:
    s = ArtifactStore(tmp_path / "data", StoreLimits(max_object_bytes=8 * 1024 * 1024))
    yield s
    s.close()


@pytest.fixture
def server(store: ArtifactStore) -> Iterator[GitHttpServer]:
    srv = GitHttpServer(store)
    srv.start()
    yield srv
    srv.stop()


def post_service(
    server: GitHttpServer, repo: str, token: str, service: str, first_line: bytes, rest: bytes
) -> bytes:
    """POST a raw smart-HTTP request (one pkt-line, a flush, then `rest`); return the body."""
    body = b"%04x" % (len(first_line) + 4) + first_line + b"0000" + rest
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    auth = base64.b64encode(f"x:{token}".encode()).decode()
    conn.request(
        "POST",
        f"/git/{repo}/{service}",
        body=body,
        headers={
            "Authorization": f"Basic {auth}",
            "Content-Type": f"application/x-{service}-request",
        },
    )
    resp = conn.getresponse()
    try:
        out = resp.read()
    except http.client.IncompleteRead as exc:  # the server ends the stream on a refusal
        out = exc.partial
    conn.close()
    return out


def receive_pack(
    server: GitHttpServer, repo: str, token: str, ref_line: bytes, data: bytes
) -> bytes:
    """POST a raw receive-pack request and return the response body."""
    return post_service(server, repo, token, "git-receive-pack",
                        ref_line + b"\x00report-status\n", data)


def pack_count(store: ArtifactStore) -> int:
    return len(list(store.objects.pack_path.glob("*.pack")))


def push_tree_via_git(
    tmp_path: Path, url: str, raw_tree: bytes
) -> subprocess.CompletedProcess[str]:
    """Write a crafted tree with `git hash-object --literally`, commit it and push with git."""
    work = tmp_path / "crafted"
    env = {**GIT_ENV, "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            input=b"x",
            cwd=work,
            env=env,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    raw = raw_tree.replace(b"BLOB", bytes.fromhex(blob))
    tree_id = (
        subprocess.run(
            ["git", "hash-object", "-w", "--literally", "-t", "tree", "--stdin"],
            input=raw,
            cwd=work,
            env=env,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    commit = subprocess.run(
        ["git", "commit-tree", tree_id, "-m", "evil"],
        cwd=work,
        env=env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/heads/main", commit], cwd=work, env=env, check=True)
    return subprocess.run(
        ["git", "push", url, "main"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )


# -- tree entries, through git push --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"..",
        b".",
        b".git",
        b".GIT",
        b".Git",
        b".git.",
        b".git ",
        b"git~1",
        ".g\u200cit".encode(),
        b".git::$INDEX_ALLOCATION",
    ],
)
def test_artifacts_tree_entry_dotdot_and_dotgit_rejected_on_push(
    store: ArtifactStore, server: GitHttpServer, tmp_path: Path, name: bytes
) -> None:
    repo = store.create_repo("victim")
    before = pack_count(store)
    url = repo.clone_url.replace("http://", f"http://x:{repo.token}@")
    proc = push_tree_via_git(tmp_path, url, b"100644 " + name + b"\x00BLOB")
    assert proc.returncode != 0
    assert "unpack" in proc.stderr or "rejected" in proc.stderr
    assert store.get_repo("victim").branches == {}
    assert pack_count(store) == before


def test_artifacts_tree_entry_dotdot_rejected(store: ArtifactStore) -> None:
    blob = b"x"
    bad = tree((b"100644", b"..", oid("blob", blob)))
    with pytest.raises(InvalidArgumentError, match="not allowed"):
        store.ingest([(oid("blob", blob), 3, blob), (oid("tree", bad), 2, bad)])
    with pytest.raises(InvalidArgumentError):
        store.commit(store.create_repo("r").name, [FileInput(path="a/../b", data=b"1")], "m")


@pytest.mark.parametrize(
    "path", [".git/config", ".GIT/hooks/x", "a/.git./b", "git~1/x", ".g\u200dit/x", "a/.git /x"]
)
def test_artifacts_tree_entry_dotgit_rejected_on_commit(store: ArtifactStore, path: str) -> None:
    store.create_repo("r")
    with pytest.raises(InvalidArgumentError) as e:
        store.commit("r", [FileInput(path=path, data=b"1")], "m")
    assert e.value.field == "files[0].path"


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([(b"100644", b"a/b", "BLOB")], "'/'"),
        ([(b"100644", b"", "BLOB")], "empty"),
        ([(b"100644", b"b", "BLOB"), (b"100644", b"a", "BLOB")], "not sorted"),
        ([(b"100644", b"a", "BLOB"), (b"100644", b"a", "BLOB")], "duplicate"),
        ([(b"100664", b"a", "BLOB")], "bad mode"),
        ([(b"040000", b"a", "TREE")], "bad mode"),
        ([(b"100644", b"a\\b", "BLOB")], "'\\\\'"),
    ],
)
def test_artifacts_tree_entries_malformed_rejected(
    store: ArtifactStore, entries: list[tuple[bytes, bytes, str]], reason: str
) -> None:
    blob = b"x"
    empty = b""
    ids = {"BLOB": oid("blob", blob), "TREE": oid("tree", empty)}
    raw = tree(*[(m, n, ids[i]) for m, n, i in entries])
    with pytest.raises(InvalidArgumentError, match=reason):
        store.ingest([(ids["BLOB"], 3, blob), (ids["TREE"], 2, empty), (oid("tree", raw), 2, raw)])


def test_artifacts_tree_file_and_directory_same_name_rejected(store: ArtifactStore) -> None:
    blob, empty = b"x", b""
    raw = tree((b"100644", b"a", oid("blob", blob)), (b"40000", b"a", oid("tree", empty)))
    with pytest.raises(InvalidArgumentError, match="duplicate"):
        store.ingest(
            [
                (oid("blob", blob), 3, blob),
                (oid("tree", empty), 2, empty),
                (oid("tree", raw), 2, raw),
            ]
        )


def test_artifacts_object_id_mismatch_rejected(store: ArtifactStore) -> None:
    before = pack_count(store)
    with pytest.raises(InvalidArgumentError, match="does not match"):
        store.ingest([(oid("blob", b"honest"), 3, b"forged")])
    assert pack_count(store) == before


def test_artifacts_dangling_reference_rejected(store: ArtifactStore) -> None:
    raw = tree((b"100644", b"f", "11" * 20))
    with pytest.raises(InvalidArgumentError, match="missing"):
        store.ingest([(oid("tree", raw), 2, raw)])


# -- size limits while streaming ----------------------------------------------------------


def test_artifacts_huge_blob_limited(store: ArtifactStore, server: GitHttpServer) -> None:
    repo = store.create_repo("r")
    # The entry claims 1 GiB; the guard refuses it from its header, before inflating anything.
    entry = entry_header(3, 1 << 30) + zlib.compress(b"")
    out = receive_pack(
        server,
        "r",
        repo.token or "",
        b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main",
        pack([entry]),
    )
    assert b"unpack" in out and b"exceeds" in out
    assert store.get_repo("r").branches == {}


def bomb_entry(inflated: int, declared: int) -> bytes:
    comp = zlib.compressobj(9)
    chunks = [comp.compress(bytes(1 << 20)) for _ in range(inflated >> 20)]
    return entry_header(3, declared) + b"".join(chunks) + comp.flush()


def test_artifacts_zlib_bomb_limited(store: ArtifactStore, server: GitHttpServer) -> None:
    repo = store.create_repo("r")
    before = pack_count(store)
    # 512 MiB of zeros in well under 1 MiB on the wire, claiming to be 100 bytes.
    bomb = pack([bomb_entry(512 << 20, 100)])
    assert len(bomb) < 1 << 20
    out = receive_pack(
        server, "r", repo.token or "", b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main", bomb
    )
    assert b"unpack" in out and b"declared size" in out
    assert store.get_repo("r").branches == {}
    assert pack_count(store) == before


def test_artifacts_zlib_bomb_memory_bounded() -> None:
    guard = PackGuard(max_bytes=1 << 30, max_objects=10, max_object_bytes=8 << 20)
    bomb = pack([bomb_entry(256 << 20, 4 << 20)])
    tracemalloc.start()
    with pytest.raises(LimitExceededError):
        for i in range(0, len(bomb), 4096):
            guard.feed(bomb[i : i + 4096])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20


def test_artifacts_delta_bomb_limited() -> None:
    # A ref-delta of a few KB whose copy instructions would expand to gigabytes.
    header = b"\x01\x80\x01"  # source size 1, target size 128
    ops = b"\x90\x00" * 50_000  # each: copy 0x10000 bytes
    delta = header + ops
    entry = entry_header(7, len(delta)) + b"\x11" * 20 + zlib.compress(delta)
    guard = PackGuard(max_bytes=1 << 30, max_objects=10, max_object_bytes=8 << 20)
    with pytest.raises(LimitExceededError, match="delta"):
        guard.feed(pack([entry]))


def test_artifacts_pack_too_large_limited(tmp_path: Path) -> None:
    guard = PackGuard(max_bytes=1000, max_objects=10, max_object_bytes=1 << 20)
    with pytest.raises(LimitExceededError, match="larger"):
        guard.feed(pack([plain_entry("blob", os.urandom(4000))]))


def test_artifacts_commit_file_over_limit_rejected(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "d", StoreLimits(max_object_bytes=1024))
    store.create_repo("r")
    with pytest.raises(LimitExceededError):
        store.commit("r", [FileInput(path="big", data=b"x" * 2048)], "m")
    store.close()


# -- cross-repo isolation of the shared store ----------------------------------------------


def test_artifacts_push_ref_to_foreign_commit_rejected(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    store.create_repo("secret")
    hidden = store.commit("secret", [FileInput(path="key", data=b"s3cr3t")], "s")
    mine = store.create_repo("mine")
    # Point a branch at the other repo's commit with an empty pack: refused.
    out = receive_pack(
        server,
        "mine",
        mine.token or "",
        b"0" * 40 + b" " + hidden.encode() + b" refs/heads/main",
        pack([]),
    )
    assert b"ng refs/heads/main" in out
    assert store.get_repo("mine").branches == {}


def test_artifacts_push_tree_referencing_foreign_blob_rejected(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    store.create_repo("secret")
    store.commit("secret", [FileInput(path="key", data=b"s3cr3t")], "s")
    mine = store.create_repo("mine")
    t = tree((b"100644", b"stolen", oid("blob", b"s3cr3t")))
    c = commit_raw(oid("tree", t))
    data = pack([plain_entry("tree", t), plain_entry("commit", c)])
    out = receive_pack(
        server,
        "mine",
        mine.token or "",
        b"0" * 40 + b" " + oid("commit", c).encode() + b" refs/heads/main",
        data,
    )
    assert b"missing" in out
    assert store.get_repo("mine").branches == {}


def test_artifacts_push_funny_ref_rejected(store: ArtifactStore, server: GitHttpServer) -> None:
    repo = store.create_repo("r")
    t = tree()
    c = commit_raw(oid("tree", t))
    data = pack([plain_entry("tree", t), plain_entry("commit", c)])
    out = receive_pack(
        server,
        "r",
        repo.token or "",
        b"0" * 40 + b" " + oid("commit", c).encode() + b" refs/meta/config",
        data,
    )
    assert b"ng refs/meta/config" in out
    assert store.get_repo("r").branches == {}


def test_artifacts_http_without_token_gets_401_and_nothing_else(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    store.create_repo("r")
    store.commit("r", [FileInput(path="f", data=b"secret-content")], "m")
    for headers, status in [({}, 401), ({"Authorization": "Bearer nope"}, 403)]:
        for path in [
            "/git/r/info/refs?service=git-upload-pack",
            "/git/absent/info/refs?service=git-upload-pack",
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == status
            assert b"refs/heads" not in body and b"secret" not in body


def upload_pack(server: GitHttpServer, repo: str, token: str, want: str) -> bytes:
    """POST a raw upload-pack request wanting one object; return the response body."""
    return post_service(server, repo, token, "git-upload-pack",
                        f"want {want} side-band-64k thin-pack ofs-delta\n".encode(),
                        b"0009done\n")


def test_artifacts_fetch_of_a_tip_the_branch_moved_past_is_served(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    """A clone reads the refs, a commit moves the branch, then the clone asks for the old tip."""
    repo = store.create_repo("r")
    old_tip = store.commit("r", [FileInput(path="f", data=b"one")], "first")
    store.commit("r", [FileInput(path="f", data=b"two")], "second")
    out = upload_pack(server, "r", repo.token or "", old_tip)
    assert b"PACK" in out


def test_artifacts_fetch_of_another_repos_commit_refused(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    mine = store.create_repo("mine")
    store.commit("mine", [FileInput(path="f", data=b"mine")], "m")
    store.create_repo("theirs")
    foreign = store.commit("theirs", [FileInput(path="secret", data=b"their-secret")], "t")
    out = upload_pack(server, "mine", mine.token or "", foreign)
    assert b"PACK" not in out and b"their-secret" not in out


def test_artifacts_push_with_a_stale_old_value_is_rejected_not_dropped(
    store: ArtifactStore, server: GitHttpServer
) -> None:
    """A push racing an API commit: the ref moved after the pusher read it. The push must be
    reported as failed (so the client fetches and retries), never "ok" with its commit lost."""
    repo = store.create_repo("r")
    read_by_pusher = store.commit("r", [FileInput(path="f", data=b"one")], "first")
    t = tree()
    pushed = commit_raw(oid("tree", t), [read_by_pusher])
    moved_to = store.commit("r", [FileInput(path="f", data=b"two")], "landed meanwhile")
    out = receive_pack(
        server,
        "r",
        repo.token or "",
        read_by_pusher.encode() + b" " + oid("commit", pushed).encode() + b" refs/heads/main",
        pack([plain_entry("tree", t), plain_entry("commit", pushed)]),
    )
    assert b"ok refs/heads/main" not in out
    assert b"ng refs/heads/main" in out
    assert store.resolve("r", "main") == moved_to
