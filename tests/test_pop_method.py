"""POP on the method contract: search(ctx, args) with injected fakes (synthetic oracle and trainer)."""
import json
import types
from pathlib import Path

import pytest

from jaxnas.config import load_config
from jaxnas.methods.pop import PopArgs, PopError, load_space
from jaxnas.methods.pop.method import search
from jaxnas.methods.pop.synthetic import SYNTHETIC_SPACE, SyntheticOracle

ROOT = Path(__file__).resolve().parents[1]


class FakeDataset:
    image_shape = (28, 28, 1)
    num_classes = 10

    def __init__(self, holdout=200):
        self.holdout = holdout

    def num_examples(self, split):
        return {"train": 1000, "holdout": self.holdout, "test": 500}[split]


class FakeTrainer:
    """Accuracy = the synthetic oracle's; records what it was asked to train."""

    def __init__(self):
        self.oracle = SyntheticOracle()
        self.calls = []

    def train(self, spec, workdir, *, epochs=None, eval_split="test", test=True, **kw):
        self.calls.append((spec.name, epochs, eval_split, test))
        metrics = {"test": self.evaluate(spec, None, "test")} if test else {}
        return types.SimpleNamespace(variables={"params": {}}, metrics=metrics)

    def evaluate(self, spec, variables, split="test"):
        acc = self.oracle.accuracy(spec) - (0.01 if split == "test" else 0.0)
        return {"accuracy": acc, "loss": 1.0 - acc, "count": 100.0}


class FakeOracle(SyntheticOracle):
    backend = "synthetic"


def ctx_for(tmp_path, target=0.5, holdout=200, **set_):
    overrides = [f"search.target_latency_ms={target}"] + [f"{k}={v}" for k, v in set_.items()]
    cfg = load_config(ROOT / "configs" / "pop" / "quick.yaml", overrides)
    return types.SimpleNamespace(cfg=cfg, workdir=tmp_path, dataset=FakeDataset(holdout), spec=None,
                                 oracle=FakeOracle(), trainer=FakeTrainer(), log=lambda m: None)


def test_search_returns_the_best_boundary_net_under_the_target_retrained(tmp_path):
    ctx = ctx_for(tmp_path, target=0.5)
    args = PopArgs(space=SYNTHETIC_SPACE, max_trainings=30, candidate_epochs=2, prescreen=False)
    res = search(ctx, args)
    m = res.metrics
    bd = json.loads((tmp_path / "boundary.json").read_text())
    on = [e for e in bd["evaluated"] if e["on_boundary"] and e["latency_ms"] <= 0.5]
    best = max(on, key=lambda e: e["accuracy"])
    assert m["chosen"] == best["key"] and m["search_latency_ms"] == best["latency_ms"] <= 0.5
    assert res.spec.metadata["pop_arch"] == best["key"]
    assert m["target"] == {"latency_ms": 0.5} and m["space_size"] == 405 and m["trained"] == 30
    assert m["pruned_without_training"] == bd["counts"]["pruned_without_training"]
    assert m["test_accuracy"] == pytest.approx(FakeOracle().accuracy(res.spec) - 0.01)
    assert (tmp_path / "boundary.csv").is_file() and (tmp_path / "pareto.png").is_file()
    # candidates: the short schedule, no test evaluation; the chosen net: the full recipe, tested
    cands, final = ctx.trainer.calls[:-1], ctx.trainer.calls[-1]
    assert all(c[1] == 2 and c[3] is False for c in cands) and final[1] is None and final[3] is True


def test_search_refuses_an_empty_holdout_before_training(tmp_path):
    ctx = ctx_for(tmp_path, holdout=0)
    with pytest.raises(PopError, match="data.holdout"):
        search(ctx, PopArgs(space=SYNTHETIC_SPACE, prescreen=False))
    assert ctx.trainer.calls == []


@pytest.mark.slow
def test_jaxnas_search_pop_end_to_end_on_a_tiny_space(tmp_path, capsys):
    """`jaxnas search` with POP: real onnxruntime latency, real (tiny) trainings, deploy, summary."""
    from jaxnas import cli
    space = "{family: resnet, name: tiny, stem: [[8, 1], [16, 1]], stages: [{depths: [1], widths: [16]}, " \
            "{depths: [1], widths: [32]}, {depths: [1, 2], widths: [64]}]}"
    work = tmp_path / "w"
    argv = ["search", str(ROOT / "configs" / "pop" / "quick.yaml"), "--workdir", str(work),
            "--set", f"search.args.space={space}", "--set", "search.args.max_trainings=2",
            "--set", "search.args.candidate_epochs=0.05", "--set", "train.epochs=0.05",
            "--set", "data.limit_train=1500", "--set", "search.target_latency_ms=0.5",
            "--set", "export.formats=[onnx]"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    s = json.loads((work / "summary.json").read_text())
    assert s["target"] == {"latency_ms": 0.5} and s["space_size"] == 2 and s["trained"] == 2
    assert s["pruned_without_training"] == 0 and 0 <= s["test_accuracy"] <= 1 and s["latency_ms"] > 0
    assert s["achieved"] == {"latency_ms": s["latency_ms"]}   # the deploy measurement, not the search's
    for f in ("arch.json", "boundary.json", "boundary.csv", "pareto.png"):
        assert (work / f).is_file(), f
    # Rerun: everything resumes (no new training, same summary).
    assert cli.main(argv) == 0
    again = json.loads((work / "summary.json").read_text())
    assert again["chosen"] == s["chosen"] and again["test_accuracy"] == s["test_accuracy"]


@pytest.mark.parametrize("override, message", [
    ("search.args.max_trainings=0", "error: search.args.max_trainings: must be >= 1"),
    ("search.args.space={family: resnet, name: empty, stem: [[8, 1]], stages: [{depths: [1], widths: [64]}, "
     "{depths: [1], widths: [32]}]}", "error: search.args.space: the constraints of space 'empty' exclude every"),
])
def test_jaxnas_search_pop_bad_input_is_one_line_before_any_training(tmp_path, capsys, override, message):
    from jaxnas import cli
    work = tmp_path / "w"
    rc = cli.main(["search", str(ROOT / "configs" / "pop" / "quick.yaml"), "--workdir", str(work), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(message) and "Traceback" not in "\n".join(err)
    assert not (work / "pop" / "candidates").exists() and not (work / "summary.json").exists()


def test_pop_configs_load_and_their_args_validate():
    from jaxnas.methods import get as get_method
    from jaxnas.schema import validate
    for name in ("quick.yaml", "imagenet.yaml"):
        path = ROOT / "configs" / "pop" / name
        cfg = load_config(path)
        args = validate(cfg.search.args, get_method(cfg.search.method).args_schema(), "search.args")
        assert cfg.search.method == "pop" and cfg.latency.batch_size == 1 and cfg.search.target_latency_ms > 0
        assert f"jaxnas search configs/pop/{name}" in path.read_text()
        assert load_space(args.space, resolution=cfg.data.image_size, in_channels=3, num_classes=10).size() > 100
    quick, full = (load_config(ROOT / "configs" / "pop" / n) for n in ("quick.yaml", "imagenet.yaml"))
    assert (quick.data.source, quick.latency.backend, quick.latency.threads) == ("embedded", "onnxruntime", 1)
    assert (full.data.image_size, full.latency.backend) == (224, "tensorrt")
