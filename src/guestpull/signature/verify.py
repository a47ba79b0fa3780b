"""The verification step of a pull: the policy's decision for one image, or PolicyError.

:func:`build_verifier` reads the configuration once (policy, sigstore config); the puller calls
:meth:`Verifier.verify` for every pull, after the manifest is resolved and before the config or
any layer is fetched.  The scope and identity checks use the reference the user asked for; the
signatures are read where the image was actually fetched (the candidate: its registry client
for cosign, its repository for the lookaside path, as containers/image does) and, for simple
signing from a mirror, also under the name asked for (where upstream image-rs reads them).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestpull.config import ImageConfig, ResourceGetter
from guestpull.distribution import RegistryClient
from guestpull.errors import PolicyRejected, clip, shown
from guestpull.reference import Reference
from guestpull.signature import cosign, simple
from guestpull.signature.keys import KeyLoader
from guestpull.signature.payload import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, PayloadError, SignedClaim, parse_payload
from guestpull.signature.policy import Policy, Requirement
from guestpull.signature.sigstore_config import SigstoreConfig, load_sigstore_config

INLINE_POLICY = "cdh.toml [image] image_security_policy"
INLINE_SIGSTORE = "cdh.toml [image] sigstore_config"
#: Rejected signatures a message explains one by one (a store may hold dozens).
MAX_REASONS = 3


@dataclass(frozen=True)
class VerifyTarget:
    """What is being pulled: the name asked for, and the candidate the manifest came from."""

    requested: Reference
    fetched: Reference
    client: RegistryClient
    manifest_digest: str  # the platform image manifest
    index_digest: str | None = None


@dataclass
class RequirementOutcome:
    type: str
    accepted: bool
    detail: str
    keys: list[str] = field(default_factory=list)  # fingerprints of the keys that verified
    signature: str | None = None  # where the accepted signature was read

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "accepted": self.accepted, "detail": self.detail,
                "keys": self.keys, "signature": self.signature}


@dataclass
class PolicyDecision:
    """The policy's verdict for one pull (in PullResult and ``--json``)."""

    policy: str
    scope: str
    accepted: bool
    requirements: list[RequirementOutcome]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "scope": self.scope, "accepted": self.accepted,
                "requirements": [r.to_dict() for r in self.requirements]}


@dataclass(frozen=True)
class _Signed:
    """A signature that verified cryptographically: its payload, and who signed it."""

    payload: bytes
    signer: str  # for messages: a fingerprint or a key's source
    fingerprint: str


