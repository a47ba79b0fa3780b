"""guestpull_testkit.certs: the chains verify, and each edge case has the shape it promises."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from guestpull_testkit.certs import (
    CertChain,
    make_ca_chain,
    make_client_cert,
    make_leaf_signed_by,
    make_self_signed,
)

NOW = datetime.datetime.now(datetime.UTC)


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _verify(chain: CertChain, name: x509.verification.Subject) -> list[x509.Certificate]:
    leaf, *intermediates = _certs(chain.cert_pem)
    verifier = (
        PolicyBuilder().store(Store(_certs(chain.ca_cert_pem))).build_server_verifier(name)
    )
    return verifier.verify(leaf, intermediates)


@pytest.mark.parametrize(
    "name",
    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
     x509.IPAddress(ipaddress.ip_address("::1"))],
)
def test_chain_verifies_for_each_host(name: x509.verification.Subject) -> None:
    chain = make_ca_chain()
    assert len(_verify(chain, name)) == 2


def test_chain_does_not_verify_for_other_host() -> None:
    with pytest.raises(VerificationError):
        _verify(make_ca_chain(), x509.DNSName("example.com"))


def test_intermediate_chain_is_served_with_the_leaf() -> None:
    chain = make_ca_chain(intermediate=True)
    leaf, mid = _certs(chain.cert_pem)
    assert mid.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mid.issuer == chain.ca_cert.subject
    assert len(_verify(chain, x509.DNSName("localhost"))) == 3


def test_leaf_and_root_extensions() -> None:
    chain = make_ca_chain()
    leaf, root = chain.leaf, chain.ca_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1",
    }
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("ca", [True, False])
def test_self_signed_flags(ca: bool) -> None:
    chain = make_self_signed(["localhost"], ca=ca)
    cert = chain.leaf
    assert chain.cert_pem == chain.ca_cert_pem
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is ca


def test_self_signed_without_san_keeps_only_the_cn() -> None:
    cert = make_self_signed(["localhost"], ca=True, san=False).leaf
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "localhost"


def test_expired_and_not_yet_valid_dates() -> None:
    expired = make_self_signed(["localhost"], ca=False, not_after=NOW - datetime.timedelta(days=2)).leaf
    assert expired.not_valid_after_utc < NOW
    assert expired.not_valid_before_utc < expired.not_valid_after_utc
    future = make_self_signed(["localhost"], ca=False, not_before=NOW + datetime.timedelta(days=2)).leaf
    assert future.not_valid_before_utc > NOW
    assert future.not_valid_after_utc > future.not_valid_before_utc


def test_expired_chain_fails_verification() -> None:
    chain = make_ca_chain(not_after=NOW - datetime.timedelta(hours=1))
    with pytest.raises(VerificationError):
        _verify(chain, x509.DNSName("localhost"))


def test_leaf_signed_by_is_neither_ca_nor_self_signed() -> None:
    chain = make_ca_chain()
    other = make_leaf_signed_by(chain, ["registry.local"])
    cert = other.leaf
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == chain.ca_cert.subject != cert.subject
    assert len(_verify(other, x509.DNSName("registry.local"))) == 2


def test_client_cert_has_client_auth() -> None:
    chain = make_ca_chain()
    client = make_client_cert(chain, "guest")
    eku = client.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verifier = PolicyBuilder().store(Store([chain.ca_cert])).build_client_verifier()
    assert verifier.verify(client.leaf, []).chain[-1] == chain.ca_cert


def test_write_files_and_key_mode(shm_path: Path) -> None:
    chain = make_ca_chain()
    paths = chain.write(shm_path / "tls")
    assert paths.ca.read_bytes() == chain.ca_cert_pem
    assert paths.cert.read_bytes() == chain.cert_pem
    assert paths.key.read_bytes() == chain.key_pem
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_python_ssl_handshake_with_the_chain(shm_path: Path) -> None:
    """The chain works for a real TLS server and client (OpenSSL), by IP."""
    import socket

    chain = make_ca_chain(intermediate=True)
    paths = chain.write(shm_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.cert, paths.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cadata=chain.ca_cert_pem.decode())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        thread.join(5)
