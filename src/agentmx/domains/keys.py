"""DKIM key pairs: generated per domain, the private half stored encrypted with the server secret."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_BITS = 2048


@dataclass(frozen=True)
class DkimKey:
    selector: str
    public_key: str  # base64 DER SubjectPublicKeyInfo: the p= tag of the DKIM record
    private_pem: bytes


def new_selector() -> str:
    # Random per key, so a re-created domain never collides with records still cached for the old one.
    return "amx" + secrets.token_hex(4)


def generate() -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, what dkimpy reads most reliably
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKey(new_selector(), base64.b64encode(der).decode(), pem)


def _fernet(secret: bytes) -> Fernet:
    # A dedicated key per purpose: the raw secret also signs URLs.
    derived = hashlib.sha256(b"agentmx/dkim-private-key/v1\0" + secret).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(secret: bytes, private_pem: bytes) -> str:
    return _fernet(secret).encrypt(private_pem).decode()


def decrypt(secret: bytes, token: str) -> bytes:
    return _fernet(secret).decrypt(token.encode())
