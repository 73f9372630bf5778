"""The abuse rules: what makes a reward *held* for review instead of spendable, configured.

The seeds' fraud section names three patterns of a cashback programme's abuse; each is a rule here,
with its thresholds (``AbuseRules``; the worker and the sink read them from ``ABUSE_RULES_FILE``,
``deploy/abuse/rules.yaml`` shows every field with its default):

- ``refund_loop`` (buy, earn, refund, again): an account with at least ``min_refunds`` *rewarded*
  purchases (cashback confirmed on them) refunded in the ``window_days`` days up to the moment a
  reward of it would become available, and those at least ``min_share_percent`` of its purchases
  rewarded in those days (counted by the UTC day of their first confirmation). A purchase counts
  once however many partial refunds it had; chargebacks do not count (a dispute is the issuer's
  process, not the customer's loop). Default: 3 purchases and half of them, in 30 days. The share
  keeps a heavy shopper's ordinary returns out: the simulator's heavy users (about 170 purchases a
  month, 5% refunded) had 1,269 rewards held in a 10,000-purchase back-test on the count alone.
- ``purchase_burst`` (a burst of small purchases at one merchant, e.g. a per-purchase reward
  farmed by splitting a basket): at least ``min_purchases`` purchases under ``below_minor`` (in
  their billing currency: 10.00 EUR, USD, GBP, CHF; 1500 JPY; 4.000 BHD by default) at one merchant
  within ``window_minutes``. A purchase counts at its approved authorisation (or its force post),
  its amount less cash at the till; a currency the rule names no amount for is not counted.
  Every purchase of the burst is flagged, those before the one that completed it too. Default: 5
  purchases in 60 minutes.
- ``merchant_concentration`` (a self-dealing merchant): one merchant whose rewards in one unit went
  to at most ``max_accounts`` accounts and reached ``min_total_minor`` in ``window_days``. It
  spans accounts, so no account's decision can see it: the sink's scan (``stream.abuse_scan``)
  looks for it over the ledger and sends each of those accounts an instruction the engine folds
  (``stream.core.holds``); its purchases at that merchant are then flagged for ``hold_days``.
  Default: 3 accounts or fewer, 200.00 EUR (30000 JPY, 80.000 BHD...) or more, in 7 days; 30 days.

What a flag does, and what the account remembers for the two per-account rules, is in
``stream.core.holds``. This module only holds the rules and reads them from a mapping (pure: the
YAML file is read by ``stream.abuse_config``); a bad value is an ``AbuseRulesError`` naming the
field, and stops the process at start.

The rules reach ``decide`` as an argument; a process that does not pass them gets the rules
``configure`` installed (once, at its start, by the composition root), else ``DEFAULT_RULES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from stream.core.money import POINTS_UNIT, format_minor, is_known_currency

REFUND_LOOP = "refund_loop"
PURCHASE_BURST = "purchase_burst"
MERCHANT_CONCENTRATION = "merchant_concentration"
RULE_NAMES = (REFUND_LOOP, PURCHASE_BURST, MERCHANT_CONCENTRATION)

# "Small": about 10 EUR in each currency the bank bills in (no exchange rate is assumed anywhere).
_SMALL_PURCHASE = {"EUR": 1_000, "USD": 1_000, "GBP": 1_000, "CHF": 1_000, "JPY": 1_500, "BHD": 4_000}
# A merchant's rewards worth a look when few accounts get them all: about 200 EUR.
_CONCENTRATED = {"EUR": 20_000, "USD": 20_000, "GBP": 20_000, "CHF": 20_000, "JPY": 30_000, "BHD": 80_000, "PTS": 20_000}


def _frozen(amounts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(amounts.items())))


@dataclass(frozen=True, slots=True)
class RefundLoop:
    enabled: bool = True
    min_refunds: int = 3  # distinct rewarded purchases refunded...
    window_days: int = 30  # ...within this many days before the reward would become available...
    min_share_percent: int = 50  # ...and at least this share of the purchases rewarded in those days


@dataclass(frozen=True, slots=True)
class PurchaseBurst:
    enabled: bool = True
    min_purchases: int = 5  # purchases at one merchant...
    window_minutes: int = 60  # ...within this many minutes...
    below_minor: Mapping[str, int] = field(default_factory=lambda: _frozen(_SMALL_PURCHASE))  # ...each under this


@dataclass(frozen=True, slots=True)
class MerchantConcentration:
    enabled: bool = True
    max_accounts: int = 3  # a merchant's rewards going to this many accounts or fewer...
    min_total_minor: Mapping[str, int] = field(default_factory=lambda: _frozen(_CONCENTRATED))  # ...this much or more...
    window_days: int = 7  # ...within this many days
    hold_days: int = 30  # how long the accounts' purchases at that merchant stay flagged


@dataclass(frozen=True, slots=True)
class AbuseRules:
    refund_loop: RefundLoop = field(default_factory=RefundLoop)
    purchase_burst: PurchaseBurst = field(default_factory=PurchaseBurst)
    merchant_concentration: MerchantConcentration = field(default_factory=MerchantConcentration)

    def describe(self) -> list[str]:
        """The rules in effect, one line each, as an operator reads them."""
        loop, burst, merchants = self.refund_loop, self.purchase_burst, self.merchant_concentration

        def amounts(values: Mapping[str, int]) -> str:
            return ", ".join(format_minor(v, c) for c, v in values.items())

        def state(enabled: bool) -> str:
            return "on " if enabled else "off"

        return [
            f"{REFUND_LOOP:<24} {state(loop.enabled)}  {loop.min_refunds}+ rewarded purchases refunded in {loop.window_days} days, "
            f"{loop.min_share_percent}%+ of those rewarded",
            f"{PURCHASE_BURST:<24} {state(burst.enabled)}  {burst.min_purchases}+ purchases at one merchant in "
            f"{burst.window_minutes} minutes, each under {amounts(burst.below_minor)}",
            f"{MERCHANT_CONCENTRATION:<24} {state(merchants.enabled)}  a merchant's rewards to {merchants.max_accounts} "
            f"accounts or fewer, {amounts(merchants.min_total_minor)} or more, in {merchants.window_days} days; "
            f"its purchases held for {merchants.hold_days} days",
        ]


DEFAULT_RULES = AbuseRules()
NO_RULES = AbuseRules(
    RefundLoop(enabled=False), PurchaseBurst(enabled=False), MerchantConcentration(enabled=False)
)  # for back-tests and tests that want none


class AbuseRulesError(ValueError):
    """A bad abuse rule; the message names the field (``purchase_burst.min_purchases``)."""


def parse_rules(raw: Mapping[str, Any] | None) -> AbuseRules:
    """The rules of a mapping (a YAML document); a rule or field left out keeps its default."""
    if raw is None:
        return DEFAULT_RULES
    if not isinstance(raw, Mapping):
        raise AbuseRulesError(f"expected a mapping of rules ({', '.join(RULE_NAMES)}), got {type(raw).__name__}")
    _known(raw, RULE_NAMES, "")
    loop = _section(raw, REFUND_LOOP)
    burst = _section(raw, PURCHASE_BURST)
    merchants = _section(raw, MERCHANT_CONCENTRATION)
    _known(loop, ("enabled", "min_refunds", "window_days", "min_share_percent"), REFUND_LOOP)
    _known(burst, ("enabled", "min_purchases", "window_minutes", "below_minor"), PURCHASE_BURST)
    _known(merchants, ("enabled", "max_accounts", "min_total_minor", "window_days", "hold_days"), MERCHANT_CONCENTRATION)
    defaults = DEFAULT_RULES
    return AbuseRules(
        refund_loop=RefundLoop(
            enabled=_flag(loop, REFUND_LOOP, "enabled", defaults.refund_loop.enabled),
            min_refunds=_integer(loop, REFUND_LOOP, "min_refunds", defaults.refund_loop.min_refunds, 2, 1_000),
            window_days=_integer(loop, REFUND_LOOP, "window_days", defaults.refund_loop.window_days, 1, 366),
            min_share_percent=_integer(loop, REFUND_LOOP, "min_share_percent", defaults.refund_loop.min_share_percent, 1, 100),
        ),
        purchase_burst=PurchaseBurst(
            enabled=_flag(burst, PURCHASE_BURST, "enabled", defaults.purchase_burst.enabled),
            min_purchases=_integer(burst, PURCHASE_BURST, "min_purchases", defaults.purchase_burst.min_purchases, 2, 100),
            window_minutes=_integer(burst, PURCHASE_BURST, "window_minutes", defaults.purchase_burst.window_minutes, 1, 1_440),
            below_minor=_amounts(burst, PURCHASE_BURST, "below_minor", defaults.purchase_burst.below_minor, points=False),
        ),
        merchant_concentration=MerchantConcentration(
            enabled=_flag(merchants, MERCHANT_CONCENTRATION, "enabled", defaults.merchant_concentration.enabled),
            max_accounts=_integer(
                merchants, MERCHANT_CONCENTRATION, "max_accounts", defaults.merchant_concentration.max_accounts, 1, 1_000
            ),
            min_total_minor=_amounts(
                merchants, MERCHANT_CONCENTRATION, "min_total_minor", defaults.merchant_concentration.min_total_minor, points=True
            ),
            window_days=_integer(
                merchants, MERCHANT_CONCENTRATION, "window_days", defaults.merchant_concentration.window_days, 1, 90
            ),
            hold_days=_integer(merchants, MERCHANT_CONCENTRATION, "hold_days", defaults.merchant_concentration.hold_days, 1, 366),
        ),
    )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise AbuseRulesError(f"field '{name}': expected a mapping of its settings, got {section!r}")
    return section


def _known(raw: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in names:
            place = f"{where}.{key}" if where else str(key)
            raise AbuseRulesError(f"field '{place}': unknown (expected one of {', '.join(names)})")


def _flag(raw: Mapping[str, Any], rule: str, name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise AbuseRulesError(f"field '{rule}.{name}': expected true or false, got {value!r}")
    return value


def _integer(raw: Mapping[str, Any], rule: str, name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AbuseRulesError(f"field '{rule}.{name}': expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise AbuseRulesError(f"field '{rule}.{name}': {value} is outside {low}..{high}")
    return value


def _amounts(raw: Mapping[str, Any], rule: str, name: str, default: Mapping[str, int], points: bool) -> Mapping[str, int]:
    """Minor units per currency (ISO 4217; ``PTS`` for points where allowed): a money amount is
    never converted, so each currency the rule applies in is named."""
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, Mapping) or not value:
        raise AbuseRulesError(f"field '{rule}.{name}': expected minor units per currency, e.g. {{EUR: 1000}}, got {value!r}")
    amounts: dict[str, int] = {}
    for currency, amount in value.items():
        where = f"{rule}.{name}.{currency}"
        if not isinstance(currency, str) or not (is_known_currency(currency) or (points and currency == POINTS_UNIT)):
            raise AbuseRulesError(f"field '{where}': not an ISO 4217 currency{' (or PTS)' if points else ''}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise AbuseRulesError(f"field '{where}': expected minor units above 0, got {amount!r}")
        amounts[currency] = amount
    return _frozen(amounts)
