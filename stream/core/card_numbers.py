"""Card numbers (PANs): finding them in text (``looks_like_card_number``) and masking them where
they stand (``mask_card_numbers``: dead letters keep their original bytes, never a card number).

A card number (PAN) is
13-19 digits passing the Luhn check. It is found in the forms it is written in:

- together ("4111111111111111"), also inside other text ("ref4111111111111111x");
- in the groups cards are printed in: a first group of 4 digits, middle groups of 3-6, a last one
  of 1-7, 13-19 digits in all (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3, 4-4-4-1...), separated by one
  kind of separator throughout: a space (up to three), dash, dot, underscore or slash, spaces
  around it allowed. Groups may sit among other groups ("12 4111 1111 1111 1111 123"): every
  stretch of groups fitting that shape is a candidate;
- in any script's decimal digits (full-width, Arabic-Indic...) and with any width or script of
  those separators (en dash, minus sign, no-break space, full-width dot...); invisible format
  characters (zero-width space, soft hyphen) are ignored.

What is not a card number, and why:

- Digit groups that do not fit a card's printing. The old check joined any groups, so an id with a
  date and a sequence number ("ref-20261201-000000123-1": 8 + 9 digits) was a card number one time
  in ten (Luhn), and 19% of the simulator's events were dead-lettered.
- A run of more than 19 digits, and windows inside it: no card is written glued to other digits,
  and long numeric ids are common (a 23-digit acquirer reference number); a 13-19 window slid
  along an n-digit run makes about 7(n - 12) draws at one chance in ten each, so nearly every long
  id would be refused.
- Mixed separators ("4111-1111 1111-1111"): no card is printed so.

Per field. Identifiers (``IDENTIFIER_FIELDS``: event, transaction and card token ids, account and
merchant ids) are made by systems, and carry dates, times, sequence numbers and timestamps that
can take a card's shape: "INV-2026-1201-0000-0001" is 4-4-4-4 and passes Luhn. There a card number
must also start with a card scheme's issuer range (Visa 4, Mastercard 51-55 and 2221-2720,
Maestro, Discover, UnionPay, RuPay, JCB, Amex, Diners, Mir 2200-2204, Troy 9792: 2200-2204,
2221-2720, 30, 34-39, 4-6, 81-82, 9792), and digits inside a hexadecimal string of 24 characters
or more (a digest, a dashless UUID) are not read. Digits led by a year 1900-2199 (19, 20, 21), a
month-day (0, 1), a time of day before 22:00 (0, 1, 20, 21), a zero-padded sequence number (0) or
an epoch timestamp in ms, µs or ns from September 2001 to September 2039 (1, 20, 21) are then never
a card. Given up in ids: numbers no bank card has (airline UATP 1, fuel cards 7, national ranges 9).
Left: a bare run of 13-19 digits in a scheme's range that passes Luhn cannot be told from a card,
in any field (a two-digit year glued to a sequence number, "2612010000123", starts like a
Mastercard); a source with such ids would need a separator or its own rule. Lengths are not
checked per scheme (schemes widen them: Visa issues 13 to 19 digits).
Every other text field (the merchant name, free text; codes such as the response code, the
currency, the MCC, the country and time zone, which can never rightly hold 13 digits, so the check
costs them nothing; and any field a schema adds later) gets the cautious rule: any leading digit,
no digest exception, so a number of any scheme typed into a merchant name is caught.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

# --- finding them (see the module doc) -----------------------------------------------------------

# Ids some system made: a card number there must start with a card scheme's issuer range.
SHORTEST_CARD_NUMBER = 13  # digits: no text shorter than that holds one
IDENTIFIER_FIELDS = frozenset(
    {"event_id", "account_id", "card_token", "transaction_ref", "original_transaction_ref", "merchant_id"}
)
# Issuer ranges of the card schemes (ISO/IEC 7812 IINs), each compared on as many leading digits as
# it has: Mir, Mastercard 2-series, Diners 30x, Amex/JCB/Diners 34-39, Visa 4, Mastercard/Maestro 5,
# Discover/UnionPay/RuPay/Maestro 6, UnionPay/RuPay 81-82, Troy.
_SCHEME_RANGES = (("2200", "2204"), ("2221", "2720"), ("30", "30"), ("34", "39"), ("4", "6"), ("81", "82"), ("9792", "9792"))
_DASHES = "\u2212\u2043\u02d7"  # minus sign, hyphen bullet, modifier minus (the other dashes are category Pd)
_SLASHES = "\u2044\u2215\u29f8"  # fraction slash, division slash, big solidus
_DOTS = "\u00b7\u2022\u2027\u2219\u22c5\u30fb"  # middle dots and bullets
_DIGIT_RUN = re.compile(r"[0-9]+")
_ANY_DIGIT = re.compile(r"\d")  # any script's decimal digits, for the quick "too few digits" exit
# What may stand between two printed groups: one space, dash, dot, underscore or slash (spaces
# around it allowed), or up to three spaces. Its kind must be the same all along a number.
_GAP = re.compile(r" ?([-./_]) ?| {1,3}")
_HEX_DIGEST = re.compile(r"[0-9A-Fa-f]{24,}")  # a digest or a dashless UUID, not a place for a card


@functools.lru_cache(maxsize=4096)
def _plain(char: str) -> str:
    """One character as the detector reads it: a decimal digit of any script (full-width, Arabic-
    Indic...) as its ASCII digit; a space, dash, dot, underscore or slash of any width or script
    as its ASCII form; an invisible format character (zero-width space, soft hyphen) as nothing."""
    if char.isdecimal():
        return chr(48 + unicodedata.decimal(char))
    if char.isspace():
        return " "
    category = unicodedata.category(char)
    if category == "Cf":
        return ""
    if category == "Pd" or char in _DASHES:
        return "-"
    if char in _SLASHES:
        return "/"
    if char in _DOTS:
        return "."
    folded = unicodedata.normalize("NFKC", char)  # full-width ．＿／
    return folded if folded in (".", "_", "/") else char


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _in_scheme_range(digits: str) -> bool:
    return any(low <= digits[: len(low)] <= high for low, high in _SCHEME_RANGES)


def _digit_runs(plain: str, identifier: bool) -> list[tuple[str, int, int]]:
    """The runs of ASCII digits of ``plain``: (digits, start, end). In an identifier, digits inside a
    hexadecimal string of 24 characters or more belong to a digest or a dashless UUID (blanked)."""
    runs = [(m.group(), m.start(), m.end()) for m in _DIGIT_RUN.finditer(plain)]
    if identifier:
        digests = [m.span() for m in _HEX_DIGEST.finditer(plain)]
        runs = [
            ("" if any(low <= start and end <= high for low, high in digests) else digits, start, end)
            for digits, start, end in runs
        ]
    return runs


def _gap_kinds(plain: str, runs: list[tuple[str, int, int]]) -> list[str | None]:
    """What stands between each run and the next: a separator's kind, or None (not a card's gap)."""
    gaps = [_GAP.fullmatch(plain[end:start]) for (_, _, end), (_, start, _) in zip(runs, runs[1:], strict=False)]
    return [gap.group(1) or " " if gap else None for gap in gaps]


def _candidates(plain: str, identifier: bool) -> Iterator[tuple[str, tuple[tuple[int, int], ...]]]:
    """The digit strings of ``plain`` written the way a card number is, each with the spans of
    ``plain`` its digits are in: a whole run of 13-19 digits, or groups as cards print them (the
    first of 4 digits, middle ones of 3-6, the last of 1-7, 13-19 digits in all, one kind of
    separator throughout). In an identifier, digits inside a hexadecimal string of 24 characters or
    more belong to a digest or a dashless UUID."""
    runs = _digit_runs(plain, identifier)
    kinds = _gap_kinds(plain, runs)
    for index, (digits, start, end) in enumerate(runs):
        if 13 <= len(digits) <= 19:
            yield digits, ((start, end),)
        if len(digits) != 4:
            continue
        spans = [(start, end)]
        for following in range(index + 1, len(runs)):
            group, group_start, group_end = runs[following]
            if kinds[following - 1] is None or kinds[following - 1] != kinds[index] or not 1 <= len(group) <= 7:
                break
            digits += group
            spans.append((group_start, group_end))
            if len(digits) > 19:
                break
            if len(digits) >= 13:
                yield digits, tuple(spans)
            if not 3 <= len(group) <= 6:
                break


def looks_like_card_number(text: str, *, identifier: bool = False) -> bool:
    """True when ``text`` holds a Luhn-valid number of 13-19 digits written as a card number is
    (together, or in a card's printed groups, in any script's digits, embedded in other text). In
    an ``identifier`` it must also start with a card scheme's issuer range (the module doc says why)."""
    if len(text) < SHORTEST_CARD_NUMBER or len(_ANY_DIGIT.findall(text)) < SHORTEST_CARD_NUMBER:  # most fields are shorter
        return False
    plain = "".join(map(_plain, text))
    return any(
        luhn_valid(digits) and (not identifier or _in_scheme_range(digits)) for digits, _ in _candidates(plain, identifier)
    )


