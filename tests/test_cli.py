import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnas import cli
from jaxnas.config import config_to_dict, load_config
from jaxnas.quickstart import quickstart_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_json_has_macs_params_blocks(capsys):
    code, out, _ = run_cli(capsys, "info", "resnet18", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["params"] == 11_689_512 and abs(d["macs"] - 1.814e9) < 1e7
    assert len(d["blocks"]) == 11 and d["blocks"][-1]["kind"] == "head"
    assert sum(b["macs"] for b in d["blocks"]) == d["macs"]


def test_info_with_options_and_spec_json(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "info", "mobilenet_v2", "--resolution", "32", "--width", "0.5",
                           "--num-classes", "10", "--small-input", "--json")
    d = json.loads(out)
    assert code == 0 and d["input"] == [32, 32, 3] and d["num_classes"] == 10
    from jaxnas import zoo
    path = tmp_path / "arch.json"
    zoo.df1().save(path)
    code, out, _ = run_cli(capsys, "info", str(path))
    assert code == 0 and "df1" in out and "MMACs" in out


def test_bad_inputs_give_one_line_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", "resnet81")
    assert code == 2 and err.startswith("error: unknown model 'resnet81'") and "resnet18" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lerning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", str(bad), "--workdir", str(tmp_path / "w"))
    assert code == 2 and "did you mean 'optim.learning_rate'" in err
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: idx_files\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "--workdir", str(tmp_path / "w2"))
    assert code == 2 and err.count("\n") == 1 and "data.source" in err


def test_quickstart_yaml_is_the_quickstart_config():
    assert config_to_dict(load_config(ROOT / "configs" / "quickstart.yaml")) == config_to_dict(quickstart_config())


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "jaxnas.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout
    # Methods add their own sub-commands through the contract (no method is listed in cli.py).
    assert "depth" in out.stdout and "depth" not in (ROOT / "jaxnas" / "cli.py").read_text()


@pytest.mark.parametrize("argv", [["--help"], ["info", "mobilenet_v2"], ["methods"]])
def test_help_info_and_methods_load_no_framework(argv):
    """The light commands import neither jax, flax nor a runtime (start-up time)."""
    code = ("import sys\nfrom jaxnas import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = ('jax', 'flax', 'optax', 'orbax', 'onnx', 'onnxruntime', 'tensorflow', 'jax2onnx')\n"
            "print('LOADED', sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout[-300:]


def test_methods_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"dmcp", "depth"} <= set(rows)
    assert rows["dmcp"]["targets"] == ["macs", "latency_ms"] and rows["depth"]["targets"] == ["latency_ms"]
    assert rows["depth"]["commands"] and all(r["summary"] for r in rows.values())


def _tiny_spec_json(tmp_path):
    from jaxnas import spec as S
    from jaxnas import zoo
    blocks = (S.Block("conv", (S.Conv(8, (3, 3), 2, act="relu6"),)),
              zoo.mbv2_block(8, 16, 8, 1, name="b1"),
              S.Block("conv", (S.Conv(16, (1, 1), act="relu6"),)))
    path = tmp_path / "tiny.json"
    S.ArchSpec("tiny", blocks, S.Head(10), (28, 28), 1).save(path)
    return path


