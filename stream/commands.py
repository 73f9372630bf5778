"""What each ``cashback`` command does, once ``stream.cli`` has parsed its arguments: one function
per command, taking the composition root (``System``; None for ``backtest`` and ``config``, which
read no environment and need no servers) and the parsed arguments. A command that runs once prints
its result; bad input raises ``UsageError``, which the command line prints as one line.
"""

from __future__ import annotations

import argparse
import asyncio

from stream.composition import System, UsageError, read_abuse_rules, read_offers, run_until_signalled


def worker(system: System, args: argparse.Namespace) -> None:
    system.run_worker(with_sink=args.with_sink)


def sink(system: System, args: argparse.Namespace) -> None:
    system.run_sink()


def api(system: System, args: argparse.Namespace) -> None:
    system.run_api()


def topics(system: System, args: argparse.Namespace) -> None:
    created = asyncio.run(system.create_topics())
    print(f"created: {', '.join(created) if created else 'none (all exist)'}")


def migrate(system: System, args: argparse.Namespace) -> None:
    applied = asyncio.run(system.migrate_database())
    print(f"applied: {', '.join(applied) if applied else 'none (up to date)'}")


def offers(system: System, args: argparse.Namespace) -> None:
    from stream.offer_admin import publish_offers, remove_offers

    topic = system.catalogue.offers.name
    if args.action == "load":
        loaded = read_offers(args.file)
        if not loaded:
            raise UsageError(f"offers file {args.file}: no offers in it (nothing to publish)")
        asyncio.run(system.create_topics())
        asyncio.run(publish_offers(system.settings, system.codec, topic, loaded))
        print(f"published {len(loaded)} offers to {topic}: {', '.join(o.offer_id for o in loaded)}")
    elif args.action == "check":
        print(f"{len(read_offers(args.file))} valid offers in {args.file}")
    else:
        asyncio.run(remove_offers(system.settings, topic, args.offer_ids))
        print(f"removed {', '.join(args.offer_ids)}")


def accounts(system: System, args: argparse.Namespace) -> None:
    from stream.account_messages import publish_activation, publish_segments

    settings, codec, catalogue = system.settings, system.codec, system.catalogue
    if args.action == "segments":
        language = args.language
        asyncio.run(publish_segments(settings, codec, catalogue.profiles, args.account_id, args.segments, language))
        told = f", notifications in {language}" if language else ""
        print(f"{args.account_id}: segments {', '.join(sorted(set(args.segments))) or 'none'}{told}")
    else:
        active = args.action == "activate"
        at = asyncio.run(publish_activation(settings, codec, catalogue.activations, args.account_id, args.offer_id, active))
        print(f"{args.account_id}: offer {args.offer_id} {'activated' if active else 'deactivated'} at {at.isoformat()}")


async def _ledger_up_to_date(system: System) -> None:
    """UsageError unless Postgres answers with every migration applied (the GDPR commands never
    change the schema themselves: ``migrate``, the sink or the API do)."""
    import asyncpg

    from stream.composition import masked_dsn
    from stream.store.migrations import pending_migrations

    dsn = system.settings.database_url
    try:
        connection = await asyncpg.connect(dsn, timeout=30)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise UsageError(f"cannot connect to Postgres at {masked_dsn(dsn)}: {str(error) or type(error).__name__}") from None
    try:
        missing = await pending_migrations(connection)
    finally:
        await connection.close()
    if missing:
        raise UsageError(f"the ledger's schema misses {', '.join(missing)}: run `cashback migrate` first")


