"""Config sections: frozen pydantic models that reject unknown keys and name the key path of every problem.

Every component owns its section (`jaxnas.data.DataConfig`, `jaxnas.train.OptimConfig`, ...); the
experiment config (`jaxnas.config.ExperimentConfig`) composes them, and each method's `search.args`
schema is one more `Section`. Validation is pydantic's, in strict mode (a string is not a number, a
number is not a bool; an int is accepted where a float is expected, a YAML list where a tuple is), and
its errors are rewritten as one line per problem with the full key path::

    unknown key 'train.lerning_rate' — did you mean 'optim.learning_rate'?
    train.epochs: expected float, got 'ten'
    data.batch_size: must be > 0, got 0

Why pydantic rather than the hand-written validator it replaced: typed frozen models with per-field
constraints and JSON/YAML round trips are what it is for, it is maintained and fast, and the ~300 lines of
coercion code it replaces were this project's own to keep correct. What it lacks (the one-line messages
with "did you mean" suggestions across sections) is the formatting below.
"""
from __future__ import annotations

import argparse
import difflib
import json
import operator
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jaxnas.errors import UserError

__all__ = ["ConfigError", "Section", "validate", "describe_schema", "type_name", "leaf_paths", "argument_type",
           "Fraction"]

S = TypeVar("S", bound="Section")

Fraction = Annotated[float, Field(ge=0, lt=1)]  # (pydantic has PositiveInt, PositiveFloat, NonNegativeFloat, ...)


class ConfigError(UserError, ValueError):
    """Invalid configuration. ``str(err)`` has one line per problem; ``err.errors`` lists them."""

    def __init__(self, errors: str | Sequence[str]):
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, strict scalar types.

    `section` is where the section sits in the experiment config ('data', 'train.distill'); errors of a
    section built on its own (``DataConfig(batch_size=0)``) are prefixed with it. `error` is the
    `UserError` subclass raised for invalid values (a component may raise its own, e.g. `DataError`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False,
                              revalidate_instances="never")
    section: ClassVar[str] = ""
    error: ClassVar[type[UserError]] = ConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _error(type(self), format_errors(exc, type(self), type(self).section)) from None

    # Marks this __init__ as pydantic's own, so nested sections are validated by pydantic-core directly
    # (their errors keep their full key paths) and only direct construction goes through the wrapper.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        # YAML has lists only; tuple-typed fields take them (strict mode alone would refuse them).
        if isinstance(data, Mapping):
            data = dict(data)
            for name, field in cls.model_fields.items():
                if name not in data:
                    continue
                if _has_tuple(field.annotation):
                    data[name] = _tuples(data[name])
                elif data[name] is None and _is_mapping_type(field.annotation):
                    data[name] = {}  # an empty YAML section (`data:` with everything commented out)
        return data

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed, validated like the original."""
        return validate({**self.model_dump(), **changes}, type(self), type(self).section)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (JSON and YAML serialisable)."""
        return self.model_dump(mode="json")

    def ignored(self, keys: Sequence[str], because: str, fix: str) -> list[str]:
        """One error line per key of `keys` set away from its default although `because` makes this section
        ignore it (every accepted key does something, or is refused); for a `model_validator`."""
        fields = type(self).model_fields
        return [f"{k}: {because}, so {k}: {json.dumps(getattr(self, k))} would be ignored; {fix}"
                for k in keys if getattr(self, k) != fields[k].default]

    def out_of_range(self, rules: Mapping[str, str]) -> list[str]:
        """One error line ``key: must be <rule>, got <value>`` per key whose value breaks its rule; `rules` maps
        space-separated keys to a rule: '> 0', '>= 1', 'in [0, 1)', 'in (0, 1]', ... A null value passes (the
        field's type decides whether null is allowed; 'or null' after a rule is for the message only)."""
        return [f"{k}: must be {rule}, got {getattr(self, k)}" for keys, rule in rules.items() for k in keys.split()
                if getattr(self, k) is not None and not _satisfies(getattr(self, k), rule.removesuffix(" or null"))]

    def checked(self: S, errors: Sequence[str]) -> S:
        """The end of a `model_validator`: this section, or a ValueError with one line per error."""
        if errors:
            raise ValueError("\n".join(errors))
        return self


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _satisfies(v: float, rule: str) -> bool:
    """Whether `v` keeps a rule of `Section.out_of_range`: '>= 1' or an interval 'in [lo, hi)'."""
    if rule.startswith("in "):
        lo, hi = (float(b) for b in rule[4:-1].split(", "))
        return (lo <= v if rule[3] == "[" else lo < v) and (v <= hi if rule[-1] == "]" else v < hi)
    op, bound = rule.split()
    return _COMPARE[op](v, float(bound))


