"""Widget tokens: short-lived signed JWTs that open one customer's context, and nothing else.

A chat widget runs in the customer's browser, so whatever token it holds, the
customer holds. A service token (``NEXTBEST_API_TOKENS``) there would let
anyone read every customer's context; a widget token lets its holder read the
context of the customer it names, until it expires.

The format is a JWT (RFC 7519) signed with Ed25519 (``alg: EdDSA``, RFC 8037)::

    header  {"alg": "EdDSA", "typ": "JWT", "kid": "<key id>"}
    claims  {"sub": "<customer id>", "aud": "<NEXTBEST_WIDGET_TOKEN_AUDIENCE>",
             "iat": <issued, s>, "exp": <expires, s>, "jti": "<random>"}

Why an asymmetric signature: the API verifies with the **public** key only, so
no API replica (and nothing that reads its environment or volumes) can mint a
token; only the back end that hands tokens to its widgets holds the private
key. With HS256 the signing secret would sit in every API pod. Ed25519 over
ECDSA: deterministic signatures (no per-signature nonce to get wrong), small
keys, one curve, no parameters. The algorithm is pinned: a token that says
``none``, ``HS256`` or anything else is refused, so a public key can never be
used as an HMAC secret. Signing and verifying are PyJWT's and ``cryptography``'s.

The API refuses (401) a token that is malformed, signed by an unknown key,
expired, not yet valid, meant for another audience, missing a claim, or
valid for longer than ``NEXTBEST_WIDGET_TOKEN_MAX_TTL`` (``exp - iat``): a
long-lived widget token is a service token by another name. ``kid`` is
derived from the public key (:func:`key_id`), so during a rotation the API's
key file holds the old and the new public key and picks by ``kid``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
LEEWAY = 30.0  # seconds of clock difference tolerated between the minting back end and the API
CUSTOMER_ID_MAX = 128
REQUIRED_CLAIMS = ("sub", "aud", "iat", "exp")


class WidgetTokenError(Exception):
    """A key file cannot be used; ``str(error)`` is one line naming it."""


class TokenRefused(Exception):
    """The token does not grant access. ``reason`` is a metric label (never personal)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a valid widget token allows: one customer's context, until ``expires_at``."""

    customer_id: str
    expires_at: float  # Unix time


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable id of a public key: the first 16 base64url characters of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode()[:16]


def _pem_blocks(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("-----BEGIN"):
            current = [line]
        elif line.startswith("-----END") and current:
            current.append(line)
            blocks.append("\n".join(current) + "\n")
            current = []
        elif current:
            current.append(line)
    return blocks


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM) in ``path``: several while keys are rotated."""
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise WidgetTokenError(
            f"NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE: cannot read {path} ({type(error).__name__})"
        ) from None
    keys = []
    for block in _pem_blocks(text):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except ValueError:
            raise WidgetTokenError(
                f"NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE: {path} holds a PEM block that is not "
                "a public key (is it the private key? the API needs only the public one)"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise WidgetTokenError(
                f"NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE: {path} holds a "
                f"{type(key).__name__.removeprefix('_')}; widget tokens use Ed25519 keys"
            )
        keys.append(key)
    if not keys:
        raise WidgetTokenError(f"NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE: {path} holds no PEM key")
    return keys


def load_private_key(
    path: Path, setting: str = "NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE"
) -> Ed25519PrivateKey:
    """The Ed25519 private key (PEM, PKCS#8, unencrypted) in ``path``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise WidgetTokenError(f"{setting}: cannot read {path} ({error.strerror})") from None
    except (ValueError, TypeError):
        raise WidgetTokenError(f"{setting}: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise WidgetTokenError(f"{setting}: {path} is not an Ed25519 key")
    return key


def mint(
    private_key: Ed25519PrivateKey,
    customer_id: str,
    ttl: float,
    *,
    audience: str,
    now: float | None = None,
) -> str:
    """A widget token for ``customer_id``, valid ``ttl`` seconds from ``now``."""
    if not 0 < len(customer_id) <= CUSTOMER_ID_MAX:
        raise ValueError(f"a customer id has 1 to {CUSTOMER_ID_MAX} characters")
    if ttl <= 0:
        raise ValueError("the time to live must be positive")
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": customer_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": secrets.token_urlsafe(12),
    }
    headers = {"kid": key_id(private_key.public_key()), "typ": "JWT"}
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers=headers)


def looks_like_a_jwt(token: str) -> bool:
    """Three base64url parts: worth verifying (a service token is compared, not parsed)."""
    return token.count(".") == 2 and len(token) <= 4096


class WidgetTokens:
    """Verifies widget tokens with the public keys of NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE."""

    def __init__(
        self,
        public_keys: Sequence[Ed25519PublicKey],
        *,
        audience: str,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not public_keys:
            raise ValueError("no public key")
        self._keys = {key_id(key): key for key in public_keys}
        self._audience = audience
        self._max_ttl = max_ttl
        self._clock = clock

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Grant:
        """The grant ``token`` carries; raises :class:`TokenRefused` with the reason."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRefused("malformed", "the token is not a well-formed JWT") from None
        if header.get("alg") != ALGORITHM:
            raise TokenRefused("wrong_algorithm", f"widget tokens are signed with {ALGORITHM}")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise TokenRefused("unknown_key", "the token is signed by a key this API does not know")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                leeway=LEEWAY,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired", "the widget token has expired") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("invalid_signature", "the token's signature is not valid") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRefused("missing_claim", f"the token has no '{error.claim}' claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("wrong_audience", "the token is meant for another service") from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise TokenRefused("not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidTokenError:
            raise TokenRefused("malformed", "the token's claims are not valid") from None
        return self._grant(claims)

    def _grant(self, claims: dict[str, object]) -> Grant:
        subject, issued, expires = claims["sub"], claims["iat"], claims["exp"]
        if not isinstance(subject, str) or not 0 < len(subject) <= CUSTOMER_ID_MAX:
            raise TokenRefused("malformed", "the token's subject is not a customer id")
        if not isinstance(issued, int | float) or not isinstance(expires, int | float):
            raise TokenRefused("malformed", "the token's times are not numbers")
        if expires - issued > self._max_ttl:
            raise TokenRefused(
                "ttl_too_long",
                f"the token is valid for longer than this API accepts ({self._max_ttl:.0f} s)",
            )
        return Grant(subject, float(expires))

    def remaining(self, grant: Grant) -> float:
        """Seconds until ``grant`` expires (the leeway included), on this API's clock."""
        return grant.expires_at + LEEWAY - self._clock()


def widget_tokens_from(path: Path | None, *, audience: str, max_ttl: float) -> WidgetTokens | None:
    """The verifier the settings configure, or None when widget tokens are off."""
    if path is None:
        return None
    return WidgetTokens(load_public_keys(path), audience=audience, max_ttl=max_ttl)
