"""stream.auth: which bearer tokens the balance API accepts and what they may do, with keys made
here (none is committed). It pins the PyJWT behaviours the API relies on: expiry, audience,
issuer (exactly: PyJWT 2.10.0 matched substrings), the leeway, ``alg: none`` and HS256-with-the-
public-key refused, critical header extensions refused, and the JWKS fetched again once for an
unknown key id (rotation), at most every 30 s."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from stream.auth import (
    ACCOUNTS_READ,
    OFFERS_ACTIVATE,
    OPERATIONS,
    Authenticator,
    InvalidToken,
    JwksError,
    KeySet,
    Principal,
    parse_jwks,
    read_jwks,
)
from stream.localstack.tokens import SigningKey, mint, write_jwks
from stream.settings import ConfigError, Settings

ISSUER = "https://idp.example.test/realms/bank"
AUDIENCE = "cashback-api"
KEY = SigningKey.generate("ES256", kid="key-1")  # made per test session, never written outside tmp_path
RSA_KEY = SigningKey.generate("RS256", kid="rsa-1")
ED_KEY = SigningKey.generate("EdDSA", kid="ed-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountingFile:
    """Reads the JWKS file and counts the reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0

    def __call__(self) -> Any:
        self.reads += 1
        return read_jwks(str(self.path))


@pytest.fixture()
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, [KEY, RSA_KEY, ED_KEY])
    return path


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def source(jwks_file: Path) -> CountingFile:
    return CountingFile(jwks_file)


@pytest.fixture()
def auth(source: CountingFile, clock: Clock) -> Authenticator:
    keys = KeySet(str(source.path), max_age_s=300, refresh_interval_s=30, fetch=source, clock=clock)
    keys.load()
    return Authenticator(keys, ISSUER, AUDIENCE, leeway_s=30)


def token(key: SigningKey = KEY, **overrides: Any) -> str:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "scopes": [ACCOUNTS_READ], "accounts": ["acct-1"]}
    return mint(key, **{**arguments, **overrides})


def check(auth: Authenticator, text: str) -> Principal:
    return asyncio.run(auth.authenticate(text))


def refused(auth: Authenticator, text: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        check(auth, text)
    return str(caught.value)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "app", "iat": now, "exp": now + 300, "scope": OPERATIONS, **overrides}