def validate(data: Any, schema: type[S], prefix: str = "") -> S:
    """`data` (a mapping, None for all defaults, or an instance) validated as `schema`.

    Raises `schema.error` (a `ConfigError` unless the section chose another `UserError`) with one line
    per problem, every key path prefixed with `prefix` (e.g. 'search.args' for a method's arguments).
    """
    if isinstance(data, schema):
        return data
    if data is None:
        data = {}
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise _error(schema, [f"{prefix or '<root>'}: expected {type_name(schema)}, got {_short(data)}"])
    try:
        return schema.model_validate(dict(data))
    except ValidationError as exc:
        raise _error(schema, format_errors(exc, schema, prefix)) from None


def _error(schema: type[Section], lines: list[str]) -> UserError:
    cls = getattr(schema, "error", ConfigError)
    return cls(lines) if issubclass(cls, ConfigError) else cls("\n".join(lines))


def argument_type(cast: type, *checks: tuple[Callable[[Any], bool], str], unparsed: str = "") -> Callable[[str], Any]:
    """An argparse `type`: `cast(text)`, refused with the message of the first (ok, message) check it fails
    ('{text}' in a message is the argument as given); text `cast` cannot read is refused with `unparsed`,
    by default "expected an integer (a number), got '<text>'"."""
    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(unparsed.format(text=text) or f"expected "
                                             f"{'an integer' if cast is int else 'a number'}, got {text!r}") from None
        for ok, message in checks:
            if not ok(v):
                raise argparse.ArgumentTypeError(message.format(text=text))
        return v
    return parse


# --------------------------------------------------------------------------------------------------
# Types: names for messages, walking annotations along an error's location.
# --------------------------------------------------------------------------------------------------

def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _non_none(tp: Any) -> list[Any]:
    return [a for a in typing.get_args(tp) if a is not type(None)]


def _has_tuple(tp: Any) -> bool:
    tp = _strip_annotated(tp)
    if _is_union(tp):
        return any(_has_tuple(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is tuple or tp is tuple


def _is_mapping_type(tp: Any) -> bool:
    tp = _strip_annotated(tp)
    return _is_section(tp) or typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping)


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_name(tp: Any) -> str:
    """How a type reads in an error message: 'float', 'int or null', "one of 'a', 'b'", 'list of int'."""
    tp = _strip_annotated(tp)
    if tp is Any or tp is object:
        return "any value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "bool (true/false)"
    if _is_union(tp):
        args = typing.get_args(tp)
        names = [type_name(a).replace(" (true/false)", "") for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"list of {len(args)} ({', '.join(type_name(a) for a in args)})"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if _is_section(tp):
        return f"mapping ({tp.__name__})"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))


def _short(v: Any, limit: int = 60) -> str:
    if isinstance(v, bool):
        return f"{str(v).lower()} (a bool)"
    if isinstance(v, Mapping):
        s = "a mapping"
    elif isinstance(v, (list, tuple)):
        s = repr(list(v))
    elif v is None:
        s = "null"
    else:
        s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _join(*parts: Any) -> str:
    out = ""
    for p in parts:
        if p in ("", None):
            continue
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out = f"{out}.{p}" if out else str(p)
    return out


def _walk(schema: Any, loc: Sequence[Any]) -> tuple[Any, int]:
    """(annotation reached, number of `loc` items consumed) following field names, indices and keys;
    stops at a union whose member pydantic names in `loc` (that error is reported for the union)."""
    tp: Any = schema
    for n, item in enumerate(loc):
        tp = _strip_annotated(tp)
        if _is_union(tp):
            members = _non_none(tp)
            if len(members) != 1:
                return tp, n
            tp = _strip_annotated(members[0])
        origin = typing.get_origin(tp)
        if _is_section(tp) and isinstance(item, str) and item in tp.model_fields:
            tp = tp.model_fields[item].annotation
        elif origin in (tuple, list) and isinstance(item, int):
            args = typing.get_args(tp)
            variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
            tp = args[0] if variadic else (args[item] if item < len(args) else Any)
        elif origin in (dict, Mapping):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return tp, n
    return tp, len(loc)


