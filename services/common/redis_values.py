"""What every Redis adapter needs the same way: replies as text, and Python constants
rendered in front of a Lua script, so a script and its adapter name keys alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash as redis-py returns it (bytes, or str with decode_responses) as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


def lua_value(value: object) -> str:
    """A constant as Lua source: strings, integers, tables of them (mappings, sequences)."""
    if isinstance(value, str):
        if not value.isascii() or "'" in value or "\\" in value:
            raise ValueError(f"{value!r} cannot be a Lua constant here")
        return f"'{value}'"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {lua_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    raise TypeError(f"no Lua form for {value!r}")


def lua_constants(constants: Mapping[str, object], source: str) -> str:
    """`local NAME = value` lines for a script, saying which Python file they come from."""
    lines = [f"local {name} = {lua_value(value)}" for name, value in constants.items()]
    return f"-- Rendered from {source}.\n" + "\n".join(lines) + "\n"
