"""One command line for every process: ``cashback <command>`` (or ``python -m stream <command>``).

Bad input (an argument, a file, an offer, the configuration, a server that cannot be reached)
stops a command with one line on stderr and exit code 2, never a traceback.

This module parses the arguments, builds the composition root (``stream.composition.System``)
from the environment, hands both to the command's function in ``stream.commands`` and turns the
operator's errors into that one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from stream import commands
from stream.composition import EXAMPLE_OFFERS, System, UsageError
from stream.settings import ConfigError

# --- argument types -----------------------------------------------------------------------------


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


def _reason(text: str) -> str:
    """An argparse type: some text, not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text.strip()


def _sponsor(text: str) -> str:
    """An argparse type: ``bank``, or a merchant sponsor's id (an offer's ``sponsor_id``)."""
    from stream.store.sponsor_statements import is_sponsor_id

    if not is_sponsor_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not bank nor a sponsor id (1 to 64 letters, digits, '.', '_', '-')")
    return text


def _month(text: str) -> str:
    """An argparse type: a calendar month, ``YYYY-MM``."""
    from stream.store.sponsor_statements import MonthError, month_bounds

    try:
        month_bounds(text)
    except MonthError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _run_id(text: str) -> str:
    """An argparse type: a payout run's id."""
    from stream.payout_runs import RunIdError, check_run_id

    try:
        return check_run_id(text)
    except RunIdError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's numeric user)
        return "unknown"


def _dead_letter_reason(text: str) -> str:
    from stream.deadletter_admin import REASONS

    if text not in REASONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead-letter reason; one of: {', '.join(sorted(REASONS))}")
    return text


def _utc_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time (ISO 8601, such as 2026-12-01T08:00)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


