"""One command line for every process: ``cashback <command>`` (or ``python -m stream <command>``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine

from schemas.codec import Codec
from stream.settings import ConfigError, Settings, documentation_table
from topics.catalogue import Catalogue, catalogue

log = logging.getLogger("cashback")

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_OFFERS = REPO_ROOT / "deploy" / "offers" / "example.yaml"


def build_codec(settings: Settings) -> Codec:
    return Codec.configured(settings.schema_registry_url)


def topics_of(settings: Settings) -> Catalogue:
    return catalogue(settings.topic_prefix, settings.topic_partitions)


async def create_topics(settings: Settings) -> list[str]:
    """The catalogue's topics and the matcher's table changelogs."""
    from topics.admin import ensure_topics
    from topics.catalogue import table_changelogs

    return await ensure_topics(
        settings.kafka_bootstrap_servers,
        (*topics_of(settings).all(), *table_changelogs(settings.app_id, settings.topic_partitions)),
        settings.topic_replication_factor,
        **settings.kafka_client_options(),
    )


async def migrate_database(settings: Settings) -> list[str]:
    import asyncpg

    from stream import ledger

    connection = await asyncpg.connect(settings.database_url, timeout=30)
    try:
        return await ledger.migrate(connection)
    finally:
        await connection.close()


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop_event)`` on uvloop; SIGINT/SIGTERM set the event for a clean stop."""
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(runner())


# --- commands -----------------------------------------------------------------------------------


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    import faust
    import uvloop

    from stream import metrics
    from stream.matcher import Matcher

    asyncio.run(create_topics(settings))
    asyncio.run(migrate_database(settings))  # campaign budgets live in Postgres
    metrics.serve(settings.metrics_port)
    uvloop.install()
    matcher = Matcher(settings, build_codec(settings))
    if args.with_sink:
        from stream.sink import Sink

        sink = Sink(settings, matcher.topics, matcher.codec)
        matcher.app.task(sink.run)
    worker = faust.Worker(matcher.app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()


def cmd_sink(settings: Settings, args: argparse.Namespace) -> None:
    from stream import metrics
    from stream.sink import Sink

    async def main(stop: asyncio.Event) -> None:
        await create_topics(settings)
        await migrate_database(settings)
        metrics.serve(settings.metrics_port)
        sink = Sink(settings, topics_of(settings), build_codec(settings))
        task = asyncio.create_task(sink.run())
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        sink.stop()
        await task

    run_until_signalled(main)


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from stream.api import create_app

    asyncio.run(migrate_database(settings))
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        loop="uvloop",
        access_log=False,
    )


def cmd_topics(settings: Settings, args: argparse.Namespace) -> None:
    created = asyncio.run(create_topics(settings))
    print(f"created: {', '.join(created) if created else 'none (all exist)'}")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    applied = asyncio.run(migrate_database(settings))
    print(f"applied: {', '.join(applied) if applied else 'none (up to date)'}")


def cmd_offers(settings: Settings, args: argparse.Namespace) -> None:
    from stream.offer_admin import publish_offers, remove_offers
    from stream.offers import load_offers_file

    codec, topic = build_codec(settings), topics_of(settings).offers.name
    if args.action == "load":
        offers = load_offers_file(Path(args.file))
        asyncio.run(create_topics(settings))
        asyncio.run(publish_offers(settings, codec, topic, offers))
        print(f"published {len(offers)} offers to {topic}: {', '.join(o.offer_id for o in offers)}")
    elif args.action == "check":
        offers = load_offers_file(Path(args.file))
        print(f"{len(offers)} valid offers")
    else:
        asyncio.run(remove_offers(settings, topic, args.offer_ids))
        print(f"removed {', '.join(args.offer_ids)}")


def cmd_accounts(settings: Settings, args: argparse.Namespace) -> None:
    from stream.accounts import publish_activation, publish_segments

    codec, topics = build_codec(settings), topics_of(settings)
    if args.action == "segments":
        asyncio.run(publish_segments(settings, codec, topics.profiles.name, args.account_id, args.segments))
        print(f"{args.account_id}: segments {', '.join(sorted(set(args.segments))) or 'none'}")
    else:
        active = args.action == "activate"
        at = asyncio.run(publish_activation(settings, codec, topics.activations.name, args.account_id, args.offer_id, active))
        print(f"{args.account_id}: offer {args.offer_id} {'activated' if active else 'deactivated'} at {at.isoformat()}")


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> None:
    from stream.simulate import Scenario, publish

    asyncio.run(create_topics(settings))
    scenario = Scenario(seed=args.seed, accounts=args.accounts, purchases=args.purchases, bad_ratio=args.bad_ratio)
    run_until_signalled(
        lambda stop: publish(settings, build_codec(settings), topics_of(settings), scenario, args.rate, stop, not args.quiet)
    )


