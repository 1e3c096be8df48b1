"""The README tells the truth about what the code declares."""

from __future__ import annotations

import json
from pathlib import Path

from app.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _default(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{json.dumps(value).replace(' ', '')}`"
    return f"`{value}`"


def test_readme_settings_table_lists_every_setting_with_its_default():
    for name, field in Settings.model_fields.items():
        row = f"| `NFTLENS_{name.upper()}` | {_default(field.default)} |"
        assert row in README, f"README's settings table lacks or misstates: {row}"
