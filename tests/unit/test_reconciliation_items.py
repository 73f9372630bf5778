"""The engine's reconciliation items (``AccountStep.reconcile``, accrual v4's RECONCILIATION records): which
events make one, under which id, and that adding them changed no entry's id or bytes."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest

from schemas.codec import SCHEMA_DIR, Codec
from stream.core.entries import ITEM_KINDS, moves_money
from stream.core.outcomes import Outcome
from stream.core.rules import decide
from stream.sink import appending_ids, sponsoring_ids, staging_row
from tests.factories import after_purchase, auth, book, card_event, clearing, items, legs, offer, run_decisions, run_events

CODEC = Codec()


def test_a_refund_of_a_purchase_never_seen_is_an_item_and_moves_nothing() -> None:
    refund = after_purchase("REFUND", 4_000, event_id="refund-x")
    decision = decide(refund, book(), None)
    assert decision.outcome is Outcome.UNKNOWN_TRANSACTION
    (item,) = decision.entries
    assert (item.accrual_id, item.entry_kind, item.debit_book, item.credit_book, item.amount_minor) == (
        "refund-x#reconciliation",
        "RECONCILIATION",
        "NONE",
        "NONE",
        0,
    )
    x = item.explanation
    assert (x.reason, x.basis_minor, x.basis_currency, item.purchase_ref) == ("unknown_refund", 4_000, "EUR", "txn-1")
    assert x.detail == "refund of 40.00 EUR for purchase txn-1: never seen by the worker"
    assert not moves_money(item.entry_kind) and x.reason in ITEM_KINDS


@pytest.mark.parametrize("event_type", ["CHARGEBACK", "CHARGEBACK_REVERSAL"])
def test_a_chargeback_of_a_purchase_never_seen_is_an_item(event_type: str) -> None:
    decision = decide(after_purchase(event_type, 10_000), book(), None)
    assert items(decision.entries) == [(f"unknown_{event_type.lower()}", f"{decision.entries[0].source_event_id}#reconciliation")]


def test_a_refund_of_a_known_purchase_is_no_item() -> None:
    _, entries, outcomes = run_events([auth(), clearing(), after_purchase("REFUND", 4_000)])
    assert outcomes[-1] is Outcome.CLAWED_BACK
    assert items(entries) == []


def test_a_force_post_is_an_item_and_its_entries_keep_their_ids() -> None:
    """The item takes no position: the clearing's entries are numbered as before items existed."""
    force = clearing(event_id="force-1")
    _, entries, _ = run_events([force])
    assert [e.accrual_id for e in entries if moves_money(e.entry_kind)] == ["force-1#0"]
    assert items(entries) == [("force_post", "force-1#reconciliation")]
    (item,) = (e for e in entries if not moves_money(e.entry_kind))
    assert item.explanation.force_post and item.explanation.basis_minor == 10_000


def test_a_force_post_that_earns_nothing_is_an_item_too() -> None:
    _, entries, outcomes = run_events([clearing(event_id="cash-1", mcc="6011")])
    assert outcomes == [Outcome.EXCLUDED_MCC]
    assert [(e.entry_kind, e.accrual_id) for e in entries] == [
        ("RECONCILIATION", "cash-1#reconciliation"),
        ("NOT_EARNED", "cash-1#0"),
    ]


def test_a_clearing_of_an_authorisation_and_a_later_part_are_no_items() -> None:
    first = clearing(6_000, clearing_sequence=1, clearing_count=2, event_id="part-1")
    second = clearing(4_000, clearing_sequence=2, clearing_count=2, event_id="part-2")
    _, entries, _ = run_events([first, second])
    assert items(entries) == [("force_post", "part-1#reconciliation")]  # one item for the purchase
    _, entries, _ = run_events([auth(), clearing()])
    assert items(entries) == []


def test_a_redelivered_event_re_emits_its_item_under_the_same_id() -> None:
    refund = after_purchase("REFUND", 4_000, event_id="refund-again")
    state, decisions = run_decisions([refund, refund])
    assert decisions[1].outcome is Outcome.DUPLICATE
    assert decisions[1].entries == decisions[0].entries and items(decisions[1].entries)


