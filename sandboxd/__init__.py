"""sandboxd: secure code execution for AI agents.

Start with `Client("localhost:50051").run_code("print(6 * 7)")`, which returns an `Execution`;
`AsyncClient` mirrors it for asyncio. `client.artifacts` and `client.facets` reach the artifact
store and the facet databases. Every exception derives from `SandboxdError`.
"""

from importlib.metadata import PackageNotFoundError, version

from sandboxd._artifacts import (
    ArtifactCommit,
    ArtifactFileChange,
    Artifacts,
    ArtifactTreeEntry,
    AsyncArtifacts,
    Repo,
)
from sandboxd._client import DEFAULT_TARGET, AsyncClient, Client
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

try:
    __version__ = version("sandboxd")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

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