def signed(payload: dict[str, Any], key: SigningKey = KEY, **header: Any) -> str:
    """Any payload signed by ``key`` (PyJWT's JWS layer: its JWT layer refuses to sign some of these)."""
    return jwt.PyJWS().encode(json.dumps(payload).encode(), key.private_key, key.algorithm, headers={"kid": key.kid, **header})


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None = None) -> str:
    """A token built without PyJWT (which refuses to sign these): HS256 with ``secret``, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret is not None else ""
    return f"{signing_input}.{signature}"


# --- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, RSA_KEY, ED_KEY], ids=lambda k: k.algorithm)
def test_a_valid_token_names_its_caller_scopes_and_accounts(auth: Authenticator, key: SigningKey) -> None:
    who = check(auth, token(key, scopes=[ACCOUNTS_READ, OFFERS_ACTIVATE], accounts=["acct-1", "acct-2"], subject="app-7"))
    assert who == Principal(
        subject="app-7", scopes=frozenset({ACCOUNTS_READ, OFFERS_ACTIVATE}), accounts=frozenset({"acct-1", "acct-2"})
    )


def test_an_audience_list_holding_ours_is_accepted(auth: Authenticator) -> None:
    assert check(auth, token(aud=["another-api", AUDIENCE])).accounts == {"acct-1"}


def test_no_scope_and_no_accounts_is_a_valid_token_that_may_do_nothing(auth: Authenticator) -> None:
    who = check(auth, token(scopes=[], accounts=None))
    assert who.scopes == frozenset() and who.accounts == frozenset()
    assert not who.may_read("acct-1") and not who.may_activate_for("acct-1")


# --- refused: time --------------------------------------------------------------------------------


def test_an_expired_token_is_refused(auth: Authenticator) -> None:
    assert refused(auth, token(now=time.time() - 3600, ttl_s=600)) == "token expired"


def test_the_leeway_covers_clock_skew_and_no_more(auth: Authenticator) -> None:
    now = time.time()
    assert check(auth, token(now=now - 310, ttl_s=300))  # expired 10 s ago: within 30 s of skew
    assert refused(auth, token(now=now - 360, ttl_s=300)) == "token expired"  # 60 s ago
    assert check(auth, token(nbf=int(now + 10)))  # valid in 10 s
    assert refused(auth, token(nbf=int(now + 120))).startswith("token not valid yet")
    assert check(auth, token(now=now + 10))  # issued 10 s in "the future" by a fast clock
    assert refused(auth, token(now=now + 120)).startswith("token not valid yet")  # iat 2 min ahead


def test_without_leeway_a_just_expired_token_is_refused(auth: Authenticator) -> None:
    strict = Authenticator(auth.keys, ISSUER, AUDIENCE, leeway_s=0)
    assert refused(strict, token(now=time.time() - 310, ttl_s=300)) == "token expired"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_a_token_without_a_required_claim_is_refused(auth: Authenticator, claim: str) -> None:
    assert refused(auth, signed({k: v for k, v in claims().items() if k != claim})) == f"token lacks the {claim} claim"


# --- refused: audience and issuer -----------------------------------------------------------------


def test_a_token_for_another_audience_is_refused(auth: Authenticator) -> None:
    assert refused(auth, token(audience="another-api")) == "token is for another audience (aud)"
    assert refused(auth, token(aud=["another-api"])) == "token is for another audience (aud)"


@pytest.mark.parametrize(
    "issuer",
    [
        "https://evil.example.test/realms/bank",
        "https://idp.example.test/realms/ban",  # a substring of ours (PyJWT 2.10.0 accepted it)
        "https",
        ISSUER + "/",
    ],
)
def test_a_token_from_another_issuer_is_refused(auth: Authenticator, issuer: str) -> None:
    assert refused(auth, token(issuer=issuer)) == "token is from another issuer (iss)"


def test_an_issuer_that_is_not_a_string_is_refused(auth: Authenticator) -> None:
    assert refused(auth, signed(claims(iss=[ISSUER]))) == "token is from another issuer (iss)"
    assert refused(auth, signed(claims(iss=None))) == "token lacks the iss claim"


# --- refused: algorithms and signatures -----------------------------------------------------------


def test_alg_none_is_refused(auth: Authenticator) -> None:
    for alg in ("none", "None", "NONE"):
        unsigned = hand_made({"alg": alg, "kid": KEY.kid, "typ": "JWT"}, claims())
        assert refused(auth, unsigned) == "token algorithm not accepted (asymmetric signatures only)"


def test_hs256_signed_with_the_public_key_is_refused(auth: Authenticator) -> None:
    """The algorithm-confusion attack: an HS256 token whose HMAC secret is the published public key."""
    for secret in (RSA_KEY.public_pem(), json.dumps(RSA_KEY.jwk()).encode()):
        forged = hand_made({"alg": "HS256", "kid": RSA_KEY.kid, "typ": "JWT"}, claims(), secret)
        assert refused(auth, forged) == "token algorithm not accepted (asymmetric signatures only)"
    # And PyJWT itself refuses a public key as an HMAC secret (CVE-2022-29217's fix), should it be asked.
    forged = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), RSA_KEY.public_pem())
    with pytest.raises(jwt.InvalidKeyError):
        jwt.decode(forged, RSA_KEY.public_pem(), algorithms=["HS256"], audience=AUDIENCE)


def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(auth: Authenticator) -> None:
    impostor = SigningKey.generate("ES256", kid=KEY.kid)
    assert refused(auth, token(impostor)) == "token signature does not verify"


def test_a_kid_is_only_valid_with_its_keys_algorithm(auth: Authenticator) -> None:
    """An RS256 token naming the ES256 key's kid: no such (kid, algorithm), whatever it carries."""
    other = SigningKey(KEY.kid, "RS256", RSA_KEY.private_key)
    assert refused(auth, token(other)) == "token signed by an unknown key"


