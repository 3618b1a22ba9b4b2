"""ArtifactStore without a server: commits, reads, dedup across repos, restart, isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifacts import (
    AlreadyExistsError,
    ArtifactStore,
    Author,
    FileInput,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
    StoreLimits,
)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    s = ArtifactStore(tmp_path)
    yield s
    s.close()


def test_commit_read_list_log_diff(store: ArtifactStore) -> None:
    store.create_repo("demo")
    c1 = store.commit(
        "demo",
        [
            FileInput(path="src/a.py", data=b"print(1)\n"),
            FileInput(path="run.sh", data=b"x", mode=0o100755),
        ],
        "first",
        author=Author(name="Ada", email="ada@example.com"),
    )
    c2 = store.commit("demo", [FileInput(path="src/b.py", data=b"b")], "second", delete=["run.sh"])
    assert store.read_blob("demo", "src/a.py") == b"print(1)\n"
    assert store.read_blob("demo", "src/a.py", ref=c1) == b"print(1)\n"
    assert [e.path for e in store.list_tree("demo", recursive=True)] == ["src/a.py", "src/b.py"]
    assert [(e.path, e.kind) for e in store.list_tree("demo")] == [("src", "tree")]
    log = store.log("demo")
    assert [c.message for c in log] == ["second", "first"]
    assert log[1].author.name == "Ada" and log[0].parents == [c1]
    changes = {(c.path, c.kind) for c in store.diff("demo", c1, c2)}
    assert changes == {("run.sh", "deleted"), ("src/b.py", "added")}
    assert store.get_repo("demo").branches == {"main": c2}


def test_replace_makes_files_the_whole_tree(store: ArtifactStore) -> None:
    store.create_repo("r")
    store.commit("r", [FileInput(path="old", data=b"1")], "one")
    store.commit("r", [FileInput(path="new", data=b"2")], "two", replace=True)
    assert [e.path for e in store.list_tree("r", recursive=True)] == ["new"]


def test_branches_are_independent(store: ArtifactStore) -> None:
    store.create_repo("r")
    store.commit("r", [FileInput(path="f", data=b"main")], "m")
    store.commit("r", [FileInput(path="f", data=b"dev")], "d", branch="dev")
    assert store.read_blob("r", "f") == b"main"
    assert store.read_blob("r", "f", ref="dev") == b"dev"


def test_two_repos_with_same_file_store_the_blob_once(store: ArtifactStore) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, incompressible enough to dominate the pack size
    store.create_repo("one")
    store.create_repo("two")
    store.commit("one", [FileInput(path="big.bin", data=big)], "one")
    after_first = store.storage_bytes()
    store.commit("two", [FileInput(path="copy/big.bin", data=big)], "two")
    growth = store.storage_bytes() - after_first
    blob_id = store.list_tree("one")[0].id
    holders = [p for p in store.objects.packs if blob_id.encode() in p]
    assert len(holders) == 1
    assert growth < 4096  # only the new trees and commit, not the blob again


def test_delete_repo_keeps_objects_other_repos_use(store: ArtifactStore) -> None:
    store.create_repo("a")
    store.create_repo("b")
    store.commit("a", [FileInput(path="f", data=b"shared")], "a")
    store.commit("b", [FileInput(path="f", data=b"shared")], "b")
    store.delete_repo("a")
    assert store.read_blob("b", "f") == b"shared"
    assert [r.name for r in store.list_repos()] == ["b"]
    with pytest.raises(NotFoundError):
        store.get_repo("a")


def test_restart_loses_nothing_committed(tmp_path: Path) -> None:
    first = ArtifactStore(tmp_path)
    first.create_repo("keep")
    cid = first.commit("keep", [FileInput(path="a/b", data=b"persist")], "c")
    first.close()
    second = ArtifactStore(tmp_path)
    assert second.read_blob("keep", "a/b") == b"persist"
    assert second.log("keep")[0].id == cid
    second.close()


def test_repo_names_validated_and_unique(store: ArtifactStore) -> None:
    store.create_repo("ok-name_1.x")
    with pytest.raises(AlreadyExistsError):
        store.create_repo("ok-name_1.x")
    for bad in ["", "..", "a/b", "UPPER", "x.git", ".hidden", "a..b", "a" * 101]:
        with pytest.raises(InvalidArgumentError):
            store.create_repo(bad)


def test_large_file_streams_from_source_and_limit_applies(tmp_path: Path) -> None:
    limits = StoreLimits(stream_threshold=1024, max_object_bytes=64 * 1024)
    store = ArtifactStore(tmp_path / "d", limits)
    store.create_repo("r")
    src = tmp_path / "big"
    src.write_bytes(b"z" * 50_000)
    store.commit("r", [FileInput(path="big", source=src)], "big")
    assert store.read_blob("r", "big") == b"z" * 50_000
    src.write_bytes(b"z" * 70_000)
    with pytest.raises(LimitExceededError) as e:
        store.commit("r", [FileInput(path="big2", source=src)], "too big")
    assert e.value.field == "files[0].content"
    store.close()


def test_invalid_commit_inputs_name_the_field(store: ArtifactStore) -> None:
    store.create_repo("r")
    cases = [
        ([FileInput(path="a", data=b"1"), FileInput(path="a", data=b"2")], "files[1].path"),
        ([FileInput(path="a", data=b"1"), FileInput(path="a/b", data=b"2")], "files[1].path"),
        ([FileInput(path="../x", data=b"1")], "files[0].path"),
        ([FileInput(path="/abs", data=b"1")], "files[0].path"),
        ([FileInput(path="a//b", data=b"1")], "files[0].path"),
        ([FileInput(path="x", data=b"1", mode=0o100666)], "files[0].mode"),
    ]
    for files, field in cases:
        with pytest.raises(InvalidArgumentError) as e:
            store.commit("r", files, "bad")
        assert e.value.field == field
    with pytest.raises(InvalidArgumentError) as e:
        store.commit("r", [], "m", author=Author(name="x>", email="a@b"))
    assert e.value.field == "author.name"
    assert store.get_repo("r").branches == {}


def test_commit_of_another_repo_is_invisible(store: ArtifactStore) -> None:
    store.create_repo("secret")
    store.create_repo("mine")
    hidden = store.commit("secret", [FileInput(path="key", data=b"s3cr3t")], "s")
    store.commit("mine", [FileInput(path="f", data=b"x")], "m")
    with pytest.raises(NotFoundError):
        store.read_blob("mine", "key", ref=hidden)
    with pytest.raises(InvalidArgumentError):
        store.commit("mine", [FileInput(path="f", data=b"y")], "m", parents=[hidden])


def test_unknown_repo_ref_and_path(store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError):
        store.log("nope")
    store.create_repo("r")
    with pytest.raises(NotFoundError):
        store.log("r")
    store.commit("r", [FileInput(path="f", data=b"x")], "m")
    with pytest.raises(NotFoundError):
        store.read_blob("r", "missing")
    with pytest.raises(NotFoundError):
        store.read_blob("r", "f", ref="nobranch")
