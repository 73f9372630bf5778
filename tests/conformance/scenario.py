"""Conformance scenarios: DOMAIN.md's lifecycle cases as readable YAML files, events in, expected
ledger, not-earned reasons and balances out. The same files run through the pure engine
(tests/unit/test_conformance.py) and end to end through Kafka and Postgres
(tests/integration/test_conformance.py).

Amounts are written as decimal strings in the currency's unit ("100.00" EUR, "1000" JPY,
"1.500" BHD) and parsed exactly into integer minor units: never a float.

A file may also say what the customer is told (``expect.notifications``: ``stream.core.notices``),
each notification by the event behind it, its kind, amount and, when named, its line; the
account's ``language`` is in its ``account:`` section. A file without the list says nothing of
notifications (compared only when the file names them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from stream.core.events import to_event
from stream.core.money import exponent
from stream.core.offer_parsing import parse_offer
from stream.core.offers import Offer
from stream.core.redemption_messages import redeem_instruction

CASES_DIR = Path(__file__).resolve().parent / "cases"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
DEFAULT_OFFERS = [{"offer_id": "grocery-5", "name": "5% at supermarkets", "rate_bps": 500, "mccs": ["5411"]}]
AUTH_TYPES = {"AUTHORIZATION", "INCREMENTAL_AUTHORIZATION", "AUTHORIZATION_REVERSAL", "AUTHORIZATION_EXPIRY"}
REVIEWS = {"RELEASE_HOLD", "FORFEIT_HOLD"}  # operations' instructions (stream.core.holds), on their own topic
BALANCE_NAMES = (
    *("pending", "confirmed", "available", "lifetime_earned", "clawed_back", "donated", "held", "paid_out", "redeemed"),
)
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")


def to_minor(text: Any, currency: str, where: str) -> int:
    """'12.34' EUR -> 1234, exactly; anything but a decimal string is an error naming ``where``."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise ValueError(f'{where}: amounts are decimal strings like "100.00", got {text!r}')
    digits = exponent(currency) if currency != "PTS" else 0
    whole, _, fraction = text.lstrip("-").partition(".")
    if len(fraction) > digits:
        raise ValueError(f"{where}: {text} has more decimals than {currency} allows ({digits})")
    value = int(whole) * 10**digits + int((fraction or "0").ljust(digits, "0") or "0")
    return -value if text.startswith("-") else value


@dataclass(frozen=True)
class ExpectedEntry:
    event: str
    kind: str
    debit: str
    credit: str
    amount_minor: int
    reward_kind: str = "CASH"
    offer: str | None = None  # compared only when the file names it
    reason: str | None = None  # the explanation's reason (a hold's rule), compared only when the file names it
    sponsor: str | None = None  # who funds it (its sponsor_id, or bank), compared only when the file names it


@dataclass(frozen=True)
class ExpectedNotification:
    event: str
    kind: str
    amount_minor: int
    currency: str = "EUR"
    line: str | None = None  # compared only when the file names it
    language: str | None = None  # compared only when the file names it


@dataclass
class Scenario:
    path: Path
    case: int
    title: str
    offers: list[Offer]
    records: list[dict[str, Any]]  # card-event records, in delivery order
    ledger: list[ExpectedEntry]
    not_earned: list[tuple[str, str]]  # (event label, reason)
    balances: dict[tuple[str, str], dict[str, int]]  # (reward_kind, currency) -> field -> minor
    outcomes: list[str] | None
    profile: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # event_id -> label in the file
    # (event label, reason, offer) of the not-earned lines the file says name an offer (a holdout's)
    not_earned_offers: list[tuple[str, str, str]] = field(default_factory=list)
    # campaign budget key -> minor units the scenario's events leave used (compared only when the file says)
    budgets_used: dict[str, int] = field(default_factory=dict)
    notifications: list[ExpectedNotification] | None = None  # None: the file says nothing of them

    @property
    def account_id(self) -> str:
        return f"conformance-{self.case:02d}-{self.path.stem.split('_', 1)[1]}"

    @property
    def name(self) -> str:
        return self.path.stem


