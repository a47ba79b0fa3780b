"""guestpull.url: parts, origins, redirects (RFC 3986 §5.4), path segments, queries, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestpull.url import URL


def test_parts_of_registry_urls() -> None:
    url = URL("https://User:p%3Aw@Registry.Example:5000/v2/a%20b?x=1&y=%2F#frag")
    assert (url.scheme, url.host, url.port, url.explicit_port) == ("https", "registry.example", 5000, 5000)
    assert (url.user, url.password) == ("User", "p%3Aw")
    assert url.path_qs == "/v2/a%20b?x=1&y=%2F"  # as written: never re-quoted
    assert url.query == {"x": "1", "y": "/"}
    assert str(url.without_userinfo().without_fragment()) == "https://Registry.Example:5000/v2/a%20b?x=1&y=%2F"


@pytest.mark.parametrize(("text", "host", "port", "authority"), [
    ("http://127.0.0.1/", "127.0.0.1", 80, "127.0.0.1"),
    ("https://127.0.0.1:443/", "127.0.0.1", 443, "127.0.0.1"),
    ("http://[::1]:5000/v2/", "::1", 5000, "[::1]:5000"),
    ("https://[FE80::1]/", "fe80::1", 443, "[fe80::1]"),
    ("http://reg:8080", "reg", 8080, "reg:8080"),
])
def test_hosts_ports_and_the_host_header(text: str, host: str, port: int, authority: str) -> None:
    url = URL(text)
    assert (url.host, url.port, url.authority) == (host, port, authority)
    assert url.path_qs.startswith("/")


def test_origins_compare_scheme_host_and_port() -> None:
    assert URL("https://reg/v2/x").origin() == URL("https://REG:443/other?q").origin()
    assert URL("https://reg/").origin() != URL("http://reg/").origin()
    assert URL("https://reg/").origin() != URL("https://reg:5000/").origin()
    assert str(URL("https://u:p@reg:443/x").origin()) == "https://reg"


# RFC 3986 §5.4: the base and the normal and abnormal examples (those HTTP can carry).
BASE = URL("http://a/b/c/d;p?q")


@pytest.mark.parametrize(("reference", "expected"), [
    ("g", "http://a/b/c/g"), ("./g", "http://a/b/c/g"), ("g/", "http://a/b/c/g/"),
    ("/g", "http://a/g"), ("//g", "http://g"), ("?y", "http://a/b/c/d;p?y"),
    ("g?y", "http://a/b/c/g?y"), ("#s", "http://a/b/c/d;p?q#s"), ("g#s", "http://a/b/c/g#s"),
    (";x", "http://a/b/c/;x"), ("g;x", "http://a/b/c/g;x"), ("", "http://a/b/c/d;p?q"),
    (".", "http://a/b/c/"), ("./", "http://a/b/c/"), ("..", "http://a/b/"), ("../g", "http://a/b/g"),
    ("../..", "http://a/"), ("../../g", "http://a/g"),
    ("../../../g", "http://a/g"), ("/./g", "http://a/g"), ("/../g", "http://a/g"),
    ("g.", "http://a/b/c/g."), (".g", "http://a/b/c/.g"), ("./../g", "http://a/b/g"),
    ("g/./h", "http://a/b/c/g/h"), ("g/../h", "http://a/b/c/h"),
    ("https://other:8443/x?sig=a%2Fb", "https://other:8443/x?sig=a%2Fb"),
])
def test_redirects_resolve_as_rfc_3986_says(reference: str, expected: str) -> None:
    assert str(BASE.join(URL(reference))) == expected


def test_path_segments_are_quoted_one_by_one() -> None:
    base = URL("https://reg:5000")
    url = base.joinpath("v2", "team", "app", "manifests", "sha256:abc")
    assert url.path_qs == "/v2/team/app/manifests/sha256:abc"
    assert (base / "v2" / "").path_qs == "/v2/"
    assert base.joinpath("v2", "a b/c?d#e").path_qs == "/v2/a%20b%2Fc%3Fd%23e"


def test_a_realm_keeps_its_query_and_gains_parameters() -> None:
    realm = URL("https://auth.example/token?account=x")
    url = realm.with_query({**realm.query, "service": "reg", "scope": "repository:a/b:pull"})
    assert url.query == {"account": "x", "service": "reg", "scope": "repository:a/b:pull"}
    assert str(url.with_query(None)) == "https://auth.example/token"


@pytest.mark.parametrize("text", [
    "http://reg/a\tb", "http://reg/a\nb", "\x00http://reg/", " http://reg/", "http://reg/a b",
    "http://rég/", "http://reg:99999/", "http://reg:-1/", "http://reg:8a/", "http://[::1/",
    "http://[nothex]/", "http:///x", "https://", "http://re<g/",
])
def test_refused_rather_than_cleaned(text: str) -> None:
    with pytest.raises(ValueError):
        URL(text)


def test_a_file_url_parses_but_has_no_host() -> None:
    url = URL("file:///etc/passwd")
    assert url.scheme == "file" and not url.host and url.port is None


_segment = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)


@given(st.sampled_from(["http", "https"]),
       st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,2}", fullmatch=True),
       st.one_of(st.none(), st.integers(1, 65535)), st.lists(_segment, max_size=4))
def test_a_built_url_parses_back_to_itself(scheme: str, host: str, port: int | None, segments: list[str]) -> None:
    base = URL(f"{scheme}://{host}" + (f":{port}" if port else ""))
    url = base.joinpath(*segments)
    again = URL(str(url))
    assert again == url and again.host == host and again.port == (port or {"http": 80, "https": 443}[scheme])
    assert again.origin() == base.origin()


def test_a_relative_reference_has_no_host_even_with_double_slashes_in_its_path() -> None:
    url = URL("/v2/a//b?c=//d")
    assert url.host is None and url.path == "/v2/a//b"
    assert str(URL("https://reg/x").join(url)) == "https://reg/v2/a//b?c=//d"


@pytest.mark.parametrize("text", ["a//b", "v2//x?y=//z", "./a//b"])
def test_a_relative_path_with_double_slashes_has_no_authority(text: str) -> None:
    url = URL(text)
    assert url.host is None and url.path == text.partition("?")[0]
