"""The Wizer-style module rewriting of isolates/wasm/wasm_binary.py, checked with real wasmtime."""

from __future__ import annotations

import pytest
import wasmtime

from isolates.wasm.wasm_binary import (
    WasmFormatError,
    function_names,
    global_export_name,
    mutable_globals,
    snapshot,
    with_exports,
)

# A module with internal (unexported) functions, a mutable counter, a growable memory, an
# `_initialize` that sets state up, and a `read` that reports it.
WAT = """
(module
  (memory (export "memory") 1 10)
  (global $counter (mut i32) (i32.const 7))
  (global $big (mut i64) (i64.const -5))
  (global $fixed i32 (i32.const 99))
  (data (i32.const 16) "hello")
  (func $bump (param i32) (result i32)
    (global.set $counter (i32.add (global.get $counter) (local.get 0)))
    (global.get $counter))
  (func $secret (result i32) (i32.const 1234))
  (func (export "_initialize")
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 70000) (i32.const -559038737))
    (i32.store8 (i32.const 16) (i32.const 72))
    (global.set $big (i64.const -123456789012))
    (drop (call $bump (i32.const 35))))
  (func (export "read") (result i32)
    (i32.add (global.get $counter) (i32.load8_u (i32.const 16))))
  (func (export "far") (result i32) (i32.load (i32.const 70000))))
"""


@pytest.fixture(scope="module")
def module() -> bytes:
    return bytes(wasmtime.wat2wasm(WAT))


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


def _instance(engine: wasmtime.Engine, data: bytes) -> tuple[wasmtime.Store, wasmtime.Instance]:
    store = wasmtime.Store(engine)
    return store, wasmtime.Instance(store, wasmtime.Module(engine, data), [])


def test_function_names_come_from_the_name_section(module: bytes) -> None:
    names = function_names(module)
    assert {"bump", "secret"} <= names.keys()
    assert names["secret"] == names["bump"] + 1


def test_with_exports_exposes_internal_functions_and_mutable_globals(
    engine: wasmtime.Engine, module: bytes
) -> None:
    names = function_names(module)
    patched = with_exports(module, {"secret": names["secret"]})
    store, instance = _instance(engine, patched)
    exports = instance.exports(store)
    assert exports["secret"](store) == 1234  # type: ignore[operator]
    assert mutable_globals(module) == [0, 1]
    assert exports[global_export_name(0)].value(store) == 7  # type: ignore[union-attr]
    with pytest.raises(WasmFormatError, match="already exports"):
        with_exports(module, {"read": names["secret"]})


def test_snapshot_starts_where_the_set_up_left_off(engine: wasmtime.Engine, module: bytes) -> None:
    patched = with_exports(module, {})
    store, instance = _instance(engine, patched)
    exports = instance.exports(store)
    exports["_initialize"](store)  # type: ignore[operator]
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    image = bytes(memory.read(store, 0, memory.data_len(store)))
    values = {i: exports[global_export_name(i)].value(store)  # type: ignore[union-attr]
              for i in mutable_globals(patched)}

    snap = snapshot(patched, image, values, constants={"answer": 42, "high": 0xFFFF_FFF0},
                    drop_exports=["_initialize"])
    store2, copy = _instance(engine, snap)
    exports2 = copy.exports(store2)
    assert "_initialize" not in exports2
    assert not any(name.startswith("snapshot:") for name in exports2)
    assert exports2["read"](store2) == 42 + 72  # type: ignore[operator]
    assert exports2["far"](store2) == -559038737  # type: ignore[operator]
    assert exports2["answer"].value(store2) == 42  # type: ignore[union-attr]
    assert exports2["high"].value(store2) & 0xFFFF_FFFF == 0xFFFF_FFF0  # type: ignore[union-attr]
    memory2 = exports2["memory"]
    assert isinstance(memory2, wasmtime.Memory)
    assert memory2.size(store2) == 3
    limits = memory2.type(store2).limits
    assert (limits.min, limits.max) == (3, 10)
    # Instances of a snapshot are independent: state written by one is not seen by the next.
    memory2.write(store2, b"Z", 16)
    store3, third = _instance(engine, snap)
    assert third.exports(store3)["read"](store3) == 42 + 72  # type: ignore[operator]
    big_index = mutable_globals(patched)[1]
    assert values[big_index] == -123456789012


def test_snapshot_refuses_a_partial_page_image(module: bytes) -> None:
    with pytest.raises(WasmFormatError, match="whole number of pages"):
        snapshot(module, b"\0" * 100, {})


def test_a_non_module_is_refused() -> None:
    with pytest.raises(WasmFormatError):
        function_names(b"not wasm at all")
