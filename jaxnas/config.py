"""Experiment configs: YAML files -> one frozen tree of the components' own config sections.

    # Run: jaxnas train configs/foo.yaml --workdir runs/foo
    base: quickstart.yaml         # optional: inherit from another file (paths relative to this one)
    model: {width: 0.5}
    train: {epochs: 20}

Each section is the component's own schema (`jaxnas.data.DataConfig`, `jaxnas.model_config.ModelConfig`,
`jaxnas.train.OptimConfig` / `ScheduleConfig` / `TrainConfig`, `jaxnas.export.config.ExportConfig`,
`jaxnas.latency.config.LatencyConfig`, `SearchConfig` below); `search.args` is validated by the chosen
method's own schema when the search starts (`jaxnas.methods`). Every problem is one line of a single
`ConfigError`::

    unknown key 'train.lerning_rate' — did you mean 'optim.learning_rate'?
    train.epochs: expected float, got 'ten'

YAML is read with YAML 1.2 scalar rules (``4e-5`` is a float; ``yes``/``on`` and ``12:30`` are strings;
``010`` is ten), duplicate keys are an error (YAML 1.2 requires unique keys), and documents are bounded
in size and alias expansion so a malicious or broken file fails with one line instead of eating memory.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, PositiveFloat, field_validator

from jaxnas.data.config import DataConfig
from jaxnas.export.config import ExportConfig
from jaxnas.io_utils import atomic_write_text
from jaxnas.latency.config import LatencyConfig
from jaxnas import schema as _schema
from jaxnas.schema import ConfigError, Section, validate
from jaxnas.train.config import OptimConfig, ScheduleConfig, TrainConfig
from jaxnas.model_config import ModelConfig

__all__ = [
    "ConfigError", "ExperimentConfig", "SearchConfig", "load_config", "load_config_dict", "config_from_dict",
    "config_to_dict", "config_to_yaml", "apply_overrides", "override_config", "save_resolved_config",
    "describe_schema", "RESOLVED_CONFIG_NAME",
]

T = TypeVar("T", bound=BaseModel)

RESOLVED_CONFIG_NAME = "config.yaml"
BASE_KEY = "base"
REPLACE_KEY = "__replace__"
MAX_CONFIG_BYTES = 1 << 20          # a config is a few KB; refuse anything that is not one
MAX_YAML_NODES = 100_000            # values after alias expansion (an alias bomb expands exponentially)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SearchConfig(Section):
    """method: a registered method (`jaxnas methods` lists them), or 'none' for plain training;
    target_macs / target_latency_ms: the budget (each method says which kinds it accepts);
    args: the method's own options, validated by its schema when the search starts."""

    section = "search"

    method: str = "none"
    target_macs: PositiveFloat | None = None
    target_latency_ms: PositiveFloat | None = None
    args: dict[str, Any] = {}


class ExperimentConfig(Section):
    """The whole experiment: one section per component."""

    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # The name picks the default work dir runs/<name>: it must not climb out of runs/.
        if not NAME_PATTERN.match(v):
            raise ValueError(f"must be a plain name (letters, digits, '.', '_', '-'), got {v!r}; choose where "
                             "a run goes with --workdir")
        return v

    def dataset_config(self) -> DataConfig:
        """The data section with its seed resolved (null follows train.seed)."""
        return self.data if self.data.seed is not None else self.data.replace(seed=self.train.seed)