def gdpr(system: System, args: argparse.Namespace) -> None:
    """``gdpr export ACCOUNT``: the account's data as JSON on stdout. ``gdpr erase ACCOUNT --reason``:
    its erasure (stream.gdpr), progress on stderr, the erasure log's row on stdout."""
    import sys

    from stream.gdpr import AccountErased, ErasureIncomplete, NothingHeld, erase_account, export_account

    settings, codec, topics = system.settings, system.codec, system.catalogue
    asyncio.run(_ledger_up_to_date(system))

    async def export() -> str:
        import asyncpg

        connection = await asyncpg.connect(settings.database_url, timeout=30)
        try:
            return (await export_account(settings, codec, topics, connection, args.account_id)).model_dump_json(indent=2)
        finally:
            await connection.close()

    if args.action == "export":
        try:
            print(asyncio.run(export()))
        except AccountErased:
            raise UsageError(f"account {args.account_id} was erased: no personal data of it is held") from None
        except NothingHeld:
            raise UsageError(f"account {args.account_id}: nothing is held about it") from None
        return
    asyncio.run(system.create_topics())  # the erasures topic, on a cluster that predates it
    try:
        report = asyncio.run(
            erase_account(
                settings,
                codec,
                topics,
                args.account_id,
                args.reason,
                args.operator,
                args.timeout,
                say=lambda line: print(f"{args.account_id}: {line}", file=sys.stderr),
            )
        )
    except (ErasureIncomplete, ValueError) as error:
        raise UsageError(f"account {args.account_id}: {error}") from None
    logged = report.erasure
    print(
        f"erasure {logged.erasure_id} at {logged.erased_at.isoformat()} by {logged.erased_by} ({logged.reason}): "
        f"pseudonym {logged.pseudonym or 'none (the ledger held no row of the account)'}; ledger rows {logged.ledger_rows}, "
        f"purchases not earned {logged.not_earned_rows}, balances {logged.balance_rows}, refused entries "
        f"{logged.conflict_rows}, budget grants {logged.budget_rows}, reconciliation items {logged.reconciliation_rows}; "
        f"{report.tombstones} tombstones published"
    )


def payouts(system: System, args: argparse.Namespace) -> None:
    """``payouts run [--run-id ID]``: a payout run asked now; ``payouts open-wallets [--account ID ...]``: the
    wallets of states stored before wallets were kept, opened from the ledger (stream.payout_runs); one line on stdout."""
    from datetime import UTC, datetime

    from stream.core.payouts import run_id_at
    from stream.payout_runs import ask, open_wallets, run_time

    asyncio.run(_ledger_up_to_date(system))  # the ledger says whom to ask
    asyncio.run(system.create_topics())  # the payout topics, on a cluster that predates them
    topic = system.catalogue.payout_runs
    if args.action == "open-wallets":
        now = datetime.now(UTC)
        opening_id = args.opening_id or f"open-{run_id_at(now)}"
        sent = asyncio.run(
            open_wallets(system.settings, system.codec, topic, opening_id, now, args.operator, args.accounts or None)
        )
        print(
            f"wallet opening {opening_id}: sent for {sent} account(s) (applied by the workers to wallets not known only;"
            " an account whose recent events moved no money is marked instead: run it again once the sink has caught up)"
        )
        return
    run_id = args.run_id or run_id_at(datetime.now(UTC))
    now = run_time(run_id) or datetime.now(UTC)
    asked = asyncio.run(ask(system.settings, system.codec, topic, run_id, now))
    print(f"payout run {run_id}: asked of {asked} account(s) with AVAILABLE cash in the ledger")


def donations(system: System, args: argparse.Namespace) -> None:
    """``donations remit [--run-id ID]``: a donation remittance run now (stream.donations); one line on stdout."""
    from datetime import UTC, datetime

    from stream.core.money import format_minor
    from stream.core.payouts import run_id_at
    from stream.donations import remit
    from stream.payout_runs import run_time

    asyncio.run(_ledger_up_to_date(system))  # the ledger says what was given
    asyncio.run(system.create_topics())  # the donation topics, on a cluster that predates them
    run_id = args.run_id or run_id_at(datetime.now(UTC))
    at = run_time(run_id) or datetime.now(UTC)
    report = asyncio.run(remit(system.settings, system.codec, system.catalogue.donation_payouts, run_id, at))
    amounts = ", ".join(format_minor(amount, currency) for currency, amount in sorted(report.amounts.items())) or "nothing"
    print(f"donation remittance run {run_id}: {report.recorded} remittance(s) recorded ({amounts}), {report.published} sent")


def statement(system: System, args: argparse.Namespace) -> None:
    """``statement --sponsor ID --month YYYY-MM``: a sponsor's monthly statement (stream.statements) on stdout."""
    from stream.statements import read, render

    asyncio.run(_ledger_up_to_date(system))
    found = asyncio.run(read(system.settings.database_url, args.sponsor, args.month))
    if found is None and asyncio.run(_live_sponsor(system, args.sponsor)):
        found = asyncio.run(read(system.settings.database_url, args.sponsor, args.month, known=True))
    if found is None:
        raise UsageError(f"sponsor {args.sponsor}: funds no live offer and no ledger entry (bank: the bank's own budget)")
    print(render(found))


