"""The watch of the worker's group membership (stream.group_membership), on aiokafka's own
subscription state and generation bookkeeping, with a clock of the test's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition

from stream import group_membership
from stream.group_membership import EXIT_OUT_OF_GROUP, GroupWatch, in_group
from stream.metrics import WORKER_IN_GROUP, WORKER_REJOINS

LIMIT_S = 60.0


class Coordinator:
    """The attributes of aiokafka's GroupCoordinator the watch reads, and its reset and rejoin request."""

    def __init__(self) -> None:
        self.generation, self.member_id = 3, "worker-a-1234"
        self.coordinator_id: int | None = 1  # the broker node that coordinates the group (None: not known)
        self.rejoins_requested = 0

    def request_rejoin(self) -> None:
        self.rejoins_requested += 1

    def reset_generation(self) -> None:  # aiokafka's own, as its heartbeat routine calls it when idle
        GroupCoordinator.reset_generation(self)  # type: ignore[arg-type]


class ConsumerThread:
    def __init__(self, client: Any) -> None:
        self._consumer = client
        self.calls = 0

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        self.calls += 1
        return await fun(*args)


class World:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(group_membership.time, "monotonic", lambda: self.now)
        self.subscription = SubscriptionState()
        self.coordinator = Coordinator()
        self.client = SimpleNamespace(_coordinator=self.coordinator, _subscription=self.subscription)
        self.thread = ConsumerThread(self.client)
        self.exits: list[int] = []
        self.watch = GroupWatch(SimpleNamespace(consumer=SimpleNamespace(_thread=self.thread)), LIMIT_S, self.exits.append)

    async def at(self, seconds: float) -> None:
        self.now = 1000.0 + seconds
        await self.watch.check()


@pytest_asyncio.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return World(monkeypatch)  # aiokafka's subscription state is made within a running loop


def test_a_member_is_in_its_group_until_aiokafka_resets_its_generation() -> None:
    coordinator = Coordinator()
    assert in_group(SimpleNamespace(_coordinator=coordinator))
    coordinator.reset_generation()
    assert not in_group(SimpleNamespace(_coordinator=coordinator))
    assert not in_group(SimpleNamespace(_coordinator=None))  # not started


@pytest.mark.asyncio
async def test_a_worker_in_its_group_is_left_alone(world: World) -> None:
    await world.at(0)
    await world.at(10 * LIMIT_S)
    assert WORKER_IN_GROUP._value.get() == 1
    assert world.thread.calls == 0 and world.exits == []


@pytest.mark.asyncio
async def test_a_worker_out_of_its_group_too_long_rejoins_it(world: World) -> None:
    world.now = 1000.0 - 2000  # aiokafka's fetcher last fetched long ago: it does not rejoin by itself
    with world.subscription.fetch_context():
        pass
    world.coordinator.reset_generation()
    requested_by_reset = world.coordinator.rejoins_requested
    rejoins = WORKER_REJOINS._value.get()
    await world.at(0)
    assert world.subscription.fetcher_idle_time >= 2000  # (the test's clock is aiokafka's too)
    await world.at(LIMIT_S - 1)
    assert WORKER_IN_GROUP._value.get() == 0
    assert world.thread.calls == 0  # not out long enough yet
    await world.at(LIMIT_S)
    assert world.thread.calls == 1
    assert world.coordinator.rejoins_requested == requested_by_reset + 1
    assert world.subscription.fetcher_idle_time < 1  # aiokafka rejoins only a consumer that fetched
    assert WORKER_REJOINS._value.get() == rejoins + 1
    world.coordinator.generation, world.coordinator.member_id = 4, "worker-a-5678"  # joined again
    await world.at(LIMIT_S + 5)
    assert WORKER_IN_GROUP._value.get() == 1
    assert world.exits == []


@pytest.mark.asyncio
async def test_a_broker_away_is_waited_for_not_counted_as_time_out_of_the_group(world: World) -> None:
    """The broker being away blocks (README): the worker waits for it, however long, and never exits;
    once a coordinator answers again, the time out of the group counts from then."""
    world.coordinator.reset_generation()
    world.coordinator.coordinator_id = None
    for seconds in (0, LIMIT_S, 5 * LIMIT_S, 20 * LIMIT_S):
        await world.at(seconds)
        assert WORKER_IN_GROUP._value.get() == 0
    assert world.thread.calls == 0 and world.exits == []
    world.coordinator.coordinator_id = 1
    await world.at(20 * LIMIT_S + 1)
    await world.at(21 * LIMIT_S)
    assert world.thread.calls == 0  # out for LIMIT_S - 1 since the broker came back
    await world.at(21 * LIMIT_S + 1)
    assert world.thread.calls == 1 and world.exits == []


@pytest.mark.asyncio
async def test_a_worker_still_out_after_rejoining_exits_for_its_supervisor(world: World) -> None:
    world.coordinator.reset_generation()
    await world.at(0)
    await world.at(LIMIT_S)  # rejoins
    await world.at(2 * LIMIT_S - 1)
    assert world.exits == []
    await world.at(2 * LIMIT_S)
    assert world.exits == [EXIT_OUT_OF_GROUP]


@pytest.mark.asyncio
async def test_a_worker_that_came_back_is_watched_afresh(world: World) -> None:
    world.coordinator.reset_generation()
    await world.at(0)
    await world.at(LIMIT_S)  # rejoins
    world.coordinator.generation, world.coordinator.member_id = 4, "worker-a-5678"
    await world.at(LIMIT_S + 5)
    world.coordinator.reset_generation()  # out again, later
    await world.at(3 * LIMIT_S)
    await world.at(4 * LIMIT_S - 1)
    assert world.exits == [] and world.thread.calls == 1  # a new absence: a new limit before anything
    await world.at(4 * LIMIT_S)
    assert world.thread.calls == 2 and world.exits == []


@pytest.mark.asyncio
async def test_a_member_given_no_partition_counts_as_fetching(world: World) -> None:
    """More workers than partitions: one owns nothing and fetches nothing. aiokafka would take it
    for stuck, leave the group and never rejoin (aiokafka #1187); with nothing to fetch it is not."""
    world.subscription.subscribe(topics={"card.authorizations"})
    world.subscription.assign_from_subscribed(set())
    await world.at(0)
    assert world.subscription.fetcher_idle_time == 0  # as of the watch's visit
    world.now += 1000
    assert world.subscription.fetcher_idle_time >= 1000
    await world.at(1000)
    assert world.subscription.fetcher_idle_time == 0
    assert world.coordinator.rejoins_requested == 0 and world.exits == []


@pytest.mark.asyncio
async def test_a_member_with_partitions_is_not_counted_as_fetching(world: World) -> None:
    world.subscription.subscribe(topics={"card.authorizations"})
    world.subscription.assign_from_subscribed({TopicPartition("card.authorizations", 0)})
    world.now -= 1000
    with world.subscription.fetch_context():
        pass
    await world.at(0)
    assert world.subscription.fetcher_idle_time >= 1000  # its fetcher is what says whether it fetches
    assert world.thread.calls == 0
