"""A Faust table whose local store never holds a change its changelog topic does not.

Faust writes a table change to the local store at once, and to the changelog topic when the
producer sends it; the send's callback then records, in the local store, the changelog offset it
holds up to (the *persisted offset*, where a restart resumes reading the changelog). A worker
killed between the two leaves a local store ahead of its changelog. Restarted on that store, it
would build on a write no other worker can ever read back: it sees the message again (its input
offset was not committed), finds it decided locally, commits it, and from then on the changelog
misses that step for good. The chaos run caught it: a summary naming a row the changelog never
received, on which the partition's next owner stopped.

So this table turns the order around. A change waits in memory (``unsettled``, where reads find
it) until ``settle`` has the changelog's acknowledgement; only then is it written to the local
store, and only after that is the persisted offset moved (the send's callback no longer moves
it). Killed at any moment, the local store holds at most what the changelog holds, and whatever
the changelog holds past the persisted offset is read again at the restart. A restart after
kill -9 thus reads the changelog's tail, like a graceful one, not the whole changelog.

Changes may wait for several messages of several partitions and be settled together (the matcher
settles once per batch): ``settle`` sends them to the changelog then, each to the partition it was
made on (given, or the partition of the message being processed when it was made), the last value
of a key only, and writes each to the local store of that partition once acknowledged.

The sends go straight to the producer's Kafka client (``sends``, a ``stream.producing.AppSends``),
not through Faust's buffer of pending messages: that path cost about 40 microseconds a record, for
three records per card event. They are handed over a batch per partition (``AppSends.batches``),
one delivery per batch, whose metadata is its last record's: the persisted offset. Faust still
flushes that client before it commits input offsets. A rebalance must not let a change reach the changelog after the partition's next owner started
reading it: the changes are sent under ``handing_over``, a lock the revocation waits for before
it commits and gives the partitions away (``stream.input_partitions``), and only while
``still_owned`` says every partition is still this worker's.

A local store that refuses a write (its disk full, its files gone) stops the worker at once
(``EXIT_STORE_FAILED``): RocksDB keeps a failed write's error in the open database for good, room
made again or not, so every later batch would fail the same way, its states sent to the changelog
again each time. The batch's changes were on the changelog before the write, and its entries not
yet sent, nothing of it committed: the worker started again reads them back from the changelog
and sends its entries again, as after a kill. Before this, the changes stayed in memory and the
agent, restarted by Faust, built on them batch after batch: more undelivered decisions per
account than its recent events keep, whose entries no restart could send again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol, cast

import faust
from faust.streams import current_event
from faust.types import TP
from rocksdict import WriteBatch

from stream.producing import Gathering
from stream.stopping import exit_now

log = logging.getLogger(__name__)

# The unit separator as a JSON text spells it (b"\\u001f"): the separator of the rows' keys (stream.core.state_rows).
_ESCAPED_SEPARATOR = encode_basestring_ascii("\x1f")[1:-1].encode()

DELETED = object()  # a staged deletion

FIRST_RETRY_S, LAST_RETRY_S = 0.2, 5.0
EXIT_STORE_FAILED = 74  # EX_IOERR: the local store refused a write; start the worker again once it can write


class Sends(Protocol):
    """Where a table's changelog records go (``stream.producing.AppSends``)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...

    def batches(self, order: Sequence[str] = ()) -> Gathering:
        """Records handed over together, a batch per topic and partition."""
        ...


