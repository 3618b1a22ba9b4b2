"""sandboxd: secure code execution for AI agents.

Start with `Client("localhost:50051").run_code("print(6 * 7)")`, which returns an `Execution`;
`AsyncClient` mirrors it for asyncio. `client.artifacts` and `client.facets` reach the artifact
store and the facet databases. Every exception derives from `SandboxdError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxd._artifacts import (
        ArtifactCommit,
        ArtifactFileChange,
        Artifacts,
        ArtifactTreeEntry,
        AsyncArtifacts,
        Repo,
    )
    from sandboxd._client import AsyncClient, Client
    from sandboxd._errors import (
        AlreadyExistsError,
        ConflictError,
        DeadlineExceededError,
        FieldViolation,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        SandboxdError,
        UnavailableError,
    )
    from sandboxd._facets import AsyncFacets, FacetInfo, Facets, QueryResult
    from sandboxd._models import Execution, IsolateInfo, OutputFile, Timings
    from sandboxd._target import DEFAULT_TARGET

    __version__: str

_EXPORTS: dict[str, str] = {
    "AlreadyExistsError": "sandboxd._errors",
    "ArtifactCommit": "sandboxd._artifacts",
    "ArtifactFileChange": "sandboxd._artifacts",
    "ArtifactTreeEntry": "sandboxd._artifacts",
    "Artifacts": "sandboxd._artifacts",
    "AsyncArtifacts": "sandboxd._artifacts",
    "AsyncClient": "sandboxd._client",
    "AsyncFacets": "sandboxd._facets",
    "Client": "sandboxd._client",
    "ConflictError": "sandboxd._errors",
    "DEFAULT_TARGET": "sandboxd._target",
    "DeadlineExceededError": "sandboxd._errors",
    "Execution": "sandboxd._models",
    "FacetInfo": "sandboxd._facets",
    "Facets": "sandboxd._facets",
    "FieldViolation": "sandboxd._errors",
    "InternalError": "sandboxd._errors",
    "InvalidArgumentError": "sandboxd._errors",
    "IsolateInfo": "sandboxd._models",
    "NotFoundError": "sandboxd._errors",
    "OutputFile": "sandboxd._models",
    "PermissionDeniedError": "sandboxd._errors",
    "QueryResult": "sandboxd._facets",
    "Repo": "sandboxd._artifacts",
    "ResourceExhaustedError": "sandboxd._errors",
    "SandboxdError": "sandboxd._errors",
    "Timings": "sandboxd._models",
    "UnavailableError": "sandboxd._errors",
}
"""Where each public name lives; imported on first use (PEP 562), so that importing a
submodule such as `sandboxd.v1`, as the server does for its wire types, loads no SDK code."""


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("sandboxd")
        except PackageNotFoundError:  # running from a source tree without installing
            value = "0.0.0"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'sandboxd' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExistsError",
    "ArtifactCommit",
    "ArtifactFileChange",
    "ArtifactTreeEntry",
    "Artifacts",
    "AsyncArtifacts",
    "AsyncClient",
    "AsyncFacets",
    "Client",
    "ConflictError",
    "DeadlineExceededError",
    "Execution",
    "FacetInfo",
    "Facets",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "IsolateInfo",
    "NotFoundError",
    "OutputFile",
    "PermissionDeniedError",
    "QueryResult",
    "Repo",
    "ResourceExhaustedError",
    "SandboxdError",
    "Timings",
    "UnavailableError",
    "__version__",
]
