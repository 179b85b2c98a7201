"""The identity decisions of contract §10 as tables of cases, and the order of links.

A small in-memory graph stands for the coordinator's store: identifier -> its
profile's handle, handle -> the profile. Applying a plan is what the
coordinator does to its graph when it decides (adapters/identity.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.core.identity import DEFAULT_TYPES, Identifier
from nextbest.core.links import (
    Decision,
    LinkPlan,
    Member,
    ProfileRef,
    Refusal,
    Result,
    plan_link,
    plan_unlink,
)
from tests.unit.events import at

C1, C2 = Identifier("customer", "c-1"), Identifier("customer", "c-2")
L1, L2 = Identifier("loyalty", "L-1"), Identifier("loyalty", "L-2")
A1, A2 = Identifier("anonymous", "ck-1"), Identifier("anonymous", "ck-2")
D1 = Identifier("device", "tablet-7")
P1 = Identifier("phone", "h-ph1")
E1 = Identifier("email", "h-em1")


def home(identifier: Identifier) -> int:
    return hash(identifier.id) % 8


@dataclass
class Graph:
    """identifier -> handle, handle -> profile; an unknown identifier is alone."""

    of: dict[Identifier, str] = field(default_factory=dict)
    profiles: dict[str, ProfileRef] = field(default_factory=dict)
    erased: set[Identifier] = field(default_factory=set)

    def resolve(self, identifier: Identifier) -> ProfileRef:
        key = self.of.get(identifier)
        if key is None:
            return ProfileRef(identifier.state_key, home(identifier), (Member(identifier),), False)
        return self.profiles[key]

    def link(self, subject: Identifier, *named: Identifier, minute: float = 0) -> LinkPlan:
        plan = plan_link(
            subject,
            named,
            at(minute),
            "login",
            resolve=self.resolve,
            erased=lambda i: i in self.erased,
            types=DEFAULT_TYPES,
            max_per_type=2,
        )
        self.apply(plan)
        return plan

    def apply(self, plan: LinkPlan) -> None:
        if not plan.changes and not plan.target.tracked:
            return
        for source in plan.sources:
            self.profiles.pop(source.profile.key, None)
            if not source.whole:
                rest = tuple(m for m in source.profile.members if m.identifier not in source.taking)
                self.profiles[source.profile.key] = source.profile._replace(members=rest)
                for member in rest:
                    self.of[member.identifier] = source.profile.key
        target = plan.target._replace(members=plan.members, tracked=True)
        self.profiles[target.key] = target
        for member in plan.members:
            self.of[member.identifier] = target.key

    def partition(self) -> set[frozenset[Identifier]]:
        """Who is with whom (profiles of one identifier left out)."""
        return {
            frozenset(m.identifier for m in p.members)
            for p in self.profiles.values()
            if len(p.members) > 1
        }

    def together(self, *identifiers: Identifier) -> bool:
        return len({self.resolve(i).key for i in identifiers}) == 1


def results(plan: LinkPlan) -> dict[Identifier, tuple[Result, Refusal | None]]:
    return {d.identifier: (d.result, d.reason) for d in plan.decisions}


# --- tables ----------------------------------------------------------------------------


def test_unknown_identifiers_join_the_customers_profile_where_the_customer_lives() -> None:
    graph = Graph()
    plan = graph.link(C1, A1, P1)
    assert results(plan) == {A1: (Result.LINKED, None), P1: (Result.LINKED, None)}
    assert plan.target.key == "c-1"
    assert plan.target.home == home(C1)
    assert {s.profile.key for s in plan.sources} == {A1.state_key, P1.state_key}
    assert all(s.whole for s in plan.sources)
    linked = {m.identifier: m for m in plan.members}
    assert linked[A1].linked_at == at(0)
    assert linked[A1].method == "login"


def test_a_login_sent_by_the_cookie_still_lands_where_the_customer_lives() -> None:
    graph = Graph()
    plan = graph.link(A1, C1)  # subject the cookie: the customer is the anchor
    assert plan.target.key == "c-1"
    assert [s.profile.key for s in plan.sources] == [A1.state_key]
    assert results(plan) == {A1: (Result.LINKED, None)}


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # a profile has at most one customer and one loyalty identifier
        ((C1, L1), (C2, L1), (Result.REFUSED, Refusal.UNIQUE)),
        ((C1, L1), (C1, L2), (Result.REFUSED, Refusal.UNIQUE)),
        # a phone shared by two customers is refused, not a fusion of two people
        ((C1, P1), (C2, P1), (Result.REFUSED, Refusal.UNIQUE)),
        ((C1, P1), (C1, P1), (Result.UNCHANGED, None)),
    ],
)
def test_unique_identifiers(
    first: tuple[Identifier, ...], second: tuple[Identifier, ...], expected: tuple[object, ...]
) -> None:
    graph = Graph()
    graph.link(*first)
    plan = graph.link(*second, minute=1)
    assert results(plan)[second[1]] == expected
    if expected[0] is Result.REFUSED:
        assert not plan.changes
        assert not graph.together(C1, C2)


def test_at_most_max_per_type_identifiers_of_one_type() -> None:
    graph = Graph()
    graph.link(C1, Identifier("email", "a"), Identifier("email", "b"))
    plan = graph.link(C1, Identifier("email", "c"), minute=1)
    assert results(plan) == {Identifier("email", "c"): (Result.REFUSED, Refusal.LIMIT)}
    # a merge that would bring the profile over the limit is refused whole
    graph.link(P1, Identifier("email", "d"), Identifier("email", "e"))
    plan = graph.link(C1, Identifier("email", "d"), minute=2)
    assert results(plan)[Identifier("email", "d")] == (Result.REFUSED, Refusal.LIMIT)


@pytest.mark.parametrize("value", ["", "null", "undefined", "anonymous", "unknown", "0", " NULL "])
def test_placeholder_values_are_never_linked(value: str) -> None:
    graph = Graph()
    placeholder = Identifier("device", value)
    plan = graph.link(C1, placeholder, P1)
    assert results(plan) == {
        placeholder: (Result.REFUSED, Refusal.BLOCKED),
        P1: (Result.LINKED, None),
    }
    assert not graph.together(C1, placeholder)


def test_a_refused_subject_refuses_the_whole_link() -> None:
    graph = Graph(erased={C1})
    plan = graph.link(C1, A1, P1)
    assert results(plan) == {
        C1: (Result.REFUSED, Refusal.ERASED),
        A1: (Result.REFUSED, Refusal.ERASED),
        P1: (Result.REFUSED, Refusal.ERASED),
    }
    assert not plan.changes


def test_erased_and_unconfigured_identifiers_are_refused() -> None:
    graph = Graph(erased={P1})
    plan = graph.link(C1, P1, Identifier("fax", "1"), A1)
    assert results(plan) == {
        P1: (Result.REFUSED, Refusal.ERASED),
        Identifier("fax", "1"): (Result.REFUSED, Refusal.TYPE),
        A1: (Result.LINKED, None),
    }


def test_a_shared_device_follows_the_newest_login_and_never_fuses_two_people() -> None:
    graph = Graph()
    graph.link(C1, D1, minute=0)  # the tablet's first login
    plan = graph.link(C2, D1, minute=5)  # another person logs in on it
    assert results(plan) == {D1: (Result.MOVED, None)}
    [source] = plan.sources
    assert source.profile.key == "c-1"
    assert source.taking == (D1,)
    assert not source.whole
    assert graph.together(C2, D1)
    assert not graph.together(C1, C2)
    # an older login reaching the engine late changes nothing
    late = graph.link(C1, D1, minute=3)
    assert results(late) == {D1: (Result.UNCHANGED, None)}
    assert graph.together(C2, D1)


def test_a_shared_device_moves_when_its_user_logs_in_on_it() -> None:
    graph = Graph()
    graph.link(C1, D1, minute=0)
    plan = graph.link(D1, C2, minute=5)  # the app sends the device as subject
    assert results(plan) == {D1: (Result.MOVED, None)}
    assert graph.together(C2, D1)
    assert not graph.together(C1, C2)


def test_soft_identifiers_of_nobody_merge_with_the_login() -> None:
    graph = Graph()
    graph.link(A1, D1)  # the same visitor's cookie and app, unauthenticated
    plan = graph.link(C1, A1, minute=1)
    assert results(plan) == {A1: (Result.LINKED, None)}
    assert graph.together(C1, A1, D1)


def test_an_unauthenticated_link_never_moves_a_soft_identifier() -> None:
    graph = Graph()
    graph.link(C1, D1)
    graph.link(C2, A1)
    plan = graph.link(A1, D1, minute=1)  # two soft ids of two people: a merge, refused
    assert results(plan) == {D1: (Result.REFUSED, Refusal.UNIQUE)}


def test_a_merge_of_two_profiles_without_customer_lives_where_the_anchor_does() -> None:
    graph = Graph()
    graph.link(P1, A1)
    graph.link(E1, A2)
    plan = graph.link(P1, E1, minute=1)
    assert plan.target.key == graph.resolve(P1).key
    assert graph.together(P1, A1, E1, A2)


def test_unlink_plans() -> None:
    graph = Graph()
    graph.link(C1, D1, P1)
    plan = plan_unlink(C1, D1, resolve=graph.resolve, types=DEFAULT_TYPES)
    assert plan.profile is not None
    assert plan.profile.key == "c-1"
    assert plan.decision == Decision(D1, Result.MOVED)
    # the subject must be the identifier or in its profile; alone, there is nothing to split
    assert plan_unlink(C2, D1, resolve=graph.resolve, types=DEFAULT_TYPES).profile is None
    assert plan_unlink(A2, A2, resolve=graph.resolve, types=DEFAULT_TYPES).profile is None


# --- any order of links gives the same profiles -----------------------------------------


@st.composite
def people_and_links(
    draw: st.DrawFn,
) -> tuple[list[tuple[Identifier, Identifier, float]], set[frozenset[Identifier]]]:
    """Persons with their own identifiers, the links that say so (each authenticated or
    between soft identifiers of one person), and devices shared between persons."""
    persons = draw(st.integers(1, 4))
    links: list[tuple[Identifier, Identifier, float]] = []
    expected: dict[Identifier, int] = {}
    clock = itertools.count()
    for n in range(persons):
        customer = Identifier("customer", f"c-{n}")
        others = [
            Identifier(kind, f"{kind}-{n}-{k}")
            for kind in draw(
                st.lists(st.sampled_from(["anonymous", "phone", "email", "loyalty"]), max_size=4)
            )
            for k in range(1)
        ]
        others = list(dict.fromkeys(others))
        expected[customer] = n
        linked = [customer]  # each new identifier is linked to one already the person's
        for other in others:
            expected[other] = n
            anchor = draw(st.sampled_from([i for i in linked if not i.soft]))
            links.append((anchor, other, float(next(clock))))
            linked.append(other)
    shared = [Identifier("device", f"d-{k}") for k in range(draw(st.integers(0, 2)))]
    for device in shared:
        users = draw(st.lists(st.integers(0, persons - 1), min_size=1, max_size=3))
        for user in users:
            moment = float(next(clock))
            links.append((Identifier("customer", f"c-{user}"), device, moment))
        expected[device] = users[-1]  # the newest login
    groups: dict[int, set[Identifier]] = {}
    for identifier, person in expected.items():
        groups.setdefault(person, set()).add(identifier)
    return links, {frozenset(g) for g in groups.values() if len(g) > 1}


@settings(max_examples=150, deadline=None)
@given(case=people_and_links(), data=st.data())
def test_any_order_of_links_gives_the_same_profiles(
    case: tuple[list, set], data: st.DataObject
) -> None:
    links, expected = case
    order = data.draw(st.permutations(links))
    graph = Graph()
    for subject, named, minute in order:
        graph.link(subject, named, minute=minute)
    assert graph.partition() == expected


def test_link_times_decide_not_arrival_times() -> None:
    for order in itertools.permutations([(C1, 0.0), (C2, 1.0)]):
        graph = Graph()
        for customer, minute in order:
            graph.link(customer, D1, minute=minute)
        assert graph.together(C2, D1)
