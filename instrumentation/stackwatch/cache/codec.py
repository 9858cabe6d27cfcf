"""Cache keys from call arguments, and cached values to and from JSON.

Keys must be equal in every process that makes the same call, so they hash a
canonical JSON form of the arguments (sorted keys, type-tagged non-JSON values)
with BLAKE2b, never Python's per-process ``hash()``. Values are JSON (orjson), never
pickle: a cache shared between processes must not be a way to run code. The
function's return annotation rebuilds rich values (pydantic models, dataclasses,
datetime, Decimal) through a pydantic TypeAdapter; without one, plain JSON comes back.
"""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

_log = structlog.get_logger("stackwatch.cache")

_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_VALUE_OPTIONS = orjson.OPT_NON_STR_KEYS

# Return types that orjson.loads already gives back exactly: no validation needed.
_PLAIN_JSON_TYPES: tuple[Any, ...] = (dict, list, str, int, float, bool)

MISSING: Any = object()
"""Returned by ``ValueCodec.decode`` when a stored value cannot be rebuilt (treated as a miss)."""


def _key_default(value: Any) -> Any:
    """Canonical, type-tagged forms of argument types orjson does not write itself."""
    if isinstance(value, BaseModel):
        return ["pydantic", type(value).__qualname__, value.model_dump(mode="json")]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, set | frozenset):
        # Set order differs between processes (string hashing is randomised), so sort.
        return ["set", sorted(value)]
    raise TypeError(type(value).__name__)


def _value_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(type(value).__name__)


def _is_plain_json(annotation: Any) -> bool:
    """Whether orjson.loads already gives this type back (``dict[str, Any]``, ``list[int]``)."""
    if annotation is Any or annotation is type(None) or annotation in _PLAIN_JSON_TYPES:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return all(_is_plain_json(arg) for arg in args)
    if origin is dict:  # JSON object keys come back as str, so only str keys are plain
        return args[0] in (str, Any) and _is_plain_json(args[1])
    return False


class KeyBuilder:
    """Turns one call's arguments into a stable digest, or a TypeError naming the bad argument."""

    def __init__(self, function: Callable[..., Any], key: Callable[..., Any] | None) -> None:
        self.identity = f"{function.__module__}.{function.__qualname__}"
        self._key = key
        self._signature = inspect.signature(function)
        parameters = list(self._signature.parameters.values())
        simple = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
        # Calls passing every parameter positionally skip signature binding (the common case).
        self._positional_count = len(parameters) if simple else -1

    def digest(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """A 32-hex-digit digest identifying this call of this function."""
        material = self._material(args, kwargs)
        try:
            payload = orjson.dumps(
                [self.identity, material], default=_key_default, option=_KEY_OPTIONS
            )
        except TypeError:
            raise self._explain(args, kwargs) from None
        return hashlib.blake2b(payload, digest_size=16).hexdigest()

    def _material(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._key is not None:
            return self._key(*args, **kwargs)
        if not kwargs and len(args) == self._positional_count:
            return args
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return list(bound.arguments.values())

    def _explain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TypeError:
        hint = (
            "use JSON values, pydantic models, dataclasses, datetime, Decimal or sets of those, "
            "or pass key=lambda ...: ... to @cached to say what identifies a call"
        )
        if self._key is not None:
            value = self._key(*args, **kwargs)
            return TypeError(
                f"@cached {self.identity}: key= returned a {type(value).__name__}, "
                f"which cannot make a cache key; {hint}"
            )
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            try:
                orjson.dumps(value, default=_key_default, option=_KEY_OPTIONS)
            except TypeError:
                return TypeError(
                    f"@cached {self.identity}: argument {name!r} is a {type(value).__name__}, "
                    f"which cannot be part of a cache key; {hint}"
                )
        return TypeError(f"@cached {self.identity}: the arguments cannot make a cache key; {hint}")


class ValueCodec:
    """JSON bytes for a return value, and the value back, rebuilt from the return annotation."""

    def __init__(self, function: Callable[..., Any], identity: str) -> None:
        self._function = function
        self._identity = identity
        self._adapter: TypeAdapter[Any] | None = None
        self._resolved = False

    def encode(self, value: Any) -> bytes:
        """The value as JSON bytes; a TypeError that says what to return instead if it cannot be."""
        try:
            return orjson.dumps(value, default=_value_default, option=_VALUE_OPTIONS)
        except TypeError as error:
            raise TypeError(
                f"@cached {self._identity} returned a {type(value).__name__} that cannot be stored "
                f"as JSON ({error}); return JSON values, pydantic models, dataclasses, datetime or "
                "Decimal (annotate the return type to get them back), or remove @cached"
            ) from None

    def decode(self, raw: bytes | str) -> Any:
        """The stored value, or MISSING when it no longer fits the return type (a deploy)."""
        if not self._resolved:
            self._resolve()
        try:
            if self._adapter is None:
                return orjson.loads(raw)
            return self._adapter.validate_json(raw)
        except (ValidationError, orjson.JSONDecodeError) as error:
            _log.warning(
                "cached value does not fit the return type, recomputing",
                function=self._identity,
                error=type(error).__name__,
            )
            return MISSING

    def _resolve(self) -> None:
        self._resolved = True
        try:
            annotation = typing.get_type_hints(self._function).get("return", Any)
        except Exception as error:  # an unresolvable forward reference must not break the cache
            _log.warning(
                "cannot resolve the return annotation, cached values come back as plain JSON",
                function=self._identity,
                error=f"{type(error).__name__}: {error}",
            )
            return
        if not _is_plain_json(annotation):
            self._adapter = TypeAdapter(annotation)
