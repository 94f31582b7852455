"""Tests for jaxnas.config: typed YAML configs, overrides, inheritance, validation."""
import json
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
import yaml

from jaxnas.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    describe_schema,
    load_config,
    load_config_dict,
    override_config,
    save_resolved_config,
)

from jaxnas.schema import Section

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors_of(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


# ----------------------------------------------------------------------------- round trip


def test_defaults_round_trip():
    cfg = ExperimentConfig()
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert config_to_dict(config_from_dict(d)) == d
    json.dumps(d)  # plain, JSON-serialisable
    assert d["export"]["formats"] == ["onnx", "tflite"]


def test_dict_config_dict_round_trip_nondefault():
    d = config_to_dict(ExperimentConfig())
    d["name"] = "rt"
    d["model"].update(width=0.75, depthwise="shift")  # (a spec beside width is refused: width would be ignored)
    d["optim"].update(name="adamw", grad_clip=1.0)
    d["train"]["distill"] = {"teacher": "runs/teacher", "weight": 0.5, "temperature": 4.0}
    d["export"]["formats"] = ["onnx"]
    d["search"] = {"method": "pop", "target_macs": 1e6, "target_latency_ms": None,
                   "args": {"ratio": 0.5, "layers": [1, 2], "nested": {"a": None}}}
    cfg = config_from_dict(d)
    assert cfg.model.width == 0.75 and cfg.train.distill.teacher == "runs/teacher"
    assert cfg.export.formats == ("onnx",)
    assert config_to_dict(cfg) == d


def test_configs_are_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_int_coerced_to_float_and_partial_sections():
    cfg = config_from_dict({"train": {"epochs": 3}, "model": {"width": 1}, "data": None})
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert isinstance(cfg.model.width, float)
    assert cfg.data == ExperimentConfig().data
    assert cfg.optim == ExperimentConfig().optim


# ----------------------------------------------------------------------------- overrides


def test_overrides_nested_types(tmp_path):
    p = write(tmp_path / "c.yaml", "train:\n  epochs: 5\n")
    cfg = load_config(p, [
        "train.seed=7",                      # int
        "optim.learning_rate=0.05",          # float
        "optim.weight_decay=5e-4",           # float without a dot (YAML 1.2)
        "data.augment=false",                # bool
        "export.formats=[onnx]",             # list -> tuple
        "model.num_classes=null",            # null
        "data.image_size=null",
        "train.distill.temperature=2",       # int -> float, 3 levels deep
        "train.distill.teacher=runs/t", "train.distill.weight=0.5",
        "train.epochs=1",                    # overrides the file
        "search.args.steps=100",             # into a dict-typed field
        "search.args.sub.k=[1, 2]",          # creates nested mappings in a dict field
        "name=2024",                         # str field keeps the text
    ])
    assert cfg.train.seed == 7
    assert cfg.optim.learning_rate == 0.05
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.data.augment is False
    assert cfg.export.formats == ("onnx",)
    assert cfg.model.num_classes is None and cfg.data.image_size is None
    assert cfg.train.distill.temperature == 2.0 and isinstance(cfg.train.distill.temperature, float)
    assert cfg.train.epochs == 1.0
    assert cfg.search.args == {"steps": 100, "sub": {"k": [1, 2]}}
    assert cfg.name == "2024"


def test_override_whole_mapping_and_order():
    d = apply_overrides({}, ["search.args={a: 1, b: [x]}", "search.args.a=2"])
    assert d == {"search": {"args": {"a": 2, "b": ["x"]}}}


def test_override_config_revalidates():
    cfg = override_config(ExperimentConfig(), ["model.width=0.5"])
    assert cfg.model.width == 0.5
    with pytest.raises(ConfigError, match=r"model.width: expected float, got 'wide'"):
        override_config(cfg, ["model.width=wide"])


@pytest.mark.parametrize("bad", ["train.epochs", "train.epochs 3"])
def test_override_without_equals(bad):
    with pytest.raises(ConfigError) as ei:
        apply_overrides({}, [bad])
    msg = str(ei.value)
    assert "missing '='" in msg and "section.key=value" in msg and len(msg.splitlines()) == 1


def test_override_bad_key_and_value():
    with pytest.raises(ConfigError, match="empty key path"):
        apply_overrides({}, ["train..epochs=3"])
    with pytest.raises(ConfigError, match="cannot parse value"):
        apply_overrides({}, ["export.formats=[onnx"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_override_unknown_key_is_reported_like_file_keys(tmp_path):
    p = write(tmp_path / "c.yaml", "name: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lerning_rate' — did you mean 'optim.learning_rate'\?"):
        load_config(p, ["optim.lerning_rate=0.1"])


# ----------------------------------------------------------------------------- validation


def test_unknown_key_suggestions():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"optim": {"lerning_rate": 0.1}})
    assert errors_of(ei) == ["unknown key 'optim.lerning_rate' — did you mean 'optim.learning_rate'?"]
    # A key in the wrong section is pointed at the right one.
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"train": {"lerning_rate": 0.1}})
    assert errors_of(ei) == ["unknown key 'train.lerning_rate' — did you mean 'optim.learning_rate'?"]
    with pytest.raises(ConfigError, match=r"unknown key 'trian' — did you mean 'train'\?"):
        config_from_dict({"trian": {}})
    # No close match: list the valid keys instead.
    with pytest.raises(ConfigError, match=r"unknown key 'schedule.zzz' \(valid keys in 'schedule': name, warmup_epochs"):
        config_from_dict({"schedule": {"zzz": 1}})


