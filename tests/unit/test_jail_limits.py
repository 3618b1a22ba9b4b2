"""Each limit of a JAIL isolate ends in its own status with a clear message (real nsjail)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    InvalidRequest,
    Language,
    Limits,
    Status,
)
from isolates.jail import JailFactory, JailSettings

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JailFactory]:
    jail_factory = JailFactory(tmp_path_factory.mktemp("data"),
                               JailSettings(kill_grace_s=1.0, result_grace_s=2.0))
    yield jail_factory
    jail_factory.close()


def run(factory: JailFactory, language: Language, code: str, **limits: float) -> ExecutionResult:
    isolate = factory.create()
    try:
        return isolate.run(ExecutionRequest(execution_id="t", language=language, code=code,
                                            limits=Limits(**limits)))  # type: ignore[arg-type]
    finally:
        isolate.destroy()


def test_wall_timeout(factory: JailFactory) -> None:
    result = run(factory, Language.PYTHON, "import time; print('start', flush=True); "
                 "time.sleep(60)", timeout_s=0.5)
    assert result.status is Status.TIMEOUT
    assert "wall-time limit of 0.5 s reached" in result.message
    assert result.stdout == b"start\n"


def test_wall_timeout_kills_background_children(factory: JailFactory) -> None:
    result = run(factory, Language.SHELL, "sleep 100 & sleep 100 & wait", timeout_s=0.5)
    assert result.status is Status.TIMEOUT


def test_cpu_limit(factory: JailFactory) -> None:
    result = run(factory, Language.PYTHON, "while True: pass", cpu_s=0.5, timeout_s=20)
    assert result.status is Status.CPU_LIMIT, result
    assert "CPU-time limit of 0.5 s reached" in result.message


def test_cpu_limit_counts_all_processes(factory: JailFactory) -> None:
    code = "for i in 1 2 3 4; do (while :; do :; done) & done; wait"
    result = run(factory, Language.SHELL, code, cpu_s=1, timeout_s=20)
    assert result.status is Status.CPU_LIMIT, result


def test_memory_limit(factory: JailFactory) -> None:
    code = "x = bytearray(200 * 1024 * 1024); print('allocated')"
    result = run(factory, Language.PYTHON, code, memory_bytes=64 * MIB)
    assert result.status is Status.MEMORY_LIMIT, result
    assert f"memory limit of {64 * MIB} bytes" in result.message
    assert b"allocated" not in result.stdout


def test_memory_within_limit_is_ok(factory: JailFactory) -> None:
    code = "x = bytearray(100 * 1024 * 1024); print(len(x))"
    result = run(factory, Language.PYTHON, code, memory_bytes=256 * MIB)
    assert (result.status, result.stdout) == (Status.OK, b"104857600\n")


def test_output_limit(factory: JailFactory) -> None:
    code = "import sys; sys.stdout.write('x' * 5000); sys.stderr.write('e' * 10)"
    result = run(factory, Language.PYTHON, code, output_bytes=1000)
    assert result.status is Status.OUTPUT_LIMIT
    assert (result.stdout, result.stdout_truncated, result.stdout_total_bytes) == (
        b"x" * 1000, True, 5000)
    assert (result.stderr, result.stderr_truncated, result.stderr_total_bytes) == (
        b"e" * 10, False, 10)
    assert "output exceeded 1000 bytes" in result.message


def test_seccomp_kill_is_security_violation(factory: JailFactory) -> None:
    code = "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)"  # ptrace(TRACEME)
    result = run(factory, Language.PYTHON, code)
    assert result.status is Status.SECURITY_VIOLATION
    assert result.exit_code == 128 + 31
    assert "seccomp" in result.message


def test_exit_code_137_alone_is_not_memory_limit(factory: JailFactory) -> None:
    result = run(factory, Language.SHELL, "kill -9 $$")
    assert (result.status, result.exit_code) == (Status.ERROR, 137)
    assert "SIGKILL" in result.message


def test_cancellation(factory: JailFactory) -> None:
    isolate = factory.create()
    token = CancelToken()
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    try:
        result = isolate.run(ExecutionRequest(execution_id="t", language=Language.SHELL,
                                              code="sleep 60", limits=Limits(timeout_s=60)),
                             cancel=token)
    finally:
        timer.cancel()
        isolate.destroy()
    assert result.status is Status.CANCELLED
    assert "cancelled" in result.message


def test_cancelled_before_run(factory: JailFactory) -> None:
    isolate = factory.create()
    token = CancelToken()
    token.cancel()
    try:
        result = isolate.run(ExecutionRequest(execution_id="t", language=Language.PYTHON,
                                              code="print(1)"), cancel=token)
    finally:
        isolate.destroy()
    assert result.status is Status.CANCELLED and result.stdout == b""


def test_request_limits_are_clamped_to_factory_maxima(factory: JailFactory) -> None:
    code = "print(open('/proc/self/limits').read())"
    result = run(factory, Language.PYTHON, code, memory_bytes=1 << 60)
    assert result.status is Status.OK
    code = "x = bytearray(1200 * 1024 * 1024)"
    result = run(factory, Language.PYTHON, code, memory_bytes=1 << 60)
    assert result.status is Status.MEMORY_LIMIT
    assert f"{factory.settings.max_memory_bytes} bytes" in result.message


@pytest.mark.parametrize(("limits", "field", "words"), [
    ({"memory_bytes": 2048 * MIB}, "limits.memory_bytes",
     "is 2147483648 bytes; JAIL isolates take at most 1073741824 bytes (1024 MiB)"),
    ({"memory_bytes": 16 * MIB}, "limits.memory_bytes",
     "is 16777216 bytes; JAIL isolates need at least 33554432 bytes (32 MiB)"),
    ({"timeout_s": 301.5}, "limits.timeout_ms",
     "is 301500 ms; JAIL isolates allow at most 300000 ms (300 s)"),
])
def test_check_refuses_limits_a_jail_would_clamp(
    factory: JailFactory, limits: dict[str, float], field: str, words: str
) -> None:
    # What the service answers with INVALID_ARGUMENT before a jail is spent on the request.
    request = ExecutionRequest(execution_id="t", language=Language.PYTHON, code="pass",
                               limits=Limits(**limits))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as info:
        factory.check(request)
    assert (info.value.field, str(info.value)) == (field, words)
    factory.check(ExecutionRequest(execution_id="t", language=Language.PYTHON, code="pass"))
