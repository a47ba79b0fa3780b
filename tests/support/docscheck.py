"""Reading the docs for tests/test_docs.py: fenced blocks with their check markers, links, anchors.

The convention is described in docs/CONTRIBUTING-docs.md: every fenced block is preceded by
``<!-- check: KIND [ARGS] -->``; KIND says how the block is exercised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: Every kind a marker may name (docs/CONTRIBUTING-docs.md says what each does).
KINDS = frozenset({
    "run", "output", "file", "initdata", "cdh-toml", "aa-toml", "registries-conf", "auth-json",
    "json", "toml", "parse", "api", "text", "skip",
})

_MARKER = re.compile(r"^<!--\s*check:\s*(?P<kind>[\w-]+)(?P<args>.*?)\s*-->\s*$")
_SESSION = re.compile(r"^<!--\s*docs-session:\s*(?P<value>.+?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    """One fenced block, the marker before it (if any) and where it sits."""

    doc: Path
    line: int  # of the opening fence, 1-based
    info: str  # the fence's info string ("sh", "toml", ...)
    text: str
    kind: str | None
    args: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)} line {self.line}"

    def option(self, name: str, default: str | None = None) -> str | None:
        """``name=value`` from the marker's arguments."""
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S+)", self.args)
        return match.group(1) if match else default

    @property
    def words(self) -> list[str]:
        """The marker's arguments that are not ``name=value``."""
        return [w for w in self.args.split() if "=" not in w]


@dataclass
class Doc:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    session: str | None = None  # "after quickstart": starts from the quick start's state


def doc_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def read_doc(path: Path) -> Doc:
    doc = Doc(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    marker: tuple[str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        session = _SESSION.match(line)
        if session:
            doc.session = session.group("value")
        found = _MARKER.match(line.strip())
        if found:
            marker = (found.group("kind"), found.group("args").strip())
            index += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            end = _closing_fence(lines, index + 1, fence.group("fence"))
            kind, args = marker if marker else (None, "")
            doc.blocks.append(Block(path, index + 1, fence.group("info").strip(),
                                    "\n".join(lines[index + 1 : end]) + "\n", kind, args))
            index = end + 1
            marker = None
            continue
        if line.strip():
            marker = None  # a marker applies only to the block right after it
        index += 1
    return doc


def _closing_fence(lines: list[str], start: int, fence: str) -> int:
    for index in range(start, len(lines)):
        stripped = lines[index].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return index
    return len(lines)


# --- output matching -----------------------------------------------------------------------

ELLIPSIS = "..."


def lines_match(expected: str, actual: str) -> bool:
    """Whether ``actual`` fits ``expected``: a line ``...`` matches any lines (also none);
    ``...`` inside a line matches any text.  Trailing spaces and blank edges are ignored."""
    want = [line.rstrip() for line in expected.strip("\n").splitlines()]
    got = [line.rstrip() for line in actual.strip("\n").splitlines()]
    return _match_from(want, 0, got, 0)


def _match_from(want: list[str], i: int, got: list[str], j: int) -> bool:
    while i < len(want):
        if want[i].strip() == ELLIPSIS:
            return any(_match_from(want, i + 1, got, k) for k in range(j, len(got) + 1))
        if j >= len(got) or not _line_matches(want[i], got[j]):
            return False
        i, j = i + 1, j + 1
    return j == len(got)


def _line_matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split(ELLIPSIS))
    return re.fullmatch(regex, line) is not None


def json_matches(expected: Any, actual: Any) -> bool:
    """``expected`` is a subset of ``actual``: every key it names is there and matches;
    lists match item by item (same length); strings may hold ``...``."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and json_matches(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            json_matches(e, a) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, str) and ELLIPSIS in expected:
        return isinstance(actual, str) and _line_matches(expected, actual)
    return bool(expected == actual)


def json_document(text: str) -> Any:
    return json.loads(text)


# --- links ---------------------------------------------------------------------------------

_INLINE_LINK = re.compile(r"(?<!\!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(?P<target>\S+)")
_AUTOLINK = re.compile(r"<(?P<target>[a-z][a-z0-9+.-]*:[^>\s]+)>", re.IGNORECASE)
_HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"(?P<id>[^\"]+)\"")


@dataclass(frozen=True)
class Link:
    doc: Path
    line: int
    target: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)} line {self.line}"


def links(path: Path) -> Iterator[Link]:
    """Every link target in a Markdown file, outside fenced blocks and code spans."""
    in_fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group("fence")
            if in_fence is None:
                in_fence = marker
            elif marker.startswith(in_fence[0] * len(in_fence)) and not fence.group("info").strip():
                in_fence = None
            continue
        if in_fence is not None:
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        for pattern in (_INLINE_LINK, _IMAGE_LINK, _REF_DEF, _AUTOLINK):
            for match in pattern.finditer(prose):
                yield Link(path, number, match.group("target"))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings (and explicit <a id=...>)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        found.update(m.group("id") for m in _HTML_ANCHOR.finditer(line))
        heading = _HEADING.match(line)
        if not heading:
            continue
        slug = slugify(heading.group("text"))
        count = counts.get(slug, 0)
        counts[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def slugify(heading: str) -> str:
    """GitHub's heading anchor: link markup dropped, lower case, punctuation (also ` and *) removed,
    spaces → -; letters, digits, _ and - stay."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) → text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def link_problem(link: Link) -> str | None:
    """Why a link is not acceptable (outside the repository, missing file or anchor), or None."""
    target = link.target
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return f"{link.where}: link {target!r} points outside the repository"
    path_part, _, anchor = target.partition("#")
    if path_part.startswith("/"):
        return f"{link.where}: link {target!r} is absolute; use a path relative to the file"
    file = (link.doc.parent / path_part).resolve() if path_part else link.doc
    if not file.is_relative_to(REPO):
        return f"{link.where}: link {target!r} leaves the repository"
    if not file.exists():
        return f"{link.where}: link {target!r}: {file.relative_to(REPO)} does not exist"
    if anchor:
        if file.suffix != ".md":
            return f"{link.where}: link {target!r}: anchors are checked in Markdown files only"
        if anchor not in anchors(file):
            return f"{link.where}: link {target!r}: no heading makes the anchor #{anchor}"
    return None
