"""End-to-end rows: a real `sandboxd serve` process driven over gRPC from this process.

The server runs as its own process so its CPU and memory are measured apart from the client's:
start-up to SERVING, the round trip of a Health check (the floor under every Execute, back to
back and paced like the warm jail row), Execute of `print(1)` at concurrency 1, 8 and 64 and
in short bursts after a quiet spell, JavaScript and jail executions, and the server's resident
memory before and after many executions. Warm jails called in bursts get a server of their own,
with a pool deep enough for a burst.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import Row, cpu_seconds, summarize, unavailable
from sandboxd import AsyncClient, Client, ResourceExhaustedError, SandboxdError

__all__ = ["JAIL_BURSTS", "JAIL_BURSTS_LABEL", "JAIL_WARM", "JAIL_WARM_LABEL", "WASM_C1",
           "WASM_C1_LABEL", "above_floor", "around_name", "python_subprocess_baseline", "rows",
           "served"]

GROUP = "grpc"

BURST_POOL_JAIL = 8
"""Warm jails of the server behind the jail burst row: each call of a burst of 4 finds one, and
no refill starts before the burst's last call has handed its jail back (above half its target,
a pool's refill waits for the callers to pause: isolates/pool.py)."""

# The rows harness.RATIOS compares with the `python3 -c` baseline measured around them, and the
# labels naming that baseline (`around_name`): named once, for the rows and the ratios.
WASM_C1, WASM_C1_LABEL = "Execute print(1) wasm python, c=1", "gRPC wasm python c=1"
JAIL_WARM, JAIL_WARM_LABEL = "Execute print(1) jail python (warm), c=1", "gRPC jail python c=1"
JAIL_BURSTS = (f"Execute print(1) jail python (warm), calls 2-4 of bursts of 4 after 0.3 s quiet, "
               f"pool of {BURST_POOL_JAIL}, c=1")
JAIL_BURSTS_LABEL = "gRPC jail python bursts c=1"


