"""pytest-benchmark benchmarks of wasm isolates: pool hit and cold starts, with the peer baseline.

Cold starts use `benchmark.pedantic` with a setup per round (ionelmc/pytest-benchmark
docs/pedantic.rst): the isolate a pool hit runs is created in setup, outside the timing.
Run with `pytest bench/test_bench_wasm.py --benchmark-enable`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.wasm_rows import REQUESTS, fetch_peer_python_wasm, peer_python_wasm_baseline
from isolates.base import Isolate
from isolates.wasm import JavaScriptFactory, PythonFactory, ensure_runtimes

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("SANDBOXD_DATA_DIR", REPO / ".sandboxd")).resolve()
    ensure_runtimes(path, progress=False)
    return path


@pytest.fixture(scope="module", params=["python", "javascript"])
def factory(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Any]:
    yield PythonFactory(data_dir) if request.param == "python" else JavaScriptFactory(data_dir)


def test_pool_hit(benchmark: Any, factory: PythonFactory | JavaScriptFactory) -> None:
    made: list[Isolate] = []
    request = REQUESTS[factory.runtime]

    def setup() -> tuple[tuple[Isolate], dict[str, Any]]:
        made.append(factory.create())
        return (made[-1],), {}

    result = benchmark.pedantic(lambda isolate: isolate.run(request), setup=setup, rounds=100)
    for isolate in made:
        isolate.destroy()
    assert result.stdout == b"1\n"


def test_fresh_isolate(benchmark: Any, factory: PythonFactory | JavaScriptFactory) -> None:
    made: list[Isolate] = []
    request = REQUESTS[factory.runtime]

    def create_and_run() -> Any:
        made.append(factory.create())
        return made[-1].run(request)

    result = benchmark.pedantic(create_and_run, rounds=50, warmup_rounds=2)
    for isolate in made:
        isolate.destroy()
    assert result.stdout == b"1\n"


def test_peer_cpython_wasi_baseline(benchmark: Any, data_dir: Path) -> None:
    assert fetch_peer_python_wasm(data_dir) is not None
    row = benchmark.pedantic(lambda: peer_python_wasm_baseline(data_dir, n=1), rounds=5)
    assert row["n"] == 1
