"""Stock git against the smart-HTTP server on port 0: clone, push, fetch, fsck, auth."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts import ArtifactStore, FileInput, GitHttpServer

GIT_ENV = {
    **os.environ,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**GIT_ENV, "HOME": str(cwd or Path.cwd())}
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc


def files_of(work: Path) -> dict[str, bytes]:
    return {
        p.relative_to(work).as_posix(): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(work).parts
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ArtifactStore, GitHttpServer]]:
    store = ArtifactStore(tmp_path / "data")
    server = GitHttpServer(store, "127.0.0.1", 0)
    server.start()
    try:
        yield store, server
    finally:
        server.stop()
        store.close()


def authed(url: str, token: str) -> str:
    return url.replace("http://", f"http://agent:{token}@")


def test_git_round_trip_clone_push_fetch(
    served: tuple[ArtifactStore, GitHttpServer], tmp_path: Path
) -> None:
    store, server = served
    repo = store.create_repo("proj")
    assert repo.clone_url == f"http://127.0.0.1:{server.port}/git/proj"
    assert repo.token
    first = store.commit("proj", [FileInput(path="README.md", data=b"# proj\n")], "init")
    url = authed(repo.clone_url, repo.token)

    one = tmp_path / "one"
    git("clone", url, str(one))
    assert git("rev-parse", "HEAD", cwd=one).stdout.strip() == first
    (one / "src").mkdir()
    (one / "src" / "main.py").write_text("print('hi')\n")
    (one / "tool.sh").write_text("#!/bin/sh\n")
    (one / "tool.sh").chmod(0o755)
    git("add", "-A", cwd=one)
    git("commit", "-qm", "add code", cwd=one)
    git("push", "origin", "main", cwd=one)
    pushed = git("rev-parse", "HEAD", cwd=one).stdout.strip()
    assert store.resolve("proj", "main") == pushed
    assert store.read_blob("proj", "src/main.py") == b"print('hi')\n"
    assert {e.path: e.mode for e in store.list_tree("proj", recursive=True)}["tool.sh"] == 0o100755

    # A commit made through the API is fetched by the existing clone.
    api = store.commit("proj", [FileInput(path="src/api.txt", data=b"from api\n")], "api")
    git("fetch", "origin", cwd=one)
    git("merge", "--ff-only", "origin/main", cwd=one)
    assert git("rev-parse", "HEAD", cwd=one).stdout.strip() == api

    two = tmp_path / "two"
    git("clone", url, str(two))
    assert files_of(one) == files_of(two)
    assert len(files_of(two)) == 4
    git("fsck", "--strict", "--no-dangling", cwd=two)


def test_git_push_new_branch_and_tag(
    served: tuple[ArtifactStore, GitHttpServer], tmp_path: Path
) -> None:
    store, _ = served
    repo = store.create_repo("tags")
    url = authed(repo.clone_url, repo.token or "")
    work = tmp_path / "w"
    git("init", "-q", "-b", "main", str(work))
    (work / "f").write_text("1\n")
    git("add", "f", cwd=work)
    git("commit", "-qm", "one", cwd=work)
    git("tag", "-a", "v1", "-m", "release", cwd=work)
    git("push", url, "main", "v1", "main:feature", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert store.get_repo("tags").branches == {"main": head, "feature": head}
    assert store.resolve("tags", "v1") == head


def test_git_bearer_token_works(
    served: tuple[ArtifactStore, GitHttpServer], tmp_path: Path
) -> None:
    store, _ = served
    repo = store.create_repo("bearer")
    store.commit("bearer", [FileInput(path="x", data=b"1")], "c")
    out = tmp_path / "c"
    git(
        "-c",
        f"http.extraHeader=Authorization: Bearer {repo.token}",
        "clone",
        repo.clone_url,
        str(out),
    )
    assert (out / "x").read_bytes() == b"1"


def test_git_missing_or_wrong_token_rejected(
    served: tuple[ArtifactStore, GitHttpServer], tmp_path: Path
) -> None:
    store, _ = served
    repo = store.create_repo("locked")
    other = store.create_repo("other")
    store.commit("locked", [FileInput(path="secret", data=b"s")], "c")
    cases = {
        "missing": repo.clone_url,
        "wrong": authed(repo.clone_url, "not-the-token"),
        "other repo's token": authed(repo.clone_url, other.token or ""),
    }
    for label, url in cases.items():
        dest = tmp_path / label.replace(" ", "_")
        proc = git("clone", url, str(dest), check=False)
        assert proc.returncode != 0, label
        assert (
            "401" in proc.stderr
            or "403" in proc.stderr
            or "Authentication failed" in proc.stderr
            or "could not read Username" in proc.stderr
        ), label
        assert not (dest / "secret").exists()


def test_git_restart_keeps_pushed_history(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "data")
    server = GitHttpServer(store)
    server.start()
    repo = store.create_repo("durable")
    work = tmp_path / "w"
    git("init", "-q", "-b", "main", str(work))
    (work / "f").write_text("keep me\n")
    git("add", "f", cwd=work)
    git("commit", "-qm", "one", cwd=work)
    git("push", authed(repo.clone_url, repo.token or ""), "main", cwd=work)
    server.stop()
    store.close()

    store2 = ArtifactStore(tmp_path / "data")
    server2 = GitHttpServer(store2)
    server2.start()
    try:
        assert store2.read_blob("durable", "f") == b"keep me\n"
        url = f"http://agent:{repo.token}@127.0.0.1:{server2.port}/git/durable"
        git("clone", url, str(tmp_path / "again"))
        assert (tmp_path / "again" / "f").read_text() == "keep me\n"
    finally:
        server2.stop()
        store2.close()


def test_git_clone_while_commits_land(
    served: tuple[ArtifactStore, GitHttpServer], tmp_path: Path
) -> None:
    """Clones succeed while an agent keeps committing (the branch moves between the
    clone's two requests)."""
    store, _server = served
    repo = store.create_repo("busy")
    assert repo.token
    store.commit("busy", [FileInput(path="seed.txt", data=b"seed\n")], "seed")
    url = authed(repo.clone_url, repo.token)
    stop = threading.Event()

    def keep_committing() -> None:
        i = 0
        while not stop.is_set():
            store.commit("busy", [FileInput(path=f"f{i % 5}.txt", data=f"{i}\n".encode())],
                         f"commit {i}")
            i += 1

    committer = threading.Thread(target=keep_committing)
    committer.start()
    try:
        for n in range(6):
            work = tmp_path / f"clone{n}"
            git("clone", "-q", url, str(work))
            git("fsck", "--strict", "--no-dangling", cwd=work)
    finally:
        stop.set()
        committer.join()
