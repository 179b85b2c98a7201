"""A customer's live context (contract §6) and the reducer that folds events into it.

:func:`apply` is the context reducer: ``(context, event, now) -> context``. It
never reads a clock and never mutates. It assumes events come in ``time``
order; :mod:`nextbest.core.timeline` takes care of the ones that do not.

The values are dataclasses that are **never mutated** once built
(``tests/unit/test_timeline.py`` checks that the core leaves its inputs as they
were). They are not ``frozen``: a frozen dataclass sets each field through
``object.__setattr__`` and costs five times as much to build, and the reducer
builds a context per event. Being plain dataclasses (without ``__slots__``,
which orjson writes three times slower), they are what orjson writes natively:
:func:`encode_document` is one ``orjson.dumps`` of the context, the §6
document, in its field order. Fields that are not part of the document start
with an underscore (orjson leaves those out).

:func:`from_document` reads a document back. Lists are tuples and keep only
their newest entries (``JOURNEY_KEPT`` and friends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

from nextbest.core.envelope import Event

JOURNEY_KEPT = 20
SEARCHES_KEPT = 5
PRODUCTS_KEPT = 10
TRIGGERS_KEPT = 10

CheckoutState = Literal["none", "started"]


@dataclass
class ChannelActivity:
    last_seen: datetime
    events: int


@dataclass
class JourneySegment:
    channel: str
    since: datetime


@dataclass
class CartItem:
    sku: str
    qty: int
    price: float


@dataclass
class Cart:
    """The items and their value (kept, not computed, so the document carries it)."""

    items: tuple[CartItem, ...] = ()
    value: float = 0.0

    @classmethod
    def of(cls, items: tuple[CartItem, ...]) -> Cart:
        return cls(items, round(sum(item.qty * item.price for item in items), 2))


@dataclass
class Checkout:
    state: CheckoutState = "none"
    started_at: datetime | None = None
    channel: str | None = None


@dataclass
class SearchRecord:
    query: str
    results: int
    at: datetime


@dataclass
class Consent:
    email: bool = False
    mobile: bool = False


@dataclass
class TriggerRecord:
    id: str
    action: str
    channel: str
    at: datetime


@dataclass
class Identity:
    """One identifier of the profile (contract §10). ``since`` (not in the document)
    is when it became part of the profile: its first event, or its link; the
    profile's id names the oldest one when it has no customer identifier."""

    type: str
    id: str
    linked_at: datetime | None = None
    method: str | None = None
    _since: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.type}:{self.id}"

    @property
    def since(self) -> datetime | None:
        return self._since


NO_CART = Cart()
NO_CHECKOUT = Checkout()


@dataclass
class Context:
    """One customer's live context. ``version`` counts the events applied.

    ``identities`` are the profile's identifiers (v0.2). The underscore fields
    are not part of the document: the times of recent zero-result searches
    (``search_frustration``), of the newest product view (``associate_assist``),
    and of the newest cart change, order and consent update (the rules by which
    two profiles' contexts merge, see :mod:`nextbest.core.profile`).
    """

    customer_id: str
    version: int = 0
    updated_at: datetime | None = None
    last_event_at: datetime | None = None
    current_channel: str | None = None
    channels: Mapping[str, ChannelActivity] = field(default_factory=dict)
    journey: tuple[JourneySegment, ...] = ()
    cart: Cart = field(default_factory=Cart)
    checkout: Checkout = field(default_factory=Checkout)
    recent_searches: tuple[SearchRecord, ...] = ()
    recent_products: tuple[str, ...] = ()
    consent: Consent = field(default_factory=Consent)
    last_triggers: tuple[TriggerRecord, ...] = ()
    identities: tuple[Identity, ...] = ()
    _zero_searches: tuple[datetime, ...] = ()
    _product_viewed_at: datetime | None = None
    _cart_at: datetime | None = None
    _ordered_at: datetime | None = None
    _consent_at: datetime | None = None

    @property
    def zero_searches(self) -> tuple[datetime, ...]:
        return self._zero_searches

    @property
    def product_viewed_at(self) -> datetime | None:
        return self._product_viewed_at

    def adopt(self, current: Context) -> Context:
        """This context (folded again from a base) with what ``current`` holds beside
        the events: its triggers and its identities."""
        return Context(
            self.customer_id,
            self.version,
            self.updated_at,
            self.last_event_at,
            self.current_channel,
            self.channels,
            self.journey,
            self.cart,
            self.checkout,
            self.recent_searches,
            self.recent_products,
            self.consent,
            current.last_triggers,
            current.identities,
            self._zero_searches,
            self._product_viewed_at,
            self._cart_at,
            self._ordered_at,
            self._consent_at,
        )

    def with_triggers(
        self, last_triggers: tuple[TriggerRecord, ...], at: datetime | None
    ) -> Context:
        """The same context with ``last_triggers`` (and ``updated_at``, when given)."""
        return Context(
            self.customer_id,
            self.version,
            self.updated_at if at is None else at,
            self.last_event_at,
            self.current_channel,
            self.channels,
            self.journey,
            self.cart,
            self.checkout,
            self.recent_searches,
            self.recent_products,
            self.consent,
            last_triggers,
            self.identities,
            self._zero_searches,
            self._product_viewed_at,
            self._cart_at,
            self._ordered_at,
            self._consent_at,
        )


# --- the reducer -------------------------------------------------------------------


def _add_to_cart(cart: Cart, sku: str, qty: int, price: float) -> Cart:
    items = list(cart.items)
    for index, item in enumerate(items):
        if item.sku == sku:
            items[index] = CartItem(sku, item.qty + qty, price)
            return Cart.of(tuple(items))
    return Cart.of((*items, CartItem(sku, qty, price)))


