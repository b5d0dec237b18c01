"""DKIM signatures of received mail (RFC 6376), verified with dkimpy over ``AuthDns``.

The keys are fetched first, concurrently and asynchronously; dkimpy then verifies against those
answers, off the event loop when the message is big (its body hash reads every byte).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from agentmx.mail.auth_dns import AuthDns, DnsTempError

MAX_SIGNATURES = 5  # a message with more is checked on its first five
OFF_LOOP_BYTES = 256 * 1024

# dkimpy logs a bad key or signature at ERROR: a sender's mistake, not this server's.
_quiet = logging.getLogger("agentmx.mail.dkim_verify.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass, fail, temperror or permerror (RFC 8601 2.7.1)
    domain: str  # d=
    selector: str  # s=
    signature: str  # the start of b=, telling signatures of one domain apart (RFC 6008)


async def verify(raw: bytes, dns: AuthDns) -> list[DkimResult]:
    """A result per DKIM-Signature field, top first; [] for an unsigned message."""
    end = raw.find(b"\r\n\r\n")
    if b"dkim-signature" not in (raw if end < 0 else raw[:end]).lower():
        return []  # most unsigned mail: no need to parse it
    checker = dkim.DKIM(raw, logger=_quiet)
    fields = [value for name, value in checker.headers if name.lower() == b"dkim-signature"][:MAX_SIGNATURES]
    tags = [_tags(value) for value in fields]
    names = {_key_name(t) for t in tags if t is not None}
    answers = dict(zip(names, await asyncio.gather(*(_key(dns, n) for n in names)), strict=True))

    def check_all() -> list[DkimResult]:
        return [_check(checker, index, t, answers) for index, t in enumerate(tags)]

    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(check_all)
    return check_all()


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        return None
    return tags if b"d" in tags and b"s" in tags else None


def _key_name(tags: dict[bytes, bytes]) -> str:
    selector = tags[b"s"].decode("ascii", "replace").strip()
    domain = tags[b"d"].decode("ascii", "replace").strip().lower()
    return f"{selector}._domainkey.{domain}"


async def _key(dns: AuthDns, name: str) -> bytes | None | DnsTempError:
    """The key record's text, None when there is none, the error when DNS did not answer."""
    try:
        records = await dns.txt(name)
    except DnsTempError as exc:
        return exc
    return records[0].encode() if len(records) == 1 else None  # two records: ambiguous, no key


def _check(
    checker: dkim.DKIM,
    index: int,
    tags: dict[bytes, bytes] | None,
    answers: dict[str, bytes | None | DnsTempError],
) -> DkimResult:
    if tags is None:
        return DkimResult("permerror", "", "", "")
    name = _key_name(tags)
    selector, _, domain = name.partition("._domainkey.")
    signature = re.sub(rb"\s+", b"", tags.get(b"b", b"")).decode("ascii", "replace")[:8]
    answer = answers[name]
    if isinstance(answer, DnsTempError):
        return DkimResult("temperror", domain, selector, signature)
    if answer is None:
        return DkimResult("permerror", domain, selector, signature)  # no key (RFC 6376 6.1.2)

    def key_record(asked: bytes, timeout: float = 5) -> bytes:
        return answer

    try:
        verified = checker.verify(idx=index, dnsfunc=key_record)
    except dkim.ValidationError:  # the body hash or the signature's fields (expired, ...) do not hold
        verified = False
    except Exception:  # noqa: BLE001 (dkimpy's errors for a bad signature or key, and others on hostile input)
        return DkimResult("permerror", domain, selector, signature)
    return DkimResult("pass" if verified else "fail", domain, selector, signature)
