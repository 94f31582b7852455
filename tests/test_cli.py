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


def test_core_packages_never_import_runtimes():
    """Dependencies point one way: methods, models, data and training see no export/latency runtime."""
    code = ("import sys, jaxnas.spec, jaxnas.models, jaxnas.supernet, jaxnas.zoo, jaxnas.train, jaxnas.data, "
            "jaxnas.methods.depth, jaxnas.config\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'tensorflow') or m.startswith(('jaxnas.export', 'jaxnas.latency'))]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    for path in (ROOT / "jaxnas" / "methods").rglob("*.py"):
        text = path.read_text()
        assert "jaxnas.export" not in text and "import export" not in text, path
        assert "jaxnas.latency" not in text and "import latency" not in text, path


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
    code, out, err = run_cli(capsys, "train", str(cfg), "--workdir", str(work), "--set", "train.max_steps=5")
    assert code == 0, err
    first = json.loads(out[out.index("{"):])
    # Resume to the end of the 2 epochs (max_steps only stops early; the schedule spans all epochs).
    code, out, err = run_cli(capsys, "train", str(cfg), "--workdir", str(work))
    assert code == 0, err
    summary = json.loads((work / "summary.json").read_text())
    assert summary["test_examples"] == 200 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["macs"] > 0 and summary["params"] > 0 and first["model"] == "tiny"
    assert (work / "config.yaml").is_file() and (work / "arch.json").is_file()
    code, out, err = run_cli(capsys, "eval", str(work), "--json")
    assert code == 0, err
    assert json.loads(out)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
