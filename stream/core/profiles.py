"""What the matcher knows of an account beside its card events: segments and offer activations,
folded into one profile per account. Pure.

Both arrive on compacted topics co-partitioned with the card events (``topics.catalogue``:
``account_partition``), so the worker that owns an account's purchases also receives its profile
and activations and keeps them in a table, as this module folds them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from stream.core.eligibility import AccountProfile

# {"segments": [...], "activations": {offer_id: activated_at_ms}, "language": "fr" | "en" (absent or None: the
# bank's default; account_profile v2)}
Profile = dict[str, Any]


def new_profile() -> Profile:
    return {"segments": [], "activations": {}}


def to_account_profile(profile: Profile | None) -> AccountProfile:
    """The engine's view of a stored profile (activation times back to UTC datetimes)."""
    if not profile:
        return AccountProfile()
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
