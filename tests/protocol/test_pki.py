"""Certificates made by edgecut.protocol.pki: what they hold, and what pki refuses."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecut.errors import TLSConfigError
from edgecut.protocol.pki import init_ca, issue_device_certificate


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_ca_writes_the_layout(tmp_path: Path) -> None:
    paths = init_ca(tmp_path / "certs", hosts=["cloud.example.com", "10.0.0.5", "fd00::1"])
    directory = tmp_path / "certs"
    assert paths.cert == directory / "server.crt" and paths.key == directory / "server.key"
    assert paths.ca_cert == directory / "ca.crt"
    assert sorted(p.name for p in directory.iterdir()) == [
        "ca.crt", "ca.key", "server.crt", "server.key"
    ]
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(directory / key).st_mode) == 0o600

    ca = load(directory / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]

    server = load(directory / "server.crt")
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "cloud.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.0.5", "fd00::1")
    ]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_device_certificate(fleet: Path, device: str) -> None:
    cert = load(fleet / f"{device}.crt")
    cert.verify_directly_issued_by(load(fleet / "ca.crt"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [device]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE(os.stat(fleet / f"{device}.key").st_mode) == 0o600


def test_issue_returns_paths(fleet: Path) -> None:
    paths = issue_device_certificate(fleet, "jetson.02", days=30)
    assert paths.cert == fleet / "jetson.02.crt" and paths.key == fleet / "jetson.02.key"
    cert = load(paths.cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_refuses_to_overwrite_a_ca(fleet: Path) -> None:
    before = (fleet / "ca.crt").read_bytes()
    with pytest.raises(TLSConfigError, match=r"ca\.crt already exists.*overwrite=True"):
        init_ca(fleet)
    assert (fleet / "ca.crt").read_bytes() == before


def test_overwrite_replaces_the_ca(fleet: Path) -> None:
    before = (fleet / "ca.crt").read_bytes()
    init_ca(fleet, overwrite=True)
    assert (fleet / "ca.crt").read_bytes() != before
    load(fleet / "server.crt").verify_directly_issued_by(load(fleet / "ca.crt"))


@pytest.mark.parametrize("name", ["", "ca", "server", "a/b", "..", ".", "with space",
                                  "../escape", "dévice"])
def test_bad_device_names(fleet: Path, name: str) -> None:
    with pytest.raises(TLSConfigError, match=repr(name).replace(".", r"\.")):
        issue_device_certificate(fleet, name)


def test_device_without_ca(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=r"run `edgecut certs init .*`"):
        issue_device_certificate(tmp_path, "pi4")


def test_device_with_a_ca_key_that_does_not_match(fleet: Path, other_fleet: Path) -> None:
    (fleet / "ca.key").write_bytes((other_fleet / "ca.key").read_bytes())
    with pytest.raises(TLSConfigError, match="does not belong"):
        issue_device_certificate(fleet, "pi4")


def test_device_with_a_garbled_ca(fleet: Path) -> None:
    (fleet / "ca.crt").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="cannot read the CA"):
        issue_device_certificate(fleet, "pi4")


@pytest.mark.parametrize("host", ["", "bad host", "a/b"])
def test_bad_hosts(tmp_path: Path, host: str) -> None:
    with pytest.raises(TLSConfigError, match="neither an IP address nor a DNS name"):
        init_ca(tmp_path, hosts=[host])


def test_bad_days(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="> 0 days, got 0"):
        init_ca(tmp_path, days=0)
