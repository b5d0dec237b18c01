"""Regenerate the configuration table in README.md from the Settings schema."""

from __future__ import annotations

import re
from pathlib import Path

from agentmx.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default in ("", None) else str(default)
        if name == "data_dir":
            shown = "./data"
        rows.append(f"| `AGENTMX_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    new = re.sub(
        r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)",
        lambda m: m.group(1) + table() + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(new)


if __name__ == "__main__":
    main()
