"""``stream.input_order.InputOrder``: a partition's kept messages handed on by their timestamps
across its topics, waiting (a bounded time) for a topic not read to its end."""

from __future__ import annotations

import hashlib
import inspect
import logging
from dataclasses import dataclass

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from stream.input_order import InputOrder
from stream.metrics import WORKER_ORDER_TIMEOUTS
from topics.catalogue import catalogue

AUTH, CLEAR, ACT = "auth", "clear", "act"
RANK = {ACT: 0, AUTH: 1, CLEAR: 2}


@dataclass(frozen=True)
class Record:
    name: str
    timestamp: int


class Fetcher:
    """What the consumer's fetcher knows of each partition: its position and its highwater mark."""

    def __init__(self) -> None:
        self.position: dict[TP, int | None] = {}
        self.highwater: dict[TP, int | None] = {}
        self.now = 0.0

    def behind(self, tp: TP) -> bool:
        position, highwater = self.position.get(tp), self.highwater.get(tp)
        return position is None or highwater is None or position < highwater

    def read(self, tp: TP, records: list[Record], highwater: int | None = None) -> list[Record]:
        """The fetcher hands ``records`` of ``tp`` over: its position moves past them."""
        self.position[tp] = (self.position.get(tp) or 0) + len(records)
        self.highwater[tp] = self.position[tp] if highwater is None else highwater
        return records


def tps(partition: int) -> tuple[TP, TP, TP]:
    return TP(ACT, partition), TP(AUTH, partition), TP(CLEAR, partition)


def order_of(fetcher: Fetcher, max_wait_s: float = 2.0) -> InputOrder:
    return InputOrder(RANK, fetcher.behind, fetcher.position.get, max_wait_s, clock=lambda: fetcher.now)


def names(released: list[tuple[TP, Record]]) -> list[str]:
    return [record.name for _, record in released]


def caught_up(fetcher: Fetcher, *partitions: TP) -> None:
    for tp in partitions:
        fetcher.position[tp] = fetcher.highwater[tp] = 0


def clearing_kept(auth_end: int | None) -> tuple[Fetcher, InputOrder, TP, TP, TP]:
    """Partition 0: its activations read to their end, a clearing kept (timestamp 30), and nothing
    read of its authorisations, whose end is ``auth_end`` (None: not known yet)."""
    fetcher = Fetcher()
    act, auth, clear = tps(0)
    caught_up(fetcher, act)
    if auth_end is not None:
        fetcher.position[auth], fetcher.highwater[auth] = 0, auth_end
    order = order_of(fetcher)
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30)]))
    return fetcher, order, act, auth, clear


def test_a_partitions_messages_leave_in_timestamp_order_across_its_topics() -> None:
    fetcher = Fetcher()
    act, auth, clear = tps(0)
    order = order_of(fetcher)
    # Fetched round robin: the clearings and the activation arrive with the authorisations.
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30), Record("clear-b", 31)]))
    order.keep(auth, fetcher.read(auth, [Record("auth-a", 10), Record("auth-b", 20), Record("auth-c", 40)]))
    order.keep(act, fetcher.read(act, [Record("act-b", 15)]))
    released = order.release({act, auth, clear}, lambda tp: True)
    assert names(released) == ["auth-a", "act-b", "auth-b", "clear-a", "clear-b", "auth-c"]
    assert {tp for tp, _ in released} == {act, auth, clear}
    assert order.holding() == set()


def test_the_same_millisecond_goes_by_rank() -> None:
    fetcher = Fetcher()
    act, auth, clear = tps(0)
    order = order_of(fetcher)
    order.keep(clear, fetcher.read(clear, [Record("clear", 5)]))
    order.keep(auth, fetcher.read(auth, [Record("auth", 5)]))
    order.keep(act, fetcher.read(act, [Record("act", 5)]))
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["act", "auth", "clear"]


def test_a_topic_not_read_to_its_end_holds_the_partition_until_it_is() -> None:
    # The clearings came first; the authorisations' partition has records the fetch did not bring yet.
    fetcher, order, act, auth, clear = clearing_kept(auth_end=2)
    assert order.release({act, auth, clear}, lambda tp: True) == []
    assert order.holding() == {clear}  # left out of the next fetch
    order.keep(auth, fetcher.read(auth, [Record("auth-a", 10)], highwater=2))
    # Still one authorisation on its way: the first leaves (earlier than any clearing kept), then it waits.
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["auth-a"]
    order.keep(auth, fetcher.read(auth, [Record("auth-b", 35)], highwater=2))
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-a", "auth-b"]


def test_a_topic_whose_end_is_not_known_yet_is_waited_for() -> None:
    fetcher, order, act, auth, clear = clearing_kept(auth_end=None)
    assert order.release({act, auth, clear}, lambda tp: True) == []  # nothing fetched of the authorisations yet


