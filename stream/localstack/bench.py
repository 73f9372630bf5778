"""The benchmark (``make bench``): the project against plain clients, side by side in one run, on
its own broker and Postgres, seeded, then every ledger total checked against the pure engine.

In order, on a log of the simulator's lifecycle mix (``stream.localstack.bench_streams``):

1. **raw**: a plain aiokafka loop over the preloaded card-event topics (consume, decode, build and
   encode an accrual, produce; ``stream.localstack.bench_baselines``), events/s; then a bare
   Faust agent with the worker's own app that only counts them (``stream.localstack.bench_floor``),
   events/s: the most any Faust agent reads on the machine, so ``floor/raw`` bounds ``processor/raw``.
   Both read a topic set of their own holding the same log;
2. **worker**: ``stream worker``, one process, drains the same log, the sink not running; events/s
   by its own ``cashback_events_consumed_total``. It folded the account messages before the card
   events were published (then stopped, and started again on them), so every purchase is decided
   with its account's profile, as the judgement assumes. It drains the log in two phases, each
   published while it is stopped: the authorisations, then the settlements
   (``stream.localstack.bench_streams.in_phases``), so that the rows are the seed's, not the
   fetcher's order across the two topics; its rate is what both phases counted over the sum of
   their windows;
3. **sink**: ``stream sink`` then drains the accruals the worker produced; new ledger entries/s by
   its own ``cashback_sink_entries_total{result="written"}``;
4. **COPY**: asyncpg's ``copy_records_to_table`` of the rows the sink wrote into scratch tables, rows/s:
   the median of three passes (``bench_baselines.COPY_PASSES``), each pass's rate in ``results.json``;
5. **latency**: with both caught up, more of the log published at 1,000 events/s; per event, the
   sink's commit of its first row minus the message's broker timestamp, p99, and the part of it up
   to the worker's send of its first accrual (``stream.localstack.bench_latency``);
6. **correctness**: the chaos run's oracle (``stream.localstack.chaos_oracle``) replays every card
   event of those topics through the pure engine in the order the worker decided them and
   compares each account's balances, and every ledger entry, with Postgres;
7. **two workers**: the preloaded log on topics of their own, drained by two workers, in the same
   two phases;
8. **the long run**: one worker decides ``BENCH_LONG_EVENTS`` events (its RSS at a quarter and at
   the end, and at each eighth with what its memory gauges say: its state cache's items and
   accounts, its stores' block cache), published while it runs in 16 slices of the log
   (``bench_run.LONG_SLICES``), each slice's authorisations then its settlements, each drained
   before the next (the states it holds are the seed's, and a clearing follows its authorisation
   by a slice at most); it is stopped with SIGTERM, more events are published, and it is started
   again with its data directory and instance id: the time to its first card event.

Throughput windows are explained in ``stream.localstack.bench_watch``. Every topic set has eight
partitions; campaign budgets are left out of the offers, as in the chaos run. It prints a table,
writes ``results.json`` and ``results.png`` (``stream.localstack.bench_results``) and ends with
the line ``processor/raw=R.RR sink/copy=S.SS p99_ms_at_1k=P rss_growth=G restart_s=T two_workers=W``;
the exit code is 1 when the ledger differs from the oracle or a stage could not finish.

Sizes: ``BENCH_EVENTS`` (200,000), ``BENCH_LONG_EVENTS`` (1,000,000), ``BENCH_PACED_S`` (60),
``BENCH_SEED`` (1); ``--quick`` or ``BENCH_QUICK=1`` runs 3,000, 4,000 and 5 s instead (the size
``make test`` runs). A flag wins over its variable; a value that cannot be used stops the command at once, with
the variable's or flag's name (a usage error). Results go to ``BENCH_OUTPUT_DIR``, by default ``build/bench`` (``build/bench-quick``
for the quick mode, so that it never overwrites a full run's). This module is the command line;
the run is ``stream.localstack.bench_run``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from stream.composition import REPO_ROOT
from stream.localstack.bench_results import write
from stream.localstack.bench_run import Bench, Plan
from stream.localstack.bench_watch import BenchError

__all__ = ["Bench", "Plan", "main", "plan_of"]

QUICK = {"events": 3_000, "long_events": 4_000, "paced_s": 5.0}
FULL = {"events": 200_000, "long_events": 1_000_000, "paced_s": 60.0}
_FLAGS = {"events": "--events", "long_events": "--long-events", "paced_s": "--paced-seconds"}
_SWITCH = {"": False, "0": False, "false": False, "no": False, "off": False, "1": True, "true": True, "yes": True, "on": True}


def plan_of(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Plan:
    """The run's sizes: the flags, else the ``BENCH_*`` variables, else the mode's defaults (the
    quick mode ignores the size variables: a test must not inherit a full run's sizes)."""
    env = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, help="card events preloaded (BENCH_EVENTS)")
    parser.add_argument("--long-events", type=int, help="card events of the long run (BENCH_LONG_EVENTS)")
    parser.add_argument("--paced-seconds", type=float, help="seconds published at 1,000 events/s (BENCH_PACED_S)")
    parser.add_argument("--seed", type=int, help="seed of the logs (BENCH_SEED)")
    parser.add_argument("--output", type=Path, help="where results.json and results.png go (BENCH_OUTPUT_DIR)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (process logs, data)")
    args = parser.parse_args(argv)
    quick = env.get("BENCH_QUICK", "").strip().lower()
    if quick not in _SWITCH:
        parser.error(f"BENCH_QUICK={env['BENCH_QUICK']!r} is neither on (1, true, yes, on) nor off (0, false, no, off, empty)")
    args.quick = args.quick or _SWITCH[quick]
    if args.seed is None:
        try:
            args.seed = int(env.get("BENCH_SEED", "1").replace("_", ""))
        except ValueError:
            parser.error(f"BENCH_SEED={env['BENCH_SEED']!r} is not a whole number")
    defaults = QUICK if args.quick else FULL
    variables = {} if args.quick else {"events": "BENCH_EVENTS", "long_events": "BENCH_LONG_EVENTS", "paced_s": "BENCH_PACED_S"}

    def size(name: str, given: Any) -> float:
        if given is not None:
            if not math.isfinite(given):
                parser.error(f"{_FLAGS[name]} {given} is not a finite number")
            return float(given)
        if name not in variables or not env.get(variables[name]):
            return float(defaults[name])
        try:
            value = float(env[variables[name]].replace("_", ""))
        except ValueError:
            parser.error(f"{variables[name]}={env[variables[name]]!r} is not a number")
        if not math.isfinite(value):
            parser.error(f"{variables[name]}={env[variables[name]]!r} is not a finite number")
        return value

    output = args.output or env.get("BENCH_OUTPUT_DIR") or REPO_ROOT / "build" / ("bench-quick" if args.quick else "bench")
    plan = Plan(
        events=int(size("events", args.events)),
        long_events=int(size("long_events", args.long_events)),
        seed=args.seed,
        paced_s=size("paced_s", args.paced_seconds),
        quick=args.quick,
        output_dir=Path(output),
        keep=args.keep,
    )
    if plan.events < 500 or plan.long_events < 1_000 or plan.paced_s < 1:
        parser.error("the sizes must be at least 500 events, 1,000 long-run events and 1 paced second")
    return plan


def _interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: through every finally


def main(argv: list[str] | None = None) -> None:
    plan = plan_of(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even when started with SIGINT ignored
    # The bench's own clients ask for topics just created; aiokafka logs each retry as an error.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # Not pytest's tmp_path nor a folder of the repository: the Postgres server may run as another user.
    work_dir = Path(tempfile.mkdtemp(prefix="cashback-bench-"))
    work_dir.chmod(0o755)
    code, line = 1, None
    try:
        results = Bench(plan, work_dir).run()
        print(results.table(), flush=True)
        data, chart = write(results, plan.output_dir)
        print(f"results: {data} and {chart}", flush=True)
        if not results.correctness.passed:
            print("bench FAILED: the ledger in Postgres differs from the pure engine's on the same log", file=sys.stderr)
        code, line = (0 if results.correctness.passed else 1), results.line()
    except BenchError as error:
        print(f"bench FAILED: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench interrupted: everything it started is stopped", file=sys.stderr)
        code = 130
    finally:
        if plan.keep or code == 1:  # a failed run keeps its processes' logs
            print(f"run directory kept: {work_dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if line is not None:
        print(line, flush=True)  # the last line, whatever happened before it
    raise SystemExit(code)


if __name__ == "__main__":
    main()
