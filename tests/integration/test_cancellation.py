"""A cancelled call stops its isolate: the execution ends CANCELLED instead of running on."""

from __future__ import annotations

import re
import time

import grpc

from sandboxd.v1 import executor_pb2 as pb
from sandboxd.v1 import executor_pb2_grpc
from tests.conftest import RunningServer


def cancelled_count(server: RunningServer, runtime: str) -> float:
    text = server.metrics_text()
    pattern = (r'sandboxd_executions_total\{kind="(?:wasm|jail)",runtime="' + runtime
               + r'",status="cancelled"\} (\S+)')
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def _start_then_cancel(target: str, request: pb.ExecuteRequest) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        call = stub.ExecuteStream(request, timeout=60)
        for event in call:
            if event.HasField("output"):
                break  # the program is running: walk away
        call.cancel()


def _wait_for_cancelled(server: RunningServer, runtime: str, before: float) -> float:
    """The count once it moves (polling for up to 15 s), so a slow teardown is not a failure."""
    for _ in range(300):
        now = cancelled_count(server, runtime)
        if now > before:
            return now
        time.sleep(0.05)
    return cancelled_count(server, runtime)


def test_cancelled_stream_cancels_the_wasm_isolate(server: RunningServer) -> None:
    before = cancelled_count(server, "python")
    request = pb.ExecuteRequest(
        language=pb.LANGUAGE_PYTHON, isolate=pb.ISOLATE_KIND_WASM,
        code="import sys\nprint('started', flush=True)\nwhile True: pass",
        limits=pb.Limits(timeout_ms=60_000))
    _start_then_cancel(server.target, request)
    assert _wait_for_cancelled(server, "python", before) == before + 1


def test_cancelled_stream_cancels_the_jail(server: RunningServer) -> None:
    before = cancelled_count(server, "native")
    request = pb.ExecuteRequest(
        language=pb.LANGUAGE_SHELL, code="echo started; sleep 60",
        limits=pb.Limits(timeout_ms=60_000))
    _start_then_cancel(server.target, request)
    assert _wait_for_cancelled(server, "native", before) == before + 1
