"""Typed experiment configuration: YAML files -> frozen dataclass trees.

The schema is a tree of frozen dataclasses (``ExperimentConfig`` at the root).
A config file is YAML whose nesting mirrors that tree; every key is optional
and falls back to the dataclass default::

    # Run: jaxnas train configs/foo.yaml --workdir runs/foo
    base: quickstart.yaml         # optional: inherit from another file
    model: {width: 0.5}
    train: {epochs: 20}

``load_config(path, overrides)`` reads the file (following ``base:`` chains),
applies ``a.b=c`` overrides, validates everything against the schema and
returns the frozen tree.  Every problem is reported as one line of a single
``ConfigError``::

    unknown key 'train.lerning_rate' — did you mean 'optim.learning_rate'?
    train.epochs: expected float, got 'ten'

The machinery is generic: any dataclass can be a schema.  Search methods use it
for their own ``search.args`` sub-schema::

    args = config_from_dict(cfg.search.args, DMCPArgs, prefix="search.args")

YAML is read with YAML 1.2 scalar rules (``4e-5`` is a float; ``yes``/``on``
and ``12:30`` are strings; ``010`` is ten) so values mean what they look like.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from jaxnas.io_utils import atomic_write_text

__all__ = [
    "ConfigError",
    "DataSection",
    "ModelSection",
    "OptimSection",
    "ScheduleSection",
    "DistillSection",
    "TrainSection",
    "ExportSection",
    "LatencySection",
    "SearchSection",
    "ExperimentConfig",
    "load_config",
    "load_config_dict",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "apply_overrides",
    "override_config",
    "save_resolved_config",
    "describe_schema",
    "RESOLVED_CONFIG_NAME",
]

T = TypeVar("T")

RESOLVED_CONFIG_NAME = "config.yaml"
BASE_KEY = "base"
REPLACE_KEY = "__replace__"


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` has one line per problem; ``err.errors`` lists them."""

    def __init__(self, errors: str | Sequence[str]):
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


def _check(errors: list[str], ok: bool, msg: str) -> None:
    if not ok:
        errors.append(msg)


def _raise_if(errors: list[str]) -> None:
    if errors:
        # ValueError from __post_init__; the loader prefixes the section path.
        raise ValueError("\n".join(errors))


