"""Plain data models of the artifact store's API (pydantic).

These are what `ArtifactStore` accepts and returns; the gRPC servicer translates them to and
from protobuf messages, so nothing in artifacts/ depends on generated stubs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Author",
    "ChangeKind",
    "CommitInfo",
    "FileChange",
    "FileInput",
    "ObjectKind",
    "RepoInfo",
    "TreeEntry",
]

ObjectKind = Literal["blob", "tree", "commit", "tag"]
ChangeKind = Literal["added", "deleted", "modified"]


class Author(BaseModel):
    """Identity recorded as author and committer of a commit."""

    model_config = ConfigDict(frozen=True)

    name: str = "sandboxd"
    email: str = "sandboxd@localhost"


class RepoInfo(BaseModel):
    """A repository as the API shows it.

    ``token`` is filled only in the answer to ``create_repo``: the store keeps a hash of it,
    never the token itself.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    created_at: datetime
    clone_url: str = ""
    token: str | None = None
    branches: dict[str, str] = Field(default_factory=dict)


class FileInput(BaseModel):
    """One file of a commit: its path, mode and content (in memory or in a spool file)."""

    model_config = ConfigDict(frozen=True)

    path: str
    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o100644


class CommitInfo(BaseModel):
    """A commit as read back from the store."""

    model_config = ConfigDict(frozen=True)

    id: str
    tree: str
    parents: list[str]
    author: Author
    author_time: datetime
    committer: Author
    commit_time: datetime
    message: str


class TreeEntry(BaseModel):
    """One entry of a tree listing; ``path`` is relative to the repo root."""

    model_config = ConfigDict(frozen=True)

    path: str
    mode: int
    kind: ObjectKind
    id: str
    size: int | None = None


class FileChange(BaseModel):
    """One path that differs between two commits."""

    model_config = ConfigDict(frozen=True)

    path: str
    kind: ChangeKind
    old_id: str | None = None
    new_id: str | None = None
    old_mode: int | None = None
    new_mode: int | None = None
