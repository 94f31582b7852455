"""Depth compression pipeline: importance (resumable), latency table builder, CLI helpers, `run`, configs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxnas.config import config_from_dict, load_config
from jaxnas.methods.depth import (BudgetError, TableError, extended_importance, extended_segments,
                                  feature_shapes, merged_conv_shape, read_importance_table, read_time_table,
                                  time_table_from_mapping, valid_segments, write_ext_importance,
                                  write_time_table)
from jaxnas.methods.depth.importance import (ImportanceConfig, ext_segments_of, measure_importance,
                                             optimal_importance)
from jaxnas.methods.depth import importance
from jaxnas.methods.depth.mergeable import body_of
from jaxnas.methods.depth.args import DepthArgs
from jaxnas.methods.depth.commands import solve_cli, t_opt_cli
from jaxnas.models import build_model, init_variables

from test_depth_merge import tiny_mbv2

ROOT = Path(__file__).resolve().parents[1]


def synthetic_times(chain, seed: int = 0) -> dict:
    """T(st, end) ~ launch overhead + MACs (dense merges cost more), in ms."""
    rng = np.random.default_rng(seed)
    shapes = feature_shapes(chain)
    out = {}
    for st, end in valid_segments(chain):
        m = merged_conv_shape(chain, st, end)
        h, w, c = shapes[st]
        ho, wo = -(-h // m.stride), -(-w // m.stride)
        macs = ho * wo * m.kernel ** 2 * m.out_ch * (1 if m.depthwise else c)
        out[(st, end)] = (0.01 + macs * 2e-7 * float(np.exp(rng.normal(0, 0.05))), 0.0005)
    return out


def write_synthetic_table(chain, path: Path) -> Path:
    write_time_table(time_table_from_mapping(synthetic_times(chain), valid_segments(chain)), path)
    return path


def tiny_dataset(n: int = 320, res: int = 8):
    from jaxnas.data import DataConfig
    from jaxnas.data.pipeline import Dataset

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, n)
    x = (rng.integers(0, 60, (n, res, res, 1)) + 40 * y[:, None, None, None]).astype(np.uint8)
    return Dataset.from_arrays(x, y, x[:64], y[:64], config=DataConfig(holdout=0.2, batch_size=16))


# ------------------------------------------------------------------------------------------ configs

def test_depth_configs_load():
    files = sorted((ROOT / "configs/depth").glob("*.yaml"))
    assert {f.name for f in files} >= {"quick.yaml", "mbv2_1.0.yaml", "mbv2_1.4.yaml", "vgg19.yaml"}
    for f in files:
        cfg = load_config(f)
        assert cfg.search.method == "depth"
        args = config_from_dict(cfg.search.args, DepthArgs, prefix="search.args")
        assert f"jaxnas search configs/depth/{f.name}" in f.read_text()
        if f.name != "quick.yaml":
            assert cfg.search.target_latency_ms and args.importance_padding == "rearrange"
    with pytest.raises(Exception, match="search.args.importance_stepz"):
        config_from_dict({"importance_stepz": 3}, DepthArgs, prefix="search.args")


# ------------------------------------------------------------------------------------- CLI helpers

def test_t_opt_and_solve_cli(tmp_path):
    chain = body_of(tiny_mbv2()).chain
    tcsv = write_synthetic_table(chain, tmp_path / "time.csv")
    out = t_opt_cli(tcsv, tmp_path / "opt.csv")
    assert out["rows"] == len(valid_segments(chain)) and (tmp_path / "opt.csv").exists()
    ext_segs = extended_segments(valid_segments(chain), chain.block_ends)
    rng = np.random.default_rng(0)
    from jaxnas.methods.depth import ImportanceTable
    raw = ImportanceTable({k: {"train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0,
                               "val_acc": -float(k[1] - k[0]) + 0.1 * rng.normal()} for k in ext_segs})
    write_ext_importance(extended_importance(raw, ext_segs), tmp_path / "ext.csv")
    total = sum(synthetic_times(chain)[(i, i + 1)][0] for i in range(chain.L))
    res = solve_cli(tmp_path / "opt.csv", tmp_path / "ext.csv", 0.8 * total, 1000, time_csv=tcsv)
    assert set(res) >= {"act_pos", "merge_pos", "imp_sum", "time_sum", "solve_seconds"}
    assert res["time_sum"] <= 0.8 * total + len(res["merge_pos"]) / 1000 and res["merge_check"] is not None
    assert set(res["act_pos"]) <= set(res["merge_pos"]) and res["merge_pos"][-1] == chain.L
    with pytest.raises(BudgetError, match="below the fastest achievable network") as e:
        solve_cli(tmp_path / "opt.csv", tmp_path / "ext.csv", 0.01 * total, 1000)
    assert "\n" not in str(e.value)
    # A table missing segments, and one in other units, are refused with one line.
    lines = (tmp_path / "time.csv").read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(TableError, match="missing 3 of"):
        read_time_table(tmp_path / "short.csv", segments=valid_segments(chain))
    (tmp_path / "us.csv").write_text("# units: us\n" + "\n".join(lines) + "\n")
    with pytest.raises(TableError, match="units 'us'"):
        t_opt_cli(tmp_path / "us.csv", tmp_path / "o2.csv")


# -------------------------------------------------------------------------------------- importance

def test_importance_resumes_and_skips_done_segments(tmp_path):
    spec = tiny_mbv2()
    v = init_variables(build_model(spec), 0)
    ds = tiny_dataset()
    calls = []

    def counting_finetune(compiled, variables, choices, batches, seed):
        calls.append(len(batches))
        return importance._finetune(compiled, variables, choices, batches, seed)

    cfg = ImportanceConfig(steps=1, batch_size=16, eval_batch_size=32, eval_examples=32, padding="same")
    table = measure_importance(spec, v, ds, tmp_path / "imp", cfg, log=None)  # real 1-step finetunes
    ext = ext_segments_of(body_of(spec))
    assert len(table) == len(ext)
    assert len(list((tmp_path / "imp").glob("seg_*.json"))) == len(ext)
    read_importance_table(tmp_path / "imp/importance.csv", ext_segments=ext)
    # Single-conv segments are re-initialised; the others keep the trained weights.
    assert table.scores[(5, 6, 1, 1)]["val_loss"] != 0.0
    for k in ext[:2]:
        (tmp_path / "imp" / "seg_{}_{}_{}_{}.json".format(*k)).unlink()
    calls.clear()
    table2 = measure_importance(spec, v, ds, tmp_path / "imp", cfg, log=None, finetune_fn=counting_finetune)
    assert len(calls) == 2 and table2.scores == table.scores
    with pytest.raises(ValueError, match="other settings"):
        measure_importance(spec, v, ds, tmp_path / "imp", ImportanceConfig(steps=3, padding="same"), log=None)
    ext_t = optimal_importance(table, body_of(spec), alpha=1.0)
    assert len(ext_t) == len(ext)
    with pytest.raises(ValueError, match="test split"):
        ImportanceConfig(eval_split="test")


# ------------------------------------------------------------------------------------ latency table

def oracle_over(runtime, warmup=1, runs=3):
    """The runner's latency oracle over a given backend object (a real or a fake runtime)."""
    from jaxnas.latency.config import LatencyConfig
    from jaxnas.latency.oracle import RuntimeOracle

    oracle = RuntimeOracle(LatencyConfig(warmup=warmup, runs=runs), log=None)
    oracle._runtime = runtime
    return oracle


