"""How Apache Kafka is configured and started with ``java``: its settings, not its lifecycle.

The JVM options, ``log4j.properties`` and ``server.properties`` of a single-node KRaft broker
(broker and controller in one JVM), the one-off ``kafka-storage format`` of a new data dir, and
the broker's command line. Apart from :class:`~stream.localstack.kafka.KafkaBroker` because these
change with Kafka's settings and versions, while the broker class changes with how a child process
is started, watched and stopped.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from stream.localstack.kafka_security import SecureListeners
from stream.localstack.process import child_preexec

__all__ = ["JVM_OPTS", "format_storage", "is_formatted", "java_command", "write_config"]

#: JVM options: small heap and serial GC for a 1-node broker on a 2-core machine.
#: C1-only JIT (TieredStopAtLevel=1) starts faster and uses less memory; plenty for
#: local development and tests.
JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:MaxMetaspaceSize=128m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_TOOL_JVM_OPTS: tuple[str, ...] = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

_LOG4J_PROPERTIES = """\
# Written by stream.localstack.kafka: warnings and the startup/shutdown lines only.
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.Kafka$=INFO
# Harmless on a fresh single-node cluster; noisy otherwise.
log4j.logger.org.apache.kafka.controller.QuorumController=ERROR
"""


def write_config(
    data_dir: Path, port: int, controller_port: int, partitions_default: int, secure: SecureListeners | None = None
) -> None:
    """Write ``server.properties`` and ``log4j.properties`` into ``data_dir`` (rewritten on every start);
    ``secure`` adds the SASL_SSL and SSL listeners."""
    (data_dir / "server.properties").write_text(_server_properties(data_dir, port, controller_port, partitions_default, secure))
    (data_dir / "log4j.properties").write_text(_LOG4J_PROPERTIES)


def is_formatted(data_dir: Path) -> bool:
    """True when an earlier start formatted ``data_dir``: its data and cluster id are kept."""
    return (data_dir / "kraft-logs" / "meta.properties").exists()


def format_storage(java: str, libs: Path, data_dir: Path, deadline: float, scram_credentials: Sequence[str] = ()) -> None:
    """``kafka-storage format`` of a new data dir with a random cluster id, and the SCRAM users given
    (``--add-scram`` arguments); RuntimeError if it fails."""
    fmt = [
        java,
        *_TOOL_JVM_OPTS,
        _log4j_opt(data_dir),
        "-cp",
        _classpath(libs),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _random_cluster_id(),
        "-c",
        str(data_dir / "server.properties"),
    ]
    for credential in scram_credentials:
        fmt += ["--add-scram", credential]
    try:
        res = subprocess.run(
            fmt,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            preexec_fn=child_preexec,
            timeout=max(10.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"kafka-storage format timed out: {exc}") from None
    if res.returncode != 0:
        raise RuntimeError(f"kafka-storage format failed (exit {res.returncode}):\n{res.stdout}{res.stderr}")


def java_command(java: str, libs: Path, data_dir: Path) -> list[str]:
    """The broker's command line, with the configuration :func:`write_config` wrote."""
    return [
        java,
        *JVM_OPTS,
        _log4j_opt(data_dir),
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        _classpath(libs),
        "kafka.Kafka",
        str(data_dir / "server.properties"),
    ]


def _classpath(libs: Path) -> str:
    return f"{libs}{os.sep}*"


def _log4j_opt(data_dir: Path) -> str:
    return f"-Dlog4j.configuration=file:{data_dir / 'log4j.properties'}"


def _random_cluster_id() -> str:
    # Kafka's Uuid.toString(): url-safe base64 of 16 bytes, no padding. Like Kafka's
    # Uuid.randomUuid(), avoid a leading "-" (the CLI would take it for an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _server_properties(data_dir: Path, port: int, cport: int, partitions_default: int, secure: SecureListeners | None) -> str:
    settings = {
        # KRaft, one node that is both broker and controller.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        # Topics.
        "num.partitions": str(partitions_default),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Internal topics on one node: RF 1 and a single partition each (the
        # default 50 partitions slow the first consumer group / transaction down).
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Few threads and small buffers for a 2-core machine.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "socket.request.max.bytes": str(100 * 1024 * 1024),
    }
    if secure is not None:
        settings["listeners"] += "," + ",".join(secure.listeners())
        settings["advertised.listeners"] += "," + ",".join(secure.listeners())
        settings["listener.security.protocol.map"] += "," + ",".join(secure.protocol_map())
        settings.update(secure.server_properties())
    lines = ["# Written by stream.localstack.kafka.KafkaBroker; rewritten on every start."]
    lines += [f"{k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"
