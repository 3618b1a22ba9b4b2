"""A JAIL isolate's run awaited on an event loop (`run_on_loop`), against real nsjail.

The server runs warm jails this way (no worker thread); these tests hold it to the same results
as the blocking `run` and to what the loop relies on: it is never blocked, a request larger
than the pipe still goes through, and a cancelled await stops the jail. Each runs on both event
loops the server can serve on (executor/event_loop.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from executor.event_loop import loop_factory
from isolates.base import CancelToken, ExecutionRequest, InputFile, Language, Limits, Status
from isolates.jail import JailFactory
from isolates.jail._isolate import SPARE_CPU_POLL_S, JailIsolate, wait_for_exit


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JailFactory]:
    jail_factory = JailFactory(tmp_path_factory.mktemp("data"))
    yield jail_factory
    jail_factory.close()


@pytest.fixture
def jail(factory: JailFactory) -> Iterator[JailIsolate]:
    isolate = factory.create()
    yield isolate
    isolate.destroy()


_T = TypeVar("_T")


class RunOnLoop(Protocol):
    def __call__(self, main: Coroutine[Any, Any, _T]) -> _T: ...


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> RunOnLoop:
    """Runs a coroutine to completion on a new loop of each kind."""
    factory = loop_factory(request.param)

    def run_on_loop(main: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run(main, loop_factory=factory)

    return run_on_loop


def request(language: Language, code: str, **fields: object) -> ExecutionRequest:
    return ExecutionRequest(execution_id="t", language=language, code=code,
                            **fields)  # type: ignore[arg-type]


def test_runs_like_run(jail: JailIsolate, run: RunOnLoop) -> None:
    result = run(jail.run_on_loop(request(Language.PYTHON, "print(6 * 7)")))
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, b"42\n")
    assert result.run_us > 0


@pytest.mark.parametrize(("code", "status", "stdout"), [
    ("print(6 * 7)", Status.OK, b"42\n"),
    ("import time; time.sleep(0.05); print(42)", Status.OK, b"42\n"),
    ("import sys; print(1, flush=True); sys.exit(3)", Status.ERROR, b"1\n"),
    ("while True: pass", Status.TIMEOUT, b""),
])
def test_runs_the_same_when_the_driver_polls(
    jail: JailIsolate, run: RunOnLoop, code: str, status: Status, stdout: bytes
) -> None:
    result = run(jail.run_on_loop(
        request(Language.PYTHON, code, limits=Limits(timeout_s=0.5)), spare_cpu=True))
    assert (result.status, result.stdout) == (status, stdout), result.message


def test_streams_the_same_when_the_driver_polls(jail: JailIsolate, run: RunOnLoop) -> None:
    chunks: list[bytes] = []
    result = run(jail.run_on_loop(
        request(Language.PYTHON, "import time; print(1, flush=True); time.sleep(0.2); print(2)"),
        on_output=lambda stream, data: chunks.append(data), spare_cpu=True,
    ))
    assert result.status is Status.OK
    assert b"".join(chunks) == b"1\n2\n" == result.stdout
    assert len(chunks) == 2, chunks


def _driver_pid(jail: JailIsolate) -> int:
    """The host's pid of the jail's driver: nsjail's one child, pid 1 of the jail."""
    with open(f"/proc/{jail.pid}/task/{jail.pid}/children") as children:
        (driver,) = children.read().split()
    return int(driver)


def _driver_cpu_ns(jail: JailIsolate) -> int:
    """CPU time used so far by the jail's driver."""
    with open(f"/proc/{_driver_pid(jail)}/schedstat") as schedstat:
        return int(schedstat.read().split()[0])


def test_the_driver_polls_only_with_spare_cpu_and_briefly(
    factory: JailFactory, run: RunOnLoop
) -> None:
    used_ns: dict[bool, int] = {}
    for spare_cpu in (False, True):
        jail = factory.create()
        try:
            before = _driver_cpu_ns(jail)
            result = run(jail.run_on_loop(
                request(Language.PYTHON, "import time; time.sleep(0.3)"), spare_cpu=spare_cpu))
            used_ns[spare_cpu] = _driver_cpu_ns(jail) - before
        finally:
            jail.destroy()
        assert result.status is Status.OK
    # Polling shows in the driver's CPU time; then it sleeps, through most of the 0.3 s run.
    assert used_ns[True] - used_ns[False] >= SPARE_CPU_POLL_S * 1e9 / 2, used_ns
    assert used_ns[True] < 0.1e9, used_ns


