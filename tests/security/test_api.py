"""Adversarial API input (security.md A1-A4) and overload (R8), against a real server.

Each test asserts the safe outcome: INVALID_ARGUMENT naming the field (or RESOURCE_EXHAUSTED
with RetryInfo under overload) and a server that keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sandboxd import AsyncClient, Client, InvalidArgumentError, ResourceExhaustedError
from sandboxd.v1 import executor_pb2 as pb
from tests.conftest import RunningServer, private_data_dir, start_server


def raw_execute(target: str, data: bytes) -> grpc.RpcError:
    """Send raw bytes as an ExecuteRequest; return the error the server answers with."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/sandboxd.v1.Executor/Execute",
                                   request_serializer=lambda raw: raw,
                                   response_deserializer=pb.ExecuteResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(data, timeout=30)
    return info.value


def violated_fields(error: grpc.RpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields += [v.field for v in bad_request.field_violations]
    return fields


def assert_still_serving(target: str) -> None:
    with Client(target) as client:
        assert client.health() == "SERVING"
        assert client.run_code("print('alive')").stdout == "alive\n"


def test_A1_huge_code_nul_and_invalid_utf8_are_rejected(target: str) -> None:
    with Client(target) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.run_code("#" * (100 * 1024 * 1024))
        assert [v.field for v in info.value.field_violations] == ["code"]
        assert "the limit is" in info.value.field_violations[0].description
        with pytest.raises(InvalidArgumentError) as info:
            client.run_code("print(1)\x00")
        assert info.value.field_violations[0].field == "code"
    data = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print('QQ')").SerializeToString()
    error = raw_execute(target, data.replace(b"QQ", b"\xff\xfe"))
    assert violated_fields(error) == ["code"]
    assert_still_serving(target)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (pb.Limits(timeout_ms=2**64 - 1), "limits.timeout_ms"),  # -1 on the wire
        (pb.Limits(timeout_ms=2**63), "limits.timeout_ms"),
        (pb.Limits(memory_bytes=2**64 - 1), "limits.memory_bytes"),
        (pb.Limits(memory_bytes=2**50), "limits.memory_bytes"),
        (pb.Limits(output_bytes=2**63), "limits.output_bytes"),
    ],
)
def test_A2_absurd_limits_are_rejected_not_unlimited(target: str, limits: pb.Limits,
                                                     field: str) -> None:
    data = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)",
                             limits=limits).SerializeToString()
    assert violated_fields(raw_execute(target, data)) == [field]


def test_A2_zero_limits_mean_server_defaults_not_unlimited(target: str) -> None:
    with Client(target) as client:
        execution = client.run_code("while True: pass", timeout=None)
    # The default wall limit (10 s) stops it; zero never means "no limit".
    assert execution.status == "timeout"


def test_A3_unknown_enums_and_empty_request_are_rejected(target: str) -> None:
    assert "language" in violated_fields(raw_execute(target, b""))
    data = pb.ExecuteRequest(language=99, code="x", isolate=42).SerializeToString()
    assert sorted(violated_fields(raw_execute(target, data))) == ["isolate", "language"]
    data = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON).SerializeToString()
    assert violated_fields(raw_execute(target, data)) == ["code"]
    assert_still_serving(target)


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a\x00b", "", "a/../../b", "./x"])
def test_A4_bad_file_paths_are_rejected(target: str, path: str) -> None:
    with Client(target) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.run_code("print(1)", files={path: b"x"})
        assert [v.field for v in info.value.field_violations] == ["files[0].path"]
        with pytest.raises(InvalidArgumentError) as info:
            client.run_code("print(1)", output_paths=[path])
        assert [v.field for v in info.value.field_violations] == ["output_paths[0]"]


def test_A4_duplicate_paths_are_rejected(target: str) -> None:
    data = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)",
                             files=[pb.File(path="same"), pb.File(path="same")],
                             output_paths=["o", "o"]).SerializeToString()
    assert sorted(violated_fields(raw_execute(target, data))) == ["files[1].path",
                                                                  "output_paths[1]"]
    assert_still_serving(target)