POSITIVE = _number(int, 1, what="a whole number of 1 or more")
COUNT = _number(int, 0, what="a whole number of 0 or more")
RATE = _number(float, 0, 1e9, what="a rate of 0 or more")
RATIO = _number(float, 0, 1, what="a share between 0 and 1")
SECONDS = _number(float, 0.1, 1e9, what="a duration in seconds (0.1 or more)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cashback", description=__doc__.rpartition("\n\n")[0])
    subcommands = root.add_subparsers(dest="command", required=True)

    worker = subcommands.add_parser("worker", help="run the matcher (Faust worker)")
    worker.add_argument("--with-sink", action="store_true", help="also run the sink in this process")
    worker.set_defaults(run=commands.worker)
    subcommands.add_parser("sink", help="write accruals to the Postgres ledger").set_defaults(run=commands.sink)
    subcommands.add_parser("api", help="serve the balance API").set_defaults(run=commands.api)
    subcommands.add_parser("topics", help="create the catalogue's topics").set_defaults(run=commands.topics)
    subcommands.add_parser("migrate", help="apply the ledger's schema migrations").set_defaults(run=commands.migrate)

    offers = subcommands.add_parser("offers", help="validate, publish or remove offers")
    offer_actions = offers.add_subparsers(dest="action", required=True)
    for action, text in (("load", "validate and publish a YAML file"), ("check", "validate a YAML file only")):
        sub = offer_actions.add_parser(action, help=text)
        sub.add_argument("file", nargs="?", default=str(EXAMPLE_OFFERS))
    remove = offer_actions.add_parser("remove", help="publish tombstones for offer ids")
    remove.add_argument("offer_ids", nargs="+", type=_text)
    offers.set_defaults(run=commands.offers)

    accounts = subcommands.add_parser("accounts", help="set an account's segments, activate or deactivate an offer")
    account_actions = accounts.add_subparsers(dest="action", required=True)
    segments = account_actions.add_parser("segments", help="replace the account's segments")
    segments.add_argument("account_id", type=_text)
    segments.add_argument("segments", nargs="*", type=_text)
    segments.add_argument(
        "--language", choices=("en", "fr"), default=None, help="the language of its notifications (default: the bank's)"
    )
    for action in ("activate", "deactivate"):
        sub = account_actions.add_parser(action, help=f"{action} an offer for the account from now on")
        sub.add_argument("account_id", type=_text)
        sub.add_argument("offer_id", type=_text)
    accounts.set_defaults(run=commands.accounts)

    gdpr = subcommands.add_parser("gdpr", help="export everything held about an account, or erase it (GDPR)")
    gdpr_actions = gdpr.add_subparsers(dest="action", required=True)
    export = gdpr_actions.add_parser("export", help="print the account's data as JSON")
    export.add_argument("account_id", type=_text)
    erase = gdpr_actions.add_parser(
        "erase", help="tombstone the account in Kafka and pseudonymise its ledger rows (waits for the worker and the sink)"
    )
    erase.add_argument("account_id", type=_text)
    erase.add_argument("--reason", required=True, type=_reason, help="the request's reference (e.g. DSR-2026-0042), never a name")
    erase.add_argument("--operator", type=_reason, default=_operator(), help="who runs it (default: the login name)")
    erase.add_argument("--timeout", type=SECONDS, default=120.0, help="seconds to wait for the worker, then for the sink")
    gdpr.set_defaults(run=commands.gdpr)

    statement = subcommands.add_parser("statement", help="print a sponsor's monthly statement: who pays for the rewards")
    statement.add_argument("--sponsor", required=True, type=_sponsor, help="a merchant sponsor's id, or bank (its own budget)")
    statement.add_argument("--month", required=True, type=_month, help="the calendar month, YYYY-MM (UTC, by event time)")
    statement.set_defaults(run=commands.statement)

    payouts = subcommands.add_parser("payouts", help="pay AVAILABLE cash out to customers' bank accounts")
    payout_actions = payouts.add_subparsers(dest="action", required=True)
    run = payout_actions.add_parser(
        "run", help="ask a payout run now of every account the ledger shows with AVAILABLE cash (the workers decide the amounts)"
    )
    run.add_argument("--run-id", type=_run_id, default=None, help="the run's id (default: now, UTC, 2026-12-03T0200Z)")
    opening = payout_actions.add_parser(
        "open-wallets",
        help="open, from the ledger, the wallets of accounts whose state was stored before wallets were kept",
    )
    opening.add_argument("--account", dest="accounts", action="append", type=_text, default=[], help="only this account (repeat)")
    opening.add_argument("--opening-id", type=_run_id, default=None, help="the opening's id (default: open-<now, UTC>)")
    opening.add_argument("--operator", type=_reason, default=_operator(), help="who runs it (default: the login name)")
    payouts.set_defaults(run=commands.payouts)

    donations = subcommands.add_parser("donations", help="remit customers' donations to the charities (payouts)")
    donation_actions = donations.add_subparsers(dest="action", required=True)
    remit = donation_actions.add_parser(
        "remit", help="gather what each charity is owed per currency from the ledger into payout instructions now"
    )
    remit.add_argument("--run-id", type=_run_id, default=None, help="the run's id (default: now, UTC, 2026-12-03T0200Z)")
    donations.set_defaults(run=commands.donations)

    simulate = subcommands.add_parser("simulate", help="publish a seeded card-event stream")
    simulate.add_argument("--rate", type=RATE, default=200.0, help="events per second (0: as fast as possible)")
    simulate.add_argument("--purchases", type=COUNT, default=10_000, help="purchases to simulate (0: endless)")
    simulate.add_argument("--accounts", type=POSITIVE, default=1_000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--bad-ratio", type=RATIO, default=0.002, help="share of deliberately bad messages")
    simulate.add_argument("--quiet", action="store_true", help="no progress display")
    simulate.set_defaults(run=commands.simulate)

    backtest = subcommands.add_parser("backtest", help="run offers over a simulated stream through the rules engine, no broker")
    backtest.add_argument("--offers", default=str(EXAMPLE_OFFERS))
    backtest.add_argument("--purchases", type=POSITIVE, default=10_000)
    backtest.add_argument("--accounts", type=POSITIVE, default=1_000)
    backtest.add_argument("--seed", type=int, default=1)
    backtest.add_argument("--days-after", type=COUNT, default=60, help="time passed after the last purchase")
    backtest.add_argument("--abuse-rules", metavar="FILE", help="the abuse rules' YAML file (default: their defaults)")
    backtest.set_defaults(run=commands.backtest)

    abuse = subcommands.add_parser("abuse-rules", help="check an abuse rules file and print the rules in effect")
    abuse.add_argument("file", nargs="?", help="the YAML file (default: ABUSE_RULES_FILE, else the documented defaults)")
    abuse.set_defaults(run=commands.abuse_rules)

    dead = subcommands.add_parser("dead-letters", help="print the dead-letter topic, or replay dead letters")
    dead.add_argument(
        "action",
        nargs="?",
        choices=("show", "replay"),
        default="show",
        help="show (default): the newest dead letters; replay: publish those of --reason again on their source topics",
    )
    dead.add_argument("--limit", type=POSITIVE, default=50, help="show: the newest N dead letters")
    dead.add_argument(
        "--reason",
        action="append",
        type=_dead_letter_reason,
        default=[],
        help="replay: the dead letters of this reason (repeatable)",
    )
    dead.add_argument(
        "--since", type=_utc_time, help="replay: only dead letters written at or after this time (ISO 8601, UTC if no offset)"
    )
    dead.add_argument("--dry-run", action="store_true", help="replay: list what would be replayed, publish nothing")
    dead.set_defaults(run=commands.dead_letters)

    local = subcommands.add_parser("local", help="run the whole system on the embedded local stack")
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
    local.set_defaults(run=commands.local)

    token = subcommands.add_parser(
        "token",
        help="sign a bearer token for the balance API with a private key file (the local stack's, or a test key)",
    )
    token.add_argument("--key", required=True, metavar="FILE", help="the private key (PEM: ES256 P-256, RS256 or Ed25519)")
    token.add_argument("--kid", type=_text, help="the key id in the API's JWKS (default: the key's RFC 7638 thumbprint)")
    token.add_argument("--issuer", type=_text, help="the iss claim (default: API_AUTH_ISSUER)")
    token.add_argument("--audience", type=_text, help="the aud claim (default: API_AUTH_AUDIENCE)")
    token.add_argument(
        "--account", dest="accounts", action="append", type=_text, default=[], help="an account it acts for (repeat)"
    )
    token.add_argument("--scope", dest="scopes", action="append", type=_text, default=[], help="a scope it carries (repeat)")
    token.add_argument("--subject", type=_text, default="cashback-cli", help="the sub claim")
    token.add_argument("--ttl", type=SECONDS, default=3600.0, help="seconds until it expires")
    token.set_defaults(run=commands.token)

    subcommands.add_parser("config", help="print the environment variables").set_defaults(run=commands.config)
    return root


def _operator_error(error: BaseException, system: System | None) -> str | None:
    """The one line to print for an error caused by the operator's input or servers; None for a bug."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from topics.admin import TopicMismatchError

    servers = system.settings.kafka_bootstrap_servers if system else "?"
    if isinstance(error, (UsageError, ConfigError, TopicMismatchError)):
        return str(error)
    if isinstance(error, KafkaConnectionError):
        why = _OneShotNoise.last_connect_failure
        if why and "SaslAuthenticationFailed" in why:
            return f"Kafka at {servers} refused the SASL login (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD): {why}"
        tls = system is not None and system.settings.kafka_security_protocol.endswith("SSL")
        variables = "KAFKA_BOOTSTRAP_SERVERS" + (", KAFKA_SSL_*" if tls else "")
        return f"cannot reach Kafka at {servers} ({variables})" + (f": {why}" if why else "")
    if isinstance(error, KafkaError):
        return f"Kafka at {servers} refused: {error}"
    return None


class _OneShotNoise(logging.Filter):
    """For commands that run once and stop: aiokafka's error per failed connection attempt, and
    the unclosed-client complaint after a failed start, say again what the command's own one-line
    error says (a long-running process keeps them: they tell a broker outage in its log). The last
    connection failure's reason (aiokafka's words: a refused login or TLS handshake, never a
    password) is kept for that line."""

    last_connect_failure: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.startswith("aiokafka") and message.startswith("Unable connect"):
            _OneShotNoise.last_connect_failure = message.partition('": ')[2] or None
            return False
        return not (record.name == "asyncio" and message.startswith("Unclosed AIOKafka"))


ONE_SHOT = ("offers", "accounts", "dead-letters", "topics", "migrate", "gdpr", "statement", "payouts", "donations")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    system: System | None = None
    try:
        if args.run not in (commands.config, commands.backtest):  # those need no servers, read no environment
            system = System.from_env()
            logging.basicConfig(level=system.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            if args.command in ONE_SHOT:
                for handler in logging.getLogger().handlers:
                    handler.addFilter(_OneShotNoise())
        args.run(system, args)
    except KeyboardInterrupt:
        pass
    except Exception as error:
        message = _operator_error(error, system)
        if message is None:
            raise
        print(f"cashback {args.command}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
