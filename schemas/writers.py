"""Avro writers compiled from a schema, the counterpart of ``schemas.readers``: one Python function per record
type, writing its fields straight into a bytearray.

fastavro's ``schemaless_writer`` walks the schema for every record, as its reader does: about 15-20 µs for an
accrual, the worker's most frequent output (8% of its time in a profile of a drain). The compiled writer writes the
same bytes in about half that.

It writes only the Python values the project's records hold, each of its exact type: ``str`` for a string or an
enum symbol, ``int`` (not ``bool``) for an int or a long within its range, ``bool``, ``None``, ``bytes``, an
``int`` or a timezone-aware ``datetime`` for timestamp-millis, ``list`` for an array, ``dict`` for a map or a record, every
field of a record present. Anything else (a missing field left to its default, a naive datetime, a tuple for an
array, text that cannot be UTF-8) raises, and the codec drops what was written and
hands the record to fastavro, which writes it or refuses it as it always did. So the compiled writer never
decides what is valid: for the values it takes, it writes what fastavro writes (tests/unit/test_writers.py, over
every shipped schema), and fastavro has the last word on the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from schemas.readers import EPOCH, TIMESTAMP_MILLIS, Source, Unsupported, compile_with

Writer = Callable[[bytearray, Any], None]


class Unwritten(Exception):
    """A value the compiled writer does not take (module doc): fastavro writes the record, or refuses it."""


def _unwritten() -> None:
    raise Unwritten


def _varint(out: bytearray, zigzag: int) -> None:
    """A zigzag value of any size up to 64 bits, as a varint."""
    if zigzag >> 64:
        raise Unwritten
    while zigzag > 127:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)


def _millis(moment: Any) -> int:
    """A timestamp-millis value as milliseconds since the epoch, as fastavro counts them: an int is that already
    (the engine's entries hold their times so), a timezone-aware datetime is counted from the epoch."""
    if moment.__class__ is int:
        return moment
    if moment.__class__ is not datetime or moment.tzinfo is None:
        raise Unwritten
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class _Writing(Source):
    """The source of the writers of one schema."""

    def __init__(self, named: dict[str, Any]) -> None:
        super().__init__(named, {"_varint": _varint, "_millis": _millis, "_unwritten": _unwritten})

    def long(self, lines: list[str], indent: str, value: str, bits: int) -> None:
        """An int (``bits`` 32) or a long (64) already checked to be an ``int``."""
        lines += [
            f"{indent}if -64 <= {value} < 64:",
            f"{indent}    o.append(({value} << 1) ^ ({value} >> 63))",
            f"{indent}elif -{1 << (bits - 1)} <= {value} < {1 << (bits - 1)}:",
            f"{indent}    _varint(o, ({value} << 1) ^ ({value} >> 63))",
            f"{indent}else:",
            f"{indent}    _unwritten()",
        ]

    def length(self, lines: list[str], indent: str, size: str) -> None:
        lines += [
            f"{indent}if {size} < 64:",
            f"{indent}    o.append({size} << 1)",
            f"{indent}else:",
            f"{indent}    _varint(o, {size} << 1)",
        ]

    def value(self, schema: Any, lines: list[str], indent: str, value: str) -> None:
        """Append the code that writes the local ``value`` as ``schema`` into ``o``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise Unsupported("a union other than null and one type")
            lines += [f"{indent}if {value} is None:", f"{indent}    o.append(0)", f"{indent}else:", f"{indent}    o.append(2)"]
            self.value(schema[1], lines, indent + "    ", value)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if logical is not None:
            if logical != TIMESTAMP_MILLIS or kind != "long":
                raise Unsupported(f"logical type {logical!r} on {kind!r}")
            lines.append(f"{indent}{value} = _millis({value})")
            self.long(lines, indent, value, 64)
        elif kind == "null":
            lines += [f"{indent}if {value} is not None:", f"{indent}    _unwritten()"]
        elif kind == "boolean":
            lines += [
                f"{indent}if {value} is True:",
                f"{indent}    o.append(1)",
                f"{indent}elif {value} is False:",
                f"{indent}    o.append(0)",
                f"{indent}else:",
                f"{indent}    _unwritten()",
            ]
        elif kind in ("int", "long"):
            lines += [f"{indent}if {value}.__class__ is not int:", f"{indent}    _unwritten()"]
            self.long(lines, indent, value, 32 if kind == "int" else 64)
        elif kind in ("string", "bytes"):
            if kind == "string":
                lines += [
                    f"{indent}if {value}.__class__ is not str:",
                    f"{indent}    _unwritten()",
                    f"{indent}{value} = {value}.encode()",
                ]
            else:
                lines += [f"{indent}if {value}.__class__ is not bytes:", f"{indent}    _unwritten()"]
            size = self.fresh("n")
            lines.append(f"{indent}{size} = len({value})")
            self.length(lines, indent, size)
            lines.append(f"{indent}o += {value}")
        elif kind == "enum":
            indexes = self.constant({symbol: index for index, symbol in enumerate(schema["symbols"])})
            lines += [
                f"{indent}if {value}.__class__ is not str:",
                f"{indent}    _unwritten()",
                f"{indent}{value} = {indexes}.get({value})",
                f"{indent}if {value} is None:",
                f"{indent}    _unwritten()",
            ]
            self.length(lines, indent, value)
        elif kind == "record":
            lines += [
                f"{indent}if {value}.__class__ is not dict:",
                f"{indent}    _unwritten()",
                f"{indent}{self.record(schema)}(o, {value})",
            ]
        elif kind in ("array", "map"):
            self.blocks(schema, kind, lines, indent, value)
        else:
            raise Unsupported(f"type {kind!r}")

    def blocks(self, schema: dict[str, Any], kind: str, lines: list[str], indent: str, value: str) -> None:
        """An array or a map as fastavro writes it: one block of all its items (when there are any), then 0."""
        size, key, item = self.fresh("n"), self.fresh("k"), self.fresh("v")
        lines += [
            f"{indent}if {value}.__class__ is not {'list' if kind == 'array' else 'dict'}:",
            f"{indent}    _unwritten()",
            f"{indent}{size} = len({value})",
            f"{indent}if {size}:",
        ]
        inner = indent + "    "
        self.length(lines, inner, size)
        if kind == "array":
            lines.append(f"{inner}for {item} in {value}:")
            self.value(schema["items"], lines, inner + "    ", item)
        else:
            lines.append(f"{inner}for {key}, {item} in {value}.items():")
            self.value("string", lines, inner + "    ", key)
            self.value(schema["values"], lines, inner + "    ", item)
        lines.append(f"{indent}o.append(0)")

    def record(self, schema: dict[str, Any]) -> str:
        """The name of the function writing ``schema`` (written once per record type)."""
        fullname = schema["name"]
        if fullname in self.functions:
            return self.functions[fullname]
        function = self.fresh("_record")
        self.functions[fullname] = function
        lines = [f"def {function}(o, d):"]
        for field in schema["fields"]:
            local = self.fresh("f")
            lines.append(f"    {local} = d[{field['name']!r}]")
            self.value(field["type"], lines, "    ", local)
        if len(lines) == 1:
            lines.append("    pass")
        self.sources.append("\n".join(lines))
        return function


def compile_writer(parsed: dict[str, Any]) -> Writer | None:
    """A writer of records of ``parsed`` (a record schema as ``fastavro.parse_schema`` returns it):
    ``writer(out, record)`` appends the record's bytes to ``out``, or raises (``Unwritten``, ``KeyError``...) for a
    record it does not take, leaving bytes of it in ``out``. None when the schema uses something this module does
    not compile."""
    writer: Writer | None = compile_with(_Writing, parsed, "writer")
    return writer
