"""Unit tests of stream.settings: defaults, ConfigError naming the variable, Kafka security options, docs table."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.localstack.kafka_security import BrokerSecurity
from stream.settings import ConfigError, Settings, documentation_table

VARIABLES = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: the settings read only the mapping given, and these tests also clear the environment."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.model_dump() == {
        "kafka_bootstrap_servers": "127.0.0.1:9092",
        "kafka_security_protocol": "PLAINTEXT",
        "kafka_sasl_mechanism": None,
        "kafka_sasl_username": None,
        "kafka_sasl_password": None,
        "kafka_ssl_cafile": None,
        "kafka_ssl_certfile": None,
        "kafka_ssl_keyfile": None,
        "kafka_ssl_key_password": None,
        "schema_registry_url": None,
        "topic_prefix": "cashback.",
        "topic_partitions": 4,
        "topic_replication_factor": 1,
        "database_url": "postgresql://postgres@127.0.0.1:5432/cashback",
        "app_id": "cashback",
        "worker_data_dir": ".data/worker",
        "worker_instance_id": None,
        "worker_session_timeout_s": 10.0,
        "worker_out_of_group_limit_s": 120.0,
        "budget_read_max_age_s": 1.0,
        "transaction_horizon_days": 180,
        "event_ahead_limit_days": None,
        "worker_state_cache_mb": 192,
        "abuse_rules_file": None,
        "abuse_scan_interval_s": 300.0,
        "reconcile_interval_s": 30.0,
        "offer_results_interval_s": 300.0,
        "sink_batch_size": 10_000,
        "sink_batch_wait_ms": 100,
        "sink_group_id": "cashback-sink",
        "clock_interval_s": 10.0,
        "notification_default_language": "en",
        "payout_schedule": "off",
        "payout_minimums": "*=1000",
        "donation_schedule": "off",
        "payout_gauges_interval_s": 60.0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "api_host": "127.0.0.1",
        "api_port": 8080,
        "api_redemption_wait_s": 3.0,
        "api_auth_jwks": None,
        "api_auth_issuer": None,
        "api_auth_audience": "cashback-api",
        "api_auth_leeway_s": 30.0,
        "api_auth_jwks_max_age_s": 300.0,
        "dead_letter_hash_key": None,
        "log_level": "INFO",
    }


def test_the_dead_letter_hash_key_is_long_never_shown_and_never_echoed() -> None:
    secret = "k" * 40
    settings = Settings.from_env({"DEAD_LETTER_HASH_KEY": secret})
    assert settings.dead_letter_hash_key == secret
    assert secret not in repr(settings) and secret not in str(settings)
    with pytest.raises(ConfigError, match="DEAD_LETTER_HASH_KEY") as refused:
        Settings.from_env({"DEAD_LETTER_HASH_KEY": "short-secret"})
    assert "short-secret" not in str(refused.value)


def test_values_are_read_and_converted() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092, broker-2:9093",
            "topic_partitions": "12",  # names are case-insensitive
            "LOG_LEVEL": "DEBUG",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert settings.kafka_bootstrap_servers == "broker-1:9092, broker-2:9093"
    assert settings.topic_partitions == 12
    assert settings.log_level == "DEBUG"


def test_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PREFIX", "test.")
    assert Settings.from_env().topic_prefix == "test."


def test_an_explicit_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "9")
    assert Settings.from_env({}).topic_partitions == 4


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOPIC_PARTITIONS", "abc"),
        ("TOPIC_PARTITIONS", "0"),
        ("TOPIC_PARTITIONS", "1025"),
        ("KAFKA_BOOTSTRAP_SERVERS", "nohostport"),
        ("KAFKA_BOOTSTRAP_SERVERS", "broker:9092,other"),
        ("KAFKA_BOOTSTRAP_SERVERS", ":9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "broker:port"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("KAFKA_SASL_MECHANISM", "GSSAPI"),
        ("TOPIC_REPLICATION_FACTOR", "0"),
        ("SINK_BATCH_SIZE", "0"),
        ("SINK_BATCH_WAIT_MS", "-1"),
        ("METRICS_PORT", "65536"),
        ("API_PORT", "http"),
        ("LOG_LEVEL", "TRACE"),
        ("API_AUTH_JWKS", ""),
        ("API_AUTH_JWKS", "ftp://idp/keys"),
        ("API_AUTH_JWKS", "https://"),
        ("API_AUTH_AUDIENCE", ""),
        ("API_AUTH_LEEWAY_S", "-1"),
        ("API_AUTH_LEEWAY_S", "3600"),
        ("API_AUTH_JWKS_MAX_AGE_S", "1"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    assert f"{variable}:" in message


def test_the_api_auth_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "API_AUTH_JWKS": "https://idp.example.test/realms/bank/protocol/openid-connect/certs",
            "API_AUTH_ISSUER": "https://idp.example.test/realms/bank",
            "API_AUTH_AUDIENCE": "balances",
            "API_AUTH_LEEWAY_S": "5",
            "API_AUTH_JWKS_MAX_AGE_S": "60",
        }
    )
    assert settings.api_auth_jwks == "https://idp.example.test/realms/bank/protocol/openid-connect/certs"
    assert (settings.api_auth_issuer, settings.api_auth_audience) == ("https://idp.example.test/realms/bank", "balances")
    assert (settings.api_auth_leeway_s, settings.api_auth_jwks_max_age_s) == (5.0, 60.0)
    assert Settings.from_env({"API_AUTH_JWKS": "deploy/auth/jwks.json"}).api_auth_jwks == "deploy/auth/jwks.json"


def test_lower_case_variable_is_named_in_upper_case() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"topic_partitions": "abc"})
    assert "TOPIC_PARTITIONS" in str(caught.value)


def test_every_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TOPIC_PARTITIONS": "abc", "API_PORT": "-1"})
    assert "TOPIC_PARTITIONS" in str(caught.value) and "API_PORT" in str(caught.value)


@pytest.mark.parametrize("variable", ["WORKER_STATE_CACHE_ITEMS", "worker_state_cache_items"])
def test_a_replaced_variable_still_set_stops_the_process_naming_its_successor(variable: str) -> None:
    """The states' cache was bounded by a count (WORKER_STATE_CACHE_ITEMS), now by its memory in MiB: a
    deployment still setting the count is told so at start, its bound not silently dropped."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: "196608"})
    assert "WORKER_STATE_CACHE_ITEMS" in str(caught.value) and "WORKER_STATE_CACHE_MB" in str(caught.value)
    assert Settings.from_env({"WORKER_STATE_CACHE_MB": "64"}).worker_state_cache_mb == 64


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ValidationError):
        settings.topic_partitions = 8  # type: ignore[misc]


