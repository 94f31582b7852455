"""Bad inputs through the CLI: each is refused with exit status 2 and one line `error: ...` naming the problem
(and the fix), and changes no existing output (the finished work dir and every output path are hashed
before and after).

The table runs `jaxnas.cli.main([...])` in-process against one finished tiny work dir (module fixture);
the tests after it cover what needs processes (two commands on one work dir, a killed holder), a failing
disk, and one test per class of the issue (work-dir integrity, typed specs and CLI numbers, data that does
not fit the model, tables checked against each other, one line instead of a traceback).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxnas import cli

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# Fixtures: a finished tiny run, bad files next to it.
# ----------------------------------------------------------------------------------------------------


def tiny_spec_dict() -> dict:
    from jaxnas import spec as S
    from jaxnas import zoo

    blocks = (S.Block("conv", (S.Conv(8, (3, 3), 2, act="relu6"),)),
              zoo.mbv2_block(8, 16, 8, 1, name="b1"),
              S.Block("conv", (S.Conv(16, (1, 1), act="relu6"),)))
    return S.to_dict(S.ArchSpec("tiny", blocks, S.Head(10), (8, 8), 1))


def config_text(spec: Path, **sections: str) -> str:
    base = {"name": "tiny",
            "data": "{image_size: 8, limit_train: 256, limit_test: 100, batch_size: 32, eval_batch_size: 50, "
                    "augment: false}",
            "model": f"{{spec: {spec}}}",
            "train": "{epochs: 1, checkpoint_every: 4, log_every: 4, progress: false}"}
    base.update(sections)
    return "".join(f"{k}: {v}\n" for k, v in base.items())


def tree_hash(path: Path) -> str | None:
    """Names and bytes of every file under `path` (None when it does not exist)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny training run and the bad files the cases point at."""
    d = tmp_path_factory.mktemp("bad_inputs")
    spec = tiny_spec_dict()
    (d / "tiny.json").write_text(json.dumps(spec))
    (d / "tiny.yaml").write_text(config_text(d / "tiny.json"))
    work = d / "finished"
    assert cli.main(["train", str(d / "tiny.yaml"), "--workdir", str(work), "--no-deploy", "--quiet"]) == 0

    def bad_spec(name: str, edit) -> None:
        s = copy.deepcopy(spec)
        edit(s)
        (d / f"{name}.json").write_text(json.dumps(s))

    bad_spec("out_true", lambda s: s["blocks"][0]["layers"][0].__setitem__("out", True))
    bad_spec("out_negative", lambda s: s["blocks"][2]["layers"][0].__setitem__("out", -16))
    bad_spec("out_float", lambda s: s["blocks"][1]["layers"][2].__setitem__("out", 8.5))
    bad_spec("kernel_zero", lambda s: s["blocks"][0]["layers"][0].__setitem__("kernel", [0, 3]))
    bad_spec("stride_string", lambda s: s["blocks"][0]["layers"][0].__setitem__("stride", "2"))
    bad_spec("classes_negative", lambda s: s["head"].__setitem__("num_classes", -3))
    bad_spec("hidden_zero", lambda s: s["head"].__setitem__("hidden", [0]))
    bad_spec("layers_null", lambda s: s["blocks"][1].__setitem__("layers", None))
    (d / "top_list.json").write_text("[1, 2, 3]")
    (d / "not_json.json").write_text("{name: tiny")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (120, 8, 8), dtype=np.uint8)
    y = np.arange(120) % 10
    stray = y.copy()
    stray[5] = 999
    np.savez(d / "stray_label.npz", x_train=x[:100], y_train=stray[:100], x_test=x[100:], y_test=y[100:])
    np.savez(d / "test_only_labels.npz", x_train=x[:100], y_train=y[:100] % 5, x_test=x[100:], y_test=y[100:],
             class_names=np.array([f"c{i}" for i in range(10)]))
    np.savez(d / "good.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    raw = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.npz").write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    np.save(d / "single.npy", x)
    os.replace(d / "single.npy", d / "single.npz")
    np.savez(d / "objects.npz", x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=np.zeros(4))

    (d / "dup.yaml").write_text(f"name: tiny\nmodel: {{spec: {d / 'tiny.json'}}}\ndata: {{image_size: 8}}\n"
                                "data: {limit_train: 64}\n")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, k in enumerate("bcdefg"):
        prev = "abcdefg"[i]
        bomb.append(f"{k}: &{k} [{', '.join([f'*{prev}'] * 9)}]")
    (d / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (d / "list.yaml").write_text("- train\n- data\n")
    (d / "big.yaml").write_text("# " + "x" * (1 << 20) + "\n")
    (d / "afile").write_text("not a directory\n")
    (d / "out").mkdir()

    _depth_tables(d)
    return {"d": d, "work": work, "cfg": d / "tiny.yaml"}


def _depth_tables(d: Path) -> None:
    from jaxnas import zoo
    from jaxnas.methods.depth import (ImportanceTable, extended_importance, extended_segments,
                                      time_table_from_mapping, valid_segments, write_ext_importance,
                                      write_time_table)
    from jaxnas.methods.depth.mergeable import body_of, mergeable_spec
    from test_depth_merge import tiny_mbv2
    from test_depth_pipeline import synthetic_times

    def ext_for(chain, path: Path, drop: int = 0) -> None:
        segs = valid_segments(chain)
        ext = extended_segments(segs, chain.block_ends)
        raw = ImportanceTable({k: {"train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0,
                                   "val_acc": -float(k[1] - k[0])} for k in ext})
        table = extended_importance(raw, ext)
        if drop:  # the rows of `drop` inner multi-conv segments missing
            gone = set([s for s in segs if s[1] - s[0] > 1 and s[1] < chain.L][:drop])
            table.imp = {k: v for k, v in table.imp.items() if k[:2] not in gone}
        write_ext_importance(table, path)

    chain = body_of(tiny_mbv2()).chain  # L = 14
    times = synthetic_times(chain)
    write_time_table(time_table_from_mapping(times, valid_segments(chain)), d / "time.csv")
    lines = (d / "time.csv").read_text().splitlines()
    (d / "time_truncated.csv").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    ext_for(chain, d / "ext.csv")
    ext_for(chain, d / "ext_partial.csv", drop=3)
    big = body_of(mergeable_spec(zoo.get_spec("mobilenet_v2", resolution=16, num_classes=10, width=0.35,
                                              small_input=True))).chain  # L = 50
    ext_for(big, d / "ext_50.csv")
    assert cli.main(["depth", "t-opt", "--time-table", str(d / "time.csv"), "--out", str(d / "opt.csv")]) == 0


# ----------------------------------------------------------------------------------------------------
# The table: (id, argv, words the one line must hold). {d}: the fixture dir, {w}: the finished work dir,
# {c}: its config. Every case must exit 2 with one line and leave {w} and the paths it names unchanged.
# ----------------------------------------------------------------------------------------------------

TRAIN = ["train", "{c}", "--workdir", "{w}", "--no-deploy", "--quiet"]
NEW = ["train", "{c}", "--workdir", "{d}/new", "--no-deploy", "--quiet"]
SOLVE = ["depth", "solve", "--opt-time-table", "{d}/opt.csv", "--importance-table", "{d}/ext.csv"]
MEASURE = ["latency", "measure", "{d}/tiny.json", "--random-init", "--warmup", "0", "--runs", "2"]


def _set(*kv: str) -> list[str]:
    return [a for s in kv for a in ("--set", s)]


CASES = [
    # -- work-dir integrity: a finished run is never touched by a rerun of another config
    ("rerun_other_lr", TRAIN + _set("optim.learning_rate=0.5"),
     ["holds a run with another config", "optim.learning_rate: 0.1 -> 0.5", "--allow-config-change"]),
    ("rerun_other_classes", TRAIN + _set("model.num_classes=12"), ["model.num_classes: null -> 12", "new --workdir"]),
    ("rerun_other_image_size", TRAIN + _set("data.image_size=10"), ["data.image_size: 8 -> 10"]),
    ("rerun_other_epochs", TRAIN + _set("train.epochs=3"), ["train.epochs: 1.0 -> 3.0"]),
    ("rerun_other_seed", TRAIN + _set("train.seed=7"), ["train.seed: 0 -> 7"]),
    ("rerun_bad_data_path", TRAIN + _set("data.source=npz", "data.path={d}/nowhere.npz"), ["data.source"]),
    ("search_on_a_training", ["search", "{c}", "--workdir", "{w}", "--no-deploy"]
     + _set("search.method=depth", "search.target_latency_ms=1"), ["search.method", "another config"]),
    ("quickstart_on_a_training", ["quickstart", "--workdir", "{w}", "--no-export", "--quiet"],
     ["holds a run with another config"]),
    ("workdir_is_a_file", TRAIN[:3] + ["{d}/afile"] + TRAIN[4:], ["--workdir", "is a file, not a directory"]),
    ("workdir_under_a_file", TRAIN[:3] + ["{d}/afile/run"] + TRAIN[4:], ["afile is a file, not a directory"]),
    ("workdir_unwritable", TRAIN[:3] + ["/proc/jaxnas_run"] + TRAIN[4:],
     ["cannot use --workdir /proc/jaxnas_run", "choose a writable --workdir"]),
    ("workdir_holds_other_files", TRAIN[:3] + ["{d}"] + TRAIN[4:], ["is not empty and holds no jaxnas run"]),
    ("name_climbs_out", NEW + _set("name=../escape"), ["name: must be a plain name", "--workdir"]),
    ("name_absolute", NEW + _set("name=/tmp/escape"), ["name: must be a plain name"]),
    ("eval_a_file", ["eval", "{d}/afile"], ["is not a directory"]),
    ("eval_not_a_workdir", ["eval", "{d}/out"], ["no config.yaml", "not a jaxnas work dir"]),
    # -- config files: every key does something or is refused; bounded
    ("yaml_duplicate_key", ["train", "{d}/dup.yaml", "--workdir", "{d}/new"], ["duplicate key 'data'"]),
    ("yaml_alias_bomb", ["train", "{d}/bomb.yaml", "--workdir", "{d}/new"], ["aliases expand to more than"]),
    ("yaml_too_big", ["train", "{d}/big.yaml", "--workdir", "{d}/new"], ["is not a config file"]),
    ("yaml_top_level_list", ["train", "{d}/list.yaml", "--workdir", "{d}/new"], ["top level must be a mapping"]),
    ("config_is_a_directory", ["train", "{d}/out", "--workdir", "{d}/new"], ["is not a file"]),
    ("data_name_ignored", NEW + _set("data.name=cifar10"), ["data.name", "embedded source is Fashion-MNIST",
                                                            "source: tfds"]),
    ("download_ignored", NEW + _set("data.download=true"), ["data.download: only the tfds source downloads"]),
    ("epochs_infinite", NEW + _set("train.epochs=.inf"), ["train.epochs"]),
    ("epochs_text", NEW + _set("train.epochs=ten"), ["train.epochs: expected float"]),
    ("unknown_key", NEW + _set("optim.lerning_rate=0.1"), ["did you mean 'optim.learning_rate'"]),
    ("macs_target_for_depth", ["search", "{c}", "--workdir", "{d}/new"]
     + _set("search.method=depth", "search.target_macs=1000"), ["search.target_macs", "does not take a macs"]),
    ("threads_on_xla_config", NEW + _set("latency.backend=xla", "latency.threads=2"),
     ["latency.threads", "xla backend takes no thread count"]),
    ("sgd_with_adam_b1", NEW + _set("optim.b1=0.5"), ["optim.b1: sgd has no Adam moments", "would be ignored"]),
    ("adamw_with_momentum", NEW + _set("optim.name=adamw", "optim.momentum=0.5"), ["optim.momentum: adamw"]),
    ("constant_schedule_end_value", NEW + _set("schedule.name=constant", "schedule.end_value=0.1"),
     ["schedule.end_value: a constant schedule does not decay"]),
    ("warmup_start_without_warmup", NEW + _set("schedule.warmup_start=0.5"), ["schedule.warmup_start: warmup_epochs is 0", "would be ignored"]),
    ("temperature_without_teacher", NEW + _set("train.distill.temperature=4"), ["train.distill.temperature: no teacher is set", "would be ignored"]),
    ("teacher_without_weight", NEW + _set("train.distill.teacher={w}"), ["train.distill.teacher", "weight is 0"]),
    ("width_with_spec", NEW + _set("model.width=0.5"), ["model.width: model.spec gives the whole network"]),
    ("latency_table_for_train", NEW + _set("latency.table={d}/opt.csv"),
     ["latency.table: `jaxnas train`", "reads no latency table"]),
    ("latency_table_for_depth", ["search", "{c}", "--workdir", "{d}/new"]
     + _set("search.method=depth", "latency.table={d}/opt.csv"), ["method 'depth' reads no latency table"]),
    ("latency_table_for_dmcp_macs", ["search", "{c}", "--workdir", "{d}/new"]
     + _set("search.method=dmcp", "search.target_macs=1000", "latency.table={d}/opt.csv"),
     ["only for search.target_latency_ms, not for search.target_macs"]),
    # -- specs and CLI numbers: types, not just shapes; the path of the wrong field
    ("spec_out_true", ["info", "{d}/out_true.json"], ["blocks[0].layers[0].out", "got true"]),
    ("spec_out_negative", ["info", "{d}/out_negative.json"], ["blocks[2].layers[0].out", "got -16"]),
    ("spec_out_float", ["info", "{d}/out_float.json"], ["blocks[1].layers[2].out", "got 8.5"]),
    ("spec_kernel_zero", ["info", "{d}/kernel_zero.json"], ["blocks[0].layers[0].kernel[0]"]),
    ("spec_stride_string", ["info", "{d}/stride_string.json"], ["blocks[0].layers[0].stride", '"2"']),
    ("spec_classes_negative", ["info", "{d}/classes_negative.json"], ["head.num_classes", "-3"]),
    ("spec_hidden_zero", ["info", "{d}/hidden_zero.json"], ["head.hidden[0]"]),
    ("spec_layers_null", ["info", "{d}/layers_null.json"], ["blocks[1].layers: expected a list"]),
    ("spec_top_level_list", ["info", "{d}/top_list.json"], ["top level must be a JSON object"]),
    ("spec_not_json", ["info", "{d}/not_json.json"], ["not valid JSON"]),
    ("spec_bad_in_train", NEW + _set("model.spec={d}/out_true.json"), ["blocks[0].layers[0].out"]),
    ("info_width_zero", ["info", "mobilenet_v2", "--width", "0"], ["--width: must be > 0"]),
    ("info_resolution_negative", ["info", "mobilenet_v2", "--resolution", "-8"], ["--resolution: must be >= 1"]),
    ("info_classes_text", ["info", "mobilenet_v2", "--num-classes", "ten"], ["--num-classes: expected an integer"]),
    ("threads_zero", MEASURE + ["--threads", "0"], ["--threads: must be >= 1"]),
    ("runs_zero", MEASURE[:-1] + ["0"], ["--runs: must be >= 1"]),
    ("warmup_negative", MEASURE + ["--warmup", "-1"], ["--warmup: must be >= 0"]),
    ("threads_on_xla", MEASURE + ["--backend", "xla", "--threads", "2"], ["xla backend takes no thread count"]),
    ("unknown_backend", MEASURE + ["--backend", "onnxrt"], ["unknown latency backend"]),
    # -- data that does not fit the model
    ("labels_beyond_head", NEW + _set("model.num_classes=5"), ["model.num_classes=5", "10 classes"]),
    ("stray_label", NEW + _set("data.source=npz", "data.path={d}/stray_label.npz"),
     ["labels imply 1000 classes", "stray"]),
    ("test_labels_not_in_train", NEW + _set("data.source=npz", "data.path={d}/test_only_labels.npz"),
     ["test labels 5, 6, 7, 8, 9 never occur in the train split"]),
    ("batch_beyond_split", NEW + _set("data.batch_size=4096"), ["data.batch_size=4096 exceeds", "train split"]),
    ("image_size_beyond_memory", NEW + _set("data.image_size=100000"), ["data.image_size=100000", "would need",
                                                                         "lower data.image_size"]),
    ("model_beyond_memory", NEW + _set("model.spec=null", "model.width=1000"),
     ["M parameters", "would need", "lower model.width"]),
    ("npz_garbage", NEW + _set("data.source=npz", "data.path={d}/garbage.npz"), ["not a readable .npz", "corrupt"]),
    ("npz_truncated", NEW + _set("data.source=npz", "data.path={d}/truncated.npz"), ["not a readable .npz"]),
    ("npz_single_array", NEW + _set("data.source=npz", "data.path={d}/single.npz"), ["not an .npz archive"]),
    ("npz_objects", NEW + _set("data.source=npz", "data.path={d}/objects.npz"),
     ["object arrays", "never loads"]),
    ("tfds_not_prepared", NEW + _set("data.source=tfds", "data.name=mnist", "data.data_dir={d}/tfds"),
     ["not prepared", "data.download: true", "without internet access", "data.data_dir"]),
    # -- tables checked against each other; bounded DP
    ("topt_truncated_table", ["depth", "t-opt", "--time-table", "{d}/time_truncated.csv", "--out", "{d}/out/o.csv"],
     ["single-conv rows", "truncated"]),
    ("solve_layer_count_mismatch", SOLVE[:-1] + ["{d}/ext_50.csv", "--time-limit", "0.1"],
     ["covers 50 convs", "covers 14", "different networks"]),
    ("solve_segments_mismatch", SOLVE[:-1] + ["{d}/ext_partial.csv", "--time-limit", "0.1"],
     ["do not cover the same segments"]),
    ("solve_budget_beyond_memory", SOLVE + ["--time-limit", "1e12", "--prec", "1000"],
     ["stage-2 DP table", "lower the precision"]),
    ("solve_time_limit_inf", SOLVE + ["--time-limit", "inf"], ["--time-limit: must be a finite number > 0"]),
    ("solve_prec_zero", SOLVE + ["--time-limit", "0.1", "--prec", "0"], ["--prec: must be a finite number > 0"]),
    # -- one line instead of a traceback: outputs that cannot be written
    ("topt_out_is_a_directory", ["depth", "t-opt", "--time-table", "{d}/time.csv", "--out", "{d}/out"],
     ["is a directory"]),
    ("topt_out_under_a_file", ["depth", "t-opt", "--time-table", "{d}/time.csv", "--out", "{d}/afile/o.csv"],
     ["afile is a file, not a directory"]),
    ("export_out_is_a_file", ["export", "{w}", "--format", "onnx", "--out", "{d}/afile"], ["--out", "is a file"]),
    ("export_out_unwritable", ["export", "{w}", "--format", "onnx", "--out", "/proc/jaxnas_export"],
     ["--out /proc/jaxnas_export: cannot create it", "choose a writable directory"]),
    ("export_bad_format", ["export", "{w}", "--format", "onnx,pdf", "--out", "{d}/out/e"], ["--format[1]"]),
]


def _fill(argv: list[str], env: dict[str, Path]) -> list[str]:
    return [a.format(d=env["d"], w=env["work"], c=env["cfg"]) for a in argv]


def test_at_least_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, env, capsys):
    _, argv, words = case
    argv = _fill(argv, env)
    d = env["d"]
    watched = [env["work"], d / "new", d / "out", d / "afile", d / "opt.csv"] + [
        Path(a) for a in argv if a.startswith(str(d)) and not a.endswith((".yaml", ".json", ".csv", ".npz"))]
    before = {p: tree_hash(p) for p in watched}
    code, _, err = run_cli(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert {p: tree_hash(p) for p in watched} == before


# ----------------------------------------------------------------------------------------------------
# 1. Work-dir integrity.
# ----------------------------------------------------------------------------------------------------


def test_rerun_with_another_config_is_refused_before_writing(env, capsys):
    """The finished run's config.yaml, weights and summary stay as they were; a key that does not change what
    the weights mean (train.max_steps, logging, export, latency) may change; --allow-config-change opts in."""
    work = env["work"]
    before = tree_hash(work)
    code, _, err = run_cli(capsys, _fill(TRAIN, env) + _set("optim.learning_rate=0.5", "train.label_smoothing=0.1"))
    assert code == 2 and "optim.learning_rate: 0.1 -> 0.5" in err and "train.label_smoothing" in err
    assert tree_hash(work) == before
    from jaxnas.config import load_config
    from jaxnas.workdir import check_config_change, config_changes

    cfg = load_config(work / "config.yaml")
    free = ["train.max_steps=3", "train.log_every=2", "train.progress=true", "export.formats=[onnx]",
            "latency.runs=5", "data.eval_batch_size=20", "name=other"]
    from jaxnas.config import config_to_dict, override_config

    assert config_changes(config_to_dict(cfg), config_to_dict(override_config(cfg, free)), search=False) == []
    # For a search, the runtime is part of what it finds (a latency target is measured on it).
    changed = override_config(cfg, ["latency.backend=tflite", "latency.runs=5"])
    assert config_changes(config_to_dict(cfg), config_to_dict(changed), search=True) == [
        'latency.backend: "onnxruntime" -> "tflite"']
    check_config_change(work, override_config(cfg, ["optim.learning_rate=0.5"]), search=False, allow=True)


def test_refused_first_run_leaves_no_work_dir(env, capsys):
    new = env["d"] / "fresh" / "run"
    code, _, err = run_cli(capsys, ["train", str(env["cfg"]), "--workdir", str(new), "--no-deploy", "--quiet",
                                    "--set", "data.source=npz", "--set", f"data.path={env['d']}/garbage.npz"])
    assert code == 2 and "not a readable .npz" in err
    assert not (env["d"] / "fresh").exists()
    empty = env["d"] / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, ["train", str(env["cfg"]), "--workdir", str(empty), "--no-deploy", "--quiet",
                                    "--set", "data.batch_size=4096"])
    assert code == 2 and "exceeds" in err and list(empty.iterdir()) == []


def test_train_refuses_an_imported_work_dir(tmp_path, capsys):
    """`jaxnas train` on an import-weights work dir (its own config.yaml) would train from scratch over the
    imported weights: refused, before the data is even read."""
    pytest.importorskip("safetensors")
    from test_import_weights import random_state_dict, save_safetensors

    state, _ = random_state_dict("mobilenet_v2", 0.5, classes=10, res=32)
    src = save_safetensors(state, tmp_path / "mbv2.safetensors")
    work = tmp_path / "imported"
    assert cli.main(["import-weights", str(src), "--model", "mobilenet_v2", "--width", "0.5", "--out", str(work),
                     "--resolution", "32", "--num-classes", "10"]) == 0
    capsys.readouterr()
    before = tree_hash(work)
    code, _, err = run_cli(capsys, ["train", str(work / "config.yaml"), "--workdir", str(work), "--no-deploy"])
    assert code == 2 and err.count("\n") == 1 and "holds imported weights" in err
    assert tree_hash(work) == before


def test_import_weights_never_damages_a_work_dir(env, tmp_path, capsys):
    """`jaxnas import-weights --out` replaces an earlier import only with the same import (same file and
    config) or with --replace; it never writes into a work dir another command holds or a training's work
    dir, and a bad --out is one line naming --out."""
    pytest.importorskip("safetensors")
    from jaxnas.workdir import WorkdirLock
    from test_import_weights import random_state_dict, save_safetensors

    state, _ = random_state_dict("mobilenet_v2", 0.5, classes=10, res=32)
    src = save_safetensors(state, tmp_path / "mbv2.safetensors")
    work = tmp_path / "imported"
    argv = ["import-weights", str(src), "--model", "mobilenet_v2", "--width", "0.5", "--resolution", "32",
            "--num-classes", "10"]
    assert run_cli(capsys, argv + ["--out", str(work)])[0] == 0
    assert run_cli(capsys, argv + ["--out", str(work)])[0] == 0  # the same import again
    before = tree_hash(work)
    for extra, words in [(["--num-classes", "5"], ["holds another import", "model.num_classes: 10 -> 5", "--replace"]),
                         (["--set", "optim.learning_rate=0.5"], ["optim.learning_rate: 0.1 -> 0.5"])]:
        code, _, err = run_cli(capsys, argv + ["--out", str(work)] + extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and all(w in lines[0] for w in words), err
        assert tree_hash(work) == before
    with WorkdirLock(work):  # another command holds it
        code, _, err = run_cli(capsys, argv + ["--out", str(work)])
        assert code == 2 and "is in use by another jaxnas command" in err and "another --out" in err, err
    assert tree_hash(work) == before
    for out, words in [(env["work"], "already holds files that are not an earlier import"),
                       (env["d"] / "afile" / "x", "afile is a file, not a directory; choose another --out")]:
        was = tree_hash(out.parent)
        code, _, err = run_cli(capsys, argv + ["--out", str(out)])
        assert code == 2 and err.count("\n") == 1 and words in err, err
        assert tree_hash(out.parent) == was
    assert run_cli(capsys, argv + ["--out", str(work), "--num-classes", "5", "--replace"])[0] == 0
    assert json.loads((work / "summary.json").read_text())["num_classes"] == 5


def _train_argv(cfg: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxnas.cli", "train", str(cfg), "--workdir", str(work), "--no-deploy",
            "--quiet", *extra]


def _wait_for(pred, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.2)


def test_second_command_on_a_work_dir_is_refused_and_a_killed_holder_leaves_no_lock(env, tmp_path):
    """Two processes on one work dir: the second is refused in one line naming the first (pid, command); after
    `kill -9` of the holder, the next command takes the work dir over (the kernel dropped the lock)."""
    work = tmp_path / "w"
    first = subprocess.Popen(_train_argv(env["cfg"], work, "--set", "train.epochs=50"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _wait_for(lambda: (work / "checkpoints").is_dir() or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(_train_argv(env["cfg"], work, "--set", "train.epochs=50"), capture_output=True,
                                text=True, cwd=tmp_path, timeout=300)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "is in use by another jaxnas command" in lines[0] and f"pid {first.pid}" in lines[0]
        assert "`jaxnas train " in lines[0] and "train.epochs=50" in lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from jaxnas.workdir import WorkdirLock

    with WorkdirLock(work):  # taken over at once: no stale lock to clean up
        pass


def test_eval_of_an_interrupted_run_says_which_step(env, tmp_path, capsys):
    """`jaxnas eval` on a run stopped early names the checkpoint step its weights come from."""
    work = tmp_path / "w"
    assert cli.main(["train", str(env["cfg"]), "--workdir", str(work), "--no-deploy", "--quiet",
                     "--set", "train.epochs=3", "--set", "train.max_steps=4"]) == 0
    import shutil

    shutil.rmtree(work / "final")  # as a run killed after its step-4 checkpoint leaves it
    capsys.readouterr()
    code, out, err = run_cli(capsys, ["eval", str(work), "--json"])
    assert code == 0, err
    weights = json.loads(out)["weights"]
    assert weights["source"] == "checkpoint" and weights["step"] == 4 and weights["total_steps"] == 21
    code, out, _ = run_cli(capsys, ["eval", str(work)])
    assert "checkpoint at step 4 of 21" in out and "unfinished" in out
    code, out, _ = run_cli(capsys, ["eval", str(env["work"])])
    assert code == 0 and "weights from final/ (step 7 of 7)" in out


def test_outputs_honour_the_umask(env, tmp_path):
    """Atomic writes and orbax checkpoints get 0666/0777 minus the umask, as a plain open() would."""
    code = ("import os, sys; os.umask(0o027); from jaxnas import cli; "
            f"sys.exit(cli.main(['train', {str(env['cfg'])!r}, '--workdir', {str(tmp_path / 'w')!r}, "
            "'--no-deploy', '--quiet', '--set', 'train.max_steps=1']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    modes = {(p.is_dir(), p.stat().st_mode & 0o777) for p in (tmp_path / "w").rglob("*")}
    assert modes <= {(False, 0o640), (True, 0o750)} and (False, 0o640) in modes, modes


# ----------------------------------------------------------------------------------------------------
# Every accepted config key does something, or is refused.
# ----------------------------------------------------------------------------------------------------


def test_keys_the_run_would_ignore_are_refused_and_defaults_pass():
    """A key set away from its default where its section ignores it is refused; the same key at its default
    (every stored config.yaml lists all keys) or where it is used passes."""
    from jaxnas.config import ConfigError, config_from_dict, config_to_dict
    from jaxnas.model_config import ModelConfig
    from jaxnas.train.config import DistillConfig, OptimConfig, ScheduleConfig

    for section, data, key in [(OptimConfig, {"b2": 0.9}, "b2"), (OptimConfig, {"name": "adamw", "nesterov": False},
                                                                   "nesterov"),
                               (ScheduleConfig, {"warmup_start": 0.1}, "warmup_start"),
                               (ScheduleConfig, {"name": "constant", "end_value": 0.5}, "end_value"),
                               (DistillConfig, {"temperature": 2.0}, "temperature"),
                               (ModelConfig, {"spec": "a.json", "name": "resnet18"}, "name"),
                               (ModelConfig, {"spec": "a.json", "dropout": 0.2}, "dropout"),
                               (ModelConfig, {"spec": "a.json", "small_input": False}, "small_input")]:
        with pytest.raises(ConfigError, match=f"{section.section}.{key}: .* would be ignored"):
            section(**data)
    OptimConfig(name="adamw", b1=0.5, momentum=0.9)
    ScheduleConfig(warmup_epochs=1, warmup_start=0.1, name="linear", end_value=0.5)
    DistillConfig(teacher="runs/t", weight=0.5, temperature=2.0)
    ModelConfig(spec="a.json", width=1.0, name="mobilenet_v2")
    full = config_to_dict(config_from_dict({"model": {"spec": "a.json"}, "optim": {"name": "adamw"}}))
    config_from_dict(full)  # a stored config (every key, defaults included) loads again


def test_dmcp_latency_search_refuses_a_table_from_another_device(tmp_path, capsys):
    """`latency.table` is the table a latency-target search uses; one measured on another device or runtime
    is refused in one line (not silently replaced by a new measurement here), and the file is kept."""
    pytest.importorskip("onnxruntime")
    from jaxnas.latency.builder import resolve_backend
    from jaxnas.latency.table import LatencyTable
    from test_dmcp import _tiny_setup

    from jaxnas.config import config_to_yaml

    _, cfg = _tiny_setup(tmp_path, 20000.0)
    table = tmp_path / "grid.json"
    here = resolve_backend("onnxruntime", 1).fingerprint(batch_size=1).to_dict()
    LatencyTable.new({**here, "device": "Other CPU 9000"}).save(table)
    before = tree_hash(table)
    conf = tmp_path / "dmcp.yaml"
    conf.write_text(config_to_yaml(cfg))
    code, _, err = run_cli(capsys, ["search", str(conf), "--workdir", str(tmp_path / "w"), "--no-deploy",
                                    "--set", "search.target_macs=null", "--set", "search.target_latency_ms=0.05",
                                    "--set", f"latency.table={table}"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Other CPU 9000" in lines[0] and "device" in lines[0], lines[0]
    assert tree_hash(table) == before and not (tmp_path / "w" / "latency_grid.json").exists()


def test_export_of_a_work_dir_uses_its_export_section(env, tmp_path, monkeypatch, capsys):
    """`jaxnas export WORKDIR` exports the formats (route, tolerance) of the work dir's config unless
    --format / --route say otherwise."""
    import shutil

    import jaxnas.deploy
    from jaxnas.config import load_config, save_resolved_config

    work = tmp_path / "w"
    shutil.copytree(env["work"], work)
    save_resolved_config(load_config(work / "config.yaml", ["export.formats=[tflite]", "export.route=tflite",
                                                             "export.tolerance=0.001"]), work)
    seen = []

    class Result:
        exports: dict = {}

    monkeypatch.setattr(jaxnas.deploy, "deploy", lambda spec, v, export, latency, **kw: seen.append(export) or Result())
    assert run_cli(capsys, ["export", str(work), "--out", str(tmp_path / "e")])[0] == 0
    assert (seen[-1].formats, seen[-1].route, seen[-1].tolerance) == (("tflite",), "tflite", 0.001)
    assert run_cli(capsys, ["export", str(work), "--out", str(tmp_path / "e"), "--format", "onnx",
                            "--route", "jax2onnx"])[0] == 0
    assert (seen[-1].formats, seen[-1].route, seen[-1].tolerance) == (("onnx",), "jax2onnx", 0.001)


# ----------------------------------------------------------------------------------------------------
# 2. Specs and CLI numbers validated as types.
# ----------------------------------------------------------------------------------------------------


def test_spec_fields_are_typed_and_errors_name_the_field():
    from jaxnas import spec as S

    d = tiny_spec_dict()
    for path, value, words in [
        (("blocks", 2, "layers", 0, "out"), -16, "blocks[2].layers[0].out: must be an integer >= 1, got -16"),
        (("blocks", 0, "layers", 0, "out"), True, "blocks[0].layers[0].out: must be an integer >= 1, got true"),
        (("blocks", 1, "layers", 1, "stride"), 1.5, "blocks[1].layers[1].stride: must be an integer >= 1"),
        (("blocks", 0, "layers", 0, "kernel"), [3, -1], "blocks[0].layers[0].kernel[1]"),
        (("blocks", 0, "layers", 0, "norm"), 1, "blocks[0].layers[0].norm: must be true or false"),
        (("head", "num_classes"), 2.0, "head.num_classes: must be an integer >= 0, got 2.0"),
        (("in_channels",), 0, "in_channels: must be an integer >= 1"),
        (("input_size",), [8, True], "input_size[1]"),
    ]:
        bad = copy.deepcopy(d)
        node = bad
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        with pytest.raises(S.SpecError) as e:
            S.from_dict(bad)
        assert str(e.value).startswith(words), (path, str(e.value))
    for top in ([1, 2], "tiny", None):
        with pytest.raises(S.SpecError, match="top level must be a JSON object"):
            S.ArchSpec.from_json(json.dumps(top))
    # A spec built in code is checked the same way (it does not need to come from JSON).
    with pytest.raises(S.SpecError, match=r"blocks\[0\].layers\[0\].out"):
        S.validate(S.ArchSpec("x", (S.Block("conv", (S.Conv(-4),)),), S.Head(2), (8, 8)))


def test_info_never_prints_negative_parameter_counts(env, capsys):
    for name in ("out_negative", "classes_negative"):
        code, out, err = run_cli(capsys, ["info", str(env["d"] / f"{name}.json"), "--json"])
        assert code == 2 and out == "" and err.count("\n") == 1
    code, out, _ = run_cli(capsys, ["info", str(env["d"] / "tiny.json"), "--json"])
    rows = json.loads(out)["blocks"]
    assert code == 0 and all(r["params"] >= 0 and r["macs"] >= 0 for r in rows)


def test_argparse_errors_are_one_line(capsys):
    code, _, err = run_cli(capsys, ["latency", "measure", "x.json", "--random-init", "--runs", "0"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: jaxnas latency measure: argument --runs")


# ----------------------------------------------------------------------------------------------------
# 3. Data that does not fit the model.
# ----------------------------------------------------------------------------------------------------


def test_data_that_does_not_fit_the_model_is_refused(env):
    from jaxnas.data import DataConfig, DataError, load_dataset

    d = env["d"]
    with pytest.raises(DataError, match="labels imply 1000 classes"):
        load_dataset(DataConfig(source="npz", path=str(d / "stray_label.npz")))
    with pytest.raises(DataError, match="test labels 5, 6, 7, 8, 9 never occur"):
        load_dataset(DataConfig(source="npz", path=str(d / "test_only_labels.npz")))
    for bad in ("garbage.npz", "truncated.npz", "single.npz", "objects.npz"):
        with pytest.raises(DataError) as e:
            load_dataset(DataConfig(source="npz", path=str(d / bad)))
        assert "allow_pickle" not in str(e.value) and "\n" not in str(e.value), str(e.value)
    from jaxnas.config import config_from_dict
    from jaxnas.pipeline import prepare

    cfg = {"data": {"source": "npz", "path": str(d / "good.npz"), "holdout": 0}, "model": {"spec": str(d / "tiny.json")}}
    with pytest.raises(DataError, match="model.num_classes=4 but the data has 10 classes"):
        prepare(config_from_dict({**cfg, "model": {**cfg["model"], "num_classes": 4}}))
    with pytest.raises(DataError, match="data.batch_size=128 exceeds the 100 examples"):
        prepare(config_from_dict(cfg))


def test_json_outputs_are_strict(tmp_path):
    """A diverged loss (NaN, inf) is written as null in metrics.jsonl and summary.json: strict JSON parsers
    (jq, browsers, Python with parse_constant) read every JSON output."""
    from jaxnas.train.metrics import MetricsWriter, read_metrics
    from jaxnas.workdir import write_summary

    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    m = MetricsWriter(tmp_path)
    m.write({"step": 1, "split": "train", "loss": float("nan"), "lr": np.float32(np.inf)})
    m.close()
    write_summary(tmp_path, {"test_loss": float("nan"), "curve": [1.0, float("-inf")]})
    for name in ("metrics.jsonl", "summary.json"):
        for line in ([(tmp_path / name).read_text()] if name.endswith(".json") else
                     (tmp_path / name).read_text().splitlines()):
            json.loads(line, parse_constant=refuse)
    assert read_metrics(tmp_path)[0]["loss"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["curve"] == [1.0, None]


def test_eval_batch_never_exceeds_the_split(env):
    """A data.eval_batch_size far beyond the split evaluates the split as it is (same figures, no padding to a
    huge batch)."""
    from jaxnas import models
    from jaxnas.data import DataConfig, load_dataset
    from jaxnas.spec import ArchSpec
    from jaxnas.train import evaluate
    from jaxnas.train.loop import eval_batch_size_for

    ds = load_dataset(DataConfig(source="npz", path=str(env["d"] / "good.npz"), holdout=0))
    assert eval_batch_size_for(ds, "test", 10**9) == 20 and eval_batch_size_for(ds, "test", 8, 4) == 8
    assert eval_batch_size_for(ds, "test", 10**9, 3) == 21
    spec = ArchSpec.load(env["d"] / "tiny.json").with_input((8, 8), 10, 1)
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    a, b = evaluate(model, v, ds, "test", 10**9), evaluate(model, v, ds, "test", 7)
    assert a["count"] == b["count"] == 20 and a["accuracy"] == b["accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_evaluation_batches_are_balanced_not_padded_to_the_eval_batch_size():
    """Every evaluation (the trainer's, MetaPruning's fitness) spreads a split evenly over the batches the
    cap needs: a 600-image held-out split at eval_batch_size 500 is 2 x 300, not 2 x 500 with 400 padding
    rows computed for nothing."""
    from jaxnas.train.loop import balanced_batch_size

    assert balanced_batch_size(600, 500) == 300
    assert balanced_batch_size(1000, 500) == 500
    assert balanced_batch_size(1001, 500) == 334          # 3 batches of at most 334
    assert balanced_batch_size(20, 10**9) == 20           # a small split is one batch of its size
    assert balanced_batch_size(601, 500, 4) == 304        # 2 x 301, rounded up to the 4 devices
    assert balanced_batch_size(3, 500, 4) == 4


def test_tfds_without_network_gives_advice_that_fixes_it(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from jaxnas.data import DataConfig, DataError, load_dataset, sources

    cfg = DataConfig(source="tfds", name="mnist", data_dir=str(tmp_path / "tfds"), download=True)
    monkeypatch.setattr(sources, "_internet_reachable", lambda: False)
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "no internet access" in msg and "tfds build mnist --data_dir DIR" in msg and "data.data_dir" in msg
    monkeypatch.setattr(sources, "_internet_reachable", lambda: True)

    def offline(self, *a, **k):
        raise ConnectionError("Max retries exceeded (Failed to resolve 'storage.googleapis.com')")

    import tensorflow_datasets as tfds
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError, match=r"downloading 'mnist' failed \(ConnectionError: .*without internet access"):
        load_dataset(cfg)


# ----------------------------------------------------------------------------------------------------
# 4. Tables checked against each other; bounded DP; --threads honoured or refused.
# ----------------------------------------------------------------------------------------------------


def test_depth_tables_must_agree(env):
    from jaxnas.methods.depth import TableError
    from jaxnas.methods.depth.commands import solve_cli, t_opt_cli

    d = env["d"]
    with pytest.raises(TableError, match="truncated"):
        t_opt_cli(d / "time_truncated.csv", d / "out" / "never.csv")
    assert not (d / "out" / "never.csv").exists()
    with pytest.raises(TableError, match="covers 50 convs but .* covers 14"):
        solve_cli(d / "opt.csv", d / "ext_50.csv", 0.1, 20)
    with pytest.raises(TableError, match="3 segment"):
        solve_cli(d / "opt.csv", d / "ext_partial.csv", 0.1, 20)
    assert solve_cli(d / "opt.csv", d / "ext.csv", 0.13, 1000)["merge_pos"][-1] == 14


def test_dp_budget_beyond_memory_is_refused_before_allocating(env, monkeypatch):
    from jaxnas.methods.depth import dp
    from jaxnas.methods.depth.tables import read_ext_importance, read_opt_table
    from jaxnas.resources import ResourceError

    opt, ext = read_opt_table(env["d"] / "opt.csv"), read_ext_importance(env["d"] / "ext.csv")

    def no_alloc(*a, **k):
        raise AssertionError("allocated")

    with monkeypatch.context() as m:
        m.setattr(dp.np, "full", no_alloc)
        with pytest.raises(ResourceError, match="would need .* PiB"):
            dp.solve(opt, ext, 1e12, 1000, 14)
    # D, DT, P_i, P_j (8 + 8 + 4 + 4 bytes) over (L + 1) x 2 x (B + 1), and the scan's 8 vectors of B + 1.
    assert dp.dp_table_bytes(1.0, 1e5, 14) == (100_000 + 1) * (15 * 2 * 24 + 6 * 8 + 2 * 4)
    assert dp.solve(opt, ext, 0.13, 1e4, 14).budget == int(0.13 * 1e4)


def test_threads_honoured_or_refused_on_every_backend():
    from jaxnas.latency import get_backend
    from jaxnas.latency.config import LatencyConfig
    from jaxnas.runtime import BackendError
    from jaxnas.schema import ConfigError

    assert get_backend("onnxruntime", threads=2).threads == 2
    assert get_backend("tflite", threads=2).threads == 2
    for name in ("xla", "jax", "tensorrt"):
        with pytest.raises(BackendError, match="takes no thread count"):
            get_backend(name, threads=2)
        with pytest.raises(ConfigError, match="latency.threads"):
            LatencyConfig(backend=name, threads=4)
    assert get_backend("xla").name == "xla" and get_backend("xla", threads=1).name == "xla"


# ----------------------------------------------------------------------------------------------------
# 5. One clear line instead of a traceback.
# ----------------------------------------------------------------------------------------------------


def test_checkpoint_write_failure_is_one_line(env, tmp_path, monkeypatch, capsys):
    """A checkpoint orbax cannot write (here: its directory replaced by a file mid-run; a full disk below)
    is one line naming it, without the orbax worker threads' log storm."""
    import shutil

    import jaxnas.train.loop as loop

    save = loop.CheckpointStore.save

    def break_then_save(self, state, meta):
        if (self.directory / "4").exists():
            shutil.rmtree(self.directory)
            self.directory.write_text("x")
        return save(self, state, meta)

    monkeypatch.setattr(loop.CheckpointStore, "save", break_then_save)
    code, _, err = run_cli(capsys, ["train", str(env["cfg"]), "--workdir", str(tmp_path / "w"), "--no-deploy",
                                    "--quiet"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: cannot write the checkpoint") and "rerun the same command" in lines[0]


def test_a_worker_threads_copy_of_a_reported_write_failure_is_not_printed(monkeypatch):
    """Orbax's worker threads may end with the write error after it was reported in one line: their
    traceback is not printed (CI once printed 125 such lines after the one-line error); any other thread
    error still is."""
    import threading

    from jaxnas.train.checkpoint import _quiet_failures

    monkeypatch.delenv("JAXNAS_VERBOSE", raising=False)
    printed: list[str] = []  # what the default hook would print
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(str(args.exc_value)))

    def run(exc: BaseException) -> None:
        def target():
            raise exc
        t = threading.Thread(target=target)
        t.start()
        t.join()

    with pytest.raises(OSError):
        with _quiet_failures():
            run(RuntimeError("a worker's error while the write is failing"))
            raise OSError(28, "No space left on device")
    try:
        raise ValueError("RESOURCE_EXHAUSTED: Failed writing _sharding: No space left on device")
    except ValueError as inner:
        wrapped = RuntimeError("future failed")
        wrapped.__cause__ = inner
    run(wrapped)
    run(RuntimeError("an unrelated thread error"))
    assert printed == ["an unrelated thread error"]


def test_the_closed_event_loop_after_a_reported_write_failure_is_not_printed(monkeypatch):
    """After a failed write, tensorstore's threads find orbax's event loop closed and report it through
    `sys.unraisablehook` (a bare traceback; CI-like load printed it before the one-line error in 5 of 16
    runs): dropped, during the block and after a failure; any other unraisable exception still is not."""
    from types import SimpleNamespace

    from jaxnas.train.checkpoint import _quiet_failures

    monkeypatch.delenv("JAXNAS_VERBOSE", raising=False)
    printed: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(str(u.exc_value)))

    def unraisable(exc: BaseException) -> None:
        sys.unraisablehook(SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                           err_msg=None, object=None))

    with pytest.raises(OSError):
        with _quiet_failures():
            unraisable(RuntimeError("a callback's error while the write is failing"))
            raise OSError(28, "No space left on device")
    unraisable(RuntimeError("Event loop is closed"))
    unraisable(RuntimeError("an unrelated error"))
    assert printed == ["an unrelated error"]


