"""The settings whose values are small languages of their own (a schedule, minimums per currency, a
limit or ``off``), parsed: ``stream.settings`` validates each at start with these, and reads it with
them; a ValueError says what is wrong, and the settings name the variable."""

from __future__ import annotations


def parse_payout_schedule(text: str) -> tuple[int, ...]:
    """``02:00,14:30`` -> (120, 870); ``off`` -> (); ValueError says what is wrong."""
    if text.strip().lower() == "off":
        return ()
    minutes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        hours, colon, mins = part.partition(":")
        if not (colon and len(hours) == 2 and len(mins) == 2 and hours.isdigit() and mins.isdigit()):
            raise ValueError(f"expected HH:MM UTC times, comma-separated, or off; got {part!r}")
        if int(hours) > 23 or int(mins) > 59:
            raise ValueError(f"{part} is not a time of day")
        minutes.add(int(hours) * 60 + int(mins))
    return tuple(sorted(minutes))


def parse_event_ahead_limit(text: str, horizon_days: int) -> int | None:
    """``90`` -> 90; ``off`` -> None; ValueError says what is wrong. The limit must be below the
    transaction horizon (``horizon_days``; 0: unknown, not checked): an event accepted that far ahead
    would put every event of the present beyond its account's horizon."""
    text = text.strip()
    if text.lower() == "off":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of days (1 or more) or off, got {text!r}")
    if horizon_days and int(text) >= horizon_days:
        raise ValueError(f"{text} days is not below TRANSACTION_HORIZON_DAYS ({horizon_days})")
    return int(text)


def parse_payout_minimums(text: str) -> tuple[dict[str, int], int | None]:
    """``EUR=1000,USD=1500,*=2000`` -> ({"EUR": 1000, "USD": 1500}, 2000); ValueError says what is wrong."""
    from stream.core.money import is_known_currency

    named: dict[str, int] = {}
    default: int | None = None
    for part in (p.strip() for p in text.split(",")):
        currency, equals, amount = part.partition("=")
        currency = currency.strip()
        if not equals or not amount.strip().isdigit() or int(amount) < 1:
            raise ValueError(f"expected CUR=minor (a whole number of 1 or more), got {part!r}")
        if currency == "*":
            if default is not None:
                raise ValueError("* is given twice")
            default = int(amount)
        elif not is_known_currency(currency):
            raise ValueError(f"{currency!r} is not an ISO 4217 currency")
        elif currency in named:
            raise ValueError(f"{currency} is given twice")
        else:
            named[currency] = int(amount)
    return named, default
