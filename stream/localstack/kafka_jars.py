"""The Kafka broker's jars: fetched from Maven Central once, then reused from the project's cache.

``deploy/kafka/pom.xml`` lists them and ``mvn dependency:copy-dependencies`` copies them into
``<cache>/libs``; a marker file holding a hash of the pom says the copy is complete, so a changed
pom fetches them again. Apart from the broker because this is the only part that needs Maven and
the network, and it changes with the Kafka version, not with how the broker is run.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["DEFAULT_CACHE_DIR", "KAFKA_POM", "REPO_ROOT", "ensure_kafka_jars"]

# The broker's one logger: these lines kept the name they had before kafka.py was split.
log = logging.getLogger("stream.localstack.kafka")

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the project keeps the broker's jars (git-ignored).
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "kafka"
#: The pom that lists the broker's jars.
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"

_MARKER = ".complete"


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
