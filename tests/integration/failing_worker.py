"""The worker's command line with a fault injected, for what the tests do to a running worker. Run
as ``python -m tests.integration.failing_worker worker``, with either:

- ``FAIL_AT_ENTRIES=N``: the N-th decision handed to the outbox's sends raises an error no code
  path of the agent expects (after its batch's states reached the changelog, before its entries
  were sent): the agent fails; with ``FAIL_WITH=cancel`` the error is a ``CancelledError`` (a future
  the agent awaited cancelled under it), which Faust takes for a rebalance;
- ``FAIL_DECIDING=<transaction_ref>``: the rules engine raises on every event of that transaction,
  as a bug in the rules would: the matcher dead-letters the event (``processing_error``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from stream import matcher, outbox
from stream.cli import main

FAIL_AT = int(os.environ.get("FAIL_AT_ENTRIES", "0"))
FAIL_DECIDING = os.environ.get("FAIL_DECIDING")
FAIL_WITH = os.environ.get("FAIL_WITH", "error")
_calls = 0
_send_entries = outbox.Outbox._send_entries
_decide = matcher.decide


async def _failing_send_entries(self: outbox.Outbox, *args: Any) -> None:
    global _calls
    _calls += 1
    if _calls == FAIL_AT and FAIL_WITH == "cancel":
        raise asyncio.CancelledError("injected fault: a future the agent awaited, cancelled")
    if _calls == FAIL_AT:
        raise RuntimeError("injected fault: an error the agent does not expect")
    await _send_entries(self, *args)


def _failing_decide(event: Any, *args: Any, **kwargs: Any) -> Any:
    if event.transaction_ref == FAIL_DECIDING:
        raise ZeroDivisionError("injected fault: a bug in the rules")
    return _decide(event, *args, **kwargs)


outbox.Outbox._send_entries = _failing_send_entries  # type: ignore[method-assign]
matcher.decide = _failing_decide
main()
