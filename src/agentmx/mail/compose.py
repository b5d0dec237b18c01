"""Building outbound RFC 5322 messages from a send request. Pure: no I/O, no database.

Every message is built through ``email.policy.SMTP`` so a header value carrying CR/LF raises
instead of injecting headers. Bcc never appears in the headers; it only exists in the envelope.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, formataddr, getaddresses, parseaddr

from agentmx.mail.idn import to_ascii_domain

# Headers the composer owns; extra request headers may not override them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "dkim-signature",
        # Who sent it and how it travelled: a request may not claim them (another sender, forged trace
        # or authentication results).
        "sender",
        "return-path",
        "received",
        "authentication-results",
        "received-spf",
    }
)
RESERVED_PREFIXES = ("resent-", "arc-")

# A domain label on the wire: letters, digits and inner hyphens, at most 63 (RFC 5321 4.1.2 Domain).
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv)\s*:\s*", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class OutAttachment:
    """Attachment bytes plus how they should appear in the MIME tree."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None
    disposition: str | None = None  # "inline" | "attachment" | None (= attachment)
    content_id: str | None = None

    @property
    def inline(self) -> bool:
        return self.disposition == "inline" or (self.disposition is None and self.content_id is not None)


@dataclass
class Composition:
    """Everything needed to render one outbound message."""

    from_addr: str
    message_id: str
    date: datetime
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[OutAttachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ForwardSource:
    """The parts of a forwarded message that are quoted into the forward."""

    from_addr: str
    to: list[str]
    cc: list[str]
    subject: str | None
    date: datetime
    text: str | None
    html: str | None


def format_from(display_name: str | None, address: str) -> str:
    return formataddr((display_name, address)) if display_name else address


def bare_address(value: str) -> str:
    """``"Name <a@b>"`` -> ``a@b`` (lower-cased domain part is left to the caller)."""
    return parseaddr(value)[1]


def split_addresses(values: list[str]) -> list[str]:
    """Each entry may itself be a comma-separated list; returns formatted single addresses."""
    out: list[str] = []
    for name, addr in getaddresses(values):
        if addr:
            out.append(formataddr((name, addr)) if name else addr)
    return out


def reply_subject(subject: str | None) -> str:
    subject = (subject or "").strip()
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}".rstrip()


def forward_subject(subject: str | None) -> str:
    subject = (subject or "").strip()
    return subject if _FORWARD_PREFIX.match(subject) else f"Fwd: {subject}".rstrip()


def thread_references(message_id: str, references: list[str]) -> list[str]:
    """References of a reply: the original's references followed by the original's id."""
    refs = [ref for ref in references if ref != message_id]
    return [*refs, message_id]


def _forward_header_lines(src: ForwardSource) -> list[str]:
    lines = [
        "---------- Forwarded message ---------",
        f"From: {src.from_addr}",
        f"Date: {format_datetime(src.date)}",
        f"Subject: {src.subject or ''}",
        f"To: {', '.join(src.to)}",
    ]
    if src.cc:
        lines.append(f"Cc: {', '.join(src.cc)}")
    return lines


def forward_bodies(src: ForwardSource, text: str | None, html: str | None) -> tuple[str | None, str | None]:
    """The new text/html of a forward: the sender's note, then the quoted original."""
    header = _forward_header_lines(src)
    original_text = src.text
    if original_text is None and src.html is not None:
        original_text = re.sub(r"<[^>]+>", "", src.html)
    out_text = "\n".join([*([text, ""] if text else []), *header, "", original_text or ""])
    out_html: str | None = None
    if html is not None or src.html is not None:
        quoted_header = "<br>".join(html_lib.escape(line) for line in header)
        original_html = src.html
        if original_html is None:
            original_html = "<pre>" + html_lib.escape(src.text or "") + "</pre>"
        note = html if html is not None else ("<p>" + html_lib.escape(text) + "</p>" if text else "")
        out_html = f'{note}<div class="forwarded">{quoted_header}<br><br>{original_html}</div>'
    return out_text, out_html


