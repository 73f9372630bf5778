"""One command line for every process: ``cashback <command>`` (or ``python -m stream <command>``).

Bad input (an argument, a file, an offer, the configuration, a server that cannot be reached)
stops a command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from stream.composition import (
    EXAMPLE_OFFERS,
    UsageError,
    build_codec,
    create_topics,
    migrate_database,
    read_offers,
    run_api,
    run_sink,
    run_until_signalled,
    run_worker,
    topics_of,
)
from stream.settings import ConfigError, Settings, documentation_table

log = logging.getLogger("cashback")


# --- commands -----------------------------------------------------------------------------------


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    run_worker(settings, with_sink=args.with_sink)


def cmd_sink(settings: Settings, args: argparse.Namespace) -> None:
    run_sink(settings)


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    run_api(settings)


def cmd_topics(settings: Settings, args: argparse.Namespace) -> None:
    created = asyncio.run(create_topics(settings))
    print(f"created: {', '.join(created) if created else 'none (all exist)'}")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    applied = asyncio.run(migrate_database(settings))
    print(f"applied: {', '.join(applied) if applied else 'none (up to date)'}")


def cmd_offers(settings: Settings, args: argparse.Namespace) -> None:
    from stream.offer_admin import publish_offers, remove_offers

    topic = topics_of(settings).offers.name
    if args.action == "load":
        offers = read_offers(args.file)
        if not offers:
            raise UsageError(f"offers file {args.file}: no offers in it (nothing to publish)")
        asyncio.run(create_topics(settings))
        asyncio.run(publish_offers(settings, build_codec(settings), topic, offers))
        print(f"published {len(offers)} offers to {topic}: {', '.join(o.offer_id for o in offers)}")
    elif args.action == "check":
        offers = read_offers(args.file)
        print(f"{len(offers)} valid offers in {args.file}")
    else:
        asyncio.run(remove_offers(settings, topic, args.offer_ids))
        print(f"removed {', '.join(args.offer_ids)}")


def cmd_accounts(settings: Settings, args: argparse.Namespace) -> None:
    from stream.account_messages import publish_activation, publish_segments

    codec, topics = build_codec(settings), topics_of(settings)
    if args.action == "segments":
        asyncio.run(publish_segments(settings, codec, topics.profiles, args.account_id, args.segments))
        print(f"{args.account_id}: segments {', '.join(sorted(set(args.segments))) or 'none'}")
    else:
        active = args.action == "activate"
        at = asyncio.run(publish_activation(settings, codec, topics.activations, args.account_id, args.offer_id, active))
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
    from stream.core.offers import OfferBook
    from stream.simulate import Scenario, generate

    scenario = Scenario(seed=args.seed, accounts=args.accounts, purchases=args.purchases, bad_ratio=0)
    offers = OfferBook.of(read_offers(args.offers))
    until = scenario.start + timedelta(seconds=args.purchases * scenario.step_seconds) + timedelta(days=args.days_after)
    print(
        f"back-test of {args.offers} over {args.purchases} simulated purchases (seed {args.seed}), time passed to {until:%Y-%m-%d}"
    )
    print(report(replay(generate(scenario, build_codec(settings) if settings else None), offers, until)))


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> None:
    from stream.deadletter_admin import NoDeadLetterTopic, show_dead_letters

    topic = topics_of(settings).dead_letters.name
    try:
        asyncio.run(show_dead_letters(settings, build_codec(settings), topic, args.limit))
    except NoDeadLetterTopic:
        raise UsageError(
            f"Kafka at {settings.kafka_bootstrap_servers} has no topic {topic} (is TOPIC_PREFIX right? "
            "`topics` or the first worker creates it)"
        ) from None
    except TimeoutError as error:
        raise UsageError(str(error)) from None


def cmd_local(settings: Settings, args: argparse.Namespace) -> None:
    from stream.localstack.stack import LocalStack

    LocalStack(
        rate=args.rate,
        purchases=args.purchases,
        duration_s=args.duration,
        keep_data=args.keep_data,
        offers=args.offers,
        simulator=args.simulator,
    ).run()


def cmd_config(settings: Settings | None, args: argparse.Namespace) -> None:
    print(documentation_table())


def _number(kind: type, low: float | None = None, high: float | None = None, what: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind`` within [low, high]; argparse turns the ValueError into exit code 2."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):  # NaN too
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    convert.__name__ = what or kind.__name__
    return convert


def _text(text: str) -> str:
    """An argparse type: an id, not empty and without spaces."""
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an id (empty or with spaces)")
    return text


POSITIVE = _number(int, 1, what="a whole number of 1 or more")
COUNT = _number(int, 0, what="a whole number of 0 or more")
RATE = _number(float, 0, 1e9, what="a rate of 0 or more")
RATIO = _number(float, 0, 1, what="a share between 0 and 1")
SECONDS = _number(float, 0.1, 1e9, what="a duration in seconds (0.1 or more)")


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
    remove.add_argument("offer_ids", nargs="+", type=_text)
    offers.set_defaults(run=cmd_offers)

    accounts = commands.add_parser("accounts", help="set an account's segments, activate or deactivate an offer")
    account_actions = accounts.add_subparsers(dest="action", required=True)
    segments = account_actions.add_parser("segments", help="replace the account's segments")
    segments.add_argument("account_id", type=_text)
    segments.add_argument("segments", nargs="*", type=_text)
    for action in ("activate", "deactivate"):
        sub = account_actions.add_parser(action, help=f"{action} an offer for the account from now on")
        sub.add_argument("account_id", type=_text)
        sub.add_argument("offer_id", type=_text)
    accounts.set_defaults(run=cmd_accounts)

    simulate = commands.add_parser("simulate", help="publish a seeded card-event stream")
    simulate.add_argument("--rate", type=RATE, default=200.0, help="events per second (0: as fast as possible)")
    simulate.add_argument("--purchases", type=COUNT, default=10_000, help="purchases to simulate (0: endless)")
    simulate.add_argument("--accounts", type=POSITIVE, default=1_000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--bad-ratio", type=RATIO, default=0.002, help="share of deliberately bad messages")
    simulate.add_argument("--quiet", action="store_true", help="no progress display")
    simulate.set_defaults(run=cmd_simulate)

    backtest = commands.add_parser("backtest", help="run offers over a simulated stream through the rules engine, no broker")
    backtest.add_argument("--offers", default=str(EXAMPLE_OFFERS))
    backtest.add_argument("--purchases", type=POSITIVE, default=10_000)
    backtest.add_argument("--accounts", type=POSITIVE, default=1_000)
    backtest.add_argument("--seed", type=int, default=1)
    backtest.add_argument("--days-after", type=COUNT, default=60, help="time passed after the last purchase")
    backtest.set_defaults(run=cmd_backtest)

    dead = commands.add_parser("dead-letters", help="print the dead-letter topic")
    dead.add_argument("--limit", type=POSITIVE, default=50, help="the newest N dead letters")
    dead.set_defaults(run=cmd_dead_letters)

    local = commands.add_parser("local", help="run the whole system on the embedded local stack")
    local.add_argument(
        "--offers",
        metavar="FILE|examples|none",
        default=None,
        help="offers to publish before the start: a YAML file, the example offers, or none "
        "(default: the examples when the stack starts its own Kafka and Postgres, else none)",
    )
    local.add_argument(
        "--simulator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the simulator (default: on when the stack starts its own Kafka and Postgres, else off)",
    )
    local.add_argument("--rate", type=RATE, default=50.0, help="simulator events per second")
    local.add_argument("--purchases", type=COUNT, default=0, help="purchases to simulate (0: endless)")
    local.add_argument("--duration", type=SECONDS, default=None, help="stop after this many seconds")
    local.add_argument("--keep-data", action="store_true", help="keep the run's data directory")
    local.set_defaults(run=cmd_local)

    commands.add_parser("config", help="print the environment variables").set_defaults(run=cmd_config)
    return root


def _operator_error(error: BaseException, settings: Settings | None) -> str | None:
    """The one line to print for an error caused by the operator's input or servers; None for a bug."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from topics.admin import TopicMismatchError

    servers = settings.kafka_bootstrap_servers if settings else "?"
    if isinstance(error, (UsageError, ConfigError, TopicMismatchError)):
        return str(error)
    if isinstance(error, KafkaConnectionError):
        return f"cannot reach Kafka at {servers} (KAFKA_BOOTSTRAP_SERVERS)"
    if isinstance(error, KafkaError):
        return f"Kafka at {servers} refused: {error}"
    return None


class _OneShotNoise(logging.Filter):
    """For commands that run once and stop: aiokafka's error per failed connection attempt, and
    the unclosed-client complaint after a failed start, say again what the command's own one-line
    error says (a long-running process keeps them: they tell a broker outage in its log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            (record.name.startswith("aiokafka") and message.startswith("Unable connect"))
            or (record.name == "asyncio" and message.startswith("Unclosed AIOKafka"))
        )


ONE_SHOT = ("offers", "accounts", "dead-letters", "topics", "migrate")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings: Settings | None = None
    try:
        if args.run not in (cmd_config, cmd_backtest):  # those need no servers, read no environment
            settings = Settings.from_env()
            settings.kafka_client_options()
            logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            if args.command in ONE_SHOT:
                for handler in logging.getLogger().handlers:
                    handler.addFilter(_OneShotNoise())
        args.run(settings, args)
    except KeyboardInterrupt:
        pass
    except Exception as error:
        message = _operator_error(error, settings)
        if message is None:
            raise
        print(f"cashback {args.command}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
