"""The topic catalogue: every topic's name, partitions, key, value schema and retention, defined once.

Input and output topics are keyed by ``account_id`` and co-partitioned (same partition count), so
every event of one account is handled by one worker, in order within its topic. Offers and
activations are compacted and read whole by every worker. ``account_partition`` is the one rule
that says where an account's messages go.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

DAY_MS = 24 * 3600 * 1000

# The header of an accrual that carries the broker timestamp (milliseconds since the epoch, ASCII digits) of
# the input message that caused it: the card event, or the clock tick of a time-driven entry. The sink
# measures event-to-balance latency from it (``cashback_ledger_latency_seconds``).
SOURCE_TIME_HEADER = "cashback-source-time-ms"


@lru_cache(maxsize=1 << 16)  # about 10 MiB at most; a worker asks it several times for each event
def account_partition(account_id: str, partitions: int) -> int:
    """The partition of ``account_id``'s messages under Kafka's default (murmur2) partitioner, as
    every client computes it: card events, profiles, activations and clock ticks alike. Remembered
    for the accounts last asked: murmur2 in Python costs about 4 microseconds a key."""
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    key: str  # what the key is, in domain words
    value_subject: str  # the Avro subject of its values (schemas/<subject>.avsc)
    compacted: bool
    retention_ms: int  # -1: keep forever
    co_partitioned: bool  # must have the same partition count as the other co-partitioned topics

    def config(self) -> dict[str, str]:
        """Broker-side topic configuration. A compacted topic is compacted at most
        ``MAX_COMPACTION_LAG_MS`` after a write, so a value replaced or erased (a tombstone) leaves
        the disk within a bounded time (the GDPR erasure's promise), not whenever the cleaner gets to it."""
        if self.compacted:
            return COMPACTED_CONFIG
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


MAX_COMPACTION_LAG_MS = 7 * 24 * 3600 * 1000
COMPACTED_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "60000",
    "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS),
}


@dataclass(frozen=True, slots=True)
class Catalogue:
    authorizations: Topic
    settlements: Topic
    offers: Topic
    activations: Topic
    profiles: Topic
    clock: Topic
    accruals: Topic
    dead_letters: Topic
    erasures: Topic
    instructions: Topic
    notifications: Topic
    payout_runs: Topic
    payouts: Topic
    payout_results: Topic
    donation_payouts: Topic
    donation_payout_results: Topic

    def all(self) -> tuple[Topic, ...]:
        return (
            self.authorizations,
            self.settlements,
            self.offers,
            self.activations,
            self.profiles,
            self.clock,
            self.accruals,
            self.dead_letters,
            self.erasures,
            self.instructions,
            self.notifications,
            self.payout_runs,
            self.payouts,
            self.payout_results,
            self.donation_payouts,
            self.donation_payout_results,
        )

    def inputs(self) -> tuple[Topic, ...]:
        """What the rules engine decides: the card-event topics, the bank's instructions about
        an account's held rewards (decided like card events, in the account's order: stream.core.holds),
        payout runs and the core banking system's answers to payouts (stream.core.payouts)."""
        return (self.authorizations, self.settlements, self.instructions, self.payout_runs, self.payout_results)

    def account_inputs(self) -> tuple[Topic, Topic, Topic]:
        """What the matcher folds per account beside card events: activations, profiles and erasures."""
        return (self.activations, self.profiles, self.erasures)

    def input_order(self) -> dict[str, int]:
        """What the matcher reads (``inputs``, ``account_inputs``, the clock: all co-partitioned),
        each with its place among a partition's messages of the same millisecond, which the worker
        hands on in the order they were published (``stream.input_order``): an account's profile
        and activations before its card events, an authorisation before its clearing, the bank's
        instructions and the payouts after them, an erasure and the clock last."""
        first = (self.profiles, self.activations, self.authorizations, self.settlements, self.instructions)
        ties = (*first, self.payout_runs, self.payout_results, self.erasures, self.clock)
        return {topic.name: place for place, topic in enumerate(ties)}

    def by_name(self, name: str) -> Topic:
        for topic in self.all():
            if topic.name == name:
                return topic
        raise KeyError(name)


