"""Registry authentication: challenges, Basic, and the Bearer token flow with its cache.

Unlike upstream (oci-client), a failed token request is an error that names the realm and
the HTTP status; it is never swallowed into an anonymous retry.  No message, log line or
``repr`` here contains a password or a token.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from guestpull.url import URL

from guestpull.errors import AuthError, GuestpullError, clip, shown
from guestpull.strictjson import load_json

# RFC 7235 auth-param: token "=" ( token / quoted-string )
_PARAM = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*,?')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_\-]*)(?:\s+|$)")

DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, as upstream, when a token says nothing about expiry
EXPIRY_MARGIN = 5.0  # renew a little early so a token does not expire in flight
MAX_TOKEN_RESPONSE = 1 << 20  # containers/image's MaxAuthTokenBodySize
#: RFC 6750 ``b64token``: what a Bearer token may hold.  Anything else (a CR/LF, a space, a
#: quote) could split or extend the Authorization header it is sent in.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Credentials(Protocol):
    """What ``authfile.AuthFile.lookup`` returns: a user name and a password."""

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (several may share a header)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme_match = _SCHEME.match(header, pos)
        if not scheme_match:
            break
        params: dict[str, str] = {}
        pos = scheme_match.end()
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if not param:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme_match.group(1).lower(), params))
        # Skip a separating comma between challenges.
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return challenges


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer if offered, else Basic, else None (an unknown scheme we cannot answer)."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


# --- tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_at: float

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"


class TokenCache:
    """Bearer tokens by (registry, repository, scope), dropped when they expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], Token] = {}

    def get(self, registry: str, repository: str, scope: str) -> Token | None:
        key = (registry, repository, scope)
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.expires_at - EXPIRY_MARGIN <= self._clock():
            del self._tokens[key]
            return None
        return token

    def put(self, registry: str, repository: str, scope: str, token: Token) -> None:
        self._tokens[(registry, repository, scope)] = token

    def now(self) -> float:
        return self._clock()


def token_from_response(body: bytes, *, now: float, wall_now: float | None = None) -> Token:
    """Parse a token endpoint's JSON (``token`` wins over ``access_token``) and its lifetime.

    Lifetime: ``expires_in`` if given; else the JWT ``exp`` claim; else 60 s.
    ``now`` is on the cache's clock; ``wall_now`` (Unix time) converts a JWT ``exp``.
    """
    doc = load_json(body, "token response", error=AuthError)
    if not isinstance(doc, dict):
        raise AuthError("the token response is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthError("the token response has no token or access_token")
    if not _B64TOKEN.fullmatch(value):
        raise AuthError("the token in the token response has characters a Bearer token cannot hold")
    lifetime = _lifetime(doc.get("expires_in"), value, wall_now if wall_now is not None else time.time())
    return Token(value, now + lifetime)


def _lifetime(expires_in: object, token: str, wall_now: float) -> float:
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        return min(_finite(expires_in), _MAX_LIFETIME)
    exp = jwt_expiry(token)
    if exp is not None:
        return min(max(exp - wall_now, 0.0), _MAX_LIFETIME)
    return DEFAULT_TOKEN_LIFETIME


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (read, not verified: the registry verifies it), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = load_json(base64.urlsafe_b64decode(payload), "token claims", error=AuthError)
    except (binascii.Error, ValueError, AuthError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return _finite(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


#: A token is renewed at least daily, whatever it claims (and 1e400 is not a lifetime).
_MAX_LIFETIME = 86400.0


def _finite(value: float) -> float:
    number = float(min(value, 1e300))  # an int of 400 digits does not fit a float
    return number if math.isfinite(number) else 1e300


def token_url(challenge: Challenge, scope: str) -> URL:
    """The token request URL: the realm with ``service`` and ``scope`` added to its query."""
    unusable = AuthError(f"the registry's Bearer challenge has an unusable realm {shown(challenge.realm)}")
    if not challenge.realm.isprintable():  # CR/LF or other controls: never into a request line
        raise unusable
    try:
        realm = URL(challenge.realm)
        if realm.scheme not in ("http", "https") or not realm.host:
            raise unusable
        query = dict(realm.query)
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        query["scope"] = scope
        return realm.with_query(query)
    except ValueError:
        raise unusable from None


def realm_for_message(challenge: Challenge) -> str:
    """The realm without userinfo or query, safe to print."""
    try:
        realm = URL(challenge.realm)
        return clip(str(realm.without_userinfo().with_query(None)) if realm.host else challenge.realm)
    except ValueError:
        return shown(challenge.realm)


def auth_failure(
    registry: str, repository: str, challenge: Challenge | None, *, status: int, had_credentials: bool
) -> GuestpullError:
    """The AuthError for a request the registry still refuses after authenticating."""
    how = "with the credentials from the auth file" if had_credentials else "anonymously"
    realm = f" (realm {shown(challenge.realm)}, {clip(challenge.scheme)})" if challenge and challenge.realm else ""
    hint = None if had_credentials else "add credentials for this registry to the auth file"
    verb = "denied access to" if status == 403 else "refused"
    return AuthError(
        f"{registry} {verb} {repository} {how}: HTTP {status}{realm}",
        hint=hint,
    )
