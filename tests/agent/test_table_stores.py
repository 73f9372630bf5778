"""The matcher's tables on the local store a worker really uses (RocksDB through rocksdict), pinned
against the installed Faust: what goes in comes back out, byte for byte.

The other agent tests run the tables on Faust's in-memory store, which keeps Python objects and
never serializes, so they cannot see this. Faust picks the local store's serializer from the
table's ``value_type`` alone ("raw" for ``bytes``, JSON for anything else, whatever the table's
schema says): a state table built without ``value_type=bytes`` wrote its MessagePack values and
could not read them back, and the worker stopped at the first account it had stored before.
"""

from __future__ import annotations

import json
from typing import cast

import faust
import msgspec
import pytest
from faust.exceptions import ValueDecodeError
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas.codec import Codec
from stream.changelog_table import ChangelogTable
from stream.core.events import to_event
from stream.core.rules import decide
from stream.core.state_rows import decode_summary, encode
from stream.core.state_writes import split
from stream.matcher import Matcher
from stream.metrics import STORE_MEMORY_USED
from stream.settings import Settings
from stream.worker_app import STATE_SCHEMA
from tests.factories import T0, book, card_record


def stored_state_bytes() -> bytes:
    event = to_event(card_record(amount_minor=10_000, occurred_at=T0))
    state = decide(event, book(), None).state
    return encode(split("acct-1", None, state, before_in_rows=True).summary)


def put(store: faust.stores.base.Store, partition: int, key: str, value: bytes) -> None:  # type: ignore[name-defined]
    """Write as the table does when a change settles (its store's own encoding), outside an event."""
    db = store._db_for_partition(partition)
    encoded_key = store._encode_key(key)
    store._key_index[encoded_key] = partition
    db.put(encoded_key, store._encode_value(value))


def test_settled_changes_and_their_persisted_offset_land_in_one_write_per_partition(settings: Settings, codec: Codec) -> None:
    """A settle writes each partition's changes and its persisted offset in one RocksDB write: a
    kill between two puts cannot leave an offset ahead of the values it covers (or one WAL append
    per change)."""
    from faust.types import TP

    from stream.changelog_table import DELETED

    table = Matcher(settings, codec).states
    store = table._new_store_by_url("rocksdb://")
    table._data = store
    put(store, 1, "gone", b"old")
    writes: dict[int, int] = {}
    open_db = store._db_for_partition

    class Counted:
        def __init__(self, partition: int) -> None:
            self.db, self.partition = open_db(partition), partition

        def write(self, batch: object) -> None:
            writes[self.partition] = writes.get(self.partition, 0) + 1
            self.db.write(batch)

        def put(self, *_: object) -> None:
            raise AssertionError("a settled change written alone")

        delete = put

    store._db_for_partition = Counted
    changelog = table.changelog_topic.get_topic_name()
    changes = {"a": (0, b"A"), "b": (1, b"B"), "gone": (1, DELETED), "c": (0, b"C")}
    table.write_settled(changes, {TP(changelog, 0): 41, TP(changelog, 1): 7})
    assert writes == {0: 1, 1: 1}
    store._db_for_partition = open_db
    assert (store["a"], store["b"], store["c"]) == (b"A", b"B", b"C")
    assert "gone" not in store
    assert store.persisted_offset(TP(changelog, 0)) == 41
    assert store.persisted_offset(TP(changelog, 1)) == 7


def test_the_state_table_reads_back_the_bytes_it_stored(settings: Settings, codec: Codec) -> None:
    matcher = Matcher(settings, codec)
    store = matcher.states._new_store_by_url("rocksdb://")
    value = stored_state_bytes()
    with pytest.raises(UnicodeDecodeError):
        value.decode()  # MessagePack, not text: a JSON serializer cannot read it
    put(store, 0, "acct-1", value)
    assert store["acct-1"] == value
    assert decode_summary(store["acct-1"]) is not None
    put(store, 1, "acct-2", b'{"layout": 2}')  # a value written by an earlier version, in JSON
    assert store["acct-2"] == b'{"layout": 2}'