@pytest.fixture(scope="module")
def small_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory of its own (sharing the built runtimes), so its scratch space counts
    only this server's isolates."""
    return private_data_dir(data_dir, tmp_path_factory.mktemp("small-server"))


@pytest.fixture(scope="module")
def small_server(small_dir: Path) -> Iterator[RunningServer]:
    running = start_server(small_dir, max_concurrency=2, max_queue=16, pool_jail=0,
                           enable_jail=False)
    yield running
    running.stop()


async def assert_storm_answered(target: str, code: Callable[[int], str], **options: Any) -> None:
    """Send 1,000 concurrent Execute calls of `code(i)` (which prints i) to a server with two
    slots and a queue of 16: each gets its own output or RESOURCE_EXHAUSTED with RetryInfo."""
    ok = exhausted = 0
    async with AsyncClient(target) as client:
        async def one(i: int) -> None:
            nonlocal ok, exhausted
            try:
                execution = await client.run_code(code(i), **options)
            except ResourceExhaustedError as error:
                assert error.retry_after > 0
                exhausted += 1
            else:
                assert execution.stdout == f"{i}\n", execution
                ok += 1

        await asyncio.gather(*(one(i) for i in range(1000)))
    assert ok + exhausted == 1000
    assert ok >= 18  # at least the slots plus the queue were served
    assert exhausted > 0  # the bounded queue pushed back instead of growing


def _scratch_entries(data_dir: Path) -> int:
    """Scratch directories of isolates, across the instance directories of this data dir."""
    scratch = data_dir / "scratch"
    return sum(1 for entry in scratch.glob("*/*") if entry.is_dir())


async def test_R8_thousand_concurrent_calls_all_answered(small_server: RunningServer,
                                                         small_dir: Path) -> None:
    pool = small_server.server.pool
    assert pool is not None
    assert await asyncio.to_thread(pool.wait_warm, 30)
    baseline_scratch = _scratch_entries(small_dir)
    await assert_storm_answered(small_server.target, lambda i: f"print({i})")
    await asyncio.to_thread(pool.wait_discarded)
    assert await asyncio.to_thread(pool.wait_warm, 30)
    assert pool.sizes() == pool.targets()
    # Every used isolate is gone: only the warm ones hold scratch directories.
    assert _scratch_entries(small_dir) == baseline_scratch
    assert_still_serving(small_server.target)


# A guest's way around the sliced waits of the Python isolate: a fresh copy of the built-in
# `time` module, whose sleep is wasmtime's own host call, which no wall-time limit interrupts.
BLOCK_IN_A_HOST_CALL = """
import importlib.machinery, _imp
spec = importlib.machinery.ModuleSpec("time", importlib.machinery.BuiltinImporter)
_imp.create_builtin(spec).sleep(30)
"""


def test_R1_a_guest_blocked_in_a_host_call_does_not_hold_the_server(small_dir: Path) -> None:
    running = start_server(small_dir, max_concurrency=1, pool_jail=0, enable_jail=False)
    metrics = running.server.metrics.registry
    try:
        with Client(running.target) as client:
            blocked = client.run_code(BLOCK_IN_A_HOST_CALL, timeout=0.5)
            assert blocked.status == "timeout"
            assert "blocked in a system call" in blocked.message
            assert metrics.get_sample_value("sandboxd_executions_abandoned") == 1
            # The one execution slot is free again while the guest still sleeps.
            assert client.run_code("print('next')").stdout == "next\n"
            assert metrics.get_sample_value("sandboxd_executions_abandoned") == 1
    finally:
        running.stop()
    # Stopping did not wait for the abandoned thread either: its guest is still asleep.
    assert metrics.get_sample_value("sandboxd_executions_abandoned") == 1
