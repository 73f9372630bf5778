"""Agent-tier fixtures: the real ``Matcher`` agent driven through Faust's ``agent.test_context()``.

No broker: nothing here connects anywhere (the bootstrap address is a closed port). What is
replaced, and why:

- ``matcher.sends`` (the producer) records what the agent sends, by topic (the real sends are
  covered by the integration tests against a real broker): entries and dead letters are delivered
  at once, the tables' changelog writes wait (below);
- the offer mirror is not run: its ``book`` is set directly and ``ready`` is set by the test;
- the table's changelog writes are acknowledged at once (there is no broker to do it);
- ``matcher.handle`` and ``matcher.outbox.flush`` are wrapped (the originals still do all the work) so a
  test can wait until the agent has *finished* an event: handled it, and flushed its batch (its
  entries are sent at the flush), and so that the wait fails when either raised (a flush's
  ``BatchDropped`` aside: the agent goes on). ``AgentTestWrapper.put(wait=True)`` is not that signal: for an
  agent that does not yield, it returns as soon as the value has passed the stream's processors,
  i.e. before the agent body has handled it (as soon as a send really suspends, the caller resumes
  first). It also never returns while the agent is blocked before its loop (offers not ready);
- each put names a real input topic: by default the test wrapper stamps every message with the
  topic ``"<internal>"`` (the agent's channel has two topics, so it has no single name), for which
  ``Matcher.handle`` knows no expected Avro subject and would accept any schema.

- the offset accounting (``stream.progress``) takes every message as the next one of its partition
  and the matcher owns every partition: the test wrapper numbers messages across all topics, and
  there is no consumer to seek. The accounting has its own tests (``tests/unit/test_progress.py``,
  ``tests/agent/test_guarded_consumer.py`` and the restart and chaos tests against a real broker).
The table's changelog writes are real records, recorded where ``AgentHarness.changelog()`` reads them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pytest
import pytest_asyncio

from schemas.codec import Codec
from stream.core.rules import Outcome
from stream.core.state import AccountState
from stream.core.state_rows import is_summary_key
from stream.matcher import Matcher
from stream.outbox import BatchDropped
from stream.producing import OneByOne
from stream.progress import InputProgress, Verdict
from stream.settings import Settings
from tests.factories import book
from topics.catalogue import account_partition

ACCOUNT = "acct-1"
ACCOUNT_KEY = ACCOUNT.encode()
WAIT_S = 5.0  # upper bound of every wait for the agent; a passing test never gets near it


@dataclass(frozen=True, slots=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_s: float | None = None


class RecordedSends:
    """Stands in for the matcher's ``AppSends``: records each record, sends nothing. A changelog
    write's delivery is left to the test (the tables' ``take_sends``); any other is delivered."""

    def __init__(self, changelogs: set[str]) -> None:
        self.changelogs = changelogs
        self.sent: list[Sent] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_s: float | None = None,
    ) -> Any:
        self.sent.append(Sent(topic, key, value, partition, headers, timestamp_s))
        delivery = asyncio.get_running_loop().create_future()
        if topic not in self.changelogs:
            delivery.set_result(None)
        return delivery

    def to(self, topic: str) -> TopicSends:
        return TopicSends(self, topic)


@dataclass(frozen=True, slots=True)
class TopicSends:
    """What was sent to one topic."""

    sends: RecordedSends
    topic: str

    @property
    def sent(self) -> list[Sent]:
        return [sent for sent in self.sends.sent if sent.topic == self.topic]


@dataclass(frozen=True, slots=True)
class Handled:
    """One message the agent finished: where it came from and what ``handle`` returned."""

    topic: str
    partition: int
    offset: int
    outcome: Outcome | None  # None: dead-lettered


@dataclass
class AgentHarness:
    matcher: Matcher
    agent: Any  # faust's AgentTestWrapper
    codec: Codec
    sends: RecordedSends
    accruals: TopicSends
    dead_letters: TopicSends
    handled: list[Handled] = field(default_factory=list)
    flushing: int = 0  # flushes under way
    seeks: list[tuple[Any, int]] = field(default_factory=list)  # the consumer sought back: topic-partition, offset
    _done: asyncio.Condition = field(default_factory=asyncio.Condition)
    _failure: BaseException | None = None
    _named: dict[str, faust.types.TopicT] = field(default_factory=dict)

    @property
    def home(self) -> int:
        """The partition of ``ACCOUNT``'s messages (murmur2), where ``put`` puts a message keyed by it."""
        return account_partition(ACCOUNT, self.matcher.topics.authorizations.partitions)

    @property
    def auth_topic(self) -> str:
        return self.matcher.topics.authorizations.name

    @property
    def settlement_topic(self) -> str:
        return self.matcher.topics.settlements.name

    async def put(
        self,
        value: bytes | None,
        key: bytes | None = ACCOUNT_KEY,
        *,
        topic: str | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
    ) -> Handled:
        """Put one raw message on the agent, as if read from ``topic`` (default: authorizations) with
        the broker ``timestamp`` (seconds; default now), and wait until the agent has handled it.
        ``partition`` None: the key's account's, where a producer partitioning by murmur2 puts it."""
        expected = len(self.handled) + 1
        await self.put_nowait(value, key, topic=topic, partition=partition, timestamp=timestamp)
        return await self.wait_handled(expected)

    async def put_nowait(
        self,
        value: bytes | None,
        key: bytes | None = ACCOUNT_KEY,
        *,
        topic: str | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Put one raw message without waiting; returns the offset it was given."""
        name = topic or self.auth_topic
        if partition is None:
            account = (key or b"").decode(errors="replace").split(":", 1)[0]
            partition = account_partition(account, self.matcher.topics.authorizations.partitions) if account else 0
        if name not in self._named:
            self._named[name] = self.matcher.app.topic(name, key_serializer="raw", value_serializer="raw")
        # The wrapper names messages after its ``original_channel``; a single-topic one has a name.
        self.agent.original_channel = self._named[name]
        offset = int(self.agent.sent_offset)
        await self.agent.put(value=value, key=key, partition=partition, timestamp=timestamp, wait=False)
        return offset

    async def wait_handled(self, count: int, timeout_s: float = WAIT_S) -> Handled:
        """Wait until ``count`` messages have been handled in all; return the last one."""
        async with self._done:
            await asyncio.wait_for(
                self._done.wait_for(
                    lambda: (
                        (len(self.handled) >= count and not self.matcher.outbox.batch and not self.flushing)
                        or self._failure is not None
                    )
                ),
                timeout_s,
            )
        if self._failure is not None:
            raise AssertionError("the agent failed while handling a message") from self._failure
        return self.handled[count - 1]

    async def _record(
        self, original: Any, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Outcome | None:
        try:
            outcome = await original(topic, partition, offset, key, value)
        except BaseException as error:
            self._failure = error
            async with self._done:
                self._done.notify_all()
            raise
        async with self._done:
            self.handled.append(Handled(topic, partition, offset, outcome))
            self._done.notify_all()
        return outcome

    def accruals_decoded(self) -> list[tuple[bytes | None, dict[str, Any]]]:
        result = []
        for sent in self.accruals.sent:
            subject, record = self.codec.decode(sent.value, expected_subject="accrual")
            result.append((sent.key, record))
        return result

    def dead_letters_decoded(self) -> list[tuple[bytes | None, dict[str, Any]]]:
        result = []
        for sent in self.dead_letters.sent:
            subject, record = self.codec.decode(sent.value, expected_subject="dead_letter")
            result.append((sent.key, record))
        return result

    def changelog(self) -> list[tuple[bytes, Any, int]]:
        """Every write the state table has sent to its changelog topic so far: (serialized key,
        stored value bytes, partition)."""
        changelog_topic = self.matcher.states.changelog_topic.get_topic_name()
        return [(sent.key, sent.value, sent.partition) for sent in self.sends.to(changelog_topic).sent]  # type: ignore[misc]

    def summaries(self) -> list[tuple[bytes, Any, int]]:
        """The changelog's account summaries (``stream.core.state_rows``), without the rows."""
        return [written for written in self.changelog() if is_summary_key(json.loads(written[0]))]

    def state(self, account: str = ACCOUNT) -> AccountState | None:
        return self.matcher.accounts.get(account)

    def hold_changelog(self) -> list[Any]:
        """From now on, the state table's changelog sends stay unacknowledged until the test resolves them:
        the list they are added to (``del self.matcher.states.take_sends`` ends it)."""
        table = self.matcher.states
        unacked: list[Any] = []

        def held_back() -> list[Any]:
            sends = type(table).take_sends(table)
            unacked.extend(sends)
            return sends

        table.take_sends = held_back  # type: ignore[method-assign]
        return unacked

    def hold_deliveries(self, topic: str) -> tuple[list[asyncio.Future[Any]], list[Any]]:
        """From now on, sends to ``topic`` stay undelivered until the test resolves them: the futures
        standing for those deliveries, and the outbox's staged messages (``Staged``) as they are started."""
        matcher = self.matcher
        recorded, start = matcher.sends.send, matcher.outbox.start
        pending: list[asyncio.Future[Any]] = []
        staged_messages: list[Any] = []

        async def undelivered(*args: Any, **kwargs: Any) -> Any:
            delivery = await recorded(*args, **kwargs)
            if args[0] == topic:
                delivery = asyncio.get_running_loop().create_future()  # not delivered yet
                pending.append(delivery)
            return delivery

        def keep_staged(*args: Any, **kwargs: Any) -> Any:
            staged = start(*args, **kwargs)
            staged_messages.append(staged)
            return staged

        matcher.sends.send = undelivered  # type: ignore[method-assign]
        matcher.outbox.start = keep_staged  # type: ignore[method-assign]
        return pending, staged_messages


def encode_auth(codec: Codec, record: dict[str, Any]) -> bytes:
    return codec.encode("authorization_event", record)


def encode_settlement(codec: Codec, record: dict[str, Any]) -> bytes:
    return codec.encode("settlement_event", record)


@pytest.fixture(scope="session")
def codec() -> Codec:
    return Codec()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Port 9 (discard): nothing in this tier may reach a broker; if something tried, it would fail.
    return Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "WORKER_DATA_DIR": str(tmp_path / "worker")})


