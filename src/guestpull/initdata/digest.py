"""Where an Init-Data digest goes: fitted to each platform's TEE field, or extended into PCR 8.

The digest itself (the hash named by ``algorithm`` over the document's exact bytes) is
:meth:`guestpull.initdata.InitData.digest`; this module only shapes it for a platform.
"""

from __future__ import annotations

import hashlib

from guestpull.errors import ConfigError, Location, UsageError

# Size of the TEE field the digest is bound into (coco-behaviour.md §1.3).
PLATFORM_DIGEST_SIZES: dict[str, int] = {"snp": 32, "tdx": 48, "cca": 64, "sgx": 64, "se": 256}
PLATFORMS: tuple[str, ...] = ("snp", "tdx", "cca", "se", "sgx", "vtpm", "none")


def fit_digest(digest: bytes, platform: str) -> bytes:
    """The digest as the platform's TEE field holds it: truncated, or zero-padded at the end.

    ``vtpm`` extends PCR 8 with the digest itself, which must be sha256 (32 bytes);
    ``none`` leaves it unchanged.
    """
    if platform == "none":
        return digest
    if platform == "vtpm":
        if len(digest) != 32:
            raise ConfigError(
                "vTPM platforms extend PCR 8 with the digest, which must be sha256"
                f" (got {len(digest)} bytes)",
                location=Location(field="algorithm"),
                hint='use algorithm = "sha256"',
            )
        return digest
    if platform not in PLATFORM_DIGEST_SIZES:
        raise UsageError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}")
    size = PLATFORM_DIGEST_SIZES[platform]
    return digest[:size].ljust(size, b"\0")


def expected_pcr8(digest: bytes) -> bytes:
    """PCR 8 after one extend with the digest from its reset value: sha256(32×0x00 ‖ digest)."""
    fitted = fit_digest(digest, "vtpm")
    return hashlib.sha256(b"\0" * 32 + fitted).digest()