# The matcher's tables (Faust names their changelog topics "<app id>-<table>-changelog").
ACCOUNT_STATE_TABLE = "account-state"
ACCOUNT_PROFILE_TABLE = "account-profile"


def table_changelogs(app_id: str, partitions: int) -> tuple[Topic, ...]:
    """The changelog topics of the matcher's tables: compacted, co-partitioned with the inputs.
    Created with the other topics, before any worker starts: when two workers started on a fresh
    cluster and Faust created them itself, a worker's metadata could still show them with 0
    partitions and Faust's table refused every write (PartitionsMismatch)."""
    return tuple(
        Topic(f"{app_id}-{table}-changelog", partitions, "account_id", "json", True, -1, True)
        for table in (ACCOUNT_STATE_TABLE, ACCOUNT_PROFILE_TABLE)
    )


def catalogue(prefix: str = "cashback.", partitions: int = 4) -> Catalogue:
    """The topics of one deployment; ``partitions`` is the co-partitioned count."""

    def keyed_by_account(name: str, subject: str, retention_days: int) -> Topic:
        return Topic(prefix + name, partitions, "account_id", subject, False, retention_days * DAY_MS, True)

    return Catalogue(
        authorizations=keyed_by_account("card.authorizations", "authorization_event", 30),
        settlements=keyed_by_account("card.settlements", "settlement_event", 30),
        offers=Topic(prefix + "offers", 1, "offer_id", "offer", True, -1, False),
        # Keyed account_id:offer_id (compaction keeps one per offer) but partitioned by account_id,
        # so each activation meets the account's card events in the same worker.
        activations=Topic(prefix + "offer-activations", partitions, "account_id:offer_id", "offer_activation", True, -1, True),
        profiles=Topic(prefix + "account-profiles", partitions, "account_id", "account_profile", True, -1, True),
        # Ticks of time passing, one stream per partition (stream.core.lifecycle); kept a day.
        clock=Topic(prefix + "clock", partitions, "partition", "clock_tick", False, DAY_MS, True),
        accruals=keyed_by_account("accruals", "accrual", 30),
        # Dead letters are kept long: every one must be inspected and replayed or closed.
        dead_letters=Topic(prefix + "dead-letters", 1, "source topic", "dead_letter", False, 90 * DAY_MS, False),
        # Erasure instructions (stream.gdpr): read once by the worker owning the account, which then
        # holds its own record of the erasure; kept a week, not longer, since each names an account.
        erasures=keyed_by_account("account-erasures", "account_erasure", 7),
        # Instructions about held rewards (release, forfeit, a merchant flagged: stream.core.holds), from
        # the API's operations routes and the sink's scan; apart from the card processors' topics.
        instructions=keyed_by_account("account-instructions", "account_instruction", 30),
        # Customer notifications for bank apps to push (stream.core.notices), in each account's order.
        # Kept a week: an app's consumer reads them within minutes, and each names an account (an
        # erasure cannot take a record out of a topic that is not compacted: retention does).
        notifications=keyed_by_account("notifications", "notification", 7),
        # Cash payouts (stream.core.payouts): runs for accounts (from `cashback payouts run`), the payouts the
        # workers ask of the bank's core banking system, and its answers. Kept 30 days, like the accruals:
        # an unanswered payout is looked into well within that.
        payout_runs=keyed_by_account("payout-runs", "payout_run", 30),
        payouts=keyed_by_account("payouts", "payout_instruction", 30),
        payout_results=keyed_by_account("payout-results", "payout_result", 30),
        # Remittances of donations to charities (stream.donations) and the answers to them: keyed by charity id,
        # read by the core banking system and by the sink (never by the workers, which read payout-results by
        # account); not co-partitioned with anything. Kept 30 days, like the customers' payouts.
        donation_payouts=Topic(
            prefix + "donation-payouts", partitions, "charity_id", "donation_instruction", False, 30 * DAY_MS, False
        ),
        donation_payout_results=Topic(
            prefix + "donation-payout-results", partitions, "charity_id", "donation_result", False, 30 * DAY_MS, False
        ),
    )
