"""The payouts table (migration 0019): charities' remittances recorded under a lock, their instructions published
and acknowledged, the core banking system's answers to every payout (customers' and charities'), and the reads of
the operations list, a charity's remittances and the unanswered-payouts gauges. Each one query or one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from stream.core.donations import Key, Remittance, remittances

# One remittance run at a time, whichever process runs it: two runs reading the same "sent" would both send the
# difference. A transaction-level advisory lock: released at commit or rollback, even if the process dies.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('cashback.donations.remit'))"
_GIVEN = "SELECT charity_id, currency, donated_minor FROM charity_donations WHERE donated_minor <> 0"
_SENT = """
SELECT beneficiary_id AS charity_id, currency::text AS currency, sum(amount_minor)::bigint AS sent_minor
FROM payouts WHERE beneficiary_kind = 'CHARITY' AND status <> 'REJECTED' GROUP BY beneficiary_id, currency
"""
_RECORD = """
INSERT INTO payouts (payout_id, beneficiary_kind, beneficiary_id, amount_minor, currency, run_id, requested_at)
SELECT p, 'CHARITY', c, a, cur, $5, $6 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS r(p, c, a, cur)
ON CONFLICT (payout_id) DO NOTHING
RETURNING payout_id
"""
_UNPUBLISHED = """
SELECT payout_id, beneficiary_id AS charity_id, amount_minor, currency::text AS currency, run_id, requested_at
FROM payouts WHERE beneficiary_kind = 'CHARITY' AND published_at IS NULL AND status = 'REQUESTED' ORDER BY payout_seq
"""
_PUBLISHED = "UPDATE payouts SET published_at = now() WHERE payout_id = ANY($1::text[]) AND published_at IS NULL"

# An answer: the first one stands. A customer's may come before its request (a row with no amount, filled by the
# ledger's trigger when the PAID_OUT entry is written), unless the account was erased since (its payouts were
# pseudonymised with its ledger: migration 0019); a charity's must find its remittance (recorded before the
# instruction was sent), else it is not an answer to one of ours.
_CUSTOMER_ANSWERS = """
INSERT INTO payouts AS p (payout_id, beneficiary_kind, beneficiary_id, currency, run_id, status, reason_code, answered_at)
SELECT i, 'CUSTOMER', b, cur, split_part(i, ':', 2), s, r, t
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY
    AS a(i, b, cur, s, r, t, n)
WHERE NOT EXISTS (SELECT FROM erased_accounts e WHERE e.account_digest = erased_account_digest(b))
ORDER BY n
ON CONFLICT (payout_id) DO UPDATE SET status = excluded.status, reason_code = excluded.reason_code,
    answered_at = excluded.answered_at
WHERE p.status = 'REQUESTED'
"""
_CHARITY_ANSWER = """
UPDATE payouts SET status = $3, reason_code = $4, answered_at = $5
WHERE payout_id = $1 AND beneficiary_kind = 'CHARITY' AND beneficiary_id = $2 AND status = 'REQUESTED'
RETURNING payout_id
"""
_KNOWN = "SELECT EXISTS (SELECT FROM payouts WHERE payout_id = $1 AND beneficiary_kind = 'CHARITY' AND beneficiary_id = $2)"

_COLUMNS = """payout_seq, payout_id, beneficiary_kind, beneficiary_id, amount_minor, currency::text AS currency, run_id,
    requested_at, status, reason_code, answered_at"""
_LIST = f"""
SELECT {_COLUMNS} FROM payouts
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR beneficiary_kind = $2)
    AND ($3::bigint IS NULL OR payout_seq < $3)
ORDER BY payout_seq DESC LIMIT $4
"""
_OF_CHARITY = f"""
SELECT {_COLUMNS} FROM payouts WHERE beneficiary_kind = 'CHARITY' AND beneficiary_id = $1
    AND ($2::bigint IS NULL OR payout_seq < $2)
