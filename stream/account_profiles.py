"""The matcher's account profiles: each account's segments and offer activations
(``stream.core.profiles``), joined from their own topics into a table that lives where the
account's card events are, so that a decision reads its account's profile locally.

A profile or activation message is checked first: it decodes, its key is its record's id
(``account_id``, or ``account_id:offer_id`` for an activation), and it sits on its account's
partition. One that fails is handed back with the reason to dead-letter it; one that passes is
folded into the profile (an activation's tombstone deactivates). The write waits in the table
until the matcher settles it (``stream.changelog_table``).

Profiles read are kept in memory (most accounts have none: that is kept too), so a card event does
not read and decode its account's profile from the local store; a fold replaces the account's, and
the matcher forgets them all when partitions move or a batch's writes are dropped.

An erasure instruction (``account_erasure``, GDPR: ``stream.gdpr``) is checked the same way; the
matcher then deletes the account's state (``stream.account_states``) and ``erase`` deletes its
profile (a tombstone on the table's changelog) and writes the account's *erased marker*: a key
made of the SHA-256 of the account id (``erased_key``), holding nothing else, on the account's
partition. From then on a profile or activation of the account is dead-lettered
(``account_erased``) instead of folded: a profile kept for an erased account would be personal data
the erasure missed. A tombstone of one (the erasure command publishes them) is let through
without writing anything. The marker stays: an erased account id is never folded again, and
``erased`` tells the matcher to refuse the account's card events too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from schemas.codec import Codec, DecodeError
from stream.changelog_table import DELETED, ChangelogTable
from stream.core.card_numbers import looks_like_card_number
from stream.core.eligibility import AccountProfile
from stream.core.events import RejectReason
from stream.core.profiles import apply_activation, apply_segments, to_account_profile, too_large
from stream.deadletter import OtherReason
from topics.catalogue import account_partition

# How many accounts' profiles stay in memory between their events.
CACHED_PROFILES = 65536

ERASURE_SUBJECT = "account_erasure"
ACCOUNT_ERASED = "account_erased"  # the dead-letter reason of a message of an erased account


def erased_key(account_id: str) -> str:
    """The profile table's key of an account's erased marker: the SHA-256 of its id (the digest
    the ledger's ``erased_accounts`` keeps too), behind a separator no account id holds."""
    return "\x1ferased\x1f" + hashlib.sha256(account_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message cannot be folded: its dead letter's reason and detail."""

    reason: str
    detail: str


class AccountProfiles:
    """Fold profile and activation messages into the accounts' profiles; read a profile."""

    def __init__(self, table: ChangelogTable, codec: Codec, subjects: dict[str, str], partitions: int) -> None:
        self.table = table
        self.codec = codec
        self.subjects = subjects  # topic -> its value subject (account_profile, offer_activation)
        self.partitions = partitions
        self._read: OrderedDict[str, AccountProfile] = OrderedDict()
        self._erased: OrderedDict[str, bool] = OrderedDict()

    def get(self, account_id: str) -> AccountProfile:
        profile = self._read.get(account_id)
        if profile is None:
            profile = self._read[account_id] = to_account_profile(self.table.get(account_id))
            if len(self._read) > CACHED_PROFILES:
                self._read.popitem(last=False)
        return profile

    def language(self, account_id: str) -> str | None:
        """The language the account's profile names for its notifications (None: none)."""
        return self.get(account_id).language

    def forget(self) -> None:
        """The profiles read may have changed elsewhere (partitions moved) or never reached the
        changelog (a dropped batch): read them again from the table."""
        self._read.clear()
        self._erased.clear()

    def erased(self, account_id: str) -> bool:
        """Whether the account was erased (its marker is in the table)."""
        known = self._erased.get(account_id)
        if known is None:
            known = self._erased[account_id] = self.table.get(erased_key(account_id)) is not None
            if len(self._erased) > CACHED_PROFILES:
                self._erased.popitem(last=False)
        return known

    def erasure_of(self, partition: int, key: bytes | None, value: bytes | None) -> str | Refusal:
        """The account an erasure instruction names, once checked like a profile (it decodes, its
        key is its account id, it is on its account's partition); else why it is refused."""
        try:
            _, record = self.codec.decode(value, expected_subject=ERASURE_SUBJECT)
        except DecodeError as error:
            return Refusal(error.failure.value, error.detail)
        account_id = record["account_id"]
        if (key or b"").decode(errors="replace") != account_id:
            return Refusal(OtherReason.KEY_MISMATCH.value, f"key is not {ERASURE_SUBJECT}'s id")
        if not account_id or account_partition(account_id, self.partitions) != partition:
            return Refusal(OtherReason.WRONG_PARTITION.value, "not the partition of the account's card events")
        return account_id

    def erase(self, account_id: str, partition: int) -> None:
        """Delete the account's profile (segments and activations) and write its erased marker, on
        ``partition`` (the account's); both reach the changelog at the next settle."""
        self.table.stage(account_id, DELETED, partition)
        self.table.stage(erased_key(account_id), {"erased": True}, partition)
        self._read.pop(account_id, None)
        self._erased[account_id] = True

    def fold(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> Refusal | None:
        """Fold one message into its account's profile; the reason to dead-letter it instead."""
        subject = self.subjects[topic]
        text_key = (key or b"").decode(errors="replace")
        account_id = text_key.split(":", 1)[0] if subject == "offer_activation" else text_key
        record: dict[str, Any] | None = None
        if value is not None:
            try:
                _, record = self.codec.decode(value, expected_subject=subject)
            except DecodeError as error:
                return Refusal(error.failure.value, error.detail)
            expected_key = (
                f"{record['account_id']}:{record['offer_id']}" if subject == "offer_activation" else record["account_id"]
            )
            if text_key != expected_key:
                return Refusal(OtherReason.KEY_MISMATCH.value, f"key is not {subject}'s id")
        if _holds_card_number(account_id, record):
            # Never kept in a table: the dead letter masks it (stream.deadletter).
            return Refusal(RejectReason.CARD_NUMBER_DETECTED.value, f"a card number in the {subject}")
        if not account_id or account_partition(account_id, self.partitions) != partition:
            # A profile must live where the account's card events are, or the join misses it.
            return Refusal(OtherReason.WRONG_PARTITION.value, "not the partition of the account's card events")
        if self.erased(account_id):
            if value is None:  # a tombstone: what the erasure left already says as much
                return None
            return Refusal(ACCOUNT_ERASED, f"the account was erased: its {subject} is not kept")
        profile = self.table.get(account_id)
        oversized = too_large(profile, subject, record)
        if oversized is not None:
            return Refusal(RejectReason.INVALID_FIELD.value, f"field {oversized}: the profile would be too large")
        self._read.pop(account_id, None)
        if subject == "offer_activation":
            if record is None:  # tombstone of account_id:offer_id
                record = {"account_id": account_id, "offer_id": text_key.split(":", 1)[-1], "active": False}
            self.table.stage(account_id, apply_activation(profile, record), partition)
        else:
            self.table.stage(account_id, apply_segments(profile, record), partition)
        return None


def _holds_card_number(account_id: str, record: dict[str, Any] | None) -> bool:
    """Whether an account message carries a card number: as its account id (a careless integrator
    keying by card), or in its free text (a segment's name)."""
    if looks_like_card_number(account_id, identifier=True):
        return True
    texts = (record or {}).get("segments") or []
    return any(isinstance(text, str) and looks_like_card_number(text) for text in texts)
