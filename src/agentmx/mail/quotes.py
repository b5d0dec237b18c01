"""New content only: strip quoted history from replies (Talon-style, heuristics only). Pure."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# A line that opens the quoted history.
_QUOTE_HEADERS = [
    re.compile(r"^\s*On\b.{0,300}\bwrote:\s*$", re.IGNORECASE),
    re.compile(r"^\s*Le\b.{0,300}\ba écrit\s*:\s*$", re.IGNORECASE),
    re.compile(r"^\s*Am\b.{0,300}\bschrieb\b.{0,200}:\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*Forwarded message\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*_{10,}\s*$"),
]
_OUTLOOK_FROM = re.compile(r"^\s*\*?From:\*?\s+\S", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*\*?(Sent|Date|To|Subject|Cc):\*?\s", re.IGNORECASE)
# "On Tue, Jan 2, 2024 at 10:00 AM Jane Doe <jane@example.com>" + "wrote:" on the next line.
_ON_START = re.compile(r"^\s*On\b.{0,300}$", re.IGNORECASE)
_WROTE_END = re.compile(r"^.{0,300}\bwrote:\s*$", re.IGNORECASE)


# What every rule below needs at the start of a line: most lines fail this one match.
_CANDIDATE = re.compile(r"\s*(?:On\b|Le\b|Am\b|-{2,}|_{10,}|\*?From:|>)", re.IGNORECASE)


def _cut_index(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        if not _CANDIDATE.match(line):
            continue
        if any(p.match(line) for p in _QUOTE_HEADERS):
            return i
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _ON_START.match(line) and _WROTE_END.match(nxt):
            return i
        if _OUTLOOK_FROM.match(line) and _OUTLOOK_NEXT.match(nxt):
            return i
        if line.lstrip().startswith(">") and all(
            not rest.strip() or rest.lstrip().startswith(">") for rest in lines[i:]
        ):
            return i
    return None


def extract_text(text: str) -> str:
    lines = text.splitlines()
    cut = _cut_index(lines)
    if cut is None:
        return text.strip()
    return "\n".join(lines[:cut]).strip()


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_SKIP_CLASSES = {"gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-cite-prefix", "gmail_attr"}
_STOP_IDS = {"divrplyfwdmsg", "appendonsend", "stopspelling"}


class _Stripper(HTMLParser):
    """Re-emits the document without quote subtrees; everything after an Outlook reply header is dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skip_depth = 0
        self.stopped = False
        self.open: list[str] = []  # emitted, not yet closed

    def _quote(self, tag: str, attrs: list[tuple[str, str | None]]) -> tuple[bool, bool]:
        values = {k.lower(): (v or "") for k, v in attrs}
        classes = set(values.get("class", "").split())
        skip = tag == "blockquote" or bool(classes & _SKIP_CLASSES)
        stop = values.get("id", "").lower() in _STOP_IDS
        return skip, stop

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skip_depth:
            if tag not in _VOID:
                self.skip_depth += 1
            return
        skip, stop = self._quote(tag, attrs)
        if stop:
            self.stopped = True
            return
        if skip:
            if tag not in _VOID:
                self.skip_depth = 1
            return
        self.out.append(self.get_starttag_text() or f"<{tag}>")
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped or self.skip_depth:
            return
        if self._quote(tag, attrs)[1]:
            self.stopped = True
            return
        self.out.append(self.get_starttag_text() or f"<{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if self.skip_depth:
            if tag not in _VOID:
                self.skip_depth -= 1
            return
        if self.stopped:
            return
        if tag in self.open:
            while self.open and self.open.pop() != tag:
                pass
        self.out.append(f"</{tag}>")

    def finish(self) -> str:
        # Close what was open when an Outlook header stopped the copy, so the kept part is well formed.
        closing = "".join(f"</{tag}>" for tag in reversed(self.open)) if self.stopped else ""
        return "".join(self.out) + closing

    def _text(self, data: str) -> None:
        if not self.skip_depth and not self.stopped:
            self.out.append(data)

    def handle_data(self, data: str) -> None:
        self._text(data)

    def handle_entityref(self, name: str) -> None:
        self._text(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._text(f"&#{name};")

    def handle_comment(self, data: str) -> None:
        self._text(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self._text(f"<!{decl}>")


def extract_html(html: str) -> str:
    try:
        stripper = _Stripper()
        stripper.feed(html)
        stripper.close()
        return stripper.finish().strip()
    except Exception:  # noqa: BLE001 (malformed HTML: keep it whole rather than lose content)
        return html
