"""Widget tokens: minted and verified with PyJWT, refused for every reason with the reason."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nextbest.api.widget_tokens import (
    LEEWAY,
    TokenRefused,
    WidgetTokenError,
    WidgetTokens,
    key_id,
    load_private_key,
    load_public_keys,
    mint,
)

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
NOW = 1_800_000_000.0


def verifier(*keys: Ed25519PrivateKey, max_ttl: float = 3600) -> WidgetTokens:
    public = [key.public_key() for key in keys or (KEY,)]
    return WidgetTokens(public, audience="nextbest", max_ttl=max_ttl, clock=lambda: NOW)


def refusal(verify: WidgetTokens, token: str) -> str:
    with pytest.raises(TokenRefused) as raised:
        verify.verify(token)
    return raised.value.reason


def pem_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_fresh_token_grants_its_customer_until_it_expires() -> None:
    token = mint(KEY, "c-42", 900, audience="nextbest")
    grant = verifier().verify(token)
    assert grant.customer_id == "c-42"
    assert abs(grant.expires_at - (time.time() + 900)) < 5
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": key_id(KEY.public_key()), "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"sub", "aud", "iat", "exp", "jti"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: mint(KEY, "c-42", 60, audience="nextbest", now=time.time() - 3600), "expired"),
        (lambda: mint(KEY, "c-42", 60, audience="elsewhere"), "wrong_audience"),
        (lambda: mint(KEY, "c-42", 7200, audience="nextbest"), "ttl_too_long"),
        (lambda: mint(OTHER, "c-42", 60, audience="nextbest"), "unknown_key"),
        (
            lambda: mint(KEY, "c-42", 60, audience="nextbest", now=time.time() + 600),
            "not_yet_valid",
        ),
        (lambda: "not.a.token", "malformed"),
        (lambda: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjLTQyIn0.", "wrong_algorithm"),
    ],
)
def test_a_bad_token_is_refused_with_its_reason(token: object, reason: str) -> None:
    assert callable(token)
    assert refusal(verifier(), token()) == reason


def test_a_forged_signature_under_a_known_key_id_is_refused() -> None:
    real = mint(KEY, "c-42", 60, audience="nextbest")
    header, _, _ = real.split(".")
    forged_body = mint(OTHER, "c-1", 60, audience="nextbest").split(".")
    forged = ".".join([header, forged_body[1], forged_body[2]])
    assert refusal(verifier(), forged) == "invalid_signature"


def test_the_public_key_can_never_serve_as_an_hmac_secret() -> None:
    """The classic algorithm confusion: HS256 'signed' with the public key's PEM."""
    header = {"alg": "HS256", "kid": key_id(KEY.public_key())}
    claims = {
        "sub": "c-1",
        "aud": "nextbest",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
    }
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims)
    ]
    token = ".".join([*segments, "c2lnbmF0dXJl"])
    assert refusal(verifier(), token) == "wrong_algorithm"


def test_a_token_without_an_expiry_is_refused() -> None:
    claims = {"sub": "c-1", "aud": "nextbest", "iat": int(time.time())}
    token = jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": key_id(KEY.public_key())})
    assert refusal(verifier(), token) == "missing_claim"


def test_during_a_rotation_both_keys_verify() -> None:
    both = verifier(KEY, OTHER)
    assert both.verify(mint(KEY, "c-1", 60, audience="nextbest")).customer_id == "c-1"
    assert both.verify(mint(OTHER, "c-2", 60, audience="nextbest")).customer_id == "c-2"
    assert both.key_ids == sorted([key_id(KEY.public_key()), key_id(OTHER.public_key())])


def test_remaining_time_counts_the_leeway() -> None:
    grant = verifier().verify(mint(KEY, "c-1", 60, audience="nextbest"))
    remaining = verifier().remaining(grant)
    assert remaining == pytest.approx(grant.expires_at + LEEWAY - NOW)


def test_key_files(tmp_path: Path) -> None:
    public = tmp_path / "widget.pub"
    public.write_bytes(pem_public(KEY) + pem_public(OTHER))
    assert [key_id(k) for k in load_public_keys(public)] == [
        key_id(KEY.public_key()),
        key_id(OTHER.public_key()),
    ]
    private = tmp_path / "widget.key"
    private.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert key_id(load_private_key(private).public_key()) == key_id(KEY.public_key())
    with pytest.raises(WidgetTokenError, match="is it the private key"):
        load_public_keys(private)  # a private key handed to the API by mistake
    ecdsa = tmp_path / "ec.pub"
    ecdsa.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(WidgetTokenError, match="use Ed25519 keys"):
        load_public_keys(ecdsa)
    empty = tmp_path / "empty.pub"
    empty.write_text("")
    with pytest.raises(WidgetTokenError, match="holds no PEM key"):
        load_public_keys(empty)


def test_minting_refuses_what_the_api_would() -> None:
    with pytest.raises(ValueError, match="1 to 128"):
        mint(KEY, "", 60, audience="nextbest")
    with pytest.raises(ValueError, match="positive"):
        mint(KEY, "c-1", 0, audience="nextbest")
