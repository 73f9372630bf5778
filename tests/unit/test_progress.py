"""Offset accounting (stream.progress): an offset is committable only when every offset below it
was processed, whatever the consumer drops, redelivers or skips."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.progress import BACKSTOP_WATCHES, InputProgress, Verdict

TP = ("cashback.card.authorizations", 0)


def test_in_order_messages_are_processed_and_committable() -> None:
    progress = InputProgress()
    progress.start(TP, 10)
    assert progress.committable(TP) is None
    for offset in (10, 11, 12):
        assert progress.verdict(TP, offset) is Verdict.PROCESS
        progress.done(TP, offset)
    assert progress.committable(TP) == 13
    progress.committed(TP, 13)
    assert progress.committable(TP) is None


def test_a_redelivered_message_is_skipped() -> None:
    progress = InputProgress()
    progress.start(TP, 0)
    progress.verdict(TP, 0)
    progress.done(TP, 0)
    assert progress.verdict(TP, 0) is Verdict.SKIP


def test_a_hole_asks_for_a_seek_then_skips_what_was_buffered_until_the_hole_comes() -> None:
    progress = InputProgress()
    progress.start(TP, 100)
    assert progress.verdict(TP, 230) is Verdict.SEEK
    assert progress.next_offset(TP) == 100
    assert progress.verdict(TP, 231) is Verdict.SKIP  # buffered before the seek
    assert progress.verdict(TP, 100) is Verdict.PROCESS  # the re-read
    progress.done(TP, 100)
    assert progress.committable(TP) == 101
    assert progress.seeks == 1 and progress.gaps_accepted == 0


def test_a_hole_that_comes_back_after_the_seek_is_accepted_only_when_the_broker_holds_nothing_there() -> None:
    progress = InputProgress()
    progress.start(TP, 5)
    assert progress.verdict(TP, 8) is Verdict.SEEK  # 5-7: compacted away, or transaction markers
    assert progress.verdict(TP, 9) is Verdict.SKIP
    assert progress.verdict(TP, 8) is Verdict.CHECK_HOLE  # read again from 5: 8 comes first again
    assert progress.hole_checked(TP, 8, empty=True) is Verdict.PROCESS
    progress.done(TP, 8)
    assert progress.committable(TP) == 9
    assert progress.gaps_accepted == 1


def test_an_end_of_partition_with_no_record_is_accounted_for_once_the_broker_says_so() -> None:
    """A transactional producer's last marker (or what it aborted) sits below the partition's end:
    never delivered, it left the partition one offset behind for good, read again at every watch.
    Once the broker says the tail holds no record, the partition is at its end; not if it moved."""
    progress = InputProgress()
    progress.start(TP, 0)
    for offset in (0, 1, 2):
        assert progress.verdict(TP, offset) is Verdict.PROCESS
        progress.done(TP, offset)
    assert progress.stalled(TP, 4) is None  # watched for the first time at 3, the end at 4 (a marker at 3)
    assert progress.stalled(TP, 4) == 3  # it has not moved: read again, unless the broker says 3 holds nothing
    progress.past_empty_tail(TP, 2, 4)  # not where it stands: nothing
    assert progress.next_offset(TP) == 3
    progress.past_empty_tail(TP, 3, 4)
    assert (progress.next_offset(TP), progress.committable(TP), progress.gaps_accepted) == (4, 4, 1)
    assert progress.stalled(TP, 4) is None and progress.stalled(TP, 4) is None  # at its end: never read again
    assert progress.verdict(TP, 4) is Verdict.PROCESS  # the next record, when it comes


def test_a_hole_the_consumer_dropped_twice_is_read_again() -> None:
    """What Faust did in a chaos run: the re-read after the seek lost the hole's message again."""
    progress = InputProgress()
    progress.start(TP, 122)
    assert progress.verdict(TP, 124) is Verdict.SEEK
    assert progress.verdict(TP, 130) is Verdict.SKIP  # buffered before the seek
    assert progress.verdict(TP, 125) is Verdict.CHECK_HOLE  # the re-read, 122-124 dropped again
    assert progress.hole_checked(TP, 125, empty=False) is Verdict.SEEK
    assert progress.verdict(TP, 122) is Verdict.PROCESS
    assert progress.committable(TP) is None


