"""Back-testing: a stream of messages through the pure rules engine, exactly as the matcher
would decide it, with no broker and no database. The same fold is the tests' oracle.

Card events go through ``decide`` with the account's profile (from the profile and activation
messages seen so far) and the campaign budgets left (what the matcher's Postgres grants would
leave); messages the matcher would dead-letter are skipped; at the end, time passes to ``until``
(returns windows end, authorisations expire) when given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stream.core.abuse import AbuseRules
from stream.core.balances import balances
from stream.core.eligibility import AccountProfile
from stream.core.entries import Entry, moves_money
from stream.core.events import CardEvent, to_event, validate
from stream.core.lifecycle import due_events
from stream.core.memory import TRANSACTION_HORIZON_DAYS
from stream.core.money import format_minor
from stream.core.notices import DEFAULT_LANGUAGE, Notice, Notification, from_entry, from_notice, kind_of, language_of
from stream.core.offers import OfferBook
from stream.core.profiles import Profile, apply_activation, apply_segments, to_account_profile
from stream.core.rules import Outcome, decide
from stream.core.state import AccountState
from stream.simulate import Outgoing


@dataclass
class Replay:
    offers: OfferBook
    states: dict[str, AccountState] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)  # accrual_id -> entry, as the ledger keeps them
    outcomes: list[str] = field(default_factory=list)  # one per decision, in order
    # what tells the customer something (stream.core.notices), in the order the matcher sends it: kept
    # only when asked (``keep_notifications``: the tests' oracle), not by a long back-test
    keep_notifications: bool = False
    told: list[tuple[Entry | Notice, str | None]] = field(default_factory=list)  # (cause, the account's language)
    budget_used: dict[str, int] = field(default_factory=dict)
    budget_peak: dict[str, int] = field(default_factory=dict)  # the most a budget was ever used
    skipped: int = 0  # messages the matcher would dead-letter
    horizon_days: int = TRANSACTION_HORIZON_DAYS  # the workers' TRANSACTION_HORIZON_DAYS
    abuse: AbuseRules | None = None  # the workers' ABUSE_RULES_FILE (None: the documented defaults)
    # made once, not per event: the offers' budget lines, each account's profile as the engine reads it
    _lines: tuple[OfferBook | None, dict[str, int]] = field(default=(None, {}), init=False, repr=False, compare=False)
    _views: dict[str, tuple[Profile | None, AccountProfile]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def feed(self, message: Outgoing) -> None:
        record = message.record
        if message.role in ("profiles", "activations") and record is not None:
            account = record["account_id"]
            apply = apply_segments if message.role == "profiles" else apply_activation
            self.profiles[account] = apply(self.profiles.get(account), record)
            return
        if record is None or validate(record) is not None:
            self.skipped += 1
            return
        self.decide(to_event(record))

    def decide(self, event: CardEvent) -> None:
        remaining = _Remaining(self._budget_lines(), self.budget_used)
        profile = self._profile(event.account_id)
        decision = decide(
            event,
            self.offers,
            self.states.get(event.account_id),
            profile,
            budget_remaining=remaining,
            horizon_days=self.horizon_days,
            abuse=self.abuse,
        )
        self.states[event.account_id] = decision.state
        self.outcomes.append(decision.outcome._value_)
        for offer_id, delta in decision.budget_deltas.items():
            self.budget_used[offer_id] = self.budget_used.get(offer_id, 0) + delta
            self.budget_peak[offer_id] = max(self.budget_peak.get(offer_id, 0), self.budget_used[offer_id])
        if decision.outcome is not Outcome.DUPLICATE:
            for entry in decision.entries:
                self.entries.setdefault(entry.accrual_id, entry)
            if self.keep_notifications:
                self.told += [(entry, profile.language) for entry in decision.entries if kind_of(entry) is not None]
                self.told += [(notice, profile.language) for notice in decision.notices]

    def _budget_lines(self) -> dict[str, int]:
        """Every campaign budget of the offers: key to amount, made once per offer book."""
        if self._lines[0] is not self.offers:
            self._lines = (self.offers, {key: amount for o in self.offers.offers for key, amount, _ in o.budget_lines()})
        return self._lines[1]

    def _profile(self, account_id: str) -> AccountProfile:
        """The engine's view of the account's profile, made again when its profile is another one
        (the messages' folds make a new one: never changed in place)."""
        stored = self.profiles.get(account_id)
        seen = self._views.get(account_id)
        if seen is None or seen[0] is not stored:
            seen = self._views[account_id] = (stored, to_account_profile(stored))
        return seen[1]

    def pass_time(self, until: datetime) -> None:
        now_ms = int(until.timestamp() * 1000)
        for account in sorted(self.states):
            for event in due_events(self.states[account], account, now_ms):
                self.decide(event)

    def balances(self) -> dict[tuple[str, str, str], dict[str, int]]:
        return balances(self.entries.values())

    def notifications(self, default_language: str = DEFAULT_LANGUAGE) -> list[Notification]:
        """The customer notifications the matcher would send, once each, in order."""
        made: list[Notification] = []
        for cause, language in self.told:
            chosen = language_of(language, default_language)
            notification = from_entry(cause, chosen) if isinstance(cause, Entry) else from_notice(cause, chosen)
            if notification is not None:
                made.append(notification)
        return made


class _Remaining(Mapping[str, int]):
    """What each campaign budget has left: its amount less what was used, read when the engine asks
    (a few budgets per event, never all of them)."""

    __slots__ = ("_lines", "_used")

    def __init__(self, lines: dict[str, int], used: dict[str, int]) -> None:
        self._lines, self._used = lines, used

    def __getitem__(self, key: str) -> int:
        return self._lines[key] - self._used.get(key, 0)

    def get(self, key: str, default: Any = None) -> Any:
        amount = self._lines.get(key)
        return default if amount is None else amount - self._used.get(key, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


def replay(
    messages: Iterable[Outgoing], offers: OfferBook, until: datetime | None = None, abuse: AbuseRules | None = None
) -> Replay:
    result = Replay(offers, abuse=abuse)
    for message in messages:
        result.feed(message)
    if until is not None:
        result.pass_time(until)
    return result


def report(result: Replay) -> str:
    """What a rewards team asks of a back-test: cost per offer and unit, what expired unused, the
    purchases each offer's holdout group made that it would have rewarded, and why purchases earned nothing."""
    cost: Counter = Counter()
    funded: Counter = Counter()  # who pays (stream.store.sponsor_statements): a merchant sponsor, or the bank
    for entry in result.entries.values():
        if not moves_money(entry.entry_kind):
            continue
        sign = 1 if entry.debit_book == "EXPENSE" else -1 if entry.credit_book == "EXPENSE" else 0
        cost[(entry.offer_id, entry.currency)] += sign * entry.amount_minor
        funded[(entry.sponsor_id or "bank", entry.currency)] += sign * entry.amount_minor
    lines = ["cost per offer (net of releases, expiries and clawbacks):"]
    lines += [f"  {offer:<24} {format_minor(amount, unit)}" for (offer, unit), amount in sorted(cost.items())]
    lines.append("cost per sponsor (who pays: a merchant sponsor, or bank, its own budget):")
    lines += [f"  {sponsor:<24} {format_minor(amount, unit)}" for (sponsor, unit), amount in sorted(funded.items())]
    held = Counter(e.explanation.reason for e in result.entries.values() if e.credit_book == "HELD")
    if held:
        lines.append("rewards held for review, by abuse rule (entries into HELD):")
        lines += [f"  {rule:<24} {count}" for rule, count in held.most_common()]
    expired: Counter = Counter()  # breakage: points and store credit left unused (stream.core.expiry)
    for entry in result.entries.values():
        if entry.entry_kind == "AVAILABLE_EXPIRED":
            expired[(entry.offer_id, entry.currency)] += entry.amount_minor
    if expired:
        lines.append("unused rewards expired (first earned first expired; back to the sponsor), by offer:")
        lines += [f"  {offer:<24} {format_minor(amount, unit)}" for (offer, unit), amount in sorted(expired.items())]
    held_out = Counter(e.offer_id for e in result.entries.values() if e.explanation.reason == "holdout" and e.offer_id)
    if held_out:  # the offers' control groups (stream.core.holdout): purchases each would have rewarded
        lines.append("purchases held out of an offer (its holdout group), by offer:")
        lines += [f"  {offer:<24} {count}" for offer, count in sorted(held_out.items())]
    lines.append("outcomes:")
    lines += [f"  {outcome:<28} {count}" for outcome, count in Counter(result.outcomes).most_common()]
    lines.append(
        f"accounts {len(result.states)}, ledger entries {sum(1 for e in result.entries.values() if moves_money(e.entry_kind))}, "
        f"messages a worker would dead-letter {result.skipped}"
    )
    return "\n".join(lines)
