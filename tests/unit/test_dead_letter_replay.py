"""Which dead letters a replay publishes again (``stream.deadletter_admin.choose``); the replay against
a real broker is ``tests/integration/test_dead_letter_replay.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stream.deadletter_admin import REASONS, choose, format_replay

TOPICS = frozenset({"cashback.card.authorizations", "cashback.accruals"})
AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def letter(reason: str = "processing_error", **fields: Any) -> dict[str, Any]:
    return {
        "source_topic": "cashback.card.authorizations",
        "source_partition": 1,
        "source_offset": 7,
        "key": b"acct-1",
        "value": b"\x00\x00\x00\x00\x01...",
        "reason": reason,
        "detail": "ZeroDivisionError",
        "failed_at": AT,
        "stage": "matcher",
        "card_number_hashes": [],
        "dead_letter_at": (0, 3),
        **fields,
    }


def test_only_whole_dead_letters_of_the_reasons_asked_for_from_the_pipeline_s_topics_are_replayed() -> None:
    letters = [
        letter(),
        letter(source_topic="cashback.accruals", stage="sink", reason="ledger_rejected"),
        letter(reason="invalid_mcc"),  # not asked for: not counted either
        letter(card_number_hashes=["ab" * 32]),  # its bytes are no longer the processor's
        letter(reason="too_large", value=None),
        letter(source_topic="somebody.else"),
        letter(reason="unreadable"),
    ]
    replay = choose(letters, frozenset({"processing_error", "ledger_rejected", "too_large", "unreadable"}), None, TOPICS)
    assert replay.replayed == letters[:2]
    assert replay.left == {
        "card numbers were masked in it: the processor must send it again without them": 1,
        "too large: its bytes were not kept": 1,
        "from somebody.else, a topic a replay does not publish on": 1,
        "not a dead letter": 1,
    }


def test_since_keeps_the_dead_letters_written_at_or_after_it() -> None:
    earlier, at, later = letter(failed_at=AT.replace(hour=11)), letter(), letter(failed_at=AT.replace(hour=13))
    assert choose([earlier, at, later], frozenset({"processing_error"}), AT, TOPICS).replayed == [at, later]


def test_the_summary_line_says_what_was_done_and_what_was_left() -> None:
    replay = choose([letter(), letter(value=None)], frozenset({"processing_error"}), None, TOPICS)
    lines = format_replay(replay, dry_run=True).splitlines()
    assert lines[0].startswith("would replay 2026-12-06 12:00:00 matcher processing_error")
    assert "acct-1" not in lines[0] and "..." not in lines[0]  # never the original bytes
    assert lines[-1] == "1 dead letters would be replayed; left: 1 too large: its bytes were not kept"


def test_every_reason_written_is_one_an_operator_can_name() -> None:
    from stream.deadletter import OtherReason

    assert {"processing_error", "unknown_account", "invalid_mcc", "account_erased"} <= REASONS
    assert {r.value for r in OtherReason} <= REASONS
