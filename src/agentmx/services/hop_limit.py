"""The hop limit (RFC 5321 6.3): a message with more Received fields than any real path adds is
going round a loop, between MTAs or between agents that answer each other's mail.

Counted on the message as it would be stored, this server's own Received included (as Postfix
counts for its hopcount_limit), from the parse (``ParsedMessage.hops``): no second read of the
header. Checked where a hop adds a trace field: inbound SMTP (``smtp/handler``) and submission
(``services/sending``). Local delivery between this server's inboxes adds none (API mail is
composed afresh; submitted mail got its Received, and its check, at submission), so it has no
count of its own to check.
"""

from __future__ import annotations

from agentmx.errors import TooManyHops
from agentmx.mail.parse import ParsedMessage
from agentmx.settings import Settings


def check(settings: Settings, parsed: ParsedMessage) -> None:
    """TooManyHops when ``parsed`` has more Received fields than ``smtp_hop_limit`` (0: no limit)."""
    limit = settings.smtp_hop_limit
    if limit and parsed.hops > limit:
        raise TooManyHops(
            f"Too many hops: {parsed.hops} Received fields, more than {limit} (a mail loop)",
            fix="Stop the loop: a message that travelled this far is not delivered again.",
        )
