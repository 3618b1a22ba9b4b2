"""Commits files to artifacts repos for the servicers: Execute's outputs and facet exports.

`ArtifactOutputs` adapts the artifact store to two consumers' protocols, so neither the runner
nor the Facets servicer imports artifacts/:

- the runner's `OutputCommitter` (Execute's `output_repo`): the repo is checked before the
  code runs (a missing repo is the caller's mistake, reported as INVALID_ARGUMENT without
  spending an execution) and the returned files are committed after it;
- the Facets servicer's `RepoFileCommitter` (ExportToRepo): one file, produced by a callback
  into a spool file under the store's own temp directory (``DATA_DIR/artifacts/tmp``) and
  committed from there, so a large database is streamed, never held whole in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from artifacts import (
    ArtifactsError,
    ArtifactStore,
    ConflictError,
    FileInput,
    LimitExceededError,
    NotFoundError,
)
from artifacts import InvalidArgumentError as ArtifactsInvalid

# The store's validators are the rules themselves: checking a target with the same functions
# keeps ExportToRepo's early answer identical to what the commit would say.
from artifacts._validate import (
    MODE_BLOB,
    MODE_EXEC,
    check_message,
    check_ref_name,
    check_repo_name,
    split_path,
)
from executor.facets_service import (
    ExportTargetConflict,
    ExportTargetInvalid,
    ExportTargetMissing,
)
from isolates.base import InvalidRequest, OutputFile

__all__ = ["ArtifactOutputs"]

class ArtifactOutputs:
    """`OutputCommitter` and `RepoFileCommitter` backed by an `ArtifactStore`."""

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
        self, repo: str, branch: str, files: list[OutputFile], message: str
    ) -> str:
        """Commit `files` over the head of `branch` and return the commit id.

        A file with an execute bit is committed as git's executable mode, 100755.

        Raises:
            ValueError: the store refused the commit (the message says why).
        """
        try:
            return self._store.commit(
                repo,
                [FileInput(path=f.path, data=f.content,
                           mode=MODE_EXEC if f.executable else MODE_BLOB)
                 for f in sorted(files, key=lambda f: f.path)],
                message,
                branch=branch,
            )
        except ArtifactsError as exc:
            raise ValueError(str(exc)) from exc

    def check_file_target(self, repo: str, path: str, branch: str, message: str) -> None:
        """Check that one file could be committed at `path` on `branch` of `repo`.

        Raises:
            ExportTargetInvalid: the repo name, path, branch or message is not acceptable
                (`field` is "repo", "path", "branch" or "message").
            ExportTargetMissing: the repo does not exist (field "repo").
        """
        try:
            check_repo_name(repo, "repo")
            split_path(path, "path")
            check_ref_name(b"refs/heads/" + branch.encode("utf-8", "surrogateescape"), "branch")
            check_message(message, self._store.limits.max_message_bytes, "message")
        except ArtifactsInvalid as exc:
            raise ExportTargetInvalid(exc.field, exc.reason) from None
        try:
            self._store.get_repo(repo)
        except NotFoundError:
            raise ExportTargetMissing("repo", f"no artifacts repo named {repo!r}") from None

    def commit_file(
        self, repo: str, path: str, branch: str, message: str, write: Callable[[Path], int]
    ) -> str:
        """Commit the file `write` produces at `path` over the head of `branch`.

        Args:
            repo: an existing repo.
            path: the file's path in the tree; other files of the branch stay as they are.
            branch: the branch to advance (created when missing).
            message: the commit message.
            write: called with a fresh spool path; writes the file there and returns its size.

        Returns:
            The new commit's id.

        Raises:
            ExportTargetInvalid, ExportTargetMissing: as for `check_file_target`, or the file
                is larger than the store accepts (field "facet").
            ExportTargetConflict: the branch moved during the commit (field "branch").
        """
        spool = Path(tempfile.mkdtemp(prefix="facet-export-", dir=self._store.tmp_dir))
        try:
            source = spool / "file"
            write(source)
            try:
                return self._store.commit(
                    repo, [FileInput(path=path, source=source)], message, branch=branch
                )
            except LimitExceededError as exc:
                raise ExportTargetInvalid("facet", f"database too large: {exc.reason}") from None
            except ArtifactsInvalid as exc:
                # The store names its own fields (files[0].path); the caller sent `path`.
                field = "path" if exc.field.startswith("files") else exc.field
                raise ExportTargetInvalid(field, exc.reason) from None
            except NotFoundError:
                raise ExportTargetMissing("repo", f"no artifacts repo named {repo!r}") from None
            except ConflictError as exc:
                raise ExportTargetConflict("branch", str(exc)) from None
        finally:
            shutil.rmtree(spool, ignore_errors=True)
