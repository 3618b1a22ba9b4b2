"""Behaviour of raw WASI module isolates, with small modules written as WAT text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from isolates.base import ExecutionRequest, ExecutionResult, InputFile, Language, Limits, Status
from isolates.wasm import InvalidModule, WasiFactory
from isolates.wasm.engine import get_engine
from isolates.wasm.wasi_runtime import ModuleCache

IMPORTS = """
 (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
 (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "environ_sizes_get"
   (func $env_sizes (param i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "path_open"
   (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 ;; write(fd, ptr, len) through one iovec at 1024
 (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
   (i32.store (i32.const 1024) (local.get $ptr))
   (i32.store (i32.const 1028) (local.get $len))
   (call $fd_write (local.get $fd) (i32.const 1024) (i32.const 1) (i32.const 1032)))
"""


def wat(body: str) -> bytes:
    return wasmtime.wat2wasm(f"(module {IMPORTS} {body})")


HELLO = wat("""
 (data (i32.const 16) "hello\\n")
 (func (export "_start") (drop (call $write (i32.const 1) (i32.const 16) (i32.const 6))))
""")

EXIT_7 = wat("""
 (data (i32.const 16) "oops\\n")
 (func (export "_start")
   (drop (call $write (i32.const 2) (i32.const 16) (i32.const 5)))
   (call $exit (i32.const 7)))
""")

ECHO_STDIN = wat("""
 (func (export "_start")
   (loop $more
     (i32.store (i32.const 1040) (i32.const 4096))
     (i32.store (i32.const 1044) (i32.const 100))
     (drop (call $fd_read (i32.const 0) (i32.const 1040) (i32.const 1) (i32.const 1048)))
     (if (i32.gt_u (i32.load (i32.const 1048)) (i32.const 0))
       (then
         (drop (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 1048))))
         (br $more)))))
""")

ARGS_AND_ENV = wat("""
 (func (export "_start")
   (drop (call $args_sizes (i32.const 0) (i32.const 4)))
   (drop (call $args_get (i32.const 2048) (i32.const 4096)))
   (drop (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 4))))
   (drop (call $env_sizes (i32.const 0) (i32.const 4)))
   (drop (call $env_get (i32.const 2048) (i32.const 8192)))
   (drop (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 4)))))
""")


def open_and_write(path: str) -> bytes:
    """A module opening `path` under the first preopen (fd 3) for writing; prints ok/denied."""
    encoded = path.encode()
    return wat(f"""
 (data (i32.const 16) "{path}")
 (data (i32.const 512) "written")
 (data (i32.const 600) "ok\\n")
 (data (i32.const 610) "denied\\n")
 (func (export "_start")
   (if (i32.eqz (call $path_open (i32.const 3) (i32.const 0)
                  (i32.const 16) (i32.const {len(encoded)})
                  (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 700)))
     (then
       (drop (call $write (i32.load (i32.const 700)) (i32.const 512) (i32.const 7)))
       (drop (call $write (i32.const 1) (i32.const 600) (i32.const 3))))
     (else (drop (call $write (i32.const 1) (i32.const 610) (i32.const 7))))))
""")


SLEEP_FOREVER = wat("""
 (func (export "_start")
   ;; one relative clock subscription (monotonic, id 1) of about 10^18 ns
   (i64.store (i32.const 0) (i64.const 0))
   (i32.store8 (i32.const 8) (i32.const 0))
   (i32.store (i32.const 16) (i32.const 1))
   (i64.store (i32.const 24) (i64.const 1000000000000000000))
   (i64.store (i32.const 32) (i64.const 0))
   (i32.store16 (i32.const 40) (i32.const 0))
   (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256))))
""")

SLEEP_10MS_THEN_HELLO = wat("""
 (data (i32.const 400) "awake\\n")
 (func (export "_start")
   (i32.store8 (i32.const 8) (i32.const 0))
   (i32.store (i32.const 16) (i32.const 1))
   (i64.store (i32.const 24) (i64.const 10000000))
   (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))
   (drop (call $write (i32.const 1) (i32.const 400) (i32.const 6))))
""")

SPIN = wat('(func (export "_start") (loop (br 0)))')

SPAM = wat("""
 (data (i32.const 16) "spam spam\\n")
 (func (export "_start")
   (loop (drop (call $write (i32.const 1) (i32.const 16) (i32.const 10))) (br 0)))