def _record(raw: dict[str, Any], account_id: str, defaults: dict[str, Any], index: int, prefix: str) -> dict[str, Any]:
    """One card-event record; ``index`` (the position of the event id's first use) sets its
    default time, one minute apart, so a repeated id repeats its content."""
    spec = {**defaults, **raw}
    if spec["type"] == "TIME":  # time passes to ``at``: what is due happens (stream.core.lifecycle)
        return {
            "event_type": "TIME",
            "event_id": f"{prefix}-{spec['id']}",
            "account_id": account_id,
            "occurred_at": datetime.fromisoformat(spec["at"]),
        }
    if spec["type"] in REVIEWS:  # a release or forfeit of what purchase ``ref`` holds
        at = spec.get("at")
        return {
            "event_id": f"{prefix}-{spec['id']}",
            "event_type": spec["type"],
            "instruction": spec["type"],
            "occurred_at": datetime.fromisoformat(at) if at else T0 + timedelta(minutes=index),
            "account_id": account_id,
            "transaction_ref": f"{prefix}-{spec.get('ref', 't1')}",
            "offer_id": spec.get("offer"),
            "merchant_id": None,
            "until": None,
            "currency": spec.get("currency", "EUR"),
            "actor": spec.get("actor", "ops-conformance"),
            "reason": spec.get("reason", "reviewed"),
        }
    if spec["type"] == "REDEEM":  # a redemption asked through the API (stream.core.redemptions), key ``key``
        at = spec.get("at")
        unit = spec.get("unit", "PTS")
        record = redeem_instruction(
            account_id,
            str(spec.get("key", spec["id"])),
            spec.get("reward_kind", "POINTS"),
            unit,
            to_minor(spec["amount"], unit, f"redemption {spec['id']}"),
            spec.get("reference", ""),
            "app-conformance",
            datetime.fromisoformat(at) if at else T0 + timedelta(minutes=index),
        )
        return {**record, "event_type": "REDEEM"}
    if spec["type"] == "PAYOUT_RUN":  # a payout run for the account (stream.core.payouts), on its topic
        at = spec.get("at")
        record = {
            "run_id": spec["run"],
            "account_id": account_id,
            "requested_at": datetime.fromisoformat(at) if at else T0 + timedelta(minutes=index),
            "minimums": [
                {"currency": c, "minimum_minor": to_minor(m, c, "payout minimum")}
                for c, m in (spec.get("minimums") or {}).items()
            ],
            "default_minimum_minor": None,
        }
        record["event_id"] = to_event(record).event_id  # the engine's: payout-run:<run>:<account>
        return record
    if spec["type"] == "PAYOUT_RESULT":  # the bank's answer to the run's payout in ``currency``
        at = spec.get("at")
        record = {
            "payout_id": f"p:{spec['run']}:{account_id}:{spec.get('currency', 'EUR')}",
            "account_id": account_id,
            "status": spec["status"],
            "reason_code": spec.get("reason_code"),
            "answered_at": datetime.fromisoformat(at) if at else T0 + timedelta(minutes=index),
        }
        record["event_id"] = to_event(record).event_id
        return record
    where = f"event {spec.get('id', index)}"
    currency = spec.get("currency", "EUR")
    billing_currency = spec.get("billing_currency", currency)
    amount = to_minor(spec["amount"], currency, where)
    billing = to_minor(spec["billing_amount"], billing_currency, where) if "billing_amount" in spec else amount
    at = spec.get("at")
    occurred_at = datetime.fromisoformat(at) if at else T0 + timedelta(minutes=index)
    record: dict[str, Any] = {
        "event_id": f"{prefix}-{spec.get('event_id', spec['id'])}",
        "event_type": spec["type"],
        "occurred_at": occurred_at,
        "account_id": account_id,
        "card_token": "tok-conformance",
        "transaction_ref": f"{prefix}-{spec.get('ref', 't1')}",
        "original_transaction_ref": f"{prefix}-{spec['original_ref']}" if "original_ref" in spec else None,
        "processing_code": spec.get("processing_code", "REFUND" if spec["type"] == "REFUND" else "PURCHASE"),
        "response_code": str(spec.get("response_code", "00")),
        "amount_minor": amount,
        "currency": currency,
        "billing_amount_minor": billing,
        "billing_currency": billing_currency,
        "cashback_at_pos_minor": to_minor(spec["cash_at_pos"], currency, where) if "cash_at_pos" in spec else 0,
        "mcc": str(spec.get("mcc", "5411")),
        "merchant_id": spec.get("merchant_id", "m-grocer"),
        "merchant_name": spec.get("merchant_name", "Grocer"),
        "merchant_country": spec.get("merchant_country", "FR"),
        "merchant_timezone": spec.get("timezone", "Europe/Paris"),
        "channel": spec.get("channel", "IN_STORE"),
    }
    if spec["type"] not in AUTH_TYPES:
        part = spec.get("part")
        sequence, count = (int(x) for x in part.split("/")) if part else (None, None)
        record.update(clearing_sequence=sequence, clearing_count=count)
    for name, value in (spec.get("fields") or {}).items():  # raw overrides, e.g. a changed amount
        record[name] = value
    return record


