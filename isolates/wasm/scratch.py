"""Per-execution scratch directories: the guest's working directory, seen from the host.

A scratch directory lives under DATA_DIR/scratch/ and is preopened read-write into exactly one
isolate. The host writes input files there before the run and reads requested output files
after it. The guest may have planted symlinks or special files, so the host never follows a
link there: every path is walked component by component with O_NOFOLLOW relative to the
directory's descriptor, and only regular files are read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from pathlib import Path

from isolates.base import InputFile, OutputFile, validate_relative_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ScratchDir:
    """One scratch directory on the host."""

    def __init__(self, parent: Path) -> None:
        name = os.path.join(parent, uuid.uuid4().hex)
        try:
            os.mkdir(name, 0o700)
        except FileNotFoundError:
            parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(name, 0o700)
        self.path = Path(name)

    def write_inputs(self, files: tuple[InputFile, ...]) -> None:
        """Write the request's input files (paths validated again: defence in depth).

        Raises:
            ValueError: a path is unsafe or names an existing directory component wrongly.
        """
        for file in files:
            problem = validate_relative_path(file.path)
            if problem is not None:
                raise ValueError(f"input file path {file.path!r} {problem}")
            *parents, name = file.path.split("/")
            with self._open_dir(parents, create=True) as dir_fd:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, file.mode & 0o777, dir_fd=dir_fd)
                with os.fdopen(fd, "wb") as f:
                    f.write(file.content)

    def read_output(self, path: str, cap: int) -> OutputFile:
        """Read one output file without following links; problems become `error`."""
        problem = validate_relative_path(path)
        if problem is not None:
            return OutputFile(path=path, content=b"", error=f"path {problem}")
        *parents, name = path.split("/")
        try:
            with self._open_dir(parents, create=False) as dir_fd:
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    return OutputFile(path=path, content=b"", error="not found")
                if stat.S_ISLNK(st.st_mode):
                    return OutputFile(path=path, content=b"", error="is a symlink (not followed)")
                if not stat.S_ISREG(st.st_mode):
                    return OutputFile(path=path, content=b"", error="not a regular file")
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(name, flags, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as f:
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        return OutputFile(path=path, content=b"", error="not a regular file")
                    content = f.read(cap + 1)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return OutputFile(path=path, content=b"", error="path goes through a symlink")
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return OutputFile(path=path, content=b"", error="not found")
            return OutputFile(path=path, content=b"", error=f"unreadable: {exc.strerror}")
        truncated = len(content) > cap
        return OutputFile(
            path=path,
            content=content[:cap],
            truncated=truncated,
            size=max(st.st_size, len(content)),
        )

    @contextlib.contextmanager
    def _open_dir(self, parts: list[str], *, create: bool):  # type: ignore[no-untyped-def]
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, "path goes through a symlink", part)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            yield fd
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Delete the directory and everything in it (rmtree never follows links).

        Most executions leave the directory empty: one rmdir then does it, without rmtree's
        open/stat/scandir of the directory.
        """
        try:
            os.rmdir(self.path)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
