"""``.env`` files: the variables kiro2api and the kiro.rs SQLite variant read at start.

What this module owns: parsing the ``.env`` dialect those projects use (godotenv's and
dotenv's common ground) and putting its variables into the process environment before
:mod:`kiro_fast.config` reads it.

The dialect:

* ``NAME=value`` per line; an ``export`` prefix is allowed; blank lines and lines
  starting with ``#`` are skipped.
* Unquoted values are stripped, and a ``#`` preceded by whitespace starts a comment.
* ``'single quotes'`` keep the text exactly; ``"double quotes"`` understand ``\\n``,
  ``\\t``, ``\\"`` and ``\\\\`` and may span lines.
* ``${NAME}`` (and ``$NAME``) in unquoted and double-quoted values expand to a variable
  defined earlier in the file or in the environment (empty if neither).

Strategy: the environment wins — a variable that is already set is never overwritten
(godotenv's ``Load``), so a deployment can still override a checked-in ``.env``.

A malformed line is an error naming its line number, never its content (it may hold a
secret). This module knows nothing about what the variables mean.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Final

from .errors import ConfigError

#: The file looked for in the working directory when none is named.
DEFAULT_FILE: Final = ".env"

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_EXPANSION: Final = re.compile(r"\\?\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "\\$"}


def parse(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a ``.env`` text, in file order.

    ``environ`` supplies values for ``${NAME}`` expansion (after the file's own).

    Raises:
        ConfigError: a malformed line; the message gives its number.
    """
    outside: Mapping[str, str] = os.environ if environ is None else environ
    values: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f".env line {number}: expected NAME=value")
        rest = rest.lstrip()
        if rest.startswith(("'", '"')):
            value, index = _quoted(rest, lines, index, number)
            if rest[0] == '"':
                value = _expand(_unescape(value), values, outside)
        else:
            value = _expand(_strip_comment(rest), values, outside)
        values[name] = value
    return values


def _quoted(rest: str, lines: list[str], index: int, number: int) -> tuple[str, int]:
    """The text inside the quotes (a double-quoted value may continue on later lines)."""
    quote = rest[0]
    body = rest[1:]
    while True:
        end = _closing(body, quote)
        if end >= 0:
            tail = body[end + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise ConfigError(f".env line {number}: text after the closing quote")
            return body[:end], index
        if quote == "'" or index >= len(lines):
            raise ConfigError(f".env line {number}: the quote is never closed")
        body += "\n" + lines[index]
        index += 1


def _closing(body: str, quote: str) -> int:
    position = 0
    while position < len(body):
        char = body[position]
        if char == "\\" and quote == '"':
            position += 2
            continue
        if char == quote:
            return position
        position += 1
    return -1


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)


def _strip_comment(value: str) -> str:
    match = re.search(r"\s#", value)
    return (value[: match.start()] if match else value).strip()


def _expand(value: str, own: Mapping[str, str], outside: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0).startswith("\\"):
            return match.group(0)[1:]  # an escaped dollar stays literal
        name = match.group(1) or match.group(2)
        return own.get(name, outside.get(name, ""))

    return _EXPANSION.sub(replace, value)


def load(
    path: str | os.PathLike[str] = DEFAULT_FILE,
    *,
    environ: MutableMapping[str, str] | None = None,
    required: bool = False,
) -> dict[str, str]:
    """Put the variables of ``path`` into ``environ`` (default: ``os.environ``) unless set.

    A missing file is nothing to load unless ``required``. Returns the variables that
    were set.

    Raises:
        ConfigError: the file is unreadable, malformed, or missing while ``required``.
    """
    target: MutableMapping[str, str] = os.environ if environ is None else environ
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"env file not found: {file}") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {file}: {exc}") from None
    applied: dict[str, str] = {}
    for name, value in parse(text, target).items():
        if name not in target:
            target[name] = value
            applied[name] = value
    return applied