# --- masking card numbers (dead letters keep their original bytes, never a card number) ---------

MASK = "*"
_GLUED_RUN_LIMIT = 24  # a longer run of digits is masked whole (but its first 6 and last 4) rather than searched


def _glued_candidates(plain: str) -> Iterator[tuple[str, tuple[tuple[int, int], ...]]]:
    """What ``_candidates`` finds, and also the card numbers glued to other digits, as in raw bytes
    where a length or a number's byte next to a text may read as a digit: every window of 13-19
    digits inside a longer run, and printed groups whose first group is the end of a longer run and
    whose last group is the start of one. A superset of the cautious rule (no issuer range, no digest
    exception), for bytes whose fields cannot be told apart."""
    runs = _digit_runs(plain, False)
    kinds = _gap_kinds(plain, runs)
    for index, (digits, start, end) in enumerate(runs):
        if 13 <= len(digits) <= _GLUED_RUN_LIMIT:
            for length in range(13, min(19, len(digits)) + 1):
                for offset in range(len(digits) - length + 1):
                    yield digits[offset : offset + length], ((start + offset, start + offset + length),)
        if len(digits) < 4:
            continue
        joined, spans = digits[-4:], [(end - 4, end)]
        for following in range(index + 1, len(runs)):
            group, group_start, _ = runs[following]
            if kinds[following - 1] is None or kinds[following - 1] != kinds[index]:
                break
            for length in range(1, min(7, len(group)) + 1):  # the last group: the start of the run
                if 13 <= len(joined) + length <= 19:
                    yield joined + group[:length], (*spans, (group_start, group_start + length))
            if not 3 <= len(group) <= 6 or len(joined) + len(group) > 19:
                break
            joined += group
            spans.append((group_start, group_start + len(group)))


