"""A customer's live context (contract §6) and the reducer that folds events into it.

:func:`apply` is the context reducer: ``(context, event, now) -> context``. It
never reads a clock and never mutates. It assumes events come in ``time``
order; :mod:`nextbest.core.timeline` takes care of the ones that do not.

The values are named tuples, not frozen dataclasses: a frozen dataclass sets
each field through ``object.__setattr__`` and costs several times as much to
build, and the reducer builds a context per event.

:func:`to_document` gives the JSON-ready mapping that Redis, HTTP and triggers
carry; :func:`from_document` reads it back. Lists are tuples and keep only their
newest entries (``JOURNEY_KEPT`` and friends).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from nextbest.core.envelope import Event

JOURNEY_KEPT = 20
SEARCHES_KEPT = 5
PRODUCTS_KEPT = 10
TRIGGERS_KEPT = 10

CheckoutState = Literal["none", "started"]


class ChannelActivity(NamedTuple):
    last_seen: datetime
    events: int


class JourneySegment(NamedTuple):
    channel: str
    since: datetime


class CartItem(NamedTuple):
    sku: str
    qty: int
    price: float


class Cart(NamedTuple):
    items: tuple[CartItem, ...] = ()

    @property
    def value(self) -> float:
        return round(sum(item.qty * item.price for item in self.items), 2)


class Checkout(NamedTuple):
    state: CheckoutState = "none"
    started_at: datetime | None = None
    channel: str | None = None


class SearchRecord(NamedTuple):
    query: str
    results: int
    at: datetime


class Consent(NamedTuple):
    email: bool = False
    mobile: bool = False


class TriggerRecord(NamedTuple):
    id: str
    action: str
    channel: str
    at: datetime


NO_CART = Cart()
NO_CHECKOUT = Checkout()
NO_CONSENT = Consent()


class Context(NamedTuple):
    """One customer's live context. ``version`` counts the events applied.

    The last two fields are not part of the document: the times of recent
    zero-result searches (``search_frustration``) and of the newest product
    view (``associate_assist``).
    """

    customer_id: str
    version: int = 0
    updated_at: datetime | None = None
    last_event_at: datetime | None = None
    current_channel: str | None = None
    channels: Mapping[str, ChannelActivity] = {}
    journey: tuple[JourneySegment, ...] = ()
    cart: Cart = NO_CART
    checkout: Checkout = NO_CHECKOUT
    recent_searches: tuple[SearchRecord, ...] = ()
    recent_products: tuple[str, ...] = ()
    consent: Consent = NO_CONSENT
    last_triggers: tuple[TriggerRecord, ...] = ()
    zero_searches: tuple[datetime, ...] = ()
    product_viewed_at: datetime | None = None


# --- the reducer -------------------------------------------------------------------


def _add_to_cart(cart: Cart, sku: str, qty: int, price: float) -> Cart:
    items = list(cart.items)
    for index, item in enumerate(items):
        if item.sku == sku:
            items[index] = CartItem(sku, item.qty + qty, price)
            return Cart(tuple(items))
    return Cart((*items, CartItem(sku, qty, price)))


def _remove_from_cart(cart: Cart, sku: str, qty: int) -> Cart:
    items: list[CartItem] = []
    for item in cart.items:
        if item.sku == sku:
            if item.qty > qty:
                items.append(CartItem(sku, item.qty - qty, item.price))
        else:
            items.append(item)
    return Cart(tuple(items))


def _remember_product(products: tuple[str, ...], sku: str) -> tuple[str, ...]:
    return (*(p for p in products if p != sku), sku)[-PRODUCTS_KEPT:]


def apply(
    context: Context,
    event: Event,
    now: datetime,
    *,
    search_window: timedelta,
    search_count: int,
) -> Context:
    """``context`` with ``event`` applied after everything it holds, changed at ``now``."""
    moment = event.time
    channel = event.channel
    channels = dict(context.channels)
    seen = channels.get(channel)
    if seen is None:
        channels[channel] = ChannelActivity(moment, 1)
    else:
        last_seen = moment if moment > seen.last_seen else seen.last_seen
        channels[channel] = ChannelActivity(last_seen, seen.events + 1)
    journey = context.journey
    if channel != context.current_channel:
        journey = (*journey, JourneySegment(channel, moment))[-JOURNEY_KEPT:]
    last_event_at = context.last_event_at
    if last_event_at is None or moment > last_event_at:
        last_event_at = moment
    cart = context.cart
    checkout = context.checkout
    searches = context.recent_searches
    products = context.recent_products
    consent = context.consent
    zero_searches = context.zero_searches
    viewed_at = context.product_viewed_at
    kind = event.type
    data = event.data
    if kind == "product.viewed":
        products = _remember_product(products, data["sku"])
        if viewed_at is None or moment > viewed_at:
            viewed_at = moment
    elif kind == "product.scanned":
        products = _remember_product(products, data["sku"])
    elif kind == "search.performed":
        results = data["results"]
        searches = (*searches, SearchRecord(data["query"], results, moment))[-SEARCHES_KEPT:]
        if results == 0:
            recent = (t for t in zero_searches if moment - t < search_window)
            # one more than the threshold is enough to tell "the N-th" from later ones
            zero_searches = (*recent, moment)[-(search_count + 1) :]
    elif kind == "cart.item_added":
        cart = _add_to_cart(cart, data["sku"], data["qty"], float(data["price"]))
    elif kind == "cart.item_removed":
        cart = _remove_from_cart(cart, data["sku"], data["qty"])
    elif kind == "checkout.started":
        checkout = Checkout("started", moment, channel)
    elif kind == "order.placed":
        cart, checkout = NO_CART, NO_CHECKOUT
    elif kind == "consent.updated":
        consent = Consent(data.get("email", consent.email), data.get("mobile", consent.mobile))
    return Context(
        context.customer_id,
        context.version + 1,
        now,
        last_event_at,
        channel,
        channels,
        journey,
        cart,
        checkout,
        searches,
        products,
        consent,
        context.last_triggers,
        zero_searches,
        viewed_at,
    )


# --- the document ------------------------------------------------------------------


def to_document(context: Context) -> dict[str, Any]:
    """The §6 document: plain dicts and lists, datetimes left for the JSON encoder."""
    cart = context.cart
    checkout = context.checkout
    consent = context.consent
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
            "items": [{"sku": i.sku, "qty": i.qty, "price": i.price} for i in cart.items],
            "value": cart.value,
        },
        "checkout": {
            "state": checkout.state,
            "started_at": checkout.started_at,
            "channel": checkout.channel,
        },
        "recent_searches": [
            {"query": s.query, "results": s.results, "at": s.at} for s in context.recent_searches
        ],
        "recent_products": list(context.recent_products),
        "consent": {"email": consent.email, "mobile": consent.mobile},
        "last_triggers": [
            {"id": t.id, "action": t.action, "channel": t.channel, "at": t.at}
            for t in context.last_triggers
        ],
    }


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def from_document(
    document: Mapping[str, Any],
    *,
    zero_searches: tuple[datetime, ...] = (),
    product_viewed_at: datetime | None = None,
) -> Context:
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
        zero_searches=zero_searches,
        product_viewed_at=product_viewed_at,
    )
