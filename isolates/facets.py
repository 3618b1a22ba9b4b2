"""Facets: named, private SQLite databases that isolates see at /facet/db.sqlite.

A facet is one SQLite file in its own directory, ``DATA_DIR/facets/<name>/db.sqlite``. The
directory (not the file) is what an isolate receives: WASI preopens directories and jails
bind-mount them, and SQLite keeps its rollback journal (``db.sqlite-journal``) next to the
database. Inside an isolate the database is always at ``/facet/db.sqlite``.

Why grants: a WASM guest has no file locks (WASI has none, and SQLite's WAL is silently
ignored there), so SQLite cannot serialize two writers that share the file. The store therefore
hands each facet to exactly one holder at a time, an execution or a host-side query, in FIFO
order. Different facets never wait for each other. Every operation of this module that touches
a database file takes the grant; `FacetStore.grant` is how the executor takes it for an
execution and passes the yielded directory to ``IsolateFactory.create(facet_dir=...)``.

Why the host distrusts every facet: the guest writes the database (and can write anything else
into the directory), so each host-side open treats the file as hostile input: only regular
files are opened (planted symlinks, FIFOs and directories named like SQLite's files are
removed first), ``trusted_schema`` is off, defensive mode is on, ATTACH is impossible
(authorizer and a zero attach limit), extensions cannot load, pragmas are allow-listed and a
progress handler stops runaway statements. Imports get the same treatment plus
``PRAGMA quick_check`` before they are moved into place.

Durability: journal mode DELETE and ``synchronous=FULL`` on every host connection, and files
are fsynced before they are renamed into place, so a kill -9 of the server loses no committed
row.

One `FacetStore` per data directory per process: grants are in-process.
This module knows nothing of gRPC; executor/facets_service.py translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final
from urllib.parse import quote

__all__ = [
    "DB_FILE",
    "FACET_NAME_PATTERN",
    "GUEST_DB_PATH",
    "GUEST_FACET_DIR",
    "FacetBusy",
    "FacetCorrupt",
    "FacetError",
    "FacetExists",
    "FacetGrant",
    "FacetInfo",
    "FacetLimits",
    "FacetNotFound",
    "FacetQueryAborted",
    "FacetQueryDenied",
    "FacetQueryError",
    "FacetStore",
    "InvalidFacetImport",
    "InvalidFacetName",
    "QueryBatch",
    "QueryResult",
    "SqlValue",
    "validate_facet_name",
]

log = logging.getLogger(__name__)

FACET_NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Facet names: lowercase, digits, `_` and `-`, 1-63 characters, no leading punctuation.

The pattern alone keeps names from being paths (no `/`, `.`, NUL) and keeps them apart from
the store's own `.tmp` directory."""
DB_FILE: Final = "db.sqlite"
"""The database's file name inside a facet directory."""
GUEST_FACET_DIR: Final = "/facet"
"""Where isolates see the facet directory."""
GUEST_DB_PATH: Final = f"{GUEST_FACET_DIR}/{DB_FILE}"
"""Where isolates see the facet database."""

# SQLite's companion files of DB_FILE. Each is opened by SQLite on the host, so each must be a
# regular file or absent before the host touches the database.
_COMPANIONS: Final = tuple(f"{DB_FILE}{suffix}" for suffix in ("-journal", "-wal", "-shm"))
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_TMP_DIR: Final = ".tmp"
_CHUNK: Final = 256 * 1024
# The progress handler runs every this many virtual-machine instructions.
_PROGRESS_STEP: Final = 1000

SqlValue = None | int | float | str | bytes
"""A value SQLite stores or binds: NULL, INTEGER, REAL, TEXT or BLOB."""


# --------------------------------------------------------------------------------------------
# Errors


class FacetError(Exception):
    """Root of every error this module raises."""


class InvalidFacetName(FacetError, ValueError):
    """The name does not match `FACET_NAME_PATTERN`."""


class FacetNotFound(FacetError, LookupError):
    """No facet of that name exists."""


class FacetExists(FacetError):
    """An import without `replace` targeted an existing facet."""


class FacetBusy(FacetError, TimeoutError):
    """The facet stayed granted to another holder for longer than the caller's timeout."""


class FacetCorrupt(FacetError):
    """The facet's database file is damaged or not a database (the guest owns its bytes)."""


class FacetQueryDenied(FacetError, PermissionError):
    """A host query tried something the authorizer forbids (ATTACH, a pragma, an extension)."""


class FacetQueryAborted(FacetError):
    """A host query ran past its time or instruction budget and was stopped."""


class FacetQueryError(FacetError, ValueError):
    """The SQL or its parameters are wrong (syntax, binding count, constraint, type).

    Attributes:
        field: which input is at fault: "sql" or "params".
    """

    def __init__(self, message: str, *, field: str = "sql") -> None:
        super().__init__(message)
        self.field = field


class InvalidFacetImport(FacetError, ValueError):
    """An uploaded database failed validation and was not installed."""