@pytest_asyncio.fixture
async def matcher(settings: Settings, codec: Codec) -> AsyncIterator[Matcher]:
    matcher = Matcher(settings, codec)
    matcher.app.conf.store = "memory://"
    matcher.app.finalize()
    matcher.app.conf.autodiscover = False
    matcher.offers.book = book()  # the default: 5% at MCC 5411
    for table in (matcher.states, matcher.profiles):
        # No broker: the broker acknowledges each changelog write at once here; test_matcher_agent
        # holds the acknowledgements back where it matters.
        table.take_sends = acked_at_once(table.take_sends)  # type: ignore[method-assign]
    yield matcher
    # Acking an event creates the app's consumer, whose (never started) consumer thread owns an
    # event loop that only its own start/stop would close. Close it, or it warns when collected.
    consumer = matcher.app._consumer
    if consumer is not None:
        thread = getattr(consumer, "_thread", None)
        loop = getattr(thread, "thread_loop", None)
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()


def acked_at_once(take_sends: Any) -> Any:
    def taken() -> list[Any]:
        sends = take_sends()
        for sent in sends:
            if not sent.done():
                sent.set_result(None)
        return sends

    return taken


class EveryOffsetInOrder(InputProgress):
    """Offset accounting that takes each message as the next of its partition."""

    def knows(self, tp: Any) -> bool:
        return True

    def verdict(self, tp: Any, offset: int) -> Verdict:
        return Verdict.PROCESS

    def done(self, tp: Any, offset: int, deliveries: Any = ()) -> None:
        pass

    def read_again(self, tp: Any, offset: int) -> int | None:
        return offset


