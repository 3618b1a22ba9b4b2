"""Validation of everything that enters the store: names, paths, refs and raw git objects.

Every way in (the commit API, `git push`, raw ingest) runs the same checks, modelled on
`git fsck --strict` plus the checkout protections git applies on macOS and Windows
(``core.protectHFS`` / ``core.protectNTFS``): a tree entry that some filesystem would read as
``.git``, ``.`` or ``..`` is refused here, so nothing downstream (a sandbox checking a commit out
onto disk) ever meets one.
"""

from __future__ import annotations

import re
import unicodedata

from artifacts._errors import InvalidArgumentError

__all__ = [
    "ALLOWED_TREE_MODES",
    "MODE_BLOB",
    "MODE_EXEC",
    "MODE_GITLINK",
    "MODE_LINK",
    "MODE_TREE",
    "check_author",
    "check_commit_raw",
    "check_entry_name",
    "check_message",
    "check_ref_name",
    "check_repo_name",
    "check_tag_raw",
    "parse_tree_strict",
    "split_path",
]

MODE_BLOB = 0o100644
MODE_EXEC = 0o100755
MODE_LINK = 0o120000
MODE_TREE = 0o040000
MODE_GITLINK = 0o160000

# The exact ASCII spellings git writes. Anything else ("100664", zero-padded "040000") is what
# fsck --strict reports as badFilemode / zeroPaddedFilemode.
ALLOWED_TREE_MODES: dict[bytes, int] = {
    b"100644": MODE_BLOB,
    b"100755": MODE_EXEC,
    b"120000": MODE_LINK,
    b"40000": MODE_TREE,
    b"160000": MODE_GITLINK,
}

_REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9_-]+)*$")
_HEX40 = re.compile(rb"^[0-9a-f]{40}$")

# Code points HFS+ ignores when comparing names (git's is_hfs_dotgit list): ".g\u200cit" is
# ".git" on a Mac.
_HFS_IGNORABLE = frozenset(
    [8204, 8205, 8206, 8207, 8234, 8235, 8236, 8237, 8238, *list(range(8298, 8304)), 65279]
)
_FORBIDDEN_NAMES = frozenset({".", "..", ".git", "git~1"})
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def check_repo_name(name: str, field: str = "name") -> str:
    """Validate a repository name: lowercase letters, digits, ``-``, ``_``, inner dots.

    Args:
        name: The proposed name.
        field: Field name reported in the error.

    Returns:
        The name, unchanged.

    Raises:
        InvalidArgumentError: When the name is empty, too long, or has other characters.
    """
    if not name:
        raise InvalidArgumentError(field, "must not be empty")
    if len(name) > 100:
        raise InvalidArgumentError(field, "longer than 100 characters")
    if not _REPO_NAME.match(name) or name.endswith(".git"):
        raise InvalidArgumentError(
            field,
            "use lowercase letters, digits, '-', '_' and inner dots; not ending in '.git'",
        )
    return name


def _normalized(name: str) -> str:
    """Fold a name the way case-insensitive HFS+ and NTFS compare it."""
    kept = "".join(ch for ch in name if ord(ch) not in _HFS_IGNORABLE)
    # NTFS: an alternate data stream suffix (".git::$INDEX_ALLOCATION") names the same file,
    # and trailing dots and spaces are dropped.
    kept = kept.split(":", 1)[0].rstrip(" .") if kept not in (".", "..") else kept
    return unicodedata.normalize("NFC", kept).casefold()


