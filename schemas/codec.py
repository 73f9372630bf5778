"""Avro in the Confluent wire format: magic byte 0, a 4-byte big-endian schema id, Avro binary.

Schemas are parsed once, when the codec is built. Ids come from a Confluent-compatible schema
registry when one is configured, otherwise from ``ids.json`` shipped beside the ``.avsc`` files
(stable ids, so the local stack needs no registry).

Decoding resolves the writer's schema (found by id) against the newest schema of the same subject,
so bytes written with an older version of a schema still decode (fields added since get their
defaults). Bytes written with the newest version itself, nearly all of them, are read by a reader
compiled for it (``schemas.readers``: the same records, about half of fastavro's time); the others,
and any schema that module does not compile, by fastavro. Records are written by a writer compiled
for the newest version (``schemas.writers``), which hands fastavro any value it does not take.
"""

from __future__ import annotations

import enum
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import httpx

from schemas.readers import Reader, compile_reader
from schemas.writers import Writer, compile_writer

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class DecodeFailure(str, enum.Enum):
    """Why bytes could not be decoded. The value is the dead-letter reason code."""

    TOO_SHORT = "too_short"
    BAD_MAGIC_BYTE = "bad_magic_byte"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    WRONG_SCHEMA = "wrong_schema"
    UNDECODABLE = "undecodable"


