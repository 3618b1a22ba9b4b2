from __future__ import annotations

import pytest

from executor.config import Settings
from executor.validation import ValidationFailed, validate_execute
from isolates.base import IsolateKind, Language
from sandboxd.v1 import executor_pb2 as pb

SETTINGS = Settings(max_code_bytes=1000, max_files=3, max_files_bytes=100)


def violations(message: pb.ExecuteRequest) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        validate_execute(message, SETTINGS)
    return dict(info.value.violations)


def test_valid_request_gets_server_defaults() -> None:
    validated = validate_execute(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)"),
                                 SETTINGS)
    request = validated.request
    assert request.language is Language.PYTHON
    assert request.limits.timeout_s == SETTINGS.default_timeout_s
    assert request.limits.memory_bytes == SETTINGS.default_memory_bytes
    assert request.limits.output_bytes == SETTINGS.default_output_bytes
    assert validated.requested_kind is None
    assert len(request.execution_id) == 32


def test_execution_ids_are_distinct_hex_across_draws() -> None:
    # Ids are drawn from the OS in batches: several batches' worth must never repeat one.
    message = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)")
    ids = [validate_execute(message, SETTINGS).request.execution_id for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_explicit_limits_and_kind_are_kept() -> None:
    validated = validate_execute(
        pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="x", isolate=pb.ISOLATE_KIND_WASM,
                          limits=pb.Limits(timeout_ms=1500, memory_bytes=64 * 1024**2,
                                           output_bytes=10)),
        SETTINGS,
    )
    assert validated.request.limits.timeout_s == 1.5
    assert validated.request.limits.memory_bytes == 64 * 1024**2
    assert validated.request.limits.output_bytes == 10
    assert validated.requested_kind is IsolateKind.WASM


def test_missing_language_and_code_are_named() -> None:
    found = violations(pb.ExecuteRequest())
    assert "language" in found


def test_unknown_enum_values_are_rejected() -> None:
    found = violations(pb.ExecuteRequest(language=42, isolate=7, code="x"))
    assert found["language"] == "unknown value 42"
    assert found["isolate"] == "unknown value 7"


def test_code_size_limit_names_the_limit() -> None:
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="x" * 1001))
    assert found["code"] == "is 1001 bytes; the limit is 1000"


def test_nul_in_code_is_rejected() -> None:
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)\x00"))
    assert found["code"] == "contains a NUL byte"


@pytest.mark.parametrize(
    ("path", "reason"),
    [("../x", "contains '.' or '..' components"), ("/etc/passwd", "is absolute"),
     ("", "is empty"), ("a\x00b", "contains a NUL byte"), ("a//b", "has an empty component")],
)
def test_bad_file_paths_are_named(path: str, reason: str) -> None:
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="x",
                                         files=[pb.File(path=path, content=b"")]))
    assert found["files[0].path"] == reason


def test_duplicate_files_and_outputs_are_rejected() -> None:
    found = violations(pb.ExecuteRequest(
        language=pb.LANGUAGE_PYTHON, code="x",
        files=[pb.File(path="a"), pb.File(path="a")], output_paths=["o", "o"]))
    assert found["files[1].path"] == "duplicates 'a'"
    assert found["output_paths[1]"] == "duplicates 'o'"


def test_file_count_and_size_limits() -> None:
    found = violations(pb.ExecuteRequest(
        language=pb.LANGUAGE_PYTHON, code="x", files=[pb.File(path=str(i)) for i in range(4)]))
    assert found["files"] == "has 4 files; the limit is 3"
    found = violations(pb.ExecuteRequest(
        language=pb.LANGUAGE_PYTHON, code="x", files=[pb.File(path="a", content=b"x" * 101)]))
    assert found["files"] == "hold 101 bytes; the limit is 100"


@pytest.mark.parametrize(
    ("limits", "field"),
    [(pb.Limits(timeout_ms=2**63), "limits.timeout_ms"),
     (pb.Limits(timeout_ms=2**64 - 1), "limits.timeout_ms"),
     (pb.Limits(memory_bytes=2**63), "limits.memory_bytes"),
     (pb.Limits(memory_bytes=1), "limits.memory_bytes"),
     (pb.Limits(output_bytes=2**40), "limits.output_bytes")],
)
def test_absurd_limits_are_rejected_never_unlimited(limits: pb.Limits, field: str) -> None:
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="x", limits=limits))
    assert field in found


def test_wasi_needs_module_and_command_needs_argv() -> None:
    assert violations(pb.ExecuteRequest(language=pb.LANGUAGE_WASI))["module"] == (
        "is required for language wasi")
    assert "argv" in violations(pb.ExecuteRequest(language=pb.LANGUAGE_COMMAND))


def test_bad_env_names_and_facets() -> None:
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_JAVASCRIPT, code="x",
                                         env={"A=B": "1", "OK": "a\x00"}, facet="db"))
    assert "name must match" in found["env['A=B']"]
    assert found["env['OK']"] == "value contains a NUL byte"
    assert "javascript" in found["facet"]
    found = violations(pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="x", facet="../x"))
    assert "facet" in found
