"""The hop limit (RFC 5321 6.3): a message with more Received fields than any real path adds is
going round a loop, between MTAs or between agents that answer each other's mail.

Counted on the message as it would be stored, this server's own Received included (as Postfix
counts for its hopcount_limit). Checked first where a hop adds a trace field, before any other rule
decides (a loop is the most fundamental reason to refuse, and needs no DNS nor database): inbound
SMTP (``smtp/handler``, and a front end leaves it to the server) and submission
(``services/sending``). Local delivery between this server's inboxes adds none (API mail is composed
afresh; submitted mail got its Received, and its check, at submission), so it has no count of its own
to check.

Counted on the raw header, not the parse: inbound mail is checked before the sender checks and the
parse, which come later (and not at all for a bounce to a return path). But read by the parser's
rules (lines end at a bare CR too, the header at its first line that is no field), so the count is
the Received fields the stored message has: relays with odd line ends cannot hide a loop, and a
body line that begins "Received:" never counts.
"""

from __future__ import annotations

from agentmx.errors import TooManyHops
from agentmx.mail import header_fields
from agentmx.smtp.front_settings import SmtpSettings


def hops(raw: bytes) -> int:
    """The Received fields in the header of ``raw``, as the parser of the stored message counts them."""
    head = raw[: header_fields.parsed_head_end(raw)].lower()
    # A field's name right at a line's start (continuations start with white space). Counted with
    # bytes.count: a regex looking behind every byte for a line end took three times as long.
    return head.startswith(b"received:") + head.count(b"\nreceived:") + head.count(b"\rreceived:")


def exceeded(settings: SmtpSettings, raw: bytes, *, added: int = 0) -> bool:
    """Whether ``raw`` has more Received fields than ``smtp_hop_limit`` (0: no limit) once the
    ``added`` ones this server is about to put on top are counted."""
    limit = settings.smtp_hop_limit
    return bool(limit) and hops(raw) + added > limit


def check(settings: SmtpSettings, raw: bytes, *, added: int = 0) -> None:
    """TooManyHops when ``exceeded``."""
    limit, count = settings.smtp_hop_limit, hops(raw) + added
    if limit and count > limit:
        raise TooManyHops(
            f"Too many hops: {count} Received fields, more than {limit} (a mail loop)",
            fix="Stop the loop: a message that travelled this far is not delivered again.",
        )
