"""Rich gRPC errors (google.rpc.Status with BadRequest, RetryInfo) for every servicer."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["abort_invalid", "abort_overloaded", "abort_status"]


async def abort_invalid(
    context: grpc.aio.ServicerContext, violations: list[tuple[str, str]]
) -> NoReturn:
    """Abort with INVALID_ARGUMENT and a BadRequest naming each field."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    message = "invalid request: " + "; ".join(f"{f} {d}" for f, d in violations)
    await abort_status(context, code_pb2.INVALID_ARGUMENT, message, bad_request)


async def abort_overloaded(
    context: grpc.aio.ServicerContext, message: str, retry_after: float
) -> NoReturn:
    """Abort with RESOURCE_EXHAUSTED and a RetryInfo saying when to try again."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after * 1e9))
    retry = error_details_pb2.RetryInfo(retry_delay=delay)
    await abort_status(context, code_pb2.RESOURCE_EXHAUSTED, message, retry)


async def abort_status(
    context: grpc.aio.ServicerContext, code: int, message: str, *details: object
) -> NoReturn:
    """Abort the call with a google.rpc.Status carrying `details` (protobuf messages)."""
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")
