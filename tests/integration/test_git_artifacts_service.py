"""The Artifacts gRPC service on a real grpc.aio server (port 0), through the SDK and git."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from artifacts import ArtifactStore, GitHttpServer, StoreLimits
from executor import artifacts_service
from sandboxd._artifacts import Artifacts, AsyncArtifacts
from sandboxd._errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Served:
    def __init__(self, store: ArtifactStore, port: int, git: GitHttpServer) -> None:
        self.store = store
        self.target = f"127.0.0.1:{port}"
        self.git = git


@pytest_asyncio.fixture(loop_scope="session")
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = ArtifactStore(tmp_path / "data", StoreLimits(max_object_bytes=4 * 1024 * 1024))
    git = GitHttpServer(store)
    git.start()
    server = grpc.aio.server()
    artifacts_service.add_to_server(server, store)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Served(store, port, git)
    finally:
        await server.stop(None)
        git.stop()
        store.close()


async def test_async_sdk_full_cycle(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        client = AsyncArtifacts(channel)
        repo = await client.create_repo("results")
        assert repo.token and repo.clone_url.endswith("/git/results")
        big = os.urandom(3 * 1024 * 1024)  # several 1 MiB chunks each way
        c1 = await client.commit(
            "results",
            {"out/report.md": b"# one\n", "data.bin": big},
            message="run 1",
            author=("Agent", "agent@example.com"),
        )
        c2 = await client.commit("results", {"out/report.md": b"# two\n"}, message="run 2")
        assert await client.read("results", "data.bin") == big
        assert await client.read("results", "out/report.md", ref=c1) == b"# one\n"
        log = await client.log("results")
        assert [c.id for c in log] == [c2, c1]
        assert log[1].author_name == "Agent"
        assert [e.path for e in await client.list("results", recursive=True)] == [
            "data.bin",
            "out/report.md",
        ]
        changes = await client.diff("results", c1, c2)
        assert [(c.path, c.kind) for c in changes] == [("out/report.md", "modified")]
        assert [r.name for r in await client.list_repos()] == ["results"]
        with pytest.raises(AlreadyExistsError):
            await client.create_repo("results")
        await client.delete_repo("results")
        with pytest.raises(NotFoundError):
            await client.log("results")


async def test_invalid_input_names_the_field(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        client = AsyncArtifacts(channel)
        with pytest.raises(InvalidArgumentError) as e:
            await client.create_repo("Bad/Name")
        assert [v.field for v in e.value.field_violations] == ["name"]
        await client.create_repo("r")
        with pytest.raises(InvalidArgumentError) as e:
            await client.commit("r", {"ok": b"1", "../escape": b"2"}, message="m")
        assert [v.field for v in e.value.field_violations] == ["files[1].path"]
        with pytest.raises(InvalidArgumentError) as e:
            await client.commit("r", {".git/config": b"x"}, message="m")
        assert [v.field for v in e.value.field_violations] == ["files[0].path"]
        with pytest.raises(InvalidArgumentError) as e:
            await client.commit("r", {"huge": bytes(5 * 1024 * 1024)}, message="m")
        assert [v.field for v in e.value.field_violations] == ["files[0].content"]
        with pytest.raises(NotFoundError):
            await client.read("r", "nothing")
        assert not list((served.store.tmp_dir).glob("upload-*"))


async def test_sync_sdk_and_git_clone_of_sdk_repo(served: Served, tmp_path: Path) -> None:
    def work() -> None:
        with grpc.insecure_channel(served.target) as channel:
            client = Artifacts(channel)
            repo = client.create_repo("shared")
            client.commit(
                "shared",
                {"a.txt": b"alpha\n", "bin/run": b"#!/bin/sh\n"},
                message="init",
                modes={"bin/run": 0o100755},
            )
            url = repo.clone_url.replace("http://", f"http://agent:{repo.token}@")
            env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "HOME": str(tmp_path)}
            dest = tmp_path / "clone"
            subprocess.run(["git", "clone", "-q", url, str(dest)], check=True, env=env)
            assert (dest / "a.txt").read_bytes() == b"alpha\n"
            assert os.access(dest / "bin" / "run", os.X_OK)
            (dest / "b.txt").write_text("beta\n")
            subprocess.run(["git", "add", "b.txt"], cwd=dest, check=True, env=env)
            subprocess.run(
                ["git", "-c", "user.name=G", "-c", "user.email=g@x", "commit", "-qm", "from git"],
                cwd=dest,
                check=True,
                env=env,
            )
            subprocess.run(["git", "push", "-q", "origin", "main"], cwd=dest, check=True, env=env)
            assert client.read("shared", "b.txt") == b"beta\n"
            assert [c.message.strip() for c in client.log("shared")] == ["from git", "init"]

    await asyncio.to_thread(work)
