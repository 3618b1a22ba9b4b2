"""Just enough of the WebAssembly binary format to pre-initialize a core module (Wizer-style).

A snapshot is made in two rewrites around one run of the module's set-up code at build time:

1. `with_exports` exports internal functions by name (from the "name" custom section) and
   every mutable global, so the host can call into the module and read its state;
2. after the set-up ran, `snapshot` writes a module whose linear memory starts as the memory
   the set-up left (one active data segment) and whose mutable globals start at the values
   it left, and drops exports that must not run twice (such as `_initialize`).

Code is never touched, so function and global indices stay valid. Only what the QuickJS
reactor module needs is supported: one defined (not imported) 32-bit memory, globals with
constant initializers, no `data.drop`/`memory.init` (a module with a data-count section is
refused). Custom sections other than "name" are dropped from the snapshot: they describe the
original layout (debug info) or nothing the runtime needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "WasmFormatError",
    "function_names",
    "mutable_globals",
    "snapshot",
    "with_exports",
]

_MAGIC = b"\0asm\x01\0\0\0"
_CUSTOM, _IMPORT, _MEMORY, _GLOBAL, _EXPORT, _DATA, _DATA_COUNT = 0, 2, 5, 6, 7, 11, 12
_KIND_FUNC, _KIND_MEMORY, _KIND_GLOBAL = 0, 2, 3
_I32, _I64 = 0x7F, 0x7E
_PAGE = 65536
_END = 0x0B


class WasmFormatError(ValueError):
    """The module is not one this rewriter supports (or not valid WebAssembly)."""


# --- encoding -----------------------------------------------------------------------------


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode()
    return _uleb(len(raw)) + raw


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(payload)) + payload


def _vector(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


# --- decoding -----------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError("unexpected end of module")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        return self._leb(signed=False)

    def sleb(self) -> int:
        return self._leb(signed=True)

    def _leb(self, *, signed: bool) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if signed and byte & 0x40:
                    result -= 1 << shift
                return result

    def raw(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise WasmFormatError("unexpected end of module")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def name(self) -> str:
        return self.raw(self.uleb()).decode()

    def done(self) -> bool:
        return self.pos >= self.end


@dataclass
class _Section:
    id: int
    payload: bytes
    custom_name: str = ""


def _sections(module: bytes) -> list[_Section]:
    if not module.startswith(_MAGIC):
        raise WasmFormatError("not a WebAssembly 1.0 core module")
    reader = _Reader(module, len(_MAGIC))
    sections = []
    while not reader.done():
        section_id = reader.byte()
        payload = reader.raw(reader.uleb())
        custom = _Reader(payload).name() if section_id == _CUSTOM else ""
        sections.append(_Section(section_id, payload, custom))
    return sections


def _assemble(sections: Iterable[_Section]) -> bytes:
    return _MAGIC + b"".join(_section(s.id, s.payload) for s in sections)


def _find(sections: list[_Section], section_id: int) -> _Section | None:
    return next((s for s in sections if s.id == section_id), None)


@dataclass
class _Global:
    valtype: int
    mutable: bool
    init: bytes
    """The constant initializer expression, `end` included."""


def _read_init_expr(reader: _Reader) -> bytes:
    start = reader.pos
    while True:
        opcode = reader.byte()
        if opcode == _END:
            return reader.data[start : reader.pos]
        if opcode in (0x41, 0x42):  # i32.const / i64.const
            reader.sleb()
        elif opcode == 0x23:  # global.get
            reader.uleb()
        elif opcode == 0x43:  # f32.const
            reader.raw(4)
        elif opcode == 0x44:  # f64.const
            reader.raw(8)
        else:
            raise WasmFormatError(f"unsupported opcode {opcode:#x} in a constant expression")


def _globals(sections: list[_Section]) -> list[_Global]:
    section = _find(sections, _GLOBAL)
    if section is None:
        return []
    reader = _Reader(section.payload)
    result = []
    for _ in range(reader.uleb()):
        valtype = reader.byte()
        mutable = reader.byte() == 1
        result.append(_Global(valtype, mutable, _read_init_expr(reader)))
    return result


def _imported_counts(sections: list[_Section]) -> dict[int, int]:
    """How many functions, tables, memories and globals are imported (they come first)."""
    counts = dict.fromkeys(range(4), 0)
    section = _find(sections, _IMPORT)
    if section is None:
        return counts
    reader = _Reader(section.payload)
    for _ in range(reader.uleb()):
        reader.name()
        reader.name()
        kind = reader.byte()
        counts[kind] += 1
        if kind == _KIND_FUNC:
            reader.uleb()
        elif kind == 1:  # table: reftype + limits
            reader.byte()
            _read_limits(reader)
        elif kind == _KIND_MEMORY:
            _read_limits(reader)
        elif kind == _KIND_GLOBAL:
            reader.byte()
            reader.byte()
        else:
            raise WasmFormatError(f"unsupported import kind {kind}")
    return counts


def _read_limits(reader: _Reader) -> tuple[int, int | None]:
    flags = reader.byte()
    if flags not in (0, 1):
        raise WasmFormatError("only 32-bit, unshared memories and tables are supported")
    minimum = reader.uleb()
    return minimum, (reader.uleb() if flags == 1 else None)


def _exports(sections: list[_Section]) -> list[tuple[str, int, int]]:
    section = _find(sections, _EXPORT)
    if section is None:
        return []
    reader = _Reader(section.payload)
    return [(reader.name(), reader.byte(), reader.uleb()) for _ in range(reader.uleb())]


def _export_section(exports: list[tuple[str, int, int]]) -> _Section:
    return _Section(_EXPORT, _vector(
        [_name(name) + bytes([kind]) + _uleb(index) for name, kind, index in exports]))


def _replace(sections: list[_Section], new: _Section, after: tuple[int, ...]) -> None:
    """Put `new` in place of the section with its id, or after the last of `after`."""
    for i, section in enumerate(sections):
        if section.id == new.id:
            sections[i] = new
            return
    position = 0
    for i, section in enumerate(sections):
        if section.id in after:
            position = i + 1
    sections.insert(position, new)


# --- the API ------------------------------------------------------------------------------


def function_names(module: bytes) -> dict[str, int]:
    """Function indices by name, from the "name" custom section ({} when there is none)."""
    names: dict[str, int] = {}
    for section in _sections(module):
        if section.id != _CUSTOM or section.custom_name != "name":
            continue
        reader = _Reader(section.payload)
        reader.name()
        while not reader.done():
            kind = reader.byte()
            end = reader.uleb() + reader.pos
            if kind == 1:
                sub = _Reader(reader.data, reader.pos, end)
                for _ in range(sub.uleb()):
                    index = sub.uleb()
                    names.setdefault(sub.name(), index)
            reader.pos = end
    return names


def mutable_globals(module: bytes) -> list[int]:
    """Indices of the module's own mutable globals (the state a snapshot must carry)."""
    sections = _sections(module)
    first = _imported_counts(sections)[_KIND_GLOBAL]
    return [first + i for i, g in enumerate(_globals(sections)) if g.mutable]


