"""Commits an execution's output files to an artifacts repo (Execute's `output_repo`).

The adapter between the runner's `OutputCommitter` protocol and the artifact store: the runner
checks the repo before the code runs (a missing repo is the caller's mistake, reported as
INVALID_ARGUMENT without spending an execution) and commits the returned files after it.
"""

from __future__ import annotations

from artifacts import ArtifactsError, ArtifactStore, FileInput, NotFoundError
from artifacts import InvalidArgumentError as ArtifactsInvalid
from isolates.base import InvalidRequest

__all__ = ["ArtifactOutputs"]


class ArtifactOutputs:
    """`OutputCommitter` backed by an `ArtifactStore`."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    def check_repo(self, repo: str, branch: str) -> None:
        """Raise InvalidRequest naming the field when `repo` cannot receive the outputs."""
        try:
            self._store.get_repo(repo)
        except NotFoundError:
            raise InvalidRequest("output_repo", f"no artifacts repo named {repo!r}") from None
        except ArtifactsInvalid as exc:
            raise InvalidRequest("output_repo", str(exc)) from None

    def commit_outputs(
        self, repo: str, branch: str, files: dict[str, bytes], message: str
    ) -> str:
        """Commit `files` over the head of `branch` and return the commit id.

        Raises:
            ValueError: the store refused the commit (the message says why).
        """
        try:
            return self._store.commit(
                repo,
                [FileInput(path=path, data=data) for path, data in sorted(files.items())],
                message,
                branch=branch,
            )
        except ArtifactsError as exc:
            raise ValueError(str(exc)) from exc
