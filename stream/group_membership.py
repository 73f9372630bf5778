"""Whether the worker's consumer is in its group, and what brings it back when it is not.

aiokafka leaves the group by itself, telling Faust nothing, when its fetcher was idle (no fetch)
for ``max_poll_interval``: its heartbeat routine drops the member's generation (for a static
member that is all it does: no LeaveGroup, no log line), the partitions are revoked, and it does
not rejoin while the fetcher stays idle (``GroupCoordinator.ensure_active_group``). Faust fetches
only for the partitions it is assigned, so nothing ends that idleness: the worker stays alive,
owning nothing, processing nothing, for good. The benchmark's long run ended so (one unbounded
batch took Faust longer than the interval to hand to the agent: ``stream.worker_app`` now bounds
batches). Its lag showed nothing: a worker reports the lag of the partitions it owns.

``GroupWatch.check``, called every few seconds whether or not a rebalance is under way, reports
``cashback_worker_in_group``. A member given no partition at all (more workers than partitions)
fetches nothing either, and would leave and rejoin for ever (aiokafka #1187, faust #517): the
watch counts it as fetching, as there is nothing to fetch. Once the consumer has been out of its group for ``limit_s``, it does
what aiokafka counts as fetching (its fetch context, in the consumer's thread) and asks it to
rejoin: the usual rebalance follows (revocation done, assignment, tables' recovery). Still out
``limit_s`` after that, the worker exits (``EXIT_OUT_OF_GROUP``) for its supervisor to start it
again, as after a kill: nothing it owns is left uncommitted, it owns nothing. Time out of the group
while aiokafka knows no coordinator (the broker away) is not counted: the worker waits for the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.protocol.group import JoinGroupRequest

from stream.metrics import WORKER_IN_GROUP, WORKER_REJOINS
from stream.stopping import exit_now

log = logging.getLogger(__name__)

EXIT_OUT_OF_GROUP = 75  # EX_TEMPFAIL: start it again


def aiokafka_consumer(app: Any) -> Any | None:
    """The aiokafka consumer under Faust's (in Faust's consumer thread), None before it started."""
    thread = getattr(app.consumer, "_thread", None)
    return getattr(thread, "_consumer", None)


def in_group(client: Any) -> bool:
    """Whether aiokafka holds a membership of the group: a generation and a member id."""
    coordinator = getattr(client, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "generation"):
        return False
    return bool(coordinator.generation > 0 and coordinator.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID)


def broker_away(client: Any) -> bool:
    """Whether aiokafka knows no group coordinator (the broker unreachable, or being found again)."""
    return getattr(getattr(client, "_coordinator", None), "coordinator_id", None) is None


def owns_nothing(client: Any) -> bool:
    """Whether the group gave aiokafka no partition at all."""
    subscription = client._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    return assignment is not None and not assignment.tps


async def _fetched(client: Any) -> None:
    """In the consumer's thread: what aiokafka counts as a fetch (for its max_poll_interval)."""
    with client._subscription.fetch_context():
        pass


async def _rejoin(client: Any) -> None:
    """In the consumer's thread: count as a fetch (aiokafka does not rejoin while its fetcher is
    idle), and ask its coordinator to rejoin."""
    await _fetched(client)
    client._coordinator.request_rejoin()


class GroupWatch:
    """Watches the worker's group membership (module doc)."""

    def __init__(self, app: Any, limit_s: float, exit: Callable[[int], None] = exit_now) -> None:
        self.app = app
        self.limit_s = limit_s
        self.exit = exit
        self._out_since: float | None = None  # when the consumer was first seen out of its group
        self._rejoined_at: float | None = None  # when it was last made to rejoin

    async def check(self) -> None:
        client = aiokafka_consumer(self.app)
        if client is None:
            return  # not started: nothing to be a member of yet
        now = time.monotonic()
        inside = in_group(client)
        WORKER_IN_GROUP.set(1 if inside else 0)
        if inside:
            if self._out_since is not None and self._rejoined_at is not None:
                log.warning("the worker is back in its consumer group after %.0fs", now - self._out_since)
            self._out_since = self._rejoined_at = None
            if owns_nothing(client):
                await self._in_thread(_fetched, client)
            return
        if broker_away(client):
            # Out of the group because the broker is away: waiting is all there is to do (README: the
            # broker being away blocks), never a reason to exit. The count starts again once it answers.
            self._out_since = self._rejoined_at = None
            return
        if self._out_since is None:
            self._out_since = now
            return
        out_for = now - self._out_since
        if self._rejoined_at is None and out_for >= self.limit_s:
            log.error(
                "the worker's consumer has been out of its consumer group for %.0fs, owning no partition "
                "(aiokafka leaves it when its fetcher was idle for max_poll_interval): rejoining",
                out_for,
            )
            WORKER_REJOINS.inc()
            self._rejoined_at = now
            await self._in_thread(_rejoin, client)
        elif self._rejoined_at is not None and now - self._rejoined_at >= self.limit_s:
            log.critical(
                "the worker's consumer is still out of its consumer group %.0fs after rejoining (out for %.0fs): "
                "exiting with code %d for its supervisor to start it again",
                now - self._rejoined_at,
                out_for,
                EXIT_OUT_OF_GROUP,
            )
            self.exit(EXIT_OUT_OF_GROUP)

    async def _in_thread(self, call: Callable[[Any], Awaitable[None]], client: Any) -> None:
        """Run ``call(client)`` in the consumer's thread (aiokafka's loop), waiting at most ``limit_s``."""
        try:
            await asyncio.wait_for(self.app.consumer._thread.call_thread(call, client), self.limit_s)
        except TimeoutError:
            log.error("the consumer's thread did not run %s within %.0fs", call.__name__, self.limit_s)
