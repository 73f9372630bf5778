"""Customer notifications (issue 12, part 3): what a bank app pushes to a customer about their
cashback, one line in the customer's language. Pure: templates, number and date formatting.

**Which entries notify** (``KIND_OF``): a ledger entry the worker sends tells the customer
something when it is one of

- ``PENDING_CREATED``: EARNED (pending cashback, until the purchase settles);
- ``CONFIRMED``: CONFIRMED (the purchase settled);
- ``MADE_AVAILABLE``, ``HOLD_RELEASED`` into AVAILABLE or DONATED, ``DONATED``: AVAILABLE (the
  return window ended, or operations released a hold; a charity reward is given);
- ``CLAWED_BACK``: CLAWED_BACK (a refund or a chargeback took it back);

and the engine's expiry notices (``ExpiryNotice``: ``stream.core.expiry``) are EXPIRING; its paid
notices (``PaidNotice``: ``stream.core.payouts``, the bank confirmed a cash payout) are PAID, sent
again when the confirmation is redelivered (same id). Everything else
(pending adjusted, released or expired, NOT_EARNED lines, reconciliation items, holds, recredits,
expiries) is the ledger's business, not a push.

**Ids.** A notification's id is its cause's: the entry's ``accrual_id``, or the notice's
``notice_id``; a redelivered event re-sends the same entries, hence the same notifications with the
same ids and the same content (the line is made from the entry and the account's language alone:
only a language changed in between would change a repeat's line), so a consumer dedupes by id.

**Lines.** Made from the entry's structured fields (amount, unit, reward kind, basis and rate of
its explanation, why it was clawed back), never from its English ``detail``. Amounts are written
with their unit's minor digits (``stream.core.money``: EUR 2, JPY 0, BHD 3, points whole): English
``EUR 5.00``, ``1,200 points``; French ``5,00 €``, ``1 200 points`` (a narrow no-break space
groups thousands and a no-break space precedes the symbol, as CLDR writes French). Written here
rather than with a formatting library: a handful of units and two languages, exact from integers,
and a line that does not change with a library's locale data (the same entry always makes the
same line in a language: a repeat is byte for byte the same notification).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from stream.core.entries import Entry
from stream.core.money import POINTS_UNIT, unit_exponent

LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"

EARNED = "EARNED"
CONFIRMED = "CONFIRMED"
AVAILABLE = "AVAILABLE"
CLAWED_BACK = "CLAWED_BACK"
EXPIRING = "EXPIRING"
PAID = "PAID"  # a cash payout the bank confirmed (stream.core.payouts)
KINDS = (EARNED, CONFIRMED, AVAILABLE, CLAWED_BACK, EXPIRING, PAID)

# entry kind -> notification kind (HOLD_RELEASED and DONATED only when the reward became spendable or given)
KIND_OF = {
    "PENDING_CREATED": EARNED,
    "CONFIRMED": CONFIRMED,
    "MADE_AVAILABLE": AVAILABLE,
    "HOLD_RELEASED": AVAILABLE,
    "DONATED": AVAILABLE,
    "CLAWED_BACK": CLAWED_BACK,
}
_SPENDABLE = frozenset({"AVAILABLE", "DONATED"})

_NNBSP = "\u202f"  # narrow no-break space: French thousands and before ":" "%"
_NBSP = "\u00a0"  # no-break space: French before a currency symbol
_SYMBOLS_FR = {"EUR": "€", "USD": "$", "GBP": "£", "CHF": "CHF", "JPY": "¥"}  # after the amount; others: the code
_MONTHS = {
    "en": ("January February March April May June July August September October November December".split()),
    "fr": ("janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()),
}


class ExpiryNotice(msgspec.Struct, frozen=True, gc=False):
    """The engine's notice that a lot of unused points or store credit expires soon
    (``stream.core.expiry.on_expiry_notice``): what is left, and when it expires."""

    notice_id: str  # <the notice event's id>#<offer>:<unit>: one per lot, deterministic
    account_id: str
    offer_id: str
    reward_kind: str
    unit: str
    amount_minor: int
    occurred_at: int  # the notice's due time, epoch ms
    expires_at: int  # the lot's expiry, epoch ms (exclusive: usable until the day before ends)


class PaidNotice(msgspec.Struct, frozen=True, gc=False):
    """The engine's notice that the bank confirmed a cash payout (``stream.core.payouts.on_payout_result``)."""

    notice_id: str  # <the confirmation event's id>#paid: one per payout, deterministic
    account_id: str
    amount_minor: int
    currency: str
    occurred_at: int  # the confirmation's time, epoch ms


