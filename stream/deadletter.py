"""Dead letters: every message that cannot be processed, with its original bytes, where it came
from and why. Nothing is dropped silently; nothing personal is put in the reason.

No card number is kept: every card number in the original key and value, and in the detail, is
masked before the dead letter is written (at most its first 6 and last 4 digits stay, the others
become ``*``, byte for byte, so the original keeps its length and a decodable message still
decodes), and the dead letter carries an HMAC-SHA256 of each number masked, for correlation.

- A value the codec decodes is masked field by field, each text field by the matcher's own rule
  (``stream.core.events``: an id must hold the number in a card scheme's range; any other text, any
  number): exactly what the matcher would call a card number, and ids it accepts stay readable.
- A key, a detail and a value that does not decode (no field can be told from its length byte or
  a neighbour's number) are masked more widely: also a number glued to other digits, and a run of
  more than 40 digits whole but its first 6 and last 4 digits.

The hash key (``DEAD_LETTER_HASH_KEY``) is set by ``configure_hash_key`` when a process starts. A
process without one hashes with a random key of its own, and says so: its hashes still tell which
of its dead letters hold the same number, but not across processes or restarts. There is no
default key: with a known key, a masked number (6 digits hidden, one of them the Luhn check) is
found again from its hash in about 100,000 tries.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from schemas.codec import Codec, DecodeError
from stream.core.card_numbers import IDENTIFIER_FIELDS, MASK, looks_like_card_number, mask_card_numbers
from stream.metrics import DEAD_LETTERS

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer, ConsumerRecord

log = logging.getLogger(__name__)


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
    UNKNOWN_ACCOUNT = "unknown_account"  # a payout run, answer or wallet opening for an account the worker holds nothing of
    UNKNOWN_PAYOUT = "unknown_payout"  # an answer to a charity remittance the payouts table does not hold
    ACCOUNT_STATE_FULL = "account_state_full"  # its account's state would outgrow Kafka's record (stream.account_states)


# The most original bytes (key and value) a dead letter carries. Kafka's default message limit is
# about 1 MB, so a dead letter built around a message near that size could never be sent; past
# this, the dead letter keeps the size and a SHA-256 digest instead, and says so.
ORIGINAL_BYTES_LIMIT = 256 * 1024
KEY_BYTES_LIMIT = 1024  # a too-large message's key is kept up to this size (it names the account)
RAW_SCAN_LIMIT = 64 * 1024  # bytes that do not decode, past this size: every digit masked
HASHES_LIMIT = 64  # the most card-number hashes a dead letter carries (the first ones, in order)
_DIGIT = re.compile(r"\d")

# --- the hash key ----------------------------------------------------------------------------------

_hash_key: bytes | None = None


def configure_hash_key(secret: str | None) -> None:
    """Use ``secret`` (DEAD_LETTER_HASH_KEY) for this process's card-number hashes; None: a random
    key of this process, with a warning. Called once when a worker or sink starts."""
    global _hash_key
    if secret:
        _hash_key = secret.encode()
        return
    _hash_key = secrets.token_bytes(32)
    log.warning(
        "DEAD_LETTER_HASH_KEY is not set: card numbers masked in dead letters are hashed with a random key of this "
        "process, so their hashes cannot be compared with other processes' or after a restart"
    )


def card_number_hash(digits: str) -> str:
    """The HMAC-SHA256 (hex) of a card number's digits under this process's key."""
    if _hash_key is None:
        configure_hash_key(None)
    assert _hash_key is not None
    return hmac.new(_hash_key, digits.encode("ascii"), hashlib.sha256).hexdigest()


# --- masking -----------------------------------------------------------------------------------------


def mask_raw(data: bytes) -> tuple[bytes, frozenset[str]]:
    """``data`` with every card number in it masked (the wide rule: also glued to other digits), the
    same length; and the numbers masked. Over ``RAW_SCAN_LIMIT`` bytes, every digit is masked (and
    none hashed): searching a quarter megabyte of digit groups for glued numbers takes seconds."""
    text = data.decode("utf-8", "surrogateescape")
    if len(data) > RAW_SCAN_LIMIT:
        every_digit = _DIGIT.sub(lambda digit: MASK * len(digit.group().encode()), text)
        return every_digit.encode("utf-8", "surrogateescape"), frozenset()
    masked = mask_card_numbers(text, glued=True)
    if masked.text == text:
        return data, masked.numbers
    return masked.text.encode("utf-8", "surrogateescape"), masked.numbers


def _texts(value: Any, name: str) -> list[tuple[str, str | bytes]]:
    """Every text and bytes value of a decoded record, with the name of the field it is in."""
    if isinstance(value, str | bytes):
        return [(name, value)]
    found: list[tuple[str, str | bytes]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                found.append(("", key))  # a map's key (a record's field names hold no digits)
            found.extend(_texts(item, key if isinstance(key, str) else name))
    elif isinstance(value, list):
        for item in value:
            found.extend(_texts(item, name))
    return found


def _holds_a_card_number(record: dict[str, Any]) -> bool:
    return any(
        looks_like_card_number(text, identifier=name in IDENTIFIER_FIELDS) if isinstance(text, str) else bool(mask_raw(text)[1])
        for name, text in _texts(record, "")
    )


def mask_message(codec: Codec, data: bytes) -> tuple[bytes, frozenset[str]]:
    """``data`` (a message's value) with every card number in it masked, the same length; and the
    numbers masked. Decodable bytes are masked field by field (each by the matcher's rule for it),
    others by the wide rule (``mask_raw``)."""
    try:
        _, record = codec.decode(data)
    except DecodeError:
        return mask_raw(data)
    masked, numbers = data, set[str]()
    for name, text in _texts(record, ""):
        if isinstance(text, str):
            found = mask_card_numbers(text, identifier=name in IDENTIFIER_FIELDS)
            old, new, found_numbers = text.encode(), found.text.encode(), found.numbers
        else:
            new, found_numbers = mask_raw(text)
            old = text
        if new != old:
            masked, numbers = masked.replace(old, new), numbers | found_numbers
    try:
        clean = len(masked) == len(data) and not _holds_a_card_number(codec.decode(masked)[1])
    except DecodeError:
        clean = False
    if not clean:  # a replacement went astray (or a field still holds one): the wide rule over it all
        wide, wide_numbers = mask_raw(masked)
        return wide, frozenset(numbers | wide_numbers)
    return masked, frozenset(numbers)


# --- the dead letter ---------------------------------------------------------------------------------


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
    """The encoded dead-letter record (and the metric counted). Every card number in the key, the
    value and the detail is masked, and hashed (``card_number_hashes``). Always small enough to send:
    originals over ``ORIGINAL_BYTES_LIMIT`` are replaced by their size and digest (``too_large``)."""
    masked_detail = mask_card_numbers(detail, glued=True)
    detail, numbers = masked_detail.text, masked_detail.numbers
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
    if key is not None:
        key, key_numbers = mask_raw(key)
        numbers |= key_numbers
    if value is not None:
        value, value_numbers = mask_message(codec, value)
        numbers |= value_numbers
    if len(numbers) > HASHES_LIMIT:
        detail += f"; {len(numbers)} card numbers masked, {HASHES_LIMIT} hashed"
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
        "card_number_hashes": sorted(card_number_hash(number) for number in sorted(numbers)[:HASHES_LIMIT]),
    }
    return codec.encode("dead_letter", record)


async def send_dead_letter(
    producer: AIOKafkaProducer, codec: Codec, topic: str, stage: Stage, message: ConsumerRecord, reason: str, detail: str
) -> None:
    """A consumed message that cannot be processed, to the dead-letter topic with its reason, keyed by the topic it
    came from; returns once the broker has it (so the caller may commit past it)."""
    value = dead_letter(
        codec, stage, reason, detail, message.topic, message.partition, message.offset, message.key, message.value
    )
    await producer.send_and_wait(topic, value, key=message.topic.encode())