def test_a_revoked_partition_is_forgotten_and_commits_nothing() -> None:
    progress = InputProgress()
    progress.start(TP, 0)
    progress.verdict(TP, 0)
    progress.forget([TP])
    progress.done(TP, 0)  # finished after the revocation: the next owner reads it again
    assert not progress.knows(TP)
    assert progress.committable(TP) is None


def test_a_partition_stuck_below_its_end_is_read_again_at_the_second_watch() -> None:
    progress = InputProgress()
    progress.start(TP, 0)
    assert progress.stalled(TP, 0) is None  # nothing to read
    assert progress.stalled(TP, 3) is None  # records to read: give the agent a period
    assert progress.stalled(TP, 3) == 0  # still nothing processed: read again
    progress.verdict(TP, 0)
    progress.done(TP, 0)
    assert progress.stalled(TP, 3) is None  # it moved
    assert progress.stalled(TP, 3) == 1
    assert progress.stalled(TP, 3) is None  # sought: a period for the re-read
    assert progress.stalled(TP, 3) == 1


def test_a_busy_agent_with_the_next_message_on_its_way_waits_up_to_the_backstop() -> None:
    """Behind a backlog the consumer hands on one partition after another: a partition whose next
    message is on its way (not yet handed on, or in the agent's queue) is only behind the others."""
    progress = InputProgress()
    progress.start(TP, 0)
    assert progress.stalled(TP, 50_000, busy=True, on_its_way=True) is None  # first watch: where it stands
    for _ in range(BACKSTOP_WATCHES - 1):
        assert progress.waits(TP, 50_000)
        assert progress.stalled(TP, 50_000, busy=True, on_its_way=True) is None
    assert progress.stalled(TP, 50_000, busy=True, on_its_way=True) == 0  # a consumer that never hands it on


def test_a_partition_whose_next_message_is_not_on_its_way_is_read_again_though_the_agent_is_busy() -> None:
    """The quick benchmark's two-worker stall: after a rebalance a partition's records were handed on
    and dropped before the agent saw them, while clock ticks and other partitions kept the agent busy."""
    progress = InputProgress()
    progress.start(TP, 120)
    assert not progress.waits(TP, 171)  # not watched yet
    assert progress.stalled(TP, 171, busy=True, on_its_way=False) is None
    assert progress.waits(TP, 171)
    assert progress.stalled(TP, 171, busy=True, on_its_way=False) == 120


def test_a_stuck_partition_is_read_again_when_busy_and_idle_watches_alternate() -> None:
    """Clock ticks every 10 s and a watch every 5 s: every other watch finds the agent busy; a busy
    watch never restarts the wait."""
    progress = InputProgress()
    progress.start(TP, 120)
    assert progress.stalled(TP, 171, busy=False) is None
    assert progress.stalled(TP, 171, busy=True, on_its_way=True) is None
    assert progress.stalled(TP, 171, busy=False) == 120


def test_a_partition_that_keeps_moving_is_never_read_again() -> None:
    progress = InputProgress()
    progress.start(TP, 0)
    for offset in range(3 * BACKSTOP_WATCHES):
        progress.verdict(TP, offset)
        progress.done(TP, offset)
        assert not progress.waits(TP, 10_000)
        assert progress.stalled(TP, 10_000, busy=offset % 2 == 0) is None
    assert not progress.waits(TP, 3 * BACKSTOP_WATCHES)  # all read


class Sent:
    """A send's outcome: pending, delivered or failed."""

    def __init__(self, error: BaseException | None = None, done: bool = True) -> None:
        self.error, self.finished = error, done

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.error