""")


@pytest.fixture(scope="module")
def factory(data_dir: Path) -> Iterator[WasiFactory]:
    yield WasiFactory(data_dir)


def run(factory: WasiFactory, module: bytes, **fields: object) -> ExecutionResult:
    isolate = factory.create()
    try:
        return isolate.run(
            ExecutionRequest(execution_id="t", language=Language.WASI, module=module, **fields)  # type: ignore[arg-type]
        )
    finally:
        isolate.destroy()


def test_hello(factory: WasiFactory) -> None:
    result = run(factory, HELLO)
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, b"hello\n")


def test_exit_code_and_stderr(factory: WasiFactory) -> None:
    result = run(factory, EXIT_7)
    assert (result.status, result.exit_code, result.stderr) == (Status.ERROR, 7, b"oops\n")


def test_stdin(factory: WasiFactory) -> None:
    data = bytes(range(256)) * 3
    assert run(factory, ECHO_STDIN, stdin=data).stdout == data


def test_argv_and_env(factory: WasiFactory) -> None:
    result = run(factory, ARGS_AND_ENV, argv=("prog.wasm", "--flag"), env={"KEY": "value"})
    assert result.stdout == b"prog.wasm\0--flag\0KEY=value\0"


def test_files_in_and_out(factory: WasiFactory) -> None:
    result = run(
        factory,
        open_and_write("out.txt"),
        files=(InputFile(path="in.txt", content=b"x"),),
        output_paths=("out.txt",),
    )
    assert result.stdout == b"ok\n", result.message
    assert result.files[0].content == b"written"


def test_cannot_open_outside_the_scratch_dir(factory: WasiFactory) -> None:
    assert run(factory, open_and_write("../escape.txt")).stdout == b"denied\n"


def test_infinite_loop_times_out(factory: WasiFactory) -> None:
    result = run(factory, SPIN, limits=Limits(timeout_s=0.2))
    assert result.status is Status.TIMEOUT


def test_sleep_in_host_call_times_out(factory: WasiFactory) -> None:
    result = run(factory, SLEEP_FOREVER, limits=Limits(timeout_s=0.2))
    assert result.status is Status.TIMEOUT


def test_short_sleep_completes(factory: WasiFactory) -> None:
    assert run(factory, SLEEP_10MS_THEN_HELLO).stdout == b"awake\n"


def test_output_limit(factory: WasiFactory) -> None:
    result = run(factory, SPAM, limits=Limits(output_bytes=95))
    assert result.status is Status.OUTPUT_LIMIT
    assert result.stdout == (b"spam spam\n" * 10)[:95] and result.stdout_total_bytes == 100


def test_trap_is_error(factory: WasiFactory) -> None:
    result = run(factory, wasmtime.wat2wasm('(module (func (export "_start") unreachable))'))
    assert result.status is Status.ERROR and "unreachable" in result.message


def test_missing_start(factory: WasiFactory) -> None:
    result = run(factory, wasmtime.wat2wasm('(module (func (export "main")))'))
    assert result.status is Status.ERROR and "_start" in result.message


def test_unknown_import(factory: WasiFactory) -> None:
    module = wasmtime.wat2wasm('(module (import "env" "magic" (func)) (func (export "_start")))')
    result = run(factory, module)
    assert result.status is Status.ERROR and "env::magic" in result.message


def test_compile_rejects_invalid_bytes(factory: WasiFactory) -> None:
    with pytest.raises(InvalidModule, match="not a WebAssembly binary"):
        factory.compile(b"#!/bin/sh\necho hi")
    with pytest.raises(InvalidModule, match="does not compile"):
        factory.compile(b"\0asm\x01\0\0\0\xff\xff")
    result = run(factory, b"garbage")
    assert result.status is Status.ERROR and result.message.startswith("invalid wasm module")


def test_compiled_module_is_cached_on_disk(factory: WasiFactory) -> None:
    import hashlib

    module = wat('(func (export "_start") (nop)) (global i32 (i32.const 12345))')
    digest = hashlib.sha256(module).hexdigest()
    cached = factory.cache.directory / f"{digest}.cwasm"
    cached.unlink(missing_ok=True)
    assert run(factory, module).status is Status.OK
    assert cached.is_file()
    assert factory.compile(module) is factory.compile(module)


def test_module_cache_is_bounded(tmp_path: Path) -> None:
    cache = ModuleCache(get_engine(), tmp_path, max_entries=2, memory_entries=1)
    for value in range(4):
        cache.get(wasmtime.wat2wasm(f"(module (global i32 (i32.const {value})))"))
    assert len(list(tmp_path.glob("*.cwasm"))) == 2
    assert len(cache._memory) == 1
    small = ModuleCache(get_engine(), tmp_path / "b", max_bytes=1)
    small.get(wasmtime.wat2wasm("(module)"))
    assert list((tmp_path / "b").glob("*.cwasm")) == []
