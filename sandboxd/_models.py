"""Result models of the SDK: what `run_code` returns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sandboxd.v1 import executor_pb2 as pb

__all__ = ["Execution", "IsolateInfo", "OutputFile", "Timings"]

_STATUS_NAMES = {
    pb.STATUS_OK: "ok",
    pb.STATUS_ERROR: "error",
    pb.STATUS_TIMEOUT: "timeout",
    pb.STATUS_MEMORY_LIMIT: "memory_limit",
    pb.STATUS_OUTPUT_LIMIT: "output_limit",
    pb.STATUS_CPU_LIMIT: "cpu_limit",
    pb.STATUS_SECURITY_VIOLATION: "security_violation",
    pb.STATUS_CANCELLED: "cancelled",
    pb.STATUS_INTERNAL_ERROR: "internal_error",
}
_KIND_NAMES = {pb.ISOLATE_KIND_WASM: "wasm", pb.ISOLATE_KIND_JAIL: "jail"}


class Timings(BaseModel):
    """Where the time went, in microseconds."""

    model_config = ConfigDict(frozen=True)

    queued_us: int
    acquire_us: int
    run_us: int
    total_us: int


class IsolateInfo(BaseModel):
    """Which isolate ran the code."""

    model_config = ConfigDict(frozen=True)

    kind: str
    """"wasm" or "jail"."""
    runtime: str
    pool_hit: bool


class OutputFile(BaseModel):
    """A file returned from the isolate's working directory."""

    model_config = ConfigDict(frozen=True)

    path: str
    content: bytes
    truncated: bool
    size: int
    error: str
    """Why the file is missing (not created, a symlink, a directory...); empty when returned."""
    executable: bool = False
    """An execute bit is set (JAIL isolates; WASM files have no permission bits)."""


class Execution(BaseModel):
    """The result of running code. A failing program is an Execution, not an exception.

    `status` is one of "ok", "error", "timeout", "memory_limit", "output_limit", "cpu_limit",
    "security_violation", "cancelled", "internal_error"; `message` explains any other than ok.
    """

    model_config = ConfigDict(frozen=True)

    execution_id: str
    status: str
    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_total_bytes: int
    stderr_total_bytes: int
    files: list[OutputFile]
    timings: Timings
    isolate: IsolateInfo
    message: str
    output_commit: str
    """The artifacts commit holding the output files, when an output repo was given."""

    @property
    def ok(self) -> bool:
        """Whether the program ran to a successful end."""
        return self.status == "ok"

    def file(self, path: str) -> bytes:
        """The content of output file `path`; KeyError when it was not returned."""
        for output in self.files:
            if output.path == path and not output.error:
                return output.content
        raise KeyError(path)

    @classmethod
    def from_proto(cls, result: pb.ExecuteResult) -> Execution:
        """Build an Execution from the wire result.

        Built without validation: every field comes typed from the message (validating the
        values again took 0.02 ms of a call after an idle pause).
        """
        return cls.model_construct(
            execution_id=result.execution_id,
            status=_STATUS_NAMES.get(result.status, "unknown"),
            exit_code=result.exit_code,
            stdout=result.stdout.decode("utf-8", "replace"),
            stderr=result.stderr.decode("utf-8", "replace"),
            stdout_bytes=result.stdout,
            stderr_bytes=result.stderr,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            stdout_total_bytes=result.stdout_total_bytes,
            stderr_total_bytes=result.stderr_total_bytes,
            files=[
                OutputFile.model_construct(path=f.path, content=f.content,
                                           truncated=f.truncated, size=f.size, error=f.error,
                                           executable=f.executable)
                for f in result.files
            ],
            timings=Timings.model_construct(
                queued_us=result.timings.queued_us,
                acquire_us=result.timings.acquire_us,
                run_us=result.timings.run_us,
                total_us=result.timings.total_us,
            ),
            isolate=IsolateInfo.model_construct(
                kind=_KIND_NAMES.get(result.isolate.kind, "unknown"),
                runtime=result.isolate.runtime,
                pool_hit=result.isolate.pool_hit,
            ),
            message=result.message,
            output_commit=result.output_commit,
        )
