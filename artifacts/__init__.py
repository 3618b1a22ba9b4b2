"""Git-compatible, content-addressed artifact store.

Objects (blobs, trees, commits, tags) are stored once in one shared store however many repos
hold them; repos are refs plus metadata. `ArtifactStore` is the API (used by the gRPC servicer
in executor/), `GitHttpServer` serves git's smart-HTTP protocol over the same store so stock
`git clone` / `git fetch` / `git push` work. This package never imports executor/, scheduler/,
isolates/, egress/ or generated stubs.
"""

from artifacts._errors import (
    AlreadyExistsError,
    ArtifactsError,
    ConflictError,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
)
from artifacts._http import GitHttpServer
from artifacts._limits import StoreLimits
from artifacts._models import Author, CommitInfo, FileChange, FileInput, RepoInfo, TreeEntry
from artifacts._store import ArtifactStore

__all__ = [
    "AlreadyExistsError",
    "ArtifactStore",
    "ArtifactsError",
    "Author",
    "CommitInfo",
    "ConflictError",
    "FileChange",
    "FileInput",
    "GitHttpServer",
    "InvalidArgumentError",
    "LimitExceededError",
    "NotFoundError",
    "RepoInfo",
    "StoreLimits",
    "TreeEntry",
]
