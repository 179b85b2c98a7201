"""Profiles of several identifiers: how they merge, and how one leaves (contract §10).

A profile of several identifiers keeps, beside its own timeline (the
:class:`~nextbest.core.state.CustomerState` the engine decides on), one
**part** per identifier: the state of that identifier's events alone, folded
the same way. Every event applies to both: the profile's timeline sees every
identifier's events in ``time`` order (a channel switch from an anonymous web
session to a call from a known phone number is one customer's switch), and
the event's own part keeps what happened under that identifier.

Whenever the members change — a merge, a move, a split — the profile's
timeline is **combined** again from the parts (:func:`combine`), so the
profile is a function of its members' parts whatever the order of the links
that joined them, and an identifier that leaves takes back its part exactly
(a merge then an unlink of the same identifier gives back both contexts):

* each part's recent events (those it keeps to place late arrivals, §3) that
  are newer than everything any part has folded away are replayed together in
  ``(time, id)`` order over the merged bases: cross-identifier effects among
  them are exact (an item added anonymously on web and removed after the login
  is gone; an order placed after the login empties the anonymous cart), and a
  signal on the combined timeline (the login on mobile after an anonymous web
  cart: ``channel_switch``) is decided now, as for a late event's correction,
  unless its event already had its trigger (``FIRED``);
* what the parts had folded away is merged field by field (:func:`fieldmerge`,
  the README lists the rules): counters add up, lists interleave by time, the
  newest consent wins, a cart survives only if it changed after the newest
  order of any part.

Decisions the engine made (cooldowns, fired deadlines, the last triggers) are
the profile's, not an identifier's: a merge keeps the union, a split leaves
them with the rest (an identifier leaving takes back the ones it had made
before it joined, and no trigger sent about the rest).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple

from nextbest.core.context import (
    JOURNEY_KEPT,
    NO_CART,
    NO_CHECKOUT,
    PRODUCTS_KEPT,
    SEARCHES_KEPT,
    TRIGGERS_KEPT,
    Cart,
    CartItem,
    ChannelActivity,
    Consent,
    Context,
    Identity,
    JourneySegment,
    TriggerRecord,
    apply,
    fold,
)
from nextbest.core.envelope import Event
from nextbest.core.identity import CUSTOMER, Identifier
from nextbest.core.signals import SIGNAL_BITS, Signal, detect
from nextbest.core.state import (
    FIRED,
    NO_MEMBERSHIP,
    SEEN_KEPT,
    CustomerState,
    Step,
    encode_base,
)
from nextbest.core.timeline import Bounds, _trim

_NEVER = datetime.max.replace(tzinfo=UTC)
_EPOCH = datetime.min.replace(tzinfo=UTC)


class History(NamedTuple):
    """What the engine decided about a profile: cooldowns, fired deadlines, triggers."""

    last_fired: Mapping[str, datetime] = {}
    fired: Mapping[str, datetime] = {}
    last_triggers: tuple[TriggerRecord, ...] = ()

    @classmethod
    def of(cls, state: CustomerState) -> History:
        return cls(state.last_fired, state.fired, state.context.last_triggers)

    def merged(self, other: History) -> History:
        return History(
            _latest(self.last_fired, other.last_fired),
            _latest(self.fired, other.fired),
            _newest_triggers((*self.last_triggers, *other.last_triggers)),
        )

    def without_triggers(self, dropped: Iterable[TriggerRecord]) -> History:
        gone = {record.id for record in dropped}
        kept = tuple(record for record in self.last_triggers if record.id not in gone)
        return History(self.last_fired, self.fired, kept)


class Shipment(NamedTuple):
    """What a profile sends to the one it joins: its leaving identifiers' parts (keyed by
    identifier key), their identities as they join, and, when it gives up all of them,
    its own state (its version and decisions go along)."""

    parts: Mapping[str, CustomerState]
    identities: tuple[Identity, ...]
    whole: CustomerState | None = None


def _latest(a: Mapping[str, datetime], b: Mapping[str, datetime]) -> dict[str, datetime]:
    merged = dict(a)
    for key, moment in b.items():
        if key not in merged or moment > merged[key]:
            merged[key] = moment
    return merged


def _newest_triggers(records: Iterable[TriggerRecord]) -> tuple[TriggerRecord, ...]:
    unique = {record.id: record for record in records}
    return tuple(sorted(unique.values(), key=lambda r: (r.at, r.id)))[-TRIGGERS_KEPT:]


# --- members ------------------------------------------------------------------------


def identifier(identity: Identity) -> Identifier:
    return Identifier(identity.type, identity.id)


def name_of(identities: Sequence[Identity]) -> Identity:
    """The identifier that names a profile: its customer one, else its oldest (§10)."""
    for identity in identities:
        if identity.type == CUSTOMER:
            return identity
    return min(identities, key=lambda i: (i.since or i.linked_at or _NEVER, i.key))


def ordered(identities: Iterable[Identity]) -> tuple[Identity, ...]:
    """A profile's identities as the document lists them: the customer first, then oldest."""
    return tuple(
        sorted(
            identities,
            key=lambda i: (i.type != CUSTOMER, i.since or i.linked_at or _NEVER, i.key),
        )
    )


