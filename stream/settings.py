"""Settings: read once from the environment, frozen, each with a one-line doc.

The README's configuration table is generated from these fields (``cashback config``), so each
name is documented here and only here. Nothing reads the environment at import time: call
``Settings.from_env()`` in a process's entry point. A bad value stops the process at start with
the variable's name.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.core.events import DAY_MS
from stream.setting_values import parse_event_ahead_limit, parse_payout_minimums, parse_payout_schedule
from topics.catalogue import Catalogue, catalogue


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


# Variables an earlier version read, and what replaced them: one still set stops the process at start
# rather than be ignored (a bound an operator chose would silently no longer hold).
_REPLACED = {"WORKER_STATE_CACHE_ITEMS": "WORKER_STATE_CACHE_MB, the states' memory in MiB (README, Performance)"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: str | None = Field(None, description="SASL password (never logged).", repr=False)
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle file for Kafka TLS.")
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM) for Kafka mutual TLS; needs KAFKA_SSL_KEYFILE."
    )
    kafka_ssl_keyfile: str | None = Field(None, description="Private key (PEM) of KAFKA_SSL_CERTFILE.")
    kafka_ssl_key_password: str | None = Field(
        None, description="Password of KAFKA_SSL_KEYFILE when it is encrypted (never logged).", repr=False
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible schema registry; unset means the shipped schema ids."
    )
    topic_prefix: str = Field("cashback.", description="Prefix of every topic name in the catalogue.")
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions of the co-partitioned input and output topics.")
    topic_replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/cashback",
        description="Postgres DSN of the ledger (add sslmode=require for TLS).",
        repr=False,
    )
    app_id: str = Field("cashback", description="Faust app id: the matcher's consumer group and table prefix.")
    worker_data_dir: str = Field(
        ".data/worker",
        description="The worker's local copy of its tables (RocksDB): one per worker process; delete it when the topics are recreated.",
    )
    worker_instance_id: str | None = Field(
        None,
        description="Static group membership id of this worker (e.g. the pod name): a restarted worker takes its partitions back at once.",
    )
    worker_session_timeout_s: float = Field(
        10.0,
        ge=6.0,
        le=300.0,
        description="Seconds without heartbeat before the group gives a dead worker's partitions to the others.",
    )
    worker_out_of_group_limit_s: float = Field(
        120.0,
        ge=5.0,
        le=3600.0,
        description="Seconds a worker's consumer may stay out of its group before the worker rejoins it "
        "(and, out that long again, exits for its supervisor to restart it).",
    )
    budget_read_max_age_s: float = Field(
        1.0,
        ge=0.0,
        le=3600.0,
        description="Seconds what a worker read of the campaign budgets may be used for before it is read again: a batch's "
        "decisions are granted together against it, and a stale read costs at worst a refused batch, read again.",
    )
    transaction_horizon_days: int = Field(
        180,
        ge=30,
        le=3650,
        description="Days a settled transaction (and every event id of it) is remembered after its last event: the chargeback horizon.",
    )
    event_ahead_limit_days: str | None = Field(
        None,
        description="Days an input event may be dated ahead of the worker's clock; one dated further is dead-lettered "
        "(`ahead_of_clock`), for its time would move its account's clock. A whole number below TRANSACTION_HORIZON_DAYS; "
        "unset: half of it (90); off: no limit, for a synthetic timeline run ahead of the wall clock.",
    )
    worker_state_cache_mb: int = Field(
        192,
        ge=1,
        le=1_048_576,
        description="MiB of account states the worker keeps whole in memory, as estimated from what each holds (its "
        "transactions and their event ids, recent events and their entries: README, Performance); the least recently "
        "used are read again from the local store. Replaces WORKER_STATE_CACHE_ITEMS, a count of what they held.",
    )
    abuse_rules_file: str | None = Field(
        None,
        description="YAML file of the abuse rules that hold a reward for review (deploy/abuse/rules.yaml shows each field); "
        "unset: their documented defaults. Read by the worker and the sink; a bad file stops them, naming the field.",
    )
    abuse_scan_interval_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="How often the sink looks for a merchant concentrating rewards on few accounts (0: never).",
    )
    reconcile_interval_s: float = Field(
        30.0,
        ge=0,
        le=3_600,
        description="How often the API computes the reconciliation gauges from the ledger (0: never).",
    )
    offer_results_interval_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="How often the API computes the offer results gauges, reading every live offer's ledger lines (0: never).",
    )
    sink_batch_size: int = Field(10_000, ge=1, le=100_000, description="Most accruals written per database transaction.")
    sink_batch_wait_ms: int = Field(100, ge=0, le=60_000, description="Longest wait to fill a sink batch.")
    sink_group_id: str = Field("cashback-sink", description="Consumer group of the sink.")
    clock_interval_s: float = Field(
        10.0,
        ge=0.05,
        le=3600,
        description="How often each worker ticks time for its partitions (ends of return windows, expiries).",
    )
    notification_default_language: Literal["en", "fr"] = Field(
        "en", description="Language of an account's notifications when its profile names none (en, fr)."
    )
    payout_schedule: str = Field(
        "off",
        description="When payout runs fall due on the workers' clock: HH:MM UTC times of every day, comma-separated "
        "(02:00,14:00); off: none (runs only by `cashback payouts run`).",
    )
    payout_minimums: str = Field(
        "*=1000",
        description="Least AVAILABLE cash a payout run pays out, in minor units, per currency: CUR=minor, comma-separated; "
        "*=minor for every currency not named (absent: such a currency is not paid). At least 1.",
    )
    donation_schedule: str = Field(
        "off",
        description="When the sink runs donation remittance runs (charities' donations into payouts): HH:MM UTC times of "
        "every day, comma-separated; off: none (runs only by `cashback donations remit`). Minimums: PAYOUT_MINIMUMS.",
    )
    payout_gauges_interval_s: float = Field(
        60.0,
        ge=0,
        le=3_600,
        description="How often the API computes the unanswered payouts gauges from the payouts table (0: never).",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of this process's /metrics (0: none for the worker and sink).")
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the worker's and the sink's /metrics listen on (0.0.0.0: every interface, for a remote scraper).",
    )
    api_host: str = Field("127.0.0.1", description="Address the balance API listens on.")
    api_port: int = Field(8080, ge=0, le=65535, description="Port of the balance API.")
    api_redemption_wait_s: float = Field(
        3.0,
        ge=0,
        le=30,
        description="How long POST /v1/accounts/{id}/redemptions waits for the worker's decision to reach the ledger "
        "before answering 202 with where to ask again (0: never waits).",
    )
    api_auth_jwks: str | None = Field(
        None,
        description="The keys that sign the balance API's bearer tokens: a JWKS file path or http(s) URL; the API refuses to start without it.",
    )
    api_auth_issuer: str | None = Field(
        None, description="The issuer (iss) the API's bearer tokens must name; the API refuses to start without it."
    )
    api_auth_audience: str = Field(
        "cashback-api", min_length=1, description="The audience (aud) the API's bearer tokens must name."
    )
    api_auth_leeway_s: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed when the API checks a token's exp, nbf and iat, in seconds."
    )
    api_auth_jwks_max_age_s: float = Field(
        300.0,
        ge=10,
        le=86_400,
        description="Seconds the API keeps its copy of the JWKS; a token naming an unknown key fetches it again (at most every 30 s).",
    )
    dead_letter_hash_key: str | None = Field(
        None,
        min_length=32,
        repr=False,
        description="Secret key (32+ characters, never logged) of the HMAC-SHA256 kept for each card number masked in a "
        "dead letter; unset: a random key per process (hashes comparable within one process only).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every process.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port, got {server.strip()!r}")
        return value

    @field_validator("event_ahead_limit_days")
    @classmethod
    def _event_ahead_limit_parse(cls, value: str | None, info: ValidationInfo) -> str | None:
        horizon = info.data.get("transaction_horizon_days")  # absent: TRANSACTION_HORIZON_DAYS is invalid, reported
        if value is not None:
            parse_event_ahead_limit(value, horizon if horizon is not None else 0)
        return value

    def event_ahead_limit_ms(self) -> int | None:
        """EVENT_AHEAD_LIMIT_DAYS in milliseconds (None: off)."""
        if self.event_ahead_limit_days is None:
            days: int | None = self.transaction_horizon_days // 2
        else:
            days = parse_event_ahead_limit(self.event_ahead_limit_days, self.transaction_horizon_days)
        return None if days is None else days * DAY_MS

    @field_validator("payout_schedule")
    @classmethod
    def _payout_schedule_parse(cls, value: str) -> str:
        parse_payout_schedule(value)
        return value

    def payout_schedule_minutes(self) -> tuple[int, ...]:
        """PAYOUT_SCHEDULE as minutes after midnight UTC, sorted (): off."""
        return parse_payout_schedule(self.payout_schedule)

    @field_validator("donation_schedule")
    @classmethod
    def _donation_schedule_parse(cls, value: str) -> str:
        parse_payout_schedule(value)
        return value

    def donation_schedule_minutes(self) -> tuple[int, ...]:
        """DONATION_SCHEDULE as minutes after midnight UTC, sorted (): off."""
        return parse_payout_schedule(self.donation_schedule)

    @field_validator("payout_minimums")
    @classmethod
    def _payout_minimums_parse(cls, value: str) -> str:
        parse_payout_minimums(value)
        return value

    def payout_minimums_by_currency(self) -> tuple[dict[str, int], int | None]:
        """PAYOUT_MINIMUMS: the minimum per currency named, and that of every other currency (None: not paid)."""
        return parse_payout_minimums(self.payout_minimums)

    @field_validator("api_auth_jwks")
    @classmethod
    def _jwks_is_a_path_or_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("expected a JWKS file path or an http(s) URL, got an empty value")
        if "://" in value:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"expected an https:// or http:// URL with a host, got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # The only source is the mapping from_env() passes: nothing is read behind its back.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``environ`` (default: the process environment); ConfigError names the variable."""
        if environ is None:
            environ = os.environ
        for name in {key.upper() for key in environ} & _REPLACED.keys():
            raise ConfigError(f"invalid configuration: {name}: no longer read; set {_REPLACED[name]}")
        try:
            known = {name.upper() for name in cls.model_fields}
            values: dict[str, Any] = {k.lower(): v for k, v in environ.items() if k.upper() in known}
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors())
            raise ConfigError(f"invalid configuration: {problems}") from None

    def topics(self) -> Catalogue:
        """The topic catalogue these settings name: the one place TOPIC_PARTITIONS is read."""
        return catalogue(self.topic_prefix, self.topic_partitions)

    def kafka_client_options(self) -> dict[str, object]:
        """Security options shared by every Kafka client (aiokafka keyword names)."""
        options: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            if not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
                raise ConfigError(
                    "invalid configuration: KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD are required with a SASL protocol"
                )
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._kafka_ssl_context()
        else:
            given = [name.upper() for name in _KAFKA_TLS_FIELDS if getattr(self, name)]
            if given:
                raise ConfigError(
                    f"invalid configuration: {', '.join(given)} {'need' if len(given) > 1 else 'needs'} "
                    "KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, "
                    f"not {self.kafka_security_protocol} (the connection would not use TLS)"
                )
        return options

    def _kafka_ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every Kafka client: the CA to trust, and the client certificate for mutual TLS."""
        from aiokafka.helpers import create_ssl_context

        certfile, keyfile = self.kafka_ssl_certfile, self.kafka_ssl_keyfile
        if bool(certfile) != bool(keyfile):
            missing = "KAFKA_SSL_KEYFILE" if certfile else "KAFKA_SSL_CERTFILE"
            raise ConfigError(
                f"invalid configuration: {missing} is required: KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together"
            )
        if self.kafka_ssl_key_password and not keyfile:
            raise ConfigError("invalid configuration: KAFKA_SSL_KEY_PASSWORD is given without KAFKA_SSL_KEYFILE")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"invalid configuration: {name.upper()}: no such file {path!r}")
        try:
            context = create_ssl_context(cafile=self.kafka_ssl_cafile)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(
                f"invalid configuration: KAFKA_SSL_CAFILE: cannot load {self.kafka_ssl_cafile!r} ({error})"
            ) from None
        if certfile:
            # A callable, never None: OpenSSL would otherwise prompt on the terminal for an encrypted key.
            password = self.kafka_ssl_key_password or ""
            try:
                context.load_cert_chain(certfile, keyfile, password=lambda: password)
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(
                    "invalid configuration: KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE: cannot load the client certificate "
                    f"and its key ({error}; an encrypted key needs KAFKA_SSL_KEY_PASSWORD)"
                ) from None
        return context


#: The settings that only mean something over TLS (KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL).
_KAFKA_TLS_FIELDS = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")


def documentation_table() -> str:
    """The README's configuration table, one row per environment variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