@dataclasses.dataclass(frozen=True)
class DataSection:
    source: str = "embedded"            # 'embedded' | 'tfds' | 'npz' | ... (resolved by jaxnas.data)
    name: str | None = None             # dataset name, e.g. 'fashion_mnist'
    data_dir: str | None = None
    path: str | None = None             # explicit file/dir for file-based sources
    image_size: int | None = 32         # resize to this square size; None = native size
    channels: int | None = None         # None = native channels
    holdout: float = 0.1                # fraction of train held out for validation
    augment: bool = True
    flip: bool = True
    batch_size: int = 128
    eval_batch_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None
    download: bool = False

    def __post_init__(self):
        e: list[str] = []
        _check(e, 0.0 <= self.holdout < 1.0, f"holdout: must be in [0, 1), got {self.holdout}")
        _check(e, self.image_size is None or self.image_size > 0, f"image_size: must be > 0, got {self.image_size}")
        _check(e, self.channels is None or self.channels > 0, f"channels: must be > 0, got {self.channels}")
        _check(e, self.batch_size > 0, f"batch_size: must be > 0, got {self.batch_size}")
        _check(e, self.eval_batch_size > 0, f"eval_batch_size: must be > 0, got {self.eval_batch_size}")
        for k in ("limit_train", "limit_test"):
            v = getattr(self, k)
            _check(e, v is None or v > 0, f"{k}: must be > 0 or null, got {v}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    name: str = "mobilenet_v2"
    spec: str | None = None             # path to an arch spec JSON; overrides `name`
    width: float = 1.0
    num_classes: int | None = None      # None = taken from the data
    small_input: bool = True            # CIFAR-style stem (stride 1) for 32x32 inputs
    dropout: float = 0.0
    depthwise: Literal["auto", "shift", "grouped"] = "auto"  # shift: CPU forms (depthwise as shifted MACs, 1x1 as matmul)

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.width > 0, f"width: must be > 0, got {self.width}")
        _check(e, self.num_classes is None or self.num_classes > 0, f"num_classes: must be > 0, got {self.num_classes}")
        _check(e, 0.0 <= self.dropout < 1.0, f"dropout: must be in [0, 1), got {self.dropout}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class OptimSection:
    name: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    decay_bn_and_bias: bool = False
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float | None = None

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.learning_rate >= 0, f"learning_rate: must be >= 0, got {self.learning_rate}")
        _check(e, 0.0 <= self.momentum < 1.0, f"momentum: must be in [0, 1), got {self.momentum}")
        _check(e, self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")
        _check(e, 0.0 <= self.b1 < 1.0, f"b1: must be in [0, 1), got {self.b1}")
        _check(e, 0.0 <= self.b2 < 1.0, f"b2: must be in [0, 1), got {self.b2}")
        _check(e, self.grad_clip is None or self.grad_clip > 0, f"grad_clip: must be > 0 or null, got {self.grad_clip}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    name: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0           # warm-up starts at this fraction of the peak lr
    end_value: float = 0.0              # final lr, as a fraction of the peak lr

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.warmup_epochs >= 0, f"warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        _check(e, self.warmup_start >= 0, f"warmup_start: must be >= 0, got {self.warmup_start}")
        _check(e, self.end_value >= 0, f"end_value: must be >= 0, got {self.end_value}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class DistillSection:
    teacher: str | None = None          # teacher workdir or arch spec path
    weight: float = 0.0                 # weight of the distillation loss
    temperature: float = 1.0

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.weight >= 0, f"weight: must be >= 0, got {self.weight}")
        _check(e, self.temperature > 0, f"temperature: must be > 0, got {self.temperature}")
        _check(e, self.weight == 0 or self.teacher is not None,
               f"weight: is {self.weight} but no teacher is set (set teacher, or weight: 0)")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    epochs: float = 10.0
    seed: int = 0
    label_smoothing: float = 0.0
    log_every: int = 50                 # steps
    checkpoint_every: int = 500         # steps
    keep_checkpoints: int = 2
    eval_every_epochs: float = 1.0
    distill: DistillSection = dataclasses.field(default_factory=DistillSection)
    progress: bool = True
    max_steps: int | None = None        # hard cap on optimizer steps (smoke tests)

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.epochs > 0, f"epochs: must be > 0, got {self.epochs}")
        _check(e, 0.0 <= self.label_smoothing < 1.0, f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        for k in ("log_every", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, k)
            _check(e, v > 0, f"{k}: must be > 0, got {v}")
        _check(e, self.eval_every_epochs > 0, f"eval_every_epochs: must be > 0, got {self.eval_every_epochs}")
        _check(e, self.max_steps is None or self.max_steps > 0, f"max_steps: must be > 0 or null, got {self.max_steps}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class ExportSection:
    formats: tuple[str, ...] = ("onnx", "tflite")
    route: Literal["jax2onnx", "tflite"] = "jax2onnx"
    tolerance: float = 1e-4             # max abs diff vs. the JAX model

    def __post_init__(self):
        _raise_if([] if self.tolerance > 0 else [f"tolerance: must be > 0, got {self.tolerance}"])


@dataclasses.dataclass(frozen=True)
class LatencySection:
    backend: str = "onnxruntime"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 20
    runs: int = 100
    table: str | None = None            # path to a per-layer latency lookup table

    def __post_init__(self):
        e: list[str] = []
        for k in ("threads", "batch_size", "runs"):
            v = getattr(self, k)
            _check(e, v > 0, f"{k}: must be > 0, got {v}")
        _check(e, self.warmup >= 0, f"warmup: must be >= 0, got {self.warmup}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class SearchSection:
    method: Literal["none", "dmcp", "depth", "metapruning", "tfnas", "pop"] = "none"
    target_macs: float | None = None
    target_latency_ms: float | None = None
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # validated by each method

    def __post_init__(self):
        e: list[str] = []
        _check(e, self.target_macs is None or self.target_macs > 0, f"target_macs: must be > 0 or null, got {self.target_macs}")
        _check(e, self.target_latency_ms is None or self.target_latency_ms > 0,
               f"target_latency_ms: must be > 0 or null, got {self.target_latency_ms}")
        _raise_if(e)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataSection = dataclasses.field(default_factory=DataSection)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    schedule: ScheduleSection = dataclasses.field(default_factory=ScheduleSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    export: ExportSection = dataclasses.field(default_factory=ExportSection)
    latency: LatencySection = dataclasses.field(default_factory=LatencySection)
    search: SearchSection = dataclasses.field(default_factory=SearchSection)


# --------------------------------------------------------------------------------------
# YAML with YAML 1.2 core-schema scalars
# --------------------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _resolvers_without(resolvers: dict, tags: set[str]) -> dict:
    return {k: [(t, rx) for t, rx in v if t not in tags] for k, v in resolvers.items()}


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema bool/int/float resolution."""


_Loader.yaml_implicit_resolvers = _resolvers_without(
    yaml.SafeLoader.yaml_implicit_resolvers, {_BOOL_TAG, _INT_TAG, _FLOAT_TAG})
_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    v = loader.construct_scalar(node)
    if v.startswith("0o"):
        return int(v[2:], 8)
    if v.startswith("0x"):
        return int(v[2:], 16)
    return int(v, 10)


_Loader.add_constructor(_INT_TAG, _construct_int)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that YAML 1.1 *or* 1.2 would read as a non-string."""


_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
_Dumper.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
_Dumper.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None


# --------------------------------------------------------------------------------------
# Reading files, `base:` inheritance, overrides
# --------------------------------------------------------------------------------------


def _deep_merge(base: Mapping, child: Mapping) -> dict:
    """Recursively merge `child` into `base`. Mappings merge; everything else replaces.

    A child mapping containing ``__replace__: true`` replaces the base mapping wholesale.
    """
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, Mapping):
            v = dict(v)
            replace = v.pop(REPLACE_KEY, False)
            if not replace and isinstance(out.get(k), Mapping):
                v = _deep_merge(out[k], v)
            else:
                v = _deep_merge({}, v)  # strip nested __replace__ markers
        out[k] = v
    return out


def load_config_dict(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config into a plain dict, resolving ``base:`` (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        where = f" (inherited via base: from {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {str(path)!r} not found{where}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: circular base: inheritance ({cycle})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    data = _yaml_load(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return _deep_merge({}, data)
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: must be a file path or a list of file paths, got {base!r}")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, load_config_dict(path.parent / b, (*_chain, resolved)))
    return _deep_merge(merged, data)


_OVERRIDE_HELP = "overrides look like 'section.key=value', e.g. 'optim.learning_rate=0.05' or 'export.formats=[onnx]'"


def _parse_override(override: str) -> tuple[list[str], str, Any]:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"bad override {override!r}: missing '='; {_OVERRIDE_HELP}")
    key, raw = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"bad override {override!r}: empty key path; {_OVERRIDE_HELP}")
    parts = [p.strip() for p in parts]
    try:
        value = yaml.load(raw, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"bad override {override!r}: cannot parse value as YAML: {problem}") from None
    return parts, raw, value


def _schema_hint_at(schema: Any, parts: Sequence[str]) -> Any:
    """The type annotation at a key path in a schema, or None if the path is not typed."""
    tp = schema
    for p in parts:
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = _type_hints(tp)
            if p not in hints:
                return None
            tp = hints[p]
        elif typing.get_origin(tp) in (dict, Mapping, typing.get_origin(Mapping[str, Any])):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return None
    return tp


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    if _is_union(tp):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    return False


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str], schema: Any = None) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a plain config dict (returns a new dict).

    Values are parsed as YAML. If `schema` is given and the target field is a string,
    the value is kept verbatim (so ``name=2024`` stays the string '2024').
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(d))
    for ov in overrides:
        parts, raw, value = _parse_override(ov)
        if schema is not None and isinstance(value, (bool, int, float)):
            if _accepts_str(_schema_hint_at(schema, parts)) and not _schema_accepts_scalar(schema, parts, value):
                value = raw.strip()
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"bad override {ov!r}: {where!r} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _schema_accepts_scalar(schema: Any, parts: Sequence[str], value: Any) -> bool:
    """Whether the typed leaf accepts `value` as-is (e.g. `int | str` given 3)."""
    tp = _schema_hint_at(schema, parts)
    errors: list[str] = []
    _coerce(value, tp, "x", errors, _Ctx(schema, ""))
    return not errors


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: type[T] = ExperimentConfig) -> T:
    """Read a YAML config (following ``base:``), apply overrides, validate, return the frozen tree."""
    d = load_config_dict(path)
    d = apply_overrides(d, overrides, schema)
    return config_from_dict(d, schema)