# --------------------------------------------------------------------------------------------------
# YAML: 1.2 core-schema scalars, unique keys, bounded size.
# --------------------------------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema bool/int/float resolution and unique mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor reports unhashable keys
            if key in seen:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.line + 1}); YAML keys must be unique",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    v = loader.construct_scalar(node)
    base = {"0o": 8, "0x": 16}.get(v[:2])
    return int(v[2:], base) if base else int(v, 10)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that YAML 1.1 *or* 1.2 would read as a non-string."""


_Loader.yaml_implicit_resolvers = {k: [(t, rx) for t, rx in v if t not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG)]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_constructor(_INT_TAG, _construct_int)
_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
    _cls.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))
    _cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Values the node stands for once aliases are expanded (stops counting past `limit`)."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        memo[id(n)] = 1  # cycles count once
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        memo[id(n)] = min(total, limit + 1)
        return memo[id(n)]

    return size(node)


def _yaml_load(text: str, source: str) -> Any:
    if len(text.encode("utf-8", "ignore")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes is not a config file (the limit is {MAX_CONFIG_BYTES})")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"{source}: its YAML aliases expand to more than {MAX_YAML_NODES} values; "
                              "write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------------
# Files, `base:` inheritance, overrides.
# --------------------------------------------------------------------------------------------------

def _deep_merge(base: Mapping, child: Mapping) -> dict:
    """Recursively merge `child` into `base`. Mappings merge; everything else replaces.

    A child mapping containing ``__replace__: true`` replaces the base mapping wholesale.
    """
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, Mapping):
            v = dict(v)
            merge = not v.pop(REPLACE_KEY, False) and isinstance(out.get(k), Mapping)
            v = _deep_merge(out[k] if merge else {}, v)  # merged into {}: nested __replace__ markers stripped
        out[k] = v
    return out


def load_config_dict(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config into a plain dict, resolving ``base:`` (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        where = f" (inherited via base: from {_chain[-1]})" if _chain else ""
        what = "is not a file" if path.exists() else "not found"
        raise ConfigError(f"config file {str(path)!r} {what}{where}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: circular base: inheritance ({cycle})")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a config file "
                              f"(the limit is {MAX_CONFIG_BYTES})")
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
    parts = [p.strip() for p in key.split(".")]
    if not all(parts):
        raise ConfigError(f"bad override {override!r}: empty key path; {_OVERRIDE_HELP}")
    try:
        value = _yaml_load(raw, "value") if raw.strip() else None
    except ConfigError as exc:
        problem = str(exc).split("YAML syntax error: ", 1)[-1]
        raise ConfigError(f"bad override {override!r}: cannot parse value as YAML: {problem}") from None
    return parts, raw, value


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str], schema: Any = None) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a plain config dict (returns a new dict).

    Values are parsed as YAML. If `schema` is given and the target field is a plain string, the value is
    kept verbatim (so ``name=2024`` stays the string '2024').
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(d))
    for ov in overrides:
        parts, raw, value = _parse_override(ov)
        if (schema is not None and isinstance(value, (bool, int, float))
                and _schema._walk(schema, parts) == (str, len(parts))):
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


def config_from_dict(d: Mapping[str, Any] | Any, schema: type[T] = ExperimentConfig, prefix: str = "") -> T:
    """Validate a plain (nested) dict against a section schema; ConfigError lists every problem."""
    return validate(d, schema, prefix)


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: type[T] = ExperimentConfig) -> T:
    """Read a YAML config (following ``base:``), apply overrides, validate, return the frozen tree."""
    d = load_config_dict(path)
    d = apply_overrides(d, overrides, schema)
    return config_from_dict(d, schema)


def override_config(cfg: T, overrides: Sequence[str]) -> T:
    """Return a copy of a config with ``a.b=c`` overrides applied and re-validated."""
    schema = type(cfg)
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides, schema), schema)


# --------------------------------------------------------------------------------------------------
# Serialisation.
# --------------------------------------------------------------------------------------------------

def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A config tree as plain dicts/lists/scalars (JSON- and YAML-serialisable)."""
    if not isinstance(cfg, BaseModel):
        raise TypeError(f"expected a config section, got {type(cfg).__name__}")
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: BaseModel, header: str | None = None) -> str:
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


def save_resolved_config(cfg: BaseModel, workdir: str | Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the fully resolved config to ``workdir/config.yaml`` atomically; returns the path.

    The file has no ``base:`` and no defaults left implicit, so it reproduces the run by itself.
    """
    path = Path(workdir) / name
    header = (f"Resolved {type(cfg).__name__} (all defaults filled in; no base:).\n"
              f"Reload with jaxnas.config.load_config({str(path)!r}).")
    return atomic_write_text(path, config_to_yaml(cfg, header=header))


def describe_schema(schema: type[BaseModel] = ExperimentConfig, prefix: str = "") -> str:
    """One line per leaf key: ``path: type = default``."""
    return _schema.describe_schema(schema, prefix)
