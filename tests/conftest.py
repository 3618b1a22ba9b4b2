"""Shared fixtures: the data directory with built runtimes, and a real server on port 0.

The server runs in a thread with its own event loop so both the sync and async SDK clients can
call it from tests. Runtimes are built once by set-up (`make test`) into the data directory and
reused here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.config import Settings
from executor.event_loop import loop_factory
from executor.server import Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _scratch_released() -> Iterator[None]:
    """Unmount the scratch tmpfs of every data directory this session used, when it ends.

    The process's exit hook does the same, but a test session runs many exit hooks of other
    libraries first; this does not depend on their order.
    """
    yield
    from isolates.wasm.scratch import release_instances

    release_instances()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data directory holding the built runtimes (SANDBOXD_DATA_DIR or ./.sandboxd)."""
    path = Path(os.environ.get("SANDBOXD_DATA_DIR", REPO / ".sandboxd")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_data_dir(data_dir: Path, parent: Path) -> Path:
    """A data directory under `parent` sharing the built runtimes of `data_dir` (symlink), so
    a test can count scratch space, jails and files that belong to its own parts alone."""
    from isolates.wasm import ensure_runtimes

    ensure_runtimes(data_dir, progress=False)
    own = parent / "data"
    own.mkdir()
    (own / "wasm").symlink_to(data_dir / "wasm", target_is_directory=True)
    return own


class RunningServer:
    """A Server running on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.server = Server(settings)
        self.loop = loop_factory(settings.event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=120)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def metrics_text(self) -> str:
        """The server's Prometheus page, as a scraper reads it."""
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as page:
            text: str = page.read().decode()
        return text

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(timeout=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `condition()` holds within `timeout` seconds, polling it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def start_server(data_dir: Path, **overrides: object) -> RunningServer:
    """Start a server on free ports with `overrides` applied to the test settings."""
    values: dict[str, object] = {
        "port": 0, "metrics_port": 0, "git_port": 0, "data_dir": data_dir,
        "pool_wasm_python": 2, "pool_wasm_javascript": 2, "pool_jail": 1,
    }
    values.update(overrides)
    running = RunningServer(Settings(**values))  # type: ignore[arg-type]
    running.start()
    return running


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[RunningServer]:
    """One real server for the whole session, on a data directory of its own: the repos,
    facets and jails that tests make stay out of the one `make serve` uses.

    It lives in a world-traversable directory: jails bind facet directories from it, which
    needs every ancestor to be searchable (pytest's temporary directories are not).
    """
    parent = Path(tempfile.mkdtemp(prefix="sandboxd-session-"))
    parent.chmod(0o755)
    running = start_server(private_data_dir(data_dir, parent))
    try:
        yield running
    finally:
        running.stop()
        from isolates.wasm.scratch import release_instances

        release_instances()  # the scratch tmpfs inside, before the directory goes
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    """host:port of the session's server."""
    return server.target
