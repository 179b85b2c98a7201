"""What ``nextbest simulate`` and the ``make run`` demo send is what the schemas describe.

Every well-formed simulated event (with its time set as the sender sets it) is
valid per cloudevent.json and applied by the parser; every record broken on
purpose is rejected by the parser, and where it is JSON at all, by the schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice

import orjson
import pytest

from nextbest.core.envelope import DEFAULT_CHANNELS, Rejected, parse
from nextbest.devstack.demo import JOURNEY
from nextbest.simulator.journeys import Journeys
from tests import contract


@pytest.mark.parametrize("identities", [False, True], ids=["customer-ids", "identities"])
@pytest.mark.parametrize("seed", [1, 7, 2026])
def test_simulated_events_match_the_schema_and_broken_ones_do_not(
    seed: int, identities: bool
) -> None:
    journeys = Journeys(customers=300, seed=seed, channels=DEFAULT_CHANNELS, malformed=0.05,
                        identities=identities)  # fmt: skip
    well_formed = broken = 0
    types = set()
    for event in islice(journeys.events(100.0), 1500):
        event.document["time"] = datetime.now(UTC).isoformat()  # as the sender does
        value = event.value()
        now = datetime.now(UTC)
        if not event.malformed:
            contract.check("cloudevent.json", event.document)
            assert parse(value, (), event.channel, now=now).subject == event.customer
            types.add(event.document["type"])
            well_formed += 1
            continue
        broken += 1
        with pytest.raises(Rejected):
            parse(value, (), event.channel, now=now)
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # not JSON (or not UTF-8): nothing for a schema to say
        assert contract.errors("cloudevent.json", document)
    assert broken > 30
    assert well_formed > 1300
    assert len(types) >= 18  # the journeys use nearly every type


def test_the_demo_journey_matches_the_data_schemas() -> None:
    for _, type_, data in JOURNEY:
        contract.check(f"data/{type_}.json", data)
