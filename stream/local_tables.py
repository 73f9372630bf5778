"""The worker's tables on its local disk, kept across a restart only when the worker stopped cleanly.

Faust writes a table change to the local store at once, and to the table's changelog topic when
the producer sends it. A worker killed in between leaves its local store ahead of the changelog:
restarted on that store, it would build on writes that no other worker can ever read back. The
input offsets of those writes were not committed (the producer is flushed first), so the restarted
worker sees the message again, finds it decided in its local store, and commits it: from then on
the changelog misses that step for good, and the next owner of the partition decides on a state
that lacks it (the chaos run found a summary naming a row the changelog never received).

So, as Kafka Streams keeps a local store only with the checkpoint file a clean shutdown writes, a
worker marks a clean stop in its data directory, removes the mark when it starts, and one that
finds no mark deletes its local tables and rebuilds them from their changelogs. A graceful restart
reads only the changelogs' tails; a restart after kill -9 reads them whole.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CLEAN_STOP_MARK = "stopped-cleanly"


class LocalTables:
    """The local table directory of one worker, and the mark of its last clean stop."""

    def __init__(self, table_dir: Path, data_dir: Path) -> None:
        self.table_dir = table_dir
        self.mark = data_dir / CLEAN_STOP_MARK

    def open(self) -> bool:
        """Before the worker starts: keep the local tables only after a clean stop, and take the
        mark away (a crash from now on leaves none). Returns whether the tables were kept."""
        kept = self.mark.exists() or not self.table_dir.exists()
        if not kept:
            log.warning(
                "the worker did not stop cleanly last time: its local tables may be ahead of their changelogs;"
                " rebuilding them from the changelogs"
            )
            shutil.rmtree(self.table_dir)
        self.mark.unlink(missing_ok=True)
        return kept

    def stopped_cleanly(self) -> None:
        """After the worker stopped without a crash: every table write reached its changelog."""
        self.mark.parent.mkdir(parents=True, exist_ok=True)
        self.mark.touch()
