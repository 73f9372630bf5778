"""Unit tests of stream.core.money: ISO 4217 exponents, named rounding, rates with carry, prorating, formatting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.money import (
    RateResult,
    Rounding,
    UnknownCurrencyError,
    apply_rate,
    divide,
    exponent,
    format_minor,
    is_known_currency,
    prorate,
)

SEEDED = settings(max_examples=200, derandomize=True, database=None, deadline=None)


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("EUR", 2), ("USD", 2), ("GBP", 2), ("JPY", 0), ("KRW", 0), ("BHD", 3), ("KWD", 3), ("TND", 3), ("CLF", 4)],
)
def test_exponent_of_known_currencies(currency: str, digits: int) -> None:
    assert exponent(currency) == digits
    assert is_known_currency(currency)


@pytest.mark.parametrize("code", ["XAU", "XDR", "eur", "", "EURO", "ZZZ"])
def test_unknown_currency_is_rejected(code: str) -> None:
    assert not is_known_currency(code)
    with pytest.raises(UnknownCurrencyError):
        exponent(code)


def test_unknown_currency_error_is_a_value_error() -> None:
    assert issubclass(UnknownCurrencyError, ValueError)


@pytest.mark.parametrize(
    ("numerator", "denominator", "rounding", "expected"),
    [
        # 7 / 2 = 3.5
        (7, 2, Rounding.DOWN, (3, 1)),
        (7, 2, Rounding.HALF_UP, (4, -1)),
        (7, 2, Rounding.HALF_EVEN, (4, -1)),
        # 5 / 2 = 2.5: half-even keeps the even 2
        (5, 2, Rounding.DOWN, (2, 1)),
        (5, 2, Rounding.HALF_UP, (3, -1)),
        (5, 2, Rounding.HALF_EVEN, (2, 1)),
        # 16500 / 10000 = 1.65
        (16_500, 10_000, Rounding.DOWN, (1, 6_500)),
        (16_500, 10_000, Rounding.HALF_UP, (2, -3_500)),
        (16_500, 10_000, Rounding.HALF_EVEN, (2, -3_500)),
        # 14999 / 10000 = 1.4999: never up
        (14_999, 10_000, Rounding.HALF_UP, (1, 4_999)),
        (14_999, 10_000, Rounding.HALF_EVEN, (1, 4_999)),
        # exact
        (20_000, 10_000, Rounding.HALF_UP, (2, 0)),
        (0, 10_000, Rounding.HALF_EVEN, (0, 0)),
    ],
)
def test_divide_rounds_as_named(numerator: int, denominator: int, rounding: Rounding, expected: tuple[int, int]) -> None:
    assert divide(numerator, denominator, rounding) == expected


@pytest.mark.parametrize("denominator", [0, -1])
def test_divide_rejects_non_positive_denominator(denominator: int) -> None:
    with pytest.raises(ValueError):
        divide(10, denominator, Rounding.DOWN)


def test_divide_rejects_negative_numerator() -> None:
    with pytest.raises(ValueError):
        divide(-1, 10, Rounding.DOWN)


@SEEDED
@given(st.integers(0, 10**15), st.integers(1, 10**6), st.sampled_from(list(Rounding)))
def test_divide_remainder_is_exact_and_bounded(numerator: int, denominator: int, rounding: Rounding) -> None:
    quotient, remainder = divide(numerator, denominator, rounding)
    assert quotient * denominator + remainder == numerator
    assert -denominator < remainder < denominator
    if rounding is Rounding.DOWN:
        assert 0 <= remainder < denominator
    else:  # rounds to nearest: never more than half a unit away
        assert abs(2 * remainder) <= denominator


def test_rounding_values_are_the_names_stored_in_explanations() -> None:
    assert [r.value for r in Rounding] == ["down", "half_up", "half_even"]


def test_apply_rate_rounds_down_and_reports_the_remainder() -> None:
    # 5% of 0.33 is 0.0165: 1 minor unit paid, 0.65 of a minor unit (6500/10000) carried (DOMAIN case 23)
    assert apply_rate(33, 500) == RateResult(reward_minor=1, carried_remainder=6_500)
    assert apply_rate(10_000, 500) == RateResult(reward_minor=500, carried_remainder=0)
    assert apply_rate(1_999, 500) == RateResult(reward_minor=99, carried_remainder=9_500)


def test_apply_rate_adds_the_carried_remainder() -> None:
    first = apply_rate(33, 500)
    second = apply_rate(33, 500, carried_remainder=first.carried_remainder)
    assert second == RateResult(reward_minor=2, carried_remainder=3_000)


def test_apply_rate_half_up() -> None:
    assert apply_rate(33, 500, Rounding.HALF_UP) == RateResult(reward_minor=2, carried_remainder=-3_500)
    assert apply_rate(30, 500, Rounding.HALF_UP) == RateResult(reward_minor=2, carried_remainder=-5_000)
    assert apply_rate(30, 500, Rounding.HALF_EVEN) == RateResult(reward_minor=2, carried_remainder=-5_000)
    assert apply_rate(10, 500, Rounding.HALF_EVEN) == RateResult(reward_minor=0, carried_remainder=5_000)


@pytest.mark.parametrize(("basis", "rate"), [(-1, 500), (100, -1)])
def test_apply_rate_rejects_negative_inputs(basis: int, rate: int) -> None:
    with pytest.raises(ValueError):
        apply_rate(basis, rate)


def test_many_small_purchases_earn_what_one_large_one_would() -> None:
    carry = 0
    total = 0
    for _ in range(100):
        result = apply_rate(33, 500, carried_remainder=carry)
        total += result.reward_minor
        carry = result.carried_remainder
    assert total == apply_rate(3_300, 500).reward_minor == 165
    assert carry == 0


@SEEDED
@given(st.lists(st.integers(0, 1_000_000), max_size=40), st.integers(0, 10_000))
def test_carry_makes_split_purchases_exact_when_rounding_down(bases: list[int], rate_bps: int) -> None:
    carry = 0
    total = 0
    for basis in bases:
        result = apply_rate(basis, rate_bps, Rounding.DOWN, carry)
        assert result.reward_minor >= 0
        assert 0 <= result.carried_remainder < 10_000
        total += result.reward_minor
        carry = result.carried_remainder
    assert total == apply_rate(sum(bases), rate_bps).reward_minor


def test_carry_after_rounding_up_is_accepted() -> None:
    first = apply_rate(1, 5_000, Rounding.HALF_UP)  # 0.5 rounds up to 1, carries -5000
    assert first == RateResult(reward_minor=1, carried_remainder=-5_000)
    # 0.4 more: 0.9 in all, 1 already paid: nothing more now, -0.1 carried on.
    assert apply_rate(1, 4_000, Rounding.HALF_UP, first.carried_remainder) == RateResult(0, -1_000)


@pytest.mark.parametrize(
    ("total", "part", "whole", "expected"),
    [
        (500, 4_000, 10_000, 200),  # refund 40.00 of 100.00: 2.00 of 5.00 (DOMAIN case 10)
        (500, 10_000, 10_000, 500),
        (500, 0, 10_000, 0),
        (5, 1, 3, 1),  # 1.66 rounds down
        (5, 2, 3, 3),  # 3.33 rounds down
        (500, 20_000, 10_000, 500),  # part clamped to whole
        (500, -5, 10_000, 0),  # part clamped to zero
        (500, 10, 0, 0),  # no whole: nothing
        (500, 10, -1, 0),
    ],
)
def test_prorate(total: int, part: int, whole: int, expected: int) -> None:
    assert prorate(total, part, whole) == expected


@SEEDED
@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_prorate_over_cumulative_parts_never_exceeds_total(total: int, parts: list[int]) -> None:
    whole = sum(parts) or 1
    cumulative = 0
    taken = 0
    for part in parts:
        cumulative += part
        share = prorate(total, cumulative, whole)
        assert share >= taken  # monotonic in the part
        taken = share
    assert taken <= total


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1_250, "EUR", "12.50 EUR"),
        (5, "EUR", "0.05 EUR"),
        (0, "EUR", "0.00 EUR"),
        (-5, "EUR", "-0.05 EUR"),
        (-1_250, "USD", "-12.50 USD"),
        (500, "JPY", "500 JPY"),
        (-500, "JPY", "-500 JPY"),
        (5_000, "BHD", "5.000 BHD"),
        (1, "BHD", "0.001 BHD"),
        (12_345, "CLF", "1.2345 CLF"),
        (123_456_789_012, "EUR", "1234567890.12 EUR"),
    ],
)
def test_format_minor(amount: int, currency: str, text: str) -> None:
    assert format_minor(amount, currency) == text


def test_format_minor_rejects_unknown_currency() -> None:
    with pytest.raises(UnknownCurrencyError):
        format_minor(100, "XAU")


# --- reward units, exact amounts, points ---------------------------------------------------------


def test_points_are_a_unit_but_not_a_currency() -> None:
    from stream.core.money import POINTS_UNIT, unit_exponent

    assert POINTS_UNIT == "PTS"
    assert format_minor(21, "PTS") == "21 PTS" and format_minor(-3, "PTS") == "-3 PTS"
    assert unit_exponent("PTS") == 0 and unit_exponent("BHD") == 3
    assert not is_known_currency("PTS")  # card events billed in points are rejected
    with pytest.raises(UnknownCurrencyError):
        exponent("PTS")
    with pytest.raises(UnknownCurrencyError):
        unit_exponent("XAU")


@pytest.mark.parametrize(
    ("basis", "points_per_unit", "currency", "exact"),
    [(1_075, 2, "EUR", 215_000), (1_000, 1, "JPY", 10_000_000), (1_234, 3, "BHD", 37_020), (1, 1, "CLF", 1)],
)
def test_points_exact_is_in_ten_thousandths_of_a_point(basis: int, points_per_unit: int, currency: str, exact: int) -> None:
    from stream.core.money import points_exact

    assert points_exact(basis, points_per_unit, currency) == exact


def test_round_exact_carries_like_apply_rate() -> None:
    from stream.core.money import round_exact

    assert round_exact(16_500) == RateResult(1, 6_500)
    assert round_exact(16_500, Rounding.DOWN, 6_500) == RateResult(2, 3_000)
    assert round_exact(16_500, Rounding.HALF_UP) == RateResult(2, -3_500)
    assert round_exact(0, Rounding.DOWN, -3_500) == RateResult(0, -3_500)
    with pytest.raises(ValueError):
        round_exact(-1)


@pytest.mark.parametrize(
    ("exact", "unit", "text"),
    [
        (16_500, "EUR", "0.0165 EUR"),
        (50_000, "EUR", "0.05 EUR"),
        (30, "EUR", "0.00003 EUR"),
        (5_000, "PTS", "0.5 PTS"),
        (20_000, "PTS", "2 PTS"),
        (-6_500, "EUR", "-0.0065 EUR"),
        (12_345, "JPY", "1.2345 JPY"),
        (1, "BHD", "0.0000001 BHD"),
    ],
)
def test_format_exact(exact: int, unit: str, text: str) -> None:
    from stream.core.money import format_exact

    assert format_exact(exact, unit) == text