def test_a_tampered_payload_is_refused(auth: Authenticator) -> None:
    header, _, signature = token(accounts=["acct-1"]).split(".")
    payload = b64(json.dumps(claims(accounts=["acct-2"], scope=ACCOUNTS_READ)).encode())
    assert refused(auth, f"{header}.{payload}.{signature}") == "token signature does not verify"


def test_critical_header_extensions_are_refused(auth: Authenticator) -> None:
    critical = signed(claims(), crit=["exp-policy"], **{"exp-policy": 1})
    # PyJWT >= 2.12 refuses it as it reads the header ("malformed"); stream.auth refuses it whatever the version.
    assert refused(auth, critical) in ("token has critical header extensions", "malformed token")


def test_a_token_without_a_kid_is_refused(auth: Authenticator) -> None:
    assert refused(auth, jwt.encode(claims(), KEY.private_key, "ES256")) == "token names no key (kid)"


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30", "...", "x" * 9000])
def test_malformed_tokens_are_refused(auth: Authenticator, garbage: str) -> None:
    assert refused(auth, garbage) in ("malformed token", "token too long", "token names no key (kid)")


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("scope", [ACCOUNTS_READ], "token scope claim is not a space-separated string"),
        ("accounts", "acct-1", "token accounts claim is not a list of account ids"),
        ("accounts", ["acct-1", 7], "token accounts claim is not a list of account ids"),
    ],
)
def test_claims_of_the_wrong_type_are_refused(auth: Authenticator, claim: str, value: Any, reason: str) -> None:
    assert refused(auth, signed(claims(**{claim: value}))) == reason


# --- the keys: rotation, refresh, rate limit ------------------------------------------------------


def test_an_unknown_kid_fetches_the_jwks_once_then_is_refused(auth: Authenticator, source: CountingFile, clock: Clock) -> None:
    stranger = SigningKey.generate("ES256", kid="stranger")
    assert source.reads == 1  # at start
    assert refused(auth, token(stranger)) == "token signed by an unknown key"
    assert source.reads == 2  # one refresh, in case the issuer rotated
    for _ in range(5):
        refused(auth, token(SigningKey.generate("ES256")))  # made-up kids within 30 s: no fetch
    assert source.reads == 2
    clock.now += 31
    refused(auth, token(stranger))
    assert source.reads == 3


def test_a_rotated_key_is_picked_up_at_its_first_token(auth: Authenticator, source: CountingFile, clock: Clock) -> None:
    check(auth, token(KEY))
    new = SigningKey.generate("ES256", kid="key-2")
    write_jwks(source.path, [new])  # the issuer rotates: key-1 retired, key-2 published
    assert check(auth, token(new)).accounts == {"acct-1"}
    assert source.reads == 2
    assert refused(auth, token(KEY)) == "token signed by an unknown key"  # retired with the refresh
    # The next rotation within 30 s waits for the rate limit, then is picked up.
    newer = SigningKey.generate("ES256", kid="key-3")
    write_jwks(source.path, [new, newer])
    assert refused(auth, token(newer)) == "token signed by an unknown key"
    clock.now += 30
    assert check(auth, token(newer))


def test_the_jwks_is_fetched_again_after_its_max_age(auth: Authenticator, source: CountingFile, clock: Clock) -> None:
    check(auth, token(KEY))
    write_jwks(source.path, [RSA_KEY])  # key-1 withdrawn (say, compromised)
    clock.now += 299
    assert check(auth, token(KEY))  # the copy is still young
    clock.now += 2
    assert refused(auth, token(KEY)) == "token signed by an unknown key"
    assert source.reads == 2


def test_a_failed_refresh_keeps_the_keys_held(auth: Authenticator, source: CountingFile, clock: Clock, caplog: Any) -> None:
    source.path.write_text("not json")
    clock.now += 301
    with caplog.at_level(logging.WARNING, logger="stream.auth"):
        assert check(auth, token(KEY))
    assert "not refreshed" in caplog.text
    assert source.reads == 2
    assert check(auth, token(KEY)) and source.reads == 2  # tried again only after the refresh interval
    clock.now += 30
    check(auth, token(KEY))
    assert source.reads == 3