def override_config(cfg: T, overrides: Sequence[str]) -> T:
    """Return a copy of a config with ``a.b=c`` overrides applied and re-validated."""
    schema = type(cfg)
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides, schema), schema)


# --------------------------------------------------------------------------------------
# Validation / coercion
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _strip_optional(tp: Any) -> Any:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence, typing.get_origin(Sequence[int])):
        args = typing.get_args(tp)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            return f"list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _short(v: Any, limit: int = 60) -> str:
    if isinstance(v, Mapping):
        s = "a mapping"
    elif isinstance(v, (list, tuple)):
        s = repr(list(v))
    elif v is None:
        s = "null"
    else:
        s = repr(v)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    if isinstance(v, bool):
        s = f"{str(v).lower()} (a bool)"
    return s


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Ctx:
    """Root schema (for cross-section 'did you mean' suggestions) and path prefix."""

    def __init__(self, root: Any, prefix: str):
        self.root = root
        self.prefix = prefix
        self._leaves: list[str] | None = None

    def leaf_paths(self) -> list[str]:
        if self._leaves is None:
            self._leaves = []

            def walk(cls: Any, path: str, seen: tuple) -> None:
                for name, tp in _type_hints(cls).items():
                    p = _join(path, name)
                    self._leaves.append(p)
                    sub = _strip_optional(tp)
                    if dataclasses.is_dataclass(sub) and sub not in seen:
                        walk(sub, p, (*seen, sub))

            if dataclasses.is_dataclass(self.root):
                walk(self.root, self.prefix, (self.root,))
        return self._leaves

    def suggest(self, key: str, path: str, candidates: Sequence[str]) -> str | None:
        parent = path[: -len(key) - 1] if path.endswith("." + key) else ""
        local = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
        if local:
            return _join(parent, local[0])
        # Maybe it lives in another section (e.g. train.learning_rate -> optim.learning_rate).
        leaves = self.leaf_paths()
        names = {}
        for p in leaves:
            names.setdefault(p.rsplit(".", 1)[-1], p)
        close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
        if close and names[close[0]] != path:
            return names[close[0]]
        return None