def parts_of(state: CustomerState) -> dict[str, CustomerState]:
    """Identifier key -> its part. A profile of one identifier is its own part."""
    if state.parts:
        return dict(state.parts)
    identities = state.context.identities
    if len(identities) != 1:
        raise ValueError(f"a profile of {len(identities)} identifiers without parts")
    return {identities[0].key: as_part(state, identities[0])}


def as_part(state: CustomerState, identity: Identity) -> CustomerState:
    """``state`` as the part of ``identity``: named for it, no parts of its own."""
    return renamed(state, identifier(identity).profile_id, (identity,))._replace(
        parts={}, membership=NO_MEMBERSHIP
    )


def renamed(
    state: CustomerState, profile_id: str, identities: tuple[Identity, ...]
) -> CustomerState:
    """The same state under another profile id and identities (base too: it is folded from)."""
    base = replace(state.base, customer_id=profile_id, identities=identities)
    context = replace(state.context, customer_id=profile_id, identities=identities)
    return state._replace(context=context, base=base, base_encoded=encode_base(base))


def raised_of(state: CustomerState | None) -> dict[str, int]:
    """Which signals each kept event of ``state`` already raised, by event id."""
    if state is None:
        return {}
    return {step.event.id: step.raised for step in state.recent}


# --- merging contexts field by field ------------------------------------------------


def fieldmerge(contexts: Sequence[Context], customer_id: str, search_count: int) -> Context:
    """One context out of several profiles' folded-away pasts (the README's rules)."""
    live = [c for c in contexts if c.version > 0]
    if not live:
        return Context(customer_id)
    if len(live) == 1:
        return replace(live[0], customer_id=customer_id)
    by_time = sorted(live, key=lambda c: (c.last_event_at or _EPOCH, c.customer_id))
    newest = by_time[-1]
    channels: dict[str, ChannelActivity] = {}
    for context in live:
        for name, activity in context.channels.items():
            seen = channels.get(name)
            if seen is None:
                channels[name] = activity
            else:
                last = max(seen.last_seen, activity.last_seen)
                channels[name] = ChannelActivity(last, seen.events + activity.events)
    segments = sorted((s for c in live for s in c.journey), key=lambda s: (s.since, s.channel))
    journey: list[JourneySegment] = []
    for segment in segments:
        if not journey or journey[-1].channel != segment.channel:
            journey.append(segment)
    ordered_at = max((c._ordered_at for c in live if c._ordered_at), default=None)
    cart = _merged_cart(live, ordered_at)
    checkout = NO_CHECKOUT
    started = [
        c.checkout
        for c in live
        if c.checkout.state == "started"
        and c.checkout.started_at is not None
        and (ordered_at is None or c.checkout.started_at > ordered_at)
    ]
    if started:
        checkout = max(started, key=lambda k: (k.started_at or _EPOCH, k.channel or ""))
    searches = sorted((s for c in live for s in c.recent_searches), key=lambda s: (s.at, s.query))[
        -SEARCHES_KEPT:
    ]
    products: list[str] = []
    for context in by_time:
        for sku in context.recent_products:
            if sku in products:
                products.remove(sku)
            products.append(sku)
    consenting = [c for c in live if c._consent_at is not None]
    consent = (
        max(consenting, key=lambda c: (c._consent_at or _EPOCH, c.customer_id)).consent
        if consenting
        else Consent()
    )
    zero = tuple(sorted({t for c in live for t in c._zero_searches}))[-(search_count + 1) :]
    return Context(
        customer_id,
        sum(c.version for c in live),
        max(c.updated_at or _EPOCH for c in live),
        newest.last_event_at,
        newest.current_channel,
        channels,
        tuple(journey[-JOURNEY_KEPT:]),
        cart,
        checkout,
        tuple(searches),
        tuple(products[-PRODUCTS_KEPT:]),
        consent,
        _newest_triggers(t for c in live for t in c.last_triggers),
        (),
        zero,
        max((c._product_viewed_at for c in live if c._product_viewed_at), default=None),
        max((c._cart_at for c in live if c._cart_at), default=None),
        ordered_at,
        max((c._consent_at for c in live if c._consent_at), default=None),
    )