def test_a_worker_threads_log_record_of_a_reported_write_failure_is_not_printed(monkeypatch):
    """Orbax's worker threads log their failure (absl ERROR with a traceback) and may do so after the write
    error was raised and reported in one line (CI once printed 125 such lines after it): records carrying
    the reported cause are dropped after the block, any other error record still goes out."""
    import logging

    from jaxnas.train.checkpoint import _quiet_failures

    monkeypatch.delenv("JAXNAS_VERBOSE", raising=False)
    absl = logging.getLogger("absl")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    absl.addHandler(handler)
    before = list(absl.filters)
    try:
        with pytest.raises(OSError):
            with _quiet_failures():
                raise OSError(28, "No space left on device")
        try:
            raise ValueError("RESOURCE_EXHAUSTED: Failed writing _sharding: No space left on device")
        except ValueError as inner:
            absl.error("_SignalingThread.run() raised an exception: %s", inner, exc_info=True)
        absl.error("an unrelated error")
    finally:
        absl.removeHandler(handler)
        absl.filters[:] = before
    assert seen == ["an unrelated error"]


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to mount a tiny tmpfs")
def test_full_disk_during_a_checkpoint_is_one_line(env, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = subprocess.run(_train_argv(env["cfg"], mnt / "w"), capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "No space left on device" in lines[0] and "free disk space" in lines[0]
