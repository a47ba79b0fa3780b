"""Registry rules → pull candidates (coco-behaviour.md §3.3, DESIGN.md §2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestpull.config import RegistriesConfig, RegistryRule, parse_registries_config
from guestpull.errors import BlockedError, ConfigError
from guestpull.reference import parse_reference
from guestpull.registries import (
    CandidateKind,
    PullCandidate,
    Scheme,
    matching_rule,
    prefix_match,
    resolve_candidates,
    upstream_prefix_match,
)

# The configuration of the upstream tests (image-rs registry/mod.rs), verbatim.
UPSTREAM_CONFIG = """
unqualified-search-registries = ["docker.io", "example1.com"]

[[registry]]
prefix = "example.com/banned"
blocked = true

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "123456.mirror.aliyuncs.com"
"""


def conf(text: str) -> RegistriesConfig:
    return parse_registries_config(text, "registries.conf")


def summary(candidates: list[PullCandidate]) -> list[tuple[str, str, str]]:
    return [(str(c.reference), str(c.scheme), str(c.kind)) for c in candidates]


def resolve(image: str, text: str) -> list[tuple[str, str, str]]:
    return summary(resolve_candidates(parse_reference(image), conf(text)))


def test_upstream_unqualified_search_example() -> None:
    assert resolve("bar:tag", UPSTREAM_CONFIG) == [
        ("123456.mirror.aliyuncs.com/library/bar:tag", "https", "mirror"),
        ("docker.io/library/bar:tag", "https", "unqualified-search"),
        ("example1.com/bar:tag", "https", "unqualified-search"),
    ]
    assert resolve("foo/bar:tag", UPSTREAM_CONFIG) == [
        ("123456.mirror.aliyuncs.com/foo/bar:tag", "https", "mirror"),
        ("docker.io/foo/bar:tag", "https", "unqualified-search"),
        ("example1.com/foo/bar:tag", "https", "unqualified-search"),
    ]


def test_upstream_mirror_example() -> None:
    assert resolve("example.com/foo/image:tag", UPSTREAM_CONFIG) == [
        ("example-mirror-0.local/mirror-for-foo/image:tag", "https", "mirror"),
        ("example-mirror-1.local/mirrors/foo/image:tag", "http", "mirror"),
        ("internal-registry-for-example.com/bar/image:tag", "https", "remapped"),
    ]


def test_upstream_block_examples() -> None:
    with pytest.raises(BlockedError) as info:
        resolve("example.com/banned/image:tag", UPSTREAM_CONFIG)
    assert "example.com/banned" in str(info.value)
    assert "blocked" in str(info.value)
    assert resolve("example.com/no-banned/image:tag", UPSTREAM_CONFIG)
    assert resolve("example.com/banned-suffix/image:tag", UPSTREAM_CONFIG) == [
        ("example.com/banned-suffix/image:tag", "https", "original")
    ]


def test_no_config_is_one_https_original() -> None:
    ref = parse_reference("127.0.0.1:5000/x")
    assert resolve_candidates(ref, None) == [
        PullCandidate(ref, Scheme.HTTPS, CandidateKind.ORIGINAL, None)
    ]


def test_documented_insecure_location_form() -> None:
    text = '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n'
    candidates = resolve_candidates(parse_reference("127.0.0.1:5000/some-image"), conf(text))
    assert summary(candidates) == [("127.0.0.1:5000/some-image:latest", "http", "original")]
    assert candidates[0].rule is not None and candidates[0].rule.location == "127.0.0.1:5000"


def test_insecure_without_location_is_honoured() -> None:
    # guestpull difference: upstream ignores insecure here and uses HTTPS.
    text = '[[registry]]\nprefix = "registry.local:5000"\ninsecure = true\n'
    assert resolve("registry.local:5000/app:v1", text) == [
        ("registry.local:5000/app:v1", "http", "original")
    ]
    # ...and applies to the unqualified-search seed too
    assert resolve("busybox", '[[registry]]\nprefix = "docker.io"\ninsecure = true\n') == [
        ("docker.io/library/busybox:latest", "http", "unqualified-search")
    ]


def test_prefix_is_anchored() -> None:
    # guestpull difference: upstream matches "example.com" inside "registry.example.com/x"
    # and remaps it to "mirror.local/x" dropping "registry.".
    text = '[[registry]]\nprefix = "example.com"\nlocation = "mirror.local"\n'
    assert resolve("registry.example.com/x:1", text) == [
        ("registry.example.com/x:1", "https", "original")
    ]
    assert upstream_prefix_match("example.com", "registry.example.com/x:1") == len(
        "registry.example.com"
    )
    assert resolve("example.com/x:1", text) == [("mirror.local/x:1", "https", "remapped")]


def test_separator_check() -> None:
    text = '[[registry]]\nprefix = "r.local/app"\nlocation = "m.local/app"\n'
    assert resolve("r.local/apple:1", text) == [("r.local/apple:1", "https", "original")]
    assert resolve("r.local/app:1", text) == [("m.local/app:1", "https", "remapped")]
    assert resolve("r.local/app/sub:1", text) == [("m.local/app/sub:1", "https", "remapped")]
    digest = "sha256:" + "a" * 64
    text = '[[registry]]\nprefix = "r.local/app:1"\nlocation = "m.local/other:2"\n'
    assert resolve(f"r.local/app:1@{digest}", text) == [
        (f"m.local/other:2@{digest}", "https", "remapped")
    ]


def test_longest_match_wins_and_last_on_tie() -> None:
    text = """
