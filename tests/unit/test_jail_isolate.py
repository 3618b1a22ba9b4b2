"""Behaviour of JAIL isolates against real nsjail: languages, stdio, env, files, streaming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from isolates.base import ExecutionRequest, InputFile, Language, Status
from isolates.jail import JailFactory
from isolates.jail._protocol import SAFE_ENV
from tests import python3_c


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JailFactory]:
    jail_factory = JailFactory(tmp_path_factory.mktemp("data"))
    yield jail_factory
    jail_factory.close()


def run(factory: JailFactory, **fields: object):  # type: ignore[no-untyped-def]
    isolate = factory.create()
    try:
        return isolate.run(ExecutionRequest(execution_id="t", **fields))  # type: ignore[arg-type]
    finally:
        isolate.destroy()


def test_python_print(factory: JailFactory) -> None:
    result = run(factory, language=Language.PYTHON, code="print(1)")
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, b"1\n")
    assert result.stdout_total_bytes == 2 and not result.stdout_truncated


def test_python_exception_is_error_with_traceback(factory: JailFactory) -> None:
    result = run(factory, language=Language.PYTHON, code="x = 1\nraise ValueError('boom')")
    assert result.status is Status.ERROR and result.exit_code == 1
    assert b"ValueError: boom" in result.stderr
    assert b'File "<string>", line 2' in result.stderr
    assert b"driver" not in result.stderr


def test_python_sys_exit_code(factory: JailFactory) -> None:
    result = run(factory, language=Language.PYTHON, code="import sys; print('a'); sys.exit(3)")
    assert (result.status, result.exit_code, result.stdout) == (Status.ERROR, 3, b"a\n")
    assert result.message == "the program exited with code 3"


def test_python_killed_by_a_signal_reads_as_a_shell_reports_it(factory: JailFactory) -> None:
    result = run(factory, language=Language.PYTHON,
                 code="import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert (result.status, result.exit_code) == (Status.ERROR, 128 + 15)
    assert result.message == "the program was killed by SIGTERM"


def test_python_ending_without_free_descriptors_reports_only_its_own_output(
    factory: JailFactory,
) -> None:
    # The program leaves every descriptor of its RLIMIT_NOFILE open: the driver's own end of
    # the run must not need one, nor add a line of its own to stderr.
    code = (
        "import os\n"
        "try:\n"
        "    while True: os.open('/dev/null', os.O_RDONLY)\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
    )
    result = run(factory, language=Language.PYTHON, code=code)
    assert (result.status, result.exit_code) == (Status.OK, 0), result
    assert (result.stdout, result.stderr) == (b"Too many open files\n", b"")


def test_python_thread_left_running_does_not_hold_the_result(factory: JailFactory) -> None:
    # A second thread alive at the end sends the driver down the path that reaps every process.
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('x')\n"
    )
    result = run(factory, language=Language.PYTHON, code=code)
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, b"x\n")


@python3_c.all_cases
def test_python_runs_as_under_python3_c(factory: JailFactory, case: python3_c.Case) -> None:
    result = run(factory, language=Language.PYTHON, code=case.code, env=case.env,
                 output_paths=tuple(case.returned),
                 files=tuple(InputFile(path=p, content=c) for p, c in case.files.items()))
    assert (result.exit_code, result.stdout, result.stderr) == (case.exit_code, case.stdout, b"")
    assert result.status is (Status.OK if case.exit_code == 0 else Status.ERROR), result.message
    assert {f.path: f.content for f in result.files} == case.returned


def test_python_runs_system_python_as_unprivileged_user(factory: JailFactory) -> None:
    code = "import os, sys; print(sys.executable, os.getuid(), os.getgid(), os.getcwd())"
    result = run(factory, language=Language.PYTHON, code=code)
    assert result.stdout.split() == [b"/usr/bin/python3", b"1000", b"1000", b"/workspace"]


def test_shell(factory: JailFactory) -> None:
    result = run(factory, language=Language.SHELL, code="echo $((6*7)); echo err >&2; exit 4")
    assert (result.status, result.exit_code) == (Status.ERROR, 4)
    assert (result.stdout, result.stderr) == (b"42\n", b"err\n")


def test_command_argv(factory: JailFactory) -> None:
    result = run(factory, language=Language.COMMAND, argv=("printf", "%s-%s", "a b", "c"))
    assert (result.status, result.stdout) == (Status.OK, b"a b-c")


def test_command_missing_program(factory: JailFactory) -> None:
    result = run(factory, language=Language.COMMAND, argv=("no-such-program",))
    assert (result.status, result.exit_code) == (Status.ERROR, 127)
    assert b"no-such-program" in result.stderr


def test_stdin(factory: JailFactory) -> None:
    data = b"line1\nline2\n" * 10000
    result = run(factory, language=Language.PYTHON, stdin=data,
                 code="import sys; d = sys.stdin.buffer.read(); print(len(d), d.count(b'\\n'))")
    assert result.stdout == f"{len(data)} 20000\n".encode()
    result = run(factory, language=Language.SHELL, stdin=b"hello", code="tr a-z A-Z")
    assert result.stdout == b"HELLO"


def test_env_request_variables_and_safe_set(factory: JailFactory) -> None:
    # What the program sees, and what a process it starts inherits.
    code = ("import os, json, subprocess\n"
            "inherited = subprocess.run(['env', '-0'], capture_output=True).stdout\n"
            "inherited = dict(v.split('=', 1) for v in inherited.decode().split('\\0') if v)\n"
            "print(json.dumps([dict(os.environ), inherited]))\n")
    for extra in ({}, {"FOO": "bar", "LANG": "C"}):
        result = run(factory, language=Language.PYTHON, code=code, env=extra)
        seen, inherited = __import__("json").loads(result.stdout)
        assert seen == inherited == {**SAFE_ENV, **extra}
    assert SAFE_ENV["HOME"] == "/workspace" and SAFE_ENV["PATH"].startswith("/usr/local/bin")


def test_input_and_output_files(factory: JailFactory) -> None:
    code = (
        "import pathlib, helper\n"
        "pathlib.Path('out').mkdir()\n"
        "data = pathlib.Path('in/data.txt').read_text()\n"
        "pathlib.Path('out/upper.txt').write_text(data.upper() + helper.SUFFIX)\n"
        "import os; print(oct(os.stat('in/run.sh').st_mode & 0o777))\n"
    )
    result = run(
        factory,
        language=Language.PYTHON,
        code=code,
        files=(
            InputFile(path="in/data.txt", content=b"hello"),
            InputFile(path="helper.py", content=b"SUFFIX = '!'\n"),
            InputFile(path="in/run.sh", content=b"#!/bin/sh\n", mode=0o755),
        ),
        output_paths=("out/upper.txt", "missing.txt"),
    )
    assert result.status is Status.OK, result.stderr
    assert result.stdout == b"0o755\n"
    by_path = {f.path: f for f in result.files}
    assert by_path["out/upper.txt"].content == b"HELLO!"
    assert by_path["out/upper.txt"].size == 6 and not by_path["out/upper.txt"].error
    assert by_path["missing.txt"].error == "missing" and by_path["missing.txt"].content == b""


def test_input_files_that_cannot_be_written_refuse_the_run(factory: JailFactory) -> None:
    # "a" is a file, so "a/b" cannot be made: the code must not run without its inputs.
    result = run(
        factory,
        language=Language.SHELL,
        code="echo ran",
        files=(InputFile(path="a", content=b"1"), InputFile(path="a/b", content=b"2")),
    )
    assert (result.status, result.stdout) == (Status.ERROR, b"")
    assert result.message == "input file 'a/b': Not a directory"


def test_output_file_larger_than_cap_is_truncated(factory: JailFactory) -> None:
    from isolates.base import Limits

    result = run(factory, language=Language.SHELL, code="head -c 5000 /dev/zero > big",
                 output_paths=("big",), limits=Limits(output_bytes=1000))
    (big,) = result.files
    assert (len(big.content), big.size, big.truncated) == (1000, 5000, True)


def test_streaming_output(factory: JailFactory) -> None:
    chunks: list[tuple[str, bytes]] = []
    isolate = factory.create()
    try:
        result = isolate.run(
            ExecutionRequest(execution_id="t", language=Language.SHELL,
                             code="echo one; sleep 0.2; echo two >&2; echo three"),
            on_output=lambda stream, data: chunks.append((stream, data)),
        )
    finally:
        isolate.destroy()
    assert result.status is Status.OK
    assert b"".join(d for s, d in chunks if s == "stdout") == b"one\nthree\n" == result.stdout
    assert b"".join(d for s, d in chunks if s == "stderr") == b"two\n"


def test_isolate_is_single_use(factory: JailFactory) -> None:
    isolate = factory.create()
    try:
        isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON, code="1"))
        with pytest.raises(RuntimeError, match="single-use"):
            isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON, code="1"))
    finally:
        isolate.destroy()


def test_wrong_language_is_a_caller_fault(factory: JailFactory) -> None:
    isolate = factory.create()
    try:
        with pytest.raises(ValueError, match="javascript"):
            isolate.run(ExecutionRequest(execution_id="t", language=Language.JAVASCRIPT))
    finally:
        isolate.destroy()


def test_runtime_and_key(factory: JailFactory) -> None:
    assert factory.key == "jail/native"


def test_facet_dir_is_bound_read_write(factory: JailFactory, tmp_path: Path) -> None:
    facet = tmp_path / "facet"
    facet.mkdir()
    (facet / "db.sqlite").write_bytes(b"")
    import os

    # The jail resolves the bind source as its unprivileged host uid: every ancestor must be
    # searchable by it (pytest's own temp root is mode 0700).
    for ancestor in facet.parents:
        if ancestor == Path("/tmp"):
            break
        ancestor.chmod(ancestor.stat().st_mode | 0o011)
    os.chown(facet, factory.settings.outside_uid, factory.settings.outside_gid)
    os.chown(facet / "db.sqlite", factory.settings.outside_uid, factory.settings.outside_gid)
    isolate = factory.create(facet_dir=facet)
    try:
        code = (
            "import sqlite3\n"
            "db = sqlite3.connect('/facet/db.sqlite')\n"
            "db.execute('create table t (x)'); db.execute('insert into t values (42)')\n"
            "db.commit(); print(open('/proc/self/mountinfo').read())"
        )
        result = isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON,
                                              code=code))
    finally:
        isolate.destroy()
    assert result.status is Status.OK, result.stderr
    import sqlite3

    assert sqlite3.connect(facet / "db.sqlite").execute("select x from t").fetchall() == [(42,)]
    # Without a facet, /facet does not exist.
    result = run(factory, language=Language.SHELL, code="ls /facet")
    assert result.status is Status.ERROR
