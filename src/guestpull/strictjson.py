"""One strict JSON reader for every document that comes from the network or a user.

``json.loads`` is lenient where an attacker profits: it keeps the *last* of two duplicate
keys (serde, which image-rs uses, refuses the document; other parsers keep the first), it
recurses once per nesting level (5,000 nested arrays end in ``RecursionError``), it guesses
UTF-16/32 from the first bytes, and it accepts ``NaN``/``Infinity``.  :func:`load_json`
refuses all of these, so every reader of a digest sees the same document or none.

    doc = load_json(data, "image manifest sha256:…", error=ConfigError)
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from guestpull.errors import ConfigError, GuestpullError, Location, clip, shown

#: Deeper than any real manifest, index, config or token response (they nest < 10 levels),
#: far below the ~1,000 levels where ``json.loads`` runs out of Python stack.
MAX_JSON_DEPTH = 64

# A JSON string, unrolled so the regex engine never backtracks per character.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class _Refused(ValueError):
    """Raised inside ``json.loads`` hooks; turned into the caller's error class."""


def load_json(
    data: bytes | str,
    doc: str,
    *,
    error: type[GuestpullError] = ConfigError,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse ``data`` as strict JSON: UTF-8 without BOM, unique keys, at most ``max_depth`` deep.

    Every failure raises ``error`` (a GuestpullError class) with ``doc`` as the location;
    nothing from :mod:`json` escapes.  The caller bounds the size before reading the bytes.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    text = _utf8_text(raw, doc, error)
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(
            f"JSON nested {depth} levels deep; at most {max_depth} are accepted",
            location=Location(file=doc),
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except _Refused as exc:
        raise error(str(exc), location=Location(file=doc)) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"not valid JSON: {exc.msg}", location=Location(file=doc, line=exc.lineno, column=exc.colno)
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits
        raise error(f"not valid JSON: {clip(str(exc))}", location=Location(file=doc)) from None


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting in ``raw``, brackets inside strings not counted.

    Linear and iterative: strings are cut out with one regex, the remaining brackets summed.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(_STEP[b] for b in brackets), default=0)


def _utf8_text(raw: bytes, doc: str, error: type[GuestpullError]) -> str:
    # RFC 8259 §8.1: JSON exchanged between systems is UTF-8, and a BOM must not be added.
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4]:
        raise error("JSON must be UTF-8 without a byte order mark", location=Location(file=doc))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"JSON must be UTF-8: invalid byte at offset {exc.start}", location=Location(file=doc)
        ) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"duplicate key {shown(duplicate)}: the document is ambiguous")
    return obj


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")
