"""Image reference grammar and normalisation (coco-behaviour.md §3.3 step 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestpull.errors import ConfigError, InvalidReferenceError
from guestpull.reference import Reference, parse_reference

SHA256 = "sha256:" + "f" * 64
SHA384 = "sha384:" + "a" * 96
SHA512 = "sha512:" + "0" * 128


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("foo/bar", "docker.io", "foo/bar", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/foo/bar:x", "docker.io", "foo/bar", "x", None),
        ("localhost/foo", "localhost", "foo", "latest", None),
        ("localhost:5000/foo/bar:v1", "localhost:5000", "foo/bar", "v1", None),
        ("127.0.0.1:5000/some-image", "127.0.0.1:5000", "some-image", "latest", None),
        ("[::1]:5000/img:t", "[::1]:5000", "img", "t", None),
        ("[::1]/img", "[::1]", "img", "latest", None),
        ("[2001:db8::1]:443/a/b", "[2001:db8::1]:443", "a/b", "latest", None),
        ("test.com:tag", "docker.io", "library/test.com", "tag", None),
        ("test.com:5000", "docker.io", "library/test.com", "5000", None),
        ("test:5000/repo", "test:5000", "repo", "latest", None),
        (f"test:5000/repo@{SHA256}", "test:5000", "repo", None, SHA256),
        (f"test:5000/repo:tag@{SHA256}", "test:5000", "repo", "tag", SHA256),
        (f"quay.io/a/b@{SHA384}", "quay.io", "a/b", None, SHA384),
        (f"quay.io/a/b:t@{SHA512}", "quay.io", "a/b", "t", SHA512),
        ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
        ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", "latest", None),
        ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io",
         "test.example.com/my-app", "test.example.com", None),
        ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
        ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
        ("a__b/c--d/e.f", "docker.io", "a__b/c--d/e.f", "latest", None),
        ("Example.COM/foo", "Example.COM", "foo", "latest", None),
    ],
)
def test_parse_table(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("Foo/bar", "must be lowercase"),
        ("example.com/Foo/bar", "must be lowercase"),
        ("busybox:", "tag after ':' is empty"),
        ("busybox:-x", "tag '-x' is invalid"),
        ("busybox:" + "a" * 129, "is invalid"),
        ("busybox@sha256:" + "f" * 63, "64"),
        ("busybox@sha384:" + "f" * 64, "96"),
        ("busybox@sha512:" + "f" * 64, "128"),
        ("busybox@md5:" + "f" * 32, "not supported"),
        ("busybox@sha256", "not of the form"),
        ("busybox@sha256:" + "F" * 64, "lower-case"),
        ("busybox@" + SHA256 + "@" + SHA256, "more than one '@'"),
        ("bad_host.-x.com:5000/foo", "not a valid host"),
        ("foo//bar", "invalid"),
        ("foo/", "invalid"),
        ("/foo", "invalid"),
        ("foo bar", "whitespace"),
        ("[::1]:5000", "invalid"),
        ("example.com/" + "a" * 256, "at most 255"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_string_form_and_properties() -> None:
    ref = parse_reference(f"localhost:5000/a/b:v1@{SHA256}")
    assert str(ref) == f"localhost:5000/a/b:v1@{SHA256}"
    assert ref.name == "localhost:5000/a/b"
    assert ref.manifest_ref == SHA256
    tagged = parse_reference("busybox")
    assert str(tagged) == "docker.io/library/busybox:latest"
    assert tagged.manifest_ref == "latest"


# --- property tests ---------------------------------------------------------------------

alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(separator), draw(alnum)]
    return "".join(parts)


domain_label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?\Z")
port = st.integers(1, 65535).map(lambda p: f":{p}")


@st.composite
def domains(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["dotted", "localhost", "ipv6", "port"]))
    if kind == "dotted":
        host = ".".join(draw(st.lists(domain_label, min_size=2, max_size=3)))
    elif kind == "localhost":
        host = "localhost"
    elif kind == "ipv6":
        host = "[" + draw(st.sampled_from(["::1", "2001:db8::2", "fe80::a:b"])) + "]"
    else:
        host = draw(domain_label)
        return host + draw(port)
    return host + draw(st.one_of(st.just(""), port))


tags = st.from_regex(r"\A[\w][\w.-]{0,20}\Z", fullmatch=True).filter(str.isascii)
digests = st.sampled_from(sorted({"sha256": 64, "sha384": 96, "sha512": 128}.items())).flatmap(
    lambda alg: st.text("0123456789abcdef", min_size=alg[1], max_size=alg[1]).map(
        lambda hexpart: f"{alg[0]}:{hexpart}"
    )
)


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    text = "/".join(draw(st.lists(path_components(), min_size=1, max_size=3)))
    domain = draw(st.one_of(st.none(), domains()))
    if domain is not None:
        text = f"{domain}/{text}"
    tag = draw(st.one_of(st.none(), tags))
    if tag is not None:
        text += f":{tag}"
    digest = draw(st.one_of(st.none(), digests))
    if digest is not None:
        text += f"@{digest}"
    return text


@given(reference_texts())
def test_round_trip_and_idempotent(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)


@given(reference_texts())
def test_normalised_form_invariants(text: str) -> None:
    ref = parse_reference(text)
    assert ref.tag is not None or ref.digest is not None
    assert ref.registry != "index.docker.io"
    if ref.registry == "docker.io":
        assert "/" in ref.repository
    assert ref.repository == ref.repository.lower()
    if "@" not in text and ":" not in text.rsplit("/", 1)[-1]:
        assert ref.tag == "latest"


@given(st.text(max_size=40))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as err:
        assert "invalid image reference" in str(err)
    else:
        assert parse_reference(str(ref)) == ref
