"""One execution from validated request to result: place, acquire, run, destroy, time.

Runs on a worker thread (everything here blocks). The servicer owns admission, deadlines and
the wire format; this module owns the order of the steps and the guarantee that every isolate
is destroyed after its single use, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from executor.validation import ValidatedExecute
from isolates.base import (
    CancelToken,
    ExecutionResult,
    InvalidRequest,
    Isolate,
    IsolateKind,
    OutputFile,
    OutputSink,
    Status,
    Timings,
    wall_time_message,
)
from isolates.pool import WarmPool
from scheduler.placement import choose_runtime

__all__ = ["ExecutionOutcome", "ExecutionRunner", "FacetGrants", "OutputCommitter"]


class FacetGrants(Protocol):
    """Exclusive access to a facet's directory for one execution at a time."""

    def grant(self, name: str, timeout: float) -> AbstractContextManager[Path]:
        """Hold the facet named `name` (created if new) and yield its directory.

        Raises TimeoutError when the facet stays busy past `timeout` seconds.
        """


class OutputCommitter(Protocol):
    """Commits an execution's output files to an artifacts repo."""

    def check_repo(self, repo: str, branch: str) -> None:
        """Raise InvalidRequest when the outputs could not be committed there."""

    def commit_outputs(
        self, repo: str, branch: str, files: list[OutputFile], message: str
    ) -> str:
        """Commit `files` (complete, readable) on `branch` of `repo`; return the commit id."""


@dataclass
class ExecutionOutcome:
    """A result plus where and how it ran."""

    result: ExecutionResult
    kind: IsolateKind
    runtime: str
    pool_hit: bool
    timings: Timings
    output_commit: str = ""


