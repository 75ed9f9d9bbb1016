"""Strict JSON: ``json.loads`` that refuses an object naming the same key twice, and the line of the repeat.

A JSON reader keeps only the last of two equal keys, so an option or a row would vanish without a word; every
reader of user JSON in the project (ingest, row parsers, ledger import) goes through :func:`loads_strict`.
Bottom layer: imports nothing of the project.
"""

from __future__ import annotations

import json
import re
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"repeated key {key!r}")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


# One decoder for every call: json.loads(text, object_pairs_hook=...) would build a new one per row.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses a repeated key in any object (raises DuplicateKeyError)."""
    return _STRICT_DECODER.decode(text)


_JSON_TOKEN = re.compile(r'["{}\[\]]')


def locate_repeated_key(text: str) -> tuple[str, int, int] | None:
    """(key, line, line of its first occurrence) of the first key repeated within one object of ``text``.

    A linear scan of the structure (strings skipped whole), used only after a repeated key was found, to name
    its line. Lines are 1-based and count from the start of ``text``.
    """
    stack: list[dict[str, int] | None] = []  # per open container: keys seen (objects) or None (arrays)
    pos, line, i = 0, 1, 0
    while (m := _JSON_TOKEN.search(text, i)) is not None:
        i = m.start()
        char = text[i]
        if char == '"':
            try:
                value, end = json.decoder.scanstring(text, i + 1)
            except ValueError:
                return None
            j = end
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            keys = stack[-1] if stack else None
            if keys is not None and j < len(text) and text[j] == ":":
                line += text.count("\n", pos, i)
                pos = i
                if value in keys:
                    return value, line, keys[value]
                keys[value] = line
            i = end
            continue
        if char == "{":
            stack.append({})
        elif char == "[":
            stack.append(None)
        elif stack:
            stack.pop()
        i += 1
    return None