def _merged_cart(contexts: Sequence[Context], ordered_at: datetime | None) -> Cart:
    """The items of every cart that changed after the newest order of any of them
    (an order empties the person's cart, whoever placed it), quantities added up,
    the price of the most recently changed cart."""
    current = [
        c
        for c in contexts
        if c.cart.items
        and c._cart_at is not None
        and (ordered_at is None or c._cart_at > ordered_at)
    ]
    if not current:
        return NO_CART
    current.sort(key=lambda c: (c._cart_at or _EPOCH, c.customer_id))
    items: dict[str, CartItem] = {}
    for context in current:
        for item in context.cart.items:
            seen = items.get(item.sku)
            qty = item.qty + (seen.qty if seen is not None else 0)
            items[item.sku] = CartItem(item.sku, qty, item.price)
    return Cart.of(tuple(items.values()))


# --- combining parts ----------------------------------------------------------------


def combine(
    profile_id: str,
    parts: Mapping[str, CustomerState],
    identities: tuple[Identity, ...],
    history: History,
    raised: Mapping[str, int],
    version: int,
    now: datetime,
    bounds: Bounds,
    *,
    detect_signals: bool,
) -> tuple[CustomerState, tuple[Signal, ...]]:
    """The profile of ``parts`` (see the module doc), its ``version`` as given, and the
    signals its combined timeline reveals (none unless ``detect_signals``)."""
    items = sorted(parts.items())
    if len(items) == 1:
        state = renamed(items[0][1], profile_id, identities)
        return _finish(state, history, version, now), ()
    cutoff = max((p.base.last_event_at for _, p in items if p.base.last_event_at), default=None)
    bases: list[Context] = []
    steps: dict[str, Step] = {}
    for _, part in items:
        recent = part.recent
        old = [s for s in recent if cutoff is not None and s.event.time <= cutoff]
        base = part.base
        if old:
            base = _fold(base, (s.event for s in old), now, bounds)
        bases.append(base)
        for step in recent[len(old) :] if old else recent:
            steps.setdefault(step.event.id, step)
    base = fieldmerge(bases, profile_id, bounds.search_count)
    kept = tuple(sorted(steps.values(), key=lambda s: (s.event.time, s.event.id)))
    size = sum(step.size for step in kept)
    if kept:
        cut = kept[-1].event.time - bounds.window
        early = [s for s in kept if s.event.time < cut]
        if early:
            base = _fold(base, (s.event for s in early), now, bounds)
            kept = kept[len(early) :]
            size -= sum(s.size for s in early)
        if len(kept) > bounds.max_events or size > bounds.max_bytes:
            base, kept, size = _trim(base, kept, size, now, bounds)
    base = replace(
        base,
        customer_id=profile_id,
        version=version - len(kept),
        identities=identities,
        last_triggers=history.last_triggers,
    )
    context = base
    revealed: list[Signal] = []
    replayed: list[Step] = []
    for step in kept:
        before = context
        context = apply(
            before, step.event, now, search_window=bounds.search_window,
            search_count=bounds.search_count,
        )  # fmt: skip
        known = step.raised | raised.get(step.event.id, 0)
        if detect_signals and not known & FIRED:  # an event that had its trigger: done
            found = detect(
                before, context, step.event,
                journey_window=bounds.journey_window, search_count=bounds.search_count,
            )  # fmt: skip
            revealed.extend(found)  # decided (again) on the combined timeline
            for signal in found:
                known |= SIGNAL_BITS[signal.name]
        replayed.append(step._replace(raised=known) if known != step.raised else step)
    seen: dict[str, None] = {}
    for _, part in items:
        seen.update(dict.fromkeys(part.seen_ids))
    state = CustomerState(
        replace(context, updated_at=now),
        base,
        encode_base(base),
        tuple(replayed),
        size,
        tuple(seen)[-SEEN_KEPT * len(items) :],
        history.last_fired,
        history.fired,
        dict(items),
    )
    return state, tuple(revealed)


def _finish(state: CustomerState, history: History, version: int, now: datetime) -> CustomerState:
    """A one-part profile: ``version`` as given (the base holds what the kept events
    do not), the profile's decisions, no parts."""
    context = state.context
    shift = version - context.version
    base = replace(
        state.base, version=state.base.version + shift, last_triggers=history.last_triggers
    )
    context = replace(context, version=version, updated_at=now, last_triggers=history.last_triggers)
    return CustomerState(
        context,
        base,
        encode_base(base),
        state.recent,
        state.recent_bytes,
        state.seen_ids,
        history.last_fired,
        history.fired,
        {},
        NO_MEMBERSHIP,
    )


def _fold(context: Context, events: Iterable[Event], now: datetime, bounds: Bounds) -> Context:
    return fold(
        context,
        events,
        now,
        search_window=bounds.search_window,
        search_count=bounds.search_count,
    )


