"""Settings: read once from the environment, frozen, each with a one-line doc.

The README's configuration table is generated from these fields (``cashback config``), so each
name is documented here and only here. Nothing reads the environment at import time: call
``Settings.from_env()`` in a process's entry point. A bad value stops the process at start with
the variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from topics.catalogue import Catalogue, catalogue


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


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
    transaction_horizon_days: int = Field(
        180,
        ge=30,
        le=3650,
        description="Days a settled transaction (and every event id of it) is remembered after its last event: the chargeback horizon.",
    )
    sink_batch_size: int = Field(2000, ge=1, le=100_000, description="Most accruals written per database transaction.")
    sink_batch_wait_ms: int = Field(100, ge=0, le=60_000, description="Longest wait to fill a sink batch.")
    sink_group_id: str = Field("cashback-sink", description="Consumer group of the sink.")
    clock_interval_s: float = Field(
        10.0,
        ge=0.05,
        le=3600,
        description="How often each worker ticks time for its partitions (ends of return windows, expiries).",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of this process's /metrics (0: none for the worker and sink).")
    api_host: str = Field("127.0.0.1", description="Address the balance API listens on.")
    api_port: int = Field(8080, ge=0, le=65535, description="Port of the balance API.")
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every process.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port, got {server.strip()!r}")
        return value

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
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        return options


def documentation_table() -> str:
    """The README's configuration table, one row per environment variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