def test_streams_output_as_it_comes(jail: JailIsolate, run: RunOnLoop) -> None:
    chunks: list[tuple[str, bytes]] = []
    result = run(jail.run_on_loop(
        request(Language.SHELL, "echo one; sleep 0.2; echo two >&2; echo three"),
        on_output=lambda stream, data: chunks.append((stream, data)),
    ))
    assert result.status is Status.OK
    assert b"".join(d for s, d in chunks if s == "stdout") == b"one\nthree\n" == result.stdout
    assert b"".join(d for s, d in chunks if s == "stderr") == b"two\n"


def test_a_request_larger_than_the_pipe_is_written_whole(
    jail: JailIsolate, run: RunOnLoop
) -> None:
    content = os.urandom(1 << 20)  # 16 times a pipe's buffer
    result = run(jail.run_on_loop(request(
        Language.SHELL, "cp in.bin out.bin",
        files=(InputFile(path="in.bin", content=content),), output_paths=("out.bin",),
        limits=Limits(output_bytes=2 << 20),
    )))
    assert result.status is Status.OK, result.message
    assert result.files[0].content == content


def test_the_loop_keeps_running_while_the_jail_runs(jail: JailIsolate, run: RunOnLoop) -> None:
    async def main() -> int:
        ticks = 0
        running = asyncio.ensure_future(jail.run_on_loop(request(Language.SHELL, "sleep 0.5")))
        while not running.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert (await running).status is Status.OK
        return ticks

    assert run(main()) >= 20


def test_streamed_output_does_not_hold_the_loop(jail: JailIsolate, run: RunOnLoop) -> None:
    # A program streaming 8 MB as fast as it can: the loop must run other tasks between the
    # chunks it relays, not drain the pipe for as long as the jail keeps it full.
    async def main() -> set[int]:
        ticks = 0
        seen: set[int] = set()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        result = await jail.run_on_loop(
            request(Language.SHELL, "head -c 8000000 /dev/zero",
                    limits=Limits(output_bytes=16 << 20)),
            on_output=lambda stream, data: seen.add(ticks),
        )
        ticking.cancel()
        assert result.status is Status.OK and result.stdout_total_bytes == 8_000_000
        return seen

    assert len(run(main())) > 1


def test_a_cancelled_await_stops_the_jail(jail: JailIsolate, run: RunOnLoop) -> None:
    async def main() -> None:
        running = asyncio.ensure_future(jail.run_on_loop(request(
            Language.SHELL, "echo started; sleep 60", limits=Limits(timeout_s=60))))
        await asyncio.sleep(0.5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(main())
    # Stopped by the cancellation itself, not by a later destroy().
    assert wait_for_exit(jail._process, 10)


def test_a_cancelled_token_ends_cancelled(jail: JailIsolate, run: RunOnLoop) -> None:
    async def main() -> Status:
        cancel = CancelToken()
        asyncio.get_running_loop().call_later(0.3, cancel.cancel)
        result = await jail.run_on_loop(
            request(Language.SHELL, "sleep 60", limits=Limits(timeout_s=60)), cancel=cancel)
        return result.status

    assert run(main()) is Status.CANCELLED


def test_a_jail_killed_under_the_run_ends_with_an_error_not_a_hang(
    jail: JailIsolate, run: RunOnLoop
) -> None:
    async def main() -> Status:
        asyncio.get_running_loop().call_later(0.3, os.kill, jail.pid, signal.SIGKILL)
        result = await jail.run_on_loop(
            request(Language.SHELL, "sleep 60", limits=Limits(timeout_s=60)))
        return result.status

    assert run(main()) is Status.INTERNAL_ERROR


def test_a_driver_that_never_reports_ends_at_the_hosts_deadline(
    jail: JailIsolate, run: RunOnLoop
) -> None:
    os.kill(_driver_pid(jail), signal.SIGSTOP)
    result = run(jail.run_on_loop(request(Language.PYTHON, "print(1)",
                                          limits=Limits(timeout_s=0.2))))
    assert result.status is Status.TIMEOUT, result.message
    assert "wall-time limit of 0.2 s reached" in result.message
    assert wait_for_exit(jail._process, 10)


def test_the_isolate_stays_single_use(jail: JailIsolate, run: RunOnLoop) -> None:
    run(jail.run_on_loop(request(Language.SHELL, "true")))
    with pytest.raises(RuntimeError, match="single-use"):
        run(jail.run_on_loop(request(Language.SHELL, "true")))
    with pytest.raises(RuntimeError, match="single-use"):
        jail.run(request(Language.SHELL, "true"))