def load(path: Path) -> Scenario:
    document = yaml.safe_load(path.read_text())
    case = int(document["case"])
    prefix = f"c{case:02d}-{path.stem.split('_', 1)[1]}"
    scenario = Scenario(
        path=path,
        case=case,
        title=document["title"],
        offers=[parse_offer(raw) for raw in document.get("offers", DEFAULT_OFFERS)],
        records=[],
        ledger=[],
        not_earned=[],
        balances={},
        outcomes=document["expect"].get("outcomes"),
        profile=document.get("account") or {},
    )
    defaults = document.get("defaults") or {}
    first_use: dict[str, int] = {}
    for index, raw in enumerate(_expanded(document["events"])):
        event_key = str(raw.get("event_id", raw.get("id", index)))
        record = _record(raw, scenario.account_id, defaults, first_use.setdefault(event_key, index), prefix)
        scenario.records.append(record)
        scenario.labels.setdefault(record["event_id"], str(raw.get("label", raw.get("id", index))))
    expect = document["expect"]
    for line in expect.get("ledger") or []:
        currency = line.get("currency", "EUR")
        scenario.ledger.append(
            ExpectedEntry(
                event=str(line["event"]),
                kind=line["kind"],
                debit=line["from"],
                credit=line["to"],
                amount_minor=to_minor(line["amount"], currency, f"ledger line of {line['event']}"),
                reward_kind=line.get("reward_kind", "CASH"),
                offer=line.get("offer"),
                reason=line.get("reason"),
                sponsor=line.get("sponsor"),
            )
        )
    scenario.not_earned = [
        (str(x["event"]), x["reason"]) for x in expect.get("not_earned") or [] for _ in range(int(x.get("times", 1)))
    ]
    scenario.not_earned_offers = [
        (str(x["event"]), x["reason"], x["offer"]) for x in expect.get("not_earned") or [] if "offer" in x
    ]
    if "notifications" in expect:
        scenario.notifications = [
            ExpectedNotification(
                event=str(line["event"]),
                kind=line["kind"],
                amount_minor=to_minor(line["amount"], line.get("currency", "EUR"), f"notification of {line['event']}"),
                currency=line.get("currency", "EUR"),
                line=line.get("line"),
                language=line.get("language"),
            )
            for line in expect["notifications"] or []
        ]
    for line in expect.get("budgets_used") or []:
        scenario.budgets_used[line["offer"]] = to_minor(line["used"], line.get("currency", "EUR"), f"budget of {line['offer']}")
    for line in expect.get("balances") or []:
        currency = line.get("currency", "EUR")
        key = (line.get("reward_kind", "CASH"), currency)
        scenario.balances[key] = {
            f"{name}_minor": to_minor(line.get(name, "0"), currency, f"balance {name}") for name in BALANCE_NAMES
        }
    return scenario