class ChangelogTable(faust.Table):
    """A Faust table written to its local store only once its changelog acknowledged the change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sends: Sends | None = None  # set by the matcher before the agent runs
        self.handing_over = asyncio.Lock()  # replaced by the matcher's, shared with the revocation
        self.unacked: list[Awaitable[Any]] = []
        # key -> (partition, value or DELETED), in the order written
        self.unsettled: dict[Any, tuple[int, Any]] = {}

    # set by the matcher: what to do with each local store made for this table (its memory budget)
    configure_store: Callable[[Any], None] = staticmethod(lambda store: None)
    # what ends the process when the local store refuses a write (a class attribute: a test may put its own in its place)
    exit: Callable[[int], None] = staticmethod(exit_now)

    # --- keys and values as bytes ---------------------------------------------------------------
    # Faust's serializer registry takes about 4.4 µs to encode a key (a JSON encoder class of its
    # own, the codec looked up each time) and 6 µs to hand back the bytes of a raw value: paid for
    # every row of an account read back from the local store, and twice for every change written
    # (its changelog record and its local-store write). A ``str`` key of a JSON-keyed table is the
    # same bytes from the standard library's C encoder (about 0.2 µs), and a raw table's bytes are
    # their own encoding; anything else goes through Faust. ``tests/agent/test_table_stores.py``
    # holds both ways equal.

    def _fast_key(self, key: Any) -> bytes | None:
        if type(key) is str and self.key_serializer == "json":
            return encode_basestring_ascii(key).encode()
        return None

    def _fast_value(self, value: Any) -> bytes | None:
        if type(value) is bytes and self.value_serializer == "raw":
            return value
        return None

    def changelog_key(self, key: Any) -> bytes:
        fast = self._fast_key(key)
        return cast(bytes, self.changelog_topic.prepare_key(key, self.key_serializer)[0]) if fast is None else fast

    def changelog_value(self, value: Any) -> bytes:
        fast = self._fast_value(value)
        return cast(bytes, self.changelog_topic.prepare_value(value, self.value_serializer)[0]) if fast is None else fast

    def store_key(self, store: Any, key: Any) -> bytes:
        fast = self._fast_key(key)
        return cast(bytes, store._encode_key(key)) if fast is None else fast

    def store_value(self, store: Any, value: Any) -> bytes:
        fast = self._fast_value(value)
        return cast(bytes, store._encode_value(value)) if fast is None else fast

    def stored_key(self, store: Any, raw: bytes) -> Any:
        """A key read from the local store as the table wrote it. A JSON text whose only escapes are
        of the unit separator (an account id; a row's key, ``stream.core.state_rows``) is read without
        the JSON decoder: its bytes between the quotes, each escape the separator (every backslash
        starting one, none is part of another escape). A first clock tick reads a partition's keys."""
        if self.key_serializer != "json":
            return store._decode_key(raw)
        if len(raw) > 1 and raw[:1] == b'"' and raw[-1:] == b'"':
            text = raw[1:-1]
            escapes = text.count(b"\\")
            if not escapes:
                return text.decode()
            if escapes == text.count(_ESCAPED_SEPARATOR):
                return text.replace(_ESCAPED_SEPARATOR, b"\x1f").decode()
        return json.loads(raw.decode())

    def stored_value(self, store: Any, raw: bytes) -> Any:
        """A value read from the local store as the table reads it (a raw table's: the bytes)."""
        return raw if self.value_serializer == "raw" else store._decode_value(raw)

    def _new_store_by_url(self, url: Any) -> Any:
        store = super()._new_store_by_url(url)
        self.configure_store(store)
        return store

    # --- writes wait in memory -------------------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self.stage(key, value, _event_partition())

    def __delitem__(self, key: Any) -> None:
        self.stage(key, DELETED, _event_partition())

    def stage(self, key: Any, value: Any, partition: int) -> None:
        """Write ``key`` (``DELETED``: delete it) on ``partition``: read back at once, sent to the
        changelog at the next ``settle``."""
        self.unsettled.pop(key, None)  # keep the order written
        self.unsettled[key] = (partition, value)

    def __getitem__(self, key: Any) -> Any:
        if key in self.unsettled:
            value = self.unsettled[key][1]
            return self.__missing__(key) if value is DELETED else value
        # One look-up in the local store: mode's dict asks ``key in data`` and then ``data[key]``,
        # two RocksDB reads (and two key encodings) for every row of every account read.
        self.on_key_get(key)
        try:
            return self.data[key]
        except KeyError:
            return self.__missing__(key)

    def get_many(self, keys: Sequence[Any], partition: int) -> list[Any]:
        """The values of ``keys`` (None where absent), as ``get`` reads them one by one: a change not
        settled yet from memory, the rest from ``partition``'s local store in one RocksDB multi-get.
        For the rows of one account (all on its partition): read one by one, each row went through
        Faust's whole read path (its key encoded, the message's partition looked up, a sensor
        called, the key's partition remembered), several times the cost of the read itself."""
        found: list[Any] = [None] * len(keys)
        stored_at: list[int] = []
        for index, key in enumerate(keys):
            held = self.unsettled.get(key)
            if held is None:
                stored_at.append(index)
            elif held[1] is not DELETED:
                found[index] = held[1]
        if not stored_at:
            return found
        store: Any = self.data
        if not hasattr(store, "_db_for_partition"):  # the in-memory store: one mapping, no partitions
            for index in stored_at:
                found[index] = store.get(keys[index])
            return found
        raw = store._db_for_partition(partition).get([self.store_key(store, keys[index]) for index in stored_at])
        for index, value in zip(stored_at, raw, strict=True):
            if value is not None:
                found[index] = self.stored_value(store, value)
        return found

    def heads(self, partition: int, separator: str, partition_of: Callable[[str], int]) -> Iterator[tuple[str, Any]]:
        """Every text key of ``partition`` that holds no ``separator``, and its value as ``get``
        reads it (a change not settled yet first, then the local store), keys not settled yet
        included. On RocksDB the partition's own store is read in key order, and the keys that
        start with the same text and then ``separator`` are passed in one seek: what a scan of the
        heads costs is their number, not the keys filed under each (for the account states, the
        summaries and not their tens of rows each). The store in memory is one mapping for every
        partition: of its keys, those ``partition_of`` places on ``partition``."""
        store: Any = self.data
        unsettled = self.unsettled
        if not hasattr(store, "_db_for_partition"):  # the in-memory store: one mapping, no partitions
            stored = [
                key for key in self.keys() if isinstance(key, str) and separator not in key and partition_of(key) == partition
            ]
            yield from ((key, self.get(key)) for key in stored)
        else:
            db = store._db_for_partition(partition)
            start = self.store_key(store, "")[:-1]  # every text key: its JSON without the closing quote
            cursor = db.iter()
            cursor.seek(start)
            while cursor.valid():
                raw = cursor.key()
                if not raw.startswith(start):
                    break
                key = self.stored_key(store, raw)
                if separator not in key:
                    yield key, self.get(key) if key in unsettled else self.stored_value(store, cursor.value())
                    cursor.next()
                else:  # past every key starting with ``<head><separator>``: their bytes start alike, in ASCII
                    past = self.store_key(store, key.split(separator, 1)[0] + separator)[:-1] + b"\xff"
                    if past > raw:
                        cursor.seek(past)
                    else:  # never back (a key not read back as written would loop): key by key
                        cursor.next()
        for key, (at, value) in list(unsettled.items()):  # not in the store yet
            if at == partition and value is not DELETED and isinstance(key, str) and separator not in key:
                if key not in self.data:
                    yield key, value

    def __contains__(self, key: object) -> bool:
        if key in self.unsettled:
            return self.unsettled[key][1] is not DELETED
        return super().__contains__(key)

    # --- the changelog ---------------------------------------------------------------------------

    def take_sends(self) -> list[Awaitable[Any]]:
        """The changelog sends made since the last call."""
        sends, self.unacked = self.unacked, []
        return sends

    def _on_changelog_sent(self, fut: Any) -> None:
        """Faust moves the persisted offset here, before the local store has the change;
        ``settle`` moves it after (and sends its changes itself: kept for any other send)."""

    async def settle(self, still_owned: Callable[[], None] = lambda: None) -> None:
        """Send every change made since the last settle to the changelog, and return once the
        changelog acknowledged them and the local store has them. A send the broker refused (away
        longer than the producer retries) is made again, the same keys and values in the same
        order, until acknowledged; ``still_owned`` raises when a partition was lost meanwhile (or
        before the first send), and the changes are then dropped from memory (the partition's next
        owner reads what the changelog has)."""
        try:
            await self._send_unsettled(still_owned)
            held_to = await self._acknowledged(still_owned)
        except BaseException:
            self.discard_unsettled()
            raise
        try:
            self.write_settled(self.unsettled, held_to)
        except Exception as error:  # the store's error, for good: the module doc
            self.discard_unsettled()
            log.critical(
                "table %s: the local store refused a write (%s); exiting with code %d for the worker's supervisor to "
                "start it again once the store can be written (WORKER_DATA_DIR: its disk full?). The batch's states are "
                "on the changelog and its entries not sent: the restarted worker sends them",
                self.name,
                error,
                EXIT_STORE_FAILED,
            )
            self.exit(EXIT_STORE_FAILED)
            raise
        self.unsettled.clear()

    def discard_unsettled(self) -> None:
        """Forget every change not settled yet (its batch was dropped: read again from the store)."""
        self.unsettled.clear()
        self.unacked.clear()

    async def _send_unsettled(self, still_owned: Callable[[], None]) -> None:
        """Hand every unsettled change to the producer, in the order written, while the partitions
        are still this worker's (a revocation waits for ``handing_over``)."""
        if not self.unsettled:
            return
        assert self.sends is not None, "the table's sends are set before the agent runs"
        name = self.changelog_topic.get_topic_name()
        async with self.handing_over:
            still_owned()
            batches = self.sends.batches()
            for key, (partition, value) in list(self.unsettled.items()):
                raw_value = None if value is DELETED else self.changelog_value(value)
                await batches.add(name, self.changelog_key(key), raw_value, partition)
            self.unacked.extend(await batches.send())

    def write_settled(self, changes: Mapping[Any, tuple[int, Any]], held_to: Mapping[TP, int]) -> None:
        """Write settled changes (key -> partition and value, or ``DELETED``) to the local store of
        each one's partition, then the changelog offsets they hold up to (the persisted offsets).
        On RocksDB each partition gets them in one write (a ``WriteBatch``): its changes and its
        persisted offset land together or not at all, at the cost of one write-ahead-log append
        per partition instead of one per change. Faust's store would take the partition from the
        message being processed; it is given here instead (``tests/agent/test_table_stores.py``
        pins the store's parts used)."""
        store: Any = self.data
        if not hasattr(store, "_db_for_partition"):  # the in-memory store: one mapping, no partitions
            for key, (_, value) in changes.items():
                if value is DELETED:
                    store.pop(key, None)
                else:
                    store[key] = value
            for tp, offset in held_to.items():
                store.set_persisted_offset(tp, offset)
            return
        batches: dict[int, WriteBatch] = {}
        for key, (partition, value) in changes.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            encoded = self.store_key(store, key)
            if value is DELETED:
                batch.delete(encoded)
                store._key_index.pop(encoded, None)
            else:
                batch.put(encoded, self.store_value(store, value))
                store._key_index[encoded] = partition
        for tp, offset in held_to.items():
            batches.setdefault(tp.partition, WriteBatch(raw_mode=True)).put(store.offset_key, str(offset).encode())
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)

    async def _acknowledged(self, still_owned: Callable[[], None]) -> dict[TP, int]:
        """Wait for the sends; return the last changelog offset acknowledged per partition."""
        delay = FIRST_RETRY_S
        sends = self.take_sends()
        while True:
            results = await asyncio.gather(*sends, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is None:
                held_to: dict[TP, int] = {}
                for result in results:
                    metadata: Any = result  # the producer's record metadata (None in the agent tests)
                    if metadata is not None:
                        tp = metadata.topic_partition
                        held_to[tp] = max(held_to.get(tp, -1), metadata.offset)
                return held_to
            log.warning("a table write did not reach the changelog (%s); writing it again in %.1fs", type(failed).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_RETRY_S)
            await self._send_unsettled(still_owned)
            sends = self.take_sends()


def _event_partition() -> int:
    """The partition of the message being processed (as Faust keys a table write)."""
    event = current_event()
    assert event is not None, "a table write outside of the agent"
    partition = event.message.partition
    assert partition is not None
    return partition
