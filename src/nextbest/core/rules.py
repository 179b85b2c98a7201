"""Next-best-service rules (contract §5): the rules file and the decision it makes.

A rules file is TOML, one ``[[rule]]`` table per row of the contract's table, in
priority-tie order::

    [[rule]]
    signal = "contact_abandoned"            # a signal name
    when = { channel_in = ["contact-center"] }   # optional; all must hold
    action = "callback_offer"               # lower-case name, used in metric labels
    target = ["mobile if consent.mobile", "email if consent.email"]
    priority = 65                           # 0..1000, higher wins
    reason = "They gave up on $signal_channel; offer a call back on $channel."

``target`` lists channels to try in order: ``event.channel`` (where the signal
happened), ``checkout.channel`` (where checkout started) or a channel name, each
optionally gated by ``if consent.email`` / ``if consent.mobile``. The first one
that resolves is the trigger's channel; if none does, the rule is suppressed
with reason ``consent``.

Conditions in ``when`` (see :data:`CONDITIONS`): ``channel_in``,
``from_channel_in``, ``event_type_in``, ``event_type_not_in`` (lists of
strings), ``cart_non_empty``, ``product_viewed_in_journey`` (booleans) and
``any_of`` (a list of tables of conditions, one of which must hold).

``reason`` is a :class:`string.Template` over ``$action``, ``$signal``,
``$channel``, ``$signal_channel``, ``$from_channel``, ``$cart_items`` and
``$cart_value``.

:func:`load_rules` raises :class:`RulesError` whose message names the file and
line; :func:`decide` picks at most one winner and says why every other
matching rule was suppressed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from string import Template
from typing import Any, NamedTuple

from nextbest.core.context import Context
from nextbest.core.signals import Signal, SignalName
from nextbest.core.state import CustomerState


class RulesError(Exception):
    """The rules file is not valid; ``str(error)`` names the file and the line."""


class Suppression(StrEnum):
    """Why a matching rule emitted nothing: the ``reason`` label of §8."""

    CONSENT = "consent"
    COOLDOWN = "cooldown"
    ARBITRATION = "arbitration"
    STALE = "stale"


class Situation(NamedTuple):
    """What a condition may look at: the signal and the customer's context right
    after the event that raised it (for a timer signal: now)."""

    signal: Signal
    context: Context
    journey_window: timedelta


Predicate = Callable[[Situation], bool]


@dataclass(frozen=True, slots=True)
class Target:
    channel: str  # a channel name, or a reference: event.channel / checkout.channel
    needs_consent: str | None = None  # "email" | "mobile"

    def resolve(self, situation: Situation) -> str | None:
        context = situation.context
        if self.channel == "event.channel":
            channel: str | None = situation.signal.channel
        elif self.channel == "checkout.channel":
            channel = context.checkout.channel
        else:
            channel = self.channel
        if self.needs_consent is not None and not getattr(context.consent, self.needs_consent):
            return None
        return channel


@dataclass(frozen=True, slots=True)
class Rule:
    signal: SignalName
    action: str
    targets: tuple[Target, ...]
    priority: int
    reason: Template
    condition: Predicate
    line: int
    reason_format: str = field(init=False)  # the template as a str.format string: faster

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason_format", _format_string(self.reason))

    def explain(self, values: Mapping[str, object]) -> str:
        """The reason with ``values`` in it (what ``reason.safe_substitute`` gives)."""
        return self.reason_format.format_map(values)

    def target(self, situation: Situation) -> str | None:
        for target in self.targets:
            channel = target.resolve(situation)
            if channel is not None:
                return channel
        return None


class Choice(NamedTuple):
    rule: Rule
    signal: Signal
    channel: str


class Decision(NamedTuple):
    """At most one winner; every other matching rule with its suppression reason."""

    winner: Choice | None
    suppressed: tuple[tuple[str, Suppression], ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    by_signal: Mapping[SignalName, tuple[Rule, ...]] = field(init=False)

    def __post_init__(self) -> None:
        by_signal = {
            name: tuple(rule for rule in self.rules if rule.signal == name) for name in SignalName
        }
        object.__setattr__(self, "by_signal", by_signal)

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rule.action for rule in self.rules))


def decide(
    rules: RuleSet,
    state: CustomerState,
    signals: Sequence[Signal],
    now: datetime,
    *,
    journey_window: timedelta,
    cooldown: timedelta,
    max_signal_age: timedelta,
) -> Decision:
    """Arbitrate among the rules that match ``signals``: one winner at the most.

    The cooldown is in event time: no action again within ``cooldown`` of the
    moment of the signal it was last triggered for, either way (a late event's
    signal may lie before it), so a replay decides the same.
    """
    suppressed: list[tuple[str, Suppression]] = []
    candidates: list[Choice] = []
    if len(signals) == 1:  # the common case: that signal's rules, in row order
        pairs = [(rule, signals[0]) for rule in rules.by_signal[signals[0].name]]
    else:
        pairs = [(r, s) for r in rules.rules for s in signals if s.name == r.signal]
    for rule, signal in pairs:
        context = signal.context if signal.context is not None else state.context
        situation = Situation(signal, context, journey_window)
        if not rule.condition(situation):
            continue
        if now - signal.moment > max_signal_age:
            suppressed.append((rule.action, Suppression.STALE))
            continue
        channel = rule.target(situation)
        if channel is None:
            suppressed.append((rule.action, Suppression.CONSENT))
            continue
        last = state.last_fired.get(rule.action)
        if last is not None and abs(signal.moment - last) < cooldown:
            suppressed.append((rule.action, Suppression.COOLDOWN))
            continue
        candidates.append(Choice(rule, signal, channel))
    if not candidates:
        return Decision(None, tuple(suppressed))
    winner = max(candidates, key=lambda choice: choice.rule.priority)  # first of equals
    suppressed.extend(
        (choice.rule.action, Suppression.ARBITRATION)
        for choice in candidates
        if choice is not winner
    )
    return Decision(winner, tuple(suppressed))


# --- conditions --------------------------------------------------------------------


def _strings(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of strings")
    return frozenset(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _channel_in(value: object) -> Predicate:
    allowed = _strings(value)
    return lambda s: s.signal.channel in allowed


def _from_channel_in(value: object) -> Predicate:
    allowed = _strings(value)
    return lambda s: s.signal.from_channel in allowed


def _event_type_in(value: object) -> Predicate:
    allowed = _strings(value)
    return lambda s: s.signal.event_type in allowed


def _event_type_not_in(value: object) -> Predicate:
    refused = _strings(value)
    return lambda s: s.signal.event_type not in refused


def _cart_non_empty(value: object) -> Predicate:
    wanted = _flag(value)
    return lambda s: bool(s.context.cart.items) is wanted


def _product_viewed_in_journey(value: object) -> Predicate:
    wanted = _flag(value)

    def holds(s: Situation) -> bool:
        viewed = s.context.product_viewed_at
        recent = viewed is not None and s.signal.moment - viewed < s.journey_window
        return recent is wanted

    return holds


def _any_of(value: object) -> Predicate:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ValueError("must be a non-empty list of tables of conditions")
    options = [_condition(option) for option in value]
    return lambda s: any(option(s) for option in options)


CONDITIONS: Mapping[str, Callable[[object], Predicate]] = {
    "channel_in": _channel_in,
    "from_channel_in": _from_channel_in,
    "event_type_in": _event_type_in,
    "event_type_not_in": _event_type_not_in,
    "cart_non_empty": _cart_non_empty,
    "product_viewed_in_journey": _product_viewed_in_journey,
    "any_of": _any_of,
}


def _condition(table: Mapping[str, Any]) -> Predicate:
    parts: list[Predicate] = []
    for name, value in table.items():
        build = CONDITIONS.get(name)
        if build is None:
            raise ValueError(f"unknown condition {name!r} (known: {', '.join(CONDITIONS)})")
        try:
            parts.append(build(value))
        except ValueError as error:
            raise ValueError(f"condition {name} {error}") from None
    if not parts:
        return lambda s: True
    if len(parts) == 1:
        return parts[0]

    def every(s: Situation) -> bool:  # a loop: all() over a generator costs a frame per call
        for part in parts:  # noqa: SIM110
            if not part(s):
                return False
        return True

    return every


# --- loading -----------------------------------------------------------------------

TEMPLATE_FIELDS = frozenset(
    {"action", "signal", "channel", "signal_channel", "from_channel", "cart_items", "cart_value"}
)
_RULE_KEYS = frozenset({"signal", "when", "action", "target", "priority", "reason"})
_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TARGET = re.compile(r"^\s*(\S+)(?:\s+if\s+consent\.(email|mobile))?\s*$")
_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_DEFAULT_REASON = "$signal on $signal_channel: $action on $channel is the next best service."


class _Lines:
    """Finds the line of a rule, or of one of its keys, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [i + 1 for i, line in enumerate(self.lines) if _HEADER.match(line)]

    def of(self, index: int, key: str | None = None) -> int:
        if index >= len(self.headers):
            return 1
        start = self.headers[index]
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        if key is not None:
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            for number in range(start, end):
                if pattern.match(self.lines[number - 1]):
                    return number
        return start