# --- operations ---------------------------------------------------------------------


def absorb(
    target: CustomerState | None,
    profile_id: str,
    shipments: Sequence[Shipment],
    now: datetime,
    bounds: Bounds,
) -> tuple[CustomerState, tuple[Signal, ...]]:
    """``target`` (None: a new profile) joined by the identifiers of ``shipments``."""
    parts = parts_of(target) if target is not None else {}
    identities = {i.key: i for i in (target.context.identities if target is not None else ())}
    history = History.of(target) if target is not None else History()
    raised = raised_of(target)
    version = target.context.version if target is not None else 0
    for shipment in shipments:
        for key, part in shipment.parts.items():
            parts[key] = part
        for identity in shipment.identities:
            identities[identity.key] = identity
        if shipment.whole is not None:
            history = history.merged(History.of(shipment.whole))
            raised.update(raised_of(shipment.whole))
            version += shipment.whole.context.version
        else:
            version += sum(part.context.version for part in shipment.parts.values())
    members = ordered(identities.values())
    parts = {key: parts[key] for key in parts if key in identities}
    for identity in members:  # an identifier without events yet has an empty part
        if identity.key not in parts:
            parts[identity.key] = empty_part(identity)
    return combine(
        profile_id, parts, members, history, raised, version + 1, now, bounds,
        detect_signals=True,
    )  # fmt: skip


def empty_part(identity: Identity) -> CustomerState:
    empty = Context(identifier(identity).profile_id, identities=(identity,))
    return CustomerState(empty, empty)


def split(
    state: CustomerState,
    leaving: Collection[str],
    now: datetime,
    bounds: Bounds,
) -> tuple[CustomerState | None, dict[str, CustomerState]]:
    """Take the identifiers ``leaving`` (keys) out of ``state``: the rest (None when
    nothing stays), and the parts that leave. The rest keeps the profile's id (the
    caller renames it when its name left) and counts one version more."""
    parts = parts_of(state)
    fired = {i for i, bits in raised_of(state).items() if bits & FIRED}
    taken = {key: _fired(parts.pop(key), fired) for key in leaving if key in parts}
    if not parts:
        return None, taken
    members = tuple(i for i in state.context.identities if i.key not in taken)
    history = History.of(state).without_triggers(
        record for part in taken.values() for record in part.context.last_triggers
    )
    rest, _ = combine(
        state.context.customer_id, parts, members, history, raised_of(state),
        state.context.version + 1, now, bounds, detect_signals=False,
    )  # fmt: skip
    return rest, taken


def _fired(part: CustomerState, fired: set[str]) -> CustomerState:
    """``part`` with its events that had their trigger in the profile marked so: they
    trigger nothing again wherever the part goes."""
    if not fired or not any(s.event.id in fired for s in part.recent):
        return part
    recent = tuple(
        s._replace(raised=s.raised | FIRED) if s.event.id in fired else s for s in part.recent
    )
    return part._replace(recent=recent)


def promote(
    part: CustomerState, identity: Identity, version: int, now: datetime, bounds: Bounds
) -> CustomerState:
    """A part that left as a profile of its own, counting from ``version``."""
    profile_id = identifier(identity).profile_id
    state, _ = combine(
        profile_id, {identity.key: part}, (identity,), History.of(part), {}, version, now,
        bounds, detect_signals=False,
    )  # fmt: skip
    return state


def rename(state: CustomerState, profile_id: str) -> CustomerState:
    """``state`` under a new profile id (its name left); parts keep their own."""
    return renamed(state, profile_id, state.context.identities)


def linked(identity: Identity, at: datetime | None, method: str | None) -> Identity:
    """``identity`` as a link of ``method`` at ``at`` made it join (unchanged without one)."""
    if at is None:
        return identity
    since = identity.since if identity.since is not None else at
    return replace(identity, linked_at=at, method=method, _since=since)


def ship(
    state: CustomerState,
    leaving: Collection[str],
    links: Mapping[str, tuple[datetime, str]],
    now: datetime,
    bounds: Bounds,
) -> tuple[Shipment, CustomerState | None]:
    """What ``state`` sends when the identifiers ``leaving`` (keys) join another profile
    (``links``: key -> the time and method of the link that moves it), and what stays
    (None: nothing, the whole profile goes)."""
    identities = {i.key: i for i in state.context.identities}
    if set(identities) <= set(leaving):
        parts, rest, whole = parts_of(state), None, state
    else:
        rest, parts = split(state, leaving, now, bounds)
        whole = None
    joining = tuple(
        linked(identities[key], *links.get(key, (None, None))) for key in parts if key in identities
    )
    return Shipment(parts, joining, whole), rest