def test_secrets_are_not_in_the_repr() -> None:
    settings = Settings.from_env(
        {"KAFKA_SASL_PASSWORD": "s3cret-pw", "DATABASE_URL": "postgresql://u:db-pw@h/x", "KAFKA_SSL_KEY_PASSWORD": "key-pw"}
    )
    assert "s3cret-pw" not in repr(settings)
    assert "db-pw" not in repr(settings)
    assert "key-pw" not in repr(settings)


def test_plaintext_client_options() -> None:
    assert Settings.from_env({}).kafka_client_options() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "user"},
        {"KAFKA_SASL_USERNAME": "user", "KAFKA_SASL_PASSWORD": "pw"},
        {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_PASSWORD": "pw"},
    ],
)
def test_sasl_without_credentials_raises_config_error(protocol: str, credentials: dict[str, str]) -> None:
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": protocol, **credentials})
    with pytest.raises(ConfigError) as caught:
        settings.kafka_client_options()
    for variable in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert variable in str(caught.value)


def test_sasl_plaintext_client_options() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "user",
            "KAFKA_SASL_PASSWORD": "pw",
        }
    )
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "user",
        "sasl_plain_password": "pw",
    }


def test_ssl_client_options_carry_an_ssl_context() -> None:
    import ssl

    options = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"}).kafka_client_options()
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> BrokerSecurity:
    """A CA, a client certificate and its key, as the local broker makes them."""
    return BrokerSecurity.ensure(tmp_path_factory.mktemp("tls"))


