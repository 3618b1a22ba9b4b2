"""Exceptions raised by the sandboxd SDK.

A failing user program is never an exception: it is an `Execution` with a status. Exceptions are
for requests sandboxd refused or could not serve. The tree:

    SandboxdError
    ├── InvalidArgumentError     a request field is invalid (see `.field_violations`)
    ├── NotFoundError            the named repo, facet or sandbox does not exist
    ├── AlreadyExistsError
    ├── ConflictError            e.g. a branch moved during a commit; retry
    ├── PermissionDeniedError    e.g. SQL denied by a facet's authorizer
    ├── ResourceExhaustedError   the server is overloaded (see `.retry_after`)
    ├── DeadlineExceededError    the call's deadline passed before an answer
    ├── UnavailableError         the server cannot be reached or is shutting down
    └── InternalError            a fault of sandboxd itself
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "DeadlineExceededError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SandboxdError",
    "UnavailableError",
    "from_rpc_error",
]


class FieldViolation:
    """One invalid field of a request, as reported in `google.rpc.BadRequest`."""

    def __init__(self, field: str, description: str) -> None:
        self.field = field
        self.description = description

    def __repr__(self) -> str:
        return f"FieldViolation(field={self.field!r}, description={self.description!r})"


class SandboxdError(Exception):
    """The root of every exception the SDK raises.

    Attributes:
        code: the gRPC status code, when the error came from the server.
        message: the server's explanation.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgumentError(SandboxdError):
    """A request field is invalid; `field_violations` names each field and the rule broken."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.field_violations = field_violations or []


class NotFoundError(SandboxdError):
    """The named object does not exist."""


class AlreadyExistsError(SandboxdError):
    """An object of that name already exists."""


class ConflictError(SandboxdError):
    """A concurrent change won (e.g. a branch moved during a commit); retry."""


class PermissionDeniedError(SandboxdError):
    """The operation is not allowed (missing token, denied SQL...)."""


class ResourceExhaustedError(SandboxdError):
    """The server is at capacity; retry after `retry_after` seconds."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class DeadlineExceededError(SandboxdError):
    """The call's deadline passed before the server answered."""


class UnavailableError(SandboxdError):
    """The server cannot be reached or is shutting down."""


class InternalError(SandboxdError):
    """A fault of sandboxd itself, not of the request or the user's code."""


_BY_CODE: dict[grpc.StatusCode, type[SandboxdError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(error: grpc.RpcError) -> SandboxdError:
    """Translate a gRPC error (sync or aio) into the matching `SandboxdError` subclass."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    status = _rich_status(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT or code == grpc.StatusCode.FAILED_PRECONDITION:
        violations: list[FieldViolation] = []
        for detail in status.details if status else []:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
        return InvalidArgumentError(message, code=code, field_violations=violations)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = 0.0
        for detail in status.details if status else []:
            retry_info = error_details_pb2.RetryInfo()
            if detail.Unpack(retry_info):
                retry_after = retry_info.retry_delay.ToTimedelta().total_seconds()
        return ResourceExhaustedError(message, code=code, retry_after=retry_after)
    return _BY_CODE.get(code, SandboxdError)(message, code=code)


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` carried in the trailing metadata, if any."""
    try:
        return rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return None