@contextmanager
def served(data_dir: Path, *extra: str) -> Iterator[tuple[str, int, float]]:
    """Run `sandboxd serve` on a free port; yields (target, pid, seconds to SERVING)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--port", "0", "--metrics-port", "-1",
         "--git-port", "-1", "--data-dir", str(data_dir), "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"serving on (\S+):(\d+)", line)
        if not match:
            raise RuntimeError(f"sandboxd serve did not start: {line!r}")
        target = f"127.0.0.1:{match.group(2)}"
        with Client(target) as client:
            while client.health() != "SERVING":
                time.sleep(0.005)
        ready = time.perf_counter() - started
        yield target, process.pid, ready
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Calls:
    """Latencies of Execute calls (seconds) and how many found a warm isolate in the pool."""

    seconds: list[float] = field(default_factory=list)
    hits: int = 0

    def measure(self, client: Client, code: str, language: str, isolate: str) -> None:
        """Time one call; a call that did not succeed fails the benchmark."""
        started = time.perf_counter()
        execution = client.run_code(code, language, isolate=isolate)
        elapsed = time.perf_counter() - started
        if not execution.ok:
            raise RuntimeError(f"benchmark execution failed: {execution.status} "
                               f"{execution.message} {execution.stderr}")
        self.seconds.append(elapsed)
        self.hits += execution.isolate.pool_hit

    def summarize(self, name: str) -> Row:
        """The row `name`, its note saying how many calls were pool hits: a row named warm
        whose calls missed the pool would measure something else."""
        return summarize(GROUP, name, self.seconds,
                         note=f"{self.hits} of {len(self.seconds)} from the warm pool")


def _sequential(target: str, n: int, code: str, language: str, isolate: str,
                pause_s: float = 0.0) -> Calls:
    """`n` calls one after another, with `pause_s` between them (untimed)."""
    calls = Calls()
    with Client(target) as client:
        for _ in range(5):
            client.run_code(code, language, isolate=isolate)
        for _ in range(n):
            time.sleep(pause_s)
            calls.measure(client, code, language, isolate)
    return calls


def _bursts(target: str, bursts: int, isolate: str, size: int = 4,
            quiet_s: float = 0.3) -> Calls:
    """Every call but the first in `bursts` bursts of `size` back-to-back calls of `print(1)`,
    each burst after `quiet_s` without calls: what an agent making a few calls in a row sees
    (the first call of each is a paced call, measured by its own row)."""
    calls, openers = Calls(), Calls()  # the openers are checked, not reported
    with Client(target) as client:
        for _ in range(bursts):
            time.sleep(quiet_s)
            openers.measure(client, "print(1)", "python", isolate)
            for _ in range(size - 1):
                calls.measure(client, "print(1)", "python", isolate)
    return calls


def _health_checks(target: str, n: int, pause_s: float = 0.0) -> list[float]:
    """Latencies of `n` Health checks: the gRPC round trip with no execution behind it."""
    samples = []
    with Client(target) as client:
        for _ in range(5):
            client.health()
        for _ in range(n):
            time.sleep(pause_s)
            started = time.perf_counter()
            client.health()
            samples.append(time.perf_counter() - started)
    return samples


async def _concurrent(target: str, total: int, concurrency: int) -> tuple[list[float], float,
                                                                          int, int]:
    """(latencies, wall seconds, errors, rejected) for `total` calls, `concurrency` at once."""
    samples: list[float] = []
    errors = rejected = 0
    remaining = total

    async def worker(client: AsyncClient) -> None:
        nonlocal remaining, errors, rejected
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                execution = await client.run_code("print(1)")
            except ResourceExhaustedError as exc:
                rejected += 1
                await asyncio.sleep(exc.retry_after)
                continue
            except SandboxdError:
                errors += 1
                continue
            samples.append(time.perf_counter() - started)
            if not execution.ok:
                errors += 1

    async with AsyncClient(target) as client:
        await client.run_code("print(1)")
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return samples, wall, errors, rejected


def rows(data_dir: Path, quick: bool = False, jail: bool = True) -> list[Row]:
    """Measure the end-to-end rows against a fresh server process."""
    n = 100 if quick else 500
    bursts = 12 if quick else 40
    out: list[Row] = []
    extra = () if jail else ("--no-jail",)
    with served(data_dir, *extra) as (target, pid, ready_s):
        out.append({"group": GROUP, "name": "server start to SERVING (process spawn)",
                    "n": 1, "seconds": ready_s})
        time.sleep(0.5)  # let the pool fill
        # The floor under every Execute row: the same client and server, no execution.
        out.append(summarize(GROUP, "gRPC floor: Health check, c=1",
                             _health_checks(target, n)))
        out.append(summarize(GROUP, "gRPC floor: Health check, paced 0.1 s, c=1",
                             _health_checks(target, max(20, n // 5), pause_s=0.1)))
        out += _around(WASM_C1, lambda: _sequential(target, n, "print(1)", "python", "wasm"),
                       [_python_around(WASM_C1_LABEL)], quick)
        out.append(_bursts(target, bursts, "wasm").summarize(
            "Execute print(1) wasm python, calls 2-4 of bursts of 4 after 0.3 s quiet, c=1"))
        out.append(_sequential(target, n // 2, "console.log(1)", "javascript", "wasm")
                   .summarize("Execute console.log(1) wasm javascript, c=1"))
        for concurrency in (8, 64):
            cpu_before = cpu_seconds(pid)
            samples, wall, errors, rejected = asyncio.run(
                _concurrent(target, n * 2, concurrency))
            # What bounds executions/s on this machine: the server's CPU per execution.
            server_cpu_ms = (cpu_seconds(pid) - cpu_before) / len(samples) * 1e3
            out.append(summarize(GROUP, f"Execute print(1) wasm python, c={concurrency}",
                                 samples, wall_s=wall, errors=errors, rejected=rejected,
                                 server_cpu_ms=server_cpu_ms,
                                 note=f"server CPU {server_cpu_ms:.1f} ms per execution"))
        if jail:
            out += _jail_rows(target, max(20, n // 5), quick)
        before = rss_mb(pid)
        executions = 2_000 if quick else 10_000
        asyncio.run(_concurrent(target, executions, 8))
        after = rss_mb(pid)
        out.append({"group": GROUP, "name": f"server RSS before/after {executions} executions",
                    "n": executions, "mb": after, "note": f"{before:.1f} MB -> {after:.1f} MB "
                    f"({after - before:+.1f} MB)"})
    if jail:
        out += _jail_burst_rows(data_dir, bursts, quick)
    return out


def _jail_rows(target: str, n: int, quick: bool) -> list[Row]:
    """Jail executions paced so each finds a warm jail, then back to back.

    A warm jail serves one execution and a refill takes tens of milliseconds, so calls back to
    back outrun the refills and mostly start cold jails; both figures are reported.
    """
    pause = 0.1
    back_to_back = "Execute print(1) jail python back to back (refill-bound), c=1"
    rows: list[Row] = []
    try:
        # The paced row is the one compared with `python3 -c` (harness.RATIOS), back to back
        # and paced as the row is, and with the paced gRPC floor measured around it: what the
        # jail and the server's path add to a call, apart from the VM's phase, which moves the
        # floor by a millisecond.
        measured, baseline, paced_baseline, floor = _around(
            JAIL_WARM,
            lambda: _sequential(target, n, "print(1)", "python", "jail", pause_s=pause),
            [_python_around(JAIL_WARM_LABEL), _python_around(JAIL_WARM_LABEL, pause),
             (GROUP, "gRPC floor: Health check, paced 0.1 s, around the jail row",
              lambda k: _health_checks(target, k, pause_s=pause))],
            quick)
        rows += [measured, baseline, paced_baseline, floor, above_floor(measured, floor)]
    except (SandboxdError, RuntimeError) as exc:
        rows.append(unavailable(GROUP, JAIL_WARM, exc))
    try:
        rows.append(_sequential(target, n, "print(1)", "python", "jail").summarize(back_to_back))
    except (SandboxdError, RuntimeError) as exc:
        rows.append(unavailable(GROUP, back_to_back, exc))
    return rows


def _jail_burst_rows(data_dir: Path, bursts: int, quick: bool) -> list[Row]:
    """Warm jails called back to back, next to `python3 -c` run back to back around them.

    The paced row's calls each start after an idle pause, which leaves caches cold and costs
    wake-ups; its `python3 -c` baselines are either back to back or paced the same way. Here
    both sides run back to back: calls 2-4 of short bursts, against a server of its own whose
    pool is deep enough for a burst (the default of 2 is not).
    """
    try:
        with served(data_dir, "--pool-jail", str(BURST_POOL_JAIL)) as (target, _, _):
            time.sleep(1.0)  # let the pools fill
            return _around(JAIL_BURSTS, lambda: _bursts(target, bursts, "jail"),
                           [_python_around(JAIL_BURSTS_LABEL)], quick)
    except (SandboxdError, RuntimeError) as exc:
        return [unavailable(GROUP, JAIL_BURSTS, exc)]


def above_floor(row: Row, floor: Row) -> Row:
    """How much longer `row`'s p50 is than the p50 of the gRPC `floor` measured around it."""
    added = row["p50_ms"] - floor["p50_ms"]
    return {"group": GROUP, "name": f"{row['name']}, above the gRPC floor", "n": row["n"],
            "added_ms": added,
            "note": f"+{added:.2f} ms (p50 {row['p50_ms']:.2f} - {floor['p50_ms']:.2f} ms)"}