def test_wrong_types_one_line_each():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({
            "train": {"epochs": "ten", "seed": True, "log_every": 2.5},
            "data": {"augment": "yes", "image_size": "big"},
            "export": {"formats": "onnx"},
            "model": 3,
        })
    errs = errors_of(ei)
    assert "train.epochs: expected float, got 'ten'" in errs
    assert "train.seed: expected int, got true (a bool)" in errs
    assert "train.log_every: expected int, got 2.5" in errs
    assert "data.augment: expected bool (true/false), got 'yes'" in errs
    assert "data.image_size: expected int or list of 2 (int, int) or null, got 'big'" in errs
    assert "export.formats: expected list of one of 'onnx', 'tflite', 'tensorrt', got 'onnx'" in errs
    assert "model: expected mapping (ModelConfig), got 3" in errs
    assert len(errs) == 7
    assert isinstance(ei.value, ValueError) and ei.value.errors == errs


def test_bool_not_accepted_as_float():
    with pytest.raises(ConfigError, match="optim.learning_rate: expected float, got true"):
        config_from_dict({"optim": {"learning_rate": True}})


def test_literal_violation():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"optim": {"name": "adam"}, "export": {"formats": ["onnx", "tflit"]}})
    errs = errors_of(ei)
    assert errs[0] == "optim.name: expected one of 'sgd', 'adamw', got 'adam' — did you mean 'adamw'?"
    assert errs[1] == ("export.formats[1]: expected one of 'onnx', 'tflite', 'tensorrt', got 'tflit' — "
                       "did you mean 'tflite'?")


def test_unknown_method_is_refused_by_the_runner_with_a_suggestion():
    # search.method names a method folder; the registry (not a hand-kept list) says which exist.
    from jaxnas.methods import SearchError
    from jaxnas.pipeline import resolve_method

    with pytest.raises(SearchError, match=r"unknown method 'dmpc' — did you mean 'dmcp'\?"):
        resolve_method(config_from_dict({"search": {"method": "dmpc"}}))
    with pytest.raises(ConfigError, match=r"unknown key 'search.args.min_widht' — did you mean 'search.args.min_width'\?"):
        resolve_method(config_from_dict({"search": {"method": "dmcp", "args": {"min_widht": 0.2}}}))


