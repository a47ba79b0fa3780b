"""The Init-Data document: parse and validate it, keeping the exact bytes it came from.

An Init-Data document is TOML with ``version``, ``algorithm`` and a ``[data]`` table of
strings (coco-behaviour.md §1).  Its digest is the hash named by ``algorithm`` over the exact
bytes of the document, never over a re-serialisation, so :class:`InitData` keeps ``raw``.
Errors point at the outer file's line, also for a problem inside an embedded ``cdh.toml``;
judging what an upstream guest will refuse lives in :mod:`guestpull.lint`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestpull.config import AaConfig, CdhConfig, parse_aa_config, parse_cdh_config, parse_toml
from guestpull.errors import ConfigError, Location

VERSION = "0.1.0"
ALGORITHMS: tuple[str, ...] = ("sha256", "sha384", "sha512")

AA_KEY = "aa.toml"
CDH_KEY = "cdh.toml"
POLICY_KEY = "policy.rego"
KNOWN_DATA_KEYS: tuple[str, ...] = (AA_KEY, CDH_KEY, POLICY_KEY)
# The embedded files that are TOML and must parse on their own.
TOML_DATA_KEYS: tuple[str, ...] = (AA_KEY, CDH_KEY)

_BOM = b"\xef\xbb\xbf"


def data_field(key: str) -> str:
    """The dotted name of a data key as a user writes it: ``data."cdh.toml"``."""
    return f'data."{key}"'


@dataclass(frozen=True)
class InitData:
    """A parsed, structurally valid Init-Data document and the exact bytes it came from."""

    raw: bytes
    version: str
    algorithm: str
    data: dict[str, str]
    source: str

    @classmethod
    def parse(cls, raw: bytes, source: str) -> InitData:
        """Parse and validate; ConfigError names the file, field and line of the first problem.

        Checks what the kata agent checks (version, algorithm, data is a table of strings) and
        that the embedded ``aa.toml``/``cdh.toml`` are TOML.  Their *content* (the config
        models) is checked by :meth:`cdh_config`/:meth:`aa_config` and by the linter.
        """
        text = decode_text(raw, source)
        doc = _parse_outer(text, source)
        version = _check_version(doc, text, source)
        algorithm = _check_algorithm(doc, text, source)
        data = _check_data(doc, text, source)
        initdata = cls(raw=raw, version=version, algorithm=algorithm, data=data, source=source)
        for key in TOML_DATA_KEYS:
            if key in data:
                initdata.parse_embedded(key)
        return initdata

    # --- the parts -------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")

    @property
    def aa_toml(self) -> str | None:
        return self.data.get(AA_KEY)

    @property
    def cdh_toml(self) -> str | None:
        return self.data.get(CDH_KEY)

    @property
    def policy(self) -> str | None:
        return self.data.get(POLICY_KEY)

    @property
    def unknown_data_keys(self) -> list[str]:
        """Data keys the agent ignores (they still count in the digest)."""
        return [key for key in self.data if key not in KNOWN_DATA_KEYS]

    def digest(self) -> bytes:
        """The hash named by ``algorithm`` over the exact bytes of the document."""
        return hashlib.new(self.algorithm, self.raw).digest()

    def embedded_source(self, key: str) -> str:
        """The label for errors inside an embedded file: ``initdata.toml: data."cdh.toml"``."""
        return f"{self.source}: {data_field(key)}"

    def parse_embedded(self, key: str) -> dict[str, Any]:
        """The embedded TOML file ``key`` as a dict; a syntax error points into the outer file."""
        try:
            return parse_toml(self.data[key], self.embedded_source(key))
        except ConfigError as err:
            raise self._embedded_error(key, err) from None

    def cdh_config(self) -> CdhConfig | None:
        """The embedded ``cdh.toml`` as a model, or None when the document has none."""
        if self.cdh_toml is None:
            return None
        self.parse_embedded(CDH_KEY)  # a syntax error gets the outer line first
        return parse_cdh_config(self.cdh_toml, self.embedded_source(CDH_KEY))

    def aa_config(self) -> AaConfig | None:
        if self.aa_toml is None:
            return None
        self.parse_embedded(AA_KEY)
        return parse_aa_config(self.aa_toml, self.embedded_source(AA_KEY))

    # --- positions in the outer file -------------------------------------------------------

    def value_start(self, key: str) -> tuple[int, int] | None:
        """(line, column) in the outer file where the content of ``data[key]`` begins.

        Known only when the value is written verbatim (a literal string, or a basic string
        without escapes), so that line N of the embedded file is line start+N-1 outside.
        """
        return _verbatim_value_start(self.text, key, self.data[key])

    def top_key_line(self, key: str) -> int | None:
        """The outer line of a top-level key such as ``algorithm``."""
        return _top_key_line(self.text, key)

    def key_line(self, key: str) -> int | None:
        """The outer line that holds ``data[key]``'s key, whether or not its value is verbatim."""
        return _key_line(self.text, key)

    def outer_line(self, key: str, inner_line: int) -> int | None:
        """The outer-file line of line ``inner_line`` (1-based) of embedded file ``key``."""
        start = self.value_start(key)
        return None if start is None else start[0] + inner_line - 1

    def _embedded_error(self, key: str, err: ConfigError) -> ConfigError:
        """Re-aim a syntax error at the outer file: its line there, and the line inside."""
        inner = err.location or Location()
        where = data_field(key)
        outer_line = None
        if inner.line is not None:
            where += f" line {inner.line}" + (f", column {inner.column}" if inner.column else "")
            outer_line = self.outer_line(key, inner.line)
        return ConfigError(
            err.message,
            location=Location(file=self.source, field=where, line=outer_line or self.key_line(key)),
        )


