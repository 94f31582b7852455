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
            "bad = [m for m in sys.modules if m.split('.')[0] in ('export', 'latency', 'onnxruntime', 'tensorflow')]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    for path in (ROOT / "jaxnas" / "methods").rglob("*.py"):
        text = path.read_text()
        assert "import export" not in text and "from export" not in text, path
        assert "import latency" not in text and "from latency" not in text, path
