"""Errors raised by the artifact store.

The tree::

    ArtifactsError
    ├── InvalidArgumentError      bad input; ``field`` names what was wrong
    │   └── LimitExceededError    input larger than a configured limit
    ├── NotFoundError             no such repo, ref, path or object
    ├── AlreadyExistsError        a repo of that name exists
    └── ConflictError             a ref moved while it was being updated

The gRPC servicer in executor/ maps each class to a status code; the git smart-HTTP server
turns them into protocol errors. Messages are safe to show to the caller.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ArtifactsError",
    "ConflictError",
    "InvalidArgumentError",
    "LimitExceededError",
    "NotFoundError",
]


class ArtifactsError(Exception):
    """Root of every error the artifact store raises on purpose."""


class InvalidArgumentError(ArtifactsError):
    """The caller sent something the store refuses.

    Attributes:
        field: Dotted name of the offending input (e.g. ``files[3].path``), or "" when the
            input as a whole is at fault.
        reason: Human-readable explanation.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class LimitExceededError(InvalidArgumentError):
    """An input exceeded a configured size or count limit (checked while streaming)."""


class NotFoundError(ArtifactsError):
    """A repo, ref, path or object does not exist."""


class AlreadyExistsError(ArtifactsError):
    """A repo with that name already exists."""


class ConflictError(ArtifactsError):
    """A branch moved between reading and updating it (compare-and-swap failed)."""
