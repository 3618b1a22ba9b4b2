"""Behaviour of wasm Python isolates against real wasmtime and the built component."""

from __future__ import annotations

import gc
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    InputFile,
    Language,
    Limits,
    Status,
)
from isolates.wasm import PythonFactory, PythonIsolate, ensure_runtimes
from tests import python3_c

STDLIB = [
    "json", "re", "sqlite3", "decimal", "fractions", "datetime", "email", "html",
    "xml.etree.ElementTree", "zipfile", "tarfile", "difflib", "csv", "statistics",
    "dataclasses", "typing", "textwrap",
]


@pytest.fixture(scope="module")
def factory(data_dir: Path) -> Iterator[PythonFactory]:
    ensure_runtimes(data_dir, progress=False)
    yield PythonFactory(data_dir)


def run(factory: PythonFactory, code: str, **fields: object) -> ExecutionResult:
    isolate = factory.create()
    try:
        return isolate.run(
            ExecutionRequest(execution_id="t", language=Language.PYTHON, code=code, **fields)  # type: ignore[arg-type]
        )
    finally:
        isolate.destroy()


def test_print(factory: PythonFactory) -> None:
    result = run(factory, "print(6 * 7)")
    assert (result.status, result.exit_code, result.stdout, result.stderr) == (
        Status.OK,
        0,
        b"42\n",
        b"",
    )
    assert result.stdout_total_bytes == 3 and not result.stdout_truncated


@python3_c.cases
def test_python_runs_as_under_python3_c(factory: PythonFactory, case: python3_c.Case) -> None:
    result = run(factory, case.code, env=case.env, output_paths=tuple(case.returned),
                 files=tuple(InputFile(path=p, content=c) for p, c in case.files.items()))
    assert (result.exit_code, result.stdout, result.stderr) == (case.exit_code, case.stdout, b"")
    assert result.status is (Status.OK if case.exit_code == 0 else Status.ERROR), result.message
    assert {f.path: f.content for f in result.files} == case.returned


@pytest.mark.parametrize("module", STDLIB)
def test_stdlib_module_imports(factory: PythonFactory, module: str) -> None:
    result = run(factory, f"import {module}\nprint({module}.__name__)")
    assert result.status is Status.OK, result.stderr
    assert result.stdout == f"{module}\n".encode()


def test_stdlib_module_outside_the_snapshot_imports_from_files(factory: PythonFactory) -> None:
    # `this` is never pre-imported (it prints on import), so it comes from /python.
    result = run(factory, "import this")
    assert result.status is Status.OK, result.stderr
    assert b"Beautiful is better than ugly." in result.stdout


def test_stdlib_works_not_only_imports(factory: PythonFactory) -> None:
    code = (
        "import json, sqlite3, decimal, statistics\n"
        "db = sqlite3.connect(':memory:'); db.execute('create table t(x)');\n"
        "db.executemany('insert into t values (?)', [(i,) for i in range(10)])\n"
        "print(json.dumps([db.execute('select sum(x) from t').fetchone()[0],\n"
        "    str(decimal.Decimal('1.1') + decimal.Decimal('2.2')), statistics.mean([1, 2, 3])]))"
    )
    result = run(factory, code)
    assert result.stdout == b'[45, "3.3", 2]\n', result.stderr


def test_input_files_are_in_the_working_directory_and_outputs_come_back(
    factory: PythonFactory,
) -> None:
    code = (
        "import os\n"
        "data = open('in/data.txt').read()\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/result.txt', 'w').write(data.upper())\n"
        "print(os.getcwd())"
    )
    result = run(
        factory,
        code,
        files=(InputFile(path="in/data.txt", content=b"hello"),),
        output_paths=("out/result.txt", "missing.txt"),
    )
    assert result.status is Status.OK, result.stderr
    assert result.stdout == b"/workspace\n"
    found, missing = result.files
    assert (found.path, found.content, found.size) == ("out/result.txt", b"HELLO", 5)
    assert found.error == ""
    assert missing.error == "missing" and missing.content == b""


def test_output_file_is_capped(factory: PythonFactory) -> None:
    result = run(
        factory,
        "open('big', 'wb').write(b'x' * 5000)",
        output_paths=("big",),
        limits=Limits(output_bytes=1000),
    )
    (big,) = result.files
    assert big.truncated and big.size == 5000 and big.content == b"x" * 1000


