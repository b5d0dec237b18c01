"""The parsing policy: ``email.policy.default`` with parsed header objects memoized.

``policy.default`` parses a header again on every ``msg.get``; walking one message reads
Content-Type half a dozen times (content type, maintype, charset, filename …) and most
messages share their Content-Type, MIME-Version and often From lines. Header objects are
immutable and depend only on (name, value), so one object can serve every lookup.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import EmailPolicy
from typing import Any

MAX_ENTRIES = 4096
MAX_VALUE_CHARS = 1000  # long values (References, folded To lists) are rarely repeated
_MISSING: Any = object()


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


class MemoMessage(EmailMessage):
    """A parsed message whose header parameters are split once per distinct header text.

    Reading a body part asks for Content-Type's parameters four or five times (charset, the
    name, the filename of Content-Disposition, the content manager's own charset), each a split
    and an RFC 2231 decode of the same text: about a quarter of the parse. The parameters depend
    only on the field's text, so they are kept by it, as the header objects are.
    """

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        value = self.get(header, _MISSING)
        if value is _MISSING:
            return failobj
        key = str(value)
        if len(key) > MAX_VALUE_CHARS:
            return super()._get_params_preserve(failobj, header)  # type: ignore[misc]
        found = _params.get(key)
        if found is None:
            found = tuple(super()._get_params_preserve(failobj, header))  # type: ignore[misc]
            if len(_params) >= MAX_ENTRIES:
                _params.clear()
            _params[key] = found
        return list(found)  # the caller's own list, as the stdlib returns


_parsed: dict[tuple[str, str], Any] = {}
_params: dict[str, tuple[Any, ...]] = {}
memo_default = MemoPolicy(message_factory=MemoMessage)
