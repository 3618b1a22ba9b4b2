"""WebAssembly isolates (wasmtime): Python, JavaScript and raw WASI modules.

Public surface:

- `PythonFactory`, `JavaScriptFactory`, `WasiFactory`: `IsolateFactory` implementations for the
  runtimes "python", "javascript" (pooled by isolates/pool.py) and "wasi" (one per request).
- `ensure_runtimes(data_dir, progress=True) -> RuntimePaths`: the build step (also
  `python -m isolates.wasm.build --data-dir DIR`); a no-op while the artifacts are up to date.
- Exceptions: `InvalidModule` (WASI module bytes that do not compile; map to INVALID_ARGUMENT),
  `BuildError` (building a runtime failed).

Layout: engine.py (the shared Engine, epoch ticker, watchdog), build.py (artifacts),
python_runtime.py, javascript_runtime.py, wasi_runtime.py (one per runtime), wasi_core.py (the
host's WASI overrides for core modules), quickjs_snapshot.py and wasm_binary.py (the build-time
snapshot of an initialized QuickJS), output.py (capped capture), scratch.py (per-execution
directories), common.py (shared helpers), guest/ (the Python guest app and its WIT world, and
the QuickJS bootstrap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isolates.wasm.build import BuildError, RuntimePaths, ensure_runtimes
    from isolates.wasm.javascript_runtime import JavaScriptFactory, JavaScriptIsolate
    from isolates.wasm.python_runtime import PythonFactory, PythonIsolate
    from isolates.wasm.wasi_runtime import InvalidModule, WasiFactory, WasiIsolate

# Imported on first use, so that `python -m isolates.wasm.build` does not import build.py twice.
_HOMES = {
    "BuildError": "build",
    "RuntimePaths": "build",
    "ensure_runtimes": "build",
    "JavaScriptFactory": "javascript_runtime",
    "JavaScriptIsolate": "javascript_runtime",
    "PythonFactory": "python_runtime",
    "PythonIsolate": "python_runtime",
    "InvalidModule": "wasi_runtime",
    "WasiFactory": "wasi_runtime",
    "WasiIsolate": "wasi_runtime",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "BuildError",
    "InvalidModule",
    "JavaScriptFactory",
    "JavaScriptIsolate",
    "PythonFactory",
    "PythonIsolate",
    "RuntimePaths",
    "WasiFactory",
    "WasiIsolate",
    "ensure_runtimes",
]
