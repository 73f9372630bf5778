"""Avro readers compiled from a schema: one Python function per record type, written out field by field.

fastavro's ``schemaless_reader`` walks the schema for every message (a type test and a call per field): about
21 µs for an accrual of the benchmark's log (19 fields and an 8-field explanation) on the benchmark's machine,
three quarters of the sink's busy time in a profile. A reader written for the schema reads the same bytes straight through: about half of that.

The codec uses one for the newest version of each subject, where no schema resolution is needed (the writer's
schema is the reader's); bytes written with an older version still go through fastavro, which resolves them.
``compile_reader`` returns None for anything it does not handle (a type the shipped schemas never use: float,
double, fixed, any logical type other than timestamp-millis; an array or map of items that can take no
bytes), and the codec falls back to fastavro for that schema.

A compiled reader is at least as strict as fastavro, never looser: what it accepts, fastavro decodes to the same
record (tests/unit/test_readers.py checks this over every shipped schema, valid messages and corrupted ones). It
refuses, with an exception the codec turns into ``DecodeError``, whatever is outside the Avro specification: a
varint longer than a long, an int beyond 32 bits, a boolean byte other than 0 or 1, an enum or union index out of
range (negative ones too), a length or count the remaining bytes cannot hold, text that is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_MILLIS = "timestamp-millis"  # the one logical type compiled (on a long), read and written as fastavro does
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "string", "bytes"})


class Unsupported(Exception):
    """The schema uses something this module does not compile."""


class Malformed(ValueError):
    """The bytes are not a message of the schema."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos`` (its first byte above 127): (its value, the position after it)."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise Malformed("varint beyond 64 bits")
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
        if shift > 63:
            raise Malformed("varint longer than 10 bytes")


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """A string's length at ``pos`` (its first byte above 127), refused when negative."""
    value, pos = _long(data, pos)
    if value < 0:
        raise Malformed("negative length")
    return value, pos


# The value of a one-byte varint (below 128), by its byte; as a length, a negative one is made too large for any
# message, so that the bounds check refuses it.
_ONE_BYTE = tuple((byte >> 1) ^ -(byte & 1) for byte in range(128))
_ONE_BYTE_LENGTH = tuple(value if value >= 0 else 1 << 62 for value in _ONE_BYTE)


def _fail(what: str) -> None:
    raise Malformed(what)


class Source:
    """Python source being written for one schema (its functions) and the constants it refers to; the readers'
    and the writers' (``schemas.writers``) share this part."""

    def __init__(self, named: dict[str, Any], constants: dict[str, Any]) -> None:
        self.named = named  # the schema's named types by full name, as ``fastavro.parse_schema`` lists them
        self.functions: dict[str, str] = {}  # record fullname -> function name
        self.sources: list[str] = []
        self.constants = dict(constants)
        self._counter = 0

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def constant(self, value: Any) -> str:
        name = self.fresh("_c")
        self.constants[name] = value
        return name

    def resolve(self, schema: Any) -> Any:
        """A named type's definition for its name; any other schema as it is."""
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            if schema not in self.named:
                raise Unsupported(f"unknown type {schema!r}")
            return self.named[schema]
        return schema

    def record(self, schema: dict[str, Any]) -> str:
        """The name of the function for the record type ``schema``, its source written once per type."""
        raise NotImplementedError

    def compiled(self, entry: str, label: str) -> Any:
        """The function ``entry`` of the source written. The source is ours: the schema gives it only field names
        (as repr'd literals) and counts; symbols and named types are constants of the namespace, never text."""
        namespace = dict(self.constants)
        exec(compile("\n\n".join(self.sources), f"<avro {label}>", "exec"), namespace)
        return namespace[entry]