def test_an_offset_is_committable_only_once_its_sends_are_delivered() -> None:
    progress = InputProgress()
    progress.start(TP, 10)
    pending = Sent(done=False)
    for offset, deliveries in ((10, [Sent()]), (11, [pending]), (12, [])):
        progress.verdict(TP, offset)
        progress.done(TP, offset, deliveries)
    assert progress.committable(TP) == 11  # 11's entry is not delivered yet
    pending.finished = True
    assert progress.committable(TP) == 13


def test_a_failed_send_reads_its_offset_again_and_never_commits_it() -> None:
    progress = InputProgress()
    progress.start(TP, 10)
    for offset, deliveries in ((10, [Sent()]), (11, [Sent(), Sent(ConnectionError("broker gone"))]), (12, [Sent()])):
        progress.verdict(TP, offset)
        progress.done(TP, offset, deliveries)
    assert progress.committable(TP) == 11
    assert progress.stalled(TP, 13) == 11  # read again from the failed one (idempotent downstream)
    assert progress.next_offset(TP) == 11
    assert progress.verdict(TP, 11) is Verdict.PROCESS
    progress.done(TP, 11, [Sent()])
    progress.verdict(TP, 12)
    progress.done(TP, 12, [Sent()])
    assert progress.committable(TP) == 13


@settings(max_examples=300, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=40),
    drops=st.lists(st.integers(min_value=0, max_value=39), max_size=12),
)
def test_whatever_is_dropped_every_record_is_processed_once_in_order_and_commits_never_pass_one(
    present: list[bool], drops: list[int]
) -> None:
    """A log with real holes (offsets holding no record); a consumer that drops one delivery of
    an offset for each time ``drops`` names it (re-reads included) and honours seeks by reading
    again from there."""
    log = [offset for offset, here in enumerate(present) if here]
    to_drop = Counter(drops)
    progress = InputProgress()
    progress.start(TP, 0)
    processed: list[int] = []
    position, deliveries = 0, 0
    while deliveries < 10_000:
        batch = [offset for offset in log if offset >= position]
        if not batch:
            break
        sought = None
        for offset in batch:
            deliveries += 1
            if to_drop[offset] > 0:
                to_drop[offset] -= 1  # a library lost it on the way to the agent
                continue
            verdict = progress.verdict(TP, offset)
            if verdict is Verdict.CHECK_HOLE:  # the broker's answer: is there a record in the hole?
                empty = not any(progress.next_offset(TP) <= o < offset for o in log)
                verdict = progress.hole_checked(TP, offset, empty)
            if verdict is Verdict.PROCESS:
                processed.append(offset)
                progress.done(TP, offset)
            elif verdict is Verdict.SEEK and sought is None:
                sought = progress.next_offset(TP)
            committable = progress.committable(TP)
            if committable is not None:
                assert all(o in processed for o in log if o < committable)
        if sought is None:  # nothing after a lost message revealed it: the periodic watch does
            end = log[-1] + 1
            sought = progress.stalled(TP, end) or progress.stalled(TP, end)
        if sought is None:
            break
        position = sought
    assert processed == log


def test_messages_dropped_after_processing_are_read_again_before_anything_after_them() -> None:
    """A batch dropped before its effects left (its budget grants refused): the partition goes back
    to its first dropped offset; the messages still buffered after it are a hole, sought back."""
    progress = InputProgress()
    progress.start(TP, 0)
    for offset in range(6):
        assert progress.verdict(TP, offset) is Verdict.PROCESS
        progress.done(TP, offset, [Sent()] if offset < 3 else [Sent(RuntimeError("dropped"))])
    assert progress.read_again(TP, 3) == 3
    assert progress.next_offset(TP) == 3
    assert progress.committable(TP) == 3  # what was flushed before stays committable, nothing after it
    assert progress.stalled(TP, 6) is None  # the dropped sends ask for no read of their own
    assert progress.verdict(TP, 6) is Verdict.SEEK  # the next buffered message: back to 3
    assert progress.verdict(TP, 3) is Verdict.PROCESS
    assert progress.read_again(TP, 5) is None  # above what is accounted for: nothing to go back to
    assert progress.next_offset(TP) == 3
