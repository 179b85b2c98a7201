"""Next-best-service triggers (contract §5): built from a decision, sent as CloudEvents.

A trigger's id is a UUID derived from the customer, the action, the signal and
what caused it (the event id, or the deadline for a timer), so the same input
and state always give the same id and channel apps can drop repeats.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import orjson

from nextbest.core.context import Context, Identity, TriggerRecord
from nextbest.core.rules import Choice

CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"
SOURCE = "/nextbest"
TYPE = "nextbest.trigger"
_NAMESPACE = uuid.UUID("6d1f4a52-8f0b-5c9e-9a57-2b7c3e1f0a64")
_NAMESPACE_BYTES = _NAMESPACE.bytes


class Trigger(NamedTuple):
    id: str
    time: datetime
    subject: str
    channel: str
    action: str
    signal: str
    priority: int
    reason: str
    caused_by: str | None
    from_channel: str | None
    moment: datetime  # the signal's moment: event time or deadline

    @property
    def record(self) -> TriggerRecord:
        return TriggerRecord(self.id, self.action, self.channel, self.time)


def trigger_id(subject: str, action: str, signal: str, cause: str) -> str:
    """``uuid.uuid5(_NAMESPACE, subject␟action␟signal␟cause)``, formatted directly."""
    name = "\x1f".join((subject, action, signal, cause)).encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def build(choice: Choice, context: Context, now: datetime) -> Trigger:
    """The trigger for the winning ``choice``, decided at ``now`` about ``context``."""
    rule, signal = choice.rule, choice.signal
    moment_context = signal.context if signal.context is not None else context
    cause = signal.caused_by if signal.caused_by is not None else signal.moment.isoformat()
    cart = moment_context.cart
    reason = rule.explain(
        dict(
            action=rule.action,
            signal=signal.name.value,
            channel=choice.channel,
            signal_channel=signal.channel,
            from_channel=signal.from_channel or "nowhere",
            cart_items=sum(item.qty for item in cart.items) if cart.items else 0,
            cart_value=f"{cart.value:.2f}" if cart.items else "0.00",
        )
    )
    return Trigger(
        id=trigger_id(context.customer_id, rule.action, signal.name.value, cause),
        time=now,
        subject=context.customer_id,
        channel=choice.channel,
        action=rule.action,
        signal=signal.name.value,
        priority=rule.priority,
        reason=reason,
        caused_by=signal.caused_by,
        from_channel=signal.from_channel,
        moment=signal.moment,
    )


def encode(trigger: Trigger, document: bytes, identities: Iterable[Identity] = ()) -> bytes:
    """The trigger as a structured-mode CloudEvent; ``document`` is the context's JSON,
    ``identities`` the profile's identifiers (``data.identities``, contract v0.2 §10)."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": trigger.id,
            "source": SOURCE,
            "type": TYPE,
            "time": trigger.time,
            "subject": trigger.subject,
            "channel": trigger.channel,
            "datacontenttype": "application/json",
            "data": {
                "action": trigger.action,
                "signal": trigger.signal,
                "priority": trigger.priority,
                "reason": trigger.reason,
                "caused_by": trigger.caused_by,
                "from_channel": trigger.from_channel,
                "context": orjson.Fragment(document),
                "identities": [{"type": i.type, "id": i.id} for i in identities],
            },
        },
        option=orjson.OPT_UTC_Z,
    )
