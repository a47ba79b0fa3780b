"""Writing Init-Data TOML: the outer document and the embedded TOML files.

Deterministic (the same input gives the same bytes, hence the same digest), readable (each
embedded file as a multi-line string whose line N is line N below its key), and written with
tomlkit, which does the quoting and escaping.  :func:`guestpull.initdata.build` re-parses
what it writes.
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.exceptions import ConvertError, InvalidStringError
from tomlkit.items import AoT, Array, Item, String, StringType, Table, Trivia

from guestpull.errors import ConfigError, Location
from guestpull.initdata.document import VERSION

# An array is written one item per line when it is longer than this on one line.
_ARRAY_WIDTH = 80


def render_document(algorithm: str, data: dict[str, str]) -> str:
    """The outer Init-Data TOML, each embedded file as a multi-line string."""
    document = tomlkit.document()
    document.add("version", VERSION)
    document.add("algorithm", algorithm)
    document.add(tomlkit.nl())
    files = tomlkit.table()
    for key, value in data.items():
        if files:
            files.add(tomlkit.nl())  # a blank line between embedded files
        files.add(key, _embedded_file(value))
    document.add("data", files)
    return document.as_string()


def dump_toml(table: dict[str, Any]) -> str:
    """TOML text for a table of tables, arrays of tables and scalars (key order kept)."""
    return tomlkit.dumps(_table(table, "")).strip("\n") + "\n"


def _embedded_file(value: str) -> String:
    """A ''' literal (the content verbatim), or an escaped basic string when it cannot be one."""
    # A literal cannot escape a quote next to its closing quotes or a CR (see _quoted_body).
    if not value.endswith("'") and "\r" not in value:
        try:
            return _multiline(value, literal=True)
        except InvalidStringError:  # control characters or ''' in the content
            pass
    return _multiline(value, literal=False)


def _multiline(value: str, *, literal: bool) -> String:
    """A multi-line string whose content starts on the line after the opening quotes."""
    body = _quoted_body(value, literal=literal)
    # Readers drop a newline right after the opener, so it changes nothing in the value; it
    # makes line N of an embedded file line N below its key.  tomlkit already wrote one when
    # the value itself starts with a newline.
    if not body.startswith("\n"):
        body = "\n" + body
    return String(StringType.select(literal, multiline=True), value, body, Trivia())


def _quoted_body(value: str, *, literal: bool) -> str:
    """What goes between the quotes of a multi-line string, checked and escaped by tomlkit."""
    if literal:
        item = tomlkit.string(value, literal=True, multiline=True)
        return item.as_string()[3:-3]
    # Quotes next to the closing quotes are valid TOML 1.0 but end the string early for
    # readers older than 1.0-rc.1: escape them.
    content = value.rstrip('"')
    item = tomlkit.string(content, multiline=True)
    body = item.as_string()[3:-3] + '\\"' * (len(value) - len(content))
    # TOML lets a reader turn a CRLF inside a multi-line string into LF (tomllib does), which
    # would change the file the guest writes; an escaped CR means one thing to every reader.
    return body.replace("\r", "\\r")


def _table(table: dict[str, Any], field: str) -> Table:
    # A table holding only sub-tables is implied by their headers; an empty one is written.
    implied = bool(table) and all(_is_table(v) or _is_table_array(v) for v in table.values())
    out = tomlkit.table(is_super_table=implied)
    for key, value in table.items():
        out.add(key, _value(value, f"{field}.{key}" if field else key))
    return out


def _value(value: Any, field: str) -> Item:
    if _is_table(value):
        return _table(value, field)
    if _is_table_array(value):
        return AoT([_table(item, field) for item in value])
    if isinstance(value, list):
        return _array(value, field)
    if isinstance(value, str) and "\n" in value:
        return _multiline(value, literal=False)
    try:
        return tomlkit.item(value)
    except (ConvertError, TypeError, ValueError):
        raise ConfigError(
            f"cannot write a {type(value).__name__} value in generated TOML",
            location=Location(field=field),
        ) from None


def _array(values: list[Any], field: str) -> Array:
    array = tomlkit.array()
    array.extend(_value(value, field) for value in values)
    one_line = array.as_string()
    return array.multiline("\n" in one_line or len(one_line) > _ARRAY_WIDTH + 2)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
