"""Identity resolution in the stream (contract §10, §11): a partition's part of it.

Everything goes through Kafka — the ``contexts`` table and its changelog, and
``<app id>-rekey`` — and each partition does its part in the same batches, and
the same single write, as its events (``adapters/stream.py``). The README's
"Identity and erasure" section draws it; in short:

* **Where things are.** Everything about an identifier ``type:id`` is on the
  partition of its *id*, where a producer keying by ``subject`` sends its
  events: its **directory entry** (``\\x00d:type:id`` -> the state key and
  partition of its profile), and the profile it names when it is alone. A
  profile with a customer identifier lives where the customer id does, so a
  customer's events never need a look-up; any other profile lives where it was
  made. Directory entries sit in the ``contexts`` table beside the states, so a
  batch writes both in one RocksDB write and one changelog.
* **Events** of a non-customer identifier are looked up in the directory where
  they arrive and sent on (``nextbest.profile`` header) to their profile's
  partition when it is another; an identifier with no entry is a profile of its
  own, made on its first event.
* **Identity operations** (``identity.linked``, ``identity.unlinked``,
  ``customer.erased``) are decided by the **coordinator**, on partition 0
  (:mod:`nextbest.adapters.coordinator`): one place that sees the whole graph,
  so two links never decide on stale views of each other. It sends commands:
  ``ship`` (give these identifiers, their parts and, when all go, the whole
  state, to that profile), ``erase`` (to every partition). A profile that
  receives shipments (``absorb``) combines them (``core/profile.py``) and, once
  all have come, takes its final name, points the moved identifiers' directory
  entries at itself (``dirset``) and tells the coordinator it is ``done``.
* **In flight.** A partition that ships an identifier keeps a **forward**
  entry (``\\x00f:type:id``) for it; an event that reaches a profile its
  identifier has left follows it; an event that finds neither goes back to
  its identifier's own partition to be looked up again (at most
  ``MAX_HOPS`` times). Events that cross a merge are thus never lost and never
  applied to a profile their identifier is not in.
* **Replays.** Every command carries the coordinator's sequence number; a
  profile, a directory entry, a forward remember the newest they applied, and
  an older command is stale. A shipment that arrives twice (its sender crashed
  after sending it) is not absorbed twice; the events it carries that the
  profile has not seen are applied.
* **Erasure** writes a **marker** (``\\x00e:<HMAC of type:id>``, with its
  expiry) wherever an event of an erased identifier could arrive; a marker is
  all that remains of the person, and events that meet one are dropped and
  counted. Redis deletes are recorded (``\\x00r:<redis key>``) in the same
  write and forgotten only once Redis has done them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

from nextbest.adapters.projection import RedisMirror, identity_key
from nextbest.adapters.table import ContextTable, Record, Sender
from nextbest.adapters.topics import TopicNames, partition_for
from nextbest.core import profile
from nextbest.core import state as states
from nextbest.core.context import Identity
from nextbest.core.engine import Engine, Outcome
from nextbest.core.envelope import Event
from nextbest.core.identity import (
    CUSTOMER,
    Identifier,
    fingerprint,
    of_state_key,
    profile_id_of,
)
from nextbest.core.state import CustomerState, Membership
from nextbest.failures import log_failure
from nextbest.metrics import Metrics

log = logging.getLogger(__name__)

COMMAND_HEADER = "nextbest.command"
PROFILE_HEADER = "nextbest.profile"
HOPS_HEADER = "nextbest.hops"
COORDINATOR = 0  # the partition whose owner decides identity operations
MAX_HOPS = 8  # a chain of moves while directory entries catch up is a few hops
FORWARD_TTL = timedelta(days=7)  # as long as the rekey topic keeps what may still follow
OPERATIONS = frozenset({"identity.linked", "identity.unlinked", "customer.erased"})

DIRECTORY = b"\x00d:"
FORWARD = b"\x00f:"
MARKER = b"\x00e:"
REDIS_PENDING = b"\x00r:"
# entries the due index deletes when they expire (and the coordinator's seen operations
# and erased identifiers, see adapters/coordinator.py)
EXPIRING = (FORWARD, MARKER, b"\x00go:", b"\x00ge:")


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def command_kind(record: Record) -> str | None:
    """The command a rekey record carries, or None for an event."""
    for name, value in record.headers or ():
        if name == COMMAND_HEADER:
            return bytes(value).decode()
    return None


def header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode()
    return None


def member(state: CustomerState, identifier: Identifier) -> bool:
    return any(
        i.id == identifier.id and i.type == identifier.type for i in state.context.identities
    )


class Place(NamedTuple):
    """Where a profile is: its state key, its partition, and the sequence number of the
    operation that said so (a directory or forward entry)."""

    key: str
    home: int
    epoch: int

    def encode(self, expires: datetime | None = None) -> bytes:
        return _json([self.key, self.home, self.epoch, expires])

    @classmethod
    def decode(cls, raw: bytes) -> Place:
        key, home, epoch, *_ = orjson.loads(raw)
        return cls(key, home, epoch)


@dataclass(frozen=True)
class IdentityConfig:
    types: tuple[str, ...]
    max_per_type: int
    suppress: timedelta
    secret: bytes
    partitions: int


@dataclass
class Work:
    """One partition batch's identity work; the handler writes it with the batch.

    ``states`` is the handler's own dict of changed states (one write for all);
    ``puts`` are internal table entries (None: delete), ``removed`` state keys
    to delete, ``forced`` the documents to write whatever Redis holds.
    """

    partition: int
    now: datetime
    states: dict[str, CustomerState]
    load: Callable[[str], CustomerState | None]
    output: Sender  # the batch's: every command and forward goes with its transaction
    puts: dict[bytes, bytes | None] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    forced: set[str] = field(default_factory=set)
    sends: list[Awaitable[Any]] = field(default_factory=list)
    outcomes: list[tuple[Outcome, float]] = field(default_factory=list)
    deferred: list[tuple[Event, Any]] = field(default_factory=list)
    expiring: list[tuple[bytes, datetime]] = field(default_factory=list)
    # after the write: Redis deletes (state key, durable table key) and identity keys
    deletes: list[tuple[str, bytes]] = field(default_factory=list)
    identity_sets: dict[str, str] = field(default_factory=dict)
    identity_deletes: list[tuple[str, bytes]] = field(default_factory=list)

    def state(self, key: str) -> CustomerState | None:
        if key in self.removed:
            return None
        found = self.states.get(key)
        return found if found is not None else self.load(key)

    def keep(self, key: str, state: CustomerState, *, force: bool = False) -> None:
        """``state`` under ``key``; ``force``: its document replaces whatever Redis has
        (the key may have been deleted before: its record of that delete goes)."""
        self.states[key] = state
        self.removed.discard(key)
        if force:
            self.forced.add(key)
            self.puts[redis_token(profile_id_of(key))] = None

    def drop(self, key: str) -> None:
        self.states.pop(key, None)
        self.removed.add(key)


class Desk:
    """A partition's side of the identity protocol (see the module doc)."""

    def __init__(
        self,
        *,
        engine: Engine,
        table: ContextTable,
        names: TopicNames,
        metrics: Metrics,
        mirror: RedisMirror,
        config: IdentityConfig,
    ) -> None:
        self._engine = engine
        self._table = table
        self._rekey = names.rekey
        self._metrics = metrics
        self._mirror = mirror
        self.config = config
        self._partitions = config.partitions

    # --- the table, through this batch's own writes ---------------------------------

    def get(self, work: Work, key: bytes) -> bytes | None:
        if key in work.puts:
            return work.puts[key]
        return self._table.get(work.partition, key)

    def put(self, work: Work, key: bytes, value: bytes | None) -> None:
        work.puts[key] = value

    def home_of(self, identifier: Identifier) -> int:
        """The partition of an identifier: its id's, as producers key records."""
        return partition_for(identifier.route.encode(), self._partitions)

    def directory(self, work: Work, identifier: Identifier) -> Place | None:
        raw = self.get(work, DIRECTORY + identifier.key.encode())
        return None if raw is None else Place.decode(raw)

    def forward(self, work: Work, identifier: Identifier) -> Place | None:
        raw = self.get(work, FORWARD + identifier.key.encode())
        return None if raw is None else Place.decode(raw)

    def _marker(self, identifier: Identifier) -> bytes:
        return MARKER + fingerprint(identifier, self.config.secret).encode()

    def suppressed(self, work: Work, identifier: Identifier) -> bool:
        """Is ``identifier`` one of an erased person's, within the suppression period?"""
        raw = self.get(work, self._marker(identifier))
        return raw is not None and datetime.fromisoformat(raw.decode()) > work.now

    def _suppress(self, work: Work, identifier: Identifier, until: datetime) -> None:
        key = self._marker(identifier)
        self.put(work, key, until.isoformat().encode())
        work.expiring.append((key, until))

    def _point(self, work: Work, identifier: Identifier, place: Place, *, follow: bool) -> None:
        """Write ``identifier``'s directory entry here (its partition is this one) and, when
        events may still come here for it (``follow``), a forward entry."""
        if self.home_of(identifier) == work.partition:
            current = self.directory(work, identifier)
            if current is None or current.epoch <= place.epoch:
                self.put(work, DIRECTORY + identifier.key.encode(), place.encode())
                if identifier.type != CUSTOMER:
                    work.identity_sets[identity_key(*identifier)] = profile_id_of(place.key)
        if follow:
            expires = work.now + FORWARD_TTL
            key = FORWARD + identifier.key.encode()
            self.put(work, key, place.encode(expires))
            work.expiring.append((key, expires))

    # --- events ---------------------------------------------------------------------

    async def read(
        self,
        event: Event,
        source: Any,
        events: list[tuple[Event, Any]],
        work: Work,
    ) -> None:
        """Place an event that is not a customer's own plain one: send an identity
        operation to the coordinator, look a non-customer subject up, send it on."""
        headers = source.headers
        routed_to = header(headers, PROFILE_HEADER)
        if routed_to is None and event.type in OPERATIONS:
            work.sends.append(await self._operation(work, event, source))
            if event.type != "identity.linked":  # a change of the profile, not an activity
                return
        if event.subjecttype == CUSTOMER:
            events.append((event, source))
            return
        if routed_to is not None:
            events.append((event._replace(profile=routed_to), source))
            return
        identifier = Identifier(event.subjecttype, event.subject)
        place = self.directory(work, identifier)
        if place is None:  # alone: its own profile, here
            events.append((event._replace(profile=identifier.state_key), source))
        elif place.home == work.partition:
            events.append((event._replace(profile=place.key), source))
        else:
            await self.route(work, source, place.key, place.home)

    async def route(self, work: Work, source: Any, key: str | None, home: int) -> None:
        """Send an event's record on to ``home`` (to profile ``key``; None: to be looked up
        there), with its origin; dropped after ``MAX_HOPS``."""
        headers = [(k, v) for k, v in source.headers if k not in (PROFILE_HEADER, HOPS_HEADER)]
        hops = int(header(source.headers, HOPS_HEADER) or 0) + 1
        if hops > MAX_HOPS:
            self._metrics.suppressed_events.labels("unroutable").inc()
            log.error("dropping an event of %s after %d hops: its profile was not found",
                      source.origin.topic, hops - 1)  # fmt: skip
            return
        own = {"nextbest.channel", "nextbest.origin.topic", "nextbest.origin.partition",
               "nextbest.origin.offset"}  # fmt: skip
        headers = [(k, v) for k, v in headers if k not in own]
        headers += source.origin.headers()
        headers.append((HOPS_HEADER, str(hops).encode()))
        if key is not None:
            headers.append((PROFILE_HEADER, key.encode()))
        record = source.record
        self._metrics.routed.inc()
        work.sends.append(
            await work.output.send(
                self._rekey, record.key, record.value, home, record.timestamp / 1000, headers
            )
        )

    async def _operation(self, work: Work, event: Event, source: Any) -> Awaitable[Any]:
        """Hand an identity operation to the coordinator."""
        data = event.data
        operation: dict[str, Any] = {
            "id": f"{event.source}\x1f{event.id}",
            "kind": {"identity.linked": "link", "identity.unlinked": "unlink"}.get(
                event.type, "erase"
            ),
            "subject": [event.subjecttype, event.subject],
            "at": event.time,
        }
        if event.type == "identity.linked":
            operation["named"] = [[i["type"], i["id"]] for i in data["identities"]]
            operation["method"] = data["method"]
        elif event.type == "identity.unlinked":
            operation["leaving"] = [data["type"], data["id"]]
        return await self.send(work, COORDINATOR, "op", operation)

    async def send(
        self, work: Work, partition: int, kind: str, command: Mapping[str, Any]
    ) -> Awaitable[Any]:
        return await work.output.send(
            self._rekey, None, _json(command), partition, None, [(COMMAND_HEADER, kind.encode())]
        )

    def admit(
        self,
        work: Work,
        events: Sequence[tuple[Event, Any]],
        loaded: Mapping[str, CustomerState | None],
    ) -> list[tuple[Event, Any]]:
        """The events to apply now; those of erased identifiers are dropped, those whose
        profile is not (or no longer) here wait for this batch's commands (``deferred``)."""
        kept: list[tuple[Event, Any]] = []
        for event, source in events:
            key = event.profile or event.subject
            state = loaded.get(key)
            if event.subjecttype == CUSTOMER and event.profile is None:
                if state is None and self.suppressed(work, Identifier(CUSTOMER, event.subject)):
                    self._metrics.suppressed_events.labels("erased").inc()
                    continue
                kept.append((event, source))
                continue
            identifier = Identifier(event.subjecttype, event.subject)
            if state is not None:
                if member(state, identifier):
                    kept.append((event, source))
                else:
                    work.deferred.append((event, source))
                continue
            if self.suppressed(work, identifier):
                self._metrics.suppressed_events.labels("erased").inc()
            elif key == identifier.state_key and self.home_of(identifier) == work.partition:
                kept.append((event, source))  # first seen: a profile of its own, here
            else:
                work.deferred.append((event, source))
        return kept

    async def settle(self, work: Work) -> list[tuple[Event, Any]]:
        """After this batch's commands: the deferred events that are now at their profile;
        the others follow their identifier's forward entry or go back to be looked up."""
        ready: list[tuple[Event, Any]] = []
        for event, source in work.deferred:
            identifier = Identifier(event.subjecttype, event.subject)
            key = event.profile or identifier.state_key
            state = work.state(key)
            if state is not None and member(state, identifier):
                ready.append((event, source))
                continue
            if self.suppressed(work, identifier):
                self._metrics.suppressed_events.labels("erased").inc()
                continue
            place = self.forward(work, identifier)
            if place is not None:
                if place.home == work.partition and place.key != key:
                    target = work.state(place.key)
                    if target is not None and member(target, identifier):
                        ready.append((event._replace(profile=place.key), source))
                        continue
                # Where it went from here; the shipment that took it there left before
                # anything that follows it, so the event arrives after it — also when it
                # is this partition again (a shipment goes through the topic like any).
                await self.route(work, source, place.key, place.home)
                continue
            home = self.home_of(identifier)
            if (
                home == work.partition
                and key == identifier.state_key
                and self.directory(work, identifier) is None
            ):
                ready.append((event, source))  # its own profile, made now
            else:
                await self.route(work, source, None, home)  # to be looked up again
        work.deferred.clear()
        return ready

    # --- commands -------------------------------------------------------------------

    async def command(self, work: Work, record: Record, kind: str) -> None:
        """Carry out one command (the coordinator's are its own business)."""
        command: dict[str, Any] = orjson.loads(record.value or b"{}")
        if kind == "ship":
            await self._ship(work, command)
        elif kind == "absorb":
            await self._absorb(work, command, record.timestamp / 1000)
        elif kind == "dirset":
            self._dirset(work, command)
        elif kind == "erase":
            self._erase(work, command)
        else:
            log.error("unknown identity command %r at offset %d", kind, record.offset)

    async def _ship(self, work: Work, command: Mapping[str, Any]) -> None:
        """Give identifiers (with their parts) to another profile, or split one off here."""
        seq: int = command["s"]
        key: str = command["from"]
        taking = [Identifier(*pair) for pair in command["take"]]
        state = work.state(key)
        if state is not None and state.membership.epoch >= seq:
            return  # done before: a repeated command
        if command.get("split"):
            if state is not None:
                await self._split(work, seq, key, state, taking[0])
            return
        links = {k: (datetime.fromisoformat(v[0]), v[1]) for k, v in command["links"].items()}
        present = [i for i in taking if state is not None and member(state, i)]
        if not present and any(
            (f := self.forward(work, i)) is not None and f.epoch >= seq for i in taking
        ):
            return  # shipped before: a repeated command
        if state is not None and present:
            shipment, rest = profile.ship(
                state, {i.key for i in present}, links, work.now, self._engine._bounds
            )
        else:
            shipment, rest = profile.Shipment({}, ()), state
        unseen = tuple(
            profile.linked(Identity(i.type, i.id), *links.get(i.key, (work.now, "other")))
            for i in taking
            if i not in present
        )
        shipment = shipment._replace(identities=(*shipment.identities, *unseen))
        target: str = command["to"]
        target_home: int = command["th"]
        after: str | None = None
        work.sends.append(
            await self.send(work, target_home, "absorb", {
                "s": seq, "to": target, "n": command["n"], "from": key,
                "parts": {k: orjson.Fragment(states.to_json(p)) for k, p in shipment.parts.items()},
                "ids": [_identity(i) for i in shipment.identities],
                "whole": None if shipment.whole is None
                else orjson.Fragment(states.to_json(shipment.whole)),
            })
        )  # fmt: skip
        place = Place(target, target_home, seq)
        for identifier in taking:
            self._point(work, identifier, place, follow=True)
        if state is None:
            pass
        elif rest is None or shipment.whole is not None:
            self._forget(work, key)
            after = None
        elif rest is state:  # none of them was here
            after = key
        else:
            after = await self._settle_rest(work, seq, key, rest)
        work.sends.append(
            await self.send(work, COORDINATOR, "done", {"s": seq, "from": key, "to": after})
        )

    async def _split(
        self, work: Work, seq: int, key: str, state: CustomerState, leaving: Identifier
    ) -> None:
        """``identity.unlinked``: ``leaving`` becomes a profile of its own, here, with what
        happened under it; the rest keeps (or, if its name left, takes) its own key."""
        engine = self._engine
        if not member(state, leaving):
            after: str | None = key
        else:
            rest, parts = engine.split(state, {leaving.key}, work.now)
            [identity] = [i for i in state.context.identities if i.key == leaving.key]
            alone = Identity(identity.type, identity.id, _since=identity.since)
            leaver = engine.promote(
                parts[leaving.key], alone, state.context.version + 1, work.now
            )._replace(membership=Membership(epoch=seq))
            work.keep(leaving.state_key, leaver, force=True)
            self._point(work, leaving, Place(leaving.state_key, work.partition, seq), follow=True)
            if leaving.state_key != key:
                await self._dirset_send(
                    work, leaving, Place(leaving.state_key, work.partition, seq)
                )
            assert rest is not None  # a profile of two identifiers or more
            after = await self._settle_rest(work, seq, key, rest)
        work.sends.append(
            await self.send(work, COORDINATOR, "done", {"s": seq, "from": key, "to": after})
        )

    async def _settle_rest(self, work: Work, seq: int, key: str, rest: CustomerState) -> str:
        """Keep what stays of a profile, under its name (renamed here if its name left)."""
        name = profile.name_of(rest.context.identities)
        new_key = profile.identifier(name).state_key
        rest = rest._replace(membership=Membership(epoch=seq))
        if new_key == key:
            work.keep(key, rest, force=True)
            return key
        rest = profile.rename(rest, profile.identifier(name).profile_id)
        self._forget(work, key)
        work.keep(new_key, rest, force=True)
        place = Place(new_key, work.partition, seq)
        for identity in rest.context.identities:
            identifier = profile.identifier(identity)
            self._point(work, identifier, place, follow=True)
            await self._dirset_send(work, identifier, place)
        return new_key

    async def _dirset_send(self, work: Work, identifier: Identifier, place: Place) -> None:
        """Point ``identifier``'s directory entry at ``place`` (here, or by a command)."""
        if self.home_of(identifier) != work.partition and identifier.type != CUSTOMER:
            work.sends.append(
                await self.send(work, self.home_of(identifier), "dirset", {
                    "s": place.epoch, "id": list(identifier), "k": place.key, "h": place.home,
                })
            )  # fmt: skip

    def _forget(self, work: Work, key: str) -> None:
        """A profile that left this key (merged away, renamed, erased): state and Redis."""
        work.drop(key)
        token = redis_token(profile_id_of(key))
        self.put(work, token, b"1")
        work.deletes.append((key, token))

    async def _absorb(self, work: Work, command: Mapping[str, Any], since: float) -> None:
        seq: int = command["s"]
        key: str = command["to"]
        source: str = command["from"]
        parts = {k: states.from_json(v) for k, v in command["parts"].items()}
        whole = None if command["whole"] is None else states.from_json(command["whole"])
        identities = tuple(_identity_of(item) for item in command["ids"])
        shipment = profile.Shipment(parts, identities, whole)
        state = work.state(key)
        if state is None:  # a profile nobody has sent an event of yet: its name alone
            named = of_state_key(key)
            state = (
                CustomerState.new(named.id)
                if named.type == CUSTOMER
                else CustomerState.named(named, work.now)
            )
        membership = state.membership
        if membership.epoch >= seq or (
            membership.assembling == seq and source in membership.received
        ):
            self._recover(work, key, state, shipment, since)  # it came twice
            return
        outcome = self._engine.absorb(state, profile_id_of(key), [shipment], work.now)
        work.outcomes.append((outcome, since))
        received = (*(membership.received if membership.assembling == seq else ()), source)
        expected: int = command["n"]
        absorbed = outcome.state
        if len(received) < expected:
            absorbed = absorbed._replace(
                membership=Membership(membership.epoch, seq, expected, received)
            )
            work.keep(key, absorbed, force=True)
            return
        after = await self._settle_rest(work, seq, key, absorbed)
        if after == key:  # (renamed: the rename pointed every identifier here already)
            place = Place(key, work.partition, seq)
            for identity in work.states[key].context.identities:
                identifier = profile.identifier(identity)
                # the forward says where it is now, as this partition knows: events still
                # sent to another profile here (a stale directory entry) find it
                self._point(work, identifier, place, follow=True)
                await self._dirset_send(work, identifier, place)
        work.sends.append(
            await self.send(work, COORDINATOR, "done", {"s": seq, "from": key, "to": after})
        )

    def _recover(
        self,
        work: Work,
        key: str,
        state: CustomerState,
        shipment: profile.Shipment,
        since: float,
    ) -> None:
        """A shipment that came twice: apply the events it carries that the profile has
        not seen (its sender applied them before sending again)."""
        seen = set(state.seen_ids)
        events = sorted(
            (
                step.event._replace(subjecttype=part_key.split(":", 1)[0],
                                    subject=part_key.split(":", 1)[1], profile=key)
                for part_key, part in shipment.parts.items()
                for step in part.recent
                if step.event.id not in seen
            ),
            key=lambda e: (e.time, e.id),
        )  # fmt: skip
        for event in events:
            current = work.state(key)
            outcome = self._engine.process(current, event, work.now)
            if outcome.applied:
                work.keep(key, outcome.state)
                work.outcomes.append((outcome, since))

    def _dirset(self, work: Work, command: Mapping[str, Any]) -> None:
        identifier = Identifier(*command["id"])
        self._point(work, identifier, Place(command["k"], command["h"], command["s"]), follow=False)

    def _erase(self, work: Work, command: Mapping[str, Any]) -> None:
        """Erase a profile (§11): on every partition, what of it is here."""
        key: str = command["k"]
        home: int = command["h"]
        until = datetime.fromisoformat(command["x"])
        here = work.partition
        if home == here and work.state(key) is not None:
            self._forget(work, key)
        for pair in command["m"]:
            identifier = Identifier(*pair)
            self.put(work, FORWARD + identifier.key.encode(), None)
            at_home = self.home_of(identifier) == here
            if at_home or home == here:
                self._suppress(work, identifier, until)
            if at_home:
                self.put(work, DIRECTORY + identifier.key.encode(), None)
                if identifier.type != CUSTOMER:
                    redis_key = identity_key(*identifier)
                    token = REDIS_PENDING + redis_key.encode()
                    self.put(work, token, b"1")
                    work.identity_deletes.append((redis_key, token))
                    work.identity_sets.pop(redis_key, None)

    # --- after the write ----------------------------------------------------------------

    def mirror(self, work: Work) -> None:
        """Hand this batch's Redis deletes and identity keys to the mirror."""
        partition = work.partition
        for key, token in work.deletes:
            if key not in work.states:  # else written again in this batch: no delete
                self._mirror.delete(profile_id_of(key), token=(partition, token))
        for key, pid in work.identity_sets.items():
            self._mirror.set_identity(key, pid)
        for key, token in work.identity_deletes:
            self._mirror.delete_identity(key, token=(partition, token))

    def confirm(self, work: Work) -> None:
        """Forget the durable records of the Redis deletes Redis has done."""
        for token in self._mirror.done(work.partition):
            if token not in work.puts:
                self.put(work, token, None)

    def touched(self, state: CustomerState, partition: int) -> tuple[str, ...]:
        """The identity keys whose TTL a write of ``state``'s document renews (the ones
        this partition does not set itself)."""
        identities = state.context.identities
        if len(identities) == 1 and identities[0].type == CUSTOMER:
            return ()
        return tuple(
            identity_key(i.type, i.id)
            for i in identities
            if i.type != CUSTOMER and self.home_of(Identifier(i.type, i.id)) != partition
        )

    def owned_identities(self, state: CustomerState, partition: int) -> dict[str, str]:
        """Identity keys this partition writes for ``state`` (its directory is here)."""
        identities = state.context.identities
        if len(identities) == 1 and identities[0].type == CUSTOMER:
            return {}
        pid = state.context.customer_id
        return {
            identity_key(i.type, i.id): pid
            for i in identities
            if i.type != CUSTOMER and self.home_of(Identifier(i.type, i.id)) == partition
        }

    # --- expiry and recovery ----------------------------------------------------------

    def expire(self, work: Work, keys: Iterable[bytes]) -> None:
        """Delete the expiring entries among ``keys`` whose time has come."""
        for key in keys:
            raw = self.get(work, key)
            if raw is None:
                continue
            until = _expiry(key, raw)
            if until is not None and until <= work.now:
                self.put(work, key, None)
            elif until is not None:
                work.expiring.append((key, until))

    def entries(self, partition: int) -> tuple[list[tuple[bytes, datetime]], list[bytes]]:
        """What a partition's table holds that needs looking after: expiring entries with
        their expiry, and Redis deletes not yet done."""
        expiring: list[tuple[bytes, datetime]] = []
        for prefix in EXPIRING:
            for key, raw in self._table.scan(partition, prefix):
                until = _expiry(key, raw)
                if until is not None:
                    expiring.append((key, until))
        pending = [key for key, _ in self._table.scan(partition, REDIS_PENDING)]
        return expiring, pending

    def resubmit(self, partition: int, pending: Sequence[bytes]) -> None:
        """Redis deletes a crash left undone: again."""
        for token in pending:
            target = token[len(REDIS_PENDING) :].decode()
            kind, _, rest = target.partition(":")
            if kind == "context":
                self._mirror.delete(rest, token=(partition, token))
            else:
                self._mirror.delete_identity(target, token=(partition, token))


def redis_token(profile_id: str) -> bytes:
    """The table key recording that ``nextbest:context:<profile_id>`` must be deleted."""
    return REDIS_PENDING + f"context:{profile_id}".encode()


def _expiry(key: bytes, raw: bytes) -> datetime | None:
    try:
        if key.startswith(FORWARD):
            stored = orjson.loads(raw)[3]
            return None if stored is None else datetime.fromisoformat(stored)
        return datetime.fromisoformat(raw.decode())
    except (ValueError, IndexError, orjson.JSONDecodeError):
        return None


def _identity(identity: Identity) -> list[Any]:
    return [identity.type, identity.id, identity.linked_at, identity.method, identity.since]


def _identity_of(item: Sequence[Any]) -> Identity:
    kind, value, linked_at, method, since = item
    return Identity(
        kind,
        value,
        None if linked_at is None else datetime.fromisoformat(linked_at),
        method,
        None if since is None else datetime.fromisoformat(since),
    )


__all__ = [
    "COMMAND_HEADER",
    "COORDINATOR",
    "Desk",
    "IdentityConfig",
    "Place",
    "Work",
    "command_kind",
    "log_failure",
]
