"""Identifier generation. Ids are opaque strings with a readable prefix."""

from __future__ import annotations

import secrets
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_message_id(domain: str) -> str:
    return f"<{secrets.token_hex(16)}@{domain}>"


def random_username() -> str:
    adjectives = ["brisk", "calm", "eager", "keen", "lucid", "nimble", "quiet", "swift", "vivid", "witty"]
    nouns = ["otter", "falcon", "maple", "comet", "harbor", "lantern", "meadow", "pebble", "quill", "river"]
    return f"{secrets.choice(adjectives)}{secrets.choice(nouns)}{secrets.randbelow(10000)}"
