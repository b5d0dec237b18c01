"""Extension points between features, in one place so the wiring can be read in a minute.

Each list is filled at import time by the feature that owns the rule (domains, lists, …) and
called by the mail services. An empty list means "no extra rule".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from agentmx.db.models import Inbox
    from agentmx.services.runtime import Runtime

# Inbound RCPT: may this inbox receive mail now? Raise a domain error (NotFound, Forbidden) to refuse.
RecipientCheck = Callable[[AsyncSession, "Runtime", "Inbox"], Awaitable[None]]
recipient_checks: list[RecipientCheck] = []

# Inbound classification: extra labels for a received message (e.g. {"blocked"}, {"spam"}).
# Called with (rt, inbox, envelope_from, header_from, in_reply_to) before the message is stored; a
# labeler opens a read session only when it must query (most mail is answered from caches).
InboundLabeler = Callable[["Runtime", "Inbox", str, str, str | None], Awaitable[set[str]]]
inbound_labelers: list[InboundLabeler] = []

# Outbound policy: raise errors.MessageRejected to refuse a send to these recipients.
SendCheck = Callable[[AsyncSession, "Runtime", "Inbox", list[str]], Awaitable[None]]
send_checks: list[SendCheck] = []

# DKIM key for a sending domain: (selector, private key PEM bytes) or None when it has none.
DkimLookup = Callable[[AsyncSession, "Runtime", str], Awaitable[tuple[str, bytes] | None]]
dkim_lookups: list[DkimLookup] = []

# Facts other features react to in the same transaction (e.g. a bounce adds a suppression entry).
# Called with (session, rt, organization_id, pod_id, inbox_id, address, kind) where kind is
# "bounced" | "complained" | "rejected".
SuppressionRecorder = Callable[[AsyncSession, "Runtime", str, str, str, str, str], Awaitable[None]]
suppression_recorders: list[SuppressionRecorder] = []


async def run_all(hooks: list[Any], *args: Any) -> None:
    for hook in hooks:
        await hook(*args)


# Inbound mail to a return path of ours (DSNs about outbound mail, ``bounces+…@domain``): the SMTP
# edge accepts such a recipient when ``claims(address)`` and passes the message to
# ``handle(rt, raw, address)`` instead of storing it in an inbox. Filled by agentmx.outbound.
@dataclass(frozen=True)
class ReturnPathHandler:
    claims: Callable[[str], bool]
    handle: Callable[[Runtime, bytes, str], Awaitable[None]]


return_path_handlers: list[ReturnPathHandler] = []


def return_path_handler(address: str) -> ReturnPathHandler | None:
    for entry in return_path_handlers:
        if entry.claims(address):
            return entry
    return None
