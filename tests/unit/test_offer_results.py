"""Offer results (stream.offer_results, stream.api_offer_results): the activations the API counts from their compacted
topic (the last word per account and offer, split by holdout group, dated in a period), and the per-group figures
derived from the ledger's (average basket and spend per account rounded down, never a float)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.codec import Codec
from stream.api_offer_results import GroupResults
from stream.core.holdout import held_out
from stream.offer_results import ActivationMirror
from stream.store.offer_results import Purchases
from tests.factories import offer

CODEC = Codec()
T0 = datetime(2026, 12, 1, tzinfo=UTC)
MEASURED = offer(offer_id="grocer-8", rate_bps=800, holdout_bps=3000, requires_activation=True)
# Accounts on either side of grocer-8's holdout group (stream.core.holdout: a keyed hash of the two ids)
ACCOUNTS = [f"acct-{n:04d}" for n in range(40)]
HELD = [a for a in ACCOUNTS if held_out(a, MEASURED)]
TREATED = [a for a in ACCOUNTS if not held_out(a, MEASURED)]


def _mirror() -> ActivationMirror:
    return ActivationMirror("cashback.offer-activations", CODEC, "127.0.0.1:1")  # never started: fed by hand


def _activate(mirror: ActivationMirror, account: str, offer_id: str, active: bool = True, at: datetime = T0) -> None:
    value = CODEC.encode("offer_activation", {"account_id": account, "offer_id": offer_id, "active": active, "changed_at": at})
    mirror._apply(f"{account}:{offer_id}".encode(), value)


def test_the_accounts_fall_on_both_sides_of_the_group() -> None:
    assert len(HELD) >= 5 and len(TREATED) >= 20  # 30% held out, about


def test_activations_are_counted_per_offer_and_split_by_holdout_group() -> None:
    mirror = _mirror()
    for account in HELD[:3] + TREATED[:5]:
        _activate(mirror, account, "grocer-8")
    _activate(mirror, TREATED[0], "other-1")
    counts = mirror.counts({"grocer-8": MEASURED, "other-1": None, "never-activated": None})
    assert counts["grocer-8"] == {"total": 8, "treated": 5, "holdout": 3}
    # An offer gone from the book: its holdout share is unknown, so only the total
    assert counts["other-1"] == {"total": 1}
    assert counts["never-activated"] == {"total": 0}


def test_the_last_word_counts_a_deactivation_or_a_tombstone_takes_one_out() -> None:
    mirror = _mirror()
    for account in TREATED[:4]:
        _activate(mirror, account, "grocer-8")
    _activate(mirror, TREATED[0], "grocer-8", active=False)  # deactivated
    mirror._apply(f"{TREATED[1]}:grocer-8".encode(), None)  # an erasure's tombstone
    _activate(mirror, TREATED[2], "grocer-8", at=T0 + timedelta(days=3))  # activated again: still one
    assert mirror.counts({"grocer-8": MEASURED})["grocer-8"] == {"total": 2, "treated": 2, "holdout": 0}
    assert len(mirror.values) == 2  # nothing kept of the deactivated one


def test_a_period_counts_the_activations_dated_in_it_half_open() -> None:
    mirror = _mirror()
    for day, account in enumerate(TREATED[:5]):
        _activate(mirror, account, "grocer-8", at=T0 + timedelta(days=day))
    counted = mirror.counts({"grocer-8": MEASURED}, T0 + timedelta(days=1), T0 + timedelta(days=3))["grocer-8"]
    assert counted["total"] == 2  # days 1 and 2; day 3 is the end, excluded
    assert mirror.counts({"grocer-8": MEASURED}, start=T0 + timedelta(days=4))["grocer-8"]["total"] == 1
    assert mirror.counts({"grocer-8": MEASURED}, end=T0)["grocer-8"]["total"] == 0


def test_a_groups_averages_are_rounded_down_in_minor_units() -> None:
    figures = GroupResults.of(Purchases(accounts=3, purchases=7, spend_minor=10_000), "EUR")
    assert (figures.average_basket_minor, figures.spend_per_account_minor, figures.spend) == (1_428, 3_333, "100.00 EUR")
    jpy = GroupResults.of(Purchases(accounts=1, purchases=2, spend_minor=1_001), "JPY")
    assert (jpy.average_basket_minor, jpy.spend) == (500, "1001 JPY")


def test_a_group_without_purchases_has_no_average() -> None:
    empty = GroupResults.of(Purchases(), "BHD")
    assert (empty.average_basket_minor, empty.spend_per_account_minor, empty.spend) == (None, None, "0.000 BHD")