def validate_facet_name(name: str) -> str | None:
    """Return why `name` is not a valid facet name, or None when it is.

    Args:
        name: the candidate name, as sent by a client.
    """
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if not FACET_NAME_PATTERN.fullmatch(name):
        return "must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
    return None


def _check_name(name: str) -> str:
    reason = validate_facet_name(name)
    if reason is not None:
        raise InvalidFacetName(f"facet name {name!r} {reason}")
    return name


# --------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class FacetLimits:
    """Budgets and caps of host-side facet work. A request's own value is clamped to these."""

    default_max_rows: int = 10_000
    """Rows a query returns when the caller asks for no particular cap."""
    max_rows: int = 1_000_000
    """The most rows any query may return."""
    default_max_bytes: int = 16 * 1024**2
    """Bytes of row data a query returns when the caller asks for no particular cap."""
    max_bytes: int = 64 * 1024**2
    """The most bytes of row data any query may return."""
    default_query_time_s: float = 5.0
    """Wall time a host query may hold the facet when the caller sets no budget."""
    max_query_time_s: float = 60.0
    """The most wall time any host query may hold the facet."""
    query_instructions: int = 2_000_000_000
    """SQLite virtual-machine instructions one query may run."""
    max_sql_bytes: int = 1024**2
    """Longest SQL text accepted (SQLITE_LIMIT_SQL_LENGTH)."""
    max_value_bytes: int = 32 * 1024**2
    """Largest string or blob a host query may build (SQLITE_LIMIT_LENGTH)."""
    max_import_bytes: int = 1024**3
    """Largest database an import accepts."""
    import_check_time_s: float = 120.0
    """Wall time `PRAGMA quick_check` of an import may take."""


@dataclass(frozen=True)
class FacetInfo:
    """What `FacetStore.list` reports about one facet."""

    name: str
    size_bytes: int
    """Size of db.sqlite on disk."""
    modified: float
    """Last modification of db.sqlite, in seconds since the epoch."""


@dataclass(frozen=True)
class QueryBatch:
    """A slice of a query's rows; `columns` is the same on every batch of one query."""

    columns: tuple[str, ...]
    rows: list[tuple[SqlValue, ...]]


@dataclass
class QueryResult:
    """A whole query's answer (the rows kept within the caps)."""

    columns: tuple[str, ...] = ()
    rows: list[tuple[SqlValue, ...]] = field(default_factory=list)
    truncated: bool = False
    """True when more rows existed than the row or byte cap let through."""
    rows_changed: int = 0
    """Rows inserted, updated or deleted by the statement."""


@dataclass
class _QueryOutcome:
    """Filled in by a running query, read after its last batch."""

    truncated: bool = False
    rows_changed: int = 0


# --------------------------------------------------------------------------------------------
# Grants: a FIFO lock usable from threads and from asyncio at once


