"""Building a new root tree from a base tree plus a set of file changes.

Only the directories a change touches are read and rewritten; untouched subtrees keep their
ids, so committing one file into a 10,000-file tree writes a handful of tree objects.
"""

from __future__ import annotations

from typing import Union

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID

from artifacts._errors import InvalidArgumentError
from artifacts._packwrite import OBJ_TREE, PackWriter
from artifacts._validate import MODE_TREE

__all__ = ["TreeBuilder"]

Entry = Union[tuple[int, bytes], "Dir"]


class Dir(dict[bytes, Entry]):
    """A directory being edited: name -> (mode, binary id) or a nested `Dir`."""


class TreeBuilder:
    """Applies file writes and deletions on top of a base tree, then writes the result."""

    def __init__(self, store: BaseObjectStore, base_tree: bytes | None) -> None:
        self._store = store
        self._root = self._load(base_tree) if base_tree else Dir()
        self._written: set[tuple[bytes, ...]] = set()
        self._dirs: set[tuple[bytes, ...]] = set()

    def _load(self, tree_hex: bytes) -> Dir:
        type_num, raw = self._store.get_raw(ObjectID(tree_hex))
        if type_num != OBJ_TREE:
            raise InvalidArgumentError("tree", f"{tree_hex.decode()} is not a tree")
        d = Dir()
        pos = 0
        while pos < len(raw):
            space = raw.index(b" ", pos)
            nul = raw.index(b"\x00", space)
            d[raw[space + 1 : nul]] = (int(raw[pos:space], 8), raw[nul + 1 : nul + 21])
            pos = nul + 21
        return d

    def _descend(self, parts: list[bytes], create: bool) -> Dir | None:
        node = self._root
        for part in parts:
            child = node.get(part)
            if isinstance(child, Dir):
                node = child
                continue
            if child is not None and child[0] == MODE_TREE:
                sub = self._load(child[1].hex().encode())
            elif not create:
                return None
            else:
                sub = Dir()
            node[part] = sub
            node = sub
        return node

    def set(self, parts: list[str], mode: int, sha: bytes, field: str) -> None:
        """Write a file (``sha`` binary) at ``parts``, replacing what was there."""
        raw = [p.encode() for p in parts]
        key = tuple(raw)
        prefixes = [key[:i] for i in range(1, len(key))]
        if key in self._written or key in self._dirs or any(p in self._written for p in prefixes):
            raise InvalidArgumentError(field, "duplicate path (or a file and a directory)")
        self._dirs.update(prefixes)
        parent = self._descend(raw[:-1], create=True)
        assert parent is not None
        parent[raw[-1]] = (mode, sha)
        self._written.add(key)

    def delete(self, parts: list[str], field: str) -> None:
        """Remove a file or directory; a missing path is an error."""
        raw = [p.encode() for p in parts]
        parent = self._descend(raw[:-1], create=False)
        if parent is None or raw[-1] not in parent:
            raise InvalidArgumentError(field, "no such path in the base tree")
        del parent[raw[-1]]

    def write(self, writer: PackWriter) -> bytes:
        """Write every edited directory bottom-up; return the root tree's hex id."""
        return self._write_dir(self._root, writer).hex().encode()

    def _write_dir(self, d: Dir, writer: PackWriter) -> bytes:
        rows: list[tuple[bytes, int, bytes]] = []
        for name, entry in d.items():
            if isinstance(entry, Dir):
                if not entry:
                    continue  # git has no empty directories
                rows.append((name, MODE_TREE, self._write_dir(entry, writer)))
            else:
                rows.append((name, entry[0], entry[1]))
        rows.sort(key=lambda r: r[0] + b"/" if r[1] == MODE_TREE else r[0])
        raw = b"".join(b"%o %s\x00%s" % (mode, name, sha) for name, mode, sha in rows)
        return writer.add(OBJ_TREE, raw)
