"""URLs for the registry and KBS clients: an immutable value on the standard library's parser.

Only what guestpull asks of a URL: its parts, its origin, resolving a redirect against it,
appending path segments and setting a query.  The text of a URL is kept as it was given
(already percent-encoded): a presigned blob URL or a realm's query goes on the wire byte for
byte.  Text a registry or a config could slip past a parser is refused instead of cleaned:
``urllib.parse`` silently drops tabs and newlines and strips leading controls (bpo-43882), so
anything outside printable ASCII is a ValueError here before it is split.  Hosts are ASCII:
an internationalised name must be given in its ``xn--`` form.

Why not yarl: it and what it imports (multidict, idna, unicode tables) cost ~9 ms of every
``guestpull pull`` (issue 15), and one less package in a confidential guest's trusted base.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
#: Characters a path segment keeps as they are (RFC 3986 pchar minus "/"): the rest is quoted.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")


class URL:
    """An absolute or relative URL; absolute ones have a lowercase scheme and host."""

    __slots__ = ("_fragment", "_host", "_netloc", "_path", "_port", "_query", "_scheme", "_text",
                 "_userinfo")

    def __init__(self, text: str) -> None:
        if not text.isascii() or not text.isprintable() or " " in text:
            raise ValueError(f"not a URL (characters other than printable ASCII): {text[:80]!r}")
        parts = urlsplit(text)
        self._scheme = parts.scheme.lower()
        self._netloc = parts.netloc
        self._path = parts.path
        self._query = parts.query
        self._fragment = parts.fragment
        userinfo, _, hostport = parts.netloc.rpartition("@")
        self._userinfo: str | None = userinfo if "@" in parts.netloc else None
        self._host: str | None = None
        self._port: int | None = None
        # An authority, maybe empty ("http:///x"); "//" later in a relative path ("a//b") is not one.
        after_scheme = text[len(parts.scheme) + 1:] if parts.scheme else text
        if parts.netloc or after_scheme.startswith("//"):
            self._host, self._port = _host_and_port(hostport)
        if self._scheme in DEFAULT_PORTS and not self._host:
            raise ValueError(f"a {self._scheme} URL needs a host: {text[:80]!r}")
        self._text = text

    # --- parts ---

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def host(self) -> str | None:
        """The host without IPv6 brackets, lowercase; None for a relative URL."""
        return self._host

    @property
    def explicit_port(self) -> int | None:
        return self._port

    @property
    def port(self) -> int | None:
        """The explicit port, else the scheme's default (None if the scheme has none)."""
        return self._port if self._port is not None else DEFAULT_PORTS.get(self._scheme)

    @property
    def user(self) -> str | None:
        """The user name as written (percent-encoded), None without userinfo."""
        return None if self._userinfo is None else self._userinfo.partition(":")[0]

    @property
    def password(self) -> str | None:
        """The password as written (percent-encoded), None when there is none."""
        if self._userinfo is None or ":" not in self._userinfo:
            return None
        return self._userinfo.partition(":")[2]

    @property
    def path(self) -> str:
        """The path as written (percent-encoded)."""
        return self._path

    @property
    def query(self) -> dict[str, str]:
        """The query's parameters, decoded (the last of repeated names wins)."""
        return dict(parse_qsl(self._query, keep_blank_values=True))

    @property
    def path_qs(self) -> str:
        """What an origin-form request line carries: the path (``/`` if empty) and query."""
        path = self._path or "/"
        return f"{path}?{self._query}" if self._query else path

    @property
    def authority(self) -> str:
        """``host[:port]`` for a Host header: brackets around IPv6, the port only if not the default."""
        host = f"[{self._host}]" if self._host and ":" in self._host else self._host or ""
        if self._port is None or self._port == DEFAULT_PORTS.get(self._scheme):
            return host
        return f"{host}:{self._port}"

    def origin(self) -> URL:
        """Scheme, host and port only (explicit default ports dropped): what same-origin compares."""
        return URL(f"{self._scheme}://{self.authority}")

    # --- new URLs ---

    def join(self, reference: URL) -> URL:
        """``reference`` resolved against this URL (RFC 3986 §5), e.g. a redirect's Location."""
        return URL(urljoin(str(self), str(reference)))

    def joinpath(self, *segments: str) -> URL:
        """This URL with ``segments`` appended to its path, each percent-quoted (``/`` too)."""
        base = self._path if self._path.endswith("/") else self._path + "/"
        path = base + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)
        return self._with(path=path, query="", fragment="")

    def __truediv__(self, segment: str) -> URL:
        return self.joinpath(segment)

    def with_query(self, query: Mapping[str, str] | None) -> URL:
        return self._with(query=urlencode(dict(query), quote_via=quote) if query else "")

    def without_userinfo(self) -> URL:
        return self._with(netloc=self._netloc.rpartition("@")[2])

    def without_fragment(self) -> URL:
        return self._with(fragment="")

    def _with(self, *, netloc: str | None = None, path: str | None = None, query: str | None = None,
              fragment: str | None = None) -> URL:
        return URL(urlunsplit((
            self._scheme,
            self._netloc if netloc is None else netloc,
            self._path if path is None else path,
            self._query if query is None else query,
            self._fragment if fragment is None else fragment,
        )))

    # --- a value ---

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"URL({self._text!r})"

    def _key(self) -> tuple[object, ...]:
        return (self._scheme, self._userinfo, self._host, self.port, self._path, self._query, self._fragment)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URL) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _host_and_port(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets); ValueError for a bad host or port."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise ValueError(f"unclosed [ in URL host {hostport[:80]!r}")
        host, rest = hostport[1:close], hostport[close + 1 :]
        ipaddress.IPv6Address(host.split("%", 1)[0])  # ValueError if it is not one
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after the IPv6 address in {hostport[:80]!r}")
        digits = rest[1:] if rest else None
    else:
        host, colon, digits_text = hostport.partition(":")
        digits = digits_text if colon else None
        if not set(host.lower()) <= _HOST_CHARS:  # empty: a file:/// URL (refused by its users)
            raise ValueError(f"bad host in URL: {hostport[:80]!r}")
    port = None
    if digits is not None and digits != "":
        if not digits.isdigit() or not 0 < int(digits) < 65536:
            raise ValueError(f"bad port in URL: {hostport[:80]!r}")
        port = int(digits)
    return host.lower(), port
