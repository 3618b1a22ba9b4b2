"""JAIL rows of `sandboxd bench`, measured in-process against real nsjail.

Rows: warm hit (a jail created beforehand, time `run` of print(1)), cold spawn (create + run +
destroy, no pool), refill rate (jails created per second by 2 threads), memory per warm jail
(PSS of nsjail, the driver and its pre-forked child; and the jail cgroup's charge), and, in the
same run, the baselines they are compared with: a plain `python3 -c 'print(1)'` subprocess and
the same under bubblewrap (`bwrap --unshare-all ...`).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.stats import Row, summarize
from isolates.base import ExecutionRequest, Language
from isolates.jail import JailFactory, JailIsolate

__all__ = [
    "bwrap_baseline",
    "cold_spawn",
    "memory_per_warm_jail",
    "python_baseline",
    "refill_rate",
    "rows",
    "warm_hit",
]

GROUP = "jail"
PRINT_1 = ExecutionRequest(execution_id="bench", language=Language.PYTHON, code="print(1)")
PYTHON_BASELINE = "python3 -c 'print(1)' subprocess (jail baseline)"
BWRAP_ARGS = [
    "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
    "--tmpfs", "/tmp", "/usr/bin/python3", "-c", "print(1)",
]


def _run_print(isolate: JailIsolate) -> None:
    result = isolate.run(PRINT_1)
    if result.stdout != b"1\n":
        raise RuntimeError(f"jail answered {result!r}")


def warm_hit(factory: JailFactory, n: int = 100) -> Row:
    """`run` of print(1) in jails created beforehand (the pool's hit path)."""
    samples: list[float] = []
    for _ in range(n):
        isolate = factory.create()
        started = time.perf_counter()
        _run_print(isolate)
        samples.append(time.perf_counter() - started)
        isolate.destroy()
    return summarize(GROUP, "jail warm hit: run print(1)", samples, baseline=PYTHON_BASELINE)


def cold_spawn(factory: JailFactory, n: int = 30) -> Row:
    """create + run print(1) with no pool (destroy is not timed: it is off the path)."""
    samples: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        isolate = factory.create()
        _run_print(isolate)
        samples.append(time.perf_counter() - started)
        isolate.destroy()
    return summarize(GROUP, "jail cold spawn: create + run print(1)", samples,
                     baseline=PYTHON_BASELINE)


def refill_rate(factory: JailFactory, n: int = 40, threads: int = 2) -> Row:
    """Jails created per second by `threads` refill threads (each create timed as a sample)."""
    samples: list[float] = []
    made: list[JailIsolate] = []
    lock = threading.Lock()
    per_thread = n // threads

    def refill() -> None:
        for _ in range(per_thread):
            started = time.perf_counter()
            isolate = factory.create()
            elapsed = time.perf_counter() - started
            with lock:
                samples.append(elapsed)
                made.append(isolate)

    workers = [threading.Thread(target=refill) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    for isolate in made:
        isolate.destroy()
    return summarize(GROUP, f"jail refill: create, {threads} threads", samples, wall_s=wall,
                     threads=threads)


def _descendants(pid: int) -> list[int]:
    pids = [pid]
    for parent in pids:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return pids


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_per_warm_jail(factory: JailFactory, n: int = 10) -> Row:
    """Memory of a warm jail: PSS of its processes (shared pages split among the n jails held
    at once) and the bytes charged to its memory cgroup."""
    isolates = [factory.create() for _ in range(n)]
    try:
        pss = [sum(_pss_bytes(p) for p in _descendants(i.pid)) / 1e6 for i in isolates]
        charged = [i.memory_usage() / 1e6 for i in isolates]
    finally:
        for isolate in isolates:
            isolate.destroy()
    return {
        "group": GROUP,
        "name": "jail memory per warm jail (PSS of nsjail + driver + child)",
        "n": n,
        "mb": statistics.median(pss),
        "cgroup_mb": statistics.median(charged),
    }


def _time_command(argv: list[str], n: int) -> list[float]:
    samples: list[float] = []
    for i in range(n + 2):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        if i >= 2:
            samples.append(time.perf_counter() - started)
    return samples


def python_baseline(n: int = 50) -> Row:
    """`python3 -c 'print(1)'` as a subprocess, in the same run as the jail rows."""
    return summarize("baseline", PYTHON_BASELINE, _time_command(["/usr/bin/python3", "-c",
                                                                  "print(1)"], n))


def bwrap_baseline(n: int = 50) -> Row:
    """The same under bubblewrap with every namespace unshared (Debian package bubblewrap)."""
    if shutil.which("bwrap") is None:
        return {"group": "baseline", "name": "bwrap python3 -c 'print(1)'", "n": 0, "errors": 1,
                "note": "bwrap not installed (apt-get install bubblewrap)"}
    return summarize("baseline", "bwrap --unshare-all python3 -c 'print(1)'",
                     _time_command(BWRAP_ARGS, n), baseline=PYTHON_BASELINE)


def rows(data_dir: Path, quick: bool = False) -> list[Row]:
    """Every jail row and its baselines, measured in one run."""
    scale = 0.3 if quick else 1.0
    with tempfile.TemporaryDirectory(dir=data_dir) if data_dir.is_dir() else \
            tempfile.TemporaryDirectory() as scratch:
        factory = JailFactory(Path(scratch))
        try:
            result = [
                python_baseline(int(50 * scale)),
                bwrap_baseline(int(50 * scale)),
                warm_hit(factory, int(100 * scale)),
                cold_spawn(factory, int(30 * scale)),
                refill_rate(factory, max(4, int(40 * scale))),
                memory_per_warm_jail(factory),
            ]
        finally:
            factory.close()
    return result


if __name__ == "__main__":
    for row in rows(Path(".sandboxd"), quick=False):
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
