"""A worker's Faust app: the settings Faust would get wrong by default for this pipeline, each with
its reason. The matcher (``stream.matcher``) builds its agent, tables and timers on it.
"""

from __future__ import annotations

from stream.guarded_consumer import GuardedApp, broker_credentials
from stream.settings import Settings

COMMIT_INTERVAL_S = 1.0  # how much a crash may make the next owner read again (idempotently)
CONSUMER_FETCH_BYTES = 8 * 1024 * 1024


def worker_app(settings: Settings, guarded_topics: frozenset[str], partitions: int) -> GuardedApp:
    """The app of a worker whose consumer commits only what the agent accounted for on
    ``guarded_topics`` (``stream.guarded_consumer``), with topics of ``partitions`` partitions."""
    return GuardedApp(
        settings.app_id,
        guarded_topics=guarded_topics,
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
        # Per partition and fetch, for the changelogs a worker reads when it takes a partition over.
        # Faust's 1 MiB was suspected of the slow reads (about 3,400 records/s); 8 MiB measured no
        # faster on this machine, where reading is bound by the CPU the whole stack shares.
        consumer_max_fetch_size=CONSUMER_FETCH_BYTES,
        producer_acks=-1,
        stream_wait_empty=False,
        web_enabled=False,
        autodiscover=False,
        datadir=settings.worker_data_dir,
        table_cleanup_interval=3600.0,
    )
