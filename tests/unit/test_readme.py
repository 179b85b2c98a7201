"""The README's settings table lists every setting, and only settings."""

from __future__ import annotations

import re
from pathlib import Path

from nextbest.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_settings_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `(NEXTBEST_[A-Z0-9_]+)` \|", README.read_text(), re.M))
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert sorted(fields - documented) == []
    assert sorted(documented - fields) == []
