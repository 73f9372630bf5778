"""The core banking system's answers to every payout, into the payouts table (migration 0019): the customers'
(``<prefix>payout-results``, keyed by account, which the workers also read to decide the money) and the charities'
(``<prefix>donation-payout-results``, keyed by charity, read by nobody else). Run by the sink process beside the
ledger writer, in its own consumer group (``<SINK_GROUP_ID>-payout-answers``).

Exactly once into Postgres, the sink's way (``stream.sink``): a batch's answers are written in one transaction, and
only then are the consumer's offsets committed. A crash before the commit redelivers the batch, and the table takes
it again as a no-op: the first answer for a payout stands (a later one, or the same again, changes nothing), as the
worker decides for customers in the account's order, which is this topic's order too.

A customer's answer may be read before the ledger holds its PAID_OUT entry (the sink is behind, or was down):
the answer makes the payout's row, without amount, and the entry fills it in (the ledger's trigger). A customer's
answer that is not one (a bad payout id, status or reason) is left to the worker, which dead-letters it. A charity's
answer that is not one, or that names a remittance the table does not hold, is dead-lettered here (stage sink):
its remittance is recorded before its instruction is sent, so an answer with no row is not an answer to ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas.codec import Codec, DecodeError
from stream.core import payout_messages
from stream.core.donations import answer_problem, remittance_id_parts
from stream.core.events import RejectReason
from stream.deadletter import OtherReason, Stage, send_dead_letter
from stream.kafka_clients import closing, start_client
from stream.metrics import PAYOUT_ANSWERS
from stream.producing import producer as make_producer
from stream.settings import Settings
from stream.store import payouts as store
from stream.store.availability import KeptConnection, StopRequested, until_postgres_answers
from topics.catalogue import Catalogue

log = logging.getLogger(__name__)


class PayoutAnswers:
    """Reads both answer topics into the payouts table until stopped (module doc)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, codec: Codec) -> None:
        self.settings, self.codec = settings, codec
        self.customers_topic = catalogue.payout_results.name
        self.charities_topic = catalogue.donation_payout_results.name
        self.dead_letter_topic = catalogue.dead_letters.name
        self._db = KeptConnection(settings.database_url)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.customers_topic,
            self.charities_topic,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=f"{self.settings.sink_group_id}-payout-answers",
            enable_auto_commit=False,  # offsets move only after the answers' transaction
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **self.settings.kafka_client_options(),
        )
        producer = make_producer(self.settings)
        async with closing(consumer, producer, self._db.close):
            await start_client(producer)
            await start_client(consumer)
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                records = [r for part in batches.values() for r in part]
                if not records:
                    continue
                try:
                    await self.handle(records, producer)
                except StopRequested as stopped:  # a stop during an outage: the batch is the next reader's
                    log.warning("%s: the answers are left to the next reader, their offsets not committed", stopped)
                    return
                try:
                    await consumer.commit({tp: part[-1].offset + 1 for tp, part in batches.items() if part})
                except (CommitFailedError, IllegalStateError) as error:
                    log.info("payout answers' offsets not committed after a rebalance: %s", type(error).__name__)

    async def handle(self, records: Sequence[ConsumerRecord], producer: AIOKafkaProducer) -> None:
        """One batch: decoded, checked, written in one transaction; the charities' bad answers dead-lettered."""
        customers: list[store.CustomerAnswer] = []
        charities: list[store.CharityAnswer] = []
        sources: list[ConsumerRecord] = []
        for message in records:
            charity = message.topic == self.charities_topic
            subject = "donation_result" if charity else "payout_result"
            try:
                _, record = self.codec.decode(message.value, expected_subject=subject)
            except DecodeError as error:
                if charity:
                    await self._dead_letter(producer, message, error.failure.value, error.detail)
                continue  # a customer's: the worker dead-letters it
            answer = (record["payout_id"], record["status"], record.get("reason_code"), record["answered_at"])
            if charity:
                problem = answer_problem(record)
                if problem is not None:
                    await self._dead_letter(producer, message, RejectReason.INVALID_FIELD.value, problem)
                    continue
                charities.append((answer[0], record["charity_id"], *answer[1:]))
                sources.append(message)
            elif payout_messages.validate(record) is None:
                currency = (payout_messages.payout_id_parts(answer[0]) or ("", "", ""))[2]
                customers.append((answer[0], record["account_id"], currency, *answer[1:]))
        if not customers and not charities:
            return

        async def attempt() -> list[int]:
            return await store.apply_answers(await self._db.get(), customers, charities)

        async def outage(_: BaseException) -> None:
            self._db.drop()

        unknown = await until_postgres_answers(attempt, "the payout answers", outage, self._stopping)
        for customer in customers:
            PAYOUT_ANSWERS.labels("CUSTOMER", customer[3]).inc()
        for charity_answer in charities:
            PAYOUT_ANSWERS.labels("CHARITY", charity_answer[2]).inc()
        for position in unknown:
            parts = remittance_id_parts(charities[position][0])
            detail = f"payout_id: no remittance of run {parts[0] if parts else '?'} is recorded with this id"
            await self._dead_letter(producer, sources[position], OtherReason.UNKNOWN_PAYOUT.value, detail)

    async def _dead_letter(self, producer: AIOKafkaProducer, message: ConsumerRecord, reason: str, detail: str) -> None:
        await send_dead_letter(producer, self.codec, self.dead_letter_topic, Stage.SINK, message, reason, detail)