class _Waiter:
    """One queued acquirer; `granted` flips under the lock's mutex only."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.granted = False
        self.event = threading.Event() if loop is None else None
        self.loop = loop
        self.future = future

    def wake(self) -> bool:
        """Hand the lock over; False when the waiter can no longer take it."""
        self.granted = True
        if self.event is not None:
            self.event.set()
            return True
        assert self.loop is not None and self.future is not None
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the waiter's event loop is closed: nobody will release
            self.granted = False
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _FairLock:
    """A FIFO mutex: release hands ownership straight to the oldest waiter.

    Handing over (instead of letting waiters race) gives FIFO order and lets thread and
    asyncio waiters share one queue. Whether a waiter owns the lock is decided only under
    `_mutex`, so a timeout racing a handover never loses or duplicates ownership.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[_Waiter] = deque()

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self, timeout: float | None) -> bool:
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            if timeout is not None and timeout <= 0:
                return False
            waiter = _Waiter()
            self._waiters.append(waiter)
        assert waiter.event is not None
        waiter.event.wait(timeout)
        with self._mutex:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    async def acquire_async(self, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            if timeout is not None and timeout <= 0:
                return False
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(loop, future)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        except BaseException:
            # Cancelled while queued: leave the queue, or pass on a grant that just arrived.
            with self._mutex:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            self.release()
            raise
        with self._mutex:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of a facet grant that is not held")
            while self._waiters:
                if self._waiters.popleft().wake():
                    return
            self._held = False


class FacetGrant:
    """Exclusive use of one facet: ``with`` from a thread, ``async with`` from asyncio.

    Entering waits (FIFO) up to `timeout` seconds, raises `FacetBusy` past it, and yields the
    facet directory (holding db.sqlite) with the database created if needed and every planted
    non-regular SQLite companion removed. Leaving releases the facet to the next waiter.
    """

    def __init__(self, store: FacetStore, name: str, timeout: float | None, create: bool) -> None:
        self._store = store
        self._name = name
        self._timeout = timeout
        self._create = create
        self._lock = store._lock_for(name)
        self._entered = False

    @property
    def name(self) -> str:
        """The granted facet's name."""
        return self._name

    def __enter__(self) -> Path:
        if not self._lock.acquire(self._timeout):
            raise self._busy()
        self._entered = True
        try:
            return self._store._prepare(self._name, create=self._create)
        except BaseException:
            self._release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    async def __aenter__(self) -> Path:
        if not await self._lock.acquire_async(self._timeout):
            raise self._busy()
        self._entered = True
        try:
            return await _in_thread(self._store._prepare, self._name, create=self._create)
        except BaseException:
            self._release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._entered:
            self._entered = False
            self._lock.release()

    def _busy(self) -> FacetBusy:
        return _busy(self._name, self._timeout)


def _busy(name: str, timeout: float | None) -> FacetBusy:
    waited = "" if timeout is None else f" for {timeout:g}s"
    return FacetBusy(f"facet {name!r} is busy: another execution or query held it{waited}")


async def _in_thread[**P, T](fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking `fn` in the default executor; on cancellation wait for it to finish.

    Waiting matters: the caller releases a grant (or closes a connection) right after, and
    must not do so while the thread still uses the database.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, lambda: fn(*args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


async def _step[**P, T](
    cancel: threading.Event, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`_in_thread` for SQLite work that watches `cancel`: set it first, then wait."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, lambda: fn(*args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The progress handler sees the flag within a few thousand instructions.
        cancel.set()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


# --------------------------------------------------------------------------------------------
# Host connections


# Pragmas host queries may run. Introspection pragmas take a table or index name as argument;
# the value pragmas are allowed only as reads (no argument), so no query can change how the
# connection protects itself (trusted_schema, writable_schema, journal_mode, mmap_size...).
_PRAGMAS_WITH_ARG: Final = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "user_version",
        "application_id",
    }
)
_PRAGMAS_READ: Final = frozenset(
    {
        "page_count",
        "page_size",
        "freelist_count",
        "encoding",
        "foreign_keys",
        "data_version",
        "schema_version",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "journal_mode",
        "synchronous",
        "auto_vacuum",
        "database_list",
    }
)
_DENIED_FUNCTIONS: Final = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile"})


class _Guard:
    """Authorizer and progress handler of one host connection; remembers why it said no."""

    def __init__(self, deadline: float, instructions: int, cancel: threading.Event) -> None:
        self.deadline = deadline
        self.steps_left = max(1, instructions // _PROGRESS_STEP)
        self.cancel = cancel
        self.denied: str | None = None
        self.aborted: str | None = None

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            # VACUUM (and VACUUM INTO a path) attach a database internally: denied as well.
            return self._deny("ATTACH, DETACH and VACUUM are not allowed on a facet")
        if action == sqlite3.SQLITE_PRAGMA:
            pragma = (arg1 or "").lower()
            if pragma in _PRAGMAS_WITH_ARG or (pragma in _PRAGMAS_READ and arg2 is None):
                return sqlite3.SQLITE_OK
            return self._deny(f"PRAGMA {pragma} is not allowed on a facet")
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return self._deny(f"function {arg2}() is not allowed on a facet")
        return sqlite3.SQLITE_OK

    def _deny(self, reason: str) -> int:
        self.denied = reason
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        self.steps_left -= 1
        if self.cancel.is_set():
            self.aborted = "the query was cancelled"
        elif self.steps_left <= 0:
            self.aborted = "the query ran past its instruction budget"
        elif time.monotonic() > self.deadline:
            self.aborted = "the query ran past its time budget"
        else:
            return 0
        return 1


def _sql_error(guard: _Guard | None, error: sqlite3.Error, what: str) -> FacetError:
    """Translate a sqlite3 error of a host statement into this module's errors."""
    if guard is not None and guard.aborted:
        return FacetQueryAborted(guard.aborted)
    if guard is not None and guard.denied:
        return FacetQueryDenied(guard.denied)
    message = str(error)
    if isinstance(error, sqlite3.DatabaseError) and (
        "malformed" in message or "not a database" in message or "corrupt" in message
    ):
        return FacetCorrupt(f"{what}: the database is damaged ({message})")
    if isinstance(error, (sqlite3.ProgrammingError, sqlite3.OperationalError)) and (
        "not authorized" in message
        or "prohibited" in message
        or "too many attached" in message
        # trusted_schema off: a view or trigger in the file calls a function with side effects
        or "unsafe use of" in message
    ):
        return FacetQueryDenied(message)
    if isinstance(error, sqlite3.ProgrammingError) and "binding" in message:
        return FacetQueryError(f"params: {message}", field="params")
    return FacetQueryError(f"{what}: {message}")


def _decode_text(raw: bytes) -> str:
    # Guests may store any bytes as TEXT; a host reader must not fail on them.
    return raw.decode("utf-8", "replace")


def _connect(path: Path, *, limits: FacetLimits, read_only: bool = False) -> sqlite3.Connection:
    """Open `path` (already checked to be a regular file) as a hostile database, hardened."""
    mode = "ro" if read_only else "rw"
    conn = sqlite3.connect(
        f"file:{quote(str(path))}?mode={mode}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=5.0,
    )
    try:
        conn.text_factory = _decode_text
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_TRUSTED_SCHEMA, False)
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, False)
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, False)
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_WRITABLE_SCHEMA, False)
        if hasattr(conn, "enable_load_extension"):
            conn.enable_load_extension(False)
        # A zero attach limit makes ATTACH fail even if the authorizer were bypassed.
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, limits.max_sql_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        conn.execute("PRAGMA mmap_size=0")
        if not read_only:
            # A jail guest may have switched the file to WAL; WASM guests ignore WAL, so the
            # host puts the file back into rollback-journal mode before anyone else sees it.
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _row_bytes(row: tuple[SqlValue, ...]) -> int:
    """Bytes a row counts against a query's byte cap (8 per number, 1 per NULL)."""
    size = 0
    for value in row:
        if value is None:
            size += 1
        elif isinstance(value, str):
            # isascii() is O(1) in CPython; only other text pays for an encode.
            size += len(value) if value.isascii() else len(value.encode("utf-8", "replace"))
        elif isinstance(value, bytes):
            size += len(value)
        else:
            size += 8
    return size


