"""The worker keeps no standby replicas of its tables (``stream.worker_app``): Faust's standby
reader left holes in the local stores it followed (the chaos run: every standby partition of a
worker missed its records up to the highwater at the worker's start, and a partition taken over
from such a store stopped on a summary naming rows it did not hold). Pinned on the setting and on
what Faust's assignor then hands out."""

from __future__ import annotations

from typing import Any

from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from schemas.codec import Codec
from stream.matcher import Matcher
from stream.settings import Settings


def test_the_worker_keeps_no_standby_replicas(settings: Settings, codec: Codec) -> None:
    app: Any = Matcher(settings, codec).app
    assert app.conf.table_standby_replicas == 0
    assert app.assignor.replicas == 0


def test_with_no_replicas_two_workers_get_every_partition_once_and_no_standby() -> None:
    # Faust's default (one replica) gives each of two workers the other's partitions as standbys.
    def assignment(replicas: int) -> dict[str, CopartitionedAssignment]:
        clients = {name: CopartitionedAssignment(topics={"cards"}) for name in ("worker-1", "worker-2")}
        return dict(CopartitionedAssignor({"cards"}, clients, num_partitions=8, replicas=replicas).get_assignment())

    mine = assignment(0)
    assert sorted(p for a in mine.values() for p in a.actives) == list(range(8))
    assert all(not a.standbys for a in mine.values())
    assert all(a.standbys for a in assignment(1).values())  # what the default would do
