"""DKIM signing of outbound mail (RFC 6376) with dkimpy, using the key the domains feature holds."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.services import hooks
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.outbound")

# Signed when present. From is required; the rest protect what a replayer would change.
SIGNED_HEADERS = [
    b"from",
    b"to",
    b"cc",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
]


def sign(raw: bytes, *, domain: str, selector: str, private_key: bytes) -> bytes:
    """``raw`` with a DKIM-Signature header prepended (rsa-sha256, relaxed/relaxed)."""
    import dkim  # dkimpy (and the dnspython it loads) at the first signature, not at every start

    signature = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=SIGNED_HEADERS,
    )
    return signature + raw


async def key_for(session: AsyncSession, rt: Runtime, domain: str) -> tuple[str, bytes] | None:
    for lookup in hooks.dkim_lookups:
        found = await lookup(session, rt, domain)
        if found is not None:
            return found
    return None


def _candidates(domain: str) -> list[str]:
    """The domain, then each parent (subdomain inboxes share their registered parent's key)."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


async def sign_for_domain(rt: Runtime, domain: str, raw: bytes) -> bytes:
    """Sign when the domain (or a parent) has a key; a signing failure sends unsigned (logged)."""
    found: tuple[str, bytes] | None = None
    signing_domain = domain
    async with rt.db.read() as session:
        for candidate in _candidates(domain):
            found = await key_for(session, rt, candidate)
            if found is not None:
                signing_domain = candidate
                break
    if found is None:
        return raw
    selector, private_key = found
    import dkim  # dkimpy (and the dnspython it loads) at the first signature, not at every start

    try:
        # RSA signing is CPU work: keep it off the event loop.
        return await asyncio.to_thread(
            sign, raw, domain=signing_domain, selector=selector, private_key=private_key
        )
    except (dkim.DKIMException, ValueError) as exc:
        log.warning("DKIM signing for %s failed, sending unsigned: %s", signing_domain, exc)
        return raw