class EveryPartition(set):  # type: ignore[type-arg]
    """The matcher owns every partition."""

    def __contains__(self, tp: object) -> bool:
        return True


@asynccontextmanager
async def agent_harness(matcher: Matcher, codec: Codec, *, ready: bool = True) -> AsyncIterator[AgentHarness]:
    sends = RecordedSends({table.changelog_topic.get_topic_name() for table in (matcher.states, matcher.profiles)})
    matcher.sends.send = sends.send  # type: ignore[method-assign]
    # Each record through the matcher's ``send`` (the one above, or a test's): recorded, its own delivery. The
    # producer's batches (``stream.producing.Batches``) are covered against a real broker.
    matcher.sends.batches = lambda order=(): OneByOne(matcher.sends)  # type: ignore[method-assign,assignment,misc]
    if ready:
        matcher.offers.ready.set()
    # test_context starts the agent only, not the app: the app's tasks and timers (the offer
    # mirror, the lag gauge; Faust starts both in App.on_started) must never run, they would reach
    # for the broker. Checked, not assumed.
    background: list[str] = []

    async def mirror_must_not_run() -> None:
        background.append("offer mirror")

    matcher.offers.run = mirror_must_not_run  # type: ignore[method-assign]
    matcher.inputs.progress = EveryOffsetInOrder()
    matcher.inputs.assigned = EveryPartition()
    async with matcher.agent.test_context() as agent:
        topics = matcher.topics
        harness = AgentHarness(matcher, agent, codec, sends, sends.to(topics.accruals.name), sends.to(topics.dead_letters.name))
        original = matcher.handle

        async def handle(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Outcome | None:
            return await harness._record(original, topic, partition, offset, key, value)

        original_flush = matcher.outbox.flush

        async def flush() -> None:
            harness.flushing += 1
            try:
                await original_flush()
            except BatchDropped:  # its messages are read again: the agent goes on
                raise
            except BaseException as error:  # the agent fails: the waiting test is told
                harness._failure = error
                raise
            finally:
                harness.flushing -= 1
                async with harness._done:
                    harness._done.notify_all()

        async def seek(tp: Any, offset: int) -> None:  # recorded: the harness's stream has no consumer to move
            harness.seeks.append((tp, offset))

        matcher.handle = handle  # type: ignore[method-assign]
        matcher.outbox.flush = flush  # type: ignore[method-assign]
        matcher.app.consumer.seek = seek  # type: ignore[method-assign]
        try:
            yield harness
        finally:
            matcher.handle = original  # type: ignore[method-assign]
            matcher.outbox.flush = original_flush  # type: ignore[method-assign]
    assert background == [], f"app background work ran under test_context: {background}"
    assert not matcher.app.started


@pytest_asyncio.fixture
async def harness(matcher: Matcher, codec: Codec) -> AsyncIterator[AgentHarness]:
    async with agent_harness(matcher, codec) as harness:
        yield harness