def _remove_from_cart(cart: Cart, sku: str, qty: int) -> Cart:
    items: list[CartItem] = []
    for item in cart.items:
        if item.sku == sku:
            if item.qty > qty:
                items.append(CartItem(sku, item.qty - qty, item.price))
        else:
            items.append(item)
    return Cart.of(tuple(items))


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
    return fold(context, (event,), now, search_window=search_window, search_count=search_count)


def fold(
    context: Context,
    events: Iterable[Event],
    now: datetime,
    *,
    search_window: timedelta,
    search_count: int,
) -> Context:
    """``context`` with ``events`` applied in turn, after everything it holds.

    One loop over local variables and one context at the end, rather than a
    context per event: the timeline folds many events at once into its base.
    """
    channels = dict(context.channels)
    journey = context.journey
    current = context.current_channel
    last_event_at = context.last_event_at
    cart = context.cart
    checkout = context.checkout
    searches = context.recent_searches
    products = context.recent_products
    consent = context.consent
    zero_searches = context._zero_searches
    viewed_at = context._product_viewed_at
    cart_at = context._cart_at
    ordered_at = context._ordered_at
    consent_at = context._consent_at
    version = context.version
    for event in events:
        version += 1
        moment = event.time
        channel = event.channel
        seen = channels.get(channel)
        if seen is None:
            channels[channel] = ChannelActivity(moment, 1)
        else:
            last_seen = moment if moment > seen.last_seen else seen.last_seen
            channels[channel] = ChannelActivity(last_seen, seen.events + 1)
        if channel != current:
            journey = (*journey, JourneySegment(channel, moment))[-JOURNEY_KEPT:]
            current = channel
        if last_event_at is None or moment > last_event_at:
            last_event_at = moment
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
            if cart_at is None or moment > cart_at:
                cart_at = moment
        elif kind == "cart.item_removed":
            cart = _remove_from_cart(cart, data["sku"], data["qty"])
            if cart_at is None or moment > cart_at:
                cart_at = moment
        elif kind == "checkout.started":
            checkout = Checkout("started", moment, channel)
        elif kind == "order.placed":
            cart, checkout = NO_CART, NO_CHECKOUT
            if ordered_at is None or moment > ordered_at:
                ordered_at = moment
        elif kind == "consent.updated":
            consent = Consent(data.get("email", consent.email), data.get("mobile", consent.mobile))
            if consent_at is None or moment > consent_at:
                consent_at = moment
    return Context(
        context.customer_id,
        version,
        now,
        last_event_at,
        current,
        channels,
        journey,
        cart,
        checkout,
        searches,
        products,
        consent,
        context.last_triggers,
        context.identities,
        zero_searches,
        viewed_at,
        cart_at,
        ordered_at,
        consent_at,
    )


# --- the document ------------------------------------------------------------------

_JSON = orjson.OPT_UTC_Z


def encode_document(context: Context) -> bytes:
    """The §6 document as the JSON bytes that Redis, HTTP and triggers carry."""
    return orjson.dumps(context, option=_JSON)


def to_document(context: Context) -> dict[str, Any]:
    """The §6 document as plain data (what :func:`encode_document` writes, read back)."""
    document: dict[str, Any] = orjson.loads(encode_document(context))
    return document


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def _identities(document: Mapping[str, Any], since: Sequence[Any]) -> tuple[Identity, ...]:
    listed = document.get("identities")
    if not listed:  # written before v0.2: a customer's own profile
        return (Identity("customer", document["customer_id"]),)
    return tuple(
        Identity(
            item["type"],
            item["id"],
            _maybe_time(item.get("linked_at")),
            item.get("method"),
            _maybe_time(since[index]) if index < len(since) else None,
        )
        for index, item in enumerate(listed)
    )


def from_document(
    document: Mapping[str, Any],
    *,
    zero_searches: tuple[datetime, ...] = (),
    product_viewed_at: datetime | None = None,
    cart_at: datetime | None = None,
    ordered_at: datetime | None = None,
    consent_at: datetime | None = None,
    since: Sequence[Any] = (),
) -> Context:
    """Read a document written by :func:`encode_document` (``since``: the identities'
    since times, in their order)."""
    checkout = document["checkout"]
    consent = document["consent"]
    cart = document["cart"]
    return Context(
        document["customer_id"],
        document["version"],
        _maybe_time(document["updated_at"]),
        _maybe_time(document["last_event_at"]),
        document["current_channel"],
        {
            name: ChannelActivity(_time(activity["last_seen"]), activity["events"])
            for name, activity in document["channels"].items()
        },
        tuple(JourneySegment(s["channel"], _time(s["since"])) for s in document["journey"]),
        Cart(
            tuple(CartItem(item["sku"], item["qty"], item["price"]) for item in cart["items"]),
            cart["value"],
        ),
        Checkout(checkout["state"], _maybe_time(checkout["started_at"]), checkout["channel"]),
        tuple(
            SearchRecord(s["query"], s["results"], _time(s["at"]))
            for s in document["recent_searches"]
        ),
        tuple(document["recent_products"]),
        Consent(consent["email"], consent["mobile"]),
        tuple(
            TriggerRecord(t["id"], t["action"], t["channel"], _time(t["at"]))
            for t in document["last_triggers"]
        ),
        _identities(document, since),
        zero_searches,
        product_viewed_at,
        cart_at,
        ordered_at,
        consent_at,
    )
