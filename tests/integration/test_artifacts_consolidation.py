"""Pack consolidation: many commits and pushes keep few packs, few descriptors, every object.

Each API commit and each push lands a pack; the store merges the smaller ones in the
background (artifacts/_consolidate.py). These tests drive a real store, real `git` over the
smart-HTTP server, and a restart, with a low `max_packs` so merges happen often.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dulwich.objects import ObjectID

from artifacts import ArtifactStore, FileInput, GitHttpServer
from artifacts._consolidate import choose_rollup
from artifacts._limits import StoreLimits
from artifacts._packwrite import OBJ_BLOB, PackWriter, object_id
from tests.integration.test_git_smart_http import authed, files_of, git

MAX_PACKS = 4


def pack_files(store: ArtifactStore) -> list[Path]:
    return sorted(store.objects.pack_path.glob("*.pack"))


def open_fds(under: Path) -> int:
    """Descriptors of this process open on files below `under` (deleted ones included)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(under))
    return count


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ArtifactStore]:
    s = ArtifactStore(tmp_path / "data", limits=StoreLimits(max_packs=MAX_PACKS))
    try:
        yield s
    finally:
        s.close()


def commit_many(store: ArtifactStore, repo: str, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        ids.append(store.commit(repo, [FileInput(path=f"f{i % 7}.txt", data=f"v{i}\n".encode())],
                                f"commit {i}"))
    return ids


@pytest.mark.parametrize(
    ("counts", "merged"),
    [
        ([], 0),
        ([5], 0),
        ([1, 2, 4, 8], 0),  # already geometric: nothing to do
        ([3, 3, 3, 3], 4),  # equal packs: all of them
        ([1, 1, 1, 100], 3),  # the small ones, not the big one
        ([2, 3, 50, 51], 4),  # the two largest are no progression: everything merges
        ([1, 1, 10, 30], 2),  # only the two that break the progression
        ([1, 2], 0),
    ],
)
def test_choose_rollup_keeps_a_geometric_progression(counts: list[int], merged: int) -> None:
    assert choose_rollup(counts) == merged


def test_many_commits_keep_few_packs_and_every_object(store: ArtifactStore) -> None:
    store.create_repo("r")
    ids = commit_many(store, "r", 60)
    assert store.objects.consolidator.wait_idle(60)
    assert len(pack_files(store)) <= MAX_PACKS + 1
    # Merged-away packs are closed once nothing reads them: descriptors do not pile up.
    assert store.objects._retired == []
    # An open pack holds four descriptors (index and data, each a file and its mapping):
    # the 60 packs unmerged would hold 240.
    assert open_fds(store.root) <= 4 * (MAX_PACKS + 1)
    history = [c.id for c in store.log("r", limit=100)]
    assert history == list(reversed(ids))
    for i in range(53, 60):
        assert store.read_blob("r", f"f{i % 7}.txt") == f"v{i}\n".encode()
    assert store.read_blob("r", "f0.txt", ref=ids[0]) == b"v0\n"


def test_a_pack_in_use_stays_readable_while_merged_away(store: ArtifactStore) -> None:
    store.create_repo("r")
    first = commit_many(store, "r", 1)[0]
    store.objects.consolidator.wait_idle(60)
    held = store.objects.cached_packs()  # a reader in the middle of a lookup
    commit_many(store, "r", 20, start=1)
    assert store.objects.consolidator.wait_idle(60)
    gone = [p for p in held if not Path(p._data_path).exists()]
    assert gone, "the first packs should have been merged away"
    for pack in gone:
        assert pack in store.objects._retired
        raw = bytes.fromhex(first)
        if raw in pack.index:
            assert pack.get_raw(raw)[0] == 1  # still open: the commit object reads back
    del held, gone, pack
    commit_many(store, "r", 1, start=21)  # the next landing closes what nobody holds
    assert store.objects.consolidator.wait_idle(60)
    store.objects.close_released()
    assert store.objects._retired == []


def test_merged_store_survives_a_restart(tmp_path: Path) -> None:
    limits = StoreLimits(max_packs=MAX_PACKS)
    store = ArtifactStore(tmp_path / "data", limits=limits)
    store.create_repo("r")
    ids = commit_many(store, "r", 30)
    assert store.objects.consolidator.wait_idle(60)
    store.close()
    reopened = ArtifactStore(tmp_path / "data", limits=limits)
    try:
        assert [c.id for c in reopened.log("r", limit=100)] == list(reversed(ids))
        assert reopened.read_blob("r", "f1.txt") == b"v29\n"
    finally:
        reopened.close()


def test_a_store_opened_with_many_packs_merges_them(tmp_path: Path) -> None:
    """Packs left by a server with a higher limit are merged at start, before any commit."""
    store = ArtifactStore(tmp_path / "data", limits=StoreLimits(max_packs=1000))
    store.create_repo("r")
    ids = commit_many(store, "r", 20)
    store.close()
    assert len(list((tmp_path / "data").rglob("pack-*.pack"))) == 20
    reopened = ArtifactStore(tmp_path / "data", limits=StoreLimits(max_packs=MAX_PACKS))
    try:
        assert reopened.objects.consolidator.wait_idle(60)
        assert len(pack_files(reopened)) <= MAX_PACKS + 1
        assert [c.id for c in reopened.log("r", limit=100)] == list(reversed(ids))
    finally:
        reopened.close()


def test_closing_during_a_merge_keeps_every_object(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ArtifactStore(data, limits=StoreLimits(max_packs=1000))
    store.create_repo("r")
    contents = {f"big{i}.bin": os.urandom(2 * 1024 * 1024) for i in range(12)}
    for path, content in contents.items():
        store.commit("r", [FileInput(path=path, data=content)], f"add {path}")
    store.close()
    merging = ArtifactStore(data, limits=StoreLimits(max_packs=2))  # starts merging 24 MB
    merging.close()  # at once: the merge is abandoned or finishes, nothing in between
    assert list((data / "artifacts" / "tmp").glob("consolidate-*")) == []
    reopened = ArtifactStore(data, limits=StoreLimits(max_packs=1000))
    try:
        for path, content in contents.items():
            assert reopened.read_blob("r", path) == content
    finally:
        reopened.close()


def test_git_clone_and_push_across_merges(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "data", limits=StoreLimits(max_packs=MAX_PACKS))
    server = GitHttpServer(store, "127.0.0.1", 0)
    server.start()
    try:
        repo = store.create_repo("proj")
        commit_many(store, "proj", 12)
        assert repo.token
        url = authed(repo.clone_url, repo.token)
        work = tmp_path / "work"
        git("clone", url, str(work))
        for i in range(8):  # each push lands a pack of its own
            (work / f"pushed{i}.txt").write_text(f"p{i}\n")
            git("add", "-A", cwd=work)
            git("commit", "-qm", f"push {i}", cwd=work)
            git("push", "-q", "origin", "main", cwd=work)
        commit_many(store, "proj", 12, start=12)
        assert store.objects.consolidator.wait_idle(60)
        assert len(pack_files(store)) <= MAX_PACKS + 1
        fresh = tmp_path / "fresh"
        git("clone", url, str(fresh))
        git("fsck", "--strict", "--no-dangling", cwd=fresh)
        assert git("rev-parse", "HEAD", cwd=fresh).stdout.strip() == store.resolve("proj")
        assert files_of(fresh)["pushed7.txt"] == b"p7\n"
        assert len(git("rev-list", "HEAD", cwd=fresh).stdout.split()) == 12 + 8 + 12
    finally:
        server.stop()
        store.close()


def test_a_merge_that_reproduces_a_stored_pack_loses_nothing(tmp_path: Path) -> None:
    """Merging the same packs twice gives the same pack (same name): the stored one stays."""
    store = ArtifactStore(tmp_path / "data", limits=StoreLimits(max_packs=1))
    blobs = [(object_id(OBJ_BLOB, data), data) for data in (b"1\n", b"2\n", b"3\n")]

    def write_packs() -> None:
        for contents in (blobs[:2], blobs):
            writer = PackWriter(store.objects.pack_path, lambda _sha: False)
            for _sha, data in contents:
                writer.add(OBJ_BLOB, data)
            writer.finish()
        store.objects.update_pack_cache()

    try:
        write_packs()
        store.objects.consolidator.consolidate_now()
        merged = pack_files(store)
        assert len(merged) == 1
        write_packs()  # the same two packs again, beside their merge
        store.objects.consolidator.consolidate_now()
        store.objects.close_released()
        assert pack_files(store) == merged
        for sha, data in blobs:
            assert store.objects.get_raw(ObjectID(sha.hex().encode())) == (OBJ_BLOB, data)
    finally:
        store.close()
