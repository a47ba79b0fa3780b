"""guestpull.certs: loading PEM trust lists and describing certificates."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from guestpull.certs import certificate_pem, describe, issued_by, load_pem_certificates
from guestpull.errors import ConfigError
from guestpull_testkit.certs import CertChain, make_leaf_signed_by, make_self_signed


def test_loads_every_certificate_in_order(ca_chain: CertChain) -> None:
    pem = ca_chain.cert_pem + b"some text between blocks is ignored\n" + ca_chain.ca_cert_pem
    loaded = load_pem_certificates(pem, "bundle.pem")
    assert [c.subject for c in loaded] == [ca_chain.leaf.subject, ca_chain.ca_cert.subject]


def test_accepts_text(ca_chain: CertChain) -> None:
    loaded = load_pem_certificates(ca_chain.ca_cert_pem.decode(), "ca.pem")
    assert loaded[0].fingerprint(hashes.SHA256()) == ca_chain.ca_cert.fingerprint(hashes.SHA256())


def test_refuses_text_without_pem() -> None:
    with pytest.raises(ConfigError, match="not PEM") as info:
        load_pem_certificates(b"hello\n", "notes.txt")
    assert info.value.location is not None and info.value.location.file == "notes.txt"


def test_refuses_der(ca_chain: CertChain) -> None:
    der = ca_chain.ca_cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(ConfigError, match="binary") as info:
        load_pem_certificates(der, "ca.der")
    assert "openssl x509 -inform der" in (info.value.hint or "")


def test_refuses_a_private_key_and_names_the_block(ca_chain: CertChain) -> None:
    pem = ca_chain.ca_cert_pem + ca_chain.key_pem
    with pytest.raises(ConfigError) as info:
        load_pem_certificates(pem, "ca-and-key.pem")
    message = str(info.value)
    assert "ca-and-key.pem" in message and "block 2" in message and "PRIVATE KEY" in message
    # The key material itself never appears in the message.
    assert ca_chain.key_pem.decode().splitlines()[1] not in message


def test_refuses_a_block_that_is_not_a_certificate(ca_chain: CertChain) -> None:
    public_key = ca_chain.ca_cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match="block 1 is a PUBLIC KEY"):
        load_pem_certificates(public_key, "pub.pem")


def test_refuses_a_corrupt_certificate(ca_chain: CertChain) -> None:
    lines = ca_chain.ca_cert_pem.decode().splitlines()
    lines[2] = "AAAA" + lines[2][4:-4] + "AAAA"
    with pytest.raises(ConfigError, match="block 1 is not a valid certificate"):
        load_pem_certificates("\n".join(lines) + "\n", "broken.pem")


def test_refuses_a_truncated_block(ca_chain: CertChain) -> None:
    truncated = ca_chain.ca_cert_pem.decode().split("-----END")[0]
    with pytest.raises(ConfigError, match="no matching END"):
        load_pem_certificates(truncated, "cut.pem")


def test_describe_a_ca_and_its_leaf(ca_chain: CertChain) -> None:
    root, leaf = describe(ca_chain.ca_cert), describe(ca_chain.leaf)
    assert root.is_ca and root.self_signed
    assert not leaf.is_ca and not leaf.self_signed
    assert leaf.issuer == root.subject
    assert "DNS:localhost" in leaf.sans and "IP:127.0.0.1" in leaf.sans
    assert leaf.sha256 == ca_chain.leaf.fingerprint(hashes.SHA256()).hex()
    assert leaf.not_before < leaf.not_after


def test_self_signed_needs_a_valid_own_signature() -> None:
    # Same subject as issuer is not enough: the certificate must verify with its own key.
    other = make_self_signed(["other.test"], ca=True)
    forged_issuer = make_self_signed(["other.test"], ca=True)
    cert = x509.load_pem_x509_certificate(other.cert_pem)
    impostor = x509.load_pem_x509_certificate(forged_issuer.cert_pem)
    assert cert.subject == impostor.subject
    assert issued_by(cert, cert) and not issued_by(cert, impostor)


def test_issued_by(ca_chain: CertChain) -> None:
    leaf = x509.load_pem_x509_certificate(make_leaf_signed_by(ca_chain, ["r.test"]).cert_pem)
    assert issued_by(leaf, ca_chain.ca_cert)
    assert not issued_by(ca_chain.ca_cert, leaf)


def test_certificate_pem_round_trips(ca_chain: CertChain) -> None:
    text = certificate_pem(ca_chain.leaf)
    assert text.startswith("-----BEGIN CERTIFICATE-----\n") and text.endswith("-----END CERTIFICATE-----\n")
    assert load_pem_certificates(text, "x")[0] == ca_chain.leaf


def test_sans_include_ipv6() -> None:
    info = describe(x509.load_pem_x509_certificate(make_self_signed(["::1"], ca=False).cert_pem))
    assert info.sans == (f"IP:{ipaddress.ip_address('::1')}",)