def _target(text: object, channels: Sequence[str]) -> Target:
    match = _TARGET.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"target {text!r} must read '<channel>' or '<channel> if consent.<email|mobile>'"
        )
    channel, consent = match.groups()
    if channel not in ("event.channel", "checkout.channel") and channel not in channels:
        raise ValueError(
            f"target channel {channel!r} is neither event.channel, checkout.channel "
            f"nor one of the channels ({', '.join(channels)})"
        )
    return Target(channel, consent)


def _format_string(template: Template) -> str:
    """``template`` (a valid one, of known names) as the equivalent ``str.format`` string."""
    pieces: list[str] = []
    text = template.template
    done = 0
    for match in template.pattern.finditer(text):
        pieces.append(text[done : match.start()].replace("{", "{{").replace("}", "}}"))
        if match.group("escaped") is not None:
            pieces.append("$")
        else:
            pieces.append("{" + (match.group("named") or match.group("braced")) + "}")
        done = match.end()
    pieces.append(text[done:].replace("{", "{{").replace("}", "}}"))
    return "".join(pieces)


def _reason(text: object) -> Template:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("reason must be a non-empty string")
    template = Template(text)
    if not template.is_valid():
        raise ValueError("reason is not a valid template ($name placeholders, $$ for $)")
    unknown = set(template.get_identifiers()) - TEMPLATE_FIELDS
    if unknown:
        known = ", ".join(sorted(TEMPLATE_FIELDS))
        raise ValueError(f"reason uses unknown ${sorted(unknown)[0]} (known: {known})")
    return template


