"""Per-repo state: name, token hash and refs, each repo in its own directory.

Layout under ``DATA_DIR/artifacts/repos/<name>/``::

    meta.json      {"name", "created_at", "token_sha256"}   (the token itself is never stored)
    HEAD           "ref: refs/heads/main"
    refs/heads/*   one file per branch, as in git (dulwich DiskRefsContainer)
    packed-refs    when dulwich packs them

A repo holds no objects: they live once in the shared store. Creating a repo is an atomic
rename of a fully written directory; deleting one is an atomic rename out of ``repos/``
followed by removal, so a crash never leaves a half repo visible.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from dulwich.refs import DiskRefsContainer, Ref

from artifacts._errors import AlreadyExistsError, NotFoundError
from artifacts._validate import check_repo_name

__all__ = ["RepoRecord", "RepoRegistry"]


class RepoRecord:
    """An open repo: its metadata and its refs container."""

    def __init__(self, path: Path, meta: dict[str, str]) -> None:
        self.path = path
        self.name: str = meta["name"]
        self.created_at = datetime.fromisoformat(meta["created_at"])
        self._token_sha256: str = meta["token_sha256"]
        self.refs = DiskRefsContainer(str(path))

    def check_token(self, token: str) -> bool:
        """Constant-time comparison of ``token`` with the stored hash."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return hmac.compare_digest(digest, self._token_sha256)

    def branches(self) -> dict[str, str]:
        """Branch name -> commit id."""
        return {
            ref.decode(): sha.decode() for ref, sha in self.refs.as_dict(Ref(b"refs/heads")).items()
        }


class RepoRegistry:
    """Creates, opens, lists and deletes repos under one directory."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        root.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def create(self, name: str) -> tuple[RepoRecord, str]:
        """Create a repo and return it with its freshly minted token.

        Raises:
            InvalidArgumentError: For a bad name.
            AlreadyExistsError: When the name is taken.
        """
        check_repo_name(name)
        token = secrets.token_urlsafe(32)
        meta = {
            "name": name,
            "created_at": datetime.now(UTC).isoformat(),
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        }
        staging = Path(tempfile.mkdtemp(prefix="new-", dir=self.tmp_dir))
        (staging / "meta.json").write_text(json.dumps(meta))
        (staging / "refs" / "heads").mkdir(parents=True)
        (staging / "refs" / "tags").mkdir()
        (staging / "HEAD").write_bytes(b"ref: refs/heads/main\n")
        target = self.root / name
        try:
            # rename() onto an existing repo fails (the directory is not empty), which makes
            # creation atomic and race-free between concurrent callers.
            os.rename(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():
                raise AlreadyExistsError(f"repo {name!r} already exists") from None
            raise
        return RepoRecord(target, meta), token

    def open(self, name: str) -> RepoRecord:
        """Open an existing repo.

        Raises:
            NotFoundError: When it does not exist (or the name is not a valid repo name).
        """
        try:
            check_repo_name(name)
            meta = json.loads((self.root / name / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFoundError(f"repo {name!r} not found") from None
        return RepoRecord(self.root / name, meta)

    def names(self) -> list[str]:
        """Names of all repos, sorted."""
        return sorted(p.name for p in self.root.iterdir() if (p / "meta.json").is_file())

    def delete(self, name: str) -> None:
        """Delete a repo's refs and metadata (objects stay in the shared store).

        Raises:
            NotFoundError: When it does not exist.
        """
        self.open(name)
        doomed = Path(tempfile.mkdtemp(prefix="deleted-", dir=self.tmp_dir))
        try:
            os.rename(self.root / name, doomed / name)
        except FileNotFoundError:
            raise NotFoundError(f"repo {name!r} not found") from None
        finally:
            shutil.rmtree(doomed, ignore_errors=True)
