"""The README's configuration table is generated from the Settings schema; keep them in step."""

from __future__ import annotations

from pathlib import Path

from agentmx.settings import Settings


def test_every_setting_is_documented() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`AGENTMX_{name.upper()}`" not in readme]
    assert not missing, f"run `python scripts/settings_table.py`; undocumented: {missing}"
