"""``stream.metrics.labelled``: the hot path's counters, their children kept, count into the
same series as ``metric.labels(...)`` would."""

from __future__ import annotations

from prometheus_client import REGISTRY

from stream import metrics


def _sample(outcome: str) -> float:
    labels = {"event_type": "AUTHORIZATION", "outcome": outcome}
    return REGISTRY.get_sample_value("cashback_events_consumed_total", labels) or 0.0


def test_a_kept_child_counts_into_the_registrys_series() -> None:
    before = _sample("test_kept_child")
    metrics.labelled(metrics.EVENTS_CONSUMED, "AUTHORIZATION", "test_kept_child").inc()
    metrics.labelled(metrics.EVENTS_CONSUMED, "AUTHORIZATION", "test_kept_child").inc(2)
    metrics.EVENTS_CONSUMED.labels("AUTHORIZATION", "test_kept_child").inc()
    assert _sample("test_kept_child") == before + 4


def test_each_label_set_is_its_own_child_and_is_made_once() -> None:
    first = metrics.labelled(metrics.ACCRUALS, "PENDING_CREATED", "CASH")
    assert metrics.labelled(metrics.ACCRUALS, "PENDING_CREATED", "CASH") is first
    assert metrics.labelled(metrics.ACCRUALS, "PENDING_CREATED", "POINTS") is not first
    assert first is metrics.ACCRUALS.labels("PENDING_CREATED", "CASH")
