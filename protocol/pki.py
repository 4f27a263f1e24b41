"""A fleet's certificates: one CA, one server certificate, one certificate per device.

`edgecut certs init DIR` calls init_ca, `edgecut certs device NAME --dir DIR` calls
issue_device_certificate. The layout of DIR is what tls.py reads:

    DIR/ca.crt  ca.key            the fleet's CA (keep ca.key off the devices)
    DIR/server.crt  server.key    the cloud endpoint (serverAuth; localhost + given hosts)
    DIR/NAME.crt  NAME.key        device NAME (clientAuth; its name is the certificate's CN)

Keys are EC P-256 (small, fast handshakes on a device, supported by every TLS stack gRPC
uses), written PEM without a passphrase and with mode 0600.

    init_ca(Path("certs"), hosts=["cloud.example.com"])
    issue_device_certificate(Path("certs"), "pi4-kitchen")
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecut.errors import TLSConfigError

__all__ = [
    "RESERVED_NAMES",
    "CertificatePaths",
    "init_ca",
    "issue_device_certificate",
    "validate_device_name",
]

# ca and server name the fleet's own pairs; a device named so would overwrite them.
RESERVED_NAMES = frozenset({"ca", "server"})
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
# A little slack so a certificate is valid at once on a device whose clock runs behind.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificatePaths:
    """The files one call wrote: `cert`/`key` for the pair it issued, `ca_cert` beside them."""

    directory: Path
    ca_cert: Path
    cert: Path
    key: Path


def validate_device_name(name: str) -> str:
    """Return `name` if it can name a device certificate, else raise TLSConfigError.

    >>> validate_device_name("pi4-kitchen")
    'pi4-kitchen'
    """
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise TLSConfigError(
            f"device name {name!r} is not allowed; expected letters, digits, '_', '.' or '-' "
            f"(it becomes a file name and the certificate's common name)"
        )
    if name in RESERVED_NAMES:
        raise TLSConfigError(
            f"device name {name!r} is reserved for the fleet's own {name}.crt; choose another"
        )
    return name


def init_ca(
    directory: Path,
    *,
    hosts: Sequence[str] = (),
    days: int = 825,
    overwrite: bool = False,
) -> CertificatePaths:
    """Create a CA and a server certificate signed by it in `directory`.

    The server certificate names localhost, 127.0.0.1 and ::1 plus every entry of `hosts`
    (an IP address if it parses as one, else a DNS name). Returns the server pair's paths.
    Raises TLSConfigError if a CA is already there and `overwrite` is false: replacing it
    would orphan every device certificate it signed.
    """
    directory = Path(directory)
    _check_days(days)
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    existing = [p for p in (ca_crt, ca_key) if p.exists()]
    if existing and not overwrite:
        raise TLSConfigError(
            f"{existing[0]} already exists; refusing to replace the CA, which would invalidate "
            f"every certificate it signed (to replace it anyway: `edgecut certs init --force`, "
            f"or overwrite=True)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecut fleet CA")])
    ca_cert = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(ca_key, key)
    _write_cert(ca_crt, ca_cert)

    sans: list[x509.GeneralName] = []
    for host in (*_DEFAULT_SANS, *hosts):
        general = _general_name(host)
        if general not in sans:
            sans.append(general)
    return _issue(directory, "server", ca_cert, key, sans, ExtendedKeyUsageOID.SERVER_AUTH,
                  days, now)


def issue_device_certificate(directory: Path, name: str, *, days: int = 825) -> CertificatePaths:
    """Issue `NAME.crt`/`NAME.key` in `directory`, signed by the CA there (clientAuth).

    The certificate's common name is the device name; the endpoint reads it back as the
    caller's identity under mutual TLS. Reissuing a name replaces its pair.
    """
    directory = Path(directory)
    validate_device_name(name)
    _check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    return _issue(directory, name, ca_cert, ca_key, sans, ExtendedKeyUsageOID.CLIENT_AUTH,
                  days, dt.datetime.now(dt.timezone.utc))


def _issue(
    directory: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    now: dt.datetime,
) -> CertificatePaths:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _write_key(key_path, key)
    _write_cert(crt_path, cert)
    return CertificatePaths(directory=directory, ca_cert=directory / "ca.crt",
                            cert=crt_path, key=key_path)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs; a leaf signs handshakes (ECDSA: digital_signature).
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not re.fullmatch(r"[A-Za-z0-9*_.-]+", host):
        raise TLSConfigError(
            f"host {host!r} is neither an IP address nor a DNS name; expected e.g. "
            f"'cloud.example.com' or '10.0.0.5'"
        )
    return x509.DNSName(host)


def _check_days(days: int) -> None:
    if days <= 0:
        raise TLSConfigError(f"certificate validity must be > 0 days, got {days}")


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    for path in (ca_crt, ca_key):
        if not path.is_file():
            raise TLSConfigError(
                f"{path} not found: {directory} holds no CA; run `edgecut certs init "
                f"{directory}` first"
            )
    try:
        cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TLSConfigError(
            f"cannot read the CA in {directory} ({exc}); expected PEM files written by "
            f"`edgecut certs init {directory}`"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSConfigError(f"{ca_key} is not an EC private key; recreate the CA")
    if cert.public_key() != key.public_key():
        raise TLSConfigError(f"{ca_key} does not belong to {ca_crt}; recreate the CA")
    return cert, key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start so the key is never readable by others, even briefly.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)