def test_the_wait_is_bounded_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    fetcher, order, act, auth, clear = clearing_kept(auth_end=5)  # stuck below its end
    assert order.release({act, auth, clear}, lambda tp: True) == []
    fetcher.now = 1.9
    assert order.release({act, auth, clear}, lambda tp: True) == []
    fetcher.now = 2.1
    counted = WORKER_ORDER_TIMEOUTS._value.get()
    with caplog.at_level(logging.WARNING, logger="stream.input_order"):
        assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-a"]
        order.keep(clear, fetcher.read(clear, [Record("clear-b", 31)]))
        assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-b"]  # no new wait
    assert [r.getMessage() for r in caplog.records] == ["partition 0: kept messages handed on after 2.1s waiting for auth"]
    assert order.timeouts == 1
    assert WORKER_ORDER_TIMEOUTS._value.get() == counted + 1
    # Once the topic is read to its end, the partition waits again the next time.
    fetcher.position[auth] = 5
    order.keep(clear, fetcher.read(clear, [Record("clear-c", 32)]))
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-c"]
    fetcher.highwater[auth] = 6
    order.keep(clear, fetcher.read(clear, [Record("clear-d", 33)]))
    assert order.release({act, auth, clear}, lambda tp: True) == []


def test_partitions_are_ordered_apart() -> None:
    fetcher = Fetcher()
    act0, auth0, clear0 = tps(0)
    act1, auth1, clear1 = tps(1)
    caught_up(fetcher, act0, act1, clear1)
    fetcher.position[auth0], fetcher.highwater[auth0] = 0, 1  # partition 0 waits for an authorisation
    order = order_of(fetcher)
    order.keep(clear0, fetcher.read(clear0, [Record("clear-0", 1)]))
    order.keep(auth1, fetcher.read(auth1, [Record("auth-1", 50)]))
    assert names(order.release({act0, auth0, clear0, act1, auth1, clear1}, lambda tp: True)) == ["auth-1"]


def test_a_paused_topic_neither_leaves_nor_holds_the_others() -> None:
    fetcher = Fetcher()
    act, auth, clear = tps(0)
    caught_up(fetcher, act)
    order = order_of(fetcher)
    order.keep(auth, fetcher.read(auth, [Record("auth-a", 10)]))
    fetcher.position[clear], fetcher.highwater[clear] = 0, 9
    paused = {clear}
    assert names(order.release({act, auth, clear}, lambda tp: tp not in paused)) == ["auth-a"]
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30)]))
    assert order.release({act, auth, clear}, lambda tp: tp not in paused) == []  # kept while paused
    assert order.holding() == {clear}
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-a"]


def test_what_is_kept_is_dropped_when_revoked_or_sought() -> None:
    fetcher, order, act, auth, clear = clearing_kept(auth_end=1)
    assert order.release({act, auth, clear}, lambda tp: True) == []
    # A seek moved the clearings' position back: the fetcher reads them again, the kept copies go.
    fetcher.position[clear] = 0
    assert order.release({act, auth, clear}, lambda tp: True) == []
    assert order.holding() == set()
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30)]))
    # Revoked: dropped too.
    assert order.release({act, auth}, lambda tp: True) == []
    assert order.holding() == set()
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30)]))
    order.drop()
    assert order.holding() == set()


def test_a_wait_begins_again_after_the_partition_was_revoked() -> None:
    fetcher, order, act, auth, clear = clearing_kept(auth_end=1)  # waits at most 2 s
    assert order.release({act, auth, clear}, lambda tp: True) == []  # waits from 0.0
    fetcher.now = 1.5
    assert order.release(set(), lambda tp: True) == []  # revoked
    fetcher.now = 3.0  # assigned again: its wait starts now, not at 0.0
    order.keep(clear, fetcher.read(clear, [Record("clear-a", 30)]))
    assert order.release({act, auth, clear}, lambda tp: True) == []
    fetcher.now = 5.1
    assert names(order.release({act, auth, clear}, lambda tp: True)) == ["clear-a"]


def test_every_input_of_the_matcher_is_ordered_with_its_place_at_a_tie() -> None:
    topics = catalogue("p.", 4)
    ranks = topics.input_order()
    read = {t.name for t in (*topics.inputs(), *topics.account_inputs(), topics.clock)}
    assert set(ranks) == read
    assert all(topics.by_name(name).co_partitioned for name in ranks)
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert ranks[topics.profiles.name] < ranks[topics.authorizations.name] < ranks[topics.settlements.name]
    assert ranks[topics.activations.name] < ranks[topics.authorizations.name]


def test_faust_s_getmany_is_the_one_copied() -> None:
    """``OrderedFetches.getmany`` is faust-streaming 0.15's ``Consumer.getmany`` with the ordered
    topics' records kept and released in order: when Faust's changes (a fix, a new check), this
    fails, so the copy is read again beside it and brought in step."""
    source = inspect.getsource(FaustConsumer.getmany)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_GETMANY_SHA256


FAUST_GETMANY_SHA256 = "4b168d84882a70d6e3e2f9804430a63b92f8fd117d3187cbb4aeb54305bda34e"
