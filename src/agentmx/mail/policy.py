"""The parsing policy: ``email.policy.default`` with parsed header objects memoized.

``policy.default`` parses a header again on every ``msg.get``; walking one message reads
Content-Type half a dozen times (content type, maintype, charset, filename …) and most
messages share their Content-Type, MIME-Version and often From lines. Header objects are
immutable and depend only on (name, value), so one object can serve every lookup.
"""

from __future__ import annotations

from email.policy import EmailPolicy
from typing import Any

MAX_ENTRIES = 4096
MAX_VALUE_CHARS = 1000  # long values (References, folded To lists) are rarely repeated


class MemoPolicy(EmailPolicy):
    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name") or len(value) > MAX_VALUE_CHARS:
            return super().header_fetch_parse(name, value)
        key = (name, value)
        found = _parsed.get(key)
        if found is None:
            found = super().header_fetch_parse(name, value)
            if len(_parsed) >= MAX_ENTRIES:
                _parsed.clear()
            _parsed[key] = found
        return found


_parsed: dict[tuple[str, str], Any] = {}
memo_default = MemoPolicy()