def test_segment_table_builds_and_resumes(tmp_path):
    from jaxnas.latency import get_backend
    from jaxnas.methods.depth.time_table import build_time_table

    chain = body_of(tiny_mbv2(res=8)).chain
    be = get_backend("onnxruntime", threads=1)
    out = build_time_table(chain, tmp_path / "t.csv", oracle_over(be))
    T = read_time_table(out, segments=valid_segments(chain))
    assert len(T) == len(valid_segments(chain)) and all(e.time > 0 for e in T.entries.values())
    cache = json.loads((tmp_path / "t.cache.json").read_text())
    assert len(cache["entries"]) < len(T)  # identical merged convs are measured once

    class NoMeasure:
        def __init__(self, inner):
            self.inner = inner

        def fingerprint(self, batch_size=1):
            return self.inner.fingerprint(batch_size)

        def measure(self, *a, **k):
            raise AssertionError("a resumed build must not measure again")

    (tmp_path / "t.csv").unlink()
    build_time_table(chain, tmp_path / "t.csv", oracle_over(NoMeasure(be)))
    assert read_time_table(tmp_path / "t.csv").entries == T.entries


class ConvCountRuntime:
    """A 'runtime' whose latency is 1 us per Conv node of the ONNX file + 0.1 us per other node; the first
    (base, merged) pair of every segment runs on a busy core (x1.5), which the median of the paired
    differences must ignore."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def fingerprint(self, batch_size=1):
        return self.inner.fingerprint(batch_size)

    def measure(self, path, shape, *, warmup, runs):
        import onnx
        from jaxnas.latency import TimingStats

        self.calls += 1
        ops = [n.op_type for n in onnx.load(path).graph.node]
        ms = 1e-3 * ops.count("Conv") + 1e-4 * (len(ops) - ops.count("Conv"))
        return TimingStats.from_samples([ms * (1.5 if self.calls % 6 in (2, 3) else 1.0)] * 3)


def test_segment_network_table_times_merges_in_the_network(tmp_path):
    """Δ(st, end) is the whole network's change when only that segment is merged; Σ T(i, i+1) = L_base;
    a rebuild resumes from the cache without measuring."""
    import onnx
    from jaxnas.export import export_onnx
    from jaxnas.latency import get_backend
    from jaxnas.methods.depth.mergeable import mergeable_spec
    from jaxnas.methods.depth.time_table import (build_network_time_table, conv_split, network_time_table,
                                                 segment_deltas, segment_network)

    spec = tiny_mbv2(res=8)
    base = mergeable_spec(spec)
    chain = body_of(base).chain
    segs = [s for s in valid_segments(chain) if s[1] - s[0] > 1][:3] + [(0, 1)]
    rt = ConvCountRuntime(get_backend("onnxruntime", threads=1))
    variables = init_variables(build_model(base), 0)
    base_ms, deltas = segment_deltas(base, oracle_over(rt), tmp_path / "c.json", variables=variables, rounds=3,
                                     segments=segs)
    assert rt.calls == 1 + 3 * 2 * 3 and set(deltas) == set(segs[:3])

    def convs(s, v):
        export_onnx(s, v, tmp_path / "m.onnx", check=False)
        ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
        return ops.count("Conv"), len(ops) - ops.count("Conv")

    c0, o0 = convs(base, variables)
    assert base_ms == pytest.approx(1e-3 * c0 + 1e-4 * o0)
    for st, end in segs[:3]:
        c, o = convs(*segment_network(base, variables, st, end))
        assert c0 - (end - st - 1) <= c <= c0 - (end - st - 1) + 1  # + a skip's zero-padding 1x1 conv
        assert deltas[(st, end)][0] == pytest.approx(1e-3 * (c - c0) + 1e-4 * (o - o0), abs=1e-12)
    split = conv_split(chain, base_ms)
    assert sum(split) == pytest.approx(base_ms) and all(x > 0 for x in split)
    T = network_time_table(chain, base_ms, deltas, segs)
    for st, end in segs:
        assert T[(st, end)][0] == pytest.approx(sum(split[st:end]) + (deltas[(st, end)][0] if end - st > 1 else 0))
    # The whole table, then a resumed rebuild that must not measure.
    rt = ConvCountRuntime(rt.inner)
    out = build_network_time_table(spec, tmp_path / "t.csv", oracle_over(rt, runs=2), rounds=1)
    table = read_time_table(out, segments=valid_segments(chain))
    assert sum(table.entries[(i, i + 1)].time for i in range(chain.L)) == pytest.approx(
        1e-3 * c0 + 1e-4 * o0, rel=1e-6)
    n = rt.calls
    build_network_time_table(spec, tmp_path / "t.csv", oracle_over(rt, runs=2), rounds=1)
    assert rt.calls == n


# ------------------------------------------------------------------------------------------ run

def test_run_end_to_end_tiny(tmp_path):
    from jaxnas.methods.depth.mergeable import mergeable_spec
    from jaxnas.pipeline import run
    from jaxnas.train import save_final

    spec = tiny_mbv2(res=8, classes=10)
    spec.save(tmp_path / "tiny.json")
    save_final(tmp_path / "base", init_variables(build_model(spec), 0))  # a given baseline: no training
    write_synthetic_table(body_of(mergeable_spec(spec)).chain, tmp_path / "t.csv")
    cfg = config_from_dict({
        "data": {"source": "embedded", "image_size": 8, "holdout": 0.2, "limit_train": 400, "limit_test": 200,
                 "batch_size": 32, "eval_batch_size": 100, "channels": 1},
        "model": {"spec": str(tmp_path / "tiny.json")},
        "optim": {"learning_rate": 0.05},
        "train": {"epochs": 1, "max_steps": 4, "progress": False, "log_every": 2, "eval_every_epochs": 1},
        "search": {"method": "depth", "args": {
            "baseline": str(tmp_path / "base"), "time_table": str(tmp_path / "t.csv"), "time_fraction": 0.7,
            "prec": None, "importance_steps": 0, "importance_padding": "same", "importance_batch_size": 16,
            "importance_eval_examples": 50, "finetune_epochs": 1}},
    })
    s = run(cfg, tmp_path / "w", search=True, deploy=False, log=None)
    for k in ("baseline_test_accuracy", "test_accuracy", "act_pos", "merge_pos", "imp_sum", "time_sum"):
        assert k in s
    assert s["L"] == 14 and s["method"] == "depth"
    assert s["time_sum"] <= s["time_limit"] * 1.01 and s["max_merge_diff"] <= 1e-4
    assert abs(s["test_accuracy"] - s["unmerged_test_accuracy"]) <= 0.01
    from jaxnas.spec import ArchSpec
    from jaxnas.train import load_variables

    merged = ArchSpec.load(tmp_path / "w" / "arch.json")
    assert merged.metadata["depth_merged"] and len(load_variables(tmp_path / "w")["params"]) >= 2
    assert json.loads((tmp_path / "w/summary.json").read_text())["act_pos"] == s["act_pos"]
    for f in ("opt_time_table.csv", "ext_importance.csv", "importance/importance.csv", "solution.json",
              "unmerged_arch.json", "config.yaml"):
        assert (tmp_path / "w" / f).exists(), f
    # A target kind the method does not take is refused before anything runs.
    from jaxnas.config import override_config
    from jaxnas.methods import SearchError

    with pytest.raises(SearchError, match="search.target_macs: method 'depth' does not take a macs target"):
        run(override_config(cfg, ["search.target_macs=1e6"]), tmp_path / "w2", search=True, deploy=False, log=None)
    assert not (tmp_path / "w2").exists()
