"""Donations remitted to charities (issue 12, part 1): the arithmetic of a remittance run, and the checks of the
core banking system's answer to a remittance. No I/O: ``stream.donations`` reads the ledger and the payouts table,
records what this decides and publishes it.

Why the ledger decides and not the workers: a customer's payout is one account's money, decided by the worker that
owns the account; a charity is given money by many accounts on every partition, and the only place where all of
them meet is the ledger. So a run reads, per charity and currency:

- **given**: the DONATED book net of clawbacks, as ``charity_donations`` counts it (``donated_minor``);
- **sent**: what earlier remittances that were not rejected asked the bank to pay (requested or confirmed);

and owes the charity ``given - sent``. A remittance is made when that is at or above the currency's minimum
(PAYOUT_MINIMUMS, the customers' rule: a currency named, else ``*``, else never). A rejection stops counting as
sent, so the amount is owed again at the next run. A clawback after a remittance lowers ``given`` below ``sent``:
the charity's owed amount is negative (nothing is remitted) until new donations cover it; nothing is asked back
from the charity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from stream.core.card_numbers import looks_like_card_number
from stream.core.money import is_known_currency

REMITTANCE_PREFIX = "d"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as a customer payout run's: no ':'
REASON_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CHARITY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # as the API's path parameter
ANSWERS = ("CONFIRMED", "REJECTED")

Key = tuple[str, str]  # (charity id, currency)


class Remittance(msgspec.Struct, frozen=True):
    payout_id: str
    charity_id: str
    currency: str
    amount_minor: int


def remittance_id(run_id: str, charity_id: str, currency: str) -> str:
    """``d:<run id>:<charity id>:<currency>``: one run pays a charity once per currency."""
    return f"{REMITTANCE_PREFIX}:{run_id}:{charity_id}:{currency}"


def remittance_id_parts(payout_id: str) -> tuple[str, str, str] | None:
    """(run id, charity id, currency) of a remittance id, None if it is not one (a charity id may hold ':')."""
    head, _, rest = payout_id.partition(":")
    run, _, rest = rest.partition(":")
    charity, _, currency = rest.rpartition(":")
    if head != REMITTANCE_PREFIX or not RUN_ID.fullmatch(run) or not charity or not is_known_currency(currency):
        return None
    return run, charity, currency


def minimum_for(currency: str, named: Mapping[str, int], default: int | None) -> int | None:
    """The least amount remitted in ``currency`` (None: never remitted in it)."""
    return named.get(currency, default)


def owed(given: Mapping[Key, int], sent: Mapping[Key, int]) -> dict[Key, int]:
    """Per (charity, currency) either side names: what was given less what was sent (negative: a clawback
    after a remittance, covered by later donations)."""
    return {key: given.get(key, 0) - sent.get(key, 0) for key in sorted(set(given) | set(sent))}


def remittances(
    run_id: str, given: Mapping[Key, int], sent: Mapping[Key, int], named: Mapping[str, int], default: int | None
) -> list[Remittance]:
    """The remittances of run ``run_id``: every charity and currency owed at least the currency's minimum, in order."""
    out = []
    for (charity, currency), amount in owed(given, sent).items():
        minimum = minimum_for(currency, named, default)
        if minimum is not None and amount >= minimum and amount > 0:
            out.append(Remittance(remittance_id(run_id, charity, currency), charity, currency, amount))
    return out


def answer_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with a ``donation_result`` record (a field's name and why, never its value), or None."""
    for name in ("payout_id", "charity_id", "reason_code"):
        value = record.get(name)
        if isinstance(value, str) and looks_like_card_number(value, identifier=True):
            return f"{name}: looks like a card number"
    parts = remittance_id_parts(record.get("payout_id") or "")
    if parts is None:
        return "payout_id: not a remittance id (d:<run>:<charity>:<currency>)"
    if parts[1] != record.get("charity_id"):
        return "payout_id: names another charity than charity_id"
    if record.get("status") not in ANSWERS:
        return "status: not CONFIRMED or REJECTED"
    reason = record.get("reason_code")
    if reason is not None and not REASON_CODE.fullmatch(reason):
        return "reason_code: 1 to 64 letters, digits, '.', '_' or '-'"
    return None
