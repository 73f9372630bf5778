"""Who may call the balance API: OAuth2 bearer tokens (JWTs) checked against the issuer's published
keys (a JWKS), and what each token may do. ``stream.api`` asks this module and nothing else.

A token is accepted when it is signed by a key of the JWKS (RS*, PS*, ES* or EdDSA, never HS* or
``none``; the key's own algorithm, named by ``kid``), names the configured issuer (``iss``) and
audience (``aud``), and has not expired (``exp``; ``nbf`` and ``iat`` are honoured when present),
all within ``API_AUTH_LEEWAY_S`` of clock skew. The JWKS (a file or an http(s) URL) is kept in
memory, fetched again after ``API_AUTH_JWKS_MAX_AGE_S`` and when a token names a key it does not
hold (at most once per 30 s), so the issuer can rotate its keys.

What a token may do comes from two claims. ``scope`` (space separated, as in OAuth2):

- ``cashback:accounts.read``: balances and history of the accounts in ``accounts``;
- ``cashback:offers.activate``: activating and deactivating offers for those accounts;
- ``cashback:operations``: balances and history of any account, the operations routes
  (``/v1/operations/*``) and the charities' donations (an aggregate over every customer);
- any valid token, whatever its scopes, reads the live offers.

``accounts`` is a JSON list of the account ids a bank-app backend acts for; ``sub`` names the caller
and is never read as an account, and a string ``accounts`` is refused rather than guessed at. The
API answers a token without the route's scope with 403, and an account outside the token's list
with the same 404 as an account the system has never seen, so a token cannot tell whether someone
else's account exists. A token never reaches the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from stream.settings import ConfigError, Settings

log = logging.getLogger(__name__)

ACCOUNTS_READ = "cashback:accounts.read"
OFFERS_ACTIVATE = "cashback:offers.activate"
OPERATIONS = "cashback:operations"
REDEMPTIONS_WRITE = "cashback:redemptions.write"
SCOPES = {
    ACCOUNTS_READ: "balances and history of the accounts in the token's `accounts` claim (a list of account ids)",
    OFFERS_ACTIVATE: "activating and deactivating offers for the accounts in the token's `accounts` claim",
    OPERATIONS: "balances and history of any account, /v1/operations/* and the charities' donations",
    REDEMPTIONS_WRITE: "redeeming points and store credit of the accounts in the token's `accounts` claim, and reading "
    "those redemptions (a token that reads balances does not spend them)",
}

# Asymmetric only: an HS* token would be checked with a secret the API does not have, and "none" with nothing.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 8192
REFRESH_INTERVAL_S = 30.0  # the least time between two fetches caused by unknown key ids
FETCH_TIMEOUT_S = 5.0


class InvalidToken(Exception):
    """The token is not one the API accepts; the message says why without repeating the token."""


class JwksError(Exception):
    """The JWKS cannot be read, or holds no key the API can check a signature with."""


@dataclass(frozen=True)
class Principal:
    """The caller a valid token names, and what it may do."""

    subject: str | None
    scopes: frozenset[str]
    accounts: frozenset[str]

    def has_any(self, scopes: Iterable[str]) -> bool:
        return not self.scopes.isdisjoint(scopes)

    def may_read(self, account_id: str) -> bool:
        """Balances and history of ``account_id``."""
        return OPERATIONS in self.scopes or (ACCOUNTS_READ in self.scopes and account_id in self.accounts)

    def may_redeem_for(self, account_id: str) -> bool:
        """Redemptions of ``account_id`` (neither reading its balances nor the operations scope spends them)."""
        return REDEMPTIONS_WRITE in self.scopes and account_id in self.accounts

    def may_activate_for(self, account_id: str) -> bool:
        """Offer activations of ``account_id`` (the operations scope reads, it never acts for a customer)."""
        return OFFERS_ACTIVATE in self.scopes and account_id in self.accounts


# --- the keys ------------------------------------------------------------------------------------


def parse_jwks(document: Any) -> dict[tuple[str, str], jwt.PyJWK]:
    """The signing keys of a JWK Set, by (kid, algorithm). A key the API cannot or must not check
    signatures with is left out (RFC 7517 §5: ignore what is not understood): no ``kid``, ``use``
    other than ``sig``, a private or symmetric key, an algorithm outside ``ALGORITHMS``, an RSA
    key under 2048 bits."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (no keys list)")
    keys: dict[tuple[str, str], jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig" or "d" in entry or "k" in entry:
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name not in ALGORITHMS:
            continue
        if isinstance(key.key, RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
            continue
        keys[(kid, key.algorithm_name)] = key
    if not keys:
        raise JwksError(f"no usable signing key (one with a kid and an algorithm of {', '.join(sorted(ALGORITHMS))})")
    return keys


def _is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def read_jwks(source: str) -> Any:
    """The JSON document at ``source``: an http(s) URL or a file path."""
    if _is_url(source):
        try:
            response = httpx.get(source, timeout=FETCH_TIMEOUT_S, follow_redirects=False)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPError as error:
            raise JwksError(f"cannot fetch {source}: {type(error).__name__}: {error}") from None
        except ValueError:
            raise JwksError(f"{source} did not answer JSON") from None
    try:
        return json.loads(Path(source).read_text())
    except FileNotFoundError:
        raise JwksError(f"no such file {source}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise JwksError(f"cannot read {source}: {error}") from None
    except ValueError:
        raise JwksError(f"{source} is not JSON") from None


class KeySet:
    """The issuer's keys, held in memory: fetched at start (``load``), again when older than
    ``max_age_s``, and when a token names a key id it does not hold (at most once per
    ``refresh_interval_s``, so tokens with made-up key ids cannot make the API hammer the issuer).
    A failed fetch keeps the keys held and is tried again after ``refresh_interval_s``."""

    def __init__(
        self,
        source: str,
        max_age_s: float = 300.0,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        fetch: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_age_s = max_age_s
        self.refresh_interval_s = refresh_interval_s
        self._fetch = fetch or (lambda: read_jwks(source))
        self._clock = clock
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}
        self._next_fetch = 0.0  # when the held keys are too old
        self._next_forced: float | None = None  # when an unknown key id may cause a fetch again (None: now)
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Fetch the keys now (at start); JwksError if that fails."""
        self._install(self._fetch_keys())

    def _fetch_keys(self) -> dict[tuple[str, str], jwt.PyJWK]:
        return parse_jwks(self._fetch())

    def _install(self, keys: dict[tuple[str, str], jwt.PyJWK]) -> None:
        self._keys = keys
        self._next_fetch = self._clock() + self.max_age_s

    def describe(self) -> str:
        """The keys held, for the log: their ids and algorithms (public, never secret)."""
        return ", ".join(f"{kid} ({alg})" for kid, alg in sorted(self._keys)) or "none"

    async def _refresh(self, why: str) -> None:
        try:
            held = set(self._keys)
            self._install(await asyncio.to_thread(self._fetch_keys))
            if set(self._keys) != held:
                log.info("JWKS %s fetched again (%s): keys %s", self.source, why, self.describe())
        except JwksError as error:
            self._next_fetch = self._clock() + self.refresh_interval_s
            log.warning("JWKS %s not refreshed (%s), keeping the %d keys held: %s", self.source, why, len(self._keys), error)

    async def key(self, kid: str, algorithm: str) -> jwt.PyJWK | None:
        """The key ``kid`` for ``algorithm``, fetching the JWKS again if it is too old or lacks it."""
        fetched = False
        if self._clock() >= self._next_fetch:
            async with self._lock:
                if self._clock() >= self._next_fetch:
                    await self._refresh("max age")
                    fetched = True
        found = self._keys.get((kid, algorithm))
        if found is not None or fetched:
            return found
        async with self._lock:
            found = self._keys.get((kid, algorithm))  # fetched while this request waited
            now = self._clock()
            if found is None and (self._next_forced is None or now >= self._next_forced):
                self._next_forced = now + self.refresh_interval_s
                await self._refresh(f"unknown key id {kid!r}")
                found = self._keys.get((kid, algorithm))
        return found


# --- the tokens ----------------------------------------------------------------------------------

_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "token is for another audience (aud)"),
    (jwt.InvalidIssuerError, "token is from another issuer (iss)"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "token algorithm is not its key's"),
    (jwt.InvalidIssuedAtError, "token iat is not a number"),
    (jwt.DecodeError, "malformed token"),
)


class Authenticator:
    """Checks bearer tokens against ``keys``, for ``issuer`` and ``audience``."""

    def __init__(self, keys: KeySet, issuer: str, audience: str, leeway_s: float = 30.0) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The API's authenticator, its JWKS loaded; ConfigError naming the variable if it cannot be."""
        required = "required by the balance API, which serves no request without a valid bearer token"
        if not settings.api_auth_jwks:
            raise ConfigError(
                f"invalid configuration: API_AUTH_JWKS: {required} (a JWKS file or an https URL of the issuer's keys)"
            )
        if not settings.api_auth_issuer:
            raise ConfigError(f"invalid configuration: API_AUTH_ISSUER: {required} (the iss its tokens carry)")
        source = settings.api_auth_jwks
        if source.startswith("http://") and not _loopback(source):
            log.warning("API_AUTH_JWKS is fetched over plain http from %s: anyone on the path can swap the keys", source)
        keys = KeySet(source, max_age_s=settings.api_auth_jwks_max_age_s)
        try:
            keys.load()
        except JwksError as error:
            raise ConfigError(f"invalid configuration: API_AUTH_JWKS: {error}") from None
        return cls(keys, settings.api_auth_issuer, settings.api_auth_audience, settings.api_auth_leeway_s)

    async def authenticate(self, token: str) -> Principal:
        """The caller ``token`` names; InvalidToken if the API must not accept it."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if "crit" in header:  # RFC 7515 §4.1.11: no extension is understood here (PyJWT >= 2.12 refuses it above)
            raise InvalidToken("token has critical header extensions")
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise InvalidToken("token algorithm not accepted (asymmetric signatures only)")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token names no key (kid)")
        key = await self.keys.key(kid, algorithm)
        if key is None:
            raise InvalidToken("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"token lacks the {error.claim} claim") from None
        except jwt.PyJWTError as error:
            reason = next((text for kind, text in _REFUSALS if isinstance(error, kind)), "invalid token")
            raise InvalidToken(reason) from None
        if claims["iss"] != self.issuer:  # exact, whatever the PyJWT version (2.10.0 matched substrings)
            raise InvalidToken("token is from another issuer (iss)")
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("token scope claim is not a space-separated string")
    accounts = claims.get("accounts", [])
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise InvalidToken("token accounts claim is not a list of account ids")
    subject = claims.get("sub")
    return Principal(
        subject=subject if isinstance(subject, str) else None,
        scopes=frozenset(scope.split()),
        accounts=frozenset(accounts),
    )


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