def test_reading_a_row_asks_the_local_store_once(settings: Settings, codec: Codec) -> None:
    """A state is read row by row (``stream.core.state_rows.assemble``): each read is one RocksDB
    look-up, present or absent, not a ``contains`` followed by a ``get``."""
    matcher = Matcher(settings, codec)
    table = matcher.states
    store = table._new_store_by_url("rocksdb://")
    table._data = store
    value = stored_state_bytes()
    put(store, 0, "acct-1", value)
    calls = {"get": 0, "contains": 0}
    get, contains = store._get, store._contains

    def counted_get(key: bytes) -> bytes | None:
        calls["get"] += 1
        return get(key)

    def counted_contains(key: bytes) -> bool:
        calls["contains"] += 1
        return contains(key)

    store._get, store._contains = counted_get, counted_contains
    assert table.get("acct-1") == value
    assert table.get("acct-404") is None
    with pytest.raises(KeyError):
        table["acct-404"]
    assert calls == {"get": 3, "contains": 0}


KEYS = [
    "acct-1",
    "acct-1\x1ft\x1ftxn-1",
    "acct-1\x1fr\x1f31",
    'quote " backslash \\ tab \t',
    "compte-é-ß-€-😀",
    "\x00\x7f",
    "",
]


@pytest.mark.parametrize("table_name", ["states", "profiles"])
def test_the_tables_own_encoding_of_keys_and_values_is_fausts_byte_for_byte(
    settings: Settings, codec: Codec, table_name: str
) -> None:
    """A change's key and value on the changelog and in the local store, and a value read back,
    are the bytes Faust's serializers give (the table encodes str keys and raw values itself, at a
    twentieth of their cost)."""
    table = getattr(Matcher(settings, codec), table_name)
    store = table._new_store_by_url("rocksdb://")
    topic = table.changelog_topic
    values: list[object] = [b"\x81\xa1a\x01", b"", b"{}"] if table_name == "states" else [{"segments": ["vip"]}, [1, "x"]]
    for key in KEYS:
        assert table.changelog_key(key) == topic.prepare_key(key, table.key_serializer)[0] == store._encode_key(key)
        assert table.store_key(store, key) == store._encode_key(key)
    for value in values:
        assert table.changelog_value(value) == topic.prepare_value(value, table.value_serializer)[0]
        assert table.store_value(store, value) == store._encode_value(value)
        assert table.stored_value(store, store._encode_value(value)) == store._decode_value(store._encode_value(value))


def test_many_rows_are_read_in_one_multi_get_of_their_partition_unsettled_changes_first(settings: Settings, codec: Codec) -> None:
    """``get_many`` answers as ``get`` would key by key (a change not settled yet, a staged
    deletion, a row only the store has, an absent one), asking the partition's RocksDB once."""
    from stream.changelog_table import DELETED

    table = Matcher(settings, codec).states
    store = table._new_store_by_url("rocksdb://")
    table._data = store
    for key, value in (("a", b"A-stored"), ("b", b"B-stored"), ("c", b"C-stored")):
        put(store, 2, key, value)
    table.stage("a", b"A-staged", 2)
    table.stage("b", DELETED, 2)
    keys = ["a", "b", "c", "absent"]
    one_by_one = [table.get(key) for key in keys]
    asked: list[object] = []
    single_gets = {"n": 0}
    db = store._db_for_partition(2)
    open_db, get = store._db_for_partition, store._get

    class Counted:
        def get(self, wanted: object) -> object:
            asked.append(wanted)
            return db.get(wanted)

    def counted_get(key: bytes) -> bytes | None:
        single_gets["n"] += 1
        return get(key)

    store._db_for_partition, store._get = (lambda partition: Counted() if partition == 2 else open_db(partition)), counted_get
    assert table.get_many(keys, 2) == one_by_one == [b"A-staged", None, b"C-stored", None]
    assert asked == [[store._encode_key("c"), store._encode_key("absent")]] and single_gets["n"] == 0


def test_an_account_read_from_the_store_asks_for_its_rows_at_once(settings: Settings, codec: Codec) -> None:
    """A state not held in memory is read back whole from RocksDB: its summary, then every row it
    names in one multi-get of the account's partition (one look-up each through Faust's read
    path cost several times the read itself, for every row of every account read)."""
    from topics.catalogue import account_partition

    matcher = Matcher(settings, codec)
    table = matcher.states
    store = table._new_store_by_url("rocksdb://")
    table._data = store
    partitions = matcher.topics.authorizations.partitions
    partition = account_partition("acct-1", partitions)
    state, slots = None, {}
    for n in range(5):
        event = to_event(card_record(amount_minor=10_000 + n, occurred_at=T0, transaction_ref=f"txn-{n}"))
        after = decide(event, book(), state).state
        writes = split("acct-1", state, after, before_in_rows=state is not None, slots=slots)
        for key, value in [("acct-1", encode(writes.summary)), *((k, encode(v)) for k, v in writes.rows.items())]:
            put(store, partition, key, value)
        state, slots = after, writes.slots
    summary = decode_summary(store["acct-1"])
    put(store, partition, "acct-1", encode(msgspec.structs.replace(summary, fresh={})))  # every row from the store
    multi_gets: list[int] = []
    db, open_db = store._db_for_partition(partition), store._db_for_partition

    class Counted:
        def get(self, wanted: object) -> object:
            assert isinstance(wanted, list), "a row read alone"
            multi_gets.append(len(wanted))
            return db.get(wanted)

    store._db_for_partition = lambda p: Counted() if p == partition else open_db(p)
    assert matcher.accounts.get("acct-1") == state
    assert state is not None and len(state.txns) == 5
    assert multi_gets == [len(state.txns) + len(state.recent)]