def test_optional_and_dict_fields():
    cfg = config_from_dict({"optim": {"grad_clip": None}, "search": {"args": None}})
    assert cfg.optim.grad_clip is None and cfg.search.args == {}
    with pytest.raises(ConfigError, match="search.args: expected a mapping, got"):
        config_from_dict({"search": {"args": [1, 2]}})
    with pytest.raises(ConfigError, match="optim.grad_clip: expected float or null, got 'x'"):
        config_from_dict({"optim": {"grad_clip": "x"}})


def test_semantic_checks_prefixed():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"data": {"holdout": 1.5, "batch_size": 0}, "train": {"distill": {"weight": 1.0}}})
    errs = errors_of(ei)
    assert "data.holdout: must be a fraction in [0, 1) or a whole example count, got 1.5" in errs
    assert "data.batch_size: must be > 0, got 0" in errs
    assert any(e.startswith("train.distill.weight:") and "teacher" in e for e in errs)


# ----------------------------------------------------------------------------- generic sub-schemas


class _Inner(Section):
    k: int = 1


class _MethodArgs(Section):
    prune_ratio: float = 0.5
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    widths: tuple[float, ...] = (0.5, 1.0)
    pair: tuple[int, int] = (1, 2)
    inner: _Inner = _Inner()
    extra: dict[str, Any] = {}
    required: str = "x"


class _NeedsValue(Section):
    must: int


def test_method_sub_schema_with_prefix():
    cfg = config_from_dict({"search": {"method": "pop", "args": {"prune_ratio": 1, "widths": [0.25, 1]}}})
    args = config_from_dict(cfg.search.args, _MethodArgs, prefix="search.args")
    assert args.prune_ratio == 1.0 and args.widths == (0.25, 1.0) and args.inner == _Inner()
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"prune_ration": 0.3, "mode": "c", "pair": [1, 2, 3], "inner": {"k": "z"}},
                         _MethodArgs, prefix="search.args")
    errs = errors_of(ei)
    assert "unknown key 'search.args.prune_ration' — did you mean 'search.args.prune_ratio'?" in errs
    assert any(e.startswith("search.args.mode: expected one of 'a', 'b', got 'c'") for e in errs)
    assert any(e.startswith("search.args.pair: expected list of 2") for e in errs)
    assert "search.args.inner.k: expected int, got 'z'" in errs
    with pytest.raises(ConfigError, match="search.args.widths\\[1\\]: expected float, got 'x'"):
        config_from_dict({"widths": [1, "x"]}, _MethodArgs, prefix="search.args")


def test_required_field():
    with pytest.raises(ConfigError, match="must: missing required key"):
        config_from_dict({}, _NeedsValue)
    assert config_from_dict({"must": 3}, _NeedsValue).must == 3