def _coerce(v: Any, tp: Any, path: str, errors: list[str], ctx: _Ctx) -> Any:
    """Check/convert `v` against annotation `tp`. Appends errors and returns a best-effort value."""
    label = path or "<root>"
    if tp is Any or tp is object:
        return copy.deepcopy(v)
    if tp is type(None):
        if v is not None:
            errors.append(f"{label}: expected null, got {_short(v)}")
        return None

    if _is_union(tp):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            inner = non_none[0]
            simple = typing.get_origin(inner) is Literal or (
                isinstance(inner, type) and not dataclasses.is_dataclass(inner) and typing.get_origin(inner) is None)
            if not simple:  # containers / sections: keep the detailed per-item errors
                return _coerce(v, inner, path, errors, ctx)
        # Try exact-type matches first so `int | float` keeps ints, `str | int` keeps strs.
        for a in sorted(non_none, key=lambda a: 0 if isinstance(a, type) and type(v) is a else 1):
            trial: list[str] = []
            out = _coerce(v, a, path, trial, ctx)
            if not trial:
                return out
        errors.append(f"{label}: expected {_type_name(tp)}, got {_short(v)}")
        return v

    origin = typing.get_origin(tp)

    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(v == a and type(v) is type(a) for a in allowed):
            return v
        msg = f"{label}: expected {_type_name(tp)}, got {_short(v)}"
        if isinstance(v, str):
            close = difflib.get_close_matches(v, [a for a in allowed if isinstance(a, str)], n=1, cutoff=0.6)
            if close:
                msg += f" — did you mean {close[0]!r}?"
        errors.append(msg)
        return v

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if v is None:  # an empty section (`data:` with everything commented out)
            v = {}
        if isinstance(v, tp):
            v = config_to_dict(v)
        if not isinstance(v, Mapping):
            errors.append(f"{label}: expected {_type_name(tp)}, got {_short(v)}")
            return v
        return _build_dataclass(v, tp, path, errors, ctx)

    if tp is bool:
        if not isinstance(v, bool):
            errors.append(f"{label}: expected bool (true/false), got {_short(v)}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            errors.append(f"{label}: expected int, got {_short(v)}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append(f"{label}: expected float, got {_short(v)}")
            return v
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            errors.append(f"{label}: expected str, got {_short(v)}")
        return v
    if tp is Path:
        if isinstance(v, Path):
            return v
        if not isinstance(v, str):
            errors.append(f"{label}: expected a path string, got {_short(v)}")
            return v
        return Path(v)

    if origin in (dict, Mapping) or tp in (dict, Mapping) or origin is typing.get_origin(Mapping[str, Any]):
        if v is None:
            v = {}
        if not isinstance(v, Mapping):
            errors.append(f"{label}: expected a mapping, got {_short(v)}")
            return v
        args = typing.get_args(tp)
        kt, vt = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, item in v.items():
            kpath = _join(path, str(k))
            if kt is not Any:
                k = _coerce(k, kt, f"{kpath} (key)", errors, ctx)
            out[k] = _coerce(item, vt, kpath, errors, ctx)
        return out

    if origin in (list, tuple) or tp in (list, tuple) or origin is typing.get_origin(Sequence[int]):
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (list, tuple)):
            errors.append(f"{label}: expected {_type_name(tp)}, got {_short(v)}")
            return v
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(v) != len(args):
                errors.append(f"{label}: expected {_type_name(tp)}, got {len(v)} items {_short(v)}")
                return v
            items = [_coerce(x, a, f"{path}[{i}]", errors, ctx) for i, (x, a) in enumerate(zip(v, args))]
        else:
            et = args[0] if args else Any
            items = [_coerce(x, et, f"{path}[{i}]", errors, ctx) for i, x in enumerate(v)]
        return list(items) if origin is list or tp is list else tuple(items)

    if isinstance(tp, type):
        if not isinstance(v, tp):
            errors.append(f"{label}: expected {_type_name(tp)}, got {_short(v)}")
        return v
    raise TypeError(f"jaxnas.config: unsupported annotation {tp!r} at {label}")


