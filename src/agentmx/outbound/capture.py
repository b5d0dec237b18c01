"""Test mode (``AGENTMX_OUTBOUND_CAPTURE``): mail for remote recipients is kept, not sent.

An agent under test then goes through the whole life of a message (``message.sent``, then
``message.delivered``, ``message.bounced`` or ``message.complained``, labels and suppression, webhooks
and WebSocket frames) without mail leaving the machine. The recipient's local part picks the outcome,
as a mailbox simulator's addresses do: ``bounce…`` bounces, ``complaint…`` is delivered and then
complained about, anything else is delivered. Mail between inboxes of this server is delivered as
always.
"""

from __future__ import annotations

from agentmx.outbound.outcomes import Outcome

DELIVERED = Outcome("delivered", 250, "250 2.0.0 captured, not sent (AGENTMX_OUTBOUND_CAPTURE)")
BOUNCED = Outcome("bounced", 550, "550 5.1.1 simulated bounce (AGENTMX_OUTBOUND_CAPTURE)")
COMPLAINED = Outcome(
    "complained", None, "feedback report: abuse (simulated, AGENTMX_OUTBOUND_CAPTURE)", attempted=False
)


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower()


def outcomes(addresses: list[str]) -> tuple[dict[str, Outcome], dict[str, Outcome]]:
    """What delivery to ``addresses`` would have given, and the complaints that follow it."""
    delivered = {a: BOUNCED if _local_part(a).startswith("bounce") else DELIVERED for a in addresses}
    complaints = {a: COMPLAINED for a in addresses if _local_part(a).startswith("complaint")}
    return delivered, complaints
