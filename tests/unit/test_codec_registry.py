"""With a schema registry configured, the codec registers the shipped schemas, writes the ids the
registry assigns, and fetches writer schemas it does not know by id."""

from __future__ import annotations

import json
import struct

import httpx

from schemas.codec import Codec, DecodeError, DecodeFailure
from tests.factories import card_record


class FakeRegistry:
    """The two calls of the Confluent schema registry REST API the codec uses, in memory."""

    def __init__(self, first_id: int = 100) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, int] = {}
        self.next_id = first_id
        self.requests: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path.startswith("/subjects/"):
            subject = request.url.path.split("/")[2]
            schema = json.loads(request.content)["schema"]
            if subject not in self.subjects:
                self.subjects[subject] = self.next_id
                self.schemas[self.next_id] = schema
                self.next_id += 1
            return httpx.Response(200, json={"id": self.subjects[subject]})
        if request.method == "GET" and request.url.path.startswith("/schemas/ids/"):
            schema_id = int(request.url.path.rsplit("/", 1)[1])
            if schema_id not in self.schemas:
                return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
            return httpx.Response(200, json={"schema": self.schemas[schema_id]})
        return httpx.Response(404)


def test_registry_ids_are_used_in_the_wire_header() -> None:
    registry = FakeRegistry(first_id=100)
    codec = Codec.from_registry("http://registry.invalid", transport=httpx.MockTransport(registry.handler))
    assert "authorization_event-value" in registry.subjects
    encoded = codec.encode("authorization_event", card_record())
    _, schema_id = struct.unpack(">bI", encoded[:5])
    assert schema_id == registry.subjects["authorization_event-value"] and schema_id >= 100
    subject, record = codec.decode(encoded)
    assert subject == "authorization_event" and record["amount_minor"] == 10_000


def test_unknown_id_is_fetched_from_the_registry_once() -> None:
    registry = FakeRegistry(first_id=1)
    writer = Codec.from_registry("http://registry.invalid", transport=httpx.MockTransport(registry.handler))
    encoded = writer.encode("settlement_event", card_record("CLEARING"))
    # A reader that knows the ids of its own shipped files only, but can ask the registry.
    reader = Codec.from_registry("http://registry.invalid", transport=httpx.MockTransport(registry.handler))
    reader._by_id.clear()  # forget everything: every id must now come from the registry
    before = len(registry.requests)
    subject, record = reader.decode(encoded)
    reader.decode(encoded)
    fetches = [r for r in registry.requests[before:] if r.startswith("GET")]
    assert record["event_type"] == "CLEARING" and len(fetches) == 1


def test_an_id_the_registry_does_not_know_is_a_decode_error() -> None:
    registry = FakeRegistry()
    codec = Codec.from_registry("http://registry.invalid", transport=httpx.MockTransport(registry.handler))
    try:
        codec.decode(struct.pack(">bI", 0, 987_654) + b"\x00")
    except DecodeError as error:
        assert error.failure is DecodeFailure.UNKNOWN_SCHEMA_ID
    else:
        raise AssertionError("expected a DecodeError")
