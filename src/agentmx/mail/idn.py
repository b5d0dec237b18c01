"""Domain names in their DNS form. One codec everywhere (IDNA 2008 with UTS 46 mapping, as registries,
DNS libraries and browsers use): "straße" is xn--strae-oqa, not IDNA 2003's "strasse", so a domain is
looked up, addressed in SMTP and matched against inboxes under the one name."""

from __future__ import annotations

import idna


def to_ascii_domain(value: str) -> str | None:
    """``value`` in its DNS form, or None when it has a label IDNA refuses (a Unicode label it cannot
    encode, or an "xn--" label that decodes to nothing valid)."""
    text = value.strip()
    try:
        if not text.isascii():
            # UTS 46 maps what users type (upper case, full-width dots) to IDNA 2008 form.
            text = idna.uts46_remap(text, std3_rules=True, transitional=False)
        labels = []
        for label in text.rstrip(".").split("."):
            if label.isascii():
                label = label.lower()
                if label.startswith("xn--"):
                    idna.decode(label)  # raises unless it is a well-formed A-label
            else:
                label = idna.alabel(label).decode("ascii")
            labels.append(label)
    except (idna.IDNAError, UnicodeError):
        return None
    return ".".join(labels)


def idna2003_spelling(domain: str) -> str | None:
    """The A-label form IDNA 2003 gave the DNS name ``domain``, when it differs (ß became "ss", ς "σ",
    joiners were dropped): list entries typed in Unicode were stored that way before this codec."""
    if "xn--" not in domain:
        return None
    try:
        old = idna.decode(domain).encode("idna").decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    return old if old != domain else None
