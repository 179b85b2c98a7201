"""Identity decisions (contract §10): which identifiers join which profile, and which not.

The identity coordinator (:mod:`nextbest.adapters.identity`) owns the graph of
every profile it has ever changed; these functions decide one operation on a
view of it (``resolve``: an identifier -> its profile as the graph knows it; an
identifier the graph does not know is a profile of its own where its id lives)
and return a plan the coordinator carries out through Kafka. They never read a
clock and never change anything.

The rules of a link ``identity.linked`` (subject ``S``, identifiers ``I…``):

* an identifier of a type not configured, a placeholder value ("", "null",
  "undefined", "anonymous", "unknown", "0") or an erased one is never linked
  (``type``, ``blocked``, ``erased``); when it is the subject, nothing is;
* the **anchor** is the first authenticated (not ``anonymous``/``device``)
  identifier of the link, the subject first, else the subject;
* every other identifier joins the anchor's profile with its whole profile
  (two profiles merge), unless that would give the profile two ``customer`` or
  two ``loyalty`` identifiers (``unique``) or more than ``max_per_type`` of one
  type (``limit``);
* except a soft identifier (``anonymous``, ``device``) that belongs to another
  person's profile (one with an authenticated identifier) while the link is an
  authenticated one: it **moves** alone, with what happened under it, if this
  link is newer than the one that put it there (a shared tablet never fuses two
  people; the newest login wins);
* the merged profile lives where its customer identifier lives, if it has one
  (so a customer's events need no look-up), else where the anchor's does.

Refusals and outcomes are per identifier (``nextbest_identity_links_total{result}``,
``nextbest_identity_links_refused_total{reason}``). Links decided in any order
give the same profiles as long as no two of them contradict each other; when
they do (one loyalty card linked to two customers), the first to reach the
coordinator wins and the other is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from nextbest.core.identity import CUSTOMER, UNIQUE_TYPES, Identifier, is_blocked


class Result(StrEnum):
    """What became of one identifier named by a link (the ``result`` label)."""

    LINKED = "linked"
    MOVED = "moved"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


class Refusal(StrEnum):
    """Why an identifier was not linked (the ``reason`` label)."""

    UNIQUE = "unique"
    LIMIT = "limit"
    BLOCKED = "blocked"
    ERASED = "erased"
    TYPE = "type"


class Member(NamedTuple):
    identifier: Identifier
    linked_at: datetime | None = None
    method: str | None = None


class ProfileRef(NamedTuple):
    """A profile as the coordinator sees it: where its state is, and who is in it."""

    key: str  # the state key at its home (the coordinator's handle of the profile)
    home: int  # its partition
    members: tuple[Member, ...]
    tracked: bool = True  # False: an identifier the graph never changed, alone where it lives

    @property
    def authenticated(self) -> bool:
        return any(not m.identifier.soft for m in self.members)

    def member(self, identifier: Identifier) -> Member | None:
        for member in self.members:
            if member.identifier == identifier:
                return member
        return None


class Decision(NamedTuple):
    identifier: Identifier
    result: Result
    reason: Refusal | None = None


class Source(NamedTuple):
    """A profile that gives identifiers to the target: all of them (``whole``) or some."""

    profile: ProfileRef
    taking: tuple[Identifier, ...]
    whole: bool


class LinkPlan(NamedTuple):
    """The target profile (as it stands now), what joins it from where, its members
    after, and one decision per identifier the link named (the anchor aside)."""

    target: ProfileRef
    sources: tuple[Source, ...]
    members: tuple[Member, ...]
    decisions: tuple[Decision, ...]

    @property
    def changes(self) -> bool:
        """Identifiers move (else at most the target's link times change)."""
        return bool(self.sources)


Resolve = Callable[[Identifier], ProfileRef]


def _refusal(
    identifier: Identifier, types: Collection[str], erased: Callable[[Identifier], bool]
) -> Refusal | None:
    if identifier.type not in types:
        return Refusal.TYPE
    if is_blocked(identifier.id):
        return Refusal.BLOCKED
    if erased(identifier):
        return Refusal.ERASED
    return None


def _violation(members: Collection[Member], max_per_type: int) -> Refusal | None:
    counts: dict[str, int] = {}
    for member in members:
        counts[member.identifier.type] = counts.get(member.identifier.type, 0) + 1
    if any(counts.get(kind, 0) > 1 for kind in UNIQUE_TYPES):
        return Refusal.UNIQUE
    if any(count > max_per_type for count in counts.values()):
        return Refusal.LIMIT
    return None


def plan_link(
    subject: Identifier,
    named: Sequence[Identifier],
    at: datetime,
    method: str,
    *,
    resolve: Resolve,
    erased: Callable[[Identifier], bool],
    types: Collection[str],
    max_per_type: int,
) -> LinkPlan:
    """Decide ``identity.linked`` of ``subject`` with ``named`` at ``at`` (see the module doc)."""
    candidates = list(dict.fromkeys([subject, *named]))
    decisions: list[Decision] = []
    valid: list[Identifier] = []
    subject_refusal = _refusal(subject, types, erased)
    for identifier in candidates:
        reason = subject_refusal or _refusal(identifier, types, erased)
        if reason is not None:  # a refused subject refuses the whole link
            decisions.append(Decision(identifier, Result.REFUSED, reason))
        else:
            valid.append(identifier)
    anchor = next((i for i in valid if not i.soft), subject)
    home = resolve(anchor) if valid else resolve(subject)
    if not valid:
        return LinkPlan(home, (), home.members, tuple(decisions))
    authenticated = not anchor.soft
    members: dict[Identifier, Member] = {m.identifier: m for m in home.members}
    fused: dict[str, ProfileRef] = {home.key: home}  # profiles that become one
    moved: dict[str, list[Identifier]] = {}  # profile key -> soft identifiers taken from it
    moved_from: dict[str, ProfileRef] = {}
    for identifier in valid:
        if identifier == anchor:
            continue
        if identifier in members:
            known = members[identifier]
            if authenticated and (known.linked_at is None or at > known.linked_at):
                # linked again, later: the newest link is what a soft identifier follows
                members[identifier] = Member(identifier, at, method)
            decisions.append(Decision(identifier, Result.UNCHANGED))
            continue
        profile = resolve(identifier)
        remaining = tuple(m for m in profile.members if m.identifier not in members)
        if identifier.soft and authenticated and any(not m.identifier.soft for m in remaining):
            current = profile.member(identifier)
            if current is not None and current.linked_at is not None and at <= current.linked_at:
                decisions.append(Decision(identifier, Result.UNCHANGED))  # an older login
                continue
            joined = Member(identifier, at, method)
            reason = _violation([*members.values(), joined], max_per_type)
            if reason is not None:
                decisions.append(Decision(identifier, Result.REFUSED, reason))
                continue
            members[identifier] = joined
            moved.setdefault(profile.key, []).append(identifier)
            moved_from[profile.key] = profile
            decisions.append(Decision(identifier, Result.MOVED))
            continue
        joining = [
            Member(m.identifier, at, method) if m.identifier in candidates else m for m in remaining
        ]
        reason = _violation([*members.values(), *joining], max_per_type)
        if reason is not None:
            decisions.append(Decision(identifier, Result.REFUSED, reason))
            continue
        for member in joining:
            members[member.identifier] = member
        fused[profile.key] = profile
        decisions.append(Decision(identifier, Result.LINKED))
    target = _host(fused, members)
    sources: list[Source] = []
    for key, profile in fused.items():
        if key != target.key:
            sources.append(
                Source(
                    profile,
                    tuple(m.identifier for m in profile.members if m.identifier in members),
                    True,
                )
            )
    for key, taken in moved.items():
        if key in fused:  # its profile joined whole after all
            continue
        sources.append(Source(moved_from[key], tuple(taken), False))
    return LinkPlan(target, tuple(sources), tuple(members.values()), tuple(decisions))


def _host(fused: dict[str, ProfileRef], members: dict[Identifier, Member]) -> ProfileRef:
    """Where the merged profile lives: the profile holding its customer identifier, if
    any (a customer's state is always where its id lives), else the anchor's."""
    customers = [i for i in members if i.type == CUSTOMER]
    if customers:
        for profile in fused.values():
            if profile.member(customers[0]) is not None:
                return profile
    return next(iter(fused.values()))


class SplitPlan(NamedTuple):
    """``identity.unlinked``: ``leaving`` goes out of ``profile`` (nothing to do: None)."""

    profile: ProfileRef | None
    leaving: Identifier
    decision: Decision


def plan_unlink(
    subject: Identifier, leaving: Identifier, *, resolve: Resolve, types: Collection[str]
) -> SplitPlan:
    """Decide ``identity.unlinked``: ``leaving`` leaves its profile when the subject is
    that identifier or one of the same profile, and the profile has others."""
    if leaving.type not in types:
        return SplitPlan(None, leaving, Decision(leaving, Result.REFUSED, Refusal.TYPE))
    profile = resolve(leaving)
    same = subject == leaving or profile.member(subject) is not None
    if not same or len(profile.members) < 2:
        return SplitPlan(None, leaving, Decision(leaving, Result.UNCHANGED))
    return SplitPlan(profile, leaving, Decision(leaving, Result.MOVED))


def members_after_split(profile: ProfileRef, leaving: Identifier) -> tuple[Member, ...]:
    return tuple(m for m in profile.members if m.identifier != leaving)