def leaf_paths(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key path of a section tree ('optim.learning_rate', 'train.distill.teacher', ...)."""
    out: list[str] = []
    for name, field in schema.model_fields.items():
        p = _join(prefix, name)
        out.append(p)
        sub = _strip_annotated(field.annotation)
        members = _non_none(sub) if _is_union(sub) else [sub]
        for m in members:
            if _is_section(m):
                out += leaf_paths(m, p)
    return out


def _suggest_key(key: str, parent: Any, parent_path: str, root: type[BaseModel], prefix: str) -> str:
    local = list(parent.model_fields) if _is_section(parent) else []
    close = difflib.get_close_matches(key, local, n=1, cutoff=0.6)
    if close:
        return f" — did you mean {_join(parent_path, close[0])!r}?"
    # Maybe it lives in another section (train.learning_rate -> optim.learning_rate).
    by_name: dict[str, str] = {}
    for p in leaf_paths(root, prefix):
        by_name.setdefault(p.rsplit(".", 1)[-1], p)
    close = difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.75)
    if close and by_name[close[0]] != _join(parent_path, key):
        return f" — did you mean {by_name[close[0]]!r}?"
    where = f" in {parent_path!r}" if parent_path else ""
    return f" (valid keys{where}: {', '.join(local)})"


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def format_errors(exc: ValidationError, schema: type[BaseModel], prefix: str = "") -> list[str]:
    """pydantic's errors as one line each, with key paths and suggestions; a union's per-member errors
    collapse into one 'expected X or Y' line."""
    lines: list[str] = []
    done: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        tp, used = _walk(schema, loc)
        path = _join(prefix, *loc[:used]) or "<root>"
        value = err.get("input")
        if kind == "extra_forbidden":
            path = _join(prefix, *loc)
            parent, _ = _walk(schema, loc[:-1])
            parent_path = _join(prefix, *loc[:-1])
            line = f"unknown key {path!r}" + _suggest_key(str(loc[-1]), parent, parent_path, schema, prefix)
        elif kind == "missing":
            line = f"{path}: missing required key"
        elif kind in _BOUNDS:
            key, op = _BOUNDS[kind]
            bound = err["ctx"][key]
            line = f"{path}: must be {op} {bound:g}, got {_short(value)}" if isinstance(bound, (int, float)) else \
                f"{path}: must be {op} {bound}, got {_short(value)}"
        elif kind == "value_error":
            # Our validators raise "field: message" relative to the section they check.
            msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
            lines_ = [ln for ln in msg.splitlines() if ln.strip()] or [msg]
            for ln in lines_:
                head, _, rest = ln.partition(": ")
                if rest and " " not in head:
                    lines.append(f"{_join(path if path != '<root>' else '', head)}: {rest}")
                else:
                    lines.append(f"{path}: {ln}")
            continue
        elif kind in ("too_long", "too_short") and typing.get_origin(_strip_annotated(tp)) is tuple:
            line = f"{path}: expected {type_name(tp)}, got {err['ctx'].get('actual_length', '?')} items"
            if isinstance(value, (list, tuple)):
                line += f" {_short(value)}"
        else:
            line = f"{path}: expected {type_name(tp)}, got {_short(value)}"
            if kind == "literal_error" and isinstance(value, str):
                allowed = [a for a in typing.get_args(_strip_annotated(tp)) if isinstance(a, str)]
                close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
                if close:
                    line += f" — did you mean {close[0]!r}?"
        if line not in done:
            done.add(line)
            lines.append(line)
    return lines


def describe_schema(schema: type[BaseModel], prefix: str = "") -> str:
    """One line per leaf key, ``path: type = default`` (for --help style listings)."""
    lines: list[str] = []
    for name, field in schema.model_fields.items():
        p = _join(prefix, name)
        tp = _strip_annotated(field.annotation)
        if _is_section(tp):
            lines.append(describe_schema(tp, p))
            continue
        default = field.get_default(call_default_factory=True)  # a section instance dumps as its mapping
        dflt = json.dumps(pydantic.TypeAdapter(Any).dump_python(default, mode="json"))
        lines.append(f"{p}: {type_name(tp).replace(' (true/false)', '')} = {dflt}")
    return "\n".join(lines)
