"""Artifact store benchmark rows: commit, clone over smart HTTP vs stock git, dedup cost.

One run measures, on the same content (10,000 files, about 100 MB of source-like text):

* commit through `ArtifactStore.commit` (target <= 3 s);
* `git clone` from our smart-HTTP server and from stock git serving a bare repo with the same
  objects through `git http-backend` (CGI behind a tiny Python HTTP server), and their ratio
  (target <= 2x);
* the storage growth when a second repo commits the same content.

Every function returns plain dicts: ``{"name", "seconds" | "bytes" | "ratio", ...}``.
Run directly: ``python -m bench.artifacts_rows [WORK_DIR]``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import CGIHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from artifacts import ArtifactStore, FileInput, GitHttpServer

Row = dict[str, Any]
GROUP = "artifacts"
_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}


def make_files(n: int = 10_000, total: int = 100 * 1024 * 1024, seed: int = 7) -> list[FileInput]:
    """Source-like text files: lines of words from a vocabulary, ``total`` bytes overall."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12)))
        for _ in range(5000)
    ]
    size = total // n
    files = []
    for i in range(n):
        words: list[str] = []
        length = 0
        while length < size:
            w = rng.choice(vocab)
            words.append(w)
            length += len(w) + 1
        text = " ".join(words)[:size].encode()
        path = f"pkg{i // 500:02d}/mod{i // 50:03d}/file{i:05d}.py"
        files.append(FileInput(path=path, data=text))
    return files


def _timed_clone(url: str, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--no-checkout", url, str(dest)], check=True, env=_ENV)
    return time.perf_counter() - started


def _stock_git_commit(files: list[FileInput], work: Path) -> float:
    """Baseline on the same machine: `git add -A && git commit` of the files (already on disk)."""
    subprocess.run(["git", "init", "-q", str(work)], check=True, env=_ENV)
    for f in files:
        path = work / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data or b"")
    env = {**_ENV, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    started = time.perf_counter()
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "c"], check=True, env=env)
    return time.perf_counter() - started


class _GitCgi(CGIHTTPRequestHandler):
    """Runs `git http-backend` for every request, as a web server's CGI would."""

    project_root = ""

    def _run_backend(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            **_ENV,
            "GIT_PROJECT_ROOT": self.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _run_backend
    do_POST = _run_backend

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def stock_git_http(project_root: Path) -> Iterator[int]:
    """Serve bare repos under ``project_root`` with `git http-backend`; yields the port."""
    handler = type("Handler", (_GitCgi,), {"project_root": str(project_root)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def rows(data_dir: Path, quick: bool = False, work_dir: Path | None = None) -> list[Row]:
    """Measure every artifact row in one run (about a minute on 2 cores; `quick`: a fifth).

    Scratch repos go to `work_dir`, or a temporary directory under DATA_DIR/bench/ that is
    removed afterwards.
    """
    if work_dir is None:
        (data_dir / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(work_dir or tempfile.mkdtemp(prefix="artifacts-", dir=data_dir / "bench"))
    out: list[Row] = []
    files = make_files(2_000, 20 * 1024 * 1024) if quick else make_files()
    label = f"{len(files):,} files / {sum(len(f.data or b'') for f in files) >> 20} MB"
    total_bytes = sum(len(f.data or b"") for f in files)
    store = ArtifactStore(work / "data")
    server = GitHttpServer(store)
    server.start()
    try:
        repo = store.create_repo("bench")
        started = time.perf_counter()
        store.commit("bench", files, "10k files")
        commit_s = time.perf_counter() - started
        out.append({"group": GROUP, "name": f"commit {label}", "seconds": commit_s,
                    "target": "<= 3 s", "files": len(files), "bytes": total_bytes})
        first_storage = store.storage_bytes()
        out.append({"group": GROUP, "name": f"commit {label} (stock git add+commit)",
                    "seconds": _stock_git_commit(files, work / "stock-commit")})

        url = repo.clone_url.replace("http://", f"http://bench:{repo.token}@")
        ours = _timed_clone(url, work / "clone-ours")

        # Stock git serves the same objects: a bare repo fetched from our clone, repacked the
        # way a git server's repo usually is.
        bare = work / "stock" / "bench.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(work / "clone-ours"), str(bare)],
                       check=True, env=_ENV)
        subprocess.run(["git", "-C", str(bare), "repack", "-adq"], check=True, env=_ENV)
        with stock_git_http(work / "stock") as port:
            stock = _timed_clone(f"http://127.0.0.1:{port}/bench.git", work / "clone-stock")
        out.append({"group": GROUP, "name": "clone over smart HTTP (sandboxd)", "seconds": ours})
        out.append({"group": GROUP, "name": "clone over smart HTTP (git http-backend)",
                    "seconds": stock})
        out.append({"group": GROUP, "name": "clone time sandboxd / stock git",
                    "ratio": ours / stock, "target": "<= 2"})

        store.create_repo("bench-copy")
        started = time.perf_counter()
        store.commit("bench-copy", files, "same content")
        second_s = time.perf_counter() - started
        growth = store.storage_bytes() - first_storage
        out.append({"group": GROUP, "name": "second repo, same content: commit",
                    "seconds": second_s})
        out.append({"group": GROUP, "name": "second repo, same content: storage added",
                    "bytes": growth, "first_repo_bytes": first_storage})
    finally:
        server.stop()
        store.close()
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in rows(Path(os.environ.get("SANDBOXD_DATA_DIR", ".sandboxd")),
                    work_dir=Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(row)