def _header_says_wal(path: Path) -> bool:
    # Bytes 18 and 19 of the header are the read/write format versions; 2 means WAL.
    with open(path, "rb") as handle:
        header = handle.read(20)
    return len(header) == 20 and header.startswith(_SQLITE_MAGIC) and 2 in header[18:20]


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_read(path: Path) -> BinaryIO:
    return open(path, "rb")


def _open_new(path: Path) -> BinaryIO:
    return open(path, "xb")


def _remove_entry(path: Path) -> None:
    """Remove whatever `path` is without following it (a link, a FIFO, a directory tree)."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


# --------------------------------------------------------------------------------------------
# The store


class FacetStore:
    """Named facets under ``data_dir/facets``; thread-safe and asyncio-friendly.

    Blocking methods (`query`, `export_to`, `import_file`...) are for threads; their ``a``
    counterparts run the SQLite work off the event loop and never block it.

    Args:
        data_dir: sandboxd's data directory; facets live in its ``facets/`` subdirectory.
        limits: caps and budgets of host-side work.
        guest_owner: (uid, gid) that guests run as on the host (a jail's mapped uid). When
            set, every grant hands the facet directory and its SQLite files to that owner so
            the guest can write the database and create its journal.
    """

    def __init__(
        self,
        data_dir: Path,
        limits: FacetLimits | None = None,
        *,
        guest_owner: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(data_dir).resolve() / "facets"
        self.limits = limits or FacetLimits()
        self.guest_owner = guest_owner
        self._tmp = self.root / _TMP_DIR
        self._locks: dict[str, _FairLock] = {}
        self._locks_mutex = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A jail bind-mounts the facet directory as the guest's host uid, which must be able to
        # traverse the root: search permission only, so the guest uid still cannot list names.
        self.root.chmod(0o711 if guest_owner is not None else 0o700)
        # Leftovers of a crash (half-uploaded imports, exports, deleted facets) are garbage.
        if self._tmp.is_dir() and not self._tmp.is_symlink():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(mode=0o700, exist_ok=True)

    # ---- names, paths, grants -------------------------------------------------------------

    def facet_dir(self, name: str) -> Path:
        """The host directory of facet `name` (it may not exist yet).

        Raises:
            InvalidFacetName: the name is not valid.
        """
        return self.root / _check_name(name)

    def exists(self, name: str) -> bool:
        """Whether facet `name` exists (its directory holds a database file)."""
        directory = self.facet_dir(name)
        try:
            return stat.S_ISDIR(os.lstat(directory).st_mode) and os.path.lexists(
                directory / DB_FILE
            )
        except FileNotFoundError:
            return False

    def _lock_for(self, name: str) -> _FairLock:
        with self._locks_mutex:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = _FairLock()
            return lock

    def grant(self, name: str, timeout: float | None = None, *, create: bool = True) -> FacetGrant:
        """Take exclusive use of facet `name`, for an execution or host work.

        Use as ``with store.grant(name, timeout=5) as facet_dir:`` from a thread or
        ``async with`` from asyncio; pass ``facet_dir`` to
        ``IsolateFactory.create(facet_dir=...)`` and keep the grant until the isolate is
        destroyed. Grants are FIFO per facet; different facets never wait for each other.

        Args:
            name: the facet's name.
            timeout: seconds to wait for the facet; None waits forever, 0 does not wait.
            create: create the facet (an empty database) when it does not exist; when False a
                missing facet raises `FacetNotFound` once the grant is taken.

        Raises:
            InvalidFacetName: at once, for an invalid name.
            FacetBusy: on entry, when the facet stayed held past `timeout`.
            FacetNotFound: on entry, when `create` is False and the facet does not exist.
        """
        _check_name(name)
        return FacetGrant(self, name, timeout, create)

    def _prepare(self, name: str, *, create: bool) -> Path:
        """Under the grant: make the directory safe to open and return it."""
        directory = self.root / name
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            if not create:
                raise FacetNotFound(f"facet {name!r} does not exist") from None
            self._create(name)
            self._give_to_guest(directory)
            return directory
        if not stat.S_ISDIR(st.st_mode):
            # Only the store writes under root; anything else here is damage, not a facet.
            raise FacetCorrupt(f"facet {name!r}: its path is not a directory")
        for entry in (DB_FILE, *_COMPANIONS):
            path = directory / entry
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):
                # A guest planted a link, FIFO or directory where SQLite will open a file; the
                # host must never follow it (it could point at another facet or a host file).
                log.warning("facet %s: removing non-regular %s", name, entry)
                _remove_entry(path)
        db = directory / DB_FILE
        if not db.exists():
            if not create:
                raise FacetNotFound(f"facet {name!r} has no database")
            self._init_db(db)
        elif _header_says_wal(db):
            # A jail guest switched the file to WAL. WASM guests have no shared memory for
            # WAL, so the next holder gets it back in rollback-journal mode (the host
            # connection checkpoints and converts it).
            with contextlib.suppress(sqlite3.Error):
                _connect(db, limits=self.limits).close()
        self._give_to_guest(directory)
        return directory

    def _give_to_guest(self, directory: Path) -> None:
        """Under the grant, after the checks: make the facet writable by the guest's uid."""
        if self.guest_owner is None:
            return
        uid, gid = self.guest_owner
        # Never follow links: only the directory and the regular files checked above change.
        os.chown(directory, uid, gid, follow_symlinks=False)
        for entry in (DB_FILE, *_COMPANIONS):
            path = directory / entry
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.chown(path, uid, gid, follow_symlinks=False)

    def _create(self, name: str) -> None:
        staging = Path(self._new_tmp_dir())
        self._init_db(staging / DB_FILE)
        try:
            # Renaming a complete directory into place means a crash never leaves a facet
            # without its database.
            os.rename(staging, self.root / name)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)

    def _init_db(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            # Writing the header now makes the file a database for guests that open it
            # read-only and gives `list` a real size.
            conn.execute("PRAGMA user_version=0")
        finally:
            conn.close()
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        _fsync_dir(path.parent)

    def _new_tmp_dir(self) -> str:
        path = self._tmp / uuid.uuid4().hex
        path.mkdir(mode=0o700)
        return str(path)

    # ---- list and delete ---------------------------------------------------------------------

    def list(self) -> list[FacetInfo]:
        """Every facet, sorted by name (reads file metadata only; takes no grant)."""
        facets: list[FacetInfo] = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not FACET_NAME_PATTERN.fullmatch(entry.name):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    st = os.lstat(os.path.join(entry.path, DB_FILE))
                except FileNotFoundError:
                    continue
                facets.append(FacetInfo(entry.name, st.st_size, st.st_mtime))
        return sorted(facets, key=lambda info: info.name)

    def info(self, name: str) -> FacetInfo:
        """Size and modification time of one facet.

        Raises:
            InvalidFacetName: the name is not valid.
            FacetNotFound: no such facet.
        """
        try:
            st = os.lstat(self.facet_dir(name) / DB_FILE)
        except (FileNotFoundError, NotADirectoryError):
            raise FacetNotFound(f"facet {name!r} does not exist") from None
        return FacetInfo(name, st.st_size, st.st_mtime)

    def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Delete facet `name` and everything in its directory, once no one holds it.

        Raises:
            InvalidFacetName: the name is not valid.
            FacetNotFound: no such facet.
            FacetBusy: the facet stayed held past `timeout`.
        """
        with self.grant(name, timeout=timeout, create=False):
            self._delete_locked(name)

    async def adelete(self, name: str, *, timeout: float | None = None) -> None:
        """Async `delete`."""
        async with self.grant(name, timeout=timeout, create=False):
            await _in_thread(self._delete_locked, name)

    def _delete_locked(self, name: str) -> None:
        trash = self._tmp / f"deleted-{uuid.uuid4().hex}"
        # One rename makes the facet vanish atomically; the slow removal happens out of sight.
        os.rename(self.root / name, trash)
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    # ---- queries -----------------------------------------------------------------------------

    def _budgets(
        self, max_rows: int | None, max_bytes: int | None, time_s: float | None
    ) -> tuple[int, int, float]:
        lim = self.limits
        rows = lim.default_max_rows if not max_rows or max_rows <= 0 else max_rows
        size = lim.default_max_bytes if not max_bytes or max_bytes <= 0 else max_bytes
        budget = lim.default_query_time_s if not time_s or time_s <= 0 else time_s
        return (
            min(rows, lim.max_rows),
            min(size, lim.max_bytes),
            min(budget, lim.max_query_time_s),
        )

    def _query_steps(
        self,
        directory: Path,
        sql: str,
        params: Sequence[SqlValue] | Mapping[str, SqlValue],
        *,
        max_rows: int,
        max_bytes: int,
        time_s: float,
        read_only: bool,
        batch_rows: int,
        cancel: threading.Event,
        outcome: _QueryOutcome,
    ) -> Generator[QueryBatch]:
        """Run one statement under the grant the caller holds; yield batches of rows.

        Each `next()` does a bounded amount of blocking SQLite work, so the async wrapper can
        run one step per worker-thread call.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise FacetQueryError("sql: is empty")
        if len(sql.encode("utf-8", "surrogatepass")) > self.limits.max_sql_bytes:
            raise FacetQueryError(f"sql: longer than {self.limits.max_sql_bytes} bytes")
        if "\x00" in sql:
            raise FacetQueryError("sql: contains a NUL byte")
        guard = _Guard(time.monotonic() + time_s, self.limits.query_instructions, cancel)
        try:
            conn = _connect(directory / DB_FILE, limits=self.limits)
        except sqlite3.Error as error:
            raise _sql_error(None, error, "open") from None
        try:
            if read_only:
                conn.execute("PRAGMA query_only=ON")
            conn.set_authorizer(guard.authorize)
            conn.set_progress_handler(guard.progress, _PROGRESS_STEP)
            before = conn.total_changes
            try:
                cursor = conn.execute(sql, params)
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as error:
                if isinstance(error, sqlite3.Error):
                    raise _sql_error(guard, error, "sql") from None
                raise FacetQueryError(f"params: {error}", field="params") from None
            columns = tuple(d[0] for d in cursor.description or ())
            used_bytes = 0
            kept = 0
            done = cursor.description is None
            while not done:
                rows: list[tuple[SqlValue, ...]] = []
                try:
                    # fetchmany may step past the cap; harmless, a write has finished by the
                    # first step and the extra rows are dropped.
                    fetched = cursor.fetchmany(min(batch_rows, max_rows - kept + 1))
                except sqlite3.Error as error:
                    raise _sql_error(guard, error, "sql") from None
                if not fetched:
                    done = True
                for row in fetched:
                    size = _row_bytes(row)
                    if kept >= max_rows or used_bytes + size > max_bytes:
                        outcome.truncated = True
                        done = True
                        break
                    rows.append(row)
                    kept += 1
                    used_bytes += size
                if rows:
                    yield QueryBatch(columns, rows)
                if not done and time.monotonic() > guard.deadline:
                    # A slow reader must not hold the facet past the budget either.
                    raise FacetQueryAborted("the query ran past its time budget")
            cursor.close()
            outcome.rows_changed = conn.total_changes - before
            if not columns or kept == 0:
                yield QueryBatch(columns, [])
        finally:
            conn.close()

    def query(
        self,
        name: str,
        sql: str,
        params: Sequence[SqlValue] | Mapping[str, SqlValue] = (),
        *,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        time_s: float | None = None,
        read_only: bool = False,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one SQL statement on facet `name` under the host-query guard (blocking).

        Args:
            name: the facet.
            sql: exactly one statement; `?` or `:name` placeholders.
            params: positional (sequence) or named (mapping) values to bind.
            max_rows: rows to return at most (None or 0: the default; clamped to the limit).
            max_bytes: bytes of row data to return at most (same rules).
            time_s: the wall-time budget of the statement (same rules).
            read_only: refuse any write (``PRAGMA query_only``).
            timeout: seconds to wait for the grant.

        Returns:
            Columns, the rows kept, whether more were cut off, and rows changed.

        Raises:
            InvalidFacetName, FacetNotFound, FacetBusy: as for `grant`.
            FacetQueryDenied: ATTACH, DETACH, a forbidden pragma or function.
            FacetQueryAborted: the statement ran past its time or instruction budget.
            FacetQueryError: bad SQL, bad parameters, a constraint failed, a write with
                `read_only`.
            FacetCorrupt: the database file is damaged.
        """
        outcome = _QueryOutcome()
        rows_cap, size, budget = self._budgets(max_rows, max_bytes, time_s)
        result = QueryResult()
        with self.grant(name, timeout=timeout, create=False) as directory:
            for batch in self._query_steps(
                directory,
                sql,
                params,
                max_rows=rows_cap,
                max_bytes=size,
                time_s=budget,
                read_only=read_only,
                batch_rows=1024,
                cancel=threading.Event(),
                outcome=outcome,
            ):
                result.columns = batch.columns
                result.rows.extend(batch.rows)
        result.truncated = outcome.truncated
        result.rows_changed = outcome.rows_changed
        return result

    async def aiter_query(
        self,
        name: str,
        sql: str,
        params: Sequence[SqlValue] | Mapping[str, SqlValue] = (),
        *,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        time_s: float | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        batch_rows: int = 256,
        outcome: QueryResult | None = None,
    ) -> AsyncIterator[QueryBatch]:
        """Run one SQL statement on facet `name`, yielding rows in batches from worker threads.

        Args:
            name: the facet.
            sql: exactly one statement.
            params: values to bind.
            max_rows: rows to return at most.
            max_bytes: bytes of row data to return at most.
            time_s: the wall-time budget, which also bounds how long a slow consumer holds
                the facet.
            read_only: refuse any write.
            timeout: seconds to wait for the grant.
            batch_rows: rows per batch.
            outcome: when given, its `truncated` and `rows_changed` are set after the last
                batch (an async generator cannot return a value).

        Cancelling the consumer stops the statement at its next progress check, waits for the
        worker thread, then releases the grant.
        """
        state = _QueryOutcome()
        rows_cap, size, budget = self._budgets(max_rows, max_bytes, time_s)
        cancel = threading.Event()
        async with self.grant(name, timeout=timeout, create=False) as directory:
            steps = self._query_steps(
                directory,
                sql,
                params,
                max_rows=rows_cap,
                max_bytes=size,
                time_s=budget,
                read_only=read_only,
                batch_rows=batch_rows,
                cancel=cancel,
                outcome=state,
            )
            try:
                while True:
                    batch = await _step(cancel, next, steps, None)
                    if batch is None:
                        break
                    yield batch
            finally:
                cancel.set()
                # Closing runs the generator's cleanup (conn.close) off the loop.
                await _in_thread(steps.close)
        if outcome is not None:
            outcome.truncated = state.truncated
            outcome.rows_changed = state.rows_changed

    async def aquery(
        self,
        name: str,
        sql: str,
        params: Sequence[SqlValue] | Mapping[str, SqlValue] = (),
        *,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        time_s: float | None = None,
        read_only: bool = False,
        timeout: float | None = None,
    ) -> QueryResult:
        """Async `query` (same arguments, result and errors)."""
        result = QueryResult()
        async for batch in self.aiter_query(
            name,
            sql,
            params,
            max_rows=max_rows,
            max_bytes=max_bytes,
            time_s=time_s,
            read_only=read_only,
            timeout=timeout,
            batch_rows=1024,
            outcome=result,
        ):
            result.columns = batch.columns
            result.rows.extend(batch.rows)
        return result

    # ---- export ------------------------------------------------------------------------------

    def _snapshot(self, directory: Path) -> Path:
        """Under the grant: a consistent copy of the database in a private temp file."""
        tmp_dir = Path(self._new_tmp_dir())
        target = tmp_dir / DB_FILE
        try:
            source = _connect(directory / DB_FILE, limits=self.limits)
            try:
                dest = sqlite3.connect(target, isolation_level=None)
                try:
                    source.backup(dest)
                finally:
                    dest.close()
            finally:
                source.close()
        except sqlite3.Error as error:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise _sql_error(None, error, "export") from None
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        return target

    def export_to(self, name: str, dest: Path, *, timeout: float | None = None) -> int:
        """Write a consistent copy of facet `name` to `dest` (via the SQLite backup API).

        Returns:
            The number of bytes written.

        Raises:
            InvalidFacetName, FacetNotFound, FacetBusy: as for `grant`.
            FacetCorrupt: the database cannot be read.
        """
        with self.grant(name, timeout=timeout, create=False) as directory:
            snapshot = self._snapshot(directory)
        try:
            size = snapshot.stat().st_size
            shutil.copyfile(snapshot, dest)
            return size
        finally:
            shutil.rmtree(snapshot.parent, ignore_errors=True)

    def iter_export(
        self, name: str, *, timeout: float | None = None, chunk_size: int = _CHUNK
    ) -> Iterator[bytes]:
        """Yield a consistent copy of facet `name` in chunks (blocking).

        The grant is held only while the snapshot is taken, not while the caller reads.
        """
        with self.grant(name, timeout=timeout, create=False) as directory:
            snapshot = self._snapshot(directory)
        try:
            with open(snapshot, "rb") as handle:
                while chunk := handle.read(chunk_size):
                    yield chunk
        finally:
            shutil.rmtree(snapshot.parent, ignore_errors=True)

    async def aiter_export(
        self, name: str, *, timeout: float | None = None, chunk_size: int = _CHUNK
    ) -> AsyncIterator[bytes]:
        """Async `iter_export`: the snapshot and the reads run in worker threads."""
        async with self.grant(name, timeout=timeout, create=False) as directory:
            snapshot: Path = await _in_thread(self._snapshot, directory)
        try:
            handle: BinaryIO = await _in_thread(_open_read, snapshot)
            try:
                while chunk := await _in_thread(handle.read, chunk_size):
                    yield chunk
            finally:
                handle.close()
        finally:
            await _in_thread(shutil.rmtree, snapshot.parent, True)

    # ---- import ------------------------------------------------------------------------------

    def _stage(self, chunks: Iterable[bytes]) -> Path:
        """Write uploaded bytes to a private temp file, capped and fsynced."""
        tmp_dir = Path(self._new_tmp_dir())
        target = tmp_dir / DB_FILE
        total = 0
        try:
            with open(target, "xb") as handle:
                for chunk in chunks:
                    total += len(chunk)
                    if total > self.limits.max_import_bytes:
                        raise InvalidFacetImport(
                            f"data: larger than {self.limits.max_import_bytes} bytes"
                        )
                    handle.write(chunk)
                _flush_and_sync(handle)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        return target

    def _validate_staged(self, staged: Path) -> None:
        """Check that the staged file is a sound SQLite database; convert it to DELETE mode."""
        with open(staged, "rb") as handle:
            header = handle.read(100)
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            raise InvalidFacetImport("data: not an SQLite 3 database (bad header)")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            raise InvalidFacetImport("data: not an SQLite 3 database (bad page size)")
        if staged.stat().st_size % page_size:
            raise InvalidFacetImport("data: truncated (size is not a multiple of the page size)")
        guard = _Guard(
            time.monotonic() + self.limits.import_check_time_s,
            self.limits.query_instructions * 10,
            threading.Event(),
        )
        try:
            conn = _connect(staged, limits=self.limits)
        except sqlite3.Error as error:
            raise InvalidFacetImport(f"data: cannot be opened ({error})") from None
        try:
            conn.set_progress_handler(guard.progress, _PROGRESS_STEP)
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()
                result = [row[0] for row in conn.execute("PRAGMA quick_check")]
            except sqlite3.Error as error:
                if guard.aborted:
                    raise InvalidFacetImport(f"data: check stopped, {guard.aborted}") from None
                raise InvalidFacetImport(f"data: not a sound database ({error})") from None
            if result != ["ok"]:
                shown = "; ".join(str(r) for r in result[:5])
                raise InvalidFacetImport(f"data: PRAGMA quick_check failed: {shown}")
            if mode is None or str(mode[0]).lower() != "delete":
                raise InvalidFacetImport("data: could not switch to journal mode DELETE")
        finally:
            conn.close()
        for companion in _COMPANIONS:
            with contextlib.suppress(FileNotFoundError):
                (staged.parent / companion).unlink()
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())

    def _install(self, name: str, staged: Path, replace: bool) -> FacetInfo:
        """Under the grant: move a validated database into place atomically."""
        directory = self.root / name
        if not directory.exists():
            os.rename(staged.parent, directory)
            _fsync_dir(self.root)
            return self.info(name)
        if not replace:
            raise FacetExists(f"facet {name!r} already exists (set replace to overwrite it)")
        # A leftover journal belongs to the old database; rolled into the new one it would
        # corrupt it, so it goes first.
        for companion in _COMPANIONS:
            path = directory / companion
            if os.path.lexists(path):
                _remove_entry(path)
        _fsync_dir(directory)
        os.replace(staged, directory / DB_FILE)
        _fsync_dir(directory)
        shutil.rmtree(staged.parent, ignore_errors=True)
        return self.info(name)

    def import_chunks(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        replace: bool = False,
        timeout: float | None = None,
    ) -> FacetInfo:
        """Validate an uploaded database and install it as facet `name` (blocking).

        The bytes are staged under the data directory, checked (header, opened with
        trusted_schema off and defensive mode, ``PRAGMA quick_check``), switched to journal
        mode DELETE, and only then renamed into place under the facet's grant.

        Args:
            name: the facet to create or replace.
            chunks: the database file's bytes.
            replace: overwrite an existing facet instead of failing.
            timeout: seconds to wait for the grant.

        Raises:
            InvalidFacetName: the name is not valid (checked before reading any chunk).
            InvalidFacetImport: the bytes are not a sound SQLite database or are too large.
            FacetExists: the facet exists and `replace` is False.
            FacetBusy: the facet stayed held past `timeout`.
        """
        _check_name(name)
        staged = self._stage(chunks)
        try:
            self._validate_staged(staged)
            with self._locked(name, timeout):
                return self._install(name, staged, replace)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    def import_file(
        self, name: str, source: Path, *, replace: bool = False, timeout: float | None = None
    ) -> FacetInfo:
        """`import_chunks` from a file on the host."""
        with open(source, "rb") as handle:
            return self.import_chunks(
                name, iter(lambda: handle.read(_CHUNK), b""), replace=replace, timeout=timeout
            )

    async def aimport_chunks(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        replace: bool = False,
        timeout: float | None = None,
    ) -> FacetInfo:
        """Async `import_chunks`: file writes, validation and the rename run off the loop."""
        _check_name(name)
        tmp_dir = Path(await _in_thread(self._new_tmp_dir))
        staged = tmp_dir / DB_FILE
        try:
            handle: BinaryIO = await _in_thread(_open_new, staged)
            total = 0
            try:
                async for chunk in chunks:
                    total += len(chunk)
                    if total > self.limits.max_import_bytes:
                        raise InvalidFacetImport(
                            f"data: larger than {self.limits.max_import_bytes} bytes"
                        )
                    await _in_thread(handle.write, chunk)
                await _in_thread(_flush_and_sync, handle)
            finally:
                handle.close()
            await _in_thread(self._validate_staged, staged)
            lock = self._lock_for(name)
            if not await lock.acquire_async(timeout):
                raise _busy(name, timeout)
            try:
                return await _in_thread(self._install, name, staged, replace)
            finally:
                lock.release()
        finally:
            await _in_thread(shutil.rmtree, tmp_dir, True)

    @contextlib.contextmanager
    def _locked(self, name: str, timeout: float | None) -> Iterator[None]:
        """The bare grant, without preparing the directory (install makes it)."""
        lock = self._lock_for(name)
        if not lock.acquire(timeout):
            raise _busy(name, timeout)
        try:
            yield
        finally:
            lock.release()