def test_train_eval_resume_and_summary_through_the_cli(capsys, tmp_path):
    spec = _tiny_spec_json(tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""# jaxnas train tiny.yaml
name: tiny
data: {{image_size: 28, limit_train: 512, limit_test: 200, batch_size: 64, eval_batch_size: 100}}
model: {{spec: {spec}}}
train: {{epochs: 2, checkpoint_every: 4, log_every: 4, progress: false}}
""")
    work = tmp_path / "w"
    code, out, err = run_cli(capsys, "train", str(cfg), "--workdir", str(work), "--set", "train.max_steps=5",
                             "--no-deploy", "--json")
    assert code == 0, err
    first = json.loads(out[out.index("{"):])
    # Resume to the end of the 2 epochs (max_steps only stops early; the schedule spans all epochs).
    code, out, err = run_cli(capsys, "train", str(cfg), "--workdir", str(work), "--no-deploy", "--quiet")
    assert code == 0, err
    assert out.startswith("train tiny: test accuracy ") and "work dir" in out  # the human summary
    summary = json.loads((work / "summary.json").read_text())
    assert summary["test_examples"] == 200 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["macs"] > 0 and summary["params"] > 0 and first["model"] == "tiny"
    assert (work / "config.yaml").is_file() and (work / "arch.json").is_file()
    code, out, err = run_cli(capsys, "eval", str(work), "--json")
    assert code == 0, err
    assert json.loads(out)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_export_and_latency_measure_commands(capsys, tmp_path):
    """`jaxnas export` and `jaxnas latency measure` go through the one deploy path, on a work dir and on a
    spec with --random-init."""
    spec = _tiny_spec_json(tmp_path)
    code, out, err = run_cli(capsys, "export", str(spec), "--random-init", "--format", "onnx", "--out",
                             str(tmp_path / "e"), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == {"onnx"} and Path(d["onnx"]["path"]).is_file() and d["onnx"]["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "e" / "export.json").read_text())["formats"]["onnx"]["path"] == d["onnx"]["path"]
    code, out, err = run_cli(capsys, "latency", "measure", str(spec), "--random-init", "--warmup", "1", "--runs",
                             "5", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["count"] == 5 and m["median_ms"] > 0 and m["fingerprint"]["backend"] == "onnxruntime"
    # A bad format or a number out of range: one line, exit 2.
    code, _, err = run_cli(capsys, "export", str(spec), "--random-init", "--format", "onnx,pdf", "--out",
                           str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "--format[1]" in err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["latency", "measure", str(spec), "--random-init", "--runs", "0"])
    assert e.value.code == 2 and "--runs: must be >= 1, got 0" in capsys.readouterr().err


def test_depth_tools_through_the_method_contract(capsys, tmp_path):
    from test_depth_pipeline import synthetic_times

    from jaxnas.methods.depth import (ImportanceTable, extended_importance, extended_segments,
                                      time_table_from_mapping, valid_segments, write_ext_importance,
                                      write_time_table)
    from jaxnas.methods.depth.mergeable import body_of
    from test_depth_merge import tiny_mbv2

    chain = body_of(tiny_mbv2()).chain
    times = synthetic_times(chain)
    write_time_table(time_table_from_mapping(times, valid_segments(chain)), tmp_path / "t.csv")
    code, out, err = run_cli(capsys, "depth", "t-opt", "--time-table", str(tmp_path / "t.csv"), "--out",
                             str(tmp_path / "opt.csv"))
    assert code == 0 and "T_opt rows" in out, err
    ext_segs = extended_segments(valid_segments(chain), chain.block_ends)
    raw = ImportanceTable({k: {"train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0, "val_acc": -float(k[1] - k[0])}
                           for k in ext_segs})
    write_ext_importance(extended_importance(raw, ext_segs), tmp_path / "ext.csv")
    total = sum(times[(i, i + 1)][0] for i in range(chain.L))
    code, out, err = run_cli(capsys, "depth", "solve", "--opt-time-table", str(tmp_path / "opt.csv"),
                             "--importance-table", str(tmp_path / "ext.csv"), "--time-limit", str(0.8 * total),
                             "--prec", "1000", "--json")
    assert code == 0, err
    assert set(json.loads(out)) >= {"act_pos", "merge_pos", "time_sum", "imp_sum"}
    with pytest.raises(SystemExit):
        cli.main(["depth", "solve", "--opt-time-table", "a", "--importance-table", "b", "--time-limit", "nan"])
    assert "--time-limit: must be a finite number > 0, got nan" in capsys.readouterr().err
