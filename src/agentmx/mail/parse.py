"""Raw RFC 5322 bytes -> ParsedMessage. Pure and total: any input yields a result, never an exception.

Malformed MIME, unknown charsets and raw 8-bit headers are decoded best-effort, because refusing a
message after the SMTP client handed it over would lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from agentmx.mail import plain_message
from agentmx.mail.html_text import visible_text
from agentmx.mail.policy import memo_default
from agentmx.mail.quotes import extract_html, extract_text

PREVIEW_CHARS = 200
# Widths of the attachments columns (db/models/mail.py). A folded Content-Type or Content-ID can be
# longer; PostgreSQL refused the row (a 451 for a message SQLite stored), so parsed values are cut.
CONTENT_TYPE_CHARS = 256
CONTENT_ID_CHARS = 998
MESSAGE_ID_CHARS = 998  # messages.message_id and in_reply_to, threads.last_message_id
MSGID = re.compile(r"<[^<>\s]+>")
# A type/subtype of RFC 2045 tokens. The parser keeps anything else between the slashes (a CR from an
# encoded word, U+FFFD from 8-bit bytes), which the download link cannot send as a Content-Type.
MIME_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+/[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
# Writes a parsed message back as it came: header lines as received (not folded again) and CRLF
# line ends, as mail travels. The default policy's LF and refolding changed an attached message's
# bytes (and broke its DKIM signature).
AS_RECEIVED = policy.default.clone(linesep="\r\n", refold_source="none")
# Raw 8-bit header bytes, as the parser keeps them (surrogateescape).
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# The same, as email.header.decode_header writes them (raw-unicode-escape).
ESCAPED_BYTE_TEXT = re.compile(rb"\\udc([89a-f][0-9a-f])")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # UTF-8 has no form for them (_clean)


@dataclass
class ParsedAttachment:
    filename: str | None
    content_type: str
    disposition: str  # "inline" | "attachment"
    content_id: str | None
    data: bytes


@dataclass
class ParsedMessage:
    from_: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    date: datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    html: str | None = None
    extracted_text: str | None = None
    extracted_html: str | None = None
    preview: str | None = None
    attachments: list[ParsedAttachment] = field(default_factory=list)
    size: int = 0


def _decode_raw_header(value: Any) -> str:
    """Decode a header the compat32 way: RFC 2047 words, then UTF-8 or Latin-1 for raw 8-bit."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if "=?" in value:  # without an encoded word, decoding returns the text unchanged
        try:
            return _decode_words(value)
        except Exception:  # noqa: BLE001 (best effort; keep the raw text)
            pass
    return _raw_bytes_decoded(value)


