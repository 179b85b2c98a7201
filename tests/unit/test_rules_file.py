"""The rules file: a valid file loads; every mistake names its line."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nextbest.core.envelope import DEFAULT_CHANNELS
from nextbest.core.rules import RulesError, load_rules

GOOD = """\
# a comment
[[rule]]
signal = "payment_failed"
action = "payment_help"
target = "event.channel"
priority = 80

[[rule]]
signal = "contact_abandoned"
when = { any_of = [{ from_channel_in = ["web"] }, { cart_non_empty = true }] }
action = "callback_offer"
target = ["mobile if consent.mobile", "email if consent.email"]
priority = 65
reason = "Gave up on $signal_channel; call back on $channel (cart $cart_value)."
"""


def load(text: str) -> object:
    return load_rules(text, channels=DEFAULT_CHANNELS, source="my-rules.toml")


def test_a_valid_file_loads_in_order() -> None:
    rules = load_rules(GOOD, channels=DEFAULT_CHANNELS)
    assert [r.action for r in rules.rules] == ["payment_help", "callback_offer"]
    assert [r.line for r in rules.rules] == [2, 8]
    assert rules.rules[1].targets[0].needs_consent == "mobile"


def second_rule(line: str) -> str:
    """GOOD with the second rule's line starting like ``line`` replaced by it."""
    key = line.split("=")[0].strip()
    out = []
    rules_seen = 0
    for text in GOOD.splitlines():
        rules_seen += text.startswith("[[rule]]")
        if rules_seen == 2 and text.startswith(key + " "):
            text = line
        out.append(text)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (second_rule('signal = "cart_forgotten"'), "my-rules.toml:9: rule 2: signal:"),
        (second_rule('action = "Call Back"'), "my-rules.toml:11: rule 2: action:"),
        (second_rule('target = ["pigeon"]'), "my-rules.toml:12: rule 2: target:"),
        (second_rule('target = ["mobile if consent.fax"]'), "my-rules.toml:12: rule 2: target:"),
        (second_rule("target = []"), "my-rules.toml:12: rule 2: target:"),
        (second_rule("priority = 1001"), "my-rules.toml:13: rule 2: priority:"),
        (second_rule('priority = "high"'), "my-rules.toml:13: rule 2: priority:"),
        (second_rule('when = { moon = "full" }'), "my-rules.toml:10: rule 2: when: unknown"),
        (second_rule('when = { channel_in = "web" }'), "my-rules.toml:10: rule 2: when:"),
        (second_rule("when = { any_of = [] }"), "my-rules.toml:10: rule 2: when:"),
        (second_rule('reason = "Hello $customer"'), "my-rules.toml:14: rule 2: reason:"),
        (second_rule('reason = "Costs $5"'), "my-rules.toml:14: rule 2: reason:"),
        (GOOD.replace('action = "callback_offer"\n', ""), "my-rules.toml:8: rule 2: action:"),
        (GOOD + 'colour = "red"\n', "my-rules.toml:15: rule 2: colour:"),
        (GOOD + "[[rule\n", "my-rules.toml: "),
        ("title = 'x'\n", "my-rules.toml: unknown top-level key 'title'"),
        ("", "my-rules.toml: no [[rule]] tables"),
    ],
)
def test_mistakes_name_the_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(RulesError) as caught:
        load(text)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_syntax_errors_carry_tomls_line() -> None:
    with pytest.raises(RulesError, match=r"line 16"):
        load(GOOD + "\n[[rule\n")


def test_literal_targets_must_be_configured_channels() -> None:
    text = GOOD.replace('target = "event.channel"', 'target = "kiosk"')
    with pytest.raises(RulesError, match="kiosk"):
        load(text)
    rules = load_rules(text, channels=(*DEFAULT_CHANNELS, "kiosk"))
    assert rules.rules[0].targets[0].channel == "kiosk"


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["$action", "${channel}", "$$", "{", "}", "{x}", " "]),
            st.text(alphabet="ab ;.", max_size=5),
        ),
        max_size=12,
    )
)
def test_a_reason_renders_as_its_template_would(pieces: list[str]) -> None:
    """Reasons are rendered with str.format for speed: the same text as string.Template."""
    from string import Template

    from nextbest.core.rules import _format_string

    template = Template("".join(pieces))
    values = {"action": "agent_handoff", "channel": "chat"}
    # what load_rules accepts: valid, and only known names
    assume(template.is_valid() and set(template.get_identifiers()) <= set(values))
    assert _format_string(template).format_map(values) == template.safe_substitute(values)
