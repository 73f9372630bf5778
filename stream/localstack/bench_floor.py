"""The floor Faust sets under the worker: a bare agent that only counts what Faust hands it.

The benchmark's raw loop is what a plain client does with the card events; the worker is a Faust
agent, and Faust hands an agent one message per turn of the event loop (its fetcher puts each
message in the agent's stream buffer, the agent's stream takes it out, makes its event and counts
it in and out). That delivery has a cost of its own, paid before the worker does anything. This
probe measures it: the worker's own Faust app (``stream.worker_app``: its consumer, fetches, sensors
and settings), event loop (uvloop) and garbage collector thresholds, no table, no input guarded
(Faust commits), whose one agent iterates ``stream.events()`` over the same
preloaded card-event topics and counts. Its rate is the most events per second any Faust agent
reads on the machine, so ``floor/raw`` bounds ``processor/raw`` from above.

Measured while writing it on the benchmark's 2-core machine, over 150,000 accrual-sized messages
on 4 partitions, twice: 8,530 and 8,460 events/s. A plain ``faust.App`` (with Faust's Monitor,
which the worker's app leaves out) read 7,830 events/s for 128 microseconds of CPU an event; on
asyncio's own loop 6,500-7,100, whichever the iteration: the events, the stream itself,
``take_events`` of 500, or a topic without acks. Its consumer is the worker's, so since its fetch
loop hands a message on without tasks of its own (``stream.direct_delivery``) the probe reads about
twice as many: 23,788-25,447 events/s against 13,402-14,138 before, 60,000 messages, the two in turn.
Every run of the benchmark reports it (``faust_floor_events_per_s``, and ``floor_over_raw``).

Run by the benchmark as ``python -m stream.localstack.bench_floor``, a process of its own like the
worker, with the worker's environment but its own ``APP_ID`` (a consumer group of its own) and
``WORKER_DATA_DIR``, and ``FLOOR_TOPICS`` (comma separated) and ``FLOOR_EVENTS`` (how many to
count). The clock runs from the first event to the last; it prints one JSON line,
``{"events": n, "seconds": s}``, and exits.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ENVIRONMENT = ("FLOOR_TOPICS", "FLOOR_EVENTS")


def main() -> None:
    import faust
    import uvloop

    from stream.composition import WORKER_GC_THRESHOLD
    from stream.settings import Settings
    from stream.worker_app import worker_app

    missing = [name for name in ENVIRONMENT if not os.environ.get(name)]
    if missing:
        sys.exit(f"bench_floor: set {', '.join(missing)}")
    if not os.environ["FLOOR_EVENTS"].isdigit() or int(os.environ["FLOOR_EVENTS"]) < 1:
        sys.exit(f"bench_floor: FLOOR_EVENTS must be a positive whole number, not {os.environ['FLOOR_EVENTS']!r}")
    settings = Settings.from_env(os.environ)
    topics = os.environ["FLOOR_TOPICS"].split(",")
    expected = int(os.environ["FLOOR_EVENTS"])
    Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
    gc.set_threshold(*WORKER_GC_THRESHOLD)
    uvloop.install()
    # The worker's own app (its consumer, fetches, sensors and settings), with no input guarded: Faust commits.
    app = worker_app(settings, frozenset(), settings.topics().authorizations.partitions)
    topic = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    counted = 0
    started = 0.0

    async def count(stream: Any) -> None:
        nonlocal counted, started
        async for _ in stream.events():
            if not counted:
                started = time.monotonic()
            counted += 1
            if counted == expected:
                os.write(1, json.dumps({"events": counted, "seconds": time.monotonic() - started}).encode() + b"\n")
                os._exit(0)  # a probe: nothing of it is kept, its consumer group is never read again

    app.agent(topic, name="floor")(count)
    faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