def test_env_stdin_and_argv(factory: PythonFactory) -> None:
    code = "import os, sys\nprint(os.environ['GREETING'], sys.stdin.read(), sys.argv)"
    result = run(factory, code, env={"GREETING": "hi"}, stdin=b"from stdin")
    assert result.stdout == b"hi from stdin ['-c']\n", result.stderr


def test_unicode_code_env_and_argv_reach_the_guest_intact(factory: PythonFactory) -> None:
    code = ("import os, sys\nprint('héllo ✓ 🐍', os.environ['A'], os.environ['B'], sys.argv)")
    result = run(factory, code, env={"A": "ü", "B": "x=y"}, argv=("prog", "—", ""))
    assert result.stdout.decode() == "héllo ✓ 🐍 ü x=y ['prog', '—', '']\n", result.stderr


@pytest.mark.parametrize("where", ["code", "env", "argv"])
def test_a_lone_surrogate_is_an_error_result_not_a_crash(
    factory: PythonFactory, where: str
) -> None:
    fields: dict[str, object] = {"code": "print(1)"}
    if where == "code":
        fields["code"] = "print('\\ud800')\n# \ud800"
    elif where == "env":
        fields["env"] = {"A": "\ud800"}
    else:
        fields["argv"] = ("\ud800",)
    result = run(factory, **fields)  # type: ignore[arg-type]
    assert result.status is Status.ERROR
    assert "not valid Unicode" in result.message
    assert run(factory, "print(2)").stdout == b"2\n"


def test_host_environment_is_not_visible(factory: PythonFactory) -> None:
    result = run(factory, "import os\nprint(sorted(os.environ))", env={"ONLY": "1"})
    assert result.stdout == b"['ONLY']\n"


def test_exception_is_error_with_traceback(factory: PythonFactory) -> None:
    result = run(factory, "x = 1\nraise ValueError('boom')")
    assert (result.status, result.exit_code) == (Status.ERROR, 1)
    assert b"ValueError: boom" in result.stderr
    assert b"line 2" in result.stderr and b"raise ValueError('boom')" in result.stderr
    assert b"app.py" not in result.stderr
    assert result.message == "ValueError: boom"


@pytest.mark.parametrize(
    ("code", "status", "exit_code", "stderr"),
    [
        ("import sys; sys.exit(0)", Status.OK, 0, b""),
        ("import sys; sys.exit()", Status.OK, 0, b""),
        ("import sys; sys.exit(3)", Status.ERROR, 3, b""),
        ("import sys; sys.exit('bad input')", Status.ERROR, 1, b"bad input\n"),
    ],
)
def test_exit_codes(
    factory: PythonFactory, code: str, status: Status, exit_code: int, stderr: bytes
) -> None:
    result = run(factory, code)
    assert (result.status, result.exit_code, result.stderr) == (status, exit_code, stderr)


def test_print_before_exception_is_kept(factory: PythonFactory) -> None:
    result = run(factory, "print('partial')\n1/0")
    assert result.stdout == b"partial\n" and b"ZeroDivisionError" in result.stderr


def test_infinite_loop_times_out(factory: PythonFactory) -> None:
    code = "print('start', flush=True)\nwhile True: pass"
    result = run(factory, code, limits=Limits(timeout_s=0.2))
    assert result.status is Status.TIMEOUT
    assert "wall-time limit of 0.2 s" in result.message
    assert result.stdout == b"start\n"


def test_sleep_times_out(factory: PythonFactory) -> None:
    result = run(factory, "import time\ntime.sleep(1e9)", limits=Limits(timeout_s=0.2))
    assert result.status is Status.TIMEOUT


def test_short_sleep_completes(factory: PythonFactory) -> None:
    result = run(factory, "import time\ntime.sleep(0.03)\nprint('woke')")
    assert (result.status, result.stdout) == (Status.OK, b"woke\n")


def test_memory_limit(factory: PythonFactory) -> None:
    result = run(factory, "x = bytearray(200 * 1024 * 1024)", limits=Limits(memory_bytes=64 << 20))
    assert result.status is Status.MEMORY_LIMIT
    assert "memory limit of 67108864 bytes" in result.message
    assert b"MemoryError" in result.stderr