def check_entry_name(raw: bytes, field: str = "name") -> str:
    r"""Validate one tree entry name (one path component).

    Rejects empty names, ``/``, NUL, backslash, ``.``, ``..`` and anything a case-insensitive
    or Unicode-normalizing filesystem would read as ``.git`` (``.GIT``, ``.git.``, ``.git ``,
    ``git~1``, ``.g\\u200cit``, ``.git::$INDEX_ALLOCATION``), and names that are not UTF-8.

    Args:
        raw: The name as bytes.
        field: Field name reported in the error.

    Returns:
        The name decoded as UTF-8.

    Raises:
        InvalidArgumentError: With a reason naming the rule that failed.
    """
    if not raw:
        raise InvalidArgumentError(field, "empty name")
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidArgumentError(field, f"name longer than {MAX_NAME_BYTES} bytes")
    if b"\x00" in raw:
        raise InvalidArgumentError(field, "name contains NUL")
    if b"/" in raw:
        raise InvalidArgumentError(field, "name contains '/'")
    if b"\\" in raw:
        raise InvalidArgumentError(field, "name contains '\\'")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(field, "name is not valid UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidArgumentError(field, "name contains a control character")
    if name in (".", ".."):
        raise InvalidArgumentError(field, f"name {name!r} is not allowed")
    if _normalized(name) in _FORBIDDEN_NAMES:
        raise InvalidArgumentError(field, f"name {name!r} is reserved (reads as .git/./..)")
    return name


def split_path(path: str, field: str = "path") -> list[str]:
    """Split a relative ``/``-separated path and validate every component.

    Args:
        path: A path such as ``src/main.py``.
        field: Field name reported in the error.

    Returns:
        The components.

    Raises:
        InvalidArgumentError: For absolute paths, empty components, ``..`` and the like.
    """
    raw = path.encode("utf-8", "surrogateescape")
    if not raw:
        raise InvalidArgumentError(field, "empty path")
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidArgumentError(field, f"path longer than {MAX_PATH_BYTES} bytes")
    if raw.startswith(b"/"):
        raise InvalidArgumentError(field, "absolute paths are not allowed")
    parts = raw.split(b"/")
    return [check_entry_name(p, field) for p in parts]


def check_author(name: str, email: str, field: str = "author") -> None:
    """Reject identities that would corrupt the commit header (``<``, ``>``, newlines, NUL).

    Raises:
        InvalidArgumentError: When a forbidden character or an empty name is present.
    """
    if not name.strip():
        raise InvalidArgumentError(f"{field}.name", "must not be empty")
    for sub, value in (("name", name), ("email", email)):
        if any(c in value for c in "<>\n\r\x00"):
            raise InvalidArgumentError(f"{field}.{sub}", "contains '<', '>', newline or NUL")
        if len(value) > 256:
            raise InvalidArgumentError(f"{field}.{sub}", "longer than 256 characters")


def check_message(message: str, limit: int, field: str = "message") -> None:
    """Reject commit messages with NUL or above the size limit.

    Raises:
        InvalidArgumentError: When the message is unacceptable.
    """
    if "\x00" in message:
        raise InvalidArgumentError(field, "contains NUL")
    if len(message.encode("utf-8", "surrogateescape")) > limit:
        raise InvalidArgumentError(field, f"longer than {limit} bytes")


def check_ref_name(ref: bytes, field: str = "ref") -> None:
    """Accept only ``refs/heads/*`` and ``refs/tags/*`` names that git itself would accept.

    Raises:
        InvalidArgumentError: For other namespaces or malformed names.
    """
    from dulwich.refs import Ref, check_ref_format

    if not (ref.startswith(b"refs/heads/") or ref.startswith(b"refs/tags/")):
        raise InvalidArgumentError(field, "only refs/heads/* and refs/tags/* may be written")
    if len(ref) > 1024 or not check_ref_format(Ref(ref)):
        raise InvalidArgumentError(field, "malformed ref name")
    for part in ref.split(b"/"):
        check_entry_name(part, field)


def parse_tree_strict(raw: bytes, field: str = "tree") -> list[tuple[bytes, int, bytes]]:
    r"""Parse a raw tree object, applying git fsck --strict rules and the name rules above.

    Entries must use canonical modes, valid names, no duplicates (a file and a directory of
    the same name count as duplicates) and git's sort order (directories compare as
    ``name/``).

    Args:
        raw: The tree's content (without the ``tree <size>\\0`` header).
        field: Field name reported in the error.

    Returns:
        ``(name, mode, binary id)`` per entry, in order.

    Raises:
        InvalidArgumentError: On the first violation.
    """
    entries: list[tuple[bytes, int, bytes]] = []
    seen: set[bytes] = set()
    prev_key: bytes | None = None
    pos, end = 0, len(raw)
    while pos < end:
        space = raw.find(b" ", pos, pos + 8)
        if space < 0:
            raise InvalidArgumentError(field, "malformed tree entry mode")
        mode_raw = raw[pos:space]
        mode = ALLOWED_TREE_MODES.get(mode_raw)
        if mode is None:
            raise InvalidArgumentError(field, f"bad mode {mode_raw!r}")
        nul = raw.find(b"\x00", space + 1)
        if nul < 0 or nul + 21 > end:
            raise InvalidArgumentError(field, "truncated tree entry")
        name = raw[space + 1 : nul]
        check_entry_name(name, f"{field}.entry")
        if name in seen:
            raise InvalidArgumentError(f"{field}.entry", f"duplicate entry {name!r}")
        seen.add(name)
        key = name + b"/" if mode == MODE_TREE else name
        if prev_key is not None and key <= prev_key:
            raise InvalidArgumentError(f"{field}.entry", f"entries not sorted at {name!r}")
        prev_key = key
        entries.append((name, mode, raw[nul + 1 : nul + 21]))
        pos = nul + 21
    # A file "a" and a directory "a" are both in `seen` under the same name, caught above
    # whatever their order.
    return entries


def _check_ident_line(line: bytes, field: str) -> None:
    # "Name <email> 1700000000 +0000"
    if not re.match(rb"^[^<>\n]*<[^<>\n]*> \d{1,15} [+-]\d{4}$", line):
        raise InvalidArgumentError(field, "malformed identity line")


def check_commit_raw(raw: bytes, field: str = "commit") -> tuple[bytes, list[bytes]]:
    """Check a raw commit's header like fsck: one tree, parents, author, committer.

    Returns:
        The tree id and the parent ids (hex).

    Raises:
        InvalidArgumentError: On a malformed header.
    """
    header, _, _ = raw.partition(b"\n\n")
    lines = header.split(b"\n")
    if not lines or not lines[0].startswith(b"tree "):
        raise InvalidArgumentError(field, "missing tree line")
    tree = lines[0][5:]
    if not _HEX40.match(tree):
        raise InvalidArgumentError(field, "bad tree id")
    parents: list[bytes] = []
    i = 1
    while i < len(lines) and lines[i].startswith(b"parent "):
        parent = lines[i][7:]
        if not _HEX40.match(parent):
            raise InvalidArgumentError(field, "bad parent id")
        parents.append(parent)
        i += 1
    if i >= len(lines) or not lines[i].startswith(b"author "):
        raise InvalidArgumentError(field, "missing author line")
    _check_ident_line(lines[i][7:], f"{field}.author")
    i += 1
    if i >= len(lines) or not lines[i].startswith(b"committer "):
        raise InvalidArgumentError(field, "missing committer line")
    _check_ident_line(lines[i][10:], f"{field}.committer")
    return tree, parents


def check_tag_raw(raw: bytes, field: str = "tag") -> bytes:
    """Check a raw annotated tag's header: object, type, tag name.

    Returns:
        The tagged object's id (hex).

    Raises:
        InvalidArgumentError: On a malformed header.
    """
    header, _, _ = raw.partition(b"\n\n")
    lines = header.split(b"\n")
    if len(lines) < 3 or not lines[0].startswith(b"object "):
        raise InvalidArgumentError(field, "missing object line")
    target = lines[0][7:]
    if not _HEX40.match(target):
        raise InvalidArgumentError(field, "bad object id")
    if lines[1] not in (b"type blob", b"type tree", b"type commit", b"type tag"):
        raise InvalidArgumentError(field, "bad type line")
    if not lines[2].startswith(b"tag ") or len(lines[2]) == 4:
        raise InvalidArgumentError(field, "missing tag line")
    return target
