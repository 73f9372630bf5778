"""The local broker's secured listeners: SASL_SSL with SCRAM-SHA-512, and SSL with client certificates.

Production Kafka is reached over TLS, with a SCRAM user or a client certificate; this makes the
local broker (``KafkaBroker(..., secure=True)``) offer both, beside its PLAINTEXT listener (kept on
127.0.0.1 for the readiness probe and as the inter-broker listener), so the clients' security
settings are tested against a real broker:

- ``SASL_SSL``: TLS, then SCRAM-SHA-512. The user is written into the cluster's metadata when the
  data dir is formatted (``kafka-storage format --add-scram``, KRaft's way: there is no ZooKeeper to
  hold it), as a salted password computed here, so the clear password never appears on a command line.
- ``SSL`` with ``ssl.client.auth=required`` (mutual TLS): a client without a certificate signed by
  the local CA is refused during the handshake.

The certificates are made with ``cryptography`` at the first start (a CA, a broker certificate for
``127.0.0.1`` and ``localhost``, a client certificate) and written as PEM, which Kafka 3.x reads
directly (``ssl.keystore.type=PEM``). The CA's private key is never written: nothing else can be
signed by it. Everything lives in ``<data dir>/security`` (mode 700; private keys and the password
mode 600) and is reused when the broker restarts on the same data dir.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SCRAM_MECHANISM", "BrokerSecurity", "SecureListeners"]

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "cashback"
_SCRAM_ITERATIONS = 8192  # Kafka's minimum for SCRAM-SHA-512 is 4096
_VALID_DAYS = 365
_TLS_FILES = ("ca.pem", "broker.pem", "client.pem", "client-key.pem")
_USER_FILE = "scram-user.json"


@dataclass(frozen=True)
class BrokerSecurity:
    """The TLS files and the SCRAM user of one broker data dir: made once, then read again."""

    directory: Path
    scram_username: str
    scram_password: str = field(repr=False)

    @property
    def ca_file(self) -> Path:
        """The local CA's certificate: what clients trust (KAFKA_SSL_CAFILE) and the broker's truststore."""
        return self.directory / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """The broker's private key and certificate chain, one PEM file (Kafka's PEM keystore)."""
        return self.directory / "broker.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    @classmethod
    def ensure(cls, directory: Path) -> BrokerSecurity:
        """Read the files of ``directory``, or make what is missing: all the certificates when one is
        missing, the user when it is (a user already formatted into the cluster is never replaced)."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        if not all((directory / name).exists() for name in _TLS_FILES):
            _write_certificates(directory)
        if not (directory / _USER_FILE).exists():
            user = {"username": SCRAM_USER, "password": secrets.token_urlsafe(24)}
            _write(directory / _USER_FILE, json.dumps(user).encode(), 0o600)
        user = json.loads((directory / _USER_FILE).read_text())
        return cls(directory, user["username"], user["password"])

    def scram_credential(self) -> str:
        """``kafka-storage format --add-scram``'s argument: the user with a salted password, not the clear one."""
        salt = secrets.token_bytes(32)
        salted = hashlib.pbkdf2_hmac("sha512", self.scram_password.encode(), salt, _SCRAM_ITERATIONS)
        return (
            f"{SCRAM_MECHANISM}=[name={self.scram_username},iterations={_SCRAM_ITERATIONS},"
            f'salt="{base64.b64encode(salt).decode()}",saltedpassword="{base64.b64encode(salted).decode()}"]'
        )


@dataclass(frozen=True)
class SecureListeners:
    """The two secured listeners of a broker on 127.0.0.1, and what a client needs to use them."""

    sasl_ssl_port: int
    ssl_port: int
    security: BrokerSecurity

    def listeners(self) -> list[str]:
        return [f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}", f"SSL://127.0.0.1:{self.ssl_port}"]

    def protocol_map(self) -> list[str]:
        return ["SASL_SSL:SASL_SSL", "SSL:SSL"]

    def server_properties(self) -> dict[str, str]:
        """The broker's TLS and SASL settings (the listener names are Kafka's lower-cased ones)."""
        files = self.security
        return {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(files.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(files.ca_file),
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            # Mutual TLS on the SSL listener only: SASL_SSL clients prove who they are with SCRAM.
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
        }

    def bootstrap_servers(self, protocol: Literal["SASL_SSL", "SSL"]) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port if protocol == 'SASL_SSL' else self.ssl_port}"

    def client_env(self, protocol: Literal["SASL_SSL", "SSL"]) -> dict[str, str]:
        """The project's settings (environment variables) of a client of that listener."""
        files = self.security
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers(protocol),
            "KAFKA_SECURITY_PROTOCOL": protocol,
            "KAFKA_SSL_CAFILE": str(files.ca_file),
        }
        if protocol == "SASL_SSL":
            env.update(
                KAFKA_SASL_MECHANISM=SCRAM_MECHANISM,
                KAFKA_SASL_USERNAME=files.scram_username,
                KAFKA_SASL_PASSWORD=files.scram_password,
            )
        else:
            env.update(KAFKA_SSL_CERTFILE=str(files.client_cert), KAFKA_SSL_KEYFILE=str(files.client_key))
        return env


def _write_certificates(directory: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cashback local Kafka CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key, broker_cert = _leaf(
        ca_cert,
        ca_key,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
    )
    client_key, client_cert = _leaf(ca_cert, ca_key, "cashback-client", ExtendedKeyUsageOID.CLIENT_AUTH, now)
    ca_pem = _pem(ca_cert)
    _write(directory / "ca.pem", ca_pem, 0o644)
    _write(directory / "broker.pem", _key_pem(broker_key) + _pem(broker_cert) + ca_pem, 0o600)
    _write(directory / "client.pem", _pem(client_cert), 0o644)
    _write(directory / "client-key.pem", _key_pem(client_key), 0o600)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    alt_names: x509.SubjectAlternativeName | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(name, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8, unencrypted: the form Kafka's PEM keystore reads without ssl.key.password.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path``, created with ``mode`` (a private key is never readable by others, not even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # whatever the umask
    os.replace(tmp, path)