@dataclass(frozen=True, slots=True)
class MaskedText:
    text: str  # the text with every card number's hidden digits replaced by MASK
    numbers: frozenset[str]  # the card numbers masked, as ASCII digits


def _kept(length: int) -> tuple[int, int]:
    """How many leading and trailing digits of a card number of ``length`` digits stay readable: at
    most the first 6 and the last 4, and never fewer than 6 hidden (a 13-digit number shows 3 + 4)."""
    return max(0, min(6, length - 10)), 4


def mask_card_numbers(text: str, *, identifier: bool = False, glued: bool = False) -> MaskedText:
    """``text`` with every card number ``looks_like_card_number`` finds in it masked: its first 6 and
    last 4 digits kept at most (never fewer than 6 hidden), each other digit replaced by as many MASK
    characters as the digit has bytes in UTF-8, so the text's UTF-8 length is unchanged (a full-width
    digit becomes three). With ``glued`` (bytes whose fields cannot be told apart): the cautious rule
    (any leading digit), and where it finds nothing, the numbers glued to other digits
    (``_glued_candidates``, every one of them), and a run of more than 24 digits whole but its first
    6 and last 4. Text decoded from bytes with ``surrogateescape`` encodes back to bytes of the same
    length."""
    if len(_ANY_DIGIT.findall(text)) < 13:
        return MaskedText(text, frozenset())
    plain_chars: list[str] = []
    origin: list[int] = []  # the index in ``text`` of each character of ``plain``
    for index, char in enumerate(text):
        folded = _plain(char)
        if folded:
            plain_chars.append(folded)
            origin.append(index)
    plain = "".join(plain_chars)
    hidden: set[int] = set()
    numbers: set[str] = set()
    found: set[int] = set()  # the positions of the numbers the matcher's rule finds

    def mask(digits: str, spans: tuple[tuple[int, int], ...]) -> list[int]:
        numbers.add(digits)
        positions = [position for low, high in spans for position in range(low, high)]
        first, last = _kept(len(positions))
        hidden.update(positions[first : len(positions) - last])
        return positions

    for digits, spans in _candidates(plain, identifier and not glued):
        if luhn_valid(digits) and (glued or not identifier or _in_scheme_range(digits)):
            found.update(mask(digits, spans))
    if glued:
        # Only where the rule found nothing: a window of a clean card number is no other number.
        for digits, spans in _glued_candidates(plain):
            if luhn_valid(digits) and not any(position in found for low, high in spans for position in range(low, high)):
                mask(digits, spans)
        for run in _DIGIT_RUN.finditer(plain):
            if len(run.group()) > _GLUED_RUN_LIMIT:
                hidden.update(range(run.start() + 6, run.end() - 4))
    if not hidden:
        return MaskedText(text, frozenset())
    chars = list(text)
    for position in hidden:
        at = origin[position]
        chars[at] = MASK * len(chars[at].encode("utf-8", "surrogateescape"))
    return MaskedText("".join(chars), frozenset(numbers))