class ExecutionRunner:
    """Runs validated requests on isolates from the warm pool."""

    def __init__(
        self,
        pool: WarmPool,
        *,
        jail_available: bool,
        facets: FacetGrants | None = None,
        committer: OutputCommitter | None = None,
    ) -> None:
        self._pool = pool
        self._jail_available = jail_available
        self._facets = facets
        self._committer = committer

    def place(self, validated: ValidatedExecute) -> tuple[IsolateKind, str]:
        """Pick the isolate kind and runtime (raises PlacementError)."""
        return choose_runtime(
            validated.request.language,
            validated.requested_kind,
            jail_available=self._jail_available,
            cpu_limit=validated.request.limits.cpu_s is not None,
        )

    def run(
        self,
        validated: ValidatedExecute,
        *,
        arrival: float,
        queued_us: int,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ExecutionOutcome:
        """Run one request to completion (blocking). `arrival` is a perf_counter() value."""
        request = validated.request
        kind, runtime = self.place(validated)
        key = f"{kind.value}/{runtime}"
        if validated.output_repo:
            if self._committer is None:
                raise InvalidRequest("output_repo", "artifacts are not enabled on this server")
            self._committer.check_repo(validated.output_repo, validated.output_branch)
        self._pool.factory(key).check(request)
        with self._facet(request.facet, request.limits.timeout_s) as facet_dir:
            if isinstance(facet_dir, ExecutionResult):
                return self._finish(validated, facet_dir, kind, runtime, False,
                                    Timings(queued_us=queued_us), arrival)
            acquire_start = time.perf_counter()
            isolate, hit = self._pool.acquire(key, facet_dir=facet_dir)
            acquire_us = _us(time.perf_counter() - acquire_start)
            try:
                if cancel is not None and cancel.cancelled:
                    result = ExecutionResult(status=Status.CANCELLED,
                                             message="the call was cancelled before it ran")
                else:
                    result = isolate.run(request, on_output=on_output, cancel=cancel)
            finally:
                self._discard(isolate, facet_dir is not None)
        timings = Timings(queued_us=queued_us, acquire_us=acquire_us, run_us=result.run_us)
        return self._finish(validated, result, kind, runtime, hit, timings, arrival)

    async def run_on_loop(
        self,
        validated: ValidatedExecute,
        *,
        arrival: float,
        queued_us: int,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ExecutionOutcome | None:
        """Run a pool hit on the event loop when nothing on its path blocks; else None.

        That is a warm isolate of a runtime whose runs wait on pipes (`runs_on_loop`: jails),
        for a request without a facet grant or output commit (file and lock work). The caller
        runs anything else, a pool miss included, with `run()` on a worker thread.
        """
        request = validated.request
        if request.facet or validated.output_repo:
            return None
        kind, runtime = self.place(validated)
        key = f"{kind.value}/{runtime}"
        factory = self._pool.factory(key)
        if not factory.runs_on_loop:
            return None
        factory.check(request)
        acquire_start = time.perf_counter()
        hit = self._pool.take_warm(key)
        if hit is None:
            return None
        isolate, spare_cpu = hit
        acquire_us = _us(time.perf_counter() - acquire_start)
        # Nothing awaited since the call took its slot, so it cannot have been cancelled yet
        # (a worker's run checks, since it may start late).
        try:
            result = await isolate.run_on_loop(request, on_output=on_output, cancel=cancel,
                                               spare_cpu=spare_cpu)
        finally:
            if not self._pool.try_discard(isolate):
                # The teardown queue is full: destroying waits for the isolate's processes.
                await asyncio.to_thread(self._pool.discard, isolate)
        timings = Timings(queued_us=queued_us, acquire_us=acquire_us, run_us=result.run_us)
        return self._finish(validated, result, kind, runtime, True, timings, arrival)

    def abandoned(
        self, validated: ValidatedExecute, *, arrival: float, queued_us: int
    ) -> ExecutionOutcome:
        """The TIMEOUT outcome of an execution left blocked in a host call past its limit.

        Its isolate is destroyed by the worker thread left behind, whenever that call returns.
        """
        return self._ended_early(
            validated, Status.TIMEOUT, 124,
            f"{wall_time_message(validated.request.limits.timeout_s)}; the program was blocked "
            "in a system call the limit cannot interrupt, and its isolate was left to end on "
            "its own",
            hit=False, arrival=arrival, queued_us=queued_us,
        )

    def cancelled_on_loop(
        self, validated: ValidatedExecute, *, arrival: float, queued_us: int
    ) -> ExecutionOutcome:
        """The CANCELLED outcome of a `run_on_loop` execution whose call went away.

        The isolate was stopped and discarded as the cancellation reached it.
        """
        return self._ended_early(
            validated, Status.CANCELLED, -1, "the call was cancelled while the code ran",
            hit=True, arrival=arrival, queued_us=queued_us,
        )

    def _ended_early(
        self,
        validated: ValidatedExecute,
        status: Status,
        exit_code: int,
        message: str,
        *,
        hit: bool,
        arrival: float,
        queued_us: int,
    ) -> ExecutionOutcome:
        kind, runtime = self.place(validated)
        run_us = _us(time.perf_counter() - arrival) - queued_us
        result = ExecutionResult(status=status, exit_code=exit_code, message=message,
                                 run_us=run_us)
        timings = Timings(queued_us=queued_us, run_us=run_us)
        return self._finish(validated, result, kind, runtime, hit, timings, arrival)

    def _discard(self, isolate: Isolate, holds_facet: bool) -> None:
        # An isolate that mounts a facet is destroyed before the grant is released, so the
        # next holder never shares the database with a guest that may still be writing.
        if holds_facet:
            isolate.destroy()
        else:
            self._pool.discard(isolate)

    def _facet(
        self, name: str, timeout: float
    ) -> AbstractContextManager[Path | ExecutionResult | None]:
        if not name:
            return contextlib.nullcontext(None)
        if self._facets is None:
            return contextlib.nullcontext(
                ExecutionResult(status=Status.INTERNAL_ERROR,
                                message="facets are not enabled on this server")
            )
        return _granted(self._facets, name, timeout)

    def _finish(
        self,
        validated: ValidatedExecute,
        result: ExecutionResult,
        kind: IsolateKind,
        runtime: str,
        hit: bool,
        timings: Timings,
        arrival: float,
    ) -> ExecutionOutcome:
        commit = ""
        if validated.output_repo and self._committer is not None and result.status is Status.OK:
            result, commit = self._commit_outputs(validated, result, self._committer)
        timings.total_us = _us(time.perf_counter() - arrival)
        return ExecutionOutcome(result, kind, runtime, hit, timings, commit)


    @staticmethod
    def _commit_outputs(
        validated: ValidatedExecute, result: ExecutionResult, committer: OutputCommitter
    ) -> tuple[ExecutionResult, str]:
        """Commit the complete output files; a refusal is reported in the result's message."""
        files = [f for f in result.files if not f.error and not f.truncated]
        skipped = [f.path for f in result.files if f.error or f.truncated]
        try:
            commit = committer.commit_outputs(
                validated.output_repo,
                validated.output_branch,
                files,
                f"Output of execution {validated.request.execution_id}",
            )
        except ValueError as exc:
            return dataclasses.replace(
                result, message=f"output files were not committed: {exc}"), ""
        if skipped:
            note = "not committed (missing, not a regular file or truncated): " + ", ".join(
                skipped)
            result = dataclasses.replace(result, message=note)
        return result, commit


@contextlib.contextmanager
def _granted(
    facets: FacetGrants, name: str, timeout: float
) -> Iterator[Path | ExecutionResult]:
    try:
        grant = facets.grant(name, timeout)
        directory = grant.__enter__()
    except TimeoutError:
        yield ExecutionResult(
            status=Status.TIMEOUT,
            message=f"facet {name!r} stayed busy with other executions past the "
            f"{timeout:g}s timeout",
        )
        return
    try:
        yield directory
    finally:
        grant.__exit__(None, None, None)


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)

