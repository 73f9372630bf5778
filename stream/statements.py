"""``cashback statement --sponsor ID --month YYYY-MM``: a sponsor's monthly statement as text (the API's
``/v1/operations/sponsors/{id}/statements/{month}`` gives the same figures as JSON; ``stream.store.sponsor_statements``
defines them)."""

from __future__ import annotations

import asyncpg

from stream.core.money import format_minor
from stream.core.offer_parsing import BANK_SPONSOR
from stream.store import sponsor_statements as store
from stream.store.sponsor_statements import Figures, Statement

_COLUMNS = ("booked", "returned", "net", "pending", "owed", "clawed back", "purchases")


def _cells(figures: Figures) -> list[str]:
    unit = figures.unit
    amounts = (
        figures.booked_minor,
        figures.returned_minor,
        figures.net_minor,
        figures.pending_minor,
        figures.owed_minor,
        figures.clawed_back_minor,
    )
    return [*(format_minor(a, unit) for a in amounts), str(figures.purchases)]


def render(statement: Statement) -> str:
    """The statement as a table: its lines per reward kind and unit, then each offer's."""
    who = "the bank's own budget" if statement.sponsor_id == BANK_SPONSOR else f"merchant sponsor {statement.sponsor_id}"
    out = [
        f"statement of {who} for {statement.month} "
        f"(UTC, by event time: {statement.start.isoformat()} to {statement.end.isoformat()}, end excluded)"
    ]
    if not statement.lines:
        out.append("nothing moved in the month: no lines")
        return "\n".join(out)
    rows = [["", "kind", *_COLUMNS]]
    rows += [["total", f.reward_kind, *_cells(f)] for f in statement.lines]
    rows += [[offer_id, f.reward_kind, *_cells(f)] for offer_id, lines in statement.offers.items() for f in lines]
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        out.append(
            "  ".join(
                cell.ljust(w) if n < 2 else cell.rjust(w) for n, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    out.append('owed = net - pending: what moved past pending in the month (README "Who pays")')
    return "\n".join(out)


async def read(dsn: str, sponsor_id: str, month: str, known: bool = False) -> Statement | None:
    """The statement, or None when no ledger entry carries the sponsor (``bank`` always has one) unless it is
    ``known`` otherwise (a live offer names it)."""
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        if not known and not await store.known(connection, sponsor_id):
            return None
        return await store.statement(connection, sponsor_id, month)
    finally:
        await connection.close()