class DecodeError(Exception):
    def __init__(self, failure: DecodeFailure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Schema:
    subject: str  # file stem without version suffix: "accrual" for accrual.avsc and accrual.v2.avsc
    schema_id: int
    parsed: Any  # fastavro's parsed schema


def _subject_of(file_name: str) -> str:
    return file_name.split(".", 1)[0]


def load_shipped_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[int, Schema]:
    """Parse every shipped ``.avsc`` once; ids from ``ids.json``. A schema without an id is an error."""
    ids = json.loads((schema_dir / "ids.json").read_text())
    schemas: dict[int, Schema] = {}
    for path in sorted(schema_dir.glob("*.avsc")):
        if path.name not in ids:
            raise ValueError(f"schema {path.name} has no id in ids.json")
        schema_id = int(ids[path.name])
        if schema_id in schemas:
            raise ValueError(f"schema id {schema_id} is used twice in ids.json")
        parsed = fastavro.parse_schema(json.loads(path.read_text()))
        schemas[schema_id] = Schema(_subject_of(path.name), schema_id, parsed)
    return schemas


class SchemaRegistryClient:
    """The few calls of the Confluent schema registry REST API the codec needs (sync, at start-up
    and on the rare unknown id)."""

    def __init__(self, url: str, timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, transport=transport)

    def register(self, subject: str, schema_json: str) -> int:
        response = self._http.post(
            f"/subjects/{subject}-value/versions",
            json={"schema": schema_json},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        response.raise_for_status()
        return int(response.json()["id"])

    def fetch(self, schema_id: int) -> str | None:
        response = self._http.get(f"/schemas/ids/{schema_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return str(response.json()["schema"])


class Codec:
    """Encode and decode records by subject. Build one per process and share it."""

    def __init__(
        self,
        schemas: Mapping[int, Schema] | None = None,
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        self._by_id: dict[int, Schema] = dict(schemas if schemas is not None else load_shipped_schemas())
        self._registry = registry
        self._latest: dict[str, Schema] = {}
        for schema in sorted(self._by_id.values(), key=lambda s: s.schema_id):
            self._latest[schema.subject] = schema
        # Reader schema per subject is the newest; the header of its writer id is precomputed.
        self._headers = {s.subject: _HEADER.pack(MAGIC_BYTE, s.schema_id) for s in self._latest.values()}
        # Compiled readers of the newest schemas, by schema id (None: that schema is read by fastavro).
        self._readers: dict[int, Reader | None] = {s.schema_id: compile_reader(s.parsed) for s in self._latest.values()}
        # Compiled writers of the newest schemas, by subject (None: fastavro writes that subject).
        self._writers: dict[str, Writer | None] = {s.subject: compile_writer(s.parsed) for s in self._latest.values()}

    @classmethod
    def configured(cls, registry_url: str | None) -> Codec:
        """The codec a process uses: ids from the registry when one is configured, else the shipped ids."""
        return cls.from_registry(registry_url) if registry_url else cls()

    @classmethod
    def from_registry(cls, url: str, schema_dir: Path = SCHEMA_DIR, transport: httpx.BaseTransport | None = None) -> Codec:
        """Register the shipped schemas with the registry and use the ids it assigns."""
        registry = SchemaRegistryClient(url, transport=transport)
        ids = json.loads((schema_dir / "ids.json").read_text())
        schemas: dict[int, Schema] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            if path.name not in ids:
                raise ValueError(f"schema {path.name} has no id in ids.json")
            text = path.read_text()
            schema_id = registry.register(_subject_of(path.name), json.dumps(json.loads(text)))
            schemas[schema_id] = Schema(_subject_of(path.name), schema_id, fastavro.parse_schema(json.loads(text)))
        return cls(schemas, registry)

    def schema_id(self, subject: str) -> int:
        return self._latest[subject].schema_id

    def schema_ids(self, subject: str, having_field: str | None = None) -> frozenset[int]:
        """The ids of every known version of ``subject`` (only those whose record has ``having_field``)."""
        return frozenset(
            s.schema_id
            for s in self._by_id.values()
            if s.subject == subject
            and (having_field is None or any(f.get("name") == having_field for f in s.parsed.get("fields", ())))
        )

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the newest schema of ``subject``. Raises ValueError on a record
        that does not fit the schema (a bug in the caller, not bad input)."""
        schema = self._latest[subject]
        compiled = self._writers.get(subject)
        if compiled is not None:
            out = bytearray(self._headers[subject])
            try:
                compiled(out, record)
                return bytes(out)
            except Exception:  # noqa: BLE001 - a value it does not take (schemas.writers): fastavro decides
                pass
        buffer = io.BytesIO()
        buffer.write(self._headers[subject])
        fastavro.schemaless_writer(buffer, schema.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes | None, expected_subject: str | None = None) -> tuple[str, dict[str, Any]]:
        """Decode wire-format bytes into (subject, record). Raises DecodeError, never anything else."""
        if data is None or len(data) < _HEADER.size:
            raise DecodeError(DecodeFailure.TOO_SHORT, f"{0 if data is None else len(data)} bytes")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(DecodeFailure.BAD_MAGIC_BYTE, f"magic byte {magic}")
        writer = self._by_id.get(schema_id) or self._fetch_unknown(schema_id)
        if writer is None:
            raise DecodeError(DecodeFailure.UNKNOWN_SCHEMA_ID, f"schema id {schema_id}")
        if expected_subject is not None and writer.subject != expected_subject:
            raise DecodeError(
                DecodeFailure.WRONG_SCHEMA, f"schema id {schema_id} is {writer.subject}, expected {expected_subject}"
            )
        reader = self._latest.get(writer.subject, writer)
        compiled = self._readers.get(schema_id) if reader is writer else None
        if compiled is not None:
            try:
                record, end = compiled(data, _HEADER.size)
            except Exception as exc:  # noqa: BLE001 - a truncated or malformed message: IndexError, ValueError...
                raise DecodeError(DecodeFailure.UNDECODABLE, type(exc).__name__) from None
            if end != len(data):
                raise DecodeError(DecodeFailure.UNDECODABLE, f"{len(data) - end} trailing bytes")
            return writer.subject, record
        stream = io.BytesIO(data)
        stream.seek(_HEADER.size)
        try:
            resolved = fastavro.schemaless_reader(stream, writer.parsed, reader.parsed if reader is not writer else None)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input; all mean the same here
            raise DecodeError(DecodeFailure.UNDECODABLE, type(exc).__name__) from None
        if stream.tell() != len(data):
            raise DecodeError(DecodeFailure.UNDECODABLE, f"{len(data) - stream.tell()} trailing bytes")
        if not isinstance(resolved, dict):
            raise DecodeError(DecodeFailure.UNDECODABLE, "not a record")
        return writer.subject, resolved

    def _fetch_unknown(self, schema_id: int) -> Schema | None:
        if self._registry is None:
            return None
        try:
            text = self._registry.fetch(schema_id)
        except httpx.HTTPError:
            return None
        if text is None:
            return None
        parsed = fastavro.parse_schema(json.loads(text))
        name = str(parsed.get("name", "")) if isinstance(parsed, dict) else ""
        subject = next((s.subject for s in self._latest.values() if s.parsed.get("name") == name), name)
        schema = Schema(subject, schema_id, parsed)
        self._by_id[schema_id] = schema
        return schema
