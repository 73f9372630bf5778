"""Bounded stops: each step of what a process does on SIGTERM (its tasks ended, its clients and
connections closed) gets a bound, so that a stop never waits for the orchestrator's kill: the
balance API's lifespan (``stream.api_common.shut_down``), the sink process
(``stream.composition``) and the worker while the broker is away (``stream.worker_stop``). And
the stop that is not one: ``exit_now``, for a worker that must not go on (``agent_failed``: its
agent raised; ``cancel_is_failure``: its agent was cancelled by nothing that stops it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

STEP_S = 5.0  # each step of a process's stop; past it, what is left is cancelled, and said
CANCEL_GRACE_S = 1.0  # what a cancelled step is given to end (a cancel is handled in a turn or two)
EXIT_AGENT_FAILED = 70  # EX_SOFTWARE: the matcher agent raised what no code path of it handles


async def within(what: str, step: Awaitable[T], seconds: float = STEP_S) -> asyncio.Future[T]:
    """``step`` given ``seconds``, then cancelled and given ``CANCEL_GRACE_S`` more to end (a cancel
    the step ignores is not waited for: ``asyncio.wait_for`` would). Returns the step's future: its
    result or its error are the caller's to read (a cancelled step's is ``CancelledError``), unless
    it was left behind (not done). What it raised is logged too."""
    running = asyncio.ensure_future(step)
    if not (await asyncio.wait({running}, timeout=seconds))[0]:
        running.cancel()
        ended = (await asyncio.wait({running}, timeout=min(seconds, CANCEL_GRACE_S)))[0]
        log.warning("stopping: %s did not finish within %.0f s; %s", what, seconds, "cancelled" if ended else "left behind")
    elif not running.cancelled() and running.exception() is not None:  # read here, so never "never retrieved"
        log.warning("stopping: %s ended with %s", what, type(running.exception()).__name__)
    return running


def exit_now(code: int) -> None:
    """End the process at once with ``code``, as a kill would (nothing of it is stopped or flushed, its
    logs aside), for its supervisor to start it again: what a worker does when it cannot go on without
    risking what it holds (``stream.group_membership``, ``stream.changelog_table``, ``agent_failed``)."""
    logging.shutdown()
    os._exit(code)


def agent_failed(error: BaseException, exit: Callable[[int], None] = exit_now) -> None:
    """What the worker does when its matcher agent raised what no code path of the agent handles
    (Faust says so to its consumer: ``ExitOnAgentFailure``): it exits (``EXIT_AGENT_FAILED``),
    as a kill would. Faust's supervisor would start the agent again in the same process, on what
    the process holds: in a probe with faults injected at random (3,000 simulated purchases, the
    first fault 2 s after the start), the worker counted 1,212 events in its first 10 s and none in
    the 30 s more it was watched, alive, in its group, reading every partition again every 10 s.
    A worker started again reads from the committed offsets, so what the failed batch decided is
    decided again, its entries sent from the changelog's state (the recent events keep them): the
    kill's path, tested."""
    log.critical(
        "the matcher agent failed (%s); exiting with code %d for the worker's supervisor to start it again: "
        "the messages since the last commit are read again",
        type(error).__name__,
        EXIT_AGENT_FAILED,
        exc_info=error,
    )
    exit(EXIT_AGENT_FAILED)


class ExitOnAgentFailure:
    """The worker's consumer's part: Faust calls ``on_task_error`` when its agent raised, then starts the
    agent again in the same process; the worker exits first (``agent_failed``)."""

    async def on_task_error(self, exc: BaseException) -> None:
        agent_failed(exc)


class StrayCancel(RuntimeError):
    """A ``CancelledError`` reached the agent's end while nothing had cancelled its task."""


def cancel_is_failure(agent: Callable[[A], Coroutine[object, object, None]]) -> Callable[[A], Coroutine[object, object, None]]:
    """``agent`` (a Faust agent's function) with a ``CancelledError`` its task was not asked for made
    a failure (``StrayCancel``, so ``agent_failed``). Faust cancels an agent's task to stop it; any
    other ``CancelledError`` that ends the agent came from something it awaited (a future cancelled
    under it), and Faust takes it for a rebalance ("Restarting on rebalance") and starts the agent
    again in the same process without calling its error handler: the in-place restart that
    ``agent_failed`` exists to avoid. Python 3.11's ``Task.cancelling`` tells the two apart."""

    @functools.wraps(agent)
    async def guarded(stream: A) -> None:
        try:
            await agent(stream)
        except asyncio.CancelledError as cancel:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            raise StrayCancel("the matcher agent was cancelled by something it awaited, not by a stop") from cancel

    return guarded
