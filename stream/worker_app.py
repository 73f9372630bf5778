"""A worker's Faust app, and its tables' schemas and local stores: the settings Faust would get
wrong by default for this pipeline, each with its reason. The matcher (``stream.matcher``) builds
its agent, tables and timers on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
import rocksdict
from faust.stores.rocksdb import RocksDBOptions

from stream.guarded_consumer import GuardedApp, broker_credentials
from stream.settings import Settings

# Profiles are plain JSON: no value_type, which Faust could not rebuild from the changelog
# (value_type=dict made every recovery fail and wait forever). States are bytes the account states
# encode and decode themselves (MessagePack: stream.core.state_rows); the table must be given
# value_type=bytes as well, because Faust picks its local store's serializer from the table's
# value_type alone ("raw" for bytes, JSON otherwise, whatever the schema says).
PROFILE_SCHEMA: faust.Schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


class MessageBytes(faust.Schema):
    """The input topics' schema: an event's key and value are its message's own bytes, as Faust's
    raw serializer leaves them, without the serializer registry's lookups for each message (3.0 to
    1.4 µs a message, 100,000 decoded; the matcher reads the message's bytes and decodes them itself)."""

    def loads_key(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value


INPUT_SCHEMA = MessageBytes(key_serializer="raw", value_serializer="raw")
STATE_SCHEMA: faust.Schema = faust.Schema(key_type=str, value_type=bytes, key_serializer="json", value_serializer="raw")
# Each table partition's local store (RocksDB): Faust's defaults give each one up to 3 write buffers of
# 64 MiB and its own 2 GiB block cache, so a worker's memory grew with every partition it held (the
# benchmark saw its RSS 1.5 times larger after 40,000 events than after 10,000). Here every store of
# the worker (all partitions of both tables) shares one budget, ``STORE_MEMORY_BYTES``: one block
# cache, to which their memtables are charged too (RocksDB's write buffer manager), so the worker's
# memory for its stores does not grow with the partitions or the events it holds
# (``SharedMemoryOptions``; ``tests/agent/test_table_stores.py`` pins it on a real store).
STORE_OPTIONS = {"write_buffer_size": 8 * 2**20, "max_write_buffer_number": 2}  # per store, within the budget
STORE_MEMORY_BYTES = 64 * 2**20

_shared: dict[str, Any] = {}  # the process's one block cache and write buffer manager, made on first use


def _shared_memory() -> tuple[Any, Any]:
    if not _shared:
        cache = rocksdict.Cache(STORE_MEMORY_BYTES)
        _shared["cache"] = cache
        _shared["buffers"] = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            STORE_MEMORY_BYTES // 2, False, cache
        )
    return _shared["cache"], _shared["buffers"]


def store_memory_used() -> int | None:
    """What the shared block cache holds now, the memtables charged to it included (None: no
    RocksDB store opened in this process)."""
    return int(_shared["cache"].get_usage()) if _shared else None


class SharedMemoryOptions(RocksDBOptions):
    """Faust's RocksDB options (rocksdict), but the block cache and the memtables' budget are the
    process's, shared by every store, instead of a cache of their own per store."""

    def as_options(self) -> Any:
        cache, buffers = _shared_memory()
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


def share_store_memory(store: Any) -> None:
    """Make a table's new local store draw on the worker's shared memory budget (a RocksDB store
    through rocksdict; any other store is left as it is)."""
    options = getattr(store, "rocksdb_options", None)
    if isinstance(options, RocksDBOptions) and options.use_rocksdict:
        options.__class__ = SharedMemoryOptions  # the same settings, the shared cache