def _expanded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file's events with ``repeat: N`` written out: N events ``<id>-1``... on transactions
    ``<ref>-1``..., all labelled ``<id>`` (expected lines name them once, with ``times: N``)."""
    out: list[dict[str, Any]] = []
    for raw in events:
        if "repeat" not in raw:
            out.append(raw)
            continue
        spec = {k: v for k, v in raw.items() if k != "repeat"}
        for n in range(1, int(raw["repeat"]) + 1):
            out.append({**spec, "id": f"{raw['id']}-{n}", "ref": f"{raw.get('ref', 'x')}-{n}", "label": raw["id"]})
    return out


def stored_profile(scenario: Scenario) -> dict[str, Any]:
    """The scenario's ``account:`` section as the matcher stores a profile (stream.core.profiles)."""
    activations = scenario.profile.get("activations") or {}
    stored: dict[str, Any] = {
        "segments": sorted(scenario.profile.get("segments") or ()),
        "activations": {offer: int(datetime.fromisoformat(at).timestamp() * 1000) for offer, at in activations.items()},
    }
    if scenario.profile.get("language"):
        stored["language"] = scenario.profile["language"]
    return stored


def all_scenarios() -> list[Scenario]:
    return [load(path) for path in sorted(CASES_DIR.glob("*.yaml"))]


def label_of(scenario: Scenario, source_event_id: str) -> str:
    """The file's name for the event behind an entry. An internal event of time passing
    (``<kind>:<account>:<transaction>:<due ms>``) belongs to the first TIME step at or after its
    due time."""
    if source_event_id in scenario.labels:
        return scenario.labels[source_event_id]
    due_ms = int(source_event_id.rsplit(":", 1)[-1]) if source_event_id.count(":") >= 3 else None
    for record in scenario.records:
        if record.get("event_type") == "TIME" and due_ms is not None and record["occurred_at"].timestamp() * 1000 >= due_ms:
            return scenario.labels[record["event_id"]]
    return source_event_id


def names_offer(detail: str, offer_id: str) -> bool:
    """Whether a not-earned line's detail names the offer it is about (a holdout line: "... earns
    nothing from <offer>: holdout (...)"; the purchases_not_earned table keeps no offer id)."""
    return f"from {offer_id}: " in detail


def is_time(record: dict[str, Any]) -> bool:
    return record.get("event_type") == "TIME"


def entry_view(scenario: Scenario, entry: dict[str, Any]) -> ExpectedEntry:
    """A ledger entry (Avro-shaped dict or a database row) as the scenario files write it."""
    return ExpectedEntry(
        event=label_of(scenario, entry["source_event_id"]),
        kind=entry["entry_kind"],
        debit=entry["debit_book"],
        credit=entry["credit_book"],
        amount_minor=entry["amount_minor"],
        reward_kind=entry["reward_kind"],
        offer=entry["offer_id"],
        reason=entry["explanation"]["reason"],
        sponsor=entry.get("sponsor_id") or "bank",
    )


def notification_view(scenario: Scenario, notification: dict[str, Any]) -> ExpectedNotification:
    """A notification (Avro-shaped dict) as the scenario files write it: the event behind it is its
    id's (an entry's ``<event_id>#<n>``, an expiry notice's ``<notice event id>#<offer>:<unit>``)."""
    return ExpectedNotification(
        event=label_of(scenario, notification["notification_id"].rsplit("#", 1)[0]),
        kind=notification["kind"],
        amount_minor=notification["amount_minor"],
        currency=notification["currency"],
        line=notification["line"].replace("\u202f", " ").replace("\u00a0", " "),  # files write no-break spaces plainly
        language=notification["language"],
    )


def comparable_notifications(
    actual: list[ExpectedNotification], expected: list[ExpectedNotification]
) -> list[ExpectedNotification]:
    """``actual`` with the line and the language blanked where the file does not name them."""
    if len(actual) != len(expected):
        return actual
    return [
        replace(a, line=a.line if e.line is not None else None, language=a.language if e.language is not None else None)
        for a, e in zip(actual, expected, strict=True)
    ]


def comparable(actual: list[ExpectedEntry], expected: list[ExpectedEntry]) -> list[ExpectedEntry]:
    """``actual`` with the offer, the reason and the sponsor blanked on the lines where the file does not name them."""
    if len(actual) != len(expected):
        return actual
    return [
        replace(
            a,
            offer=a.offer if e.offer is not None else None,
            reason=a.reason if e.reason is not None else None,
            sponsor=a.sponsor if e.sponsor is not None else None,
        )
        for a, e in zip(actual, expected, strict=True)
    ]
