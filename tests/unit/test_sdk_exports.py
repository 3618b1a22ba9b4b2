"""The SDK's public names are a contract: pin them."""

from __future__ import annotations

import sandboxd


def test_public_names_are_pinned() -> None:
    assert sorted(sandboxd.__all__) == sorted([
        "DEFAULT_TARGET", "AlreadyExistsError", "ArtifactCommit", "ArtifactFileChange",
        "ArtifactTreeEntry", "Artifacts", "AsyncArtifacts", "AsyncClient", "AsyncFacets",
        "Client", "ConflictError", "DeadlineExceededError", "Execution", "FacetInfo", "Facets",
        "FieldViolation", "InternalError", "InvalidArgumentError", "IsolateInfo",
        "NotFoundError", "OutputFile", "PermissionDeniedError", "QueryResult", "Repo",
        "ResourceExhaustedError", "SandboxdError", "Timings", "UnavailableError", "__version__",
    ])
    for name in sandboxd.__all__:
        assert hasattr(sandboxd, name), name


def test_every_error_derives_from_the_root() -> None:
    for name in sandboxd.__all__:
        value = getattr(sandboxd, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, sandboxd.SandboxdError), name


def test_sdk_imports_no_server_package() -> None:
    import subprocess
    import sys

    code = ("import sys, sandboxd, sandboxd.cli\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('executor', 'isolates', 'artifacts', 'egress', 'scheduler', 'bench')]\n"
            "print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
