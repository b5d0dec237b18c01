"""Self-signed TLS certificates for tests and benches (STARTTLS on loopback)."""

from __future__ import annotations

import ipaddress
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Tests reach their servers by address: the certificate names loopback too.
_LOOPBACK = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]


def write_self_signed(folder: Path, name: str = "mx.example.test") -> bytes:
    """An ECDSA P-256 certificate for ``name`` and its key, as ``folder``/cert.pem and key.pem (each
    replaced in one rename, as ACME clients do); returns the certificate in DER form."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), *_LOOPBACK]), critical=False)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )  # its own trust anchor
        .sign(key, hashes.SHA256())
    )
    replace(folder / "key.pem", key_pem(key))
    replace(folder / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A private key in PEM (PKCS #8), a new one unless given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def unverified_client_context() -> ssl.SSLContext:
    """A client context that takes any certificate: which one came is for the caller to check."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
