"""The live context document of contract §6, as frozen values.

:func:`to_document` gives the JSON-ready mapping that Redis, HTTP and triggers
carry; :func:`from_document` reads it back. Lists are tuples and keep only their
newest entries (``JOURNEY_KEPT`` and friends).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

JOURNEY_KEPT = 20
SEARCHES_KEPT = 5
PRODUCTS_KEPT = 10
TRIGGERS_KEPT = 10

CheckoutState = Literal["none", "started"]


@dataclass(frozen=True, slots=True)
class ChannelActivity:
    last_seen: datetime
    events: int


@dataclass(frozen=True, slots=True)
class JourneySegment:
    channel: str
    since: datetime


@dataclass(frozen=True, slots=True)
class CartItem:
    sku: str
    qty: int
    price: float


@dataclass(frozen=True, slots=True)
class Cart:
    items: tuple[CartItem, ...] = ()

    @property
    def value(self) -> float:
        return round(sum(item.qty * item.price for item in self.items), 2)


@dataclass(frozen=True, slots=True)
class Checkout:
    state: CheckoutState = "none"
    started_at: datetime | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class SearchRecord:
    query: str
    results: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Consent:
    email: bool = False
    mobile: bool = False


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    id: str
    action: str
    channel: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Context:
    """One customer's live context. ``version`` counts the events applied."""

    customer_id: str
    version: int = 0
    updated_at: datetime | None = None
    last_event_at: datetime | None = None
    current_channel: str | None = None
    channels: Mapping[str, ChannelActivity] = field(default_factory=dict)
    journey: tuple[JourneySegment, ...] = ()
    cart: Cart = Cart()
    checkout: Checkout = Checkout()
    recent_searches: tuple[SearchRecord, ...] = ()
    recent_products: tuple[str, ...] = ()
    consent: Consent = Consent()
    last_triggers: tuple[TriggerRecord, ...] = ()


def to_document(context: Context) -> dict[str, Any]:
    """The §6 document: plain dicts and lists, datetimes left for the JSON encoder."""
    return {
        "customer_id": context.customer_id,
        "version": context.version,
        "updated_at": context.updated_at,
        "last_event_at": context.last_event_at,
        "current_channel": context.current_channel,
        "channels": {
            name: {"last_seen": activity.last_seen, "events": activity.events}
            for name, activity in context.channels.items()
        },
        "journey": [{"channel": s.channel, "since": s.since} for s in context.journey],
        "cart": {
            "items": [
                {"sku": item.sku, "qty": item.qty, "price": item.price}
                for item in context.cart.items
            ],
            "value": context.cart.value,
        },
        "checkout": {
            "state": context.checkout.state,
            "started_at": context.checkout.started_at,
            "channel": context.checkout.channel,
        },
        "recent_searches": [
            {"query": s.query, "results": s.results, "at": s.at} for s in context.recent_searches
        ],
        "recent_products": list(context.recent_products),
        "consent": {"email": context.consent.email, "mobile": context.consent.mobile},
        "last_triggers": [
            {"id": t.id, "action": t.action, "channel": t.channel, "at": t.at}
            for t in context.last_triggers
        ],
    }


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def from_document(document: Mapping[str, Any]) -> Context:
    """Read a document written by :func:`to_document` (after a JSON round trip)."""
    checkout = document["checkout"]
    consent = document["consent"]
    return Context(
        customer_id=document["customer_id"],
        version=document["version"],
        updated_at=_maybe_time(document["updated_at"]),
        last_event_at=_maybe_time(document["last_event_at"]),
        current_channel=document["current_channel"],
        channels={
            name: ChannelActivity(_time(activity["last_seen"]), activity["events"])
            for name, activity in document["channels"].items()
        },
        journey=tuple(JourneySegment(s["channel"], _time(s["since"])) for s in document["journey"]),
        cart=Cart(
            tuple(
                CartItem(item["sku"], item["qty"], item["price"])
                for item in document["cart"]["items"]
            )
        ),
        checkout=Checkout(
            checkout["state"], _maybe_time(checkout["started_at"]), checkout["channel"]
        ),
        recent_searches=tuple(
            SearchRecord(s["query"], s["results"], _time(s["at"]))
            for s in document["recent_searches"]
        ),
        recent_products=tuple(document["recent_products"]),
        consent=Consent(email=consent["email"], mobile=consent["mobile"]),
        last_triggers=tuple(
            TriggerRecord(t["id"], t["action"], t["channel"], _time(t["at"]))
            for t in document["last_triggers"]
        ),
    )