[[registry]]
prefix = "r.local"
location = "short.local"
[[registry]]
prefix = "r.local/team"
location = "long.local/t"
[[registry]]
prefix = "r.local"
location = "short-last.local"
"""
    assert resolve("r.local/team/app", text) == [("long.local/t/app:latest", "https", "remapped")]
    assert resolve("r.local/other", text) == [("short-last.local/other:latest", "https", "remapped")]


def test_wildcard_matches_host_only() -> None:
    text = '[[registry]]\nprefix = "*.corp.local"\nlocation = "mirror.local"\ninsecure = true\n'
    assert resolve("a.corp.local/x:1", text) == [("mirror.local/x:1", "http", "remapped")]
    assert resolve("a.b.corp.local:5000/x:1", text) == [
        ("mirror.local:5000/x:1", "http", "remapped")
    ]
    # the domain itself, the domain inside a path, and a longer host do not match
    assert resolve("corp.local/x:1", text) == [("corp.local/x:1", "https", "original")]
    assert resolve("other.local/a.corp.local/x:1", text)[0][2] == "original"
    assert resolve("a.corp.local.evil.io/x:1", text)[0][2] == "original"


def test_wildcard_with_path() -> None:
    assert prefix_match("*.corp.local/team", "a.corp.local/team/app:1") == len("a.corp.local/team")
    assert prefix_match("*.corp.local/team", "a.corp.local/teamx/app:1") is None
    assert prefix_match("*.corp.local/team", "a.corp.local:5000/team/app:1") is None


def test_mirrors_then_location_with_schemes() -> None:
    text = """
