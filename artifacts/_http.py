"""Git smart-HTTP server over the artifact store (clone, fetch, push with stock git).

Routes (``<repo>`` may end in ``.git``)::

    GET  /git/<repo>/info/refs?service=git-upload-pack|git-receive-pack
    POST /git/<repo>/git-upload-pack
    POST /git/<repo>/git-receive-pack

Every request needs the repo's token: HTTP basic (the password, or the user name when the
password is empty) or ``Authorization: Bearer <token>``. No credentials -> 401 with a
``WWW-Authenticate`` challenge; wrong credentials or an unknown repo -> 403. Neither answer
says whether the repo exists.

Request bodies are read as they stream (chunked or sized, gzip-decoded in bounded steps) with
a total limit; the pack inside is checked by `PackGuard` before dulwich sees it. The server
runs on its own threads (`ThreadingHTTPServer`), never on an asyncio loop.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from artifacts._errors import ArtifactsError, LimitExceededError, NotFoundError
from artifacts._packsend import PackSender
from artifacts._repos import RepoRecord
from artifacts._smart import SERVICES, advertise, run_service
from artifacts._store import ArtifactStore

__all__ = ["GitHttpServer"]

log = logging.getLogger(__name__)

_ROUTE = re.compile(
    r"^/git/([a-z0-9][a-z0-9._-]*?)(?:\.git)?/(info/refs|git-upload-pack|git-receive-pack)$"
)
_READ_STEP = 64 * 1024


class _BodyReader:
    """Reads a request body as it arrives: dechunks, gunzips in bounded steps, caps size."""

    def __init__(self, rfile: BinaryIO, headers: Any, limit: int) -> None:
        self._rfile = rfile
        self._chunked = headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._left = int(headers.get("Content-Length") or 0)
        self._chunk_left = 0
        self._eof = False
        gz = headers.get("Content-Encoding", "").lower() == "gzip"
        self._gunzip = zlib.decompressobj(wbits=31) if gz else None
        self._pending = b""
        self._limit = limit
        self._total = 0

    def _raw(self, n: int) -> bytes:
        if self._eof:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(n, self._left)) if self._left else b""
            self._left -= len(data)
            if not data:
                self._eof = True
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self._eof = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            self._eof = True
            return b""
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(16)
        return data

    def _more(self, n: int) -> bytes:
        if self._gunzip is None:
            data = self._raw(n)
        else:
            data = b""
            while not data:
                src = self._gunzip.unconsumed_tail or self._raw(_READ_STEP)
                if not src:
                    break
                # max_length keeps a gzip bomb from inflating more than one step at a time.
                data = self._gunzip.decompress(src, max(n, _READ_STEP))
        self._total += len(data)
        if self._total > self._limit:
            raise LimitExceededError("body", f"request body larger than {self._limit} bytes")
        return data

    def read(self, n: int) -> bytes:
        """Return exactly ``n`` bytes, or fewer only at the end of the body."""
        buf = self._pending
        while len(buf) < n:
            more = self._more(n - len(buf))
            if not more:
                break
            buf += more
        self._pending = buf[n:]
        return buf[:n]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("git-http %s " + format, self.client_address[0], *args)

    def _plain(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode() + b"\n"
        self.send_response(code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return ""
            return password or user
        return None

    def _authorize(self, name: str) -> RepoRecord | None:
        token = self._token()
        if token is None:
            self._plain(
                401, "authentication required", {"WWW-Authenticate": 'Basic realm="sandboxd"'}
            )
            return None
        store = self.server.store
        try:
            rec = store.open_repo(name)
        except NotFoundError:
            rec = None
        if rec is None or not rec.check_token(token):
            self._plain(403, "forbidden")
            return None
        return rec

    def _route(self) -> tuple[str, str, dict[str, list[str]]] | None:
        parts = urlsplit(self.path)
        m = _ROUTE.match(parts.path)
        if m is None:
            self._plain(404, "not found")
            return None
        return m.group(1), m.group(2), parse_qs(parts.query)

    def _start_chunked(self, content_type: str) -> Callable[[bytes], None]:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, max-age=0, must-revalidate")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        wfile = self.wfile

        def write(data: bytes) -> None:
            if data:
                wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        return write

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return
        name, action, query = route
        rec = self._authorize(name)
        if rec is None:
            return
        service = (query.get("service") or [""])[0]
        if action != "info/refs" or service not in SERVICES:
            # Only the smart protocol is spoken; the dumb one would expose raw store files.
            self._plain(403, "smart HTTP only")
            return
        buf = bytearray()
        advertise(self.server.store, self.server.sender, rec, service, buf.extend)
        body = bytes(buf)
        self.send_response(200)
        self.send_header("Content-Type", f"application/x-{service}-advertisement")
        self.send_header("Cache-Control", "no-cache, max-age=0, must-revalidate")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        route = self._route()
        if route is None:
            return
        name, service, _ = route
        rec = self._authorize(name)
        if rec is None:
            return
        if service not in SERVICES or self.headers.get("Content-Type") != (
            f"application/x-{service}-request"
        ):
            self._plain(415, "unexpected content type")
            return
        store = self.server.store
        rfile: Any = self.rfile
        body = _BodyReader(rfile, self.headers, store.limits.max_request_bytes)
        write = self._start_chunked(f"application/x-{service}-result")
        try:
            run_service(store, self.server.sender, rec, service, body.read, write)
        except ArtifactsError as e:
            # Headers are sent: the client sees a broken stream and fails; log the cause.
            log.info("git %s on %s refused: %s", service, name, e)
            self.close_connection = True
            return
        self._end_chunked()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: ArtifactStore
    sender: PackSender


class GitHttpServer:
    """Serves ``/git/<repo>`` over HTTP from background threads.

    Args:
        store: The artifact store to serve.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see `start`'s return value).
        public_url: Base URL clients use (``http://host:port/git``); derived from the bound
            address when empty.
    """

    def __init__(
        self, store: ArtifactStore, host: str = "127.0.0.1", port: int = 0, public_url: str = ""
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.public_url = public_url
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the repos (``http://host:port/git``)."""
        return self.public_url or f"http://{self.host}:{self.port}/git"

    def start(self) -> int:
        """Bind and serve in a background thread; return the bound port.

        Sets the store's ``clone_base_url`` when it has none, so clone URLs point here.
        """
        server = _Server((self.host, self.port), _Handler)
        server.store = self.store
        server.sender = PackSender(self.store.objects, self.store.limits.compression_level)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="git-http", kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        if not self.store.clone_base_url:
            self.store.clone_base_url = self.url
        return self.port

    def stop(self) -> None:
        """Stop accepting requests and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
