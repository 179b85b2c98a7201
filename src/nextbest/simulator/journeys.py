"""Realistic omnichannel journeys as CloudEvents, seeded and reproducible.

A population of customers with Zipf-distributed activity (a few are very busy,
most are not). Each session starts on a channel, browses and searches (some
searches find nothing), fills a cart, may start checkout, fail a payment and
place an order, and on the way may hop to another channel: walk into a store
and scan products, call the contact center and give up in the queue, chat,
click an email, change consent. The same seed gives the same events.
With ``identities=True`` the channels know customers by their own identifiers
(cookies, app installs, phone numbers, loyalty cards, shared tablets) and link
them as people log in: see :mod:`nextbest.simulator.identities`.

Pure: no I/O and no clock; times are offsets in seconds from the run's start.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

from nextbest.simulator.identities import Identified, Personas, plain

SKUS = tuple(f"SKU-{n:04d}" for n in range(500))
QUERIES = ("running shoes", "desk lamp", "blue jacket", "usb-c cable", "coffee grinder",
           "garden hose", "gift card", "noise cancelling", "yoga mat", "unobtainium")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatedEvent:
    """One record to send: topic channel, key, value, and when (s after the start)."""

    channel: str
    customer: str
    at: float
    document: dict[str, Any]
    malformed: bool = False
    # ``customer`` is the record's key: the subject, which with identities may be a
    # cookie, a device, a phone or a card of the customer

    def value(self) -> bytes:
        if self.malformed:
            return _malform(self.document, self.at)
        return orjson.dumps(self.document)


def _malform(document: dict[str, Any], at: float) -> bytes:
    """A broken record of one of the kinds the engine must dead-letter."""
    kind = int(at * 1000) % 4
    if kind == 0:
        return b"{not json" + orjson.dumps(document)[:20]
    if kind == 1:
        return orjson.dumps({k: v for k, v in document.items() if k != "subject"})
    if kind == 2:
        bad = {"sku": 7, "qty": "two", "price": -1}
        return orjson.dumps({**document, "type": "cart.item_added", "data": bad})
    return b"\xff\xfe" + orjson.dumps(document)


class Journeys:
    """Sessions of a seeded population, as an endless, time-ordered event stream."""

    def __init__(
        self,
        *,
        customers: int,
        seed: int,
        channels: tuple[str, ...],
        zipf: float = 1.1,
        malformed: float = 0.0,
        identities: bool = False,
    ) -> None:
        self._random = random.Random(seed)  # noqa: S311 - a reproducible simulation, not secrets
        self._customers = [f"sim-{seed}-{n}" for n in range(customers)]
        weights = [1.0 / (rank**zipf) for rank in range(1, customers + 1)]
        self._cumulative = list(accumulate(weights))
        self._channels = channels
        self._malformed = malformed
        self._ids = 0
        self._personas = Personas(self._random) if identities else None

    def _visit(self, customer: str | None = None) -> Iterator[Identified]:
        customer = customer or self.customer()
        steps = self._session(customer)
        if self._personas is None:
            return plain(steps)
        return self._personas.session(customer, steps)

    def customer(self) -> str:
        return self._random.choices(self._customers, cum_weights=self._cumulative)[0]

    def events(self, rate: float) -> Iterator[SimulatedEvent]:
        """Events in time order at ``rate`` per second on average, forever.

        A session's events follow each other closely (the stream's own pace):
        what a benchmark wants. :meth:`paced` spaces them as people do.
        """
        clock = 0.0
        while True:
            for channel, subject, kind, data, subjecttype in self._visit():
                clock += self._random.expovariate(rate)
                yield self._event(channel, subject, kind, data, clock, subjecttype)

    def paced(
        self, rate: float, think: tuple[float, float] = (1.0, 6.0)
    ) -> Iterator[SimulatedEvent]:
        """Events in time order at ``rate`` per second on average, forever, each
        customer's own events ``think`` seconds apart (uniformly drawn), as people's
        are: many sessions go on at once, and a customer has one at a time."""
        low, high = think
        if not 0 < low <= high:
            raise ValueError("think times must be positive, low <= high")
        r = self._random
        concurrent = max(1, round(rate * (low + high) / 2))
        heap: list[tuple[float, int, str, Iterator[Identified]]] = []
        active: set[str] = set()
        clock = 0.0
        started = 0
        while True:
            while len(heap) < concurrent:
                customer = self.customer()
                for _ in range(10):  # a customer has one session at a time
                    if customer not in active:
                        break
                    customer = self.customer()
                else:
                    break
                active.add(customer)
                started += 1
                first = clock + r.uniform(0, high)  # staggered: no stampede at the start
                heapq.heappush(heap, (first, started, customer, self._visit(customer)))
            at, order, customer, steps = heapq.heappop(heap)
            clock = at  # for a finished session: when it ended (no new one starts before)
            step = next(steps, None)
            if step is None:
                active.discard(customer)
                continue
            channel, subject, kind, data, subjecttype = step
            yield self._event(channel, subject, kind, data, at, subjecttype)
            heapq.heappush(heap, (at + r.uniform(low, high), order, customer, steps))

    def _event(
        self,
        channel: str,
        customer: str,
        kind: str,
        data: dict[str, Any],
        at: float,
        subjecttype: str | None = None,
    ) -> SimulatedEvent:
        self._ids += 1
        document: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"sim-{self._ids}",
            "source": f"/simulator/{channel}",
            "type": kind,
            "time": "",  # set by the sender: the real send time
            "subject": customer,
            "data": data,
        }
        if subjecttype is not None:
            document["subjecttype"] = subjecttype
        broken = self._malformed > 0 and self._random.random() < self._malformed
        return SimulatedEvent(channel, customer, at, document, broken)

    def _pick(self, *options: str) -> str:
        available = [c for c in options if c in self._channels]
        return self._random.choice(available or list(self._channels))

    def _session(
        self, customer: str | None = None
    ) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """One customer's visit, hops between channels included."""
        r = self._random
        customer = customer or self.customer()
        channel = self._pick("web", "mobile", "web", "mobile", "email", "social")
        if channel == "email":
            yield channel, customer, "email.clicked", {"campaign": r.choice(("spring", "vip"))}
            channel = self._pick("web", "mobile")
        elif channel == "social":
            sentiment = r.choice(("positive", "neutral", "negative"))
            yield channel, customer, "social.mentioned", {"sentiment": sentiment}
            channel = self._pick("web", "mobile")
        yield channel, customer, "session.started", {}
        if r.random() < 0.05:
            consent = {"email": r.random() < 0.7, "mobile": r.random() < 0.5}
            yield channel, customer, "consent.updated", consent
        cart: list[str] = []
        for _ in range(r.randint(1, 6)):
            step = r.random()
            if step < 0.35:
                yield channel, customer, "page.viewed", {"page_type": r.choice(
                    ("home", "category", "product", "help", "other"))}  # fmt: skip
            elif step < 0.6:
                sku = r.choice(SKUS)
                yield channel, customer, "product.viewed", {"sku": sku, "price": _price(r)}
            elif step < 0.8:
                results = 0 if r.random() < 0.25 else r.randint(1, 40)
                query = r.choice(QUERIES)
                yield channel, customer, "search.performed", {"query": query, "results": results}
            else:
                sku = r.choice(SKUS)
                cart.append(sku)
                data = {"sku": sku, "qty": r.randint(1, 3), "price": _price(r)}
                yield channel, customer, "cart.item_added", data
        hop = r.random()
        if hop < 0.12:
            channel = self._pick("store")
            yield channel, customer, "store.visited", {"store_id": f"store-{r.randint(1, 40)}"}
            for _ in range(r.randint(1, 3)):
                yield channel, customer, "product.scanned", {"sku": r.choice(cart or SKUS)}
        elif hop < 0.22:
            channel = self._pick("contact-center")
            yield channel, customer, "call.started", {"reason": "question"}
            if r.random() < 0.4:
                queue = round(r.uniform(30, 600), 1)
                yield channel, customer, "call.abandoned", {"queue_seconds": queue}
            else:
                yield channel, customer, "call.ended", {}
        elif hop < 0.3:
            channel = self._pick("chat")
            yield channel, customer, "chat.started", {}
            if r.random() < 0.3:
                yield channel, customer, "chat.abandoned", {"queue_seconds": r.uniform(5, 120)}
            else:
                yield channel, customer, "chat.ended", {}
        elif hop < 0.5:
            channel = self._pick("mobile", "web")
            yield channel, customer, "session.started", {}
        if cart and r.random() < 0.5:
            if r.random() < 0.3 and len(cart) > 1:
                yield channel, customer, "cart.item_removed", {"sku": cart.pop(), "qty": 1}
            yield channel, customer, "checkout.started", {}
            if r.random() < 0.15:
                yield channel, customer, "payment.failed", {"reason": "card declined"}
            if r.random() < 0.7:
                order = f"o-{r.getrandbits(40):x}"
                yield channel, customer, "order.placed", {"order_id": order, "value": _price(r)}


def _price(r: random.Random) -> float:
    return round(r.uniform(2, 250), 2)
