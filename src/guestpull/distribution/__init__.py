"""The OCI distribution client: transport (session, retries, redirects, proxies), auth (Basic,
Bearer tokens) and the registry API (ping, manifests, verified blobs)."""

from guestpull.distribution.auth import Challenge, TokenCache, parse_challenges
from guestpull.distribution.client import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_SIZE,
    BlobSink,
    FetchedManifest,
    RegistryClient,
)
from guestpull.distribution.transport import (
    ProxySettings,
    RetryPolicy,
    Transport,
    TransportSettings,
    new_session,
    no_proxy_matches,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "MAX_MANIFEST_SIZE",
    "BlobSink",
    "Challenge",
    "FetchedManifest",
    "ProxySettings",
    "RegistryClient",
    "RetryPolicy",
    "TokenCache",
    "Transport",
    "TransportSettings",
    "new_session",
    "no_proxy_matches",
    "parse_challenges",
]
