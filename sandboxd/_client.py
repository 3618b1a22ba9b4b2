r"""`Client` and `AsyncClient`: the SDK's entry points, mirroring each other.

Both build requests through `_build_request` (shared validation of the SDK's own arguments),
call the Executor service and turn the wire result into an `Execution`. With `on_stdout` or
`on_stderr` they use the streaming call and invoke the callbacks as output arrives.

    with Client("localhost:50051") as client:
        execution = client.run_code("print(6 * 7)")
        print(execution.stdout)            # "42\\n"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandboxd._errors import SandboxdError, from_rpc_error
from sandboxd._models import Execution
from sandboxd._request import FilesArg, build_request, call_deadline
from sandboxd._target import DEFAULT_TARGET
from sandboxd.v1 import executor_pb2 as pb
from sandboxd.v1 import executor_pb2_grpc

if TYPE_CHECKING:
    from sandboxd._artifacts import Artifacts, AsyncArtifacts
    from sandboxd._facets import AsyncFacets, Facets

__all__ = ["DEFAULT_TARGET", "AsyncClient", "Client"]

MAX_MESSAGE_BYTES = 128 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

OutputCallback = Callable[[str], Any]


def _decode_chunk(chunk: pb.OutputChunk) -> str:
    return chunk.data.decode("utf-8", "replace")


class Client:
    """A synchronous connection to a sandboxd server.

    Args:
        target: "host:port" of the server.
        credentials: TLS channel credentials; None for a plaintext channel.
    """

    def __init__(
        self, target: str = DEFAULT_TARGET, *, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self._channel = (
            grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
            if credentials else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._executor = executor_pb2_grpc.ExecutorStub(self._channel)
        self._artifacts: Artifacts | None = None
        self._facets: Facets | None = None

    def run_code(
        self,
        code: str = "",
        language: str = "python",
        *,
        timeout: float | None = None,
        files: FilesArg = None,
        file_modes: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        isolate: str = "auto",
        memory: int | None = None,
        cpu_time: float | None = None,
        output_limit: int | None = None,
        output_paths: Sequence[str] | None = None,
        argv: Sequence[str] | None = None,
        module: bytes | bytearray | None = None,
        facet: str | None = None,
        output_repo: str | None = None,
        output_branch: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Run code in a fresh isolate and return its `Execution`.

        Args:
            code: the program (python, javascript, shell).
            language: "python", "javascript", "shell", "wasi" or "command".
            timeout: wall-clock limit in seconds (server default when None).
            files: input files {relative path: content} placed in the working directory.
            file_modes: permission bits of some of them, e.g. {"run.sh": 0o755} for a script
                to run as a command (default 0o644).
            env: environment variables.
            stdin: standard input.
            isolate: "auto", "wasm" or "jail".
            memory: memory limit in bytes.
            cpu_time: CPU-time limit in seconds, every process of the execution counted (ends
                in "cpu_limit"). Enforced in jail isolates only: with isolate "auto", Python
                runs in a jail when it is set; wasm isolates refuse it.
            output_limit: bytes of stdout and of stderr kept (each).
            output_paths: relative paths of files to return.
            argv: argv for "wasi" modules and "command" (argv[0] is the program).
            module: the wasm module for language "wasi".
            facet: name of a facet database visible at /facet/db.sqlite.
            output_repo: commit the output files to this artifacts repo.
            output_branch: branch of `output_repo` (default "main").
            on_stdout: called with each chunk of stdout as it is produced.
            on_stderr: called with each chunk of stderr as it is produced.
            request_timeout: gRPC deadline of the call (default: timeout + 30 s).

        Raises:
            InvalidArgumentError: a field is invalid (`field_violations` names it).
            ResourceExhaustedError: the server is at capacity (`retry_after`).
            SandboxdError: any other failure to get a result.
        """
        request = build_request(
            code, language, timeout=timeout, files=files, file_modes=file_modes, env=env,
            stdin=stdin, isolate=isolate, memory=memory, cpu_time=cpu_time,
            output_limit=output_limit,
            output_paths=output_paths, argv=argv, module=module, facet=facet,
            output_repo=output_repo, output_branch=output_branch,
        )
        deadline = call_deadline(timeout, request_timeout)
        try:
            if on_stdout is None and on_stderr is None:
                response = self._executor.Execute(request, timeout=deadline)
                return Execution.from_proto(response.result)
            for event in self._executor.ExecuteStream(request, timeout=deadline):
                if event.HasField("output"):
                    callback = (on_stdout if event.output.stream == pb.OutputChunk.STREAM_STDOUT
                                else on_stderr)
                    if callback is not None:
                        callback(_decode_chunk(event.output))
                elif event.HasField("result"):
                    return Execution.from_proto(event.result)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        raise SandboxdError("the stream ended without a result")

    def health(self, service: str = "") -> str:
        """The server's health status name, e.g. "SERVING"."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    @property
    def artifacts(self) -> Artifacts:
        """The artifact store: git repos for the code agents write."""
        if self._artifacts is None:
            from sandboxd._artifacts import Artifacts

            self._artifacts = Artifacts(self._channel)
        return self._artifacts

    @property
    def facets(self) -> Facets:
        """Facets: private SQLite databases, queryable from here."""
        if self._facets is None:
            from sandboxd._facets import Facets

            self._facets = Facets(self._channel)
        return self._facets

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio connection to a sandboxd server; mirrors `Client` with awaitables."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
            if credentials else grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._executor = executor_pb2_grpc.ExecutorStub(self._channel)
        self._artifacts: AsyncArtifacts | None = None
        self._facets: AsyncFacets | None = None

    async def run_code(
        self,
        code: str = "",
        language: str = "python",
        *,
        timeout: float | None = None,
        files: FilesArg = None,
        file_modes: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        isolate: str = "auto",
        memory: int | None = None,
        cpu_time: float | None = None,
        output_limit: int | None = None,
        output_paths: Sequence[str] | None = None,
        argv: Sequence[str] | None = None,
        module: bytes | bytearray | None = None,
        facet: str | None = None,
        output_repo: str | None = None,
        output_branch: str | None = None,
        on_stdout: Callable[[str], Any | Awaitable[Any]] | None = None,
        on_stderr: Callable[[str], Any | Awaitable[Any]] | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Run code in a fresh isolate; see `Client.run_code`. Callbacks may be coroutines."""
        request = build_request(
            code, language, timeout=timeout, files=files, file_modes=file_modes, env=env,
            stdin=stdin, isolate=isolate, memory=memory, cpu_time=cpu_time,
            output_limit=output_limit,
            output_paths=output_paths, argv=argv, module=module, facet=facet,
            output_repo=output_repo, output_branch=output_branch,
        )
        deadline = call_deadline(timeout, request_timeout)
        try:
            if on_stdout is None and on_stderr is None:
                response = await self._executor.Execute(request, timeout=deadline)
                return Execution.from_proto(response.result)
            async for event in self._executor.ExecuteStream(request, timeout=deadline):
                if event.HasField("output"):
                    callback = (on_stdout if event.output.stream == pb.OutputChunk.STREAM_STDOUT
                                else on_stderr)
                    if callback is not None:
                        returned = callback(_decode_chunk(event.output))
                        if isinstance(returned, Awaitable):
                            await returned
                elif event.HasField("result"):
                    return Execution.from_proto(event.result)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        raise SandboxdError("the stream ended without a result")

    async def health(self, service: str = "") -> str:
        """The server's health status name, e.g. "SERVING"."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    @property
    def artifacts(self) -> AsyncArtifacts:
        """The artifact store (async)."""
        if self._artifacts is None:
            from sandboxd._artifacts import AsyncArtifacts

            self._artifacts = AsyncArtifacts(self._channel)
        return self._artifacts

    @property
    def facets(self) -> AsyncFacets:
        """Facets (async)."""
        if self._facets is None:
            from sandboxd._facets import AsyncFacets

            self._facets = AsyncFacets(self._channel)
        return self._facets

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
