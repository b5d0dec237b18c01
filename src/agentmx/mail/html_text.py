"""The words a reader sees in an HTML body, for the preview of mail that has no text part. Pure.

Regular expressions rather than html.parser: the parser costs about 0.7 ms a kilobyte of table
markup, and a newsletter can hold tens of kilobytes of it before its first words.
"""

from __future__ import annotations

import html as html_entities
import re

# The head (closed or not: it ends where the body starts).
_HEAD = re.compile(r"<head\b.*?(?:</head\s*>|(?=<body\b)|$)", re.IGNORECASE | re.DOTALL)
# Never shown by a mail reader, comments included; one the prefix read cuts off runs to its end.
_HIDDEN = re.compile(
    r"<(style|script|title|template)\b.*?(?:</\1\s*>|$)|<!--.*?(?:-->|$)", re.IGNORECASE | re.DOTALL
)
# Inline markup: no word break there ("<b>or</b>der" is one word); every other tag is one. Names in
# lower or upper case (a mixed-case one breaks a word, no worse): IGNORECASE made the pass 3-4 times slower.
# One never closed runs to the end, as in _TAG: else each "<b" without a ">" scanned to the end and
# failed (quadratic: a megabyte of "<b " took minutes).
_INLINE_NAMES = (
    "a|abbr|b|bdi|bdo|cite|code|data|del|dfn|em|font|i|ins|kbd|mark|q|s|samp|small|span|strike|strong"
    "|sub|sup|time|tt|u|var"
)
_INLINE_TAG = re.compile(rf"</?(?:{_INLINE_NAMES}|{_INLINE_NAMES.upper()})\b[^>]*(?:>|$)")
# A tag, or the start of one the prefix read cuts off ("a < b" is text, as browsers read it).
_TAG = re.compile(r"<[A-Za-z/!?][^>]*(?:>|$)")


def visible_text(html: str, enough: int) -> str:
    """The text of ``html`` outside tags, comments and hidden elements, character references
    decoded, from a prefix of it long enough to hold ``enough`` characters that are not white
    space (or from all of it). White space is as the HTML has it: a caller collapses it."""
    size = 16 * enough
    while True:
        text = _words(html[:size])
        if size >= len(html) or len("".join(text.split())) >= enough:
            return text
        size *= 4


def _words(html: str) -> str:
    html = _HIDDEN.sub(" ", _HEAD.sub(" ", html))
    return html_entities.unescape(_TAG.sub(" ", _INLINE_TAG.sub("", html)))
