"""Domain rows in AgentMail's wire shapes (Domain, DomainItem, VerificationRecord)."""

from __future__ import annotations

from typing import Any

from agentmx.db.models import Domain
from agentmx.domains.dns_check import MISSING
from agentmx.domains.records import DomainSpec, Record, required_records
from agentmx.http.wire import drop_none, iso
from agentmx.settings import Settings


def spec(row: Domain, settings: Settings) -> DomainSpec:
    return DomainSpec(
        name=row.name,
        mail_host=settings.hostname,
        dkim_selector=row.dkim_selector,
        dkim_public_key=row.dkim_public_key,
        inbound_enabled=row.inbound_enabled,
        subdomains_enabled=row.subdomains_enabled,
        tracking_enabled=row.tracking_enabled,
    )


def records(row: Domain, settings: Settings) -> list[Record]:
    return required_records(spec(row, settings))


def record_states(row: Domain, settings: Settings) -> list[tuple[Record, str, str | None]]:
    """Each required record with the status of its last check (MISSING when never checked)."""
    last = {c["key"]: c for c in row.checks or []}
    out = []
    for record in records(row, settings):
        check = last.get(record.key)
        out.append((record, check["status"] if check else MISSING, check.get("reason") if check else None))
    return out


def record(rec: Record, status: str, reason: str | None) -> dict[str, Any]:
    return drop_none(
        {
            "type": rec.type,
            "name": rec.name,
            "value": rec.value,
            "status": status,
            "priority": rec.priority,
            "reason": reason,
        }
    )


def domain_item(row: Domain) -> dict[str, Any]:
    return drop_none(
        {
            "pod_id": row.pod_id,
            "domain_id": row.id,
            "domain": row.name,
            "feedback_enabled": row.feedback_enabled,
            "inbound_enabled": row.inbound_enabled,
            "subdomains_enabled": row.subdomains_enabled,
            "tracking_enabled": row.tracking_enabled,
            "client_id": row.client_id,
            "updated_at": iso(row.updated_at),
            "created_at": iso(row.created_at),
        }
    )


def domain(row: Domain, settings: Settings) -> dict[str, Any]:
    body = domain_item(row)
    body["status"] = row.status
    if row.status != "VERIFIED" and row.reason:
        body["reason"] = row.reason
    body["records"] = [record(r, s, why) for r, s, why in record_states(row, settings)]
    # Field order as the SDK model declares it, for readable payloads.
    order = ["pod_id", "domain_id", "domain", "status", "reason", "feedback_enabled", "inbound_enabled"]
    order += ["subdomains_enabled", "tracking_enabled", "records", "client_id", "updated_at", "created_at"]
    return {k: body[k] for k in order if k in body}
