"""Declarative models for the configuration files that need pydantic only to reject input.

Importing pydantic and building the ~17 configuration models cost ~75 ms of a ~0.3 s warm pull
(issue 15).  A :class:`Model` is declared as a pydantic model is (annotations, :func:`Field`,
:func:`field_validator`, :func:`model_validator`) and validated by a small strict checker that
accepts only input whose meaning is beyond doubt: the exact types TOML produces (str, bool, int,
list, dict), every required field present, every validator passing.  Anything else (a wrong
type, a value pydantic would coerce, a key given twice, a validator's ``ValueError``) goes to a
pydantic twin of the model, generated from the same declaration on first need.  The twin
decides: it raises the ``ValidationError`` it always raised (same message, same location) or
returns the coerced value.  So pydantic stays the only judge of input that is not plainly
valid, and the fast path accepts nothing pydantic would refuse or read differently
(tests/test_configmodel.py checks both paths agree).
"""

from __future__ import annotations

import functools
import operator
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

M = TypeVar("M", bound="Model")

_MISSING: Any = object()


class FieldInfo:
    """What :func:`Field` declares: a default (or factory), the TOML key and a lower bound."""

    __slots__ = ("default", "default_factory", "key", "ge")

    def __init__(self, default: Any = _MISSING, *, default_factory: Callable[[], Any] | None = None,
                 key: str | None = None, ge: int | None = None) -> None:
        self.default = default
        self.default_factory = default_factory
        self.key = key
        self.ge = ge

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default


def Field(default: Any = _MISSING, *, default_factory: Callable[[], Any] | None = None,  # noqa: N802
          key: str | None = None, ge: int | None = None) -> Any:
    """A field's default (or ``default_factory``), its TOML ``key`` when that is not the
    attribute name (pydantic's alias), and for an int, its minimum ``ge``."""
    return FieldInfo(default, default_factory=default_factory, key=key, ge=ge)


def field_validator(*fields: str) -> Callable[[Any], Any]:
    """Mark a classmethod ``(cls, value) -> value`` run after ``fields`` are type-checked."""

    def mark(method: Any) -> Any:
        function: Any = method.__func__ if isinstance(method, classmethod) else method
        function.__config_fields__ = fields
        return method

    return mark


def model_validator(*, mode: Literal["after"]) -> Callable[[Any], Any]:
    """Mark a method ``(self) -> self`` run once every field is set."""

    def mark(function: Any) -> Any:
        function.__config_model_validator__ = mode
        return function

    return mark


class ConfigField(typing.NamedTuple):
    """A field as :func:`guestpull.config.unknown_keys` sees it."""

    key: str  # in TOML
    annotation: Any


class _Undecided(Exception):
    """The strict checker cannot vouch for this input: pydantic decides."""


@dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
class Model:
    """A configuration model: ``Model(**fields)``, :meth:`model_validate`, :meth:`model_copy`.

    As the pydantic models these replace (``extra="ignore"``, by name and by alias): unknown
    keys are ignored; Python code may use attribute names, and :meth:`model_validate` with
    ``by_name=False`` takes only the TOML keys.
    """

    _fields: ClassVar[dict[str, FieldInfo]] = {}
    _field_validators: ClassVar[list[tuple[tuple[str, ...], Callable[..., Any]]]] = []
    _model_validators: ClassVar[list[Callable[..., Any]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls._fields)
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if name.startswith("_") or "ClassVar" in str(annotation):
                continue
            declared = cls.__dict__.get(name, _MISSING)
            fields[name] = declared if isinstance(declared, FieldInfo) else FieldInfo(declared)
            if isinstance(declared, FieldInfo):
                delattr(cls, name)  # as pydantic: the value lives on instances only
        cls._fields = fields
        cls._field_validators = list(cls._field_validators)
        cls._model_validators = list(cls._model_validators)
        for member in cls.__dict__.values():
            function = member.__func__ if isinstance(member, classmethod) else member
            if hasattr(function, "__config_fields__"):
                cls._field_validators.append((function.__config_fields__, function))
            elif hasattr(function, "__config_model_validator__"):
                cls._model_validators.append(function)

    def __init__(self, **data: Any) -> None:
        self.__dict__.update(type(self)._validated(data, by_alias=True, by_name=True).__dict__)

    @classmethod
    def model_validate(cls: type[M], obj: Any, *, by_alias: bool = True, by_name: bool = True) -> M:
        """Validate a mapping (or return an instance as is); pydantic's ``ValidationError`` if
        it is invalid."""
        if type(obj) is cls:
            return obj
        return cls._validated(obj, by_alias=by_alias, by_name=by_name)

    @classmethod
    def validate_fast(cls: type[M], obj: Any, *, by_alias: bool = True, by_name: bool = True) -> M | None:
        """The instance when ``obj`` is plainly valid; None when only pydantic can tell."""
        try:
            return cls._fast(obj, by_alias, by_name)
        except _Undecided:
            return None

    def model_copy(self: M, *, update: Mapping[str, Any] | None = None) -> M:
        """A shallow copy with ``update`` applied (not validated, as pydantic's)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(update or {})
        return copy

    @classmethod
    def config_fields(cls) -> dict[str, ConfigField]:
        """Attribute name → its TOML key and resolved type."""
        hints = _hints(cls)
        return {name: ConfigField(info.key or name, hints[name]) for name, info in cls._fields.items()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, as pydantic models

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    # --- validation ---------------------------------------------------------------------------

    @classmethod
    def _validated(cls: type[M], obj: Any, *, by_alias: bool, by_name: bool) -> M:
        try:
            return cls._fast(obj, by_alias, by_name)
        except _Undecided:
            twin = _twin(cls).model_validate(obj, by_alias=by_alias, by_name=by_name)
            converted: M = _from_twin(twin)
            return converted

    @classmethod
    def _fast(cls: type[M], obj: Any, by_alias: bool, by_name: bool) -> M:
        if type(obj) is not dict:
            raise _Undecided
        hints = _hints(cls)
        values: dict[str, Any] = {}
        given: set[str] = set()
        for name, info in cls._fields.items():
            keys = {info.key or name} if by_alias else set()
            if by_name:
                keys.add(name)
            present = [key for key in keys if key in obj]
            if len(present) > 1:
                raise _Undecided
            if not present:
                if info.required:
                    raise _Undecided
                values[name] = info.make_default()
                continue
            value = _fast_value(hints[name], obj[present[0]], by_alias, by_name)
            if info.ge is not None and value < info.ge:
                raise _Undecided
            values[name] = value
            given.add(name)
        try:
            for names, function in cls._field_validators:
                for name in names:
                    if name in given:  # pydantic does not validate defaults either
                        values[name] = function(cls, values[name])
            instance = object.__new__(cls)
            instance.__dict__.update(values)
            for function in cls._model_validators:
                instance = function(instance)
        except (ValueError, AssertionError):
            raise _Undecided from None
        return instance


def _fast_value(annotation: Any, value: Any, by_alias: bool, by_name: bool) -> Any:
    """``value`` as ``annotation`` when its type is exactly what TOML gives; else undecided."""
    if annotation in (str, bool, int):
        if type(value) is annotation:  # not bool for int, not a str subclass
            return value
    elif annotation is Path:
        if type(value) is str or isinstance(value, PurePath):
            return Path(value)
    elif isinstance(annotation, type) and issubclass(annotation, Model):
        if type(value) is annotation:
            return value  # an instance is kept as is (pydantic's revalidate_instances="never")
        return annotation._fast(value, by_alias, by_name)
    else:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
            if value is None:
                return None
            return _fast_value(args[0] if args[1] is type(None) else args[1], value, by_alias, by_name)
        if origin is list and type(value) is list:
            return [_fast_value(args[0], item, by_alias, by_name) for item in value]
        if origin is Literal and type(value) is str and value in args:
            return value
    raise _Undecided


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[Model]) -> dict[str, Any]:
    """The class's field types, resolved once (annotations are strings until then)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


# --- the pydantic twins ----------------------------------------------------------------------

_TWINS: dict[type, Any] = {}
_FROM_TWIN: dict[type, type[Model]] = {}


def _twin(cls: type[Model]) -> Any:
    """The pydantic model declared as ``cls`` is (same name, fields, keys, bounds, validators)."""
    twin = _TWINS.get(cls)
    if twin is not None:
        return twin
    import pydantic

    hints = _hints(cls)
    fields: dict[str, Any] = {}
    for name, info in cls._fields.items():
        spec: dict[str, Any] = {}
        if info.default_factory is not None:
            spec["default_factory"] = info.default_factory
        elif info.default is not _MISSING:
            spec["default"] = info.default
        if info.key is not None:
            spec["alias"] = info.key
        if info.ge is not None:
            spec["ge"] = info.ge
        fields[name] = (_twin_type(hints[name]), pydantic.Field(**spec))
    validators: dict[str, Any] = {}
    for names, function in cls._field_validators:
        validators[function.__name__] = pydantic.field_validator(*names)(classmethod(function))
    for function in cls._model_validators:
        validators[function.__name__] = pydantic.model_validator(mode="after")(function)
    twin = pydantic.create_model(
        cls.__name__,
        __config__=pydantic.ConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True),
        __validators__=validators,
        __module__=cls.__module__,
        **fields,
    )
    _TWINS[cls] = twin
    _FROM_TWIN[twin] = cls
    return twin


def _twin_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return _twin(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, [_twin_type(arg) for arg in args])
    if origin is list:
        item: Any = _twin_type(args[0])
        return list[item]
    return annotation


def _from_twin(value: Any) -> Any:
    """A twin's result as this module's models (lists and nested models included)."""
    cls = _FROM_TWIN.get(type(value))
    if cls is not None:
        instance = object.__new__(cls)
        instance.__dict__.update({name: _from_twin(getattr(value, name)) for name in cls._fields})
        return instance
    if type(value) is list:
        return [_from_twin(item) for item in value]
    return value
