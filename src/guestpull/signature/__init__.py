"""Image signature policy: containers-policy.json, simple signing (GPG) and cosign keys.

``policy`` parses the policy and finds a reference's scope; ``identity`` matches signed
identities; ``sigstore_config`` says where simple signatures live; ``keys`` loads keyrings and
public keys; ``simple`` and ``cosign`` read and verify the two signature formats; ``verify`` is
the step the puller runs on every pull.
"""

from guestpull.signature.verify import PolicyDecision, Verifier, VerifyTarget, build_verifier

__all__ = ["PolicyDecision", "Verifier", "VerifyTarget", "build_verifier"]