def test_concurrent_tokens_of_a_new_key_share_one_fetch(auth: Authenticator, source: CountingFile) -> None:
    new = SigningKey.generate("ES256", kid="key-2")
    write_jwks(source.path, [KEY, new])

    async def many() -> list[Principal]:
        return await asyncio.gather(*(auth.authenticate(token(new)) for _ in range(10)))

    assert len(asyncio.run(many())) == 10
    assert source.reads == 2


def test_the_jwks_keeps_only_keys_for_asymmetric_signatures() -> None:
    weak = SigningKey.generate("RS256", kid="weak")
    small_rsa = {**weak.jwk(), "n": b64((2**1023 + 1).to_bytes(128, "big"))}
    document = {
        "keys": [
            KEY.jwk(),
            {"kty": "oct", "k": b64(b"secret"), "kid": "hmac", "alg": "HS256"},  # symmetric
            {**RSA_KEY.jwk(), "kid": "enc", "use": "enc"},  # for encryption
            {k: v for k, v in ED_KEY.jwk().items() if k != "kid"},  # no kid
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.private_key)), "kid": "private"},  # a private key
            {**small_rsa, "kid": "small"},  # 1024 bits
            {**KEY.jwk(), "kid": "wrong-alg", "alg": "RS256"},  # an EC key claiming RSA
            {"kty": "AKP", "alg": "ML-DSA-65", "kid": "pq", "pub": "AAAA"},  # not understood: ignored
            "not a key",
        ]
    }
    assert set(parse_jwks(document)) == {("key-1", "ES256")}


@pytest.mark.parametrize(
    "document", [{}, {"keys": []}, {"keys": "x"}, [], {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}]
)
def test_a_jwks_without_a_usable_key_is_an_error(document: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document)