def global_export_name(index: int) -> str:
    """The export name `with_exports` gives global `index`."""
    return f"snapshot:global{index}"


def with_exports(module: bytes, functions: Mapping[str, int]) -> bytes:
    """`module` that also exports `functions` (name -> index) and every mutable global.

    Globals are exported as `global_export_name(index)`.
    """
    sections = _sections(module)
    exports = _exports(sections)
    taken = {name for name, _kind, _index in exports}
    for name, index in functions.items():
        if name in taken:
            raise WasmFormatError(f"the module already exports {name!r}")
        exports.append((name, _KIND_FUNC, index))
    exports += [(global_export_name(i), _KIND_GLOBAL, i) for i in mutable_globals(module)]
    _replace(sections, _export_section(exports), after=(1, 2, 3, 4, 5, 6))
    return _assemble(sections)


def snapshot(
    module: bytes,
    memory: bytes,
    global_values: Mapping[int, int],
    *,
    constants: Mapping[str, int] | None = None,
    drop_exports: Iterable[str] = (),
) -> bytes:
    """A module that starts where a run of `module` left off.

    Args:
        module: the module the run used (as returned by `with_exports`).
        memory: the whole linear memory after the run (a multiple of 64 KiB).
        global_values: the integer value of every mutable global after the run.
        constants: new immutable i32 globals to export (e.g. addresses found during the run).
        drop_exports: exports to remove, such as `_initialize`, which must not run again.
            The `global_export_name` exports are always removed.
    """
    sections = _sections(module)
    if _find(sections, _DATA_COUNT) is not None:
        raise WasmFormatError("modules with passive data segments are not supported")
    if _imported_counts(sections)[_KIND_MEMORY]:
        raise WasmFormatError("the module imports its memory")
    if len(memory) % _PAGE:
        raise WasmFormatError("the memory image is not a whole number of pages")

    memory_section = _find(sections, _MEMORY)
    if memory_section is None:
        raise WasmFormatError("the module defines no memory")
    reader = _Reader(memory_section.payload)
    if reader.uleb() != 1:
        raise WasmFormatError("only modules with one memory are supported")
    _minimum, maximum = _read_limits(reader)
    pages = len(memory) // _PAGE
    limits = (b"\x01" + _uleb(pages) + _uleb(maximum)) if maximum is not None else (
        b"\x00" + _uleb(pages))
    _replace(sections, _Section(_MEMORY, _uleb(1) + limits), after=(1, 2, 3, 4))

    first_global = _imported_counts(sections)[_KIND_GLOBAL]
    globals_ = _globals(sections)
    for index, value in global_values.items():
        entry = globals_[index - first_global]
        if not entry.mutable:
            raise WasmFormatError(f"global {index} is not mutable")
        opcode = {_I32: 0x41, _I64: 0x42}.get(entry.valtype)
        if opcode is None:
            raise WasmFormatError(f"global {index} is not an integer")
        encoded = value if entry.valtype == _I64 else _signed32(value)
        entry.init = bytes([opcode]) + _sleb(encoded) + bytes([_END])
    constant_exports = []
    for name, value in (constants or {}).items():
        constant_exports.append((name, _KIND_GLOBAL, first_global + len(globals_)))
        globals_.append(_Global(_I32, False, b"\x41" + _sleb(_signed32(value)) + bytes([_END])))
    _replace(sections, _Section(_GLOBAL, _vector(
        [bytes([g.valtype, int(g.mutable)]) + g.init for g in globals_])), after=(1, 2, 3, 4, 5))

    dropped = set(drop_exports)
    exports = [
        (name, kind, index) for name, kind, index in _exports(sections)
        if name not in dropped and not name.startswith("snapshot:")
    ] + constant_exports
    _replace(sections, _export_section(exports), after=(1, 2, 3, 4, 5, 6))

    # One active segment from the first to the last non-zero byte: the whole image is data,
    # so wasmtime maps it copy-on-write from the compiled artifact.
    start = len(memory) - len(memory.lstrip(b"\0"))
    end = len(memory.rstrip(b"\0"))
    segments = []
    if end > start:
        segments.append(b"\x00\x41" + _sleb(_signed32(start)) + bytes([_END])
                        + _uleb(end - start) + memory[start:end])
    _replace(sections, _Section(_DATA, _vector(segments)), after=tuple(range(1, 11)))

    kept = [s for s in sections if s.id != _CUSTOM or s.custom_name == "name"]
    return _assemble(kept)


def _signed32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value
