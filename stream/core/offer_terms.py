"""The parts of an offer that are small records of their own (tiers, boost, cap, hours), and the
validation helpers every offer field uses. Every error names the offer and the field (a nested
field as ``cap.amount_minor`` or ``tiers[0].rate_bps``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_RATE_BPS = 10_000  # 100%
DAYS_OF_WEEK = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")  # index = datetime.weekday()
MINUTES_PER_DAY = 24 * 60


class OfferError(ValueError):
    """An offer is invalid; the message names the offer and the field."""

    def __init__(self, offer_id: str, field_name: str, problem: str) -> None:
        super().__init__(f"offer {offer_id!r}, field {field_name!r}: {problem}")
        self.offer_id = offer_id
        self.field_name = field_name


# --- helpers -------------------------------------------------------------------------------------


def integer(raw: Mapping[str, Any], name: str, offer_id: str, default: Any, minimum: int = 0, path: str = "") -> Any:
    """A whole number (never a float, a bool or text) at least ``minimum``, or the default."""
    value = raw.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OfferError(offer_id, path + name, f"{value!r} is not a whole number (money is in minor units)")
    if value < minimum:
        raise OfferError(offer_id, path + name, f"{value} is below {minimum}")
    return value


def rate(raw: Mapping[str, Any], name: str, offer_id: str, path: str = "") -> int | None:
    value = integer(raw, name, offer_id, None, path=path)
    if value is not None and value > MAX_RATE_BPS:
        raise OfferError(offer_id, path + name, f"{value} is above {MAX_RATE_BPS} (100%)")
    return value


def boolean(raw: Mapping[str, Any], name: str, offer_id: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise OfferError(offer_id, name, f"{value!r} is not true or false")
    return value


def enumerated(kind: type[enum.Enum], value: Any, offer_id: str, name: str, lower: bool = False) -> Any:
    try:
        return kind(str(value).lower() if lower else str(value).upper())
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise OfferError(offer_id, name, f"{value!r} is not one of {allowed}") from None


def string_list(raw: Mapping[str, Any], name: str, offer_id: str) -> list[str]:
    """A list of non-empty strings (an absent or null field is the empty list)."""
    value = raw.get(name)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise OfferError(offer_id, name, f"{value!r} is not a list")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise OfferError(offer_id, name, f"{item!r} is not a non-empty string")
    return [item.strip() for item in value]


def record(raw: Mapping[str, Any], name: str, offer_id: str, fields: tuple[str, ...]) -> Mapping[str, Any] | None:
    """A nested mapping with exactly the given keys, or None when absent."""
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OfferError(offer_id, name, f"{value!r} is not a mapping of {', '.join(fields)}")
    unknown = set(value) - set(fields)
    if unknown:
        raise OfferError(offer_id, f"{name}.{sorted(map(str, unknown))[0]}", "unknown field")
    for key in fields:
        if value.get(key) is None:
            raise OfferError(offer_id, f"{name}.{key}", "required")
    return value


# --- the small records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    """Accounts in ``segment`` earn ``rate_bps``; an account in several tiers gets the best one."""

    segment: str
    rate_bps: int


def parse_tiers(raw: Mapping[str, Any], offer_id: str) -> tuple[Tier, ...]:
    value = raw.get("tiers")
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise OfferError(offer_id, "tiers", f"{value!r} is not a list")
    tiers: list[Tier] = []
    for index, item in enumerate(value):
        name = f"tiers[{index}]"
        item = record({name: item}, name, offer_id, ("segment", "rate_bps"))
        assert item is not None
        segment = item["segment"]
        if not isinstance(segment, str) or not segment.strip():
            raise OfferError(offer_id, f"{name}.segment", f"{segment!r} is not a non-empty string")
        if any(t.segment == segment.strip() for t in tiers):
            raise OfferError(offer_id, f"{name}.segment", f"segment {segment!r} has two tiers")
        tiers.append(Tier(segment.strip(), rate(item, "rate_bps", offer_id, path=f"{name}.") or 0))
    return tuple(tiers)


@dataclass(frozen=True, slots=True)
class Boost:
    """The whole purchase earns ``rate_bps`` when its basis reaches ``threshold_minor``."""

    threshold_minor: int
    rate_bps: int


def parse_boost(raw: Mapping[str, Any], offer_id: str) -> Boost | None:
    value = record(raw, "boost", offer_id, ("threshold_minor", "rate_bps"))
    if value is None:
        return None
    return Boost(integer(value, "threshold_minor", offer_id, None, 1, "boost."), rate(value, "rate_bps", offer_id, "boost.") or 0)


class CapPeriod(str, enum.Enum):
    """Cap periods, in the merchant's local calendar (weeks are ISO weeks, Monday first)."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    CAMPAIGN = "CAMPAIGN"


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``amount_minor`` of reward per account per period (in the reward's unit)."""

    period: CapPeriod
    amount_minor: int


def parse_cap(raw: Mapping[str, Any], offer_id: str) -> Cap | None:
    value = record(raw, "cap", offer_id, ("period", "amount_minor"))
    if value is None:
        return None
    period = enumerated(CapPeriod, value["period"], offer_id, "cap.period")
    return Cap(period, integer(value, "amount_minor", offer_id, None, 1, "cap."))


@dataclass(frozen=True, slots=True)
class Hours:
    """Local times of day, in minutes after midnight: from inclusive, to exclusive. A window whose
    end is not after its start runs over midnight (22:00 to 02:00)."""

    from_minute: int
    to_minute: int

    def __contains__(self, minute: int) -> bool:
        if self.from_minute < self.to_minute:
            return self.from_minute <= minute < self.to_minute
        return minute >= self.from_minute or minute < self.to_minute

    def to_record(self) -> dict[str, str]:
        return {"from": _clock(self.from_minute), "to": _clock(self.to_minute)}


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _minute_of(value: Any, offer_id: str, name: str, latest: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
        raise OfferError(offer_id, name, f'{value!r} is a number: write the time quoted, as "18:00"')
    text = str(value)
    hour, colon, minute = text.partition(":")
    if not (
        colon
        and len(hour) == 2
        and len(minute) == 2
        and hour.isdigit()
        and minute.isdigit()
        and hour.isascii()
        and minute.isascii()
    ):
        raise OfferError(offer_id, name, f'{value!r} is not a time like "18:00"')
    total = int(hour) * 60 + int(minute)
    if int(minute) > 59 or total > latest:
        raise OfferError(offer_id, name, f"{value!r} is not a time of day")
    return total


def parse_hours(raw: Mapping[str, Any], offer_id: str) -> Hours | None:
    value = record(raw, "hours", offer_id, ("from", "to"))
    if value is None:
        return None
    start = _minute_of(value["from"], offer_id, "hours.from", MINUTES_PER_DAY - 1)
    end = _minute_of(value["to"], offer_id, "hours.to", MINUTES_PER_DAY)
    if start == end % MINUTES_PER_DAY:
        raise OfferError(offer_id, "hours.to", "must differ from hours.from (leave hours out for all day)")
    return Hours(start, end)


def parse_days(raw: Mapping[str, Any], offer_id: str) -> frozenset[str]:
    days = [day.upper() for day in string_list(raw, "days_of_week", offer_id)]
    unknown = [day for day in days if day not in DAYS_OF_WEEK]
    if unknown:
        raise OfferError(offer_id, "days_of_week", f"{unknown[0]!r} is not one of {', '.join(DAYS_OF_WEEK)}")
    return frozenset(days)


# --- prices in other currencies ------------------------------------------------------------------

PRICE_FIELDS = (
    "min_spend_minor",
    "max_reward_per_txn_minor",
    "fixed_reward_minor",
    "points_per_unit",
    "boost_threshold_minor",
    "cap_amount_minor",
    "budget_minor",
)


@dataclass(frozen=True, slots=True)
class Price:
    """An offer's money amounts for purchases billed in one more currency, in its minor units. A
    field is None when not given; which ones an offer must give is checked with the offer."""

    min_spend_minor: int | None = None
    max_reward_per_txn_minor: int | None = None
    fixed_reward_minor: int | None = None
    points_per_unit: int | None = None
    boost_threshold_minor: int | None = None
    cap_amount_minor: int | None = None
    budget_minor: int | None = None

    def given(self) -> list[str]:
        return [name for name in PRICE_FIELDS if getattr(self, name) is not None]


def parse_prices(raw: Mapping[str, Any], offer_id: str, is_currency: Any) -> tuple[tuple[str, Price], ...]:
    """``prices: {JPY: {min_spend_minor: 3000, cap_amount_minor: 3000}, ...}``, sorted by currency."""
    value = raw.get("prices")
    if not value:
        return ()
    if not isinstance(value, Mapping):
        raise OfferError(offer_id, "prices", "a mapping of currency to its amounts, like {JPY: {min_spend_minor: 3000}}")
    prices = []
    for currency, amounts in value.items():
        if not isinstance(currency, str) or not is_currency(currency):
            raise OfferError(offer_id, f"prices.{currency}", f"{currency!r} is not an ISO 4217 currency")
        if not isinstance(amounts, Mapping):
            raise OfferError(offer_id, f"prices.{currency}", f"a mapping of {', '.join(PRICE_FIELDS)}")
        unknown = set(amounts) - set(PRICE_FIELDS)
        if unknown:
            raise OfferError(offer_id, f"prices.{currency}.{sorted(map(str, unknown))[0]}", "unknown field")
        path = f"prices.{currency}."
        minimum = {"min_spend_minor": 0, "budget_minor": 0}
        prices.append(
            (
                currency,
                Price(**{name: integer(amounts, name, offer_id, None, minimum.get(name, 1), path) for name in PRICE_FIELDS}),
            )
        )
    return tuple(sorted(prices))
