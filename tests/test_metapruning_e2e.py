"""MetaPruning end to end through `jaxnas search` (slow): summary fields, and a search killed with SIGKILL
mid-way that, rerun, ends with exactly the result of an uninterrupted one; and (fast, training and fitness
stubbed) the search's candidates keyed by their decoded network."""
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
from jaxnas import spec as S

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs/metapruning/quick.yaml")
# A small version of the quick config: 16 px, quarter widths, a few steps and candidates, a MACs budget.
TINY = ["data.image_size=16", "data.limit_train=1200", "search.target_latency_ms=null", "search.target_macs=0.5e6",
        "search.args.width_mult=0.25", "search.args.max_steps=6", "search.args.log_every=3",
        "search.args.checkpoint_every=3", "search.args.eval_every_epochs=0", "search.args.population=8",
        "search.args.select_num=8", "search.args.top_k=3", "search.args.mutation_num=3", "search.args.crossover_num=3",
        "search.args.max_iters=3", "search.args.calib_batches=1", "search.args.calib_batch_size=32",
        "search.args.candidates_per_call=2", "search.args.eval_batch=2", "train.epochs=0.1", "train.log_every=5",
        "train.progress=false"]


def _sets(extra=()):
    return [x for s in [*TINY, *extra] for x in ("--set", s)]


@pytest.mark.slow
def test_quick_search_end_to_end_writes_a_complete_summary(tmp_path, capsys):
    work = tmp_path / "run"
    code = cli.main(["search", QUICK, "--workdir", str(work), *_sets()])
    assert code == 0, capsys.readouterr().err
    s = json.loads((work / "summary.json").read_text())
    assert s["method"] == "metapruning" and s["target"] == {"macs": 0.5e6}
    assert s["achieved"]["macs"] <= 0.5e6 and s["achieved"]["latency_ms"] == s["latency_ms"] > 0
    assert 0 <= s["test_accuracy"] <= 1 and s["retrained"]
    assert len(s["genes"]) == 25 and len(s["genes_original"]) == 35
    assert [t["iteration"] for t in s["trace"]] == [0, 1, 2]
    assert all(a >= b for a, b in zip([t["best_fitness"] for t in s["trace"]], [t["best_fitness"] for t in s["trace"]][1:]))
    spec = S.ArchSpec.load(work / "arch.json")
    assert S.macs(spec) == s["achieved"]["macs"] and Path(s["onnx_path"]).is_file()
    # The printed genes decode to the same network with `jaxnas metapruning decode`.
    code = cli.main(["metapruning", "decode", "mobilenet_v2", "--genes", ",".join(map(str, s["genes_original"])),
                     "--resolution", "16", "--num-classes", "10", "--in-channels", str(spec.in_channels),
                     "--small-input", "--width-mult", "0.25", "--channel-multiple", "8",
                     "--out", str(tmp_path / "decoded.json")])
    assert code == 0
    assert S.ArchSpec.load(tmp_path / "decoded.json").blocks == spec.blocks


# `jaxnas search` with every evaluated batch of candidates delayed by argv[1] seconds: the tiny search evaluates
# a whole iteration in well under the test's polling interval on a fast machine (CI once saw the search finish
# between the poll and the kill), so the killed run is slowed to make "mid-evolution" a window, not a race.
# The delay changes no result: the evaluation itself is the search's own.
SLOWED = """
import sys, time
from jaxnas import cli
from jaxnas.methods.metapruning import evolution
delay, run = float(sys.argv[1]), evolution.run_evolution
def slowed(cfg, num_genes, evaluate, *a, **k):
    return run(cfg, num_genes, lambda genes: (time.sleep(delay), evaluate(genes))[1], *a, **k)
evolution.run_evolution = slowed
sys.exit(cli.main(sys.argv[2:]))
"""


