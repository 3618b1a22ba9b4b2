from __future__ import annotations

import pytest

from executor.wire import MalformedRequest, decode
from sandboxd.v1 import executor_pb2 as pb


def _bad(message: pb.ExecuteRequest, marker: bytes) -> bytes:
    data = message.SerializeToString()
    assert data.count(marker) == 1
    return data.replace(marker, b"\xff\xfe")


def test_valid_bytes_decode() -> None:
    message = pb.ExecuteRequest(language=pb.LANGUAGE_PYTHON, code="print(1)")
    assert decode(pb.ExecuteRequest, message.SerializeToString()) == message


@pytest.mark.parametrize(
    ("message", "marker", "field"),
    [
        (pb.ExecuteRequest(code="QQ"), b"QQ", "code"),
        (pb.ExecuteRequest(files=[pb.File(path="ok"), pb.File(path="QQ")]), b"QQ",
         "files[1].path"),
        (pb.ExecuteRequest(env={"K": "QQ"}), b"QQ", "env['K']"),
        (pb.ExecuteRequest(argv=["a", "QQ"]), b"QQ", "argv[1]"),
        (pb.ExecuteRequest(output_paths=["QQ"]), b"QQ", "output_paths[0]"),
    ],
)
def test_invalid_utf8_names_the_field(message: pb.ExecuteRequest, marker: bytes,
                                      field: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        decode(pb.ExecuteRequest, _bad(message, marker))
    assert info.value.violations == [(field, "is not valid UTF-8")]


def test_garbage_is_reported_as_not_a_message() -> None:
    with pytest.raises(MalformedRequest) as info:
        decode(pb.ExecuteRequest, b"\xff\xff\xff\xff")
    assert info.value.violations == [("request", "is not a valid protobuf message")]