def test_a_late_authorisation_answers_the_force_post_its_clearing_was_taken_for() -> None:
    """DOMAIN case 8: the clearing arrived first (a ``force_post`` item: nothing else was known then);
    its approved authorisation, arriving after, changes no money and adds a ``late_authorisation``
    item for the same purchase, so operations count and list only the force posts never answered."""
    _, entries, outcomes = run_events([clearing(event_id="clr-1"), auth(event_id="auth-1")])
    assert outcomes[-1] is Outcome.ALREADY_SETTLED
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]
    assert items(entries) == [("force_post", "clr-1#reconciliation"), ("late_authorisation", "auth-1#reconciliation")]
    late = next(e for e in entries if e.accrual_id == "auth-1#reconciliation")
    assert late.transaction_ref == "txn-1" and late.explanation.basis_minor == 10_000


def test_a_declined_or_second_authorisation_after_a_clearing_answers_nothing() -> None:
    _, entries, _ = run_events([clearing(event_id="clr-1"), auth(event_id="auth-d", response_code="05")])
    assert items(entries) == [("force_post", "clr-1#reconciliation")]  # declined: a force post indeed
    _, entries, outcomes = run_events([auth(event_id="a-1"), clearing(event_id="c-1"), auth(event_id="a-2")])
    assert outcomes[-1] is Outcome.ALREADY_SETTLED and items(entries) == []  # it had its authorisation


def test_an_item_round_trips_through_accrual_v4() -> None:
    (item,) = decide(after_purchase("CHARGEBACK", 2_500), book(offer()), None).entries
    raw = CODEC.encode("accrual", item.record())  # written with the newest version (v5 a kind, v6 sponsor_id, v7, v8 kinds)
    assert int.from_bytes(raw[1:5], "big") == json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v8.avsc"]
    subject, record = CODEC.decode(raw, expected_subject="accrual")
    assert subject == "accrual" and record["entry_kind"] == "RECONCILIATION"
    assert record["explanation"]["reason"] == "unknown_chargeback"


def test_an_entry_sent_in_v3_bytes_has_the_fingerprint_of_its_v4_bytes() -> None:
    """Version 4 appended only a symbol: an entry published before the upgrade and re-emitted after it is the
    same line to the sink (not a conflict), with or without the fields version 3 appended. Version 6 appended
    sponsor_id: a bank-funded entry's bytes are the same followed by its null, one zero byte, with the same
    fingerprint."""
    v3 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "accrual.v3.avsc").read_text()))
    v3_id = json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v3.avsc"]
    _, entries, _ = run_events([auth(), clearing()])
    appending, sponsoring = appending_ids(CODEC), sponsoring_ids(CODEC)
    assert v3_id in appending and CODEC.schema_id("accrual") in appending
    assert v3_id not in sponsoring and CODEC.schema_id("accrual") in sponsoring
    for entry in entries:
        for record in (entry.record(), {**entry.record(), "merchant_id": None, "purchase_ref": None}):
            buffer = io.BytesIO()
            buffer.write(struct.pack(">bI", 0, v3_id))
            fastavro.schemaless_writer(buffer, v3, record)
            old, new = buffer.getvalue(), CODEC.encode("accrual", record)
            assert old[5:] + b"\x00" == new[5:]
            fingerprints = {staging_row(0, CODEC.decode(raw)[1], raw, appending, sponsoring)[15] for raw in (old, new)}
            assert len(fingerprints) == 1, entry.accrual_id


def test_the_new_kind_is_appended_and_nothing_else_changed() -> None:
    v3 = json.loads((SCHEMA_DIR / "accrual.v3.avsc").read_text())
    v4 = json.loads((SCHEMA_DIR / "accrual.v4.avsc").read_text())
    kinds3, kinds4 = (s["fields"][4]["type"]["symbols"] for s in (v3, v4))
    assert kinds4 == [*kinds3, "RECONCILIATION"]
    v4["fields"][4]["type"]["symbols"] = kinds3
    assert [f for f in v4["fields"]] == v3["fields"]


def test_an_item_is_numbered_apart_from_a_card_event_s_own_id() -> None:
    refund = card_event("REFUND", 1_000, event_id="r-9", processing_code="REFUND", original_transaction_ref="nowhere")
    (item,) = decide(refund, book(), None).entries
    assert item.accrual_id == "r-9#reconciliation" and item.source_event_id == "r-9"
