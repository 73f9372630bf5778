"""Dead letters: every message that cannot be processed, with its original bytes, where it came
from and why. Nothing is dropped silently; nothing personal is put in the reason."""

from __future__ import annotations

import enum
import time
from typing import Any

from schemas.codec import Codec
from stream.metrics import DEAD_LETTERS


class Stage(str, enum.Enum):
    MATCHER = "matcher"
    SINK = "sink"
    OFFERS = "offers"


class OtherReason(str, enum.Enum):
    KEY_MISMATCH = "key_mismatch"  # the message key is not the event's account_id
    WRONG_PARTITION = "wrong_partition"  # an account message off its account's partition
    DUPLICATE_CONFLICT = "duplicate_conflict"  # same event_id, other content: quarantined
    PROCESSING_ERROR = "processing_error"  # a bug: the exception type is in the detail
    LEDGER_REJECTED = "ledger_rejected"  # Postgres refused the entry (a constraint)


def dead_letter(
    codec: Codec,
    stage: Stage,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> bytes:
    """The encoded dead-letter record (and the metric counted)."""
    DEAD_LETTERS.labels(stage.value, reason).inc()
    record: dict[str, Any] = {
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "value": value,
        "reason": reason,
        "detail": detail,
        "failed_at": int(time.time() * 1000),
        "stage": stage.value,
    }
    return codec.encode("dead_letter", record)
