"""What a repo may see of the shared store: the objects reachable from its own refs.

The store is shared, so an object id alone must never grant access: someone who learned the id
of another tenant's commit could otherwise read it through their own repo, point a pushed ref
at it, or send a thin-pack delta against it and copy its bytes. Every place that accepts an id
from a caller (a commit's parents, a ref or commit to read, an external base or reference in a
pushed pack) asks `Reachability.contains` first.

The walk is lazy and stops as soon as the id is found, so the common cases (a branch tip, the
parent of a new commit) cost a handful of lookups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID

from artifacts._packwrite import OBJ_COMMIT, OBJ_TAG, OBJ_TREE
from artifacts._validate import MODE_GITLINK, MODE_TREE

__all__ = ["Reachability", "ancestors_among"]


class Reachability:
    """Lazily enumerates the objects reachable from a set of tips (hex ids)."""

    def __init__(self, store: BaseObjectStore, tips: Iterable[bytes]) -> None:
        self._store = store
        self._seen: set[bytes] = set()
        self._todo: deque[bytes] = deque()
        for tip in tips:
            self._push(tip)

    def _push(self, sha: bytes) -> None:
        if sha not in self._seen:
            self._seen.add(sha)
            self._todo.append(sha)

    def contains(self, sha: bytes) -> bool:
        """Whether ``sha`` (hex) is reachable from the tips."""
        while sha not in self._seen and self._todo:
            self._expand(self._todo.popleft())
        return sha in self._seen

    def _expand(self, sha: bytes) -> None:
        try:
            type_num, raw = self._store.get_raw(ObjectID(sha))
        except KeyError:
            return
        if type_num == OBJ_COMMIT:
            for linked in _commit_links(raw, (b"tree ", b"parent ")):
                self._push(linked)
        elif type_num == OBJ_TREE:
            pos = 0
            while pos < len(raw):
                space = raw.index(b" ", pos)
                nul = raw.index(b"\x00", space)
                mode = int(raw[pos:space], 8)
                child = raw[nul + 1 : nul + 21].hex().encode()
                if mode == MODE_TREE:
                    self._push(child)
                elif mode != MODE_GITLINK:
                    # Blobs have no children: mark them seen without reading them.
                    self._seen.add(child)
                pos = nul + 21
        elif type_num == OBJ_TAG:
            self._push(_tag_target(raw))


def _commit_links(raw: bytes, fields: tuple[bytes, ...]) -> list[bytes]:
    """The ids a commit's header names in the given fields (``b"tree "``, ``b"parent "``)."""
    header = raw.split(b"\n\n", 1)[0]
    return [line.split(b" ", 1)[1] for line in header.split(b"\n") if line.startswith(fields)]


def _tag_target(raw: bytes) -> bytes:
    """The id an annotated tag names (its first line, ``object <id>``)."""
    return raw.split(b"\n", 1)[0][7:]


def ancestors_among(
    store: BaseObjectStore, tips: Iterable[bytes], wanted: Iterable[bytes], limit: int = 10_000
) -> set[bytes]:
    """Which of the commits ``wanted`` (hex) are ``tips`` or ancestors of them.

    One walk over commit parents (annotated tags followed), at most ``limit`` commits however
    many are asked about, so the answer costs little even on a long history; a commit further
    back than that is reported as not found.
    """
    asked = set(wanted)
    looking = set(asked)
    seen: set[bytes] = set()
    todo = deque(tips)
    while todo and looking and len(seen) < limit:
        commit = todo.popleft()
        if commit in seen:
            continue
        seen.add(commit)
        looking.discard(commit)
        try:
            type_num, raw = store.get_raw(ObjectID(commit))
        except KeyError:
            continue
        if type_num == OBJ_TAG:
            todo.append(_tag_target(raw))
        elif type_num == OBJ_COMMIT:
            todo.extend(_commit_links(raw, (b"parent ",)))
    return asked - looking
