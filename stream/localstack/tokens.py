"""Signing keys and bearer tokens for the development stack, the tests and ``cashback token``: what an
identity provider does for the balance API in production, done locally.

A ``SigningKey`` is a fresh key pair (ES256 by default; RS256 and EdDSA too); its private half is
written only where the caller says (mode 600), its public half goes into a JWKS file, which the
API reads (``API_AUTH_JWKS``) and which is replaced atomically so a running API can rotate to a
new key. ``mint`` signs a token with the claims ``stream.auth`` reads. Never commit a key or a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

LOCAL_ISSUER = "cashback-local"  # the issuer of the development stack's tokens
DEMO_TTL_S = 12 * 3600

ALGORITHMS = ("ES256", "RS256", "EdDSA")
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any  # a cryptography private key of the algorithm's kind

    @classmethod
    def generate(cls, algorithm: str = "ES256", kid: str | None = None) -> SigningKey:
        """A new key pair; its kid is the public key's RFC 7638 thumbprint unless given."""
        if algorithm == "ES256":
            private: Any = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"no key generation for {algorithm}: one of {', '.join(ALGORITHMS)}")
        return cls._with_kid(algorithm, private, kid)

    @classmethod
    def from_pem(cls, pem: bytes, kid: str | None = None) -> SigningKey:
        """The key in a PEM (as ``write_private`` writes it), its kid the thumbprint unless given;
        ValueError if it is not a private key of ``ALGORITHMS``."""
        try:
            private: PrivateKeyTypes = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise ValueError("the key is encrypted: give an unencrypted PEM") from None
        if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
            return cls._with_kid("ES256", private, kid)
        if isinstance(private, rsa.RSAPrivateKey):
            return cls._with_kid("RS256", private, kid)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return cls._with_kid("EdDSA", private, kid)
        raise ValueError("not an ES256 (P-256), RS256 or Ed25519 private key")

    @classmethod
    def _with_kid(cls, algorithm: str, private: Any, kid: str | None) -> SigningKey:
        key = cls("", algorithm, private)
        return cls(kid or key.thumbprint(), algorithm, private)

    def thumbprint(self) -> str:
        """The public key's JWK thumbprint (RFC 7638, SHA-256): the same key, the same kid."""
        public = self._public_jwk()
        canonical = json.dumps({m: public[m] for m in _THUMBPRINT_MEMBERS[public["kty"]]}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()

    def _public_jwk(self) -> dict[str, Any]:
        return json.loads(jwt.get_algorithm_by_name(self.algorithm).to_jwk(self.private_key.public_key()))

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK, with its kid, algorithm and use."""
        return {**self._public_jwk(), "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def write_private(self, path: Path) -> None:
        """The private key as PKCS#8 PEM, readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(self.private_pem())


def write_jwks(path: Path, keys: Iterable[SigningKey]) -> None:
    """The public keys as a JWKS file, replaced atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({"keys": [key.jwk() for key in keys]}, indent=2))
    os.replace(partial, path)


def mint(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    scopes: Iterable[str] = (),
    accounts: Iterable[str] | None = None,
    subject: str = "cashback-local-client",
    ttl_s: float = 300.0,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A bearer token signed by ``key``: ``iss``, ``aud``, ``sub``, ``iat``, ``exp``, ``scope`` (space
    separated), ``accounts`` (a list, when given), then ``claims`` (which override any of them)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + int(ttl_s),
        "scope": " ".join(scopes),
    }
    if accounts is not None:
        payload["accounts"] = list(accounts)
    payload.update(claims)
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
