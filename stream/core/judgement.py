"""A purchase's judgement: the offers whose shares it earns, or why it earns nothing, decided once,
at its authorisation (or at a force post's clearing), and kept with its transaction.

One non-stackable offer per purchase, the one that pays most now (after its cap and budget;
ties: the most recent, then the first offer id in alphabetical order), plus every stackable one.
A refusal keeps its reason; only a refusal for the amount (``below_min_spend``) can be
overturned, by a clearing or an incremental authorisation that lifts the amount, under the offers
the purchase met every other condition of, at the authorisation's time and place
(``reconsider``). A declined authorisation keeps nothing: its
clearing is a force post.

**Holdout** (``stream.core.holdout``): an offer that holds the account out is left out before the
stacking (``stream.core.eligibility``), so the purchase earns what it would without that offer,
and the offer's cap and budget are never touched. Each held-out offer the purchase qualified for
gets one NOT_EARNED line with the reason ``holdout``, naming it (its offer id and rule version on
the entry, and in the detail), at the purchase's judgement: before the entries of the offers that
pay, or as the purchase's refusal when none does. That refusal is kept like any other (its
clearings record ``holdout`` again, never re-judged), except that a later clearing or incremental
authorisation that lifts the amount may still earn under the offers that were only short of their
minimum spend (what ``below_min_spend`` allows; never under an offer that holds the account out).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime

from stream.core.eligibility import LocalTime, Match, local_time, match
from stream.core.events import CardEvent, EventType
from stream.core.holdout import held_out, holdout_note
from stream.core.holds import note_purchase
from stream.core.offers import Offer
from stream.core.outcomes import Outcome
from stream.core.rewards import at_most_per_purchase, compute, new_share
from stream.core.state import Refusal, Share, Txn
from stream.core.working_copy import AccountStep, purchase_basis


def shares_for(step: AccountStep) -> tuple[list[Share], Match]:
    """The shares the event's purchase earns (see ``stack``), and the match they came from."""
    found = match(step.event, step.offers, step.profile, step.local, purchase_basis(step.event))
    if not found.offers:
        return [], found
    if found.held_out:  # before the paying offers' entries (stream.core.holdout)
        note_held_out(step, found.held_out, _what(step))
    return stack(step, found.offers, step.event, step.local, purchase_basis(step.event)), found


def _what(step: AccountStep) -> str:
    return "authorisation" if step.event.event_type is EventType.AUTHORIZATION else "clearing"


def note_held_out(step: AccountStep, offers: tuple[Offer, ...], what: str) -> str:
    """One NOT_EARNED line per offer holding the account out of the purchase, each naming its offer
    (on the entry and in the detail); returns the details, joined."""
    details = []
    for offer in offers:
        detail = (
            f"{what} earns nothing from {offer.offer_id}: {Outcome.HOLDOUT.value} ({holdout_note(step.event.account_id, offer)})"
        )
        step.not_earned(Outcome.HOLDOUT, detail, new_share(offer, step.event, step.profile, step.local))
        details.append(detail)
    return "; ".join(details)


def stack(step: AccountStep, offers: Iterable[Offer], purchase: CardEvent, local: LocalTime, basis: int) -> list[Share]:
    """The most valuable non-stackable offer (what it can still pay under its cap and budget; ties:
    the most recent, then the first offer id in alphabetical order) plus every stackable one."""
    pairs = [(new_share(o, purchase, step.profile, local), o) for o in offers]
    shares = [s for s, o in pairs if o.stackable]
    exclusive = [(s, o) for s, o in pairs if not o.stackable]
    if exclusive:

        def rank(pair: tuple[Share, Offer]) -> tuple[int, float, int, str]:
            share, offer = pair
            wanted = at_most_per_purchase(share, compute(share, basis, basis).reward_minor)
            recency = offer.valid_from.timestamp() if offer.valid_from else 0.0
            # Smallest first: most paid, then most recent (start, then version), then the offer id,
            # so that the choice never depends on the order the offers were listed or loaded in.
            return (-step.grant(share, wanted)[0], -recency, -offer.version, offer.offer_id)

        shares.insert(0, min(exclusive, key=rank)[0])
    return shares


def new_txn(event: CardEvent, shares: list[Share], status: str) -> Txn:
    return Txn(status=status, currency=event.billing_currency, shares=tuple(shares), merchant_id=event.merchant_id)


# The refusals a later clearing or incremental authorisation may overturn: only the amount can
# change after the authorisation; where, when, who and which offers were active are the purchase's.
# A refusal for holdout keeps the offers that were only short of their minimum spend likewise.
AMOUNT_REFUSALS = frozenset({Outcome.BELOW_MIN_SPEND.value, Outcome.HOLDOUT.value})


def refuse(step: AccountStep, found: Match, status: str) -> Outcome:
    """A purchase that earns nothing: its NOT_EARNED line, and (unless the authorisation was
    declined: no approved authorisation, so its clearing is a force post) a transaction that keeps
    the decision, so its clearings, refunds and chargebacks follow it instead of judging again."""
    event = step.event
    what = "authorisation" if status == "authorized" else "clearing"
    if found.outcome is Outcome.HOLDOUT:
        detail = note_held_out(step, found.held_out, what)
    else:
        detail = f"{what} earns nothing: {found.outcome.value}" + (f" ({found.detail})" if found.detail else "")
        step.not_earned(found.outcome, detail)
    if found.outcome is not Outcome.DECLINED:
        txn = step.put(event.transaction_ref, new_txn(event, [], status))
        if status == "authorized":
            txn.authorized_basis = purchase_basis(event)
        else:
            txn.cleared_basis = purchase_basis(event)
        txn.refused = Refusal(
            reason=found.outcome.value,
            detail=detail,
            near=tuple(offer.offer_id for offer in found.short_of_min_spend),
            at_ms=step.at_ms,
            timezone=event.merchant_timezone,
        )
        if found.outcome is not Outcome.NOT_A_PURCHASE:  # it counts in a burst (stream.core.holds)
            note_purchase(step, event.transaction_ref)
    return found.outcome


def reconsider(step: AccountStep, txn: Txn, basis: int) -> tuple[list[Share], CardEvent]:
    """The shares a refused purchase earns now that its amount is ``basis``: only a refusal for the
    amount (below the minimum spend) is judged again, under the offers it met every other condition
    of, at the authorisation's time and place."""
    refusal = txn.refused
    if not refusal or refusal.reason not in AMOUNT_REFUSALS:
        return [], step.event
    known = [step.offers.get(offer_id) for offer_id in refusal.near]
    offers = [o.priced(txn.currency) for o in known if o is not None]
    account = step.event.account_id
    qualifying = [o for o in offers if o is not None and basis >= o.min_spend_minor and not held_out(account, o)]
    if not qualifying:
        return [], step.event
    purchase = replace(
        step.event,
        occurred_at=datetime.fromtimestamp(refusal.at_ms / 1000, tz=UTC),
        merchant_timezone=refusal.timezone,
    )
    txn.refused = None
    return stack(step, qualifying, purchase, local_time(purchase), basis), purchase


def still_refused(step: AccountStep, txn: Txn, what: str) -> Outcome:
    refusal = txn.refused
    assert refusal is not None  # called only on a refused purchase
    outcome = Outcome(refusal.reason)
    step.not_earned(outcome, f"{what} earns nothing: decided at the purchase ({refusal.detail})")
    return outcome
