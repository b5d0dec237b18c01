"""Wires custom domains into the rest of agentmx: job handler and mail hooks. Imported via features.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from agentmx.db.models import Domain
from agentmx.db.types import utcnow
from agentmx.http.routes import organizations
from agentmx.jobs.registry import RetryAt, handler
from agentmx.services import domains, hooks, inboxes, pods
from agentmx.services.runtime import Runtime


@handler(domains.CHECK_JOB)
async def check_domain(rt: Runtime, payload: dict[str, Any], attempts: int) -> None:
    """Periodic DNS re-check; ends when the domain is deleted."""
    row = await domains.check_now(rt, payload["domain_id"])
    if row is None:
        return
    delay = domains.next_check_delay(rt, row.status)
    raise RetryAt(utcnow() + timedelta(seconds=delay), f"re-check ({row.status})")


def register() -> None:
    # Replace the foundation's "no custom domains" rule with the real one.
    inboxes.custom_domain_check[:] = [
        c for c in inboxes.custom_domain_check if c is not inboxes._no_custom_domains
    ]
    if domains.check_inbox_domain not in inboxes.custom_domain_check:
        inboxes.custom_domain_check.append(domains.check_inbox_domain)
    if domains.recipient_check not in hooks.recipient_checks:
        hooks.recipient_checks.append(domains.recipient_check)
    if domains.send_check not in hooks.send_checks:
        hooks.send_checks.append(domains.send_check)
    if domains.dkim_lookup not in hooks.dkim_lookups:
        hooks.dkim_lookups.append(domains.dkim_lookup)
    if not any(label == "domains" for label, _ in pods.POD_DEPENDENTS):
        pods.POD_DEPENDENTS.append(("domains", Domain.pod_id))
    if not any(name == "domain_count" for name, _ in organizations.extra_counts):
        organizations.extra_counts.append(("domain_count", domains.domain_count))


register()