Notice = ExpiryNotice | PaidNotice  # what the engine tells beside its entries (``Decision.notices``)


class Notification(msgspec.Struct, frozen=True, gc=False):
    """One notification, as the ``notification`` Avro record has it (``record``)."""

    notification_id: str
    account_id: str
    kind: str
    amount_minor: int
    currency: str
    reward_kind: str
    offer_id: str | None
    merchant_id: str | None
    occurred_at: int  # epoch ms
    language: str
    line: str
    expires_at: int | None = None

    def record(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "account_id": self.account_id,
            "kind": self.kind,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reward_kind": self.reward_kind,
            "offer_id": self.offer_id,
            "merchant_id": self.merchant_id,
            "occurred_at": self.occurred_at,
            "language": self.language,
            "line": self.line,
            "expires_at": self.expires_at,
        }


def language_of(language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The language to write in: the account's when it is one written here, else ``default``."""
    return language if language in LANGUAGES else default


def kind_of(entry: Entry) -> str | None:
    """The notification an entry makes (None: it tells the customer nothing)."""
    kind = KIND_OF.get(entry.entry_kind)
    if kind == AVAILABLE and entry.credit_book not in _SPENDABLE:
        return None
    return kind if entry.amount_minor > 0 else None


def from_entry(entry: Entry, language: str) -> Notification | None:
    """The notification of one ledger entry, in ``language`` (one of ``LANGUAGES``), or None."""
    kind = kind_of(entry)
    if kind is None:
        return None
    return Notification(
        entry.accrual_id,
        entry.account_id,
        kind,
        entry.amount_minor,
        entry.currency,
        entry.reward_kind,
        entry.offer_id,
        entry.merchant_id,
        entry.occurred_at,
        language,
        entry_line(kind, entry, language),
    )


def from_notice(notice: Notice, language: str) -> Notification:
    """The EXPIRING (PAID) notification of an engine expiry (paid) notice, in ``language``."""
    if isinstance(notice, PaidNotice):
        line = paid_line(notice.amount_minor, notice.currency, "CASH", language)
        return Notification(
            notice.notice_id,
            notice.account_id,
            PAID,
            notice.amount_minor,
            notice.currency,
            "CASH",
            None,
            None,
            notice.occurred_at,
            language,
            line,
        )
    reward = _reward(notice.amount_minor, notice.unit, notice.reward_kind, language)
    last_day = _date(notice.expires_at - 1, language)
    if language == "fr":
        line = f"Il vous reste {reward} à utiliser au plus tard le {last_day}."
    else:
        line = f"You have {reward} left to use by {last_day}."
    return Notification(
        notice.notice_id,
        notice.account_id,
        EXPIRING,
        notice.amount_minor,
        notice.unit,
        notice.reward_kind,
        notice.offer_id,
        None,
        notice.occurred_at,
        language,
        line,
        notice.expires_at,
    )


def entry_line(kind: str, entry: Entry, language: str) -> str:
    """The line of an entry's notification of ``kind``."""
    reward = _reward(entry.amount_minor, entry.currency, entry.reward_kind, language)
    x = entry.explanation
    purchase = format_amount(x.basis_minor, x.basis_currency, language) if x.basis_minor > 0 else None
    fr = language == "fr"
    if kind == EARNED:
        of = ""
        if purchase is not None and x.rate_bps > 0:  # a rate: "(5% of EUR 100.00)"
            rate = format_rate(x.rate_bps, language)
            of = f" ({rate} de {purchase})" if fr else f" ({rate} of {purchase})"
        elif purchase is not None:  # a fixed reward or points: on the purchase
            of = f" sur un achat de {purchase}" if fr else f" on a purchase of {purchase}"
        if fr:
            return f"Vous avez gagné {reward}{of}, en attente du règlement de l'achat."
        return f"You earned {reward}{of}, pending until the purchase settles."
    if kind == CONFIRMED:
        if fr:
            on = f" sur votre achat de {purchase}" if purchase else ""
            return f"Confirmation de {reward}{on} : l'achat est réglé.".replace(" :", _NNBSP + ":")
        on = f" on your purchase of {purchase}" if purchase else ""
        return f"{_capital(reward)} confirmed{on}: the purchase settled."
    if kind == AVAILABLE:
        if entry.reward_kind == "CHARITY":
            given = format_amount(entry.amount_minor, entry.currency, language)
            return f"Don de {given} remis à l'association en votre nom." if fr else f"{given} given to charity on your behalf."
        return f"Désormais à votre disposition{_NNBSP}: {reward}." if fr else f"{_capital(reward)} now available to use."
    if kind == CLAWED_BACK:
        cause = {
            "refund": ("refund", "du remboursement"),
            "chargeback": ("chargeback", "de la contestation"),
        }.get(x.reason)
        if fr:
            why = f" à la suite {cause[1]} de l'achat" if cause else ""
            return f"Reprise de {reward}{why}."
        why = f" after a {cause[0]} of the purchase" if cause else ""
        return f"{_capital(reward)} taken back{why}."
    raise ValueError(f"no line for a {kind} notification of an entry")


def paid_line(amount_minor: int, unit: str, reward_kind: str, language: str) -> str:
    """The PAID line: ``EUR 25.00 cashback paid to your account.``"""
    reward = _reward(amount_minor, unit, reward_kind, language)
    return f"Versement de {reward} sur votre compte." if language == "fr" else f"{_capital(reward)} paid to your account."


def _reward(amount_minor: int, unit: str, reward_kind: str, language: str) -> str:
    """The reward in words: ``EUR 5.00 cashback``, ``5,00 € de cashback``, ``200 points``."""
    amount = format_amount(amount_minor, unit, language)
    if unit == POINTS_UNIT:
        return amount
    if language == "fr":
        noun = {"CASH": "de cashback", "STORE_CREDIT": "d'avoir", "CHARITY": "de don solidaire"}.get(reward_kind, "")
    else:
        noun = {"CASH": "cashback", "STORE_CREDIT": "store credit", "CHARITY": "for charity"}.get(reward_kind, "")
    return f"{amount} {noun}" if noun else amount


def format_amount(amount_minor: int, unit: str, language: str) -> str:
    """An amount of ``unit`` written for a customer, exact from its minor units: ``EUR 1,234.50``,
    ``1 234,50 €``, ``JPY 500``, ``1.250 BHD`` (three digits), ``1 point``, ``1,200 points``."""
    fr = language == "fr"
    group, decimal = (_NNBSP, ",") if fr else (",", ".")
    sign = "-" if amount_minor < 0 else ""
    digits = unit_exponent(unit)
    whole, minor = divmod(abs(amount_minor), 10**digits)
    number = f"{whole:,}".replace(",", group)
    if digits:
        number += decimal + str(minor).rjust(digits, "0")
    if unit == POINTS_UNIT:
        return f"{sign}{number} {'point' if abs(amount_minor) == 1 else 'points'}"
    if fr:
        return f"{sign}{number}{_NBSP}{_SYMBOLS_FR.get(unit, unit)}"
    return f"{sign}{unit} {number}"


def format_rate(rate_bps: int, language: str) -> str:
    """A rate in basis points as a percentage: ``5%``, ``2.5%``, ``0.25%``; ``5 %``, ``2,5 %``."""
    whole, hundredths = divmod(rate_bps, 100)
    number = str(whole) if not hundredths else f"{whole}.{hundredths:02d}".rstrip("0")
    if language == "fr":
        return number.replace(".", ",") + _NNBSP + "%"
    return number + "%"


def _date(at_ms: int, language: str) -> str:
    """The UTC day of ``at_ms``: ``14 January 2027``, ``14 janvier 2027``."""
    day = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return f"{day.day} {_MONTHS['fr' if language == 'fr' else 'en'][day.month - 1]} {day.year}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