def _maintype(att: OutAttachment) -> tuple[str, str]:
    ctype = (att.content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
    if "/" not in ctype:
        return "application", "octet-stream"
    main, sub = ctype.split("/", 1)
    return main or "application", sub or "octet-stream"


def _cid(content_id: str) -> str:
    content_id = content_id.strip()
    return content_id if content_id.startswith("<") else f"<{content_id}>"


def _body(comp: Composition) -> MIMEPart:
    """The body part: text, html, alternative; with inline parts wrapped in multipart/related."""
    body = MIMEPart(policy=policy.SMTP)
    if comp.text is not None or comp.html is None:
        body.set_content(comp.text or "", subtype="plain", cte=_cte(comp.text or ""))
        if comp.html is not None:
            body.add_alternative(comp.html, subtype="html", cte=_cte(comp.html))
    else:
        body.set_content(comp.html, subtype="html", cte=_cte(comp.html))
    inline = [a for a in comp.attachments if a.inline]
    if not inline:
        return body
    related = MIMEPart(policy=policy.SMTP)
    related.make_related()
    related.attach(body)
    for att in inline:
        related.attach(_attachment_part(att, "inline"))
    return related


def _attachment_part(att: OutAttachment, disposition: str) -> MIMEPart:
    """One attachment, its bytes intact on the wire. Multipart and message bodies may not be base64
    (RFC 2045 6.4): receivers read such a part as it stands and show the base64 text. A 7-bit
    message/rfc822 (an attached email) goes as it is; other such bodies as application/octet-stream."""
    main, sub = _maintype(att)
    data, cte = att.data, "base64"
    if main in ("multipart", "message"):
        if (main, sub) == ("message", "rfc822") and _seven_bit(data):
            data, cte = b"\r\n".join(data.splitlines()) + b"\r\n", "7bit"
        else:
            main, sub = "application", "octet-stream"
    part = MIMEPart(policy=policy.SMTP)
    part.set_content(
        data,
        maintype=main,
        subtype=sub,
        cte=cte,
        filename=att.filename,
        disposition=disposition,
        cid=_cid(att.content_id) if att.content_id else None,
    )
    return part


def _seven_bit(data: bytes) -> bool:
    return data.isascii() and b"\0" not in data and all(len(line) <= 998 for line in data.splitlines())


def _cte(text: str) -> str:
    # 7bit text stays readable on the wire; anything else is quoted-printable (safe line lengths).
    if text.isascii() and all(len(line) <= 900 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def build(comp: Composition) -> EmailMessage:
    """Render the message. Raises ValueError on header values with CR/LF or bad addresses."""
    body = _body(comp)
    attachments = [a for a in comp.attachments if not a.inline]
    msg = EmailMessage(policy=policy.SMTP)
    if not attachments:
        for key, value in body.items():
            msg[key] = value
        msg.set_payload(body.get_payload())
    else:
        msg.make_mixed()
        msg.attach(body)  # type: ignore[arg-type]  # typeshed wants EmailMessage; MIMEPart avoids MIME-Version in parts
        for att in attachments:
            msg.attach(_attachment_part(att, "attachment"))  # type: ignore[arg-type]
    _set_headers(msg, comp)
    return msg


def _set_headers(msg: EmailMessage, comp: Composition) -> None:
    # Header order on the wire: the envelope-ish fields first, then MIME, then extras.
    mime = [(k, v) for k, v in msg.items()]
    for key in list(msg.keys()):
        del msg[key]
    msg["From"] = comp.from_addr
    if comp.to:
        msg["To"] = ", ".join(comp.to)
    if comp.cc:
        msg["Cc"] = ", ".join(comp.cc)
    if comp.reply_to:
        msg["Reply-To"] = ", ".join(comp.reply_to)
    if comp.subject is not None:
        msg["Subject"] = comp.subject
    msg["Date"] = format_datetime(comp.date)
    msg["Message-ID"] = comp.message_id
    if comp.in_reply_to:
        msg["In-Reply-To"] = comp.in_reply_to
    if comp.references:
        msg["References"] = " ".join(comp.references)
    msg["MIME-Version"] = "1.0"
    for key, value in mime:
        if key.lower() != "mime-version":
            msg[key] = value
    for key, value in comp.headers.items():
        if key.lower() in RESERVED_HEADERS or key.lower().startswith(RESERVED_PREFIXES):
            continue
        msg[key] = value


def to_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=policy.SMTP)


def address_domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower() if "@" in address else ""


MAX_ADDRESS = 254


def valid_address(address: str) -> bool:
    """A usable addr-spec (local@domain): an ASCII local part (the parser refuses others) and a domain
    whose ASCII form (IDNA) is a valid host name, as it goes into DNS and SMTP commands."""
    try:
        parsed = Address(addr_spec=address)
    except (ValueError, IndexError, TypeError):
        return False
    except Exception:
        return False
    if not parsed.username or not parsed.domain or " " in address:
        return False
    wire = ascii_domain(parsed.domain)
    # RFC 5321 4.5.3.1.3: a path is at most 256 octets, angle brackets included.
    return wire is not None and len(parsed.username.encode()) + 1 + len(wire) <= MAX_ADDRESS


def ascii_domain(domain: str) -> str | None:
    """The domain as it goes into DNS and SMTP commands (IDNA A-labels), or None if it cannot be one."""
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # an address literal
    wire = domain if domain.isascii() else to_ascii_domain(domain)
    if wire is None:
        return None
    labels = wire.rstrip(".").split(".")
    if len(wire) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return wire


def wire_address(address: str) -> str:
    """``address`` with its domain in ASCII form, for SMTP commands (unchanged if it has none)."""
    local, at, domain = address.rpartition("@")
    wire = ascii_domain(domain) if at else None
    return f"{local}@{wire}" if wire else address
