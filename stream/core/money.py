"""Money: integers in minor units with an ISO 4217 currency; rates in basis points.

Nothing here uses floats. Every division names how it rounds. Amounts in different
currencies are never added: callers carry the currency beside every amount.

Rewards are amounts of a *unit*: an ISO 4217 currency, or ``PTS`` (loyalty points, whole, exponent
0). ``PTS`` is understood by ``format_minor`` and ``unit_exponent`` but is not a currency: card
events billed in it are rejected (``is_known_currency`` is False).
"""

from __future__ import annotations

import enum

import msgspec

# ISO 4217 minor units (exponent) of the active currency codes. Data, not logic: from the
# ISO 4217 list, table A.1. Codes with no minor unit ("N.A.", e.g. XAU) are left out on purpose:
# cashback is never paid in gold or SDRs.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN "
        "BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
        "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR "
        "LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD "
        "PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN "
        "SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG".split(),
        2,
    ),
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    "CLF": 4,
    "UYW": 4,
}


# Units that are not currencies: amounts of them are rewards, never card amounts.
POINTS_UNIT = "PTS"
_NON_ISO_EXPONENTS: dict[str, int] = {POINTS_UNIT: 0}

_UNIT_EXPONENTS: dict[str, int] = {**_EXPONENTS, **_NON_ISO_EXPONENTS}

# Exact amounts (before rounding) are kept in 1/10,000ths of a minor unit, the scale of basis points.
EXACT_SCALE = 10_000


class UnknownCurrencyError(ValueError):
    """The code is not an active ISO 4217 currency with a minor unit."""


def exponent(currency: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (EUR 2, JPY 0, BHD 3)."""
    try:
        return _EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrencyError(currency) from None


def is_known_currency(currency: str) -> bool:
    """An ISO 4217 currency a card amount may be in (``PTS`` is not one)."""
    return currency in _EXPONENTS


def unit_exponent(unit: str) -> int:
    """Minor-unit digits of a reward unit: an ISO 4217 currency or ``PTS`` (0)."""
    if unit in _NON_ISO_EXPONENTS:
        return _NON_ISO_EXPONENTS[unit]
    return exponent(unit)


def format_minor(amount_minor: int, currency: str) -> str:
    """Human-readable amount for explanations and logs, e.g. ``12.50 EUR`` or ``21 PTS``; exact, no float."""
    digits = _UNIT_EXPONENTS.get(currency)
    if digits == 2 and amount_minor >= 0:  # the common case, spelled out
        whole, fraction = divmod(amount_minor, 100)
        return f"{whole}.{fraction:02d} {currency}"
    if digits is None:
        digits = unit_exponent(currency)  # an unknown unit: its error
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**digits)
    if digits == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{digits}d} {currency}"


class Rounding(str, enum.Enum):
    """How a fractional minor unit becomes an integer. The value is the name stored in explanations."""

    DOWN = "down"  # towards zero: the default, the customer never gets more than the rate says
    HALF_UP = "half_up"  # commercial rounding
    HALF_EVEN = "half_even"  # banker's rounding


def divide(numerator: int, denominator: int, rounding: Rounding) -> tuple[int, int]:
    """Divide two non-negative integers; return (quotient, remainder) under the named rounding.

    The remainder is ``numerator - quotient * denominator`` and may be negative when the
    rounding went up; a caller that carries it keeps sums exact over many operations.
    """
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if numerator < 0:
        raise ValueError("numerator must not be negative")
    quotient, remainder = divmod(numerator, denominator)
    if rounding is Rounding.HALF_UP and remainder * 2 >= denominator:
        quotient += 1
    elif rounding is Rounding.HALF_EVEN and (remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1)):
        quotient += 1
    return quotient, numerator - quotient * denominator


class RateResult(msgspec.Struct, frozen=True, gc=False):  # a record: made for every amount
    """A rate applied to a basis: the reward and the fraction carried to the next computation."""

    reward_minor: int
    # The part of a minor unit not paid, in 1/10,000ths of a minor unit (same scale as basis points).
    carried_remainder: int


def apply_rate(
    basis_minor: int,
    rate_bps: int,
    rounding: Rounding = Rounding.DOWN,
    carried_remainder: int = 0,
) -> RateResult:
    """Reward for ``basis_minor`` at ``rate_bps``, adding the remainder carried from before.

    With ``Rounding.DOWN`` and the carry passed along, many small purchases earn exactly what one
    large one of the same total would (DOMAIN case 23).
    """
    if basis_minor < 0 or rate_bps < 0:
        raise ValueError("basis and rate must not be negative")
    return round_exact(basis_minor * rate_bps, rounding, carried_remainder)


def round_exact(exact: int, rounding: Rounding = Rounding.DOWN, carried_remainder: int = 0) -> RateResult:
    """An exact reward in 1/10,000ths of a minor unit, plus the carried remainder, as whole minor
    units under the named rounding; the unpaid (or overpaid) fraction is returned to be carried."""
    if exact < 0:
        raise ValueError("exact amount must not be negative")
    exact += carried_remainder
    if exact < 0:  # an earlier rounding up paid ahead more than this purchase earns: nothing now
        return RateResult(reward_minor=0, carried_remainder=exact)
    reward, remainder = divide(exact, EXACT_SCALE, rounding)
    return RateResult(reward_minor=reward, carried_remainder=remainder)


def points_exact(basis_minor: int, points_per_unit: int, basis_currency: str) -> int:
    """Points earned by ``basis_minor`` at ``points_per_unit`` whole points per whole currency unit,
    in 1/10,000ths of a point. Exact: no ISO currency has more than four minor digits."""
    if basis_minor < 0 or points_per_unit < 0:
        raise ValueError("basis and points per unit must not be negative")
    return basis_minor * points_per_unit * (EXACT_SCALE // 10 ** exponent(basis_currency))


def format_exact(exact: int, unit: str) -> str:
    """An exact amount in 1/10,000ths of a minor unit, e.g. ``0.0165 EUR``: at least the unit's
    minor digits, trailing zeros beyond them dropped."""
    minor = unit_exponent(unit)
    digits = minor + 4
    sign = "-" if exact < 0 else ""
    whole, fraction = divmod(abs(exact), 10**digits)
    text = f"{fraction:0{digits}d}".rstrip("0").ljust(minor, "0")
    return f"{sign}{whole}.{text} {unit}" if text else f"{sign}{whole} {unit}"


def prorate(total_minor: int, part: int, whole: int) -> int:
    """``total * part / whole`` rounded down: the share of ``total`` that ``part`` of ``whole`` is.

    Used for proportional clawbacks: rounding down over cumulative parts never takes back more
    than was given.
    """
    if whole <= 0:
        return 0
    part = min(max(part, 0), whole)
    return (total_minor * part) // whole
