"""JSON configs read into dataclasses.

Every config is a (possibly nested) dataclass whose fields all have defaults; a JSON file fills some of them and
``key=value`` overrides (dotted for nested sections, e.g. ``optim.lr=3e-4``) fill more. Unknown keys are an error
naming the key and the file, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from recbase.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override that does not fit its dataclass."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON value (or an override string already parsed as JSON) to the field's declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(types))}")
    kwargs = {k: _coerce(v, types[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config field: ``lo``..``hi`` (None = unbounded), each end open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"{left}{self.lo if self.lo is not None else '-inf'}, {self.hi}{right}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, lo_open=True)


def check_ranges(obj, ranges: dict[str, Range]) -> None:
    """Refuse a numeric field outside its range, naming the dotted key, the value and the allowed range
    (``None`` values mean "use the default rule" and are not checked)."""
    for key, allowed in ranges.items():
        value = obj
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value} is outside the allowed range {allowed}")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str], where: str = "override") -> dict:
    """Apply ``a.b=value`` strings to a nested dict; values are parsed as JSON when they parse, else kept as text."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key} goes through a non-object value")
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                search_dirs: list[Path] | None = None) -> T:
    """Read ``path`` (JSON) into ``cls`` after applying ``overrides``.

    A bare file name not found as given is looked up in ``search_dirs`` (e.g. ``launch/configs``), so
    ``--config 1.5b.json`` works from anywhere.
    """
    data: dict = {}
    where = "config"
    if path is not None:
        resolved = resolve_config_path(path, search_dirs or [])
        where = str(resolved)
        try:
            data = json.loads(resolved.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{resolved}: line {e.lineno} column {e.colno}: {e.msg}") from None
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where)


def resolve_config_path(path: str | Path, search_dirs: list[Path]) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for d in search_dirs:
        for candidate in (d / p, d / p.name):
            if candidate.exists():
                return candidate
    raise ConfigError(f"config file {path} not found (also looked in: {', '.join(map(str, search_dirs)) or '-'})")


def save_config(obj, path: str | Path) -> None:
    from recbase.io import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(obj), indent=2) + "\n")