async def _live_sponsor(system: System, sponsor_id: str, timeout_s: float = 30.0) -> bool:
    """Whether a live offer names ``sponsor_id`` (as the API answers it): the offers topic read to its end."""
    from stream.offer_mirror import OfferMirror

    settings = system.settings
    mirror = OfferMirror(
        system.catalogue.offers.name, system.codec, settings.kafka_bootstrap_servers, **settings.kafka_client_options()
    )
    reading = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.ready.wait(), timeout_s)
    except TimeoutError:
        raise UsageError(f"cannot read the offers topic at {settings.kafka_bootstrap_servers} within {timeout_s:.0f} s") from None
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    return any(offer.sponsor_id == sponsor_id for offer in mirror.book.offers)


def simulate(system: System, args: argparse.Namespace) -> None:
    from stream.simulate import Scenario, publish

    asyncio.run(system.create_topics())
    scenario = Scenario(seed=args.seed, accounts=args.accounts, purchases=args.purchases, bad_ratio=args.bad_ratio)
    run_until_signalled(
        lambda stop: publish(system.settings, system.codec, system.catalogue, scenario, args.rate, stop, not args.quiet)
    )


def backtest(system: System | None, args: argparse.Namespace) -> None:
    from datetime import timedelta

    from stream.backtest import replay, report
    from stream.core.offers import OfferBook
    from stream.simulate import Scenario, generate

    scenario = Scenario(seed=args.seed, accounts=args.accounts, purchases=args.purchases, bad_ratio=0)
    book = OfferBook.of(read_offers(args.offers))
    until = scenario.start + timedelta(seconds=args.purchases * scenario.step_seconds) + timedelta(days=args.days_after)
    print(
        f"back-test of {args.offers} over {args.purchases} simulated purchases (seed {args.seed}), time passed to {until:%Y-%m-%d}"
    )
    rules = read_abuse_rules(args.abuse_rules, variable=None)
    print(report(replay(generate(scenario, system.codec if system else None), book, until, abuse=rules)))


def abuse_rules(system: System, args: argparse.Namespace) -> None:
    path = args.file or system.settings.abuse_rules_file
    rules = read_abuse_rules(path, variable=None if args.file else "ABUSE_RULES_FILE")
    print(f"abuse rules of {path or 'the defaults (no ABUSE_RULES_FILE)'}: a reward they flag is held for review")
    print("\n".join(f"  {line}" for line in rules.describe()))


def dead_letters(system: System, args: argparse.Namespace) -> None:
    from stream.deadletter_admin import NoDeadLetterTopic, format_replay, replay_dead_letters, show_dead_letters

    settings, topic = system.settings, system.catalogue.dead_letters.name
    if args.action == "replay" and not args.reason:
        raise UsageError(
            "dead-letters replay: name the dead letters to replay with --reason (repeatable), once their cause is fixed"
        )
    try:
        if args.action == "replay":
            reasons = frozenset(args.reason)
            replay = replay_dead_letters(settings, system.codec, system.catalogue, reasons, args.since, args.dry_run)
            print(format_replay(asyncio.run(replay), args.dry_run))
        else:
            asyncio.run(show_dead_letters(settings, system.codec, topic, args.limit))
    except NoDeadLetterTopic:
        raise UsageError(
            f"Kafka at {settings.kafka_bootstrap_servers} has no topic {topic} (is TOPIC_PREFIX right? "
            "`topics` or the first worker creates it)"
        ) from None
    except TimeoutError as error:
        raise UsageError(str(error)) from None


def local(system: System, args: argparse.Namespace) -> None:
    from stream.localstack.stack import LocalStack

    LocalStack(
        rate=args.rate,
        purchases=args.purchases,
        duration_s=args.duration,
        keep_data=args.keep_data,
        offers=args.offers,
        simulator=args.simulator,
    ).run()


def token(system: System, args: argparse.Namespace) -> None:
    from pathlib import Path

    from stream.localstack.tokens import SigningKey, mint

    settings = system.settings
    issuer = args.issuer or settings.api_auth_issuer
    if not issuer:
        raise UsageError("no issuer: pass --issuer or set API_AUTH_ISSUER")
    try:
        key = SigningKey.from_pem(Path(args.key).read_bytes(), kid=args.kid)
    except FileNotFoundError:
        raise UsageError(f"key file {args.key}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"key file {args.key}: is a directory, not a PEM file") from None
    except OSError as error:
        raise UsageError(f"key file {args.key}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise UsageError(f"key file {args.key}: not a usable private key ({error})") from None
    audience = args.audience or settings.api_auth_audience
    print(
        mint(
            key,
            issuer=issuer,
            audience=audience,
            scopes=args.scopes,
            accounts=args.accounts,
            subject=args.subject,
            ttl_s=args.ttl,
        )
    )


def config(system: System | None, args: argparse.Namespace) -> None:
    from stream.settings import documentation_table

    print(documentation_table())