# ----------------------------------------------------------------------------- files


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_has_line(tmp_path):
    p = write(tmp_path / "bad.yaml", "train:\n  epochs: 3\n  seed: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1
    assert "bad.yaml:" in msg and "YAML syntax error" in msg
    line = int(msg.split("bad.yaml:")[1].split(":")[0])
    assert 3 <= line <= 4


def test_top_level_must_be_mapping(tmp_path):
    p = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    assert load_config(write(tmp_path / "empty.yaml", "# nothing\n")) == ExperimentConfig()


def test_yaml12_scalars(tmp_path):
    p = write(tmp_path / "c.yaml", "name: on\noptim:\n  weight_decay: 1e-4\ntrain:\n  seed: 010\n")
    cfg = load_config(p)
    assert cfg.name == "on" and cfg.optim.weight_decay == 1e-4 and cfg.train.seed == 10


def test_base_inheritance(tmp_path):
    write(tmp_path / "root.yaml", "name: root\nmodel:\n  width: 0.5\n  dropout: 0.2\n"
          "export:\n  formats: [onnx, tflite]\nsearch:\n  method: dmcp\n  args: {a: 1, b: 2}\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../root.yaml\nmodel:\n  width: 0.75\ntrain:\n  epochs: 2\n")
    child = write(tmp_path / "sub" / "child.yaml",
                  "base: mid.yaml\nname: child\nexport:\n  formats: [onnx]\n"
                  "search:\n  method: pop\n  args:\n    __replace__: true\n    c: 3\n")
    cfg = load_config(child, ["train.seed=3"])
    assert cfg.name == "child"
    assert cfg.model.width == 0.75 and cfg.model.dropout == 0.2   # deep merge
    assert cfg.train.epochs == 2.0 and cfg.train.seed == 3
    assert cfg.export.formats == ("onnx",)                          # lists replace
    assert cfg.search.method == "pop" and cfg.search.args == {"c": 3}
    # Without __replace__ mappings merge.
    merge = write(tmp_path / "merge.yaml", "base: root.yaml\nsearch:\n  args: {c: 3}\n")
    assert load_config(merge).search.args == {"a": 1, "b": 2, "c": 3}
    assert "base" not in load_config_dict(child)


def test_base_errors(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular base"):
        load_config(a)
    c = write(tmp_path / "c.yaml", "base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"config file '.*missing.yaml' not found \(inherited via base: from"):
        load_config(c)
    d = write(tmp_path / "d.yaml", "base: {x: 1}\n")
    with pytest.raises(ConfigError, match="base: must be a file path"):
        load_config(d)


def test_save_resolved_config_round_trip(tmp_path):
    cfg = config_from_dict({
        "name": "yes",                    # a string YAML 1.1 would read as bool
        "data": {"source": "tfds", "name": "1e3"},  # a string YAML 1.2 would read as float
        "optim": {"weight_decay": 5e-5, "grad_clip": 2},
        "export": {"formats": ["onnx"]},
        "search": {"method": "dmcp", "target_macs": 3e8, "args": {"x": [1, 2], "y": None}},
    })
    workdir = tmp_path / "run" / "deep"
    path = save_resolved_config(cfg, workdir)
    assert path == workdir / "config.yaml" and path.is_file()
    assert [f for f in os.listdir(workdir) if f != "config.yaml"] == []  # no temp files left
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["name"] == "yes"           # plain PyYAML agrees
    # Overwrite in place.
    cfg2 = override_config(cfg, ["train.epochs=4"])
    save_resolved_config(cfg2, workdir)
    assert load_config(path) == cfg2


def test_config_to_yaml_and_describe():
    text = config_to_yaml(ExperimentConfig(), header="hello\nworld")
    assert text.startswith("# hello\n# world\n")
    assert config_from_dict(yaml.safe_load(text)) == ExperimentConfig()
    desc = describe_schema()
    assert "optim.learning_rate: float = 0.1" in desc
    assert "train.distill.teacher: str or null = null" in desc


# ----------------------------------------------------------------------------- shipped configs


def test_quickstart_loads():
    path = REPO / "configs" / "quickstart.yaml"
    cfg = load_config(path)
    assert cfg.name == "quickstart"
    assert cfg.data.source == "embedded" and cfg.data.image_size == 28 and cfg.data.batch_size == 128
    assert cfg.model.name == "mobilenet_v2" and cfg.model.width == 0.5 and cfg.model.small_input
    assert cfg.optim.name == "sgd" and cfg.optim.nesterov and cfg.optim.learning_rate == pytest.approx(0.1)
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs == 1.0
    assert cfg.train.epochs == 5.0 and cfg.train.label_smoothing == pytest.approx(0.1)
    assert "jaxnas train configs/quickstart.yaml --workdir runs/quickstart" in path.read_text()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_all_shipped_configs_load(path):
    """Every top-level config validates and its comment header gives the run command."""
    assert isinstance(load_config(path), ExperimentConfig)
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert any("jaxnas " in ln for ln in header), f"{path.name}: header comment lacks the run command"
