"""What the matcher knows of an account beside its card events: segments and offer activations,
folded into one profile per account. Pure.

Both arrive on compacted topics co-partitioned with the card events (``topics.catalogue``:
``account_partition``), so the worker that owns an account's purchases also receives its profile
and activations and keeps them in a table, as this module folds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from stream.core.eligibility import NO_PROFILE, AccountProfile
from stream.core.events import TEXT_FIELD_LIMIT, TEXT_TOO_LONG

# {"segments": [...], "activations": {offer_id: activated_at_ms}, "language": "fr" | "en" (absent or None: the
# bank's default; account_profile v2)}
Profile = dict[str, Any]


# A profile is one value in the worker's table, on its changelog: bounded so that it always fits a Kafka
# message (a record past about 1 MB is refused by the broker, and the worker would write it again forever).
SEGMENTS_LIMIT = 256  # the most segments one profile names
ACTIVATIONS_LIMIT = 1024  # the most offers one account has active at once


def too_large(profile: Profile | None, subject: str, record: Mapping[str, Any] | None) -> str | None:
    """The field of an account message (``subject``: ``account_profile`` or ``offer_activation``) that
    would make its account's profile larger than it may be, with why, or None: a text of more than
    ``TEXT_FIELD_LIMIT`` characters, more than ``SEGMENTS_LIMIT`` segments, or an activation past
    ``ACTIVATIONS_LIMIT`` active offers (a deactivation, or one of an offer active already, always folds)."""
    if record is None:
        return None
    for name in ("account_id", "offer_id", "language"):
        if isinstance(record.get(name), str) and len(record[name]) > TEXT_FIELD_LIMIT:
            return f"{name} ({TEXT_TOO_LONG})"
    segments = record.get("segments") or ()
    if len(segments) > SEGMENTS_LIMIT:
        return f"segments (more than {SEGMENTS_LIMIT})"
    if any(len(segment) > TEXT_FIELD_LIMIT for segment in segments):
        return f"segments (one of {TEXT_TOO_LONG})"
    active = (profile or new_profile())["activations"]
    if subject == "offer_activation" and record.get("active", True) and record["offer_id"] not in active:
        if len(active) >= ACTIVATIONS_LIMIT:
            return f"offer_id (the account has {ACTIVATIONS_LIMIT} offers active already)"
    return None


def new_profile() -> Profile:
    return {"segments": [], "activations": {}}


def to_account_profile(profile: Profile | None) -> AccountProfile:
    """The engine's view of a stored profile (activation times back to UTC datetimes)."""
    if not profile:
        return NO_PROFILE  # one shared: most accounts have none, and the worker keeps 65,536 read
    return AccountProfile(
        segments=frozenset(profile["segments"]),
        activations=MappingProxyType(
            {offer: datetime.fromtimestamp(ms / 1000, tz=UTC) for offer, ms in profile["activations"].items()}
        ),
        language=profile.get("language"),
    )


def apply_activation(profile: Profile | None, record: dict[str, Any]) -> Profile:
    """The profile after an activation record (a deactivation removes the offer)."""
    profile = dict(profile or new_profile())
    activations = dict(profile["activations"])
    if record.get("active", True):
        changed_at = record["changed_at"]
        activations[record["offer_id"]] = (
            int(changed_at.timestamp() * 1000) if isinstance(changed_at, datetime) else int(changed_at)
        )
    else:
        activations.pop(record["offer_id"], None)
    profile["activations"] = activations
    return profile


def apply_segments(profile: Profile | None, record: dict[str, Any] | None) -> Profile:
    """The profile after a profile record (None: a tombstone, erasing the segments and the language).
    A record of account_profile v1 has no language: the bank's default."""
    profile = dict(profile or new_profile())
    profile["segments"] = sorted(set(record["segments"])) if record else []
    language = record.get("language") if record else None
    if language is None:
        profile.pop("language", None)  # stored as before v2: the profile of most accounts
    else:
        profile["language"] = language
    return profile
