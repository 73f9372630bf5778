"""Dead letters: every message that cannot be processed, with its original bytes, where it came
from and why. Nothing is dropped silently; nothing personal is put in the reason."""

from __future__ import annotations

import enum
import hashlib
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
    LEDGER_CONFLICT = "ledger_conflict"  # the account's ledger holds the entry's id with other content
    TOO_LARGE = "too_large"  # the original bytes would not fit a dead letter: digest and size kept


# The most original bytes (key and value) a dead letter carries. Kafka's default message limit is
# about 1 MB, so a dead letter built around a message near that size could never be sent; past
# this, the dead letter keeps the size and a SHA-256 digest instead, and says so.
ORIGINAL_BYTES_LIMIT = 256 * 1024
KEY_BYTES_LIMIT = 1024  # a too-large message's key is kept up to this size (it names the account)


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
    """The encoded dead-letter record (and the metric counted). Always small enough to send:
    originals over ``ORIGINAL_BYTES_LIMIT`` are replaced by their size and digest (``too_large``)."""
    size = len(key or b"") + len(value or b"")
    if size > ORIGINAL_BYTES_LIMIT:
        digest = hashlib.sha256(value or b"").hexdigest()
        detail = (
            f"{reason}: {detail[:500]}; original dropped: key {len(key or b'')} bytes, "
            f"value {len(value or b'')} bytes, value sha256 {digest}"
        )
        reason, value = OtherReason.TOO_LARGE.value, None
        if len(key or b"") > KEY_BYTES_LIMIT:
            key = None
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
