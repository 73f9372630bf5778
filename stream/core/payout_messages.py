"""Cash payouts' messages (``stream.core.payouts``): a ``payout_run`` record for one account (or an
operator's opening of its wallet, carried by the same schema), and the bank's ``payout_result`` answer
to a payout, validated and made events. ``stream.core.events.validate`` and ``to_event`` hand such
records here; like them, a rejection names the field, never its value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stream.core.card_numbers import looks_like_card_number
from stream.core.events import (
    INSTRUCTION_TEXT_LIMIT,
    CardEvent,
    EventType,
    PayoutAnswer,
    PayoutRun,
    Rejection,
    RejectReason,
    WalletOpening,
    note_event,
)
from stream.core.money import is_known_currency


def validate(record: Mapping[str, Any]) -> Rejection | None:
    """The first thing wrong with a payout run (``minimums``) or a payout's answer (``payout_id``), or None."""
    return _validate_payout_run(record) if "minimums" in record else _validate_payout_result(record)


def to_event(record: Mapping[str, Any]) -> CardEvent:
    """A validated payout run or answer as its account's event (call ``validate`` first)."""
    return payout_run_of(record) if "minimums" in record else payout_result_of(record)


PAYOUT_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # no ':' (it separates a payout id's parts)
PAYOUT_REASON_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PAYOUT_ANSWERS = ("CONFIRMED", "REJECTED")


def payout_id_parts(pid: str) -> tuple[str, str, str] | None:
    """(run id, account id, currency) of a payout id ``p:<run>:<account>:<currency>`` (None: not one)."""
    head, _, rest = pid.partition(":")
    run, _, rest = rest.partition(":")
    account, _, currency = rest.rpartition(":")
    if head != "p" or not PAYOUT_RUN_ID.fullmatch(run) or not account or not currency:
        return None
    return run, account, currency


_WALLET_KINDS = frozenset({"CASH", "POINTS", "STORE_CREDIT", "CHARITY"})


def _validate_wallet_opening(opening: Mapping[str, Any]) -> Rejection | None:
    actor = opening.get("actor") or ""
    ids = [i for i in (opening.get("last_accrual_id"), opening.get("last_mark_id")) if isinstance(i, str)]
    if looks_like_card_number(actor) or any(looks_like_card_number(i, identifier=True) for i in ids):
        return Rejection(RejectReason.CARD_NUMBER_DETECTED, "wallet_opening")
    if not actor or len(actor) > INSTRUCTION_TEXT_LIMIT:
        return Rejection(RejectReason.INVALID_FIELD, "wallet_opening")
    seen: set[tuple[str, str]] = set()
    for line in opening.get("available") or ():
        kind, unit = line["reward_kind"], line["unit"]
        if not (is_known_currency(unit) or unit == "PTS"):
            return Rejection(RejectReason.UNKNOWN_CURRENCY, "wallet_opening")
        if kind not in _WALLET_KINDS or (kind, unit) in seen:
            return Rejection(RejectReason.INVALID_FIELD, "wallet_opening")
        seen.add((kind, unit))
    return None


def _validate_payout_run(record: Mapping[str, Any]) -> Rejection | None:
    for name in ("run_id", "account_id"):
        value = record.get(name)
        if isinstance(value, str) and looks_like_card_number(value, identifier=True):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    if record.get("wallet_opening") is not None:
        rejection = _validate_wallet_opening(record["wallet_opening"])
        if rejection is not None:
            return rejection
    if not record.get("account_id"):
        return Rejection(RejectReason.MISSING_FIELD, "account_id")
    if not PAYOUT_RUN_ID.fullmatch(record.get("run_id") or ""):
        return Rejection(RejectReason.INVALID_FIELD, "run_id")
    seen: set[str] = set()
    for minimum in record.get("minimums") or ():
        if not is_known_currency(minimum["currency"]):
            return Rejection(RejectReason.UNKNOWN_CURRENCY, "minimums")
        if minimum["minimum_minor"] < 1 or minimum["currency"] in seen:
            return Rejection(RejectReason.INVALID_FIELD, "minimums")
        seen.add(minimum["currency"])
    default = record.get("default_minimum_minor")
    if default is not None and default < 1:
        return Rejection(RejectReason.INVALID_FIELD, "default_minimum_minor")
    return None


def _validate_payout_result(record: Mapping[str, Any]) -> Rejection | None:
    for name in ("payout_id", "account_id", "reason_code"):
        value = record.get(name)
        if isinstance(value, str) and looks_like_card_number(value, identifier=True):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    for name in ("payout_id", "account_id"):
        if not record.get(name):
            return Rejection(RejectReason.MISSING_FIELD, name)
    parts = payout_id_parts(record["payout_id"])
    if parts is None or parts[1] != record["account_id"]:  # a payout of another account, or not a payout id
        return Rejection(RejectReason.INVALID_FIELD, "payout_id")
    if not is_known_currency(parts[2]):
        return Rejection(RejectReason.UNKNOWN_CURRENCY, "payout_id")
    if record.get("status") not in PAYOUT_ANSWERS:
        return Rejection(RejectReason.INVALID_FIELD, "status")
    reason = record.get("reason_code")
    if reason is not None and not PAYOUT_REASON_CODE.fullmatch(reason):
        return Rejection(RejectReason.INVALID_FIELD, "reason_code")
    return None


def payout_run_of(record: Mapping[str, Any]) -> CardEvent:
    """A validated ``payout_run`` record as the account's PAYOUT_RUN event, id ``payout-run:<run>:<account>``
    (with ``wallet_opening``: its OPEN_WALLET event, id ``open-wallet:<run>:<account>``)."""
    opening = record.get("wallet_opening")
    if opening is not None:
        note_ = WalletOpening(
            opening["actor"],
            opening.get("last_accrual_id"),
            tuple(sorted((a["reward_kind"], a["unit"], a["amount_minor"]) for a in opening.get("available") or ())),
            opening.get("last_mark_id"),
        )
        account, run = record["account_id"], record["run_id"]
        return note_event(
            f"open-wallet:{run}:{account}",
            EventType.OPEN_WALLET,
            account,
            record["requested_at"],
            f"wallet:{account}",
            "EUR",
            note_,
        )
    minimums = tuple(sorted((m["currency"], m["minimum_minor"]) for m in record.get("minimums") or ()))
    note = PayoutRun(record["run_id"], minimums, record.get("default_minimum_minor"))
    account = record["account_id"]
    run = record["run_id"]
    return note_event(
        f"payout-run:{run}:{account}", EventType.PAYOUT_RUN, account, record["requested_at"], f"payout-run:{run}", "EUR", note
    )


def payout_result_of(record: Mapping[str, Any]) -> CardEvent:
    """A validated ``payout_result`` record as the account's PAYOUT_RESULT event, id
    ``payout-result:<payout id>:<status>:<answered at, epoch ms>``: the same message again is the same
    event (nothing decided twice); another answer for the payout is decided (the first answer stands)."""
    pid, status = record["payout_id"], record["status"]
    parts = payout_id_parts(pid)
    assert parts is not None  # validated
    note = PayoutAnswer(pid, status, record.get("reason_code") or "")
    return note_event(
        f"payout-result:{pid}:{status}:{int(record['answered_at'].timestamp() * 1000)}",
        EventType.PAYOUT_RESULT,
        record["account_id"],
        record["answered_at"],
        pid,
        parts[2],
        note,
    )