@pytest.fixture()
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A JWKS served over http on 127.0.0.1: (its URL, what it answers: {"status", "body"})."""
    answer: dict[str, Any] = {"status": 200, "body": json.dumps({"keys": [KEY.jwk()]}).encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", answer
    finally:
        server.shutdown()
        server.server_close()


def test_a_jwks_url_is_fetched_and_refetched(jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, answer = jwks_server
    settings = Settings.from_env({"API_AUTH_JWKS": url, "API_AUTH_ISSUER": ISSUER})
    auth = Authenticator.from_settings(settings)
    assert check(auth, token(KEY)).accounts == {"acct-1"}
    new = SigningKey.generate("ES256", kid="key-2")
    answer["body"] = json.dumps({"keys": [KEY.jwk(), new.jwk()]}).encode()
    assert check(auth, token(new))
    answer["status"] = 500
    with pytest.raises(JwksError, match="cannot fetch"):
        read_jwks(url)


# --- configuration --------------------------------------------------------------------------------


def test_the_api_needs_a_jwks_and_an_issuer(jwks_file: Path) -> None:
    with pytest.raises(ConfigError, match="API_AUTH_JWKS: required by the balance API"):
        Authenticator.from_settings(Settings.from_env({"API_AUTH_ISSUER": ISSUER}))
    with pytest.raises(ConfigError, match="API_AUTH_ISSUER: required by the balance API"):
        Authenticator.from_settings(Settings.from_env({"API_AUTH_JWKS": str(jwks_file)}))
    auth = Authenticator.from_settings(Settings.from_env({"API_AUTH_JWKS": str(jwks_file), "API_AUTH_ISSUER": ISSUER}))
    assert (auth.issuer, auth.audience, auth.leeway_s, auth.keys.max_age_s) == (ISSUER, "cashback-api", 30.0, 300.0)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        ("{not json", "is not JSON"),
        (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]}), "no usable signing key"),
    ],
)
def test_an_unusable_jwks_stops_the_api_naming_the_variable(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Authenticator.from_settings(Settings.from_env({"API_AUTH_JWKS": str(path), "API_AUTH_ISSUER": ISSUER}))
    assert str(caught.value).startswith("invalid configuration: API_AUTH_JWKS: ") and says in str(caught.value)


def test_the_api_command_without_auth_settings_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli import main

    for name in ("API_AUTH_JWKS", "API_AUTH_ISSUER", "SCHEMA_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["api"])  # stops before it connects to anything
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cashback api: invalid configuration: API_AUTH_JWKS: required") and "\n" not in error


# --- what a token may do --------------------------------------------------------------------------


def test_what_each_scope_allows() -> None:
    customer = Principal("app", frozenset({ACCOUNTS_READ, OFFERS_ACTIVATE}), frozenset({"acct-1"}))
    assert customer.may_read("acct-1") and customer.may_activate_for("acct-1")
    assert not customer.may_read("acct-2") and not customer.may_activate_for("acct-2")
    reader = Principal("app", frozenset({ACCOUNTS_READ}), frozenset({"acct-1"}))
    assert reader.may_read("acct-1") and not reader.may_activate_for("acct-1")
    operations = Principal("ops", frozenset({OPERATIONS}), frozenset())
    assert operations.may_read("acct-1") and operations.may_read("anyone")
    assert not operations.may_activate_for("acct-1")  # operations read; they never act for a customer
    activator = Principal("app", frozenset({OFFERS_ACTIVATE}), frozenset({"acct-1"}))
    assert not activator.may_read("acct-1") and activator.may_activate_for("acct-1")


def test_a_refused_token_is_never_logged(auth: Authenticator, caplog: Any) -> None:
    texts = [token(now=time.time() - 3600), token(audience="x"), token(SigningKey.generate("ES256")), token() + "x"]
    with caplog.at_level(logging.DEBUG):
        for text in texts:
            refused(auth, text)
    for text in texts:
        for part in text.split("."):
            assert part not in caplog.text


# --- cashback token -------------------------------------------------------------------------------


def test_the_token_command_signs_a_token_the_api_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli import main

    monkeypatch.delenv("API_AUTH_ISSUER", raising=False)
    key = SigningKey.generate("ES256")  # its kid: the public key's thumbprint, which the command derives again
    key.write_private(tmp_path / "key.pem")
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0
    write_jwks(tmp_path / "jwks.json", [key])
    arguments = ["--key", str(tmp_path / "key.pem"), "--issuer", ISSUER, "--account", "acct-1", "--account", "acct-2"]
    main(["token", *arguments, "--scope", ACCOUNTS_READ, "--scope", OFFERS_ACTIVATE, "--ttl", "60"])
    printed = capsys.readouterr().out.strip()
    settings = Settings.from_env({"API_AUTH_JWKS": str(tmp_path / "jwks.json"), "API_AUTH_ISSUER": ISSUER})
    who = check(Authenticator.from_settings(settings), printed)
    assert who.accounts == {"acct-1", "acct-2"} and who.scopes == {ACCOUNTS_READ, OFFERS_ACTIVATE}
    assert jwt.decode(printed, options={"verify_signature": False})["exp"] - time.time() <= 60


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--key", "{dir}/missing.pem", "--issuer", "x"], "key file {dir}/missing.pem: no such file"),
        (["--key", "{dir}", "--issuer", "x"], "is a directory"),
        (["--key", "{dir}/jwks.json", "--issuer", "x"], "not a usable private key"),
        (["--key", "{dir}/key.pem"], "no issuer: pass --issuer or set API_AUTH_ISSUER"),
    ],
)
def test_a_bad_token_command_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], arguments: list[str], says: str
) -> None:
    from stream.cli import main

    monkeypatch.delenv("API_AUTH_ISSUER", raising=False)
    KEY.write_private(tmp_path / "key.pem")
    write_jwks(tmp_path / "jwks.json", [KEY])
    with pytest.raises(SystemExit) as stopped:
        main(["token", *(a.format(dir=tmp_path) for a in arguments)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cashback token: ") and says.format(dir=tmp_path) in error and "\n" not in error
