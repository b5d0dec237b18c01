"""The server secret: signs download URLs and encrypts stored private keys.

Taken from AGENTMX_SECRET_KEY when set; otherwise generated once and kept in the database, so
every process sharing the database agrees on it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import InvalidToken
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from agentmx.db.engine import Database
from agentmx.db.models import Domain, ServerState
from agentmx.domains import keys as dkim_keys
from agentmx.settings import ConfigError

KEY = "secret_key"


async def load_secret(db: Database, configured: str) -> bytes:
    secret = await _secret(db, configured)
    await _check_stored_keys(db, secret)
    return secret


async def _secret(db: Database, configured: str) -> bytes:
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    for _ in range(3):
        async with db.read() as s:
            row = await s.get(ServerState, KEY)
            if row is not None:
                return bytes.fromhex(row.value)
        try:
            async with db.transaction() as s:
                s.add(ServerState(key=KEY, value=secrets.token_hex(32)))
        except IntegrityError:
            continue  # another process created it first
    raise RuntimeError("could not establish the server secret")


async def _check_stored_keys(db: Database, secret: bytes) -> None:
    """Refuses a secret the stored DKIM keys were not encrypted with: a changed or lost
    AGENTMX_SECRET_KEY started as usual, took sends with 200 and failed each delivery with a
    traceback (InvalidToken), so no mail from a custom domain left. The newest key is checked:
    processes sharing a database with different secrets disagree about it first."""
    async with db.read() as s:
        stored = await s.scalar(select(Domain.dkim_private_key).order_by(Domain.created_at.desc()).limit(1))
    if stored is None:
        return
    try:
        dkim_keys.decrypt(secret, stored)
    except InvalidToken:
        raise ConfigError(
            "AGENTMX_SECRET_KEY is not the secret this database's DKIM keys were encrypted with"
            " (a changed or lost secret): start with the one it was set up with (empty if none was set)"
        ) from None


def sign(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def verify(secret: bytes, message: str, signature: str) -> bool:
    # Bytes, not str: compare_digest raises TypeError for a str with non-ASCII characters, and the
    # signature comes from a URL (a forged download token was a 500 instead of a 404).
    expected = sign(secret, message).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
