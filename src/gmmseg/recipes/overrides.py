"""``--set section.key=value`` overrides, type-checked against the recipe dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, Union, runtime_checkable

__all__ = ["OverrideError", "apply_overrides", "from_dict", "parse_value"]

T = TypeVar("T")


class OverrideError(ValueError):
    """An override names an unknown key or carries a value of the wrong type."""


@runtime_checkable
class _LegacySection(Protocol):
    """A section that still reads some keys of earlier recipe versions (warning)."""

    legacy_keys: dict[str, Any]  # key -> type of its value

    def with_legacy_key(self, key: str, value: Any) -> Any: ...


_NOT_LEGACY = 1 << 30  # sort rank of an ordinary key (after every legacy key)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"comma-separated {_type_name(args[0])}s"
        return f"{len(args)} comma-separated values ({', '.join(_type_name(a) for a in args)})"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def parse_value(text: str, tp: Any) -> Any:
    """Convert the text of an override to the annotated type ``tp``.

    Supports int, float, bool (true/false/1/0/yes/no/on/off), str, Literal, ``X | None`` (the
    text ``none``), fixed tuples and ``tuple[X, ...]`` (comma-separated, e.g. ``512,1024``).

    Raises:
        ValueError: the text does not parse as ``tp``.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"expected {_type_name(tp)}, got {text!r}")
    if origin is typing.Literal:
        for a in typing.get_args(tp):
            if str(a) == text:
                return a
        raise ValueError(f"expected one of {_type_name(tp)}, got {text!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {_type_name(tp)}, got {text!r}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args, strict=True))
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    raise ValueError(f"cannot parse a value of type {_type_name(tp)}")


def _set_path(obj: Any, path: list[str], text: str, full: str) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise OverrideError(f"--set {full}: {'.'.join(path)!r} is not a section")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    key = path[0]
    if isinstance(obj, _LegacySection) and key not in names and key in obj.legacy_keys:
        # a key of an earlier recipe version: the section translates it (and warns)
        if len(path) > 1:
            raise OverrideError(f"--set {full}: {key!r} is not a section")
        try:
            value = parse_value(text, obj.legacy_keys[key])
        except ValueError as e:
            raise OverrideError(f"--set {full}: {e}") from None
        return obj.with_legacy_key(key, value)
    if key not in names:
        raise OverrideError(f"--set {full}: unknown key {key!r}; expected one of {names}")
    current = getattr(obj, key)
    if len(path) > 1:
        if current is None:
            inner = typing.get_args(hints[key])
            cls = next((a for a in inner if dataclasses.is_dataclass(a)), None)
            if cls is None:
                raise OverrideError(f"--set {full}: {key!r} is not a section")
            current = cls()  # type: ignore[operator]
        return dataclasses.replace(obj, **{key: _set_path(current, path[1:], text, full)})
    if dataclasses.is_dataclass(current):
        raise OverrideError(f"--set {full}: {key!r} is a section; set one of its keys")
    try:
        value = parse_value(text, hints[key])
    except ValueError as e:
        raise OverrideError(f"--set {full}: {e}") from None
    return dataclasses.replace(obj, **{key: value})


def apply_overrides(recipe: T, overrides: Sequence[str]) -> T:
    """Apply ``key.path=value`` overrides to a frozen dataclass, returning a new one.

    Args:
        recipe: a :class:`~gmmseg.recipes.Recipe` (or any frozen dataclass).
        overrides: e.g. ``["optim.lr=1e-4", "data.root=/data/cityscapes"]``.

    Keys of earlier recipe versions (a section's ``legacy_keys``, e.g. ``model.gmm.faithful``)
    are applied before the others, so a setting named beside one wins whatever the order:
    ``model.gmm.faithful=true`` with ``model.gmm.fixes.persist_memory=false`` keeps the bank
    out of checkpoints.

    Returns:
        The updated copy.

    Raises:
        OverrideError: malformed override, unknown key (the valid keys are listed), or a value
            that does not parse as the field's type.

    Example:
        >>> from gmmseg.recipes import get_recipe
        >>> r = apply_overrides(get_recipe("demo"), ["optim.lr=0.001", "data.crop_size=32,32"])
        >>> r.optim.lr, r.data.crop_size
        (0.001, (32, 32))
    """
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        key, text = item.split("=", 1)
        path = key.strip().split(".")
        if not all(path):
            raise OverrideError(f"--set {item!r}: empty key")
        parsed.append((path, text, item))
    # Keys of earlier versions first, in their section's order: a legacy preset (faithful)
    # must not overwrite a setting named beside it, whatever the order on the command line.
    parsed.sort(key=lambda p: _legacy_rank(recipe, p[0]))
    for path, text, item in parsed:
        recipe = _set_path(recipe, path, text, item)
    return recipe


def _legacy_rank(obj: Any, path: list[str]) -> int:
    """Position of ``path``'s last key among its section's legacy keys; after them if none."""
    for key in path:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return _NOT_LEGACY
        if key not in {f.name for f in dataclasses.fields(obj)}:
            break
        obj = getattr(obj, key)
    else:
        return _NOT_LEGACY  # every key is a field
    if key != path[-1] or not isinstance(obj, _LegacySection) or key not in obj.legacy_keys:
        return _NOT_LEGACY  # an unknown key: _set_path names it
    return list(obj.legacy_keys).index(key)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass tree from :meth:`Recipe.to_dict` output (lists back to tuples).

    Keys of an earlier version (a section's ``legacy_keys``, e.g. ``model.gmm.faithful``) are
    applied before the sub-sections given beside them, so the keys a sub-section names win
    over a legacy preset (``fixes`` given with ``faithful``); its other keys keep the preset's.

    Raises:
        OverrideError: unknown keys.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    legacy_keys: dict[str, Any] = getattr(cls, "legacy_keys", {})
    # keys of an earlier recipe version, in the section's order
    legacy = {k: data[k] for k in legacy_keys if k in data and k not in names}
    data = {k: v for k, v in data.items() if k not in legacy}
    unknown = set(data) - names
    if unknown:
        raise OverrideError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    later: dict[str, tuple[type[Any], dict[str, Any]]] = {}  # sub-sections after legacy keys
    for key, value in data.items():
        tp = hints[key]
        inner = [tp, *typing.get_args(tp)]
        sub = next((a for a in inner if dataclasses.is_dataclass(a)), None)
        if sub is not None and isinstance(value, dict):
            if legacy:
                later[key] = (sub, value)  # type: ignore[assignment]
            else:
                kwargs[key] = from_dict(sub, value)  # type: ignore[arg-type]
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    section: Any = cls(**kwargs)
    for key, value in legacy.items():  # only a _LegacySection has legacy keys
        section = section.with_legacy_key(key, value)
    for key, (sub, value) in later.items():
        given = from_dict(sub, value)
        current: Any = getattr(section, key)
        if isinstance(current, sub):  # keep what the legacy keys set, unless named here
            named = {f.name: getattr(given, f.name) for f in dataclasses.fields(sub)}
            given = dataclasses.replace(current, **{k: v for k, v in named.items() if k in value})
        section = dataclasses.replace(section, **{key: given})
    obj: T = section
    return obj