class Verifier:
    """Evaluates a policy for each pull; keys are loaded on first use and kept."""

    def __init__(self, policy: Policy, sigstore: SigstoreConfig, resolver: ResourceGetter) -> None:
        self.policy = policy
        self.sigstore = sigstore
        self.keys = KeyLoader(resolver, policy.source)

    async def verify(self, target: VerifyTarget) -> PolicyDecision:
        """Every requirement of the matching scope must hold; else PolicyRejected saying why."""
        match = self.policy.scope_for(target.requested)
        decision = PolicyDecision(self.policy.source, match.scope, True, [])
        for requirement in match.requirements:
            outcome = await self._evaluate(requirement, target)
            decision.requirements.append(outcome)
            if not outcome.accepted:
                decision.accepted = False
                raise PolicyRejected(
                    f"signature policy rejects {target.requested}: scope {match.scope!r} "
                    f"requirement {requirement.describe()}: {outcome.detail}",
                    hint=f"policy {self.policy.source}, {requirement.where}",
                    decision=decision.to_dict(),
                )
        return decision

    async def _evaluate(self, requirement: Requirement, target: VerifyTarget) -> RequirementOutcome:
        if requirement.type == "insecureAcceptAnything":
            return RequirementOutcome(requirement.type, True, "accepts any image")
        if requirement.type == "reject":
            return RequirementOutcome(requirement.type, False, "the policy rejects every image here")
        if requirement.type == "signedBy":
            return await self._signed_by(requirement, target)
        return await self._sigstore_signed(requirement, target)

    async def _signed_by(self, requirement: Requirement, target: VerifyTarget) -> RequirementOutcome:
        assert requirement.keys is not None
        keyring = await asyncio.to_thread(self.keys.gpg, requirement.keys)  # may read a kbs:// resource
        # Where the image was fetched (containers/image), then, for a mirror or remapped
        # candidate, where the name asked for keeps them (upstream image-rs).
        found = {(lookaside.url, ref.repository): (ref, lookaside)
                 for ref in (target.fetched, target.requested)
                 if (lookaside := self.sigstore.lookaside_for(ref)) is not None}
        stores = list(found.values())  # each store and repository once
        if not stores:
            return RequirementOutcome(
                requirement.type, False,
                f"no signature store (sigstore/lookaside) is configured for {target.fetched.name} "
                "in the sigstore config, so no signature can be found")
        stored = [signature for ref, lookaside in stores for signature in await simple.read_signatures(
            lookaside.url, ref.repository, target.manifest_digest, target.client.transport)]

        def gpg(signature: simple.StoredSignature) -> _Signed:
            message = simple.verify_message(signature.data, keyring)
            return _Signed(message.payload, message.fingerprint, message.fingerprint)

        candidates = [(s.location, functools.partial(gpg, s)) for s in stored]
        where = " or ".join(
            f"{simple.signature_url(lookaside.url, ref.repository, target.manifest_digest, 1)} "
            f"(lookaside from {lookaside.source}, scope {lookaside.scope})" for ref, lookaside in stores)
        return self._first_accepted(requirement, target, candidates, SIMPLE_SIGNING_TYPE,
                                    (target.manifest_digest,), f"no signature at {where}")

    async def _sigstore_signed(self, requirement: Requirement, target: VerifyTarget) -> RequirementOutcome:
        assert requirement.keys is not None
        keys = await asyncio.to_thread(self.keys.cosign, requirement.keys)
        # The platform manifest, and the index the tag may point at (upstream image-rs reads the
        # signature of the digest the tag resolves to; a signed index pins its manifests).
        digests = (target.manifest_digest,) + ((target.index_digest,) if target.index_digest else ())
        attached = [signature for digest in digests for signature in
                    await cosign.read_cosign_signatures(target.client, target.fetched.repository, digest)]

        def verify(signature: cosign.CosignSignature) -> _Signed:
            key = cosign.verify_cosign(signature, keys)
            return _Signed(signature.payload, key.source, key.fingerprint)

        candidates = [(s.location, functools.partial(verify, s)) for s in attached]
        tags = " or ".join(f"{target.fetched.name}:{cosign.signature_tag(d)}" for d in digests)
        return self._first_accepted(requirement, target, candidates, COSIGN_TYPE, digests,
                                    f"no cosign signature ({tags} not found)")

    def _first_accepted(
        self, requirement: Requirement, target: VerifyTarget,
        candidates: Sequence[tuple[str, Callable[[], _Signed]]], payload_type: str,
        digests: tuple[str, ...], missing: str,
    ) -> RequirementOutcome:
        """The first signature that verifies and whose claim fits; else why none did."""
        rejections = []
        for location, check in candidates:
            try:
                signed = check()
                claim = parse_payload(signed.payload, payload_type)
                self._check_claim(requirement, claim, target, digests)
            except (simple.SignatureInvalid, PayloadError) as err:
                rejections.append(f"{location}: {err}")
                continue
            return RequirementOutcome(requirement.type, True,
                                      f"signed by {signed.signer} as {shown(claim.docker_reference)}",
                                      [signed.fingerprint], location)
        if not rejections:
            return RequirementOutcome(requirement.type, False, missing)
        more = f" (and {len(rejections) - MAX_REASONS} more)" if len(rejections) > MAX_REASONS else ""
        return RequirementOutcome(requirement.type, False,
                                  f"no signature is accepted: {'; '.join(rejections[:MAX_REASONS])}{more}")

    @staticmethod
    def _check_claim(requirement: Requirement, claim: SignedClaim, target: VerifyTarget,
                     digests: tuple[str, ...]) -> None:
        if claim.manifest_digest not in digests:
            raise PayloadError(f"it signs manifest {clip(claim.manifest_digest)}, not {target.manifest_digest} "
                               "(a signature of another image)")
        assert requirement.identity is not None
        if not requirement.identity.matches(target.requested, claim.docker_reference):
            raise PayloadError(f"its identity {shown(claim.docker_reference)} does not match "
                               f"{target.requested} under signedIdentity {requirement.identity}")


def build_verifier(image_config: ImageConfig, resolver: ResourceGetter, work_dir: Path) -> Verifier | None:
    """The verifier for ``[image]``, or None when no policy is configured (no verification step,
    as upstream).  A policy URI that cannot be read refuses the pull (its error propagates)."""
    policy = load_policy(image_config, resolver)
    if policy is None:
        return None
    return Verifier(policy, load_sigstore(image_config, resolver, work_dir), resolver)


def load_policy(image_config: ImageConfig, resolver: ResourceGetter) -> Policy | None:
    uri = image_config.image_security_policy_uri
    if uri:
        return Policy.parse(resolver.get(uri), uri)
    if image_config.image_security_policy:
        return Policy.parse(image_config.image_security_policy.encode(), INLINE_POLICY)
    return None


def load_sigstore(image_config: ImageConfig, resolver: ResourceGetter, work_dir: Path) -> SigstoreConfig:
    uri = image_config.sigstore_config_uri
    inline: tuple[bytes, str] | None = None
    if uri:
        inline = (resolver.get(uri), uri)
    elif image_config.sigstore_config:
        inline = (image_config.sigstore_config.encode(), INLINE_SIGSTORE)
    return load_sigstore_config(inline, work_dir)
