"""The metrics added for the alert rules (stream/metrics.py): the ledger latency observed for the
entries a transaction added, the campaign budget gauges, the conflict series present from the start."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from stream.metrics import observe_budgets, observe_ledger_latency
from stream.sink import source_time_ms
from topics.catalogue import SOURCE_TIME_HEADER


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_the_conflict_series_exists_before_the_first_conflict() -> None:
    assert REGISTRY.get_sample_value("cashback_sink_entries_total", {"result": "conflict"}) is not None


def test_latency_is_observed_for_the_newest_entries_only() -> None:
    count, total = sample("cashback_ledger_latency_seconds_count"), sample("cashback_ledger_latency_seconds_sum")
    fast = sample("cashback_ledger_latency_seconds_bucket", {"le": "1.0"})
    now_s = 1_000_000.0
    # three messages: two 0.2 s old, one replayed from 120 s ago; the transaction added two entries
    observe_ledger_latency([now_s * 1000 - 200, now_s * 1000 - 120_000, now_s * 1000 - 200], written=2, now_s=now_s)
    assert sample("cashback_ledger_latency_seconds_count") == count + 2
    # the sum may already hold other tests' observations (a sink run in this process): a relative tolerance
    assert abs(sample("cashback_ledger_latency_seconds_sum") - total - 0.4) < 1e-9 * max(1.0, total)
    assert sample("cashback_ledger_latency_seconds_bucket", {"le": "1.0"}) == fast + 2


def test_a_batch_of_replays_only_observes_nothing() -> None:
    count = sample("cashback_ledger_latency_seconds_count")
    observe_ledger_latency([1, 2, 3], written=0, now_s=10.0)
    assert sample("cashback_ledger_latency_seconds_count") == count


def test_a_clock_behind_the_broker_counts_zero_not_a_negative_latency() -> None:
    zero = sample("cashback_ledger_latency_seconds_bucket", {"le": "0.05"})
    observe_ledger_latency([10_500], written=1, now_s=10.0)
    assert sample("cashback_ledger_latency_seconds_bucket", {"le": "0.05"}) == zero + 1


def test_budget_gauges_carry_the_budget_and_what_is_left() -> None:
    observe_budgets({"fnac-online-8": (30_000, "EUR"), "books-points": (100_000, "PTS")}, {"fnac-online-8": 2_000})
    labels = {"budget": "fnac-online-8", "unit": "EUR"}
    assert sample("cashback_campaign_budget_minor", labels) == 30_000
    assert sample("cashback_campaign_budget_remaining_minor", labels) == 2_000
    assert REGISTRY.get_sample_value("cashback_campaign_budget_minor", {"budget": "books-points", "unit": "PTS"}) is None


def _accrual(timestamp_ms: int, headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    return ConsumerRecord("cashback.accruals", 0, 7, timestamp_ms, 0, b"k", b"v", None, 1, 1, headers)


def test_latency_starts_at_the_card_events_broker_time_that_the_accrual_carries() -> None:
    """The accrual was sent 3 s after its card event reached the broker: the latency counts those 3 s."""
    assert source_time_ms(_accrual(1_700_000_003_000, [("other", b"1"), (SOURCE_TIME_HEADER, b"1700000000000")])) == (
        1_700_000_000_000
    )


def test_an_accrual_without_a_readable_source_time_falls_back_to_its_own_timestamp() -> None:
    for headers in ([], [(SOURCE_TIME_HEADER, b"soon")], [(SOURCE_TIME_HEADER, b"")], [(SOURCE_TIME_HEADER, None)]):
        assert source_time_ms(_accrual(1_700_000_003_000, headers)) == 1_700_000_003_000
    assert source_time_ms(_accrual(5, [(SOURCE_TIME_HEADER, b"9" * 40)])) == 5  # no absurd number