def _rule(table: Mapping[str, Any], channels: Sequence[str], line: int) -> Rule:
    """Build one rule; a ValueError's message starts with the offending key."""
    for key in ("signal", "action", "target", "priority"):
        if key not in table:
            raise ValueError(f"{key}: is required")
    unknown = set(table) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    try:
        signal = SignalName(table["signal"])
    except ValueError:
        raise ValueError(
            f"signal: {table['signal']!r} is not a signal "
            f"(known: {', '.join(s.value for s in SignalName)})"
        ) from None
    action = table["action"]
    if not isinstance(action, str) or not _ACTION.match(action):
        raise ValueError(f"action: {action!r} must be a lower-case name (a-z, 0-9, _)")
    targets = table["target"]
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise ValueError("target: must be a channel or a non-empty list of them")
    try:
        parsed_targets = tuple(_target(t, channels) for t in targets)
    except ValueError as error:
        raise ValueError(f"target: {error}") from None
    priority = table["priority"]
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
        raise ValueError(f"priority: {priority!r} must be an integer from 0 to 1000")
    when = table.get("when", {})
    if not isinstance(when, dict):
        raise ValueError("when: must be a table of conditions")
    try:
        condition = _condition(when)
        reason = _reason(table.get("reason", _DEFAULT_REASON))
    except ValueError as error:
        key = "reason" if str(error).startswith("reason") else "when"
        raise ValueError(f"{key}: {error}") from None
    return Rule(signal, action, parsed_targets, priority, reason, condition, line)


def load_rules(text: str, *, channels: Sequence[str], source: str = "rules") -> RuleSet:
    """Parse and validate a rules file; raise :class:`RulesError` naming the line."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{source}: {error}") from None
    lines = _Lines(text)
    extra = set(document) - {"rule"}
    if extra:
        raise RulesError(f"{source}: unknown top-level key {sorted(extra)[0]!r}; write [[rule]]")
    tables = document.get("rule")
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{source}: no [[rule]] tables")
    rules: list[Rule] = []
    for index, table in enumerate(tables):
        try:
            rules.append(_rule(table, channels, lines.of(index)))
        except ValueError as error:
            line = lines.of(index, str(error).split(":", 1)[0])
            raise RulesError(f"{source}:{line}: rule {index + 1}: {error}") from None
    return RuleSet(tuple(rules))
