"""Holdout groups: an offer holds out a deterministic share of the accounts that would earn under
it, so the spending it adds can be measured (those accounts are the control group).

**Membership.** An account is held out of an offer when its *bucket* for that offer is below the
offer's ``holdout_bps``. The bucket is a keyed hash of the pair, mapped to 0..9,999: BLAKE2b with
the personalisation ``cashback-holdout`` (domain separation: no other hash in the system can
collide with it by construction), over the two ids each prefixed with its length (so
("ab", "c") and ("a", "bc") are different pairs), the first 8 bytes read big-endian, modulo
10,000 (the modulo's bias is below 10⁻¹⁵). Why this way:

- *deterministic and stable*: it depends on the two ids only, never on the partition, the worker,
  the order of events, a replay or a restart, so an account stays in or out for the life of the
  offer and the pipeline, the back-test and an analyst's query all agree;
- *independent per offer*: the offer id is in the key, so the accounts held out of one offer are
  not the ones held out of another (no customer is held out of everything);
- *monotone*: raising ``holdout_bps`` only adds accounts to the group and lowering it only takes
  some out, so a change of the share never swaps one group for another mid-campaign;
- *a fair share*: the buckets are uniform, so about ``holdout_bps / 10,000`` of the accounts are held out.

``MAX_HOLDOUT_BPS`` (5,000: half) bounds the share: a bank measures an offer on a minority of its
customers, and a typo like 50000 must not switch an offer off for everyone. What the rules engine
does with a held-out account is in ``stream.core.eligibility`` (the last stage of the funnel) and
``stream.core.judgement`` (the ``holdout`` lines).
"""

from __future__ import annotations

import hashlib

from stream.core.offers import Offer

BUCKETS = 10_000  # basis points: holdout_bps compares with the bucket directly
MAX_HOLDOUT_BPS = 5_000
_PERSON = b"cashback-holdout"  # BLAKE2b personalisation (at most 16 bytes): the domain separation


def _framed(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "big") + data


def bucket(account_id: str, offer_id: str) -> int:
    """The account's bucket for the offer, 0..9,999: the same for the life of both ids."""
    digest = hashlib.blake2b(_framed(account_id) + _framed(offer_id), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def held_out(account_id: str, offer: Offer) -> bool:
    """Whether the account is in the offer's holdout group (never, for an offer without a share)."""
    return offer.holdout_bps > 0 and bucket(account_id, offer.offer_id) < offer.holdout_bps


def holdout_note(account_id: str, offer: Offer) -> str:
    """The explanation of a holdout line: which offer, the account's bucket and the share."""
    return (
        f"the account is in the offer's holdout group, kept to measure the spending it adds: "
        f"bucket {bucket(account_id, offer.offer_id)} < holdout_bps {offer.holdout_bps} of {BUCKETS}"
    )
