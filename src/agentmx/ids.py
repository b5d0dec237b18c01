"""Identifier generation. Ids are opaque strings with a readable prefix."""

from __future__ import annotations

import secrets
import time
import uuid


def new_id(prefix: str) -> str:
    """``prefix_``, the time in milliseconds (12 hex digits), then 80 random bits (20 hex digits).

    Ids made together sort together, so a batch's rows go into the same (last) pages of each index
    on an id instead of one random page per row, each rewritten whole. An inbound 4 KB message
    wrote 108 KB of SQLite pages (WAL and checkpoint) with random ids, 87 KB with these.
    """
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_message_id(domain: str) -> str:
    return f"<{secrets.token_hex(16)}@{domain}>"


def random_username() -> str:
    adjectives = ["brisk", "calm", "eager", "keen", "lucid", "nimble", "quiet", "swift", "vivid", "witty"]
    nouns = ["otter", "falcon", "maple", "comet", "harbor", "lantern", "meadow", "pebble", "quill", "river"]
    return f"{secrets.choice(adjectives)}{secrets.choice(nouns)}{secrets.randbelow(10000)}"
