"""Execute through the SDK against a real server on port 0 with real wasm isolates."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from sandboxd import AsyncClient, Client, InvalidArgumentError


@pytest.fixture(scope="module")
def client(target: str) -> Client:
    with Client(target) as c:
        yield c


def test_python_prints(client: Client) -> None:
    execution = client.run_code("print(6 * 7)")
    assert execution.ok
    assert execution.stdout == "42\n"
    assert execution.exit_code == 0
    assert execution.isolate.kind == "wasm"
    assert execution.isolate.runtime == "python"
    assert execution.timings.total_us >= execution.timings.run_us > 0


def test_javascript_prints(client: Client) -> None:
    execution = client.run_code("console.log(6 * 7)", "javascript")
    assert execution.ok, execution.stderr
    assert execution.stdout == "42\n"


def test_failing_program_is_a_result_not_an_exception(client: Client) -> None:
    execution = client.run_code("raise ValueError('boom')")
    assert execution.status == "error"
    assert execution.exit_code == 1
    assert "ValueError: boom" in execution.stderr


def test_exit_code_is_reported(client: Client) -> None:
    execution = client.run_code("import sys; sys.exit(3)")
    assert execution.exit_code == 3
    assert execution.status == "error"


def test_files_env_and_stdin_round_trip(client: Client) -> None:
    code = (
        "import os, sys\n"
        "data = open('in/data.txt').read()\n"
        "open('out.txt', 'w').write(data.upper() + os.environ['GREETING'] + sys.stdin.read())\n"
    )
    execution = client.run_code(code, files={"in/data.txt": "abc"}, env={"GREETING": "hi"},
                                stdin="!", output_paths=["out.txt", "missing.txt"])
    assert execution.ok, execution.stderr
    assert execution.file("out.txt") == b"ABChi!"
    missing = [f for f in execution.files if f.path == "missing.txt"]
    assert missing and missing[0].error


def test_timeout_status(client: Client) -> None:
    execution = client.run_code("while True: pass", timeout=0.3)
    assert execution.status == "timeout"
    assert "0.3" in execution.message or "time" in execution.message.lower()


def test_deadline_caps_the_timeout(client: Client) -> None:
    execution = client.run_code("while True: pass", timeout=60, request_timeout=1.0)
    assert execution.status == "timeout"
    # The limit named is what the deadline left, to the millisecond (not 0.949731 s).
    match = re.fullmatch(r"wall-time limit of 0\.(\d{1,3}) s reached", execution.message)
    assert match, execution.message


def test_streaming_many_small_writes_arrive_whole_and_merged(client: Client) -> None:
    """console.log is a host call per line: the stream merges them rather than sending 5,000
    messages, and nothing is lost or reordered."""
    chunks: list[str] = []
    execution = client.run_code("for (let i = 0; i < 5000; i++) console.log(i)", "javascript",
                                on_stdout=chunks.append)
    assert execution.ok
    assert "".join(chunks) == execution.stdout == "".join(f"{i}\n" for i in range(5000))
    assert len(chunks) < 500


def test_streamed_output_arrives_while_the_program_runs(client: Client) -> None:
    arrived: list[float] = []
    started = time.monotonic()
    execution = client.run_code(
        "console.log('first'); const t = Date.now(); while (Date.now() - t < 1500) {}",
        "javascript", on_stdout=lambda _text: arrived.append(time.monotonic()))
    finished = time.monotonic()
    assert execution.ok and arrived
    # The first line is seen long before the program's 1.5 s of work ends.
    assert arrived[0] - started < (finished - started) / 2


def test_streaming_callbacks_receive_output(client: Client) -> None:
    out: list[str] = []
    err: list[str] = []
    execution = client.run_code("import sys\nprint('a')\nprint('b', file=sys.stderr)",
                                on_stdout=out.append, on_stderr=err.append)
    assert execution.ok
    assert "".join(out) == "a\n"
    assert "".join(err) == "b\n"


def test_invalid_request_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code("print(1)", files={"../escape": b"x"})
    assert [v.field for v in info.value.field_violations] == ["files[0].path"]


def test_shell_in_wasm_is_refused(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code("echo hi", "shell", isolate="wasm")
    assert info.value.field_violations[0].field == "isolate"


def test_every_execution_is_isolated(client: Client) -> None:
    first = client.run_code("open('left.txt', 'w').write('x'); import builtins; "
                            "builtins.LEAK = 1")
    assert first.ok
    second = client.run_code("import os, builtins\nprint(os.path.exists('left.txt'), "
                             "hasattr(builtins, 'LEAK'))")
    assert second.stdout == "False False\n"


def test_pool_hits_after_warm_up(client: Client) -> None:
    hits = [client.run_code("print(1)").isolate.pool_hit for _ in range(5)]
    assert any(hits)


async def test_async_client_runs_concurrently(target: str) -> None:
    async with AsyncClient(target) as client:
        executions = await asyncio.gather(
            *(client.run_code(f"print({i} * 2)") for i in range(16)))
    assert [e.stdout for e in executions] == [f"{i * 2}\n" for i in range(16)]


def test_health_reports_serving(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("sandboxd.v1.Executor") == "SERVING"