def test_the_profile_table_reads_back_its_json(settings: Settings, codec: Codec) -> None:
    matcher = Matcher(settings, codec)
    store = matcher.profiles._new_store_by_url("rocksdb://")
    put(store, 0, "acct-1", {"segments": ["vip"]})  # type: ignore[arg-type]
    assert store["acct-1"] == {"segments": ["vip"]}
    assert json.loads(store._encode_value({"segments": ["vip"]})) == {"segments": ["vip"]}


def test_faust_takes_the_store_serializer_from_the_value_type_not_the_schema(settings: Settings, codec: Codec) -> None:
    """Why the state table is given ``value_type=bytes``: with the schema alone, the store reads JSON."""
    matcher = Matcher(settings, codec)
    schema_only = ChangelogTable(matcher.app, name="schema-only", default=None, schema=STATE_SCHEMA)
    store = schema_only._new_store_by_url("rocksdb://")
    put(store, 0, "acct-1", stored_state_bytes())
    with pytest.raises(ValueDecodeError):
        store["acct-1"]


def test_each_partition_store_has_bounded_memory(settings: Settings, codec: Codec) -> None:
    """Faust's defaults give each partition's store 3 x 64 MiB write buffers (and a 2 GiB cache of its
    own: see the shared budget below)."""
    from stream.worker_app import STORE_OPTIONS

    matcher = Matcher(settings, codec)
    for table in (matcher.states, matcher.profiles):
        for _ in range(2):  # Faust's store takes keys out of the options it is given: a second store too
            options = table._new_store_by_url("rocksdb://").rocksdb_options
            assert options.write_buffer_size == STORE_OPTIONS["write_buffer_size"]
            assert options.max_write_buffer_number == STORE_OPTIONS["max_write_buffer_number"]


