"""The characters lower-casing touches: the non-ASCII ones ``str.lower()`` changes, and what it makes of them.

Text with none of them is found in a value the same way by SQLite's ASCII-only lower() (or LIKE) as
by Python's lower(). Both lower a value character by character, but for one rule that looks around
('Σ' ends a word as 'ς'). An ASCII character, and a non-ASCII one lower() leaves alone, become the
same single character under both. A non-ASCII character lower() changes stays itself under SQLite's
and becomes one or more other characters under Python's ('İ' becomes 'i' and U+0307, 'Σ' 'σ' or
'ς'): all of them touched. So an untouched text can only occur, in either lower case, among
characters that both lowered alike: it occurs in one exactly where it occurs in the other.
"""

from __future__ import annotations

import functools

PLANES = 17  # Unicode's 0x110000 code points, 65,536 to a plane
BLOCK = 64  # characters lower-cased at once; a block lower() leaves alone is skipped whole


@functools.cache
def touched() -> frozenset[str]:
    """Every non-ASCII character lower() changes or produces, and 'i' and 'k' (from 'İ' and the Kelvin
    sign). About 30 ms, once per process: on import it would slow every command's start."""
    out: set[str] = set()
    every = _every_character()
    for start in range(0x80, len(every), BLOCK):
        block = every[start : start + BLOCK]
        if block.lower() == block:
            continue
        for char in block:
            if (lower := char.lower()) != char:
                # After a letter too: 'Σ' ends a word as 'ς', lower()'s one rule that looks around.
                out.update(char, lower, ("a" + char).lower()[1:])
    return frozenset(out)


def _every_character() -> str:
    """All code points in order (surrogates included), built as UTF-32 bytes: 5x quicker than chr()."""
    size = PLANES * 65536
    code_points = bytearray(4 * size)
    code_points[0::4] = bytes(range(256)) * (size // 256)
    code_points[1::4] = b"".join(bytes([b]) * 256 for b in range(256)) * PLANES
    code_points[2::4] = b"".join(bytes([plane]) * 65536 for plane in range(PLANES))
    return code_points.decode("utf-32-le", "surrogatepass")
