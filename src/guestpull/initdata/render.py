"""Writing Init-Data TOML: the outer document and the embedded TOML files.

Deterministic (the same input gives the same bytes, hence the same digest), readable (each
embedded file as a multi-line string whose line N is line N below its key), and written with
tomlkit, which does the quoting and escaping.  :func:`guestpull.initdata.build` re-parses
what it writes.
"""

from __future__ import annotations

import re
from typing import Any

from guestpull.errors import ConfigError, Location
from guestpull.initdata.document import VERSION

def render_document(algorithm: str, data: dict[str, str]) -> str:
    """The outer Init-Data TOML, each embedded file as a multi-line string."""
    entries = [f"{_toml_key(key)} = {_multiline_string(value)}" for key, value in data.items()]
    header = f'version = "{VERSION}"\nalgorithm = {_basic_string(algorithm)}\n\n[data]\n'
    return header + "\n\n".join(entries) + "\n"


def dump_toml(table: dict[str, Any]) -> str:
    """TOML text for a table of tables, arrays of tables and scalars (key order kept)."""
    return "\n".join(_table_blocks(table, ())).strip("\n") + "\n"


def _table_blocks(
    table: dict[str, Any], path: tuple[str, ...], header: str | None = None
) -> list[str]:
    scalars = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_table_array(v)]
    # A table holding only sub-tables is implied by their headers; an empty one must be written.
    lines = [header] if header and (scalars or not table) else []
    lines += [f"{_toml_key(k)} = {_toml_value(v, f'{_dotted(path + (k,))}')}" for k, v in scalars]
    blocks = ["\n".join(lines) + "\n"] if lines else []
    for key, value in table.items():
        sub = path + (key,)
        if _is_table(value):
            blocks += _table_blocks(value, sub, f"[{_dotted(sub)}]")
        elif _is_table_array(value):
            for item in value:
                blocks += _table_blocks(item, sub, f"[[{_dotted(sub)}]]")
    return blocks


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_toml_key(part) for part in path)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _basic_string(key)


def _toml_value(value: Any, field: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _multiline_basic_string(value) if "\n" in value else _basic_string(value)
    if isinstance(value, list):
        items = [_toml_value(item, field) for item in value]
        if any("\n" in item for item in items) or len(", ".join(items)) > 80:
            return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
        return "[" + ", ".join(items) + "]"
    raise ConfigError(
        f"cannot write a {type(value).__name__} value in generated TOML",
        location=Location(field=field),
    )


_NAMED_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}


def _escape_char(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def _basic_string(value: str) -> str:
    return '"' + "".join(_escape_char(c) for c in value) + '"'


def _multiline_basic_string(value: str) -> str:
    # Newlines and tabs stay as they are; everything else that needs it is escaped.
    body = "".join(c if c in "\n\t" else _escape_char(c) for c in value)
    return '"""\n' + body + '"""'


def _multiline_string(value: str) -> str:
    """A ''' literal (the content verbatim), or an escaped basic string when it cannot be one."""
    literal_ok = (
        "'''" not in value
        and not value.endswith("'")
        and not any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value)
    )
    if literal_ok:
        return "'''\n" + value + "'''"
    return _multiline_basic_string(value)