[[registry]]
prefix = "quay.io/org"
location = "internal.local:5000/org"
insecure = true
[[registry.mirror]]
location = "m1.local/org"
[[registry.mirror]]
location = "m2.local:5000/org"
insecure = true
"""
    assert resolve("quay.io/org/app@sha256:" + "b" * 64, text) == [
        ("m1.local/org/app@sha256:" + "b" * 64, "https", "mirror"),
        ("m2.local:5000/org/app@sha256:" + "b" * 64, "http", "mirror"),
        ("internal.local:5000/org/app@sha256:" + "b" * 64, "http", "remapped"),
    ]


def test_mirror_only_rule_keeps_original_last() -> None:
    text = '[[registry]]\nprefix = "quay.io"\n[[registry.mirror]]\nlocation = "m.local"\n'
    assert resolve("quay.io/a/b:1", text) == [
        ("m.local/a/b:1", "https", "mirror"),
        ("quay.io/a/b:1", "https", "original"),
    ]


def test_unqualified_search() -> None:
    text = 'unqualified-search-registries = ["r.local:5000", "docker.io"]\n'
    assert resolve("busybox:1", text) == [
        ("r.local:5000/busybox:1", "https", "unqualified-search"),
        ("docker.io/library/busybox:1", "https", "unqualified-search"),
    ]
    # applied even to an explicit docker.io name, as upstream
    assert resolve("docker.io/foo/bar", text)[0][0] == "r.local:5000/foo/bar:latest"
    # not applied to another registry
    assert resolve("quay.io/a", text) == [("quay.io/a:latest", "https", "original")]


def test_unqualified_search_keeps_tag_and_digest() -> None:
    # guestpull difference: upstream drops the digest when a tag is also given.
    digest = "sha256:" + "c" * 64
    text = 'unqualified-search-registries = ["r.local"]\n'
    assert resolve(f"busybox:1@{digest}", text) == [
        (f"r.local/busybox:1@{digest}", "https", "unqualified-search")
    ]
    assert resolve(f"busybox@{digest}", text)[0][0] == f"r.local/busybox@{digest}"


def test_empty_search_list_blocks_docker_io() -> None:
    with pytest.raises(BlockedError, match="unqualified-search-registries is empty"):
        resolve("busybox", "unqualified-search-registries = []\n")


def test_blocked_seed_dropped_others_kept() -> None:
    text = """
unqualified-search-registries = ["docker.io", "r.local"]
[[registry]]
prefix = "docker.io"
blocked = true
"""
    assert resolve("busybox", text) == [("r.local/busybox:latest", "https", "unqualified-search")]
    with pytest.raises(BlockedError, match="prefix 'docker.io'"):
        resolve("busybox", text.replace(', "r.local"', ""))


def test_bad_composed_reference_is_config_error() -> None:
    text = '[[registry]]\nprefix = "r.local"\nlocation = "Bad_Host.local"\n'
    with pytest.raises(ConfigError, match="failed to compose a legal image reference"):
        resolve("r.local/x", text)


def test_upstream_prefix_match_reproduces_upstream() -> None:
    assert upstream_prefix_match("docker.io", "docker.io/library/bar:tag") == 9
    assert upstream_prefix_match("example.com/banned", "example.com/banned-suffix/i:t") is None
    assert upstream_prefix_match("*.b.com", "a.b.com/x:1") == len("a.b.com")
    assert upstream_prefix_match("*.b.com", "x.io/a.b.com/y:1") is None
    assert upstream_prefix_match("b.com", "x.io/a/b.com:1") == len("x.io/a/b.com")
    assert prefix_match("b.com", "x.io/a/b.com:1") is None


def test_matching_rule_none() -> None:
    assert matching_rule("a.io/x:1", [RegistryRule(prefix="b.io", location="c.io")]) is None


# --- mirror limits: pull-from-mirror, mirror-by-digest-only (containers-registries.conf(5)) ---

DIGEST = "sha256:" + "d" * 64
LIMITS = """
[[registry]]
prefix = "quay.io/org"
location = "internal.local/org"
[[registry.mirror]]
location = "any.local/org"
[[registry.mirror]]
location = "digests.local/org"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.local/org"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "all.local/org"
pull-from-mirror = "all"
[[registry.mirror]]
location = "empty.local/org"
pull-from-mirror = ""
"""


def hosts_of(image: str, text: str) -> list[str]:
    return [ref.split("/")[0] for ref, _, _ in resolve(image, text)]


def test_tag_pull_skips_digest_only_mirrors() -> None:
    assert hosts_of("quay.io/org/app:1", LIMITS) == [
        "any.local", "tags.local", "all.local", "empty.local", "internal.local"
    ]


def test_digest_pull_skips_tag_only_mirrors() -> None:
    expected = ["any.local", "digests.local", "all.local", "empty.local", "internal.local"]
    assert hosts_of(f"quay.io/org/app@{DIGEST}", LIMITS) == expected
    # tag and digest: a pull by digest (the digest is checked whichever tag it came under)
    assert hosts_of(f"quay.io/org/app:1@{DIGEST}", LIMITS) == expected
    assert resolve(f"quay.io/org/app:1@{DIGEST}", LIMITS)[1] == (
        f"digests.local/org/app:1@{DIGEST}", "https", "mirror"
    )


def test_mirror_by_digest_only_limits_every_mirror() -> None:
    text = """