ORDER BY payout_seq DESC LIMIT $3
"""
# An erased account's payouts carry its pseudonym: an answer to one can no longer be matched (its id was
# pseudonymised with the ledger), so one unanswered at the erasure is not counted as waiting.
_UNANSWERED = """
SELECT beneficiary_kind, count(*) AS unanswered, min(coalesce(requested_at, recorded_at)) AS oldest
FROM payouts WHERE status = 'REQUESTED' AND NOT (beneficiary_kind = 'CUSTOMER' AND beneficiary_id ~ '^erased-')
GROUP BY beneficiary_kind
"""

CustomerAnswer = tuple[str, str, str, str, str | None, datetime]  # payout id, account, currency, status, reason, at
CharityAnswer = tuple[str, str, str, str | None, datetime]  # payout id, charity, status, reason, at


async def record_remittances(
    connection: asyncpg.Connection, run_id: str, at: datetime, named: Mapping[str, int], default: int | None
) -> list[Remittance]:
    """Record run ``run_id``'s remittances (``stream.core.donations.remittances``) in one transaction under the
    remittance lock; the ones recorded now (a remittance id recorded before is not recorded again)."""
    async with connection.transaction():
        await connection.execute(_LOCK)
        given: dict[Key, int] = {(r["charity_id"], r["currency"]): r["donated_minor"] for r in await connection.fetch(_GIVEN)}
        sent: dict[Key, int] = {(r["charity_id"], r["currency"]): r["sent_minor"] for r in await connection.fetch(_SENT)}
        decided = remittances(run_id, given, sent, named, default)
        if not decided:
            return []
        columns = ([d.payout_id for d in decided], [d.charity_id for d in decided], [d.amount_minor for d in decided])
        rows = await connection.fetch(_RECORD, *columns, [d.currency for d in decided], run_id, at)
        recorded = {r["payout_id"] for r in rows}
        return [d for d in decided if d.payout_id in recorded]


async def unpublished(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """The charities' remittances recorded, not answered, whose instruction's delivery was never acknowledged."""
    return list(await connection.fetch(_UNPUBLISHED))


async def mark_published(connection: asyncpg.Connection, payout_ids: Sequence[str]) -> None:
    await connection.execute(_PUBLISHED, list(payout_ids))


async def apply_answers(
    connection: asyncpg.Connection, customers: Sequence[CustomerAnswer], charities: Sequence[CharityAnswer]
) -> list[int]:
    """Apply a batch of answers in one transaction; the positions (in ``charities``) of the charity answers that
    name no remittance of ours. An answer to an answered payout changes nothing."""
    unknown: list[int] = []
    async with connection.transaction():
        first = list({answer[0]: answer for answer in reversed(customers)}.values())  # one row touched once a statement
        if first:
            await connection.execute(_CUSTOMER_ANSWERS, *(list(column) for column in zip(*first, strict=True)))
        for position, (payout_id, charity, status, reason, at) in enumerate(charities):
            if await connection.fetchval(_CHARITY_ANSWER, payout_id, charity, status, reason, at) is None:
                if not await connection.fetchval(_KNOWN, payout_id, charity):
                    unknown.append(position)
    return unknown


async def listing(db: asyncpg.Pool, status: str | None, kind: str | None, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Payouts, the latest recorded first, of a status and a beneficiary kind (None: any)."""
    return list(await db.fetch(_LIST, status, kind, before, limit))


async def of_charity(db: asyncpg.Pool, charity_id: str, before: int | None, limit: int) -> list[asyncpg.Record]:
    return list(await db.fetch(_OF_CHARITY, charity_id, before, limit))


async def unanswered(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, tuple[int, datetime]]:
    """Per beneficiary kind with a payout not answered: how many, and when the oldest was requested."""
    return {r["beneficiary_kind"]: (r["unanswered"], r["oldest"]) for r in await db.fetch(_UNANSWERED)}
