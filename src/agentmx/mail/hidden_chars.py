"""Characters a person does not see and a language model reads.

* Unicode tag characters (U+E0000-U+E007F) are invisible in every mail client, yet each stands for an
  ASCII character to a model's tokenizer: a whole instruction can ride unseen in a subject or a body
  ("ASCII smuggling"). Their one legitimate use, the three flags emoji keyboards offer (England,
  Scotland, Wales: U+1F3F4, the tags of gbeng, gbsct or gbwls, U+E007F), is left out; any other run of
  tags, inside a flag's frame or not, counts.
* Right-to-left and left-to-right overrides (U+202E, U+202D) make text display in another order than
  it is read ("Trojan Source"; ``invoice<U+202E>fdp.exe`` shows as ``invoiceexe.pdf``).

Mail that carries either in its subject, From name, bodies (HTML character references such as
``&#xE0041;`` included) or attachment names gets the ``hidden-characters`` label: nothing is removed
or hidden, the agent decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LABEL = "hidden-characters"
_FLAGS = ("gbeng", "gbsct", "gbwls")
_FLAG = re.compile(
    "|".join("\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in code) + "\U000e007f" for code in _FLAGS)
)
_HIDDEN = re.compile("[\U000e0000-\U000e007f\u202d\u202e]")
# An HTML character reference to one of them (``&#xE0041;``, ``&#917569``, ``&#8238;``).
_REFERENCE = re.compile(
    r"&#(?:[xX]0*(?:[eE]00[0-7][0-9a-fA-F]|202[dDeE])(?![0-9a-fA-F])"
    r"|0*(?:9175(?:0[4-9]|[1-9][0-9])|9176(?:[0-2][0-9]|3[01])|823[78])(?![0-9]))"
)


def carries_hidden(texts: Iterable[str | None]) -> bool:
    for text in texts:
        if not text or text.isascii():
            continue
        if _HIDDEN.search(text) is not None and _HIDDEN.search(_FLAG.sub("", text)) is not None:
            return True
    return False


def references_hidden(html: str) -> bool:
    """Whether ``html`` names one of the characters by reference: only then is it worth unescaping
    (html.unescape took 2.5 ms for 50 KB of ordinary references)."""
    return "&#" in html and _REFERENCE.search(html) is not None
