"""``nextbest token``: a key pair, then tokens the API accepts; the customer never on stderr."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nextbest.api.widget_tokens import WidgetTokens, load_public_keys
from nextbest.cli import main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NEXTBEST_"):
            monkeypatch.delenv(name)


def test_new_key_then_a_token_the_api_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "widget.key"
    assert main(["token", "--new-key", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = tmp_path / "widget.key.pub"
    capsys.readouterr()
    monkeypatch.setenv("NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE", str(key))
    assert main(["token", "--customer", "customer-0042", "--ttl", "15m"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n"  # the token alone: TOKEN=$(nextbest token ...)
    assert "customer-0042" not in err
    verify = WidgetTokens(load_public_keys(public), audience="nextbest", max_ttl=3600)
    grant = verify.verify(token)
    assert grant.customer_id == "customer-0042"
    assert main(["token", "--new-key", str(key)]) == 2  # never overwrites a key


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--customer", "c-1", "--ttl", "2h"], "--ttl must be positive and at most"),
        (["--customer", "c-1", "--ttl", "soon"], "--ttl: 'soon' is not a duration"),
        (["--customer", "c-1"], "no key: pass --key or set NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE"),
        (["--ttl", "15m"], "--customer is required"),
        (["--customer", "c-1", "--key", "/nonexistent/key"], "--key: cannot read /nonexistent/key"),
    ],
)
def test_mistakes_are_one_line(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", *arguments]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
