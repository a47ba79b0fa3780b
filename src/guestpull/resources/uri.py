"""Resource URI grammar (coco-behaviour.md §8.4, §9.1): a path, ``file://``, or ``kbs[+plugin]://``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from guestpull.errors import ConfigError
from guestpull.url import URL

#: The KBS protocol prefix of every resource request (``KBS_PREFIX`` upstream).
KBS_PREFIX = "kbs/v0"


@dataclass(frozen=True)
class KbsResourceUri:
    """A parsed ``kbs[+plugin]://[host[:port]]/seg/seg/...[?query]``."""

    plugin: str
    host: str
    segments: tuple[str, ...]
    query: str

    @property
    def path(self) -> str:
        """The lookup key: the segments joined with ``/`` (``repo/type/tag``)."""
        return "/".join(self.segments)

    @property
    def request_path(self) -> str:
        """The KBS request path and query: ``/kbs/v0/<plugin>/<path>[?query]``.

        Host and port in the URI are ignored, as upstream: the KBS is ``[kbc] url``.
        """
        path = f"/{KBS_PREFIX}/{self.plugin}/{self.path}"
        return f"{path}?{self.query}" if self.query else path


def is_kbs_uri(uri: str) -> bool:
    scheme = uri.partition("://")[0] if "://" in uri else ""
    return scheme == "kbs" or scheme.startswith("kbs+")


def parse_kbs_uri(uri: str) -> KbsResourceUri:
    """Parse a KBS resource URI (§9.1); ConfigError saying what is wrong."""
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise ConfigError(f"resource URI {uri!r} has no scheme; expected kbs:///repo/type/tag")
    if scheme == "kbs":
        plugin = "resource"
    elif scheme.startswith("kbs+"):
        plugin = scheme[len("kbs+") :]
        if not plugin:
            raise ConfigError(
                f"resource URI {uri!r}: scheme kbs+ needs a plugin name, e.g. kbs+pkcs11"
            )
    else:
        raise ConfigError(f"resource URI {uri!r}: scheme must be kbs or kbs+<plugin>")
    parts = urlsplit(uri)
    path = parts.path[1:]  # drop the one '/' that separates host and path
    if not path:
        raise ConfigError(
            f"resource URI {uri!r} has no resource path; expected kbs:///<repo>/<type>/<tag>"
        )
    return KbsResourceUri(
        plugin=plugin, host=parts.netloc, segments=tuple(path.split("/")), query=parts.query
    )


def check_resource_uri(uri: str) -> None:
    """Raise ConfigError if ``uri`` is not a form :class:`ResourceResolver` can serve."""
    if not uri:
        raise ConfigError("resource URI is empty")
    if "://" not in uri:
        return
    if is_kbs_uri(uri):
        parse_kbs_uri(uri)
        return
    scheme = uri.partition("://")[0]
    if scheme != "file":
        raise ConfigError(
            f"resource URI scheme {scheme!r} is not supported (use a path, file://, or kbs://)"
        )


def check_kbs_url(url: str, *, field: str = "kbc.url") -> str:
    """The KBS base URL without its trailing ``/``; ConfigError if it is not ``http(s)://host[:port][/path]``.

    Upstream appends ``/kbs/v0/...`` to the URL with its trailing slashes trimmed, so a path
    prefix (a KBS behind a reverse proxy) works; a query, fragment or user-info cannot.
    """
    from guestpull.errors import Location

    where = Location(field=field)
    if not url:
        raise ConfigError("the KBS URL is empty; cc_kbc needs it (e.g. https://kbs.example:8080)",
                          location=where)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"the KBS URL {url!r} is not a URL: {err}", location=where) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"the KBS URL {url!r} must start with https:// (or http://)",
                          location=where)
    if not parts.hostname:
        raise ConfigError(f"the KBS URL {url!r} has no host", location=where)
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the KBS URL must not carry user-info (user:password@)", location=where)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"the KBS URL {url!r} must not have a query or fragment", location=where)
    del port  # parsed only to reject a bad port
    try:  # what the client will build its requests from: refuse here what urlsplit let through
        URL(url)  # (tabs/newlines it silently drops, spaces, non-ASCII hosts)
    except ValueError as err:
        raise ConfigError(f"the KBS URL {url!r} is not a URL: {err}", location=where) from None
    return url.rstrip("/")
