"""Simple signing (GPG): signatures from a lookaside store, verified with Sequoia (pysequoia).

Where skopeo ``--sign-by`` writes them (signatures.md):
``<lookaside>/<repository without host>@<algo>=<hex>/signature-<n>``, n = 1, 2, … up to the
first missing one.  Each is one OpenPGP message (gpgme writes it inside a CompressedData
packet; other writers do not): OnePassSignature, LiteralData (the JSON payload), Signature.
``file://`` stores are read directly; ``http(s)://`` stores through the pull's transport (its
proxies and trust), with the size and count bounded: the store is as hostile as the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pysequoia
from guestpull.url import URL

from guestpull.distribution import Transport
from guestpull.distribution.transport import deadline, read_body
from guestpull.errors import ConfigError, HTTPStatusError, UnsupportedError
from guestpull.signature.keys import GpgKeyring, first_line

#: A simple signature is a few hundred bytes; anything near this is not one.
MAX_SIGNATURE_SIZE = 4 << 20
#: Signatures read per image at most (signature-1 … signature-N).
MAX_SIGNATURES = 64


@dataclass(frozen=True)
class StoredSignature:
    data: bytes
    location: str  # where it was read, for messages


class SignatureInvalid(Exception):
    """This signature does not verify (the reason is for the policy message)."""


@dataclass(frozen=True)
class VerifiedMessage:
    payload: bytes
    fingerprint: str  # the certificate (primary key) that verified it


def signature_url(base: str, repository: str, digest: str, number: int) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{base}/{repository}@{algorithm}={hex_part}/signature-{number}"


async def read_signatures(
    base: str, repository: str, digest: str, transport: Transport
) -> list[StoredSignature]:
    """signature-1, signature-2, … from the store, until the first that does not exist."""
    found: list[StoredSignature] = []
    for number in range(1, MAX_SIGNATURES + 2):
        url = signature_url(base, repository, digest, number)
        if number > MAX_SIGNATURES:
            raise UnsupportedError(f"more than {MAX_SIGNATURES} signatures at {_dir(url)}")
        data = _read_file(url) if url.startswith("file://") else await _read_http(url, transport)
        if data is None:
            break
        found.append(StoredSignature(data, url))
    return found


def _dir(url: str) -> str:
    return url.rsplit("/", 1)[0]


def _read_file(url: str) -> bytes | None:
    path = Path(unquote(urlsplit(url).path))
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SIGNATURE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"cannot read signature {path}: {err.strerror}") from None
    _check_size(data, url)
    return data


async def _read_http(url: str, transport: Transport) -> bytes | None:
    what = f"signature {url}"
    # A store that drips bytes cannot hold the pull longer than a small document may take.
    async with deadline(transport.settings.document_timeout, what), \
            transport.request(URL(url)) as response:
        if response.status == 404:
            return None
        if response.status != 200:
            raise HTTPStatusError(f"{what}: HTTP {response.status}", status=response.status)
        _check_size(b"", url, response.content_length)
        data = await read_body(response, MAX_SIGNATURE_SIZE, what)
    _check_size(data, url)
    return data


def _check_size(data: bytes, url: str, announced: int | None = None) -> None:
    if len(data) > MAX_SIGNATURE_SIZE or (announced or 0) > MAX_SIGNATURE_SIZE:
        raise UnsupportedError(f"signature {url} is larger than {MAX_SIGNATURE_SIZE >> 20} MiB; "
                               "simple signatures are a few hundred bytes")


def verify_message(data: bytes, keyring: GpgKeyring) -> VerifiedMessage:
    """Verify a signed OpenPGP message against any key of ``keyring``; return its literal data."""
    asked: list[str] = []

    def store(key_ids: list[str]) -> list[pysequoia.Cert]:
        asked.extend(k.lower() for k in key_ids)
        return list(keyring.certs)

    try:
        result = pysequoia.verify(bytes=data, store=store)
    except Exception as err:  # pysequoia raises RuntimeError/ValueError with a Rust message
        raise SignatureInvalid(_why_invalid(asked, keyring, first_line(err))) from None
    if not result.valid_sigs or result.bytes is None:
        raise SignatureInvalid("no valid signature in the OpenPGP message")
    return VerifiedMessage(result.bytes, str(result.valid_sigs[0].certificate))


def _why_invalid(asked: list[str], keyring: GpgKeyring, error: str) -> str:
    known = keyring.fingerprints
    if asked and not any(fp.endswith(key_id) for key_id in asked for fp in known):
        return f"signed by key {', '.join(asked)}, which is not among the trusted keys"
    return f"the signature does not verify: {error}"