def _mutual_tls(files: BrokerSecurity, **more: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(files.ca_file),
        "KAFKA_SSL_CERTFILE": str(files.client_cert),
        "KAFKA_SSL_KEYFILE": str(files.client_key),
        **more,
    }


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_mutual_tls_client_options_carry_the_certificate(tls_files: BrokerSecurity, protocol: str) -> None:
    import ssl

    sasl = {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "pw"}
    environ = _mutual_tls(tls_files, KAFKA_SECURITY_PROTOCOL=protocol, **(sasl if protocol == "SASL_SSL" else {}))
    context = Settings.from_env(environ).kafka_client_options()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname  # the broker is checked too
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "cashback local Kafka CA"),),)]


@pytest.mark.parametrize(
    ("left_out", "named"),
    [("KAFKA_SSL_KEYFILE", "KAFKA_SSL_KEYFILE"), ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_CERTFILE")],
)
def test_a_certificate_and_its_key_go_together(tls_files: BrokerSecurity, left_out: str, named: str) -> None:
    environ = {k: v for k, v in _mutual_tls(tls_files).items() if k != left_out}
    with pytest.raises(ConfigError, match=f"{named} is required"):
        Settings.from_env(environ).kafka_client_options()


def test_a_key_password_without_a_key_is_refused() -> None:
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": "pw"})
    with pytest.raises(ConfigError, match="KAFKA_SSL_KEY_PASSWORD"):
        settings.kafka_client_options()


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_without_tls_are_refused(tls_files: BrokerSecurity, protocol: str) -> None:
    sasl = {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "pw"}
    settings = Settings.from_env(_mutual_tls(tls_files, KAFKA_SECURITY_PROTOCOL=protocol, **sasl))
    with pytest.raises(ConfigError) as caught:
        settings.kafka_client_options()
    for variable in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", protocol):
        assert variable in str(caught.value)


@pytest.mark.parametrize("variable", ["KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"])
def test_a_missing_tls_file_is_named(tls_files: BrokerSecurity, tmp_path: Path, variable: str) -> None:
    settings = Settings.from_env(_mutual_tls(tls_files, **{variable: str(tmp_path / "nowhere.pem")}))
    with pytest.raises(ConfigError, match=f"{variable}: no such file"):
        settings.kafka_client_options()


def test_an_unreadable_ca_or_a_mismatched_key_is_named(tls_files: BrokerSecurity, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE: cannot load"):
        Settings.from_env(_mutual_tls(tls_files, KAFKA_SSL_CAFILE=str(garbage))).kafka_client_options()
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE"):
        # the CA's certificate with the client's key: they do not match
        Settings.from_env(_mutual_tls(tls_files, KAFKA_SSL_CERTFILE=str(tls_files.ca_file))).kafka_client_options()


def test_an_encrypted_key_needs_its_password(tls_files: BrokerSecurity, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(tls_files.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "client-key-encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"key-pw")
        )
    )
    environ = _mutual_tls(tls_files, KAFKA_SSL_KEYFILE=str(encrypted))
    assert "ssl_context" in Settings.from_env({**environ, "KAFKA_SSL_KEY_PASSWORD": "key-pw"}).kafka_client_options()
    for wrong in ({}, {"KAFKA_SSL_KEY_PASSWORD": "not-it"}):  # never a prompt on the terminal
        with pytest.raises(ConfigError, match="KAFKA_SSL_KEY_PASSWORD"):
            Settings.from_env({**environ, **wrong}).kafka_client_options()


def test_faust_gets_the_same_tls_and_sasl_settings(tls_files: BrokerSecurity) -> None:
    """The worker's Faust app connects with what every other client uses: mutual TLS as SSL
    credentials, SCRAM over TLS as SASL credentials with the TLS context."""
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.guarded_consumer import broker_credentials

    mutual = Settings.from_env(_mutual_tls(tls_files))
    credentials = broker_credentials(mutual)
    assert isinstance(credentials, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"].verify_mode.name == "CERT_REQUIRED"

    scram = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SSL_CAFILE": str(tls_files.ca_file),
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "cashback",
            "KAFKA_SASL_PASSWORD": "pw",
        }
    )
    auth = credentials_to_aiokafka_auth(broker_credentials(scram))
    assert {k: auth[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "cashback",
        "sasl_plain_password": "pw",
    }
    assert auth["ssl_context"] is not None
    assert broker_credentials(Settings.from_env({})) is None


def test_documentation_table_has_one_row_per_field() -> None:
    lines = documentation_table().splitlines()
    assert lines[:2] == ["| variable | default | meaning |", "|---|---|---|"]
    rows = lines[2:]
    assert len(rows) == len(Settings.model_fields) == 48
    assert [row.split("`")[1] for row in rows] == VARIABLES
    assert "| `TOPIC_PARTITIONS` | `4` | Partitions of the co-partitioned input and output topics. |" in rows
    assert "| `KAFKA_SASL_PASSWORD` |  | SASL password (never logged). |" in rows
    for row in rows:
        assert "None" not in row
        assert row.count("|") == 4


def test_payout_settings_are_parsed_and_a_bad_one_names_its_variable() -> None:
    settings = Settings.from_env({"PAYOUT_SCHEDULE": "14:30, 02:00", "PAYOUT_MINIMUMS": "EUR=1000,JPY=500,*=2000"})
    assert settings.payout_schedule_minutes() == (120, 870)
    assert settings.payout_minimums_by_currency() == ({"EUR": 1000, "JPY": 500}, 2000)
    assert Settings.from_env({}).payout_schedule_minutes() == ()  # off: runs only by the command
    assert Settings.from_env({"DONATION_SCHEDULE": "02:00"}).donation_schedule_minutes() == (120,)
    assert Settings.from_env({}).donation_schedule_minutes() == ()  # off: remittances only by the command
    assert Settings.from_env({"PAYOUT_MINIMUMS": "EUR=1"}).payout_minimums_by_currency() == ({"EUR": 1}, None)
    for name, bad, why in (
        ("PAYOUT_SCHEDULE", "2:00", "expected HH:MM UTC times"),
        ("PAYOUT_SCHEDULE", "24:00", "is not a time of day"),
        ("PAYOUT_MINIMUMS", "EUR=0", "a whole number of 1 or more"),
        ("PAYOUT_MINIMUMS", "EUR=10,EUR=20", "EUR is given twice"),
        ("PAYOUT_MINIMUMS", "XYZ=10", "is not an ISO 4217 currency"),
        ("DONATION_SCHEDULE", "25:00", "is not a time of day"),
    ):
        with pytest.raises(ConfigError, match=f"{name}: .*{why}"):
            Settings.from_env({name: bad})


def test_the_event_ahead_limit_is_half_the_horizon_unless_given_and_always_below_it() -> None:
    day_ms = 86_400_000
    assert Settings.from_env({}).event_ahead_limit_ms() == 90 * day_ms
    assert Settings.from_env({"TRANSACTION_HORIZON_DAYS": "61"}).event_ahead_limit_ms() == 30 * day_ms
    assert Settings.from_env({"EVENT_AHEAD_LIMIT_DAYS": "2"}).event_ahead_limit_ms() == 2 * day_ms
    assert Settings.from_env({"EVENT_AHEAD_LIMIT_DAYS": "179"}).event_ahead_limit_ms() == 179 * day_ms
    assert Settings.from_env({"EVENT_AHEAD_LIMIT_DAYS": "OFF"}).event_ahead_limit_ms() is None
    for environ, why in (
        ({"EVENT_AHEAD_LIMIT_DAYS": "0"}, "a whole number of days \\(1 or more\\) or off, got '0'"),
        ({"EVENT_AHEAD_LIMIT_DAYS": "1.5"}, "got '1.5'"),
        ({"EVENT_AHEAD_LIMIT_DAYS": ""}, "got ''"),
        ({"EVENT_AHEAD_LIMIT_DAYS": "180"}, "180 days is not below TRANSACTION_HORIZON_DAYS \\(180\\)"),
        ({"EVENT_AHEAD_LIMIT_DAYS": "45", "TRANSACTION_HORIZON_DAYS": "40"}, "45 days is not below TRANSACTION_HORIZON_DAYS"),
    ):
        with pytest.raises(ConfigError, match=f"EVENT_AHEAD_LIMIT_DAYS: .*{why}"):
            Settings.from_env(environ)
    # A bad horizon is reported as such, not as a limit it cannot be compared with.
    with pytest.raises(ConfigError, match="TRANSACTION_HORIZON_DAYS") as raised:
        Settings.from_env({"TRANSACTION_HORIZON_DAYS": "many", "EVENT_AHEAD_LIMIT_DAYS": "10"})
    assert "EVENT_AHEAD_LIMIT_DAYS" not in str(raised.value)
