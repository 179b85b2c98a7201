"""Who a simulated customer is to each channel (``nextbest simulate --identities``).

Without it every event's subject is the customer id. With it, each customer
has a web cookie, an app install, maybe a (hashed) phone number and a loyalty
card, and the channels know them by those (contract v0.2 §10):

* **web** sessions start anonymous (``subjecttype: anonymous``, the cookie)
  and may log in on the way to the cart or the checkout: an
  ``identity.linked`` (subject the customer, the cookie linked, ``login``),
  the customer id from then on;
* **mobile** sessions start as the app install (``device``), and most log in
  (``login``); one in twenty happens on one of a few **shared tablets**, which
  follow whoever logged in on them last;
* the **contact center** knows the caller's number: the first call verifies it
  (``phone_verified``), every call comes as ``phone``;
* in the **store** the loyalty card is scanned (``loyalty_scan``) and the till
  sends ``loyalty`` events;
* e-mail, social and chat know the customer id.

Pure and seeded like :mod:`nextbest.simulator.journeys` (it draws from the
same random generator).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Step = tuple[str, str, str, dict[str, Any]]  # channel, customer, type, data
Identified = tuple[str, str, str, dict[str, Any], str | None]  # ... subject, type, subjecttype

SHARED_TABLETS = 20


@dataclass(frozen=True, slots=True)
class Persona:
    customer: str
    cookie: str
    app: str
    phone: str | None
    loyalty: str | None


def _hashed(value: str) -> str:
    """What a channel app sends for a phone number: a hash, never the number."""
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:24]


class Personas:
    def __init__(self, rng: random.Random) -> None:
        self._random = rng
        self._people: dict[str, Persona] = {}
        self._verified: set[tuple[str, str]] = set()  # (customer, type) linked once for all

    def of(self, customer: str) -> Persona:
        found = self._people.get(customer)
        if found is None:
            r = self._random
            found = Persona(
                customer,
                f"ck-{customer}",
                f"app-{customer}",
                _hashed(f"+49-{customer}") if r.random() < 0.6 else None,
                f"L-{customer}" if r.random() < 0.4 else None,
            )
            self._people[customer] = found
        return found

    def session(self, customer: str, steps: Iterator[Step]) -> Iterator[Identified]:
        """``steps`` of one session as the channels know the customer."""
        r = self._random
        persona = self.of(customer)
        device = f"tablet-{r.randrange(SHARED_TABLETS)}" if r.random() < 0.05 else persona.app
        logged_in: set[str] = set()
        for channel, _, kind, data in steps:
            if channel == "web" and "web" not in logged_in:
                if kind in ("cart.item_added", "checkout.started") and (
                    kind == "checkout.started" or r.random() < 0.5
                ):
                    logged_in.add("web")
                    yield (
                        channel,
                        customer,
                        "identity.linked",
                        _link(("anonymous", persona.cookie), "login"),
                        None,
                    )
                else:
                    yield channel, persona.cookie, kind, data, "anonymous"
                    continue
            elif channel == "mobile" and "mobile" not in logged_in:
                if kind == "session.started" or r.random() < 0.3:
                    yield channel, device, kind, data, "device"
                    if r.random() < 0.7:
                        logged_in.add("mobile")
                        yield (
                            channel,
                            customer,
                            "identity.linked",
                            _link(("device", device), "login"),
                            None,
                        )
                    continue
                logged_in.add("mobile")
                yield channel, customer, "identity.linked", _link(("device", device), "login"), None
            elif channel == "contact-center" and persona.phone is not None:
                if (customer, "phone") not in self._verified:
                    self._verified.add((customer, "phone"))
                    yield (
                        channel,
                        persona.phone,
                        "identity.linked",
                        _link(("customer", customer), "phone_verified"),
                        "phone",
                    )
                yield channel, persona.phone, kind, data, "phone"
                continue
            elif channel == "store" and persona.loyalty is not None:
                if (customer, "loyalty") not in self._verified:
                    self._verified.add((customer, "loyalty"))
                    yield (
                        channel,
                        persona.loyalty,
                        "identity.linked",
                        _link(("customer", customer), "loyalty_scan"),
                        "loyalty",
                    )
                yield channel, persona.loyalty, kind, data, "loyalty"
                continue
            yield channel, customer, kind, data, None


def _link(identity: tuple[str, str], method: str) -> dict[str, Any]:
    return {"identities": [{"type": identity[0], "id": identity[1]}], "method": method}


def plain(steps: Iterator[Step]) -> Iterator[Identified]:
    """``steps`` with every subject the customer id."""
    for channel, customer, kind, data in steps:
        yield channel, customer, kind, data, None