class _Reading(Source):
    """The source of the readers of one schema."""

    def __init__(self, named: dict[str, Any]) -> None:
        super().__init__(
            named,
            {
                "_long": _long,
                "_length": _length,
                "_fail": _fail,
                "_ONE": _ONE_BYTE,
                "_ONE_LENGTH": _ONE_BYTE_LENGTH,
                "_EPOCH": EPOCH,
                "_timedelta": timedelta,
            },
        )

    def min_size(self, schema: Any, seen: frozenset[str] = frozenset()) -> int:
        """The fewest bytes a value of ``schema`` takes (0 for null or an empty record)."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return 1
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "null":
            return 0
        if kind == "record":
            if schema["name"] in seen:
                return 0
            return sum(self.min_size(f["type"], seen | {schema["name"]}) for f in schema["fields"])
        return 1

    def varint(self, lines: list[str], indent: str, target: str) -> None:
        """Read a zigzag varint into ``target`` (a Python int, not yet range-checked)."""
        lines += [
            f"{indent}{target} = b[p]",
            f"{indent}if {target} > 127:",
            f"{indent}    {target}, p = _long(b, p)",
            f"{indent}else:",
            f"{indent}    {target} = _ONE[{target}]",
            f"{indent}    p += 1",
        ]

    def value(self, schema: Any, lines: list[str], indent: str, target: str) -> None:
        """Append the code that reads one value of ``schema`` into the local ``target``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            self.union(schema, lines, indent, target)
            return
        if isinstance(schema, str):
            self.primitive(schema, lines, indent, target)
            return
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            if logical != TIMESTAMP_MILLIS or kind != "long":
                raise Unsupported(f"logical type {logical!r} on {kind!r}")
            self.primitive("long", lines, indent, target)
            lines.append(f"{indent}{target} = _EPOCH + _timedelta(0, 0, 0, {target})")  # milliseconds, exactly
            return
        if kind in _PRIMITIVES:
            self.primitive(kind, lines, indent, target)
        elif kind == "enum":
            symbols = self.constant(tuple(schema["symbols"]))
            self.varint(lines, indent, target)
            lines += [
                f"{indent}if not 0 <= {target} < {len(schema['symbols'])}:",
                f"{indent}    _fail('enum index out of range')",
                f"{indent}{target} = {symbols}[{target}]",
            ]
        elif kind == "record":
            lines.append(f"{indent}{target}, p = {self.record(schema)}(b, p)")
        elif kind == "array":
            self.blocks(schema["items"], None, lines, indent, target)
        elif kind == "map":
            self.blocks(schema["values"], "string", lines, indent, target)
        else:
            raise Unsupported(f"type {kind!r}")

    def primitive(self, kind: str, lines: list[str], indent: str, target: str) -> None:
        if kind == "null":
            lines.append(f"{indent}{target} = None")
        elif kind == "boolean":
            lines += [
                f"{indent}{target} = b[p]",
                f"{indent}p += 1",
                f"{indent}if {target} > 1:",
                f"{indent}    _fail('boolean byte other than 0 or 1')",
                f"{indent}{target} = {target} == 1",
            ]
        elif kind in ("int", "long"):
            self.varint(lines, indent, target)
            if kind == "int":
                lines += [
                    f"{indent}if not -2147483648 <= {target} <= 2147483647:",
                    f"{indent}    _fail('int beyond 32 bits')",
                ]
        elif kind in ("string", "bytes"):
            lines += [
                f"{indent}{target} = b[p]",
                f"{indent}if {target} > 127:",
                f"{indent}    {target}, p = _length(b, p)",
                f"{indent}else:",
                f"{indent}    {target} = _ONE_LENGTH[{target}]",
                f"{indent}    p += 1",
                f"{indent}e = p + {target}",
                f"{indent}if e > n:",
                f"{indent}    _fail('string length beyond the message')",
                f"{indent}{target} = b[p:e].decode()" if kind == "string" else f"{indent}{target} = b[p:e]",
                f"{indent}p = e",
            ]
        else:
            raise Unsupported(f"type {kind!r}")

    def union(self, branches: list[Any], lines: list[str], indent: str, target: str) -> None:
        index = self.fresh("i")
        self.varint(lines, indent, index)
        for position, branch in enumerate(branches):
            lines.append(f"{indent}{'if' if position == 0 else 'elif'} {index} == {position}:")
            before = len(lines)
            self.value(branch, lines, indent + "    ", target)
            if len(lines) == before:
                lines.append(f"{indent}    pass")
        lines += [f"{indent}else:", f"{indent}    _fail('union index out of range')"]

    def blocks(self, items: Any, key: str | None, lines: list[str], indent: str, target: str) -> None:
        """An array (``key`` None) or a map: blocks of a count, a negative count followed by the block's size."""
        size = self.min_size(items) + (1 if key else 0)
        if size == 0:
            raise Unsupported("array of values that take no bytes")
        count, item, name = self.fresh("k"), self.fresh("v"), self.fresh("s")
        lines.append(f"{indent}{target} = {{}}" if key else f"{indent}{target} = []")
        lines.append(f"{indent}while True:")
        inner = indent + "    "
        self.varint(lines, inner, count)
        lines += [f"{inner}if {count} == 0:", f"{inner}    break", f"{inner}if {count} < 0:", f"{inner}    {count} = -{count}"]
        self.varint(lines, inner + "    ", self.fresh("z"))  # the block's size in bytes, not needed
        lines += [f"{inner}if {count} * {size} > n - p:", f"{inner}    _fail('count beyond the message')"]
        lines.append(f"{inner}for _ in range({count}):")
        body = inner + "    "
        if key:
            self.primitive("string", lines, body, name)
        self.value(items, lines, body, item)
        lines.append(f"{body}{target}[{name}] = {item}" if key else f"{body}{target}.append({item})")

    def record(self, schema: dict[str, Any]) -> str:
        """The name of the function reading ``schema`` (written once per record type)."""
        fullname = schema["name"]
        if fullname in self.functions:
            return self.functions[fullname]
        function = self.fresh("_record")
        self.functions[fullname] = function
        lines = [f"def {function}(b, p):", "    n = len(b)"]
        fields = []
        for field in schema["fields"]:
            local = self.fresh("f")
            self.value(field["type"], lines, "    ", local)
            fields.append(f"{field['name']!r}: {local}")
        lines.append(f"    return {{{', '.join(fields)}}}, p")
        self.sources.append("\n".join(lines))
        return function


def compile_with(make: Callable[[dict[str, Any]], Source], parsed: dict[str, Any], what: str) -> Any:
    """The function ``make``'s source (a ``Source``, given the schema's named types) writes for ``parsed``, a record
    schema as ``fastavro.parse_schema`` returns it; None when the schema uses something it does not compile."""
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return None
    source = make(dict(parsed.get("__named_schemas", {})))
    try:
        entry = source.record(parsed)
    except Unsupported:
        return None
    return source.compiled(entry, f"{what} {parsed['name']}")


def compile_reader(parsed: dict[str, Any]) -> Reader | None:
    """A reader for messages written with ``parsed`` (a record schema as ``fastavro.parse_schema`` returns it):
    ``reader(data, position)`` is (the record, the position after it). None when the schema uses something
    this module does not compile."""
    reader: Reader | None = compile_with(_Reading, parsed, "reader")
    return reader
