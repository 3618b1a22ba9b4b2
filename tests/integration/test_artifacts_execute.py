"""Artifacts through the full server: SDK, Execute's output repo, and stock git over HTTP."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from sandboxd import Client, InvalidArgumentError, Repo


@pytest.fixture(scope="module")
def client(target: str) -> Client:
    with Client(target) as c:
        yield c


def new_repo(client: Client) -> Repo:
    return client.artifacts.create_repo("r-" + uuid.uuid4().hex[:10])


def authed(repo: Repo) -> str:
    parts = urlsplit(repo.clone_url)
    return urlunsplit(parts._replace(netloc=f"agent:{repo.token}@{parts.netloc}"))


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@example.com",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_execution_outputs_are_committed_to_the_repo(client: Client) -> None:
    repo = new_repo(client)
    execution = client.run_code(
        "import os\nos.makedirs('src', exist_ok=True)\n"
        "open('src/app.py', 'w').write('print(1)\\n')\nopen('README', 'w').write('hi')\n",
        output_paths=["src/app.py", "README"], output_repo=repo.name)
    assert execution.ok, execution.stderr
    assert len(execution.output_commit) == 40
    assert client.artifacts.read(repo.name, "src/app.py") == b"print(1)\n"
    log = client.artifacts.log(repo.name)
    assert [c.id for c in log] == [execution.output_commit]


def test_a_script_a_jail_made_executable_is_committed_executable(client: Client) -> None:
    repo = new_repo(client)
    execution = client.run_code(
        "printf '#!/bin/sh\\necho built\\n' > build.sh && chmod +x build.sh && echo x > notes",
        "shell", output_paths=["build.sh", "notes"], output_repo=repo.name)
    assert execution.ok, execution.stderr
    assert [f.executable for f in execution.files] == [True, False]
    modes = {e.path: e.mode for e in client.artifacts.list(repo.name)}
    assert modes == {"build.sh": 0o100755, "notes": 0o100644}


def test_unknown_output_repo_is_rejected_before_running(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code("open('x', 'w').write('1')", output_paths=["x"],
                        output_repo="no-such-repo-" + uuid.uuid4().hex[:6])
    assert info.value.field_violations[0].field == "output_repo"


def test_stock_git_clones_pushes_and_fetches_an_sdk_repo(client: Client, tmp_path: Path) -> None:
    repo = new_repo(client)
    client.artifacts.commit(repo.name, {"a.txt": b"one\n"}, message="first")
    git("clone", "-q", authed(repo), str(tmp_path / "clone"))
    work = tmp_path / "clone"
    assert (work / "a.txt").read_text() == "one\n"
    (work / "b.txt").write_text("two\n")
    git("add", "b.txt", cwd=work)
    git("commit", "-qm", "second", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    assert client.artifacts.read(repo.name, "b.txt") == b"two\n"
    assert [c.message.strip() for c in client.artifacts.log(repo.name)] == ["second", "first"]
    client.artifacts.commit(repo.name, {"c.txt": b"three\n"}, message="third")
    git("pull", "-q", "--ff-only", cwd=work)
    assert (work / "c.txt").read_text() == "three\n"
    git("fsck", "--strict", cwd=work)


def test_clone_without_the_token_is_refused(client: Client, tmp_path: Path) -> None:
    repo = new_repo(client)
    done = subprocess.run(["git", "clone", "-q", repo.clone_url, str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=60,
                          env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert not (tmp_path / "x" / ".git").exists() or not list((tmp_path / "x").iterdir())
