"""SDK arguments of the wrong type or sign are refused by name, before anything is sent.

No server runs here: the channels point at a closed port, so a check that let a call through
would fail with UnavailableError instead of InvalidArgumentError.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from sandboxd import InvalidArgumentError
from sandboxd._artifacts import Artifacts, AsyncArtifacts
from sandboxd._facets import Facets
from sandboxd._request import build_request, call_deadline
from sandboxd.v1 import executor_pb2 as pb

DEFAULTS: dict[str, Any] = {
    "timeout": None, "files": None, "file_modes": None, "env": None, "stdin": None,
    "isolate": "auto", "memory": None, "cpu_time": None, "output_limit": None,
    "output_paths": None, "argv": None, "module": None, "facet": None, "output_repo": None,
    "output_branch": None,
}


def request(
    code: Any = "print(1)", language: str = "python", **overrides: Any
) -> pb.ExecuteRequest:
    return build_request(code, language, **{**DEFAULTS, **overrides})


def test_a_plain_call_builds_the_wire_request() -> None:
    built = request(timeout=2.5, files={"a.txt": "hi", "b.bin": b"\x00"}, env={"K": "V"},
                    stdin="in", memory=64 * 1024**2, cpu_time=1.5, output_paths=["out.txt"],
                    isolate="jail")
    assert built.language == pb.LANGUAGE_PYTHON and built.isolate == pb.ISOLATE_KIND_JAIL
    assert built.limits.timeout_ms == 2500 and built.limits.memory_bytes == 64 * 1024**2
    assert built.limits.cpu_ms == 1500
    assert [(f.path, f.content) for f in built.files] == [("a.txt", b"hi"), ("b.bin", b"\x00")]
    assert [f.mode for f in built.files] == [0, 0]  # the server's default, 0o644
    scripted = request(files={"run.sh": "#!/bin/sh\n"}, file_modes={"run.sh": 0o755})
    assert scripted.files[0].mode == 0o755
    assert dict(built.env) == {"K": "V"} and built.stdin == b"in"
    assert list(built.output_paths) == ["out.txt"]


def test_a_sub_millisecond_timeout_is_not_read_as_the_default() -> None:
    assert request(timeout=0.0004).limits.timeout_ms == 1  # 0 on the wire means "default"


@pytest.mark.parametrize(
    ("overrides", "argument", "words"),
    [
        ({"code": b"print(1)"}, "code", "must be a string, not bytes"),
        ({"language": "ruby"}, "language", "not 'ruby'"),
        ({"isolate": "vm"}, "isolate", "not 'vm'"),
        ({"timeout": "5"}, "timeout", "number of seconds, not str"),
        ({"timeout": True}, "timeout", "number of seconds, not bool"),
        ({"timeout": -1}, "timeout", "positive number of seconds, not -1"),
        ({"timeout": float("nan")}, "timeout", "positive number of seconds, not nan"),
        ({"memory": 1.5e8}, "memory", "whole number of bytes, not float"),
        ({"cpu_time": "2"}, "cpu_time", "number of seconds, not str"),
        ({"cpu_time": 0}, "cpu_time", "positive number of seconds, not 0"),
        ({"output_limit": -1}, "output_limit", "must not be negative"),
        ({"env": {"A": 1}}, "env['A']", "must be a string, not int"),
        ({"env": ["A=1"]}, "env", "must be a mapping"),
        ({"files": {"a": 3}}, "files['a']", "must be bytes or str, not int"),
        ({"files": ["a"]}, "files", "must be a mapping"),
        ({"files": {"a": "x"}, "file_modes": {"b": 0o755}}, "file_modes['b']",
         "names no file given in files"),
        ({"files": {"a": "x"}, "file_modes": {"a": "755"}}, "file_modes['a']",
         "permission bits such as 0o755, not '755'"),
        ({"files": {"a": "x"}, "file_modes": {"a": 0o4755}}, "file_modes['a']",
         "permission bits such as 0o755, not 2541"),
        ({"files": {"a": "x"}, "file_modes": [("a", 0o755)]}, "file_modes", "must be a mapping"),
        ({"stdin": 5}, "stdin", "must be bytes or str, not int"),
        ({"output_paths": "out.txt"}, "output_paths", "must be a list of strings, not str"),
        ({"argv": ["prog", 1]}, "argv[1]", "must be a string, not int"),
        ({"module": "not bytes"}, "module", "must be bytes, not str"),
        ({"facet": 7}, "facet", "must be a string, not int"),
    ],
)
def test_bad_arguments_are_refused_by_name(overrides: dict[str, Any], argument: str,
                                           words: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        request(**overrides)
    (violation,) = info.value.field_violations
    assert violation.field == argument
    assert words in violation.description
    assert str(info.value).startswith(argument)


def test_the_call_deadline_follows_the_timeout_unless_given() -> None:
    assert call_deadline(5, None) == 35.0
    assert call_deadline(None, 2) == 2.0
    with pytest.raises(InvalidArgumentError, match="request_timeout"):
        call_deadline(None, 0)


@pytest.fixture
def channel() -> Any:
    with grpc.insecure_channel("127.0.0.1:1") as unreachable:
        yield unreachable


@pytest.mark.parametrize(
    ("call", "argument", "words"),
    [
        (lambda a: a.commit("r", {"a.txt": 1}, message="m"), "files['a.txt']",
         "must be bytes or str, not int"),
        (lambda a: a.commit("r", ["a.txt"], message="m"), "files", "must be a mapping"),
        (lambda a: a.commit("r", {}, message=3), "message", "must be a string, not int"),
        (lambda a: a.commit("r", {}, message="m", delete="a.txt"), "delete",
         "must be a list of strings, not str"),
        (lambda a: a.commit("r", {}, message="m", author="me"), "author", "(name, email)"),
        (lambda a: a.commit("r", {"x": b""}, message="m", modes={"x": "755"}), "modes['x']",
         "must be a file mode"),
        (lambda a: a.read("r", 5), "path", "must be a string, not int"),
        (lambda a: a.log("r", limit="10"), "limit", "must be a whole number, not str"),
        (lambda a: a.log("r", limit=-1), "limit", "must not be negative"),
        (lambda a: a.list("r", recursive="yes"), "recursive", "must be True or False"),
        (lambda a: a.create_repo(None), "name", "must be a string, not NoneType"),
    ],
)
def test_artifact_arguments_are_refused_by_name(channel: Any, call: Any, argument: str,
                                                words: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call(Artifacts(channel))
    (violation,) = info.value.field_violations
    assert (violation.field, words in violation.description) == (argument, True)


async def test_an_async_commit_is_checked_before_its_stream_starts() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as unreachable:
        with pytest.raises(InvalidArgumentError, match="files"):
            await AsyncArtifacts(unreachable).commit("r", {"a.txt": 1.5}, message="m")


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda f: f.query("db", "SELECT 1", timeout="2"), "timeout"),
        (lambda f: f.query("db", "SELECT 1", time_budget=-1), "time_budget"),
        (lambda f: f.query("db", "SELECT 1", max_rows=2.5), "max_rows"),
        (lambda f: f.query(7, "SELECT 1"), "name"),
        (lambda f: f.import_(7, b"data"), "name"),
        (lambda f: f.delete("db", timeout=0), "timeout"),
        (lambda f: f.export_to_repo("db", "repo", path=5), "path"),
    ],
)
def test_facet_arguments_are_refused_by_name(channel: Any, call: Any, argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call(Facets(channel))
    assert [v.field for v in info.value.field_violations] == [argument]