def _start(work: Path, delay_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "JAXNAS_ALLOCATOR": "system"}
    return subprocess.Popen([sys.executable, "-c", SLOWED, str(delay_s), "search", QUICK, "--workdir", str(work),
                             *_sets(["search.args.retrain=false"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_search_killed_mid_evolution_resumes_to_the_same_result(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _start(full).wait() == 0
    proc = _start(cut, delay_s=1.0)
    tested = cut / "evolution" / "tested.json"
    deadline = time.time() + 1800
    while time.time() < deadline and proc.poll() is None:
        if tested.is_file() and len(json.loads(tested.read_text())["tested"]) >= 10:
            break  # mid-way: some candidates of the second iteration are evaluated
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((cut / "evolution" / "state.json").read_text())
    assert state["iteration"] < 3                      # killed before the end
    assert _start(cut).wait() == 0
    a = json.loads((full / "evolution" / "state.json").read_text())
    b = json.loads((cut / "evolution" / "state.json").read_text())
    assert a["top"] == b["top"] and a["tested"] == b["tested"] and a["trace"][-1]["best_fitness"] == \
        b["trace"][-1]["best_fitness"] and a["rng"] == b["rng"]
    assert (full / "chosen_arch.json").read_text() == (cut / "chosen_arch.json").read_text()


def test_the_search_evaluates_each_network_once_whatever_its_gene_aliases(tmp_path, monkeypatch):
    """`train_and_evolve` keys candidates by their decoded network: the tiny space (quarter widths, channels in
    multiples of 8) decodes most ids of most genes alike, and a fitness that differs per gene vector (as the
    PruningNet's generator input does) would otherwise score one network many times and keep its luckiest
    draw.  PruningNet training and fitness are stubbed: this checks the search's wiring, in seconds."""
    from jaxnas.config import load_config
    from jaxnas.data import load_dataset
    from jaxnas.methods.metapruning import pipeline, training
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.schema import validate

    cfg = load_config(QUICK, [*TINY, "search.args.population=16", "search.args.select_num=16",
                              "search.args.mutation_num=6", "search.args.crossover_num=6", "search.args.max_iters=6",
                              "search.args.verify_latency=0"])
    dataset = load_dataset(cfg.dataset_config())
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    setup = pipeline.prepare(cfg, dataset, args, log=lambda _m: None)

    class PerGeneVectorFitness:
        def __call__(self, genes):
            return [float(np.random.default_rng(list(g)).normal()) for g in genes]

        errors = __call__

    monkeypatch.setattr(training, "train_pruningnet", lambda model, variables, *a, **k: (variables, []))
    monkeypatch.setattr(pipeline, "fitness_evaluator", lambda *a, **k: PerGeneVectorFitness())
    searched = pipeline.train_and_evolve(cfg, dataset, setup, tmp_path, log=lambda _m: None)
    tested = [tuple(g) for g, _ in json.loads((tmp_path / "evolution" / "tested.json").read_text())["tested"]]
    nets = [setup.space.network_key(g) for g in tested]
    assert len(tested) == 6 * 16 == searched.evaluated
    assert len(set(nets)) == len(nets)


@pytest.mark.slow
def test_pruningnet_from_a_search_of_another_space_is_one_line(tmp_path, capsys):
    """A PruningNet trained for the quarter-width space, named by a half-width search: its checkpoint does not
    restore into the search's PruningNet; the error names the key and the fix, not orbax's shape message."""
    from jaxnas.config import load_config
    from jaxnas.data import load_dataset
    from jaxnas.methods.metapruning import pipeline
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.methods.metapruning.pruningnet import build_pruningnet, init_pruningnet
    from jaxnas.methods.metapruning.training import train_pruningnet
    from jaxnas.schema import validate

    cfg = load_config(QUICK, [*TINY, "search.args.max_steps=1", "search.args.checkpoint_every=1"])
    dataset = load_dataset(cfg.dataset_config())
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    setup = pipeline.prepare(cfg, dataset, args, log=lambda _m: None)
    model = build_pruningnet(setup.space)
    train_pruningnet(model, init_pruningnet(model, 0), dataset, pipeline.training_config(cfg, setup),
                     tmp_path / "a" / "pruningnet", log=lambda _m: None)
    code = cli.main(["search", QUICK, "--workdir", str(tmp_path / "b"),
                     *_sets(["search.args.width_mult=0.5", f"search.args.pruningnet_from={tmp_path / 'a'}"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: search.args.pruningnet_from:") and "does not restore into this search's" in err
    assert "width_mult" in err and "delete it" not in err