COMMIT_INTERVAL_S = 1.0  # how much a crash may make the next owner read again (idempotently)
# The most records one fetch hands to Faust. Faust's default is no bound: one fetch took everything
# aiokafka held (up to CONSUMER_FETCH_BYTES per partition, hundreds of thousands of events on a
# backlog), and Faust fetches again only once it has put the whole batch in the agent's stream
# buffer, one message at a time, each waiting for room (stream_buffer_maxsize, 4096). aiokafka counts
# that wait as its consumer being idle, and leaves the group after MAX_POLL_INTERVAL_S of it: the
# benchmark's long run drained one batch for more than Faust's 1000 s, dropped out of its group and
# never came back (stream.group_membership). 500 records are a second or two of the agent's work.
MAX_POLL_RECORDS = 500
# How long the fetcher may go without fetching before aiokafka leaves the group (Faust's default:
# 1000 s, unset before). Between two fetches the fetcher waits for the agent to take one batch
# (MAX_POLL_RECORDS) behind a full stream buffer (4096): about 4,600 messages, 8 s at the 587
# messages/s of the loaded benchmark, 230 s at 20 messages/s. 300 s leaves that margin and still
# bounds how long a worker whose fetching really stopped keeps its partitions from the others
# (a dead one loses them after WORKER_SESSION_TIMEOUT_S without heartbeat, which is unrelated:
# heartbeats go on while the fetcher waits).
MAX_POLL_INTERVAL_S = 300.0
CONSUMER_FETCH_BYTES = 8 * 1024 * 1024
# The producer gathers a flush's records for up to 5 ms into batches of up to 256 KiB (Faust's
# defaults: no wait, 16 KiB), so a flush of a few thousand records (the changelog's rows, then the
# entries) leaves in a few large produce requests instead of many small ones. The worker's CPU
# seconds over the benchmark's 60,000-event drain, nine runs with the same output: a mean of 33.4 s
# with these, 39.8 s with Faust's defaults (README, Performance). A flush now makes its own batches,
# handed over closed (stream.producing.Batches), which the producer sends without that wait; the
# linger is left to records sent one by one (dead letters, the clock's ticks).
PRODUCER_LINGER_S = 0.005
PRODUCER_BATCH_BYTES = 256 * 1024


def worker_app(
    settings: Settings, guarded_topics: frozenset[str], partitions: int, ordered_topics: Mapping[str, int] | None = None
) -> GuardedApp:
    """The app of a worker whose consumer commits only what the agent accounted for on
    ``guarded_topics`` (``stream.guarded_consumer``), with topics of ``partitions`` partitions, and
    hands on each partition's messages of ``ordered_topics`` in the order they were published
    (``stream.input_order``; the values: their places among messages of the same millisecond)."""
    return GuardedApp(
        settings.app_id,
        guarded_topics=guarded_topics,
        ordered_topics=ordered_topics,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        # Persistent local tables (RocksDB through rocksdict): a restarted worker reads its
        # state from disk and only the changelog's tail, not the whole changelog.
        store="rocksdb://",
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.worker_instance_id,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_s / 10),
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_max_poll_records=MAX_POLL_RECORDS,
        broker_max_poll_interval=MAX_POLL_INTERVAL_S,
        # Per partition and fetch, for the changelogs a worker reads when it takes a partition over.
        # Faust's 1 MiB was suspected of the slow reads (about 3,400 records/s); 8 MiB measured no
        # faster on this machine, where reading is bound by the CPU the whole stack shares.
        consumer_max_fetch_size=CONSUMER_FETCH_BYTES,
        producer_acks=-1,
        producer_linger=PRODUCER_LINGER_S,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        stream_wait_empty=False,
        web_enabled=False,
        autodiscover=False,
        datadir=settings.worker_data_dir,
        table_cleanup_interval=3600.0,
        # No standby replicas (Faust's default keeps one). A standby missed the changelog records
        # that were there when it began to follow the partition (Faust's standby reader skipped its
        # first backlog and later moved the persisted offset past it): the chaos run found every
        # standby partition of a worker missing exactly its records up to the highwater at the
        # worker's start (offsets 0-57, 0-36, 0-106 and 0-59 of four partitions), and once such a
        # partition became the worker's own, its summaries named rows its store did not hold
        # (MissingRow) and the partition stopped. Without standbys a partition taken over is read
        # from the changelog from the persisted offset of a store only this worker's own writes and
        # recoveries made (stream.changelog_table): a slower take-over, never a store with holes.
        table_standby_replicas=0,
    )