Sampler = Callable[[int], list[float]]
"""Takes `k` samples of a measurement made around a row."""


def _around(name: str, measure: Callable[[], Calls],
            around: list[tuple[str, str, Sampler]], quick: bool) -> list[Row]:
    """The row `name` of `measure()`'s calls, then a row (group, name) for each of `around`.

    Each is sampled half before and half after the row, in nested order (the first outermost),
    so it sees the same stretch of time as the row it is compared with: the VM's speed drifts
    within a run (the `python3 -c` baseline measured at the start of one run took 13.8 ms, the
    same command a few minutes later 19.7 ms).
    """
    half = 10 if quick else 25  # samples before the row, as many after it
    before = [sample(half) for _, _, sample in around]
    calls = measure()
    after = [sample(half) for _, _, sample in reversed(around)][::-1]
    return [calls.summarize(name)] + [
        summarize(group, label, first + last)
        for (group, label, _), first, last in zip(around, before, after, strict=True)
    ]


def _python_around(label: str, pause_s: float = 0.0) -> tuple[str, str, Sampler]:
    """The `python3 -c` baseline measured around the row `label` names, which harness.RATIOS
    compares the row with; `pause_s` paces it as a paced row is (after an idle pause a
    subprocess's start, too, runs with cold caches: about 1 ms more than back to back on the
    development VM)."""
    return ("baseline", around_name(label, pause_s),
            lambda k: _python_subprocess_samples(k, pause_s))


def around_name(label: str, pause_s: float = 0.0) -> str:
    """The name of the baseline row measured around the row `label` names (paced: `pause_s`)."""
    paced = f", paced {pause_s:g} s" if pause_s else ""
    return f"python3 -c 'print(1)' subprocess{paced}, around {label}"


def python_subprocess_baseline(quick: bool = False) -> Row:
    """The baseline every isolate is compared with: `python3 -c 'print(1)'` per execution."""
    return summarize("baseline", "python3 -c 'print(1)' subprocess",
                     _python_subprocess_samples(20 if quick else 50))


def _python_subprocess_samples(n: int, pause_s: float = 0.0) -> list[float]:
    """Seconds each of `n` runs of `python3 -c 'print(1)'` took (after 2 untimed runs), with
    `pause_s` before each (untimed)."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    samples = []
    for _ in range(n + 2):
        time.sleep(pause_s)
        started = time.perf_counter()
        subprocess.run([python, "-c", "print(1)"], check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return samples[2:]