def test_memory_limit_when_growing_gradually(factory: PythonFactory) -> None:
    code = "chunks = []\nwhile True: chunks.append(bytearray(1 << 20))"
    result = run(factory, code, limits=Limits(memory_bytes=64 << 20))
    assert result.status is Status.MEMORY_LIMIT


def test_output_limit(factory: PythonFactory) -> None:
    code = "while True: print('y' * 999)"
    result = run(factory, code, limits=Limits(output_bytes=10_000))
    assert result.status is Status.OUTPUT_LIMIT
    assert "stdout passed 10000 bytes" in result.message
    assert result.stdout == (b"y" * 999 + b"\n") * 10
    assert result.stdout_truncated and result.stdout_total_bytes > 10_000
    assert not result.stderr_truncated


def test_stderr_output_limit(factory: PythonFactory) -> None:
    code = "import sys\nwhile True: sys.stderr.write('e' * 100)"
    result = run(factory, code, limits=Limits(output_bytes=1000))
    assert result.status is Status.OUTPUT_LIMIT
    assert len(result.stderr) == 1000 and result.stderr_truncated


def test_binary_stdout(factory: PythonFactory) -> None:
    result = run(factory, "import sys\nsys.stdout.buffer.write(bytes([0, 255, 10]))")
    assert result.stdout == b"\x00\xff\n"


def test_output_streams_while_running_and_cancel_stops(factory: PythonFactory) -> None:
    isolate = factory.create()
    token = CancelToken()
    chunks: list[tuple[str, bytes]] = []
    started = threading.Event()

    def on_output(stream: str, chunk: bytes) -> None:
        chunks.append((stream, chunk))
        started.set()

    holder: list[ExecutionResult] = []
    request = ExecutionRequest(
        execution_id="t",
        language=Language.PYTHON,
        code="print('started', flush=True)\nwhile True: pass",
        limits=Limits(timeout_s=60),
    )
    worker = threading.Thread(
        target=lambda: holder.append(isolate.run(request, on_output=on_output, cancel=token))
    )
    worker.start()
    assert started.wait(30)
    token.cancel()
    worker.join(30)
    isolate.destroy()
    assert not worker.is_alive()
    (result,) = holder
    assert result.status is Status.CANCELLED
    assert chunks[0] == ("stdout", b"started\n")


def test_cancel_before_run(factory: PythonFactory) -> None:
    isolate = factory.create()
    token = CancelToken()
    token.cancel()
    request = ExecutionRequest(execution_id="t", language=Language.PYTHON, code="print(1)")
    result = isolate.run(request, cancel=token)
    isolate.destroy()
    assert result.status is Status.CANCELLED and result.stdout == b""


def test_instances_are_isolated(factory: PythonFactory) -> None:
    first = run(factory, "import json\njson.leak = 1\nopen('mine.txt', 'w').write('x')\nprint(1)")
    assert first.status is Status.OK
    second = run(factory, "import json, os\nprint(hasattr(json, 'leak'), os.listdir('.'))")
    assert second.stdout == b"False []\n"


def test_random_differs_between_instances(factory: PythonFactory) -> None:
    code = "import random\nprint(random.getrandbits(64))"
    values = {run(factory, code).stdout for _ in range(3)}
    assert len(values) == 3


def test_facet_sqlite_database_is_shared_with_the_host(
    factory: PythonFactory, tmp_path: Path
) -> None:
    facet = tmp_path / "facet"
    facet.mkdir()
    isolate = factory.create(facet_dir=facet)
    code = (
        "import sqlite3\n"
        "db = sqlite3.connect('/facet/db.sqlite')\n"
        "db.execute('create table notes(body text)')\n"
        "db.executemany('insert into notes values (?)', [('a',), ('b',)])\n"
        "db.commit()\n"
        "print(db.execute('select count(*) from notes').fetchone()[0])"
    )
    result = isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON, code=code))
    isolate.destroy()
    assert result.stdout == b"2\n", result.stderr
    with sqlite3.connect(facet / "db.sqlite") as db:
        assert db.execute("select body from notes order by body").fetchall() == [("a",), ("b",)]
    assert (facet / "db.sqlite").exists()  # destroy() leaves the facet alone


