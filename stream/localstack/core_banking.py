"""A STAND-IN for the bank's core banking system, for the local stack only (``make run``): it is no bank
and pays nobody. It reads the payout instructions the workers send (``<prefix>payouts``) and answers each on
``<prefix>payout-results``, and the charities' remittances (``<prefix>donation-payouts``, stream.donations),
answered on ``<prefix>donation-payout-results``: CONFIRMED for most, REJECTED (reason ``standin_rejected``) for about one in ten,
chosen from the payout id, so the same payout always gets the same answer (a repeat of an instruction is
answered again, the same way; the worker keeps the first answer).

Run as ``python -m stream.localstack.core_banking`` with the stack's environment; it commits its consumer
group's offsets once its answers were delivered. A real core banking system pays each payout id once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas.codec import Codec
from stream.producing import producer
from stream.settings import Settings
from topics.catalogue import Catalogue, account_partition

log = logging.getLogger(__name__)

REJECTED_SHARE = 10  # one payout in about this many is rejected
REJECTION_REASON = "standin_rejected"


def answer_for(payout_id: str) -> tuple[str, str | None]:
    """(status, reason code) of the stand-in's answer to a payout: decided by the payout id alone."""
    digest = hashlib.sha256(payout_id.encode()).digest()
    if int.from_bytes(digest[:4], "big") % REJECTED_SHARE == 0:
        return "REJECTED", REJECTION_REASON
    return "CONFIRMED", None


def result_record(instruction: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The answer to a customer's payout (``account_id``) or to a charity's remittance (``charity_id``)."""
    status, reason = answer_for(instruction["payout_id"])
    beneficiary = "charity_id" if "charity_id" in instruction else "account_id"
    return {
        "payout_id": instruction["payout_id"],
        beneficiary: instruction[beneficiary],
        "status": status,
        "reason_code": reason,
        "answered_at": at,
    }


async def serve(settings: Settings, codec: Codec, topics: Catalogue, stop: asyncio.Event, group_id: str | None = None) -> int:
    """Answer every payout instruction until ``stop`` is set; how many were answered."""
    consumer = AIOKafkaConsumer(
        topics.payouts.name,
        topics.donation_payouts.name,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id or f"{settings.app_id}-core-banking-standin",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_client_options(),
    )
    client = producer(settings)
    answered = 0
    await consumer.start()
    try:
        await client.start()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    charity = record.topic == topics.donation_payouts.name
                    subject, answers = (
                        ("donation_instruction", topics.donation_payout_results)
                        if charity
                        else (
                            "payout_instruction",
                            topics.payout_results,
                        )
                    )
                    _, instruction = codec.decode(record.value, expected_subject=subject)
                    result = result_record(instruction, datetime.now(UTC))
                    value = codec.encode("donation_result" if charity else "payout_result", result)
                    key = instruction["charity_id" if charity else "account_id"]
                    partition = account_partition(key, answers.partitions)
                    await client.send_and_wait(answers.name, value, key=key.encode(), partition=partition)
                    answered += 1
            if batches:
                await consumer.commit()  # after the answers were delivered: at least once
    finally:
        await consumer.stop()
        await client.stop()
    return answered


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("core banking STAND-IN (local stack only): answering payouts, about 1 in %d rejected", REJECTED_SHARE)
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        answered = await serve(settings, Codec.configured(settings.schema_registry_url), settings.topics(), stop)
        log.info("core banking stand-in stopped after %d answers", answered)

    asyncio.run(run())


if __name__ == "__main__":
    main()