[[registry]]
prefix = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m1.local"
[[registry.mirror]]
location = "m2.local:5000"
insecure = true
"""
    # by tag: only the primary location (here the original reference)
    assert resolve("quay.io/a/b:1", text) == [("quay.io/a/b:1", "https", "original")]
    assert resolve(f"quay.io/a/b@{DIGEST}", text) == [
        (f"m1.local/a/b@{DIGEST}", "https", "mirror"),
        (f"m2.local:5000/a/b@{DIGEST}", "http", "mirror"),
        (f"quay.io/a/b@{DIGEST}", "https", "original"),
    ]
    assert hosts_of("quay.io/a/b:1", text.replace("true", "false", 1)) == [
        "m1.local", "m2.local:5000", "quay.io"
    ]


@pytest.mark.parametrize(
    ("pull_from_mirror", "by_tag", "by_digest"),
    [
        # containers/image refuses both keys together; guestpull uses a mirror only for the
        # pulls both allow (never more than either alone).
        ("all", False, True),
        ("digest-only", False, True),
        ("tag-only", False, False),
    ],
)
def test_both_limits_take_the_stricter(pull_from_mirror: str, by_tag: bool, by_digest: bool) -> None:
    text = f"""
[[registry]]
prefix = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.local"
pull-from-mirror = "{pull_from_mirror}"
"""
    assert ("m.local" in hosts_of("quay.io/a/b:1", text)) is by_tag
    assert ("m.local" in hosts_of(f"quay.io/a/b@{DIGEST}", text)) is by_digest


def test_limits_apply_to_unqualified_search_seeds() -> None:
    text = """
