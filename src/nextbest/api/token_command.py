"""``nextbest token``: mint a widget token, or make the key pair that signs them.

    nextbest token --customer c-42 --ttl 15m     # prints the token, nothing else, on stdout
    nextbest token --new-key /secrets/widget.key # widget.key (private, 0600) + widget.key.pub

A back end that hands tokens to its widgets mints them itself, with any JWT
library and the claims of :mod:`nextbest.api.widget_tokens`; this command does
the same for scripts, tests and a first try. What it says besides the token
goes to stderr and never names the customer.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nextbest.api.widget_tokens import WidgetTokenError, key_id, load_private_key, mint
from nextbest.core.duration import parse_duration
from nextbest.settings import Settings


def _fail(message: str) -> int:
    print(f"nextbest: {message}", file=sys.stderr)
    return 2


def mint_command(settings: Settings, customer: str | None, ttl_text: str, key: Path | None) -> int:
    if not customer:
        return _fail("token: --customer is required (or --new-key PATH)")
    try:
        ttl = parse_duration(ttl_text).total_seconds()
    except ValueError as error:
        return _fail(f"token: --ttl: {error}")
    longest = settings.widget_token_max_ttl.total_seconds()
    if not 0 < ttl <= longest:
        return _fail(
            f"token: --ttl must be positive and at most NEXTBEST_WIDGET_TOKEN_MAX_TTL "
            f"({longest:.0f} s): the API refuses longer-lived tokens"
        )
    path = key or settings.widget_token_private_key_file
    if path is None:
        return _fail("token: no key: pass --key or set NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE")
    try:
        private = load_private_key(
            path, "--key" if key else "NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE"
        )
        token = mint(private, customer, ttl, audience=settings.widget_token_audience)
    except (WidgetTokenError, ValueError) as error:
        return _fail(f"token: {error}")
    expires = datetime.fromtimestamp(datetime.now(UTC).timestamp() + ttl, UTC)
    print(token)
    print(
        f"nextbest: widget token (key {key_id(private.public_key())}) valid until "
        f"{expires:%Y-%m-%dT%H:%M:%SZ}",
        file=sys.stderr,
    )
    return 0


def new_key_command(path: Path) -> int:
    public_path = path.with_name(path.name + ".pub")
    if path.exists() or public_path.exists():
        return _fail(f"token: {path} or {public_path} exists already; not overwriting a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        public_path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except OSError as error:
        return _fail(f"token: cannot write {path}: {error.strerror}")
    print(
        f"nextbest: wrote {path} (private: the minting back end only) and {public_path} "
        f"(public: NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE of the API), key id "
        f"{key_id(private.public_key())}",
        file=sys.stderr,
    )
    return 0