def _build_dataclass(d: Mapping, cls: type, path: str, errors: list[str], ctx: _Ctx) -> Any:
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    n_errors = len(errors)
    kwargs = {}
    for key, value in d.items():
        if not isinstance(key, str):
            errors.append(f"{_join(path, str(key))}: keys must be strings, got {_short(key)}")
            continue
        kpath = _join(path, key)
        if key not in hints or not fields[key].init:
            msg = f"unknown key {kpath!r}"
            hint = ctx.suggest(key, kpath, [k for k in hints if fields[k].init])
            if hint:
                msg += f" — did you mean {hint!r}?"
            else:
                msg += f" (valid keys{' in ' + repr(path) if path else ''}: {', '.join(k for k in hints if fields[k].init)})"
            errors.append(msg)
            continue
        kwargs[key] = _coerce(value, hints[key], kpath, errors, ctx)
    for name, f in fields.items():
        if (f.init and name not in kwargs and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            errors.append(f"{_join(path, name)}: missing required key")
    if len(errors) > n_errors:
        return None
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ checks: one message per line, relative to the section
        for line in str(exc).splitlines() or [type(exc).__name__]:
            errors.append(f"{_join(path, line)}" if path and ":" in line else f"{path or cls.__name__}: {line}")
        return None
    except TypeError as exc:
        errors.append(f"{path or cls.__name__}: {exc}")
        return None


def config_from_dict(d: Mapping[str, Any] | Any, schema: type[T] = ExperimentConfig, prefix: str = "") -> T:
    """Validate a plain (nested) dict against a dataclass schema and build the frozen tree.

    `prefix` is prepended to every error path, e.g. ``prefix='search.args'`` when a method
    validates its own sub-schema. Raises ConfigError listing every problem (one per line).
    """
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    if isinstance(d, schema):
        return d
    if d is None:
        d = {}
    errors: list[str] = []
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix or '<root>'}: expected {_type_name(schema)}, got {_short(d)}")
    out = _build_dataclass(d, schema, prefix, errors, _Ctx(schema, prefix))
    if errors:
        raise ConfigError(errors)
    return out


# --------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {(k if isinstance(k, (str, int, float, bool)) else str(k)): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    # numpy scalars and friends
    if hasattr(v, "item") and callable(v.item):
        try:
            return _plain(v.item())
        except (TypeError, ValueError):
            pass
    return str(v)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config tree as plain dicts/lists/scalars (JSON- and YAML-serialisable)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def config_to_yaml(cfg: Any, header: str | None = None) -> str:
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


def save_resolved_config(cfg: Any, workdir: str | Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the fully resolved config to ``workdir/config.yaml`` atomically; returns the path.

    The file has no ``base:`` and no defaults left implicit, so it reproduces the run by itself.
    """
    path = Path(workdir) / name
    header = (f"Resolved {type(cfg).__name__} (all defaults filled in; no base:).\n"
              f"Reload with jaxnas.config.load_config({str(path)!r}).")
    return atomic_write_text(path, config_to_yaml(cfg, header=header))


def describe_schema(schema: type = ExperimentConfig, prefix: str = "") -> str:
    """One line per leaf key: ``path: type = default`` (for --help style listings)."""
    lines: list[str] = []
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        p = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            lines.append(describe_schema(tp, p))
            continue
        if f.default is not dataclasses.MISSING:
            default = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _plain(f.default_factory())
        else:
            default = "<required>"
        dflt = yaml.dump(default, Dumper=_Dumper, default_flow_style=True, width=10**6).strip()
        if dflt.endswith("\n..."):
            dflt = dflt[:-4].strip()
        dflt = dflt.removesuffix("...").strip()
        lines.append(f"{p}: {_type_name(tp)} = {dflt}")
    return "\n".join(lines)