def test_every_local_store_draws_on_one_shared_memory_budget(settings: Settings, codec: Codec) -> None:
    """Stores of several partitions and both tables share one block cache, and their memtables are
    charged to it: writing several times the budget across stores keeps the cache's usage near it."""
    from stream.worker_app import STORE_MEMORY_BYTES, SharedMemoryOptions, _shared_memory

    matcher = Matcher(settings, codec)
    stores = [table._new_store_by_url("rocksdb://") for table in (matcher.states, matcher.profiles)]
    assert all(isinstance(store.rocksdb_options, SharedMemoryOptions) for store in stores)
    cache, _ = _shared_memory()
    before = cache.get_usage()
    value = bytes(range(256)) * 64  # 16 KiB, not compressible to nothing
    written = 0
    for n in range(3 * STORE_MEMORY_BYTES // len(value)):
        db = stores[0]._db_for_partition(n % 4)
        db.put(stores[0]._encode_key(f"acct-{n}"), value)
        written += len(value)
    assert cache.get_usage() > before, "the memtables are charged to the shared cache"
    assert written > 2 * STORE_MEMORY_BYTES
    assert cache.get_usage() <= 1.5 * STORE_MEMORY_BYTES
    matcher.accounts.observe_memory()  # the gauge operators watch reads that same shared cache (which
    # RocksDB's background flushes may change meanwhile: the memtables written above, not what was before)
    assert before < STORE_MEMORY_USED._value.get() <= 1.5 * STORE_MEMORY_BYTES


def test_the_tables_changelogs_are_compacted_within_a_bounded_time(settings: Settings, codec: Codec) -> None:
    """An erased account's tombstones must reach the disk of the changelogs within a week, like the
    compacted topics of the catalogue."""
    from topics.catalogue import MAX_COMPACTION_LAG_MS

    matcher = Matcher(settings, codec)
    for table in (matcher.states, matcher.profiles):
        assert table.changelog_topic.config["max.compaction.lag.ms"] == str(MAX_COMPACTION_LAG_MS)


def test_a_partitions_heads_are_read_past_the_keys_filed_under_each_in_one_seek(settings: Settings, codec: Codec) -> None:
    """``heads`` (how the first clock tick of a partition finds its accounts' summaries) reads what a
    walk over every key of the partition reads: each key without the separator with its value, a
    change not settled yet first, a key only staged so far included, other partitions left out; ids
    that start alike or change under JSON's escapes included. It reads about two keys a head,
    however many rows each has (a walk over them all took 100 µs an account of 35 rows)."""
    from stream.changelog_table import DELETED

    table = Matcher(settings, codec).states
    store = table._new_store_by_url("rocksdb://")
    table._data = store
    heads = ["a", "a b", "a-1", "a\\u001f", 'a"q', "b", "é", "z"]
    for head in heads:
        put(store, 1, head, f"summary of {head}".encode())
        for n in range(30):
            put(store, 1, f"{head}\x1fr\x1f{n}", b"row")
    put(store, 2, "other", b"elsewhere")
    table.unsettled.update(
        {
            "b": (1, b"b, not settled yet"),
            "a b": (1, DELETED),
            "c": (1, b"c, new"),
            "c\x1ft\x1fx": (1, b"row"),
            "d": (2, b"d, elsewhere"),
        }
    )
    db, open_db = store._db_for_partition(1), store._db_for_partition
    read: list[bytes] = []

    class Cursor:
        def __init__(self) -> None:
            self.cursor = db.iter()
            self.seek, self.valid, self.value, self.next = (
                self.cursor.seek,
                self.cursor.valid,
                self.cursor.value,
                self.cursor.next,
            )

        def key(self) -> bytes:
            read.append(self.cursor.key())
            return cast(bytes, self.cursor.key())

    class Counted:
        def iter(self) -> Cursor:
            return Cursor()

    store._db_for_partition = lambda p: Counted() if p == 1 else open_db(p)

    def partition_of(key: str) -> int:
        raise AssertionError("a RocksDB partition's store holds its own keys alone: none is placed")

    found = list(table.heads(1, "\x1f", partition_of))
    store._db_for_partition = open_db

    walked = {json.loads(raw): raw for raw in db.keys() if raw.startswith(b'"')}
    expected = {key: table.get(key) for key in walked if "\x1f" not in key}
    assert dict(found) == {**expected, "c": b"c, new"}
    assert len(found) == len(heads) + 1
    assert dict(found)["b"] == b"b, not settled yet" and dict(found)["a b"] is None
    assert dict(found)["a\\u001f"] == b"summary of a\\u001f"
    assert len(read) <= 2 * len(heads) + 1


def test_a_key_read_back_from_the_store_is_the_key_written(settings: Settings, codec: Codec) -> None:
    """``stored_key`` reads a JSON text without escapes as its bytes between the quotes (no JSON
    decoder): whatever the key (quotes, backslashes, the rows' separator, any script, or no text at
    all), it reads back what Faust's store wrote, as the JSON decoder does."""
    table = Matcher(settings, codec).states
    store = table._new_store_by_url("rocksdb://")

    @given(key=st.one_of(st.text(max_size=40), st.text(alphabet='ab"\\\x1f\u00e9', max_size=8), st.integers()))
    @hypothesis_settings(max_examples=400, deadline=None)
    def reads_back(key: str | int) -> None:
        for raw in {store._encode_key(key), table.store_key(store, key)}:
            assert table.stored_key(store, raw) == json.loads(raw) == key

    reads_back()


def test_the_in_memory_store_s_heads_are_those_of_the_partition_asked(settings: Settings, codec: Codec) -> None:
    """The store in memory (one mapping for every partition) gives the heads ``partition_of`` places
    on the partition asked, and no other."""
    table = Matcher(settings, codec).states
    store = table._new_store_by_url("memory://")
    table._data = store
    for key, value in {"p1-a": b"a", "p2-b": b"b", "p1-c\x1fr\x1f0": b"row"}.items():
        store[key] = value
    table.unsettled.update({"p1-d": (1, b"d"), "p2-e": (2, b"e")})

    def partition_of(key: str) -> int:
        return int(key[1])

    assert sorted(table.heads(1, "\x1f", partition_of)) == [("p1-a", b"a"), ("p1-d", b"d")]
    assert sorted(table.heads(2, "\x1f", partition_of)) == [("p2-b", b"b"), ("p2-e", b"e")]
