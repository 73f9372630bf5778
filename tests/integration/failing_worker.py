"""The worker's command line with one fault injected: the ``FAIL_AT_ENTRIES``-th decision handed to
the outbox's sends raises an error no code path of the agent expects (after its batch's states reached
the changelog, before its entries were sent). Run as ``python -m tests.integration.failing_worker worker``."""

from __future__ import annotations

import os
from typing import Any

from stream import outbox
from stream.cli import main

FAIL_AT = int(os.environ["FAIL_AT_ENTRIES"])
_calls = 0
_send_entries = outbox.Outbox._send_entries


async def _failing_send_entries(self: outbox.Outbox, *args: Any) -> None:
    global _calls
    _calls += 1
    if _calls == FAIL_AT:
        raise RuntimeError("injected fault: an error the agent does not expect")
    await _send_entries(self, *args)


outbox.Outbox._send_entries = _failing_send_entries  # type: ignore[method-assign]
main()
