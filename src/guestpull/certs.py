"""X.509 inspection for the host-side tools: load PEM trust lists and describe certificates.

This module only reads certificates.  What a certificate means for an upstream CoCo guest
(rustls) is judged in :mod:`guestpull.lint`; building a TLS context is :mod:`guestpull.tls`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from guestpull.errors import ConfigError, Location

# A PEM block: the label of BEGIN and END must agree (RFC 7468).
_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


@dataclass(frozen=True)
class CertInfo:
    """What a person needs to know about one certificate."""

    subject: str
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    is_ca: bool
    self_signed: bool
    sans: tuple[str, ...]
    sha256: str  # hex fingerprint of the DER encoding

    def to_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "is_ca": self.is_ca,
            "self_signed": self.self_signed,
            "sans": list(self.sans),
            "sha256": self.sha256,
        }


def load_pem_certificates(pem: bytes | str, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text, in order.

    ConfigError (naming ``source`` and the block number) for text that is not PEM, a block that
    is not a certificate, a private key anywhere in the text, or no certificate at all.
    """
    text = _pem_text(pem, source)
    begins = _BEGIN.findall(text)
    if not begins:
        raise ConfigError(
            "not PEM: no '-----BEGIN CERTIFICATE-----' block found",
            location=Location(file=source),
            hint="convert a DER file with 'openssl x509 -inform der -in FILE'",
        )
    # Refuse private keys before anything else, so a half-valid file never gets further.
    for number, label in enumerate(begins, start=1):
        if "PRIVATE KEY" in label:
            raise ConfigError(
                f"PEM block {number} is a {label}: a trust list must hold certificates only",
                location=Location(file=source),
                hint="pass the CA certificate, never a key",
            )
    blocks = _PEM_BLOCK.findall(text)
    if len(blocks) != len(begins):
        raise ConfigError(
            f"not PEM: {len(begins)} BEGIN line(s) but {len(blocks)} complete block(s)"
            " (a block has no matching END line)",
            location=Location(file=source),
        )
    certs: list[x509.Certificate] = []
    for number, (label, _body, end_label) in enumerate(blocks, start=1):
        certs.append(_load_block(text, number, label, end_label, source))
    return certs


def _pem_text(pem: bytes | str, source: str) -> str:
    if isinstance(pem, str):
        return pem
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            "not PEM: the file holds binary (non-ASCII) data",
            location=Location(file=source),
            hint="convert a DER file with 'openssl x509 -inform der -in FILE'",
        ) from None


def _load_block(
    text: str, number: int, label: str, end_label: str, source: str
) -> x509.Certificate:
    if label != end_label:
        raise ConfigError(
            f"PEM block {number}: BEGIN {label} ends with END {end_label}",
            location=Location(file=source),
        )
    if label != "CERTIFICATE":
        raise ConfigError(
            f"PEM block {number} is a {label}, not a CERTIFICATE",
            location=Location(file=source),
        )
    block = _nth_block(text, number)
    try:
        return x509.load_pem_x509_certificate(block.encode("ascii"))
    except ValueError as err:
        raise ConfigError(
            f"PEM block {number} is not a valid certificate: {err}",
            location=Location(file=source),
        ) from None


def _nth_block(text: str, number: int) -> str:
    for index, match in enumerate(_PEM_BLOCK.finditer(text), start=1):
        if index == number:
            return match.group(0)
    raise AssertionError("block numbers come from the same regex")


def certificate_pem(cert: x509.Certificate) -> str:
    """The certificate alone, as PEM text ending in a newline."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{ip}" for ip in sans.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def describe(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca(cert),
        self_signed=cert.issuer == cert.subject and issued_by(cert, cert),
        sans=subject_alt_names(cert),
        sha256=fingerprint(cert),
    )
