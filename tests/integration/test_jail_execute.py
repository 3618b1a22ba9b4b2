"""JAIL isolates through the API: shell, native Python, commands, and the AUTO choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd import Client, InvalidArgumentError
from tests.conftest import private_data_dir, start_server


@pytest.fixture(scope="module")
def client(target: str) -> Client:
    with Client(target) as c:
        yield c


def test_shell_runs_in_a_jail_by_default(client: Client) -> None:
    execution = client.run_code("echo $((6*7))", "shell")
    assert execution.ok, execution.message
    assert execution.stdout == "42\n"
    assert execution.isolate.kind == "jail"
    assert execution.isolate.runtime == "native"


def test_native_python_in_a_jail(client: Client) -> None:
    execution = client.run_code("import sys, ctypes; print(sys.implementation.name)",
                                isolate="jail")
    assert execution.ok, execution.stderr
    assert execution.stdout == "cpython\n"
    assert execution.isolate.kind == "jail"


def test_command_with_argv_files_and_outputs(client: Client) -> None:
    execution = client.run_code(
        language="command", argv=["sort", "-o", "sorted.txt", "in.txt"],
        files={"in.txt": "b\na\nc\n"}, output_paths=["sorted.txt"])
    assert execution.ok, execution.stderr
    assert execution.file("sorted.txt") == b"a\nb\nc\n"


def test_shell_failure_is_a_result(client: Client) -> None:
    execution = client.run_code("echo oops >&2; exit 5", "shell")
    assert execution.status == "error"
    assert execution.exit_code == 5
    assert execution.stderr == "oops\n"


def test_jail_timeout(client: Client) -> None:
    execution = client.run_code("sleep 30", "shell", timeout=0.5)
    assert execution.status == "timeout"


def test_javascript_cannot_be_jailed(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code("console.log(1)", "javascript", isolate="jail")
    assert info.value.field_violations[0].field == "isolate"


@pytest.mark.parametrize(("memory", "words"), [
    (1536 * 1024**2, "JAIL isolates take at most 1073741824 bytes (1024 MiB)"),
    (20 * 1024**2, "JAIL isolates need at least 33554432 bytes (32 MiB)"),
])
def test_memory_outside_a_jails_bounds_is_refused_not_clamped(
    client: Client, memory: int, words: str
) -> None:
    # Within the server's own bounds (16 MiB to 2 GiB), outside a jail's.
    for code, language in (("true", "shell"), ("pass", "python")):
        with pytest.raises(InvalidArgumentError) as info:
            client.run_code(code, language, memory=memory, isolate="jail")
        violation = info.value.field_violations[0]
        assert violation.field == "limits.memory_bytes"
        assert violation.description == f"is {memory} bytes; {words}"


def test_a_cpu_time_limit_runs_python_in_a_jail_and_holds(client: Client) -> None:
    # AUTO picks a jail for Python with a CPU-time limit: only a jail enforces one.
    execution = client.run_code("while True: pass", cpu_time=0.3, timeout=20)
    assert execution.isolate.kind == "jail"
    assert execution.status == "cpu_limit"
    assert execution.message == "CPU-time limit of 0.3 s reached"
    # Every process of the execution counts, children included.
    shell = client.run_code("(while :; do :; done) & (while :; do :; done) & sleep 20",
                            "shell", cpu_time=0.5, timeout=20)
    assert shell.status == "cpu_limit", shell.message


@pytest.mark.parametrize(("language", "code", "isolate", "words"), [
    ("python", "print(1)", "wasm", "this request asks for a wasm isolate"),
    ("javascript", "console.log(1)", "auto", "language javascript runs only in wasm isolates"),
])
def test_a_cpu_time_limit_is_refused_where_wasm_would_ignore_it(
    client: Client, language: str, code: str, isolate: str, words: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code(code, language, isolate=isolate, cpu_time=1)
    violation = info.value.field_violations[0]
    assert violation.field == "limits.cpu_ms"
    assert violation.description == (
        f"is enforced in JAIL isolates only; {words} (a wasm isolate runs one thread, so its "
        "timeout bounds its CPU time)")


def test_an_uploaded_script_runs_as_a_command_with_its_mode(client: Client) -> None:
    script = {"run.sh": "#!/bin/sh\necho \"hi $1\"\n"}
    execution = client.run_code(language="command", argv=["./run.sh", "a b"], files=script,
                                file_modes={"run.sh": 0o755})
    assert (execution.status, execution.stdout) == ("ok", "hi a b\n"), execution.stderr
    # Without a mode, an input file is 0o644, as a file written by the program would be.
    plain = client.run_code(language="command", argv=["./run.sh"], files=script)
    assert plain.exit_code == 126 and "Permission denied" in plain.stderr


def test_jail_streams_output(client: Client) -> None:
    chunks: list[str] = []
    execution = client.run_code("for i in 1 2 3; do echo $i; done", "shell",
                                on_stdout=chunks.append)
    assert execution.ok
    assert "".join(chunks) == "1\n2\n3\n"


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_warm_jails_run_on_the_event_loop_and_wasm_on_worker_threads(
    data_dir: Path, tmp_path: Path, event_loop: str
) -> None:
    running = start_server(private_data_dir(data_dir, tmp_path), pool_jail=1,
                           pool_wasm_python=1, pool_wasm_javascript=0, event_loop=event_loop)
    try:
        pool, workers = running.server.pool, running.server._workers
        assert pool is not None and workers is not None
        assert pool.wait_warm(60)
        with Client(running.target) as c:
            hit = c.run_code("print(6 * 7)", isolate="jail")
            assert (hit.stdout, hit.isolate.pool_hit) == ("42\n", True)
            # No worker thread was started for the warm jail: it ran on the event loop.
            assert workers._threads == {}
            # A wasm run computes on the host's CPU: it blocks a worker thread, not the loop.
            wasm = c.run_code("print(7 * 6)", isolate="wasm")
            assert wasm.stdout == "42\n"
            assert len(workers._threads) == 1
    finally:
        running.stop()


def test_output_files_that_cannot_be_returned_read_the_same_in_both_isolates(
    client: Client,
) -> None:
    code = (
        "import os\n"
        "os.mkdir('d'); open('d/x', 'w').write('x'); open('real', 'w').write('r')\n"
        "os.symlink('real', 'inner'); os.symlink('d', 'linkdir')\n"
    )
    expected = {
        "nope.txt": "missing",
        "d": "is not a regular file",
        "inner": "is a symbolic link (not followed)",
        "real/x": "a parent is not a directory",
        "linkdir/x": "a parent is a symbolic link (not followed)",
        "d/x": "",
    }
    for isolate in ("wasm", "jail"):
        execution = client.run_code(code, isolate=isolate, output_paths=list(expected))
        assert execution.ok, execution.stderr
        assert {f.path: f.error for f in execution.files} == expected, isolate
        assert execution.file("d/x") == b"x"