def cmd_backtest(settings: Settings | None, args: argparse.Namespace) -> None:
    from datetime import timedelta

    from stream.backtest import replay, report
    from stream.offers import OfferBook, load_offers_file
    from stream.simulate import Scenario, generate

    scenario = Scenario(seed=args.seed, accounts=args.accounts, purchases=args.purchases, bad_ratio=0)
    offers = OfferBook.of(load_offers_file(Path(args.offers)))
    until = scenario.start + timedelta(seconds=args.purchases * scenario.step_seconds) + timedelta(days=args.days_after)
    print(f"back-test of {args.offers} over {args.purchases} simulated purchases (seed {args.seed}), time passed to {until:%Y-%m-%d}")
    print(report(replay(generate(scenario, build_codec(settings) if settings else None), offers, until)))


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> None:
    from stream.deadletter_admin import show_dead_letters

    asyncio.run(show_dead_letters(settings, build_codec(settings), topics_of(settings).dead_letters.name, args.limit))


def cmd_local(settings: Settings, args: argparse.Namespace) -> None:
    from stream.localstack.stack import LocalStack

    LocalStack(
        rate=args.rate, purchases=args.purchases, duration_s=args.duration, keep_data=args.keep_data
    ).run()


def cmd_config(settings: Settings | None, args: argparse.Namespace) -> None:
    print(documentation_table())


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cashback", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the matcher (Faust worker)")
    worker.add_argument("--with-sink", action="store_true", help="also run the sink in this process")
    worker.set_defaults(run=cmd_worker)
    commands.add_parser("sink", help="write accruals to the Postgres ledger").set_defaults(run=cmd_sink)
    commands.add_parser("api", help="serve the balance API").set_defaults(run=cmd_api)
    commands.add_parser("topics", help="create the catalogue's topics").set_defaults(run=cmd_topics)
    commands.add_parser("migrate", help="apply the ledger's schema migrations").set_defaults(run=cmd_migrate)

    offers = commands.add_parser("offers", help="validate, publish or remove offers")
    offer_actions = offers.add_subparsers(dest="action", required=True)
    for action, text in (("load", "validate and publish a YAML file"), ("check", "validate a YAML file only")):
        sub = offer_actions.add_parser(action, help=text)
        sub.add_argument("file", nargs="?", default=str(EXAMPLE_OFFERS))
    remove = offer_actions.add_parser("remove", help="publish tombstones for offer ids")
    remove.add_argument("offer_ids", nargs="+")
    offers.set_defaults(run=cmd_offers)

    accounts = commands.add_parser("accounts", help="set an account's segments, activate or deactivate an offer")
    account_actions = accounts.add_subparsers(dest="action", required=True)
    segments = account_actions.add_parser("segments", help="replace the account's segments")
    segments.add_argument("account_id")
    segments.add_argument("segments", nargs="*")
    for action in ("activate", "deactivate"):
        sub = account_actions.add_parser(action, help=f"{action} an offer for the account from now on")
        sub.add_argument("account_id")
        sub.add_argument("offer_id")
    accounts.set_defaults(run=cmd_accounts)

    simulate = commands.add_parser("simulate", help="publish a seeded card-event stream")
    simulate.add_argument("--rate", type=float, default=200.0, help="events per second (0: as fast as possible)")
    simulate.add_argument("--purchases", type=int, default=10_000, help="purchases to simulate (0: endless)")
    simulate.add_argument("--accounts", type=int, default=1_000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--bad-ratio", type=float, default=0.002, help="share of deliberately bad messages")
    simulate.add_argument("--quiet", action="store_true", help="no progress display")
    simulate.set_defaults(run=cmd_simulate)

    backtest = commands.add_parser("backtest", help="run offers over a simulated stream through the rules engine, no broker")
    backtest.add_argument("--offers", default=str(EXAMPLE_OFFERS))
    backtest.add_argument("--purchases", type=int, default=10_000)
    backtest.add_argument("--accounts", type=int, default=1_000)
    backtest.add_argument("--seed", type=int, default=1)
    backtest.add_argument("--days-after", type=int, default=60, help="time passed after the last purchase")
    backtest.set_defaults(run=cmd_backtest)

    dead = commands.add_parser("dead-letters", help="print the dead-letter topic")
    dead.add_argument("--limit", type=int, default=50)
    dead.set_defaults(run=cmd_dead_letters)

    local = commands.add_parser("local", help="run the whole system on the embedded local stack")
    local.add_argument("--rate", type=float, default=50.0, help="simulator events per second")
    local.add_argument("--purchases", type=int, default=0, help="purchases to simulate (0: endless)")
    local.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    local.add_argument("--keep-data", action="store_true", help="keep the run's data directory")
    local.set_defaults(run=cmd_local)

    commands.add_parser("config", help="print the environment variables").set_defaults(run=cmd_config)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.run in (cmd_config, cmd_backtest):  # need no servers, read no environment
        args.run(None, args)
        return
    try:
        settings = Settings.from_env()
        settings.kafka_client_options()
    except ConfigError as error:
        print(f"cashback: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.run(settings, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