unqualified-search-registries = ["r.local", "docker.io"]
[[registry]]
prefix = "r.local"
[[registry.mirror]]
location = "m.local"
pull-from-mirror = "digest-only"
[[registry]]
prefix = "docker.io"
[[registry.mirror]]
location = "hub-mirror.local"
pull-from-mirror = "tag-only"
"""
    assert hosts_of("busybox:1", text) == ["r.local", "hub-mirror.local", "docker.io"]
    assert hosts_of(f"busybox@{DIGEST}", text) == ["m.local", "r.local", "docker.io"]


@pytest.mark.parametrize("value", ["digestonly", "Digest-Only", "none"])
def test_bad_pull_from_mirror_is_config_error_naming_field_and_line(value: str) -> None:
    text = f'[[registry]]\nprefix = "quay.io"\n[[registry.mirror]]\nlocation = "m.local"\npull-from-mirror = "{value}"\n'
    with pytest.raises(ConfigError) as info:
        conf(text)
    location = info.value.location
    assert location is not None
    assert (location.file, location.field, location.line) == (
        "registries.conf", "registry[0].mirror[0].pull-from-mirror", 5
    )
    assert "'digest-only'" in info.value.message and repr(value) in info.value.message


@pytest.mark.parametrize("value", ['"maybe"', "[true]", "2"])
def test_bad_mirror_by_digest_only_is_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(f'[[registry]]\nprefix = "quay.io"\nmirror-by-digest-only = {value}\n')
    assert info.value.location is not None
    assert info.value.location.field == "registry[0].mirror-by-digest-only"
    assert info.value.location.line == 3


# --- property tests ---------------------------------------------------------------------

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=5)
hosts = st.lists(label, min_size=2, max_size=3).map(".".join)
paths = st.lists(label, min_size=1, max_size=3).map("/".join)


@st.composite
def references(draw: st.DrawFn) -> str:
    host = draw(hosts) + draw(st.sampled_from(["", ":5000"]))
    return f"{host}/{draw(paths)}:{draw(label)}"


@given(references())
def test_no_rules_one_https_original(image: str) -> None:
    ref = parse_reference(image)
    for config in (None, RegistriesConfig()):
        assert resolve_candidates(ref, config) == [
            PullCandidate(ref, Scheme.HTTPS, CandidateKind.ORIGINAL, None)
        ]


@given(references(), st.one_of(hosts, st.builds(lambda h, p: f"{h}/{p}", hosts, paths)))
def test_prefix_never_matches_a_reference_not_starting_with_it(image: str, prefix: str) -> None:
    text = str(parse_reference(image))
    length = prefix_match(prefix, text)
    if not text.startswith(prefix):
        assert length is None
    else:
        assert length is None or length == len(prefix)
    # a host prefix maps to a host, a path prefix to a path (else the result is no reference)
    location = "mirror.local/m" if "/" in prefix else "mirror.local"
    rule = RegistryRule(prefix=prefix, location=location)
    candidates = resolve_candidates(parse_reference(image), RegistriesConfig(registry=[rule]))
    if length is None:
        assert [c.kind for c in candidates] == [CandidateKind.ORIGINAL]
    else:
        assert [c.kind for c in candidates] == [CandidateKind.REMAPPED]
        assert str(candidates[0].reference) == location + text[len(prefix) :]


@given(references(), st.booleans(), st.booleans())
def test_self_rule_scheme_follows_insecure(image: str, with_location: bool, insecure: bool) -> None:
    ref = parse_reference(image)
    rule = RegistryRule(
        prefix=ref.registry, location=ref.registry if with_location else "", insecure=insecure
    )
    candidates = resolve_candidates(ref, RegistriesConfig(registry=[rule]))
    assert candidates == [
        PullCandidate(ref, Scheme.HTTP if insecure else Scheme.HTTPS, CandidateKind.ORIGINAL, rule)
    ]


limits = st.sampled_from(["", "all", "digest-only", "tag-only"])


@given(references(), st.booleans(), st.booleans(), st.lists(limits, max_size=4))
def test_mirror_limits_only_remove_mirrors(
    image: str, by_digest: bool, by_digest_only: bool, mirror_limits: list[str]
) -> None:
    ref = parse_reference(image + (f"@{DIGEST}" if by_digest else ""))
    mirrors = [{"location": f"m{n}.local", "pull-from-mirror": limit} for n, limit in enumerate(mirror_limits)]
    raw = {"registry": [{"prefix": ref.registry, "mirror": mirrors, "mirror-by-digest-only": by_digest_only}]}
    limited = resolve_candidates(ref, RegistriesConfig.model_validate(raw))
    for mirror in mirrors:
        mirror.pop("pull-from-mirror")
    raw["registry"][0].pop("mirror-by-digest-only")
    unlimited = resolve_candidates(ref, RegistriesConfig.model_validate(raw))
    # the same candidates in the same order, some mirrors left out; the primary always last
    assert [c for c in unlimited if c in limited] == limited
    assert limited[-1] == unlimited[-1] and limited[-1].kind is CandidateKind.ORIGINAL
    kept = {c.reference.registry for c in limited if c.kind is CandidateKind.MIRROR}
    for number, limit in enumerate(mirror_limits):
        forbidden = (limit == "digest-only" and not by_digest) or (limit == "tag-only" and by_digest)
        forbidden = forbidden or (by_digest_only and not by_digest)
        assert (f"m{number}.local" in kept) is not forbidden