def _raw_bytes_decoded(value: str) -> str:
    if _has_raw_bytes(value):
        raw = value.encode("utf-8", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
    return value


def _decode_words(value: str) -> str:
    """RFC 2047 words decoded. A word in a charset Python does not know, or whose bytes are not in its
    charset, is read as UTF-8 or else Latin-1, and raw 8-bit text between words as outside them:
    the stdlib leaves the whole field encoded, or shows the raw bytes as \\udcXX escapes."""
    chunks = decode_header(value)
    if value.isascii():
        try:
            return str(make_header(chunks))
        except (LookupError, UnicodeDecodeError):
            pass
    out = ""
    previous_encoded = None
    for chunk, charset in chunks:
        text, encoded = _text_of(chunk, charset), charset is not None
        # As make_header: words touching text get a space; adjacent words are joined without one.
        if out and text and encoded != previous_encoded and not (out[-1].isspace() or text[0].isspace()):
            out += " "
        out, previous_encoded = out + text, encoded
    return out


def _text_of(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    if charset is None:  # text outside the words: decode_header wrote each raw byte as \\udcXX
        chunk = ESCAPED_BYTE_TEXT.sub(lambda m: bytes.fromhex(m[1].decode()), chunk)
        charset = "ascii"
    return _decoded(chunk, (charset, "utf-8"))


def _decoded(data: bytes, charsets: tuple[str, ...]) -> str:
    """``data`` in the first of ``charsets`` that reads it (an unknown name is skipped), else in
    Latin-1, which reads any bytes."""
    for charset in charsets:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _has_raw_bytes(value: str) -> bool:
    return not value.isascii() and ESCAPED_BYTE.search(value) is not None


def _raw_headers(msg: Message) -> dict[str, Any]:
    """Each field's first source text (8-bit bytes kept as surrogates) by lower-case name, whatever
    the parsing policy; empty when the header cannot be read."""
    out: dict[str, Any] = {}
    try:
        for key, raw in msg.raw_items() if isinstance(msg, EmailMessage) else msg.items():
            out.setdefault(key.lower(), raw)
    except Exception:  # noqa: BLE001
        pass
    return out


def _field_text(raw: Any) -> str | None:
    if raw is None:
        return None
    text = _decode_raw_header(raw)
    return _clean(" ".join(text.split())) if text else text


def _clean(value: str) -> str:
    """PostgreSQL text cannot hold NUL; CRLF becomes LF for readers.

    A lone surrogate (what the utf-7 and unicode-escape codecs make of some bytes, as a charset
    of a word or a part) cannot be encoded as UTF-8 for either database: every try got a 451.
    It becomes U+FFFD. (isascii is O(1): ASCII text is never scanned.)"""
    if not value.isascii():
        value = LONE_SURROGATE.sub("\ufffd", value)
    return value.replace("\x00", "").replace("\r\n", "\n")


# An address field is read up to Postfix's header_size_limit (the addresses that start past it are
# left out), and one longer than STRUCTURED_MAX by the lenient parser alone: the structured one takes
# 90 us an address, and a megabyte of addresses was most of a minute of CPU.
ADDRESS_FIELD_MAX = 102_400
STRUCTURED_MAX = 8_192


def _addresses(msg: Message, fields: dict[str, Any], name: str) -> list[str]:
    raw_value = fields.get(name.lower())
    if isinstance(raw_value, str) and len(raw_value) > ADDRESS_FIELD_MAX:
        cut = raw_value[:ADDRESS_FIELD_MAX]
        raw_value = cut[: cut.rfind(",")] if "," in cut else cut
    try:
        eight_bit = isinstance(raw_value, str) and _has_raw_bytes(raw_value)
        long = isinstance(raw_value, str) and len(raw_value) > STRUCTURED_MAX
        header = None if eight_bit or long else msg.get(name)
        if header is not None and hasattr(header, "addresses"):
            out = [_format_address(str(a.display_name or ""), a.addr_spec) for a in header.addresses]
            return [a for a in out if a]
    except Exception:  # noqa: BLE001 (fall back to the lenient parser below)
        pass
    raw = _field_text(raw_value)
    if not raw:
        return []
    return [a for a in (_format_address(n, e) for n, e in getaddresses([raw])) if a]


def _format_address(name: str, addr: str) -> str:
    name = _clean(" ".join(_decode_raw_header(name).split()))
    addr = _clean(addr.strip())
    if not addr or addr == "<>":
        return name
    if name and name != addr:
        if any(c in name for c in '",;<>@()[]:'):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{addr}>"
    return addr


def _message_id(value: str | None) -> str | None:
    """The id in a Message-ID or In-Reply-To field; None when there is none, or when it is wider than
    the message_id column (encoded words over folded lines decode to any length): PostgreSQL refused
    the row, a 451 on every try for a message SQLite stored. Without one a Message-ID is derived.

    Counted in UTF-8 bytes: 998 characters of four bytes each overflowed PostgreSQL's unique index
    on (inbox, message id), whose entries are at most 2,704 bytes."""
    if not value:
        return None
    found = MSGID.search(value)
    if found:
        msgid = found.group(0)
    else:
        value = value.strip()
        msgid = f"<{value}>" if value and " " not in value else ""
    return msgid if 0 < len(msgid.encode("utf-8", "surrogatepass")) <= MESSAGE_ID_CHARS else None


# A text part without a charset is US-ASCII (RFC 2045 5.2); so is one that says so. 8-bit text in it
# is UTF-8 or a Windows code page as mail clients guess, not U+FFFD as the stdlib decodes it.
UNDECLARED_CHARSETS = (None, "us-ascii")


def _payload_text(part: Message) -> str:
    if part.get_content_charset() in UNDECLARED_CHARSETS:
        data = _payload_bytes(part)
        if not data.isascii():
            return _decoded(data, ("utf-8", "cp1252"))
    try:
        if isinstance(part, EmailMessage):
            content = part.get_content()
            if isinstance(content, str):
                return content
    except Exception:  # noqa: BLE001 (unknown charset, bad transfer encoding)
        pass
    return _decoded(_payload_bytes(part), (part.get_content_charset() or "utf-8", "utf-8"))


def _payload_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    if isinstance(payload, list):  # message/rfc822 and friends: re-serialise as received
        try:
            return b"".join(
                p.as_bytes(unixfrom=p.get_unixfrom() is not None, policy=AS_RECEIVED)
                for p in payload
                if isinstance(p, Message)
            )
        except Exception:  # noqa: BLE001
            return b""
    return b""


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001
        name = None
    if name is None:
        try:
            name = part.get_param("name")  # type: ignore[assignment]
        except Exception:  # noqa: BLE001
            name = None
        if isinstance(name, tuple):
            name = name[2]
    return _clean(_decode_raw_header(name)) if name else None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:  # noqa: BLE001
        return None


def _walk(msg: Message, parsed: ParsedMessage, texts: list[str], htmls: list[str]) -> None:
    """Collect bodies and attachments; attached messages stay whole (they are attachments)."""
    try:
        ctype = msg.get_content_type()
    except Exception:  # noqa: BLE001
        ctype = "text/plain"
    if msg.is_multipart() and not ctype.startswith("message/"):
        payload = msg.get_payload()
        for part in payload if isinstance(payload, list) else []:
            if isinstance(part, Message):
                _walk(part, parsed, texts, htmls)
        return
    disposition = _disposition(msg)
    filename = _filename(msg)
    is_body = disposition != "attachment" and filename is None and ctype in ("text/plain", "text/html")
    if is_body:
        (texts if ctype == "text/plain" else htmls).append(_clean(_payload_text(msg)))
        return
    if ctype.startswith("message/") and filename is None:
        filename = "message.eml" if ctype == "message/rfc822" else None
    content_id = _field_text(_raw_headers(msg).get("content-id"))
    content_id = content_id.strip().strip("<>")[:CONTENT_ID_CHARS] if content_id else None
    # A part with a Content-ID and no Content-Disposition is an inline image (how many clients send a
    # multipart/related part); sending reads content_id without content_disposition the same way.
    inline = disposition == "inline" or (disposition is None and bool(content_id))
    parsed.attachments.append(
        ParsedAttachment(
            filename=filename,
            content_type=valid_mime_type(ctype)[:CONTENT_TYPE_CHARS],
            disposition="inline" if inline else "attachment",
            content_id=content_id or None,
            data=_payload_bytes(msg),
        )
    )


def valid_mime_type(ctype: str) -> str:
    """``ctype`` when it is a well-formed type/subtype, else application/octet-stream (RFC 2046 4.5.1:
    what cannot be read as anything else is a stream of bytes)."""
    return ctype if MIME_TYPE.fullmatch(ctype) else "application/octet-stream"


def _headers(msg: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        _add_headers(out, msg.raw_items() if isinstance(msg, EmailMessage) else msg.items())
    except Exception:  # noqa: BLE001
        pass
    return out


def _add_headers(out: dict[str, str], items: Iterable[tuple[str, Any]]) -> None:
    for name, value in items:
        if name not in out:
            out[name] = _clean(" ".join(_decode_raw_header(value).split()))


def preview_of(text: str | None) -> str | None:
    if not text:
        return None
    # Collapse a growing prefix, not the whole body: once the collapsed prefix is longer than the
    # preview, its first PREVIEW_CHARS are final. (str.split's whitespace is re's \s, at a tenth of the cost.)
    size = 4 * PREVIEW_CHARS
    while True:
        collapsed = " ".join(text[:size].split())
        if len(collapsed) > PREVIEW_CHARS or size >= len(text):
            break
        size *= 4
    return collapsed[:PREVIEW_CHARS] or None


def body_preview(text: str | None, html: str | None) -> str | None:
    """The preview of a body: its text's, or when it has no text to show, its HTML's words."""
    return preview_of(text) or (preview_of(visible_text(html, PREVIEW_CHARS)) if html else None)


def _load(raw: bytes) -> Message:
    with contextlib.suppress(Exception):  # the whole parse decides, once
        if (single := _load_single_part(raw)) is not None:
            return single
    try:
        return message_from_bytes(raw, policy=memo_default)
    except Exception:  # noqa: BLE001
        return message_from_bytes(raw, policy=policy.compat32)


def _load_single_part(raw: bytes) -> Message | None:
    """``message_from_bytes(raw, policy=memo_default)`` for a message of one part, or None.

    The stdlib's parser moves a single part's body into its payload a line at a time (a fifth of
    the parse of a 4 KB message); here the header alone is parsed and the body set as it would
    join those lines. None when the parse of the header does not end exactly at its first empty
    line (a bare LF, a line that is no field: the parser's own rules decide), or when the type
    makes the parser read the body (multipart, message): those take the whole parse.
    """
    end = raw.find(b"\r\n\r\n") + 4
    if end < 4:
        return None
    msg = message_from_bytes(raw[:end], policy=memo_default)
    if msg.get_payload() != "" or msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(raw[end:].decode("ascii", "surrogateescape"))  # as BytesParser decodes it
    return msg


def parse_message(raw: bytes) -> ParsedMessage:
    try:
        if (plain := plain_message.read(raw)) is not None:
            return _parse_plain(plain, raw)
    except Exception:  # noqa: BLE001 (the whole parse decides)
        pass
    try:
        return _parse(_load(raw), raw)
    except Exception:  # noqa: BLE001 (last resort: compat32, then plain text)
        try:
            return _parse(message_from_bytes(raw, policy=policy.compat32), raw)
        except Exception:  # noqa: BLE001
            text = _clean(raw.decode("utf-8", "replace"))
            return ParsedMessage(text=text, preview=preview_of(text), extracted_text=text, size=len(raw))


PARSE_IN_THREAD_BYTES = 256 * 1024
# Messages over PARSE_ONE_AT_A_TIME_BYTES are parsed one at a time. A parse holds about 8 times the
# message at its peak, and threads sharing the GIL parse no faster together: 20 clients sending 10 MB
# at once took a front end to 1.0-1.2 GB in the default executor's 6 threads (2 cores), 0.56-0.70 GB
# in this one. Smaller ones share _PARSES (at most ~16 MB a parse): one at a time, a 1 MB message
# waited 25 s behind two hostile 10 MB ones that take 10-13 s each to parse.
PARSE_ONE_AT_A_TIME_BYTES = 2 * 1024 * 1024
_LARGE_PARSES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmx-parse")
# Not the default executor: blob reads and writes, DKIM and getaddrinfo wait there, and 6 hostile
# 2 MB messages (2 s of CPU each) held its 6 threads (2 cores) for 10 s.
_PARSES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentmx-parse-mid")


def executor_for(size: int) -> ThreadPoolExecutor:
    """Where to parse (or read the header of) a message of ``size`` bytes over PARSE_IN_THREAD_BYTES."""
    return _LARGE_PARSES if size > PARSE_ONE_AT_A_TIME_BYTES else _PARSES


async def parse_off_loop(raw: bytes, head: bytes = b"") -> ParsedMessage:
    """``parse_message(head + raw)``, in a thread when the message is large (the event loop keeps
    serving). The join is done there too: sessions waiting their turn hold no copy of the message."""
    size = len(head) + len(raw)
    if size > PARSE_IN_THREAD_BYTES:
        return await asyncio.get_running_loop().run_in_executor(executor_for(size), _parse_joined, head, raw)
    return parse_message(head + raw)


def _parse_joined(head: bytes, raw: bytes) -> ParsedMessage:
    return parse_message(head + raw)


def _parse(msg: Message, raw: bytes) -> ParsedMessage:
    parsed = ParsedMessage(size=len(raw))
    fields = _raw_headers(msg)
    _read_fields(parsed, fields, lambda name: _addresses(msg, fields, name))
    parsed.headers = _headers(msg)
    texts: list[str] = []
    htmls: list[str] = []
    _walk(msg, parsed, texts, htmls)
    _set_bodies(parsed, texts, htmls)
    return parsed


def _parse_plain(plain: plain_message.PlainMessage, raw: bytes) -> ParsedMessage:
    """``_parse(_load(raw), raw)`` for a plain message (``mail/plain_message.py``), without the email package."""
    parsed = ParsedMessage(size=len(raw))
    _read_fields(parsed, plain.first, lambda name: _plain_addresses(plain, name))
    _add_headers(parsed.headers, plain.fields)
    _set_bodies(parsed, [_clean(_plain_text(plain.body, plain.charset))], [])
    return parsed


def _plain_addresses(plain: plain_message.PlainMessage, name: str) -> list[str]:
    mailboxes = plain.mailboxes.get(name.lower(), ())
    return [a for a in (_format_address(n, e) for n, e in mailboxes) if a]


def _plain_text(body: bytes, charset: str | None) -> str:
    """``_payload_text`` of a 7- or 8-bit text part: the content manager decodes with "replace"."""
    if charset in UNDECLARED_CHARSETS and not body.isascii():
        return _decoded(body, ("utf-8", "cp1252"))
    return body.decode(charset or "ascii", "replace")


def _read_fields(
    parsed: ParsedMessage, fields: dict[str, Any], addresses: Callable[[str], list[str]]
) -> None:
    """The fields of ``parsed`` read from the header: ``fields`` (each first value by lower-case name)
    and ``addresses`` (an address field's formatted mailboxes)."""
    from_list = addresses("From")
    parsed.from_ = from_list[0] if from_list else (_field_text(fields.get("from")) or "")
    parsed.to = addresses("To")
    parsed.cc = addresses("Cc")
    parsed.bcc = addresses("Bcc")
    parsed.reply_to = addresses("Reply-To")
    parsed.subject = _field_text(fields.get("subject"))
    parsed.message_id = _message_id(_field_text(fields.get("message-id")))
    parsed.in_reply_to = _message_id(_field_text(fields.get("in-reply-to")))
    parsed.references = MSGID.findall(_field_text(fields.get("references")) or "")
    date = _field_text(fields.get("date"))
    if date:
        try:
            parsed.date = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError, OverflowError):  # a number past a C int: no date
            parsed.date = None


def _set_bodies(parsed: ParsedMessage, texts: list[str], htmls: list[str]) -> None:
    parsed.text = "\n".join(texts) if texts else None
    parsed.html = "\n".join(htmls) if htmls else None
    parsed.preview = body_preview(parsed.text, parsed.html)
    parsed.extracted_text = extract_text(parsed.text) if parsed.text is not None else None
    parsed.extracted_html = extract_html(parsed.html) if parsed.html is not None else None
