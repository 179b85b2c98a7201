"""The identity coordinator: where every identity operation is decided (contract §10, §11).

Identity operations — ``identity.linked``, ``identity.unlinked``,
``customer.erased`` — reach it as ``op`` commands on ``<app id>-rekey``
partition 0, from the partition where each event arrived; whoever owns
partition 0 runs the coordinator in that partition's batches, so it moves and
recovers with the partition like any state. One place decides, in the order
the operations reach it, on a graph nobody else changes: two links never
decide on stale views of each other, and a replay decides the same.

The decisions are :mod:`nextbest.core.links`'; what is left here is the graph
and the bookkeeping, in partition 0 of the ``contexts`` table:

* ``\\x00gi:<type>:<id>`` -> the state key of the profile the identifier is in;
* ``\\x00gp:<state key>`` -> that profile: its partition, its members (with
  their newest link) and the operation changing it, if any (busy);
* ``\\x00gw:<seq>`` -> an operation in progress: who must say ``done``;
* ``\\x00gq`` -> the operations waiting for a busy profile, first come first
  served; ``\\x00gs`` -> the last sequence number;
* ``\\x00go:<op id>`` -> an operation seen (a repeat is ignored) and
  ``\\x00ge:<HMAC of type:id>`` -> an erased identifier (refused by links),
  both until they expire.

An identifier the graph does not know is a profile of its own, where its id
lives: most never meet the coordinator.

An operation runs when none of its profiles is busy with another; it sends
``ship`` to each profile that gives identifiers and waits for a ``done`` from
each of them and from the profile that receives them (``erase`` goes to every
partition and waits for nothing). Then the profiles are free again and the
waiting operations are looked at, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson

from nextbest.adapters.identity import Desk, Work, _json
from nextbest.core.identity import Identifier, fingerprint
from nextbest.core.links import (
    Member,
    ProfileRef,
    Refusal,
    Result,
    members_after_split,
    plan_link,
    plan_unlink,
)
from nextbest.failures import log_failure
from nextbest.metrics import Metrics

log = logging.getLogger(__name__)

GRAPH_ID = b"\x00gi:"
GRAPH_PROFILE = b"\x00gp:"
GRAPH_WAIT = b"\x00gw:"
GRAPH_QUEUE = b"\x00gq"
GRAPH_SEQ = b"\x00gs"
GRAPH_OP = b"\x00go:"
GRAPH_ERASED = b"\x00ge:"
OP_MEMORY = timedelta(days=7)  # a repeated operation is recognised this long


def _member(member: Member) -> list[Any]:
    return [member.identifier.type, member.identifier.id, member.linked_at, member.method]


def _member_of(item: list[Any]) -> Member:
    kind, value, linked_at, method = item
    at = None if linked_at is None else datetime.fromisoformat(linked_at)
    return Member(Identifier(kind, value), at, method)


class Coordinator:
    """Decides identity operations on partition 0 (see the module doc)."""

    def __init__(self, desk: Desk, metrics: Metrics) -> None:
        self._desk = desk
        self._metrics = metrics
        self._config = desk.config

    # --- the graph ----------------------------------------------------------------------

    def _load(self, work: Work, key: bytes) -> Any:
        raw = self._desk.get(work, key)
        return None if raw is None else orjson.loads(raw)

    def _save(self, work: Work, key: bytes, value: Any) -> None:
        self._desk.put(work, key, None if value is None else _json(value))

    def _record(self, work: Work, key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._load(work, GRAPH_PROFILE + key.encode())
        return found

    def resolve(self, work: Work, identifier: Identifier) -> ProfileRef:
        key = self._desk.get(work, GRAPH_ID + identifier.key.encode())
        if key is not None:
            record = self._record(work, key.decode())
            if record is not None:
                members = tuple(_member_of(m) for m in record["m"])
                return ProfileRef(key.decode(), record["h"], members, True)
        return ProfileRef(
            identifier.state_key, self._desk.home_of(identifier), (Member(identifier),), False
        )

    def _erased(self, work: Work, identifier: Identifier) -> bool:
        key = GRAPH_ERASED + fingerprint(identifier, self._config.secret).encode()
        raw = self._desk.get(work, key)
        return raw is not None and datetime.fromisoformat(raw.decode()) > work.now

    def _write_profile(
        self, work: Work, key: str, home: int, members: tuple[Member, ...], busy: int
    ) -> None:
        self._save(work, GRAPH_PROFILE + key.encode(),
                   {"h": home, "m": [_member(m) for m in members], "b": busy})  # fmt: skip
        for m in members:
            self._desk.put(work, GRAPH_ID + m.identifier.key.encode(), key.encode())

    def _busy(self, work: Work, key: str) -> bool:
        record = self._record(work, key)
        return record is not None and bool(record["b"])

    def _next_seq(self, work: Work) -> int:
        seq = int(self._load(work, GRAPH_SEQ) or 0) + 1
        self._save(work, GRAPH_SEQ, seq)
        return seq

    def _expiring(self, work: Work, key: bytes, until: datetime) -> None:
        self._desk.put(work, key, until.isoformat().encode())
        work.expiring.append((key, until))

    # --- commands -----------------------------------------------------------------------

    async def handle(self, work: Work, kind: str, command: dict[str, Any]) -> None:
        if kind == "op":
            seen = GRAPH_OP + str(command["id"]).encode()
            if self._desk.get(work, seen) is not None:
                return  # sent again (its partition replayed a batch)
            self._expiring(work, seen, work.now + OP_MEMORY)
            queue: list[dict[str, Any]] = self._load(work, GRAPH_QUEUE) or []
            queue.append(command)
            await self._drain(work, queue)
        elif kind == "done":
            await self._done(work, command)
        else:
            log.error("unknown coordinator command %r", kind)

    def _touched(self, work: Work, operation: Mapping[str, Any]) -> set[str]:
        pairs = [operation["subject"], *operation.get("named", ())]
        if "leaving" in operation:
            pairs.append(operation["leaving"])
        return {self.resolve(work, Identifier(*pair)).key for pair in pairs}

    async def _drain(self, work: Work, queue: list[dict[str, Any]]) -> None:
        """Start every waiting operation none of whose profiles is busy, in order; one
        that must wait holds back the later ones on its profiles."""
        blocked: set[str] = set()
        waiting: list[dict[str, Any]] = []
        for operation in queue:
            touched = self._touched(work, operation)
            if touched & blocked or any(self._busy(work, key) for key in touched):
                waiting.append(operation)
                blocked |= touched
                continue
            try:
                await self._start(work, operation)
            except Exception as error:  # a bug: said once, the others go on
                log_failure(log, error, "identity operation failed")  # the traceback at DEBUG
        self._save(work, GRAPH_QUEUE, waiting or None)
        self._metrics.identity_waiting.set(len(waiting))

    async def _start(self, work: Work, operation: Mapping[str, Any]) -> None:
        kind = operation["kind"]
        self._metrics.identity_operations.labels(kind).inc()
        subject = Identifier(*operation["subject"])
        at = datetime.fromisoformat(operation["at"])
        if kind == "link":
            await self._link(work, operation, subject, at)
        elif kind == "unlink":
            await self._unlink(work, subject, Identifier(*operation["leaving"]))
        else:
            await self._erase(work, subject)

    async def _link(
        self, work: Work, operation: Mapping[str, Any], subject: Identifier, at: datetime
    ) -> None:
        named = [Identifier(*pair) for pair in operation["named"]]
        method: str = operation["method"]
        config = self._config
        plan = plan_link(
            subject, named, at, method,
            resolve=lambda i: self.resolve(work, i),
            erased=lambda i: self._erased(work, i),
            types=config.types, max_per_type=config.max_per_type,
        )  # fmt: skip
        for decision in plan.decisions:
            self._metrics.identity_links.labels(decision.result.value).inc()
            if decision.reason is not None:
                self._metrics.identity_refused.labels(decision.reason.value).inc()
        target = plan.target
        if not plan.changes:
            if target.tracked and plan.members != target.members:  # a newer link of the same
                self._write_profile(work, target.key, target.home, plan.members, 0)
            return
        seq = self._next_seq(work)
        self._write_profile(work, target.key, target.home, plan.members, seq)
        need = [target.key]
        for source in plan.sources:
            need.append(source.profile.key)
            if source.whole:
                self._save(work, GRAPH_PROFILE + source.profile.key.encode(), None)
            else:
                rest = tuple(m for m in source.profile.members if m.identifier not in source.taking)
                self._write_profile(work, source.profile.key, source.profile.home, rest, seq)
        self._save(work, GRAPH_WAIT + str(seq).encode(),
                   {"need": need, "got": [], "keys": {k: k for k in need}})  # fmt: skip
        joined = {
            d.identifier for d in plan.decisions if d.result in (Result.LINKED, Result.MOVED)
        } | {subject}
        links = {
            m.identifier.key: [m.linked_at, m.method]
            for m in plan.members
            if m.identifier in joined and m.linked_at == at
        }
        for source in plan.sources:
            work.sends.append(
                await self._desk.send(work, source.profile.home, "ship", {
                    "s": seq, "from": source.profile.key,
                    "take": [list(i) for i in source.taking], "whole": source.whole,
                    "to": target.key, "th": target.home, "n": len(plan.sources),
                    "links": links,
                })
            )  # fmt: skip

    async def _unlink(self, work: Work, subject: Identifier, leaving: Identifier) -> None:
        plan = plan_unlink(
            subject, leaving, resolve=lambda i: self.resolve(work, i), types=self._config.types
        )
        self._metrics.identity_links.labels(plan.decision.result.value).inc()
        if plan.decision.reason is not None:
            self._metrics.identity_refused.labels(plan.decision.reason.value).inc()
        profile = plan.profile
        if profile is None:
            return
        seq = self._next_seq(work)
        rest = members_after_split(profile, leaving)
        self._write_profile(work, profile.key, profile.home, rest, seq)
        alone = leaving.state_key
        self._write_profile(work, alone, profile.home, (Member(leaving),), seq)
        self._save(work, GRAPH_WAIT + str(seq).encode(),
                   {"need": [profile.key], "got": [], "keys": {profile.key: profile.key},
                    "also": [alone]})  # fmt: skip
        work.sends.append(
            await self._desk.send(work, profile.home, "ship", {
                "s": seq, "from": profile.key, "take": [list(leaving)], "split": True,
            })
        )  # fmt: skip

    async def _erase(self, work: Work, subject: Identifier) -> None:
        """Forget the whole profile in the graph and tell every partition (§11)."""
        profile = self.resolve(work, subject)
        seq = self._next_seq(work)
        until = work.now + self._config.suppress
        for m in profile.members:
            self._desk.put(work, GRAPH_ID + m.identifier.key.encode(), None)
            secret = self._config.secret
            self._expiring(work, GRAPH_ERASED + fingerprint(m.identifier, secret).encode(), until)
        self._save(work, GRAPH_PROFILE + profile.key.encode(), None)
        command = {
            "s": seq, "k": profile.key, "h": profile.home, "x": until,
            "m": [list(m.identifier) for m in profile.members],
        }  # fmt: skip
        for partition in range(self._config.partitions):
            work.sends.append(await self._desk.send(work, partition, "erase", command))

    async def _done(self, work: Work, command: Mapping[str, Any]) -> None:
        seq = command["s"]
        wait_key = GRAPH_WAIT + str(seq).encode()
        waiting: dict[str, Any] | None = self._load(work, wait_key)
        if waiting is None:
            return  # said before (a replay)
        before: str = command["from"]
        after: str | None = command["to"]
        if before in waiting["got"]:
            return
        waiting["got"].append(before)
        if after != before:
            record = self._record(work, before)
            self._save(work, GRAPH_PROFILE + before.encode(), None)
            if after is not None and record is not None:
                members = tuple(_member_of(m) for m in record["m"])
                self._write_profile(work, after, record["h"], members, record["b"])
            waiting["keys"][before] = after
        if set(waiting["need"]) - set(waiting["got"]):
            self._save(work, wait_key, waiting)
            return
        self._save(work, wait_key, None)
        for key in [*waiting["keys"].values(), *waiting.get("also", ())]:
            record = self._record(work, key) if key is not None else None
            if record is not None and record["b"] == seq:
                record["b"] = 0
                self._save(work, GRAPH_PROFILE + key.encode(), record)
        await self._drain(work, self._load(work, GRAPH_QUEUE) or [])


__all__ = ["GRAPH_ERASED", "GRAPH_OP", "Coordinator", "Refusal"]
