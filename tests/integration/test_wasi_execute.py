"""Raw WASI modules through the API, including modules that must be refused (A5)."""

from __future__ import annotations

import pytest
import wasmtime

from sandboxd import Client, InvalidArgumentError

HELLO = wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello wasi\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 11))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")


@pytest.fixture(scope="module")
def client(target: str) -> Client:
    with Client(target) as c:
        yield c


def test_a_wasi_module_runs_and_prints(client: Client) -> None:
    execution = client.run_code(language="wasi", module=HELLO, argv=["hello"])
    assert execution.ok, execution.message
    assert execution.stdout == "hello wasi\n"
    assert execution.isolate.runtime == "wasi"


def test_A5_bytes_that_are_not_wasm_are_invalid_argument(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_code(language="wasi", module=b"\x7fELF not wasm at all")
    assert info.value.field_violations[0].field == "module"
    assert client.run_code("print('alive')").stdout == "alive\n"


def test_A5_missing_imports_and_traps_are_clear_results(client: Client) -> None:
    missing = wasmtime.wat2wasm(
        '(module (import "env" "magic" (func)) (func (export "_start") (call 0)))')
    execution = client.run_code(language="wasi", module=missing)
    assert execution.status == "error"
    assert "magic" in execution.message or "magic" in execution.stderr
    trap = wasmtime.wat2wasm('(module (func (export "_start") unreachable))')
    execution = client.run_code(language="wasi", module=trap)
    assert execution.status == "error"
    assert execution.message


def test_A5_endless_start_function_times_out(client: Client) -> None:
    spin = wasmtime.wat2wasm('(module (func $s (loop (br 0))) (start $s) '
                             '(func (export "_start")))')
    execution = client.run_code(language="wasi", module=spin, timeout=0.5)
    assert execution.status == "timeout"
    assert client.run_code("print('alive')").stdout == "alive\n"
