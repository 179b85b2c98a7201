"""A customer's whole state: the §6 context plus what the engine must remember.

:func:`apply` is the context reducer: ``(state, event, now) -> state``. It never
reads a clock and never mutates; applying an event id the customer has among its
last ``SEEN_KEPT`` events returns the same state object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from nextbest.core.context import (
    JOURNEY_KEPT,
    PRODUCTS_KEPT,
    SEARCHES_KEPT,
    TRIGGERS_KEPT,
    Cart,
    CartItem,
    ChannelActivity,
    Checkout,
    Consent,
    Context,
    JourneySegment,
    SearchRecord,
    TriggerRecord,
    from_document,
    to_document,
)
from nextbest.core.envelope import Event

SEEN_KEPT = 100


@dataclass(frozen=True, slots=True)
class CustomerState:
    """The context document and the engine's memory of this customer.

    ``seen_ids`` are the newest event ids (duplicates are ignored);
    ``zero_searches`` the times of recent zero-result searches;
    ``product_viewed_at`` the newest product view; ``last_fired`` when each action
    was last triggered (the cooldown); ``fired`` the deadline each timer signal
    last fired for (see :mod:`nextbest.core.timers`).
    """

    context: Context
    seen_ids: tuple[str, ...] = ()
    zero_searches: tuple[datetime, ...] = ()
    product_viewed_at: datetime | None = None
    last_fired: Mapping[str, datetime] = field(default_factory=dict)
    fired: Mapping[str, datetime] = field(default_factory=dict)

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        return cls(Context(customer_id=customer_id))


def _later(first: datetime | None, second: datetime) -> datetime:
    return second if first is None or second > first else first


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


def _with_activity(context: Context, event: Event, now: datetime) -> Context:
    """What every event changes: version, times, channel activity, the journey."""
    before = context.channels.get(event.channel)
    channels = dict(context.channels)
    channels[event.channel] = ChannelActivity(
        last_seen=_later(before.last_seen if before else None, event.time),
        events=(before.events if before else 0) + 1,
    )
    journey = context.journey
    if event.channel != context.current_channel:
        journey = (*journey, JourneySegment(event.channel, event.time))[-JOURNEY_KEPT:]
    # every field spelled out: this runs once per event, and dataclasses.replace
    # introspects the fields on each call (twice the cost)
    return Context(
        customer_id=context.customer_id,
        version=context.version + 1,
        updated_at=now,
        last_event_at=_later(context.last_event_at, event.time),
        current_channel=event.channel,
        channels=channels,
        journey=journey,
        cart=context.cart,
        checkout=context.checkout,
        recent_searches=context.recent_searches,
        recent_products=context.recent_products,
        consent=context.consent,
        last_triggers=context.last_triggers,
    )


def _with_data(context: Context, event: Event) -> Context:
    """What the event's type changes in the document."""
    data = event.data
    kind = event.type
    if kind in ("product.viewed", "product.scanned"):
        return replace(
            context, recent_products=_remember_product(context.recent_products, data["sku"])
        )
    if kind == "search.performed":
        record = SearchRecord(data["query"], data["results"], event.time)
        return replace(context, recent_searches=(*context.recent_searches, record)[-SEARCHES_KEPT:])
    if kind == "cart.item_added":
        cart = _add_to_cart(context.cart, data["sku"], data["qty"], float(data["price"]))
        return replace(context, cart=cart)
    if kind == "cart.item_removed":
        return replace(context, cart=_remove_from_cart(context.cart, data["sku"], data["qty"]))
    if kind == "checkout.started":
        return replace(context, checkout=Checkout("started", event.time, event.channel))
    if kind == "order.placed":
        return replace(context, cart=Cart(), checkout=Checkout())
    if kind == "consent.updated":
        consent = Consent(
            email=data.get("email", context.consent.email),
            mobile=data.get("mobile", context.consent.mobile),
        )
        return replace(context, consent=consent)
    return context


def is_duplicate(state: CustomerState, event: Event) -> bool:
    return event.id in state.seen_ids


def apply(
    state: CustomerState,
    event: Event,
    now: datetime,
    *,
    search_window: timedelta,
    search_count: int,
) -> CustomerState:
    """Apply ``event`` to ``state``; an id seen among the last 100 changes nothing."""
    if is_duplicate(state, event):
        return state
    context = _with_data(_with_activity(state.context, event, now), event)
    zero_searches = state.zero_searches
    if event.type == "search.performed" and event.data["results"] == 0:
        recent = (t for t in zero_searches if event.time - t < search_window)
        # one more than the threshold is enough to tell "the N-th" from later ones
        zero_searches = (*recent, event.time)[-(search_count + 1) :]
    product_viewed_at = state.product_viewed_at
    if event.type == "product.viewed":
        product_viewed_at = _later(product_viewed_at, event.time)
    return CustomerState(
        context=context,
        seen_ids=(*state.seen_ids, event.id)[-SEEN_KEPT:],
        zero_searches=zero_searches,
        product_viewed_at=product_viewed_at,
        last_fired=state.last_fired,
        fired=state.fired,
    )


def record_trigger(state: CustomerState, record: TriggerRecord) -> CustomerState:
    """Remember an emitted trigger: in ``last_triggers`` and for its action's cooldown."""
    context = replace(
        state.context,
        updated_at=record.at,
        last_triggers=(*state.context.last_triggers, record)[-TRIGGERS_KEPT:],
    )
    return replace(
        state, context=context, last_fired={**state.last_fired, record.action: record.at}
    )


# --- bytes, for the table and its changelog -----------------------------------------

_JSON = orjson.OPT_UTC_Z


def encode(state: CustomerState, document: bytes | None = None) -> bytes:
    """The state as JSON bytes; ``document`` is ``encode_document(state.context)`` if known."""
    return orjson.dumps(
        {
            "context": to_document(state.context)
            if document is None
            else orjson.Fragment(document),
            "seen_ids": state.seen_ids,
            "zero_searches": state.zero_searches,
            "product_viewed_at": state.product_viewed_at,
            "last_fired": state.last_fired,
            "fired": state.fired,
        },
        option=_JSON,
    )


def encode_document(context: Context) -> bytes:
    """The §6 document as the JSON bytes that Redis and HTTP serve."""
    return orjson.dumps(to_document(context), option=_JSON)


def decode(raw: bytes) -> CustomerState:
    stored: dict[str, Any] = orjson.loads(raw)
    viewed = stored["product_viewed_at"]
    return CustomerState(
        context=from_document(stored["context"]),
        seen_ids=tuple(stored["seen_ids"]),
        zero_searches=tuple(datetime.fromisoformat(t) for t in stored["zero_searches"]),
        product_viewed_at=None if viewed is None else datetime.fromisoformat(viewed),
        last_fired=_times(stored["last_fired"]),
        fired=_times(stored.get("fired", {})),
    )


def _times(stored: Mapping[str, str]) -> dict[str, datetime]:
    return {key: datetime.fromisoformat(value) for key, value in stored.items()}