def test_no_facet_without_facet_dir(factory: PythonFactory) -> None:
    result = run(factory, "import os\nprint(os.path.exists('/facet'))")
    assert result.stdout == b"False\n"


def test_destroy_removes_scratch_dir_and_isolate_is_single_use(factory: PythonFactory) -> None:
    isolate: PythonIsolate = factory.create()
    scratch = isolate._scratch
    assert scratch is not None and scratch.path.is_dir()
    assert scratch.path.parent == factory.scratch_root
    assert factory.scratch_root.parent == factory.data_dir / "scratch"
    request = ExecutionRequest(execution_id="t", language=Language.PYTHON, code="print(1)")
    isolate.run(request)
    with pytest.raises(RuntimeError):
        isolate.run(request)
    isolate.destroy()
    isolate.destroy()
    assert not scratch.path.exists()


def test_concurrent_runs_on_threads(factory: PythonFactory) -> None:
    isolates = [factory.create() for _ in range(4)]
    results: list[ExecutionResult] = [None] * 4  # type: ignore[list-item]

    def work(i: int) -> None:
        code = f"print(sum(range({i} * 100000)))"
        request = ExecutionRequest(execution_id="t", language=Language.PYTHON, code=code)
        results[i] = isolates[i].run(request)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for isolate in isolates:
        isolate.destroy()
    assert [r.stdout for r in results] == [
        f"{sum(range(i * 100000))}\n".encode() for i in range(4)
    ]


# C extensions (and platform modules) that CPython for WASI does not have.
NATIVE = {
    "_bz2", "_ctypes", "_curses", "_curses_panel", "_dbm", "_gdbm", "_hashlib", "_interpchannels",
    "_interpqueues", "_interpreters", "_lzma", "_multiprocessing", "_overlapped", "_posixshmem",
    "_posixsubprocess", "_remote_debugging", "_scproxy", "_ssl", "_tkinter", "_uuid", "_winapi",
    "_wmi", "_zstd", "fcntl", "grp", "mmap", "msvcrt", "nt", "pwd", "readline", "resource",
    "syslog", "termios", "winreg", "winsound",
}


def test_every_pure_python_stdlib_module_imports(factory: PythonFactory) -> None:
    code = (
        "import sys, importlib\n"
        "for name in sorted(sys.stdlib_module_names - {'antigravity', 'this', '__main__'}):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(name, exc.name)\n"
        "    except BaseException as exc:\n"
        "        print(name, 'FAILED', type(exc).__name__)\n"
    )
    result = run(factory, code, limits=Limits(timeout_s=60))
    assert result.status is Status.OK, result.stderr
    missing = dict(line.split() for line in result.stdout.decode().splitlines())
    # Only modules that need a missing C extension fail, and only for that reason.
    assert set(missing.values()) <= NATIVE, missing
    assert "json" not in missing and "sqlite3" not in missing


def test_destroy_stops_a_running_isolate(factory: PythonFactory) -> None:
    isolate = factory.create()
    started = threading.Event()
    holder: list[ExecutionResult] = []
    request = ExecutionRequest(
        execution_id="t",
        language=Language.PYTHON,
        code="print('go', flush=True)\nwhile True: pass",
        limits=Limits(timeout_s=60),
    )
    worker = threading.Thread(
        target=lambda: holder.append(isolate.run(request, on_output=lambda s, c: started.set()))
    )
    worker.start()
    assert started.wait(30)
    isolate.destroy()
    worker.join(30)
    assert not worker.is_alive() and holder[0].status is Status.CANCELLED


def _live_stores() -> int:
    return sum(isinstance(o, wasmtime.Store) for o in gc.get_objects())


def test_a_trapped_isolate_frees_its_store_at_once(factory: PythonFactory) -> None:
    # A trap's traceback must not keep the Store (memory, descriptors) until a GC pass.
    gc.collect()
    gc.disable()
    try:
        before = _live_stores()
        result = run(factory, "while True: pass", limits=Limits(timeout_s=0.05))
        assert result.status is Status.TIMEOUT
        assert _live_stores() == before
    finally:
        gc.enable()
