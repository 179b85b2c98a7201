"""Identifiers of a person (contract §10): their kinds, keys and what never links.

A channel knows a person by its own identifier: a ``customer`` id, a cookie
(``anonymous``), an app install (``device``), a ``loyalty`` card, a hashed
``phone`` or ``email``, a ``chat`` session. An :class:`Identifier` is a
``(type, id)`` pair; its key is ``type:id``.

Where things live (see the README's "Identity and erasure"): everything about
an identifier — its directory entry, the profile it names, the events a
producer keys by it — is on the partition of its **id** (``route``), which is
where a producer keying records by ``subject`` already sends them. A
``customer`` identifier is the customer id itself, as in v0.1, so the default
path is unchanged.

A **profile** is the set of identifiers of one person. Its id is its
``customer`` identifier's id if it has one, else its oldest identifier written
``type:id``; its state is stored under :attr:`Identifier.state_key` of the
identifier that names it (the customer id, or ``\\x01type:id``: a key no
customer id can take, since customer ids hold no control characters).

Nothing here reads a clock or does I/O; :func:`fingerprint` is a keyed hash, so
what the engine keeps of an erased person cannot be read back.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

CUSTOMER = "customer"
# identifiers that a person carries around unauthenticated: they follow the newest
# authenticated link instead of fusing two profiles (a shared tablet)
SOFT_TYPES = frozenset({"anonymous", "device"})
# at most one of each per profile
UNIQUE_TYPES = frozenset({CUSTOMER, "loyalty"})
DEFAULT_TYPES = (CUSTOMER, "anonymous", "device", "loyalty", "phone", "email", "chat")
# placeholder values broken channel apps send: never an identifier of anyone
BLOCKED_IDS = frozenset({"", "null", "undefined", "anonymous", "unknown", "0"})
NAMED_PREFIX = "\x01"  # state keys of profiles not named by a customer id
ID_LONGEST = 128


def is_blocked(value: str) -> bool:
    """A placeholder, not an identifier (compared trimmed and case-blind)."""
    return value.strip().lower() in BLOCKED_IDS


class Identifier(NamedTuple):
    type: str
    id: str

    @property
    def key(self) -> str:
        return f"{self.type}:{self.id}"

    @property
    def soft(self) -> bool:
        return self.type in SOFT_TYPES

    @property
    def route(self) -> str:
        """What decides its partition: the id, as producers key records by ``subject``."""
        return self.id

    @property
    def profile_id(self) -> str:
        """The id of a profile this identifier names (§10)."""
        return self.id if self.type == CUSTOMER else self.key

    @property
    def state_key(self) -> str:
        """The table key of a profile this identifier names."""
        return self.id if self.type == CUSTOMER else NAMED_PREFIX + self.key


def of_key(key: str) -> Identifier:
    """The identifier of ``type:id`` (types hold no colon, ids may)."""
    kind, _, value = key.partition(":")
    return Identifier(kind, value)


def of_state_key(state_key: str) -> Identifier:
    """The identifier that names the profile stored under ``state_key``."""
    if state_key.startswith(NAMED_PREFIX):
        return of_key(state_key[len(NAMED_PREFIX) :])
    return Identifier(CUSTOMER, state_key)


def profile_id_of(state_key: str) -> str:
    return of_state_key(state_key).profile_id


def fingerprint(identifier: Identifier, secret: bytes) -> str:
    """HMAC-SHA-256 of ``type:id``: what erasure keeps to recognise an identifier."""
    return hmac.new(secret, identifier.key.encode(), hashlib.sha256).hexdigest()