def load(path: str | Path) -> InitData:
    """Read and parse an Init-Data file; ConfigError if it cannot be read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read the Init-Data file: {err.strerror}", location=Location(file=str(path))
        ) from None
    return InitData.parse(raw, str(path))


# --- parse helpers ---------------------------------------------------------------------------


def decode_text(raw: bytes, source: str) -> str:
    """``raw`` as text, refused as the guest's TOML reader refuses it (empty, BOM, not UTF-8)."""
    if not raw.strip():
        raise ConfigError(
            "the document is empty; expected version, algorithm and a [data] table",
            location=Location(file=source),
        )
    if raw.startswith(_BOM):
        raise ConfigError(
            "the document starts with a UTF-8 byte order mark, which the guest's TOML parser"
            " rejects",
            location=Location(file=source, line=1, column=1),
            hint="save the file as UTF-8 without BOM",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})",
            location=Location(file=source, line=line),
            hint="Init-Data must be UTF-8 text",
        ) from None


def _parse_outer(text: str, source: str) -> dict[str, Any]:
    try:
        return parse_toml(text, source)
    except ConfigError as err:
        if err.location is not None and err.location.line is None:
            # "at end of document": the last line is where the reader gave up.
            err.location = Location(file=source, line=text.count("\n") + 1)
        raise


def _top_key_line(text: str, key: str) -> int | None:
    match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _check_version(doc: dict[str, Any], text: str, source: str) -> str:
    where = Location(file=source, field="version", line=_top_key_line(text, "version"))
    if "version" not in doc:
        raise ConfigError(f'missing "version"; expected version = "{VERSION}"', location=where)
    version = doc["version"]
    if not isinstance(version, str):
        raise ConfigError(f'"version" must be the string "{VERSION}"', location=where)
    if version != VERSION:
        raise ConfigError(
            f"unsupported version: {version}, expected: {VERSION}",
            location=where,
            hint=f'the kata agent accepts only version = "{VERSION}"',
        )
    return version


def _check_algorithm(doc: dict[str, Any], text: str, source: str) -> str:
    where = Location(file=source, field="algorithm", line=_top_key_line(text, "algorithm"))
    supported = ", ".join(ALGORITHMS)
    if "algorithm" not in doc:
        raise ConfigError(f'missing "algorithm"; expected one of {supported}', location=where)
    algorithm = doc["algorithm"]
    if not isinstance(algorithm, str):
        raise ConfigError(f'"algorithm" must be a string, one of {supported}', location=where)
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"unsupported algorithm: {algorithm}, supported algorithms: {supported}",
            location=where,
            hint=algorithm_hint(algorithm),
        )
    return algorithm


def algorithm_hint(algorithm: str) -> str | None:
    """What to write instead of an unsupported ``algorithm``, when a near miss says so."""
    folded = algorithm.lower().replace("-", "").replace("_", "")
    if folded in ALGORITHMS:
        return f'write algorithm = "{folded}" (lower case, no dash)'
    if folded == "sm3":
        return "the attestation agent knows sm3 but the kata agent does not"
    return None


def _check_data(doc: dict[str, Any], text: str, source: str) -> dict[str, str]:
    if "data" not in doc:
        raise ConfigError(
            "missing the [data] table (it holds aa.toml, cdh.toml and policy.rego)",
            location=Location(file=source, field="data"),
        )
    data = doc["data"]
    if not isinstance(data, dict):
        raise ConfigError(
            "data must be a table of strings",
            location=Location(file=source, field="data", line=_top_key_line(text, "data")),
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"must be a string (the whole file's content), not {_toml_type(value)}",
                location=Location(file=source, field=data_field(key), line=_key_line(text, key)),
            )
    return dict(data)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _key_pattern(key: str) -> str:
    """A data key as written on its line: bare, "basic" or 'literal', optionally data.-dotted."""
    quoted = "|".join(
        [re.escape(f'"{key}"'), re.escape(f"'{key}'")]
        + ([re.escape(key)] if re.fullmatch(r"[A-Za-z0-9_-]+", key) else [])
    )
    return rf"^[ \t]*(?:data[ \t]*\.[ \t]*)?(?:{quoted})[ \t]*=[ \t]*"


def _key_line(text: str, key: str) -> int | None:
    match = re.search(_key_pattern(key), text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _verbatim_value_start(text: str, key: str, value: str) -> tuple[int, int] | None:
    for match in re.finditer(_key_pattern(key), text, re.MULTILINE):
        start = _content_start(text, match.end())
        if start is not None and text.startswith(value, start):
            line = text.count("\n", 0, start) + 1
            column = start - (text.rfind("\n", 0, start) + 1) + 1
            return line, column
    return None


def _content_start(text: str, pos: int) -> int | None:
    """Offset of a string value's first content character, given the offset of its opener."""
    for opener in ("'''", '"""'):
        if text.startswith(opener, pos):
            pos += 3
            # TOML trims a newline right after a multi-line opener.
            if text.startswith("\r\n", pos):
                return pos + 2
            if text.startswith("\n", pos):
                return pos + 1
            return pos
    if text.startswith(("'", '"'), pos):
        return pos + 1
    return None
