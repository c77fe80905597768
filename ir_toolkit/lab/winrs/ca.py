"""The lab's WinRM certificate authority and per-host HTTPS certificates.

One CA per lab (``winrm_ca.pem``, its key ``winrm_ca.key`` 0600); every Windows host gets a
certificate for its address (IP SAN) and name (DNS SAN), signed with SHA-256 so clients can
compute tls-server-end-point channel bindings. A lab reimage issues the host a new key and
certificate (the old one is simply no longer served).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ir_toolkit.fsutil import write_atomic


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "irkit lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(cert_path: Path, key_path: Path, label: str) -> tuple[Path, bool]:
    """The lab CA (created once). Returns (cert path, created)."""
    if cert_path.exists() and key_path.exists():
        return cert_path, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(f"irkit lab WinRM CA ({label})"))
            .issuer_name(_name(f"irkit lab WinRM CA ({label})")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_atomic(key_path, _pem_key(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, True


def issue(ca_cert: Path, ca_key: Path, name: str, address: str, cert_path: Path, key_path: Path) -> str:
    """A new key and certificate for host ``name`` at ``address``; returns the SHA-256 fingerprint."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name),
                                                        x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    write_atomic(key_path, _pem_key(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert.fingerprint(hashes.SHA256()).hex()
