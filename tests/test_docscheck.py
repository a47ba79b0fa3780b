"""The docs checker itself: each check fails on what it must refuse (tests/test_docs.py uses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.docscheck import (
    REPO,
    Block,
    Link,
    anchors,
    json_matches,
    link_problem,
    lines_match,
    links,
    read_doc,
    slugify,
)
from tests.test_docs import _check_api, _check_content, _check_output, lint_codes


def _page(tmp: Path, text: str) -> Path:
    # Inside the repository, so that relative links resolve against it.
    path = REPO / "docs" / f".test-{tmp.name}.md"
    path.write_text(text)
    return path


@pytest.fixture
def page(shm_path: Path):  # type: ignore[no-untyped-def]
    made: list[Path] = []

    def make(text: str) -> Path:
        path = _page(shm_path, text)
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def test_markers_attach_to_the_next_block_only(page) -> None:  # type: ignore[no-untyped-def]
    doc = read_doc(page(
        "<!-- docs-session: after quickstart -->\n"
        "<!-- check: run exit=5 -->\n```sh\nfalse\n```\n\n"
        "```toml\na = 1\n```\n"
        "<!-- check: initdata expect=a,b file=x.toml -->\n\nsome prose\n```toml\nb = 2\n```\n"
    ))
    assert doc.session == "after quickstart"
    first, second, third = doc.blocks
    assert (first.kind, first.option("exit"), first.text) == ("run", "5", "false\n")
    assert second.kind is None and second.line == 7
    assert third.kind is None  # prose between the marker and the block cancels it


def test_longer_fences_and_tildes(page) -> None:  # type: ignore[no-untyped-def]
    doc = read_doc(page("<!-- check: text -->\n````md\n```sh\nnot a block\n```\n````\n~~~\nx\n~~~\n"))
    assert [b.kind for b in doc.blocks] == ["text", None]
    assert "not a block" in doc.blocks[0].text


@pytest.mark.parametrize(("expected", "actual", "ok"), [
    ("a\nb\n", "a\nb\n", True),
    ("a\nb\n", "a\nc\n", False),
    ("a\n...\nz\n", "a\nb\nc\nz\n", True),
    ("a\n...\nz\n", "a\nz\n", True),
    ("a\n...\n", "b\n", False),
    ("digest sha256:...\n", "digest sha256:abc\n", True),
    ("digest sha256:...\n", "digest sha512:abc\n", False),
    ("a\n", "a\nextra\n", False),
])
def test_lines_match(expected: str, actual: str, ok: bool) -> None:
    assert lines_match(expected, actual) is ok


@pytest.mark.parametrize(("expected", "actual", "ok"), [
    ({"ok": True}, {"ok": True, "more": 1}, True),
    ({"ok": True}, {"ok": False}, False),
    ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
    ({"a": [{"x": "sha256:..."}]}, {"a": [{"x": "sha256:00", "y": 1}]}, True),
    ({"missing": None}, {}, False),
])
def test_json_matches(expected: object, actual: object, ok: bool) -> None:
    assert json_matches(expected, actual) is ok


def test_output_needs_a_run_before_it() -> None:
    block = Block(REPO / "README.md", 3, "text", "x\n", "output")
    assert "no run block" in (_check_output(block, None) or "")
    assert _check_output(block, "y\n") is not None
    assert _check_output(block, "x\n") is None


def test_links(page) -> None:  # type: ignore[no-untyped-def]
    path = page(
        "# Top `heading`, with: punctuation\n\n## Twice\n## Twice\n\n"
        "[ok](#top-heading-with-punctuation) [ok2](#twice-1) [readme](../README.md)\n"
        "[out](https://example.com) [gone](missing.md) [bad anchor](#nope)\n"
        "<https://example.org> [abs](/etc/passwd) `[in code](https://x)`\n"
        "```sh\n[in a block](https://y)\n```\n"
    )
    problems = [p for link in links(path) if (p := link_problem(link))]
    assert len(problems) == 5, problems
    assert any("points outside" in p and "example.com" in p for p in problems)
    assert any("does not exist" in p for p in problems)
    assert any("#nope" in p for p in problems)
    assert any("absolute" in p for p in problems)
    assert "twice-1" in anchors(path)


def test_link_leaving_the_repository() -> None:
    link = Link(REPO / "README.md", 1, "../../etc/passwd")
    assert "leaves the repository" in (link_problem(link) or "")


def test_slugify_like_github() -> None:
    assert slugify("Why a self-signed `CA:true` certificate fails") == "why-a-self-signed-catrue-certificate-fails"
    assert slugify("2. A private CA") == "2-a-private-ca"
    assert slugify("extra_root_certificates [link](x.md)") == "extra_root_certificates-link"


def _block(kind: str, text: str, args: str = "") -> Block:
    return Block(REPO / "docs" / "x.md", 1, "toml", text, kind, args)


def test_config_checks_refuse_misspelt_and_bad_documents() -> None:
    good = '[kbc]\nname = "offline_fs_kbc"\n[image]\nextra_root_certificates = []\n'
    assert _check_content(_block("cdh-toml", good)) is None
    misspelt = good.replace("extra_root_certificates", "extra_root_certificate")
    assert "ignore" in (_check_content(_block("cdh-toml", misspelt)) or "")
    assert _check_content(_block("cdh-toml", "[image]\n")) is not None  # kbc is required
    assert _check_content(_block("registries-conf", '[[registry]]\nprefix = ""\n')) is not None
    assert _check_content(_block("auth-json", '{"auths": {"h": {"auth": "!!"}}}')) is not None
    assert _check_content(_block("json", "{nope")) is not None


_INITDATA = '''version = "0.1.0"
algorithm = "sha256"
[data]
"cdh.toml" = \'\'\'
[kbc]
name = "offline_fs_kbc"
[[image.registry_config.registry]]
prefix = "10.0.0.5:5000"
insecure = true
\'\'\'
'''


def test_initdata_findings_must_be_exactly_the_expected() -> None:
    assert "insecure-without-location" in (_check_content(_block("initdata", _INITDATA)) or "")
    assert _check_content(_block("initdata", _INITDATA, "expect=insecure-without-location")) is None
    assert _check_content(_block("initdata", _INITDATA, "expect=insecure-without-location,x")) is not None


def test_api_blocks_name_what_exists() -> None:
    ok = "class Reference:\n    def name(self) -> str\ndef parse_reference(text: str) -> Reference\n"
    assert _check_api(_block("api", ok, "guestpull.reference")) is None
    bad = "class Reference:\n    def no_such_method(self)\ndef no_such_function()\n"
    problem = _check_api(_block("api", bad, "guestpull.reference")) or ""
    assert "no_such_method" in problem and "no_such_function" in problem


def test_lint_codes_are_found() -> None:
    codes = lint_codes()
    assert {"ca-self-signed", "not-a-trust-anchor", "invalid-certificate", "unknown-key"} <= codes


def test_parse_kind_uses_the_named_parser() -> None:
    good = _block("parse", '{"auths": {}}', "guestpull.authfile:AuthFile.parse")  # bytes, classmethod
    assert _check_content(good) is None
    assert _check_content(_block("parse", '{"auths": 1}', "guestpull.authfile:AuthFile.parse")) is not None
    ok = _block("parse", '[[registry]]\nlocation = "h:5000"\n', "guestpull.config:parse_registries_config")
    assert _check_content(ok) is None
    bad = _block("parse", '[[registry]]\nprefix = ""\n', "guestpull.config:parse_registries_config")
    assert "ConfigError" in (_check_content(bad) or "")
