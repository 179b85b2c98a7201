"""The journey simulator: reproducible, valid, skewed, hopping, and broken on request."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from itertools import islice, pairwise

import pytest

from nextbest.core.envelope import DEFAULT_CHANNELS, Rejected, parse
from nextbest.simulator.journeys import Journeys, SimulatedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def take(count: int, **options: object) -> list[SimulatedEvent]:
    settings: dict[str, object] = {"customers": 1000, "seed": 7, "channels": DEFAULT_CHANNELS}
    settings.update(options)
    journeys = Journeys(**settings)  # type: ignore[arg-type]
    events = list(islice(journeys.events(rate=200.0), count))
    for event in events:
        event.document["time"] = NOW.isoformat()
    return events


def test_the_same_seed_gives_the_same_events() -> None:
    first = [(e.channel, e.customer, e.at, e.value()) for e in take(500)]
    again = [(e.channel, e.customer, e.at, e.value()) for e in take(500)]
    other = [(e.channel, e.customer, e.at, e.value()) for e in take(500, seed=8)]
    assert first == again
    assert first != other


def test_every_event_is_valid_for_its_channel() -> None:
    events = take(3000)
    for event in events:
        parsed = parse(event.value(), (), event.channel, now=NOW)
        assert parsed.subject == event.customer
    types = Counter(e.document["type"] for e in events)
    for kind in ("search.performed", "cart.item_added", "checkout.started", "payment.failed",
                 "order.placed", "product.scanned", "call.abandoned", "chat.started",
                 "email.clicked", "consent.updated", "store.visited"):  # fmt: skip
        assert types[kind] > 0, kind
    assert sum(1 for e in events if e.document["type"] == "search.performed"
               and e.document["data"]["results"] == 0) > 0  # fmt: skip


def test_sessions_hop_channels() -> None:
    events = take(3000)
    hops = sum(
        1
        for before, after in pairwise(events)
        if before.customer == after.customer and before.channel != after.channel
    )
    assert hops > 100
    assert set(e.channel for e in events) == set(DEFAULT_CHANNELS)


def test_activity_is_zipf_skewed() -> None:
    events = take(5000, customers=1000)
    per_customer = Counter(e.customer for e in events).most_common()
    busiest_tenth = sum(count for _, count in per_customer[:100])
    assert busiest_tenth > 0.4 * len(events)


def test_offsets_follow_the_rate() -> None:
    events = take(4000)
    assert all(b.at > a.at for a, b in pairwise(events))
    assert events[-1].at == pytest.approx(4000 / 200.0, rel=0.1)


def test_a_fraction_is_broken_on_request_and_every_broken_one_is_rejected() -> None:
    events = take(4000, malformed=0.05)
    broken = [e for e in events if e.malformed]
    assert 0.03 * len(events) < len(broken) < 0.07 * len(events)
    reasons: Counter[str] = Counter()
    for event in broken:
        with pytest.raises(Rejected) as caught:
            parse(event.value(), (), event.channel, now=NOW)
        reasons[caught.value.reason.value] += 1
    assert set(reasons) == {"invalid_json", "invalid_envelope", "invalid_data", "not_utf8"}


def paced(count: int, rate: float = 200.0, seed: int = 7) -> list[SimulatedEvent]:
    journeys = Journeys(customers=1000, seed=seed, channels=DEFAULT_CHANNELS)
    return list(islice(journeys.paced(rate, think=(1.0, 4.0)), count))


def test_paced_journeys_space_each_customers_events_as_people_do() -> None:
    events = paced(6000)
    assert [e.at for e in events] == sorted(e.at for e in events)
    by_customer: dict[str, list[float]] = {}
    for event in events:
        by_customer.setdefault(event.customer, []).append(event.at)
    gaps = [b - a for times in by_customer.values() for a, b in pairwise(times)]
    assert min(gaps) >= 1.0 - 1e-9  # seconds apart, never back to back
    span = events[-1].at - events[100].at
    assert 150 < (len(events) - 100) / span < 260  # about the rate asked for
    assert [(e.customer, e.at) for e in paced(500)] == [(e.customer, e.at) for e in paced(500)]


def test_paced_journeys_refuse_impossible_think_times() -> None:
    journeys = Journeys(customers=10, seed=1, channels=DEFAULT_CHANNELS)
    with pytest.raises(ValueError, match="think"):
        next(journeys.paced(10.0, think=(3.0, 1.0)))


def test_with_identities_channels_know_people_by_their_own_identifiers() -> None:
    """--identities: anonymous web sessions that log in, app installs, verified phones,
    scanned loyalty cards, shared tablets; every event still valid, the key its subject."""
    events = take(6000, identities=True)
    assert [e.value() for e in events] == [e.value() for e in take(6000, identities=True)]
    kinds: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    for event in events:
        parsed = parse(event.value(), (), event.channel, now=NOW)
        assert parsed.subject == event.customer  # keyed by its subject
        kinds[parsed.subjecttype] += 1
        if parsed.type == "identity.linked":
            methods[parsed.data["method"]] += 1
    assert set(kinds) == {"customer", "anonymous", "device", "phone", "loyalty"}
    assert set(methods) == {"login", "phone_verified", "loyalty_scan"}
    tablets = {e.customer for e in events if e.customer.startswith("tablet-")}
    assert tablets  # shared devices
    logins = Counter(
        e.document["subject"]
        for e in events
        if e.document["type"] == "identity.linked"
        and e.document["data"]["identities"][0]["id"] in tablets
    )
    assert len(logins) > len(tablets)  # used by more people than there are tablets
    # a session's anonymous events come before its login
    web = [e for e in events if e.channel == "web"]
    assert web[0].document.get("subjecttype") == "anonymous"
    # without the option the subjects are customer ids, as before
    assert all("subjecttype" not in e.document for e in take(500))
