"""LatencyPredictor (sum of parts + overhead, channel-grid interpolation), Spearman, validate_space."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnas.latency import Fingerprint, LatencyTable, TimingStats, interpolate
from jaxnas.latency.predictor import (LatencyPredictor, MissingEntryError, prediction_metrics, rankdata, spearman,
                               validate_space)
from jaxnas.latency.spaces import BlockConfig, SearchSpace

TINY = {
    "name": "tiny", "resolution": 8, "kernels": [3], "expansions": [2],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "stages": [{"channels": 8, "blocks": 2, "stride": 2, "depths": [1, 2]}],
    "last": {"channels": 16}, "head": {"num_classes": 4},
}


def _fp() -> Fingerprint:
    return Fingerprint(backend="onnxruntime", runtime="fake", device="cpu", threads=1)


def _st(v: float) -> TimingStats:
    return TimingStats.from_samples([v * 0.95, v, v, v * 1.05, v * 1.2])


def _table(space: SearchSpace, ms: dict, refs=()) -> LatencyTable:
    t = LatencyTable.new(_fp(), {**space.meta(), "channel_step": None})
    for k, v in ms.items():
        t.put(k, _st(v))
    for name, arch, measured in refs:
        parts = space.decompose(space.build(arch))
        t.put(f"ref:{name}", _st(measured), meta={"kind": "reference", "parts": [p.to_dict() for p in parts]})
    return t


def _arch(depth: int) -> dict:
    return {"width": 1.0, "depths": [depth], "blocks": [[[3, 2.0, False]] * depth]}


def test_predict_sums_parts_and_overhead():
    space = SearchSpace(TINY)
    keys = [p.key for p in space.unique_parts()]  # stem, block s2, block s1, head
    ms = dict(zip(keys, [0.1, 0.2, 0.3, 0.4]))
    spec1, spec2 = space.build(_arch(1)), space.build(_arch(2))
    # without references: the plain sum
    pr = LatencyPredictor(_table(space, ms), stat="median")
    assert pr.predict(spec1) == pytest.approx(0.1 + 0.2 + 0.4)
    assert pr.predict(spec2) == pytest.approx(1.0)
    # with two references: a constant overhead, their mean residual (measured - sum)
    pr = LatencyPredictor(_table(space, ms, [("min", _arch(1), 0.7 - 0.05), ("max", _arch(2), 1.0 - 0.07)]),
                          stat="median")
    assert pr.overhead["coef"] == pytest.approx([-0.06, 0.0, 0.0])
    assert pr.predict(spec1) == pytest.approx(0.64) and pr.predict(spec2) == pytest.approx(0.94)
    bd = pr.breakdown(spec2)
    assert [k for k, _ in bd["parts"]] == keys and bd["sum_ms"] == pytest.approx(1.0)
    assert bd["predicted_ms"] == pytest.approx(bd["sum_ms"] + bd["overhead_ms"])
    # one reference: a constant overhead
    pr = LatencyPredictor(_table(space, ms, [("min", _arch(1), 0.6)]), stat="median")
    assert pr.overhead["coef"][1:] == [0.0, 0.0] and pr.predict(spec2) == pytest.approx(1.0 - 0.1)
    # the statistic is selectable
    assert LatencyPredictor(_table(space, ms), stat="p10").predict(spec1) < 0.7


def test_overhead_fit_with_params_term():
    """>= 4 references: a + b * n_parts + c * Mparams, recovered exactly from noiseless residuals."""
    space = SearchSpace({**TINY, "expansions": [2, 6],
                         "stages": [{"channels": 8, "blocks": 3, "stride": 2, "depths": [1, 2, 3]}]})
    ms = {p.key: 0.05 * (i + 1) for i, p in enumerate(space.unique_parts())}
    base = LatencyPredictor(_table(space, ms), stat="median")
    true = np.array([0.02, -0.004, 3.0])
    refs = []
    rng = np.random.default_rng(0)
    for i in range(6):
        arch = space.sample_arch(rng)
        parts = space.decompose(space.build(arch))
        refs.append((f"r{i}", arch, base.predict(space.build(arch)) + float(np.dot(true, base.features(parts)))))
    pr = LatencyPredictor(_table(space, ms, refs), stat="median")
    assert pr.overhead["coef"] == pytest.approx(list(true), rel=1e-3, abs=1e-3)
    assert pr.overhead["model"] == ["a", "b*n_parts", "c*mparams"]
    spec = space.sample(5)
    want = base.predict(spec) + float(np.dot(true, base.features(space.decompose(spec))))
    assert pr.predict(spec) == pytest.approx(want, rel=1e-3)


def test_overhead_fit_drops_outliers_and_selects_terms():
    from jaxnas.latency.predictor import fit_overhead

    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(12), rng.integers(13, 20, 12), rng.uniform(1, 2.5, 12)])
    y = -0.1 - 0.005 * x[:, 1] + 0.03 * x[:, 2] + rng.normal(0, 1e-4, 12)
    y_bad = y.copy()
    y_bad[3] += 0.08  # one reference timed in a busy moment
    coef, keep, cols, loo = fit_overhead(x, y_bad)
    assert not keep[3] and keep.sum() == 11 and cols == [0, 1, 2]
    assert coef == pytest.approx([-0.1, -0.005, 0.03], abs=2e-3)
    # residuals that do not depend on the features: the constant wins
    coef, keep, cols, loo = fit_overhead(x, -0.01 + rng.normal(0, 1e-3, 12))
    assert cols == [0] and coef[0] == pytest.approx(-0.01, abs=1e-3) and loo < 2e-3


def test_missing_key_is_named(tmp_path):
    space = SearchSpace(TINY)
    keys = [p.key for p in space.unique_parts()]
    t = _table(space, {k: 0.1 for k in keys if "_s1_" not in k or k.startswith("conv")})
    missing = [k for k in keys if k not in t]
    assert len(missing) == 1
    path = t.save(tmp_path / "t.json")
    pr = LatencyPredictor(path)
    pr.predict(space.build(_arch(1)))
    with pytest.raises(MissingEntryError, match=missing[0]) as ei:
        pr.predict(space.build(_arch(2)))
    assert str(path) in str(ei.value)


def test_channel_grid_interpolation():
    cfg = BlockConfig("mbconv", 8, 8, 20, 20, 3, 1, 60, "relu6", 0)
    from jaxnas.latency.builder import grid_parts

    lo, hi = grid_parts(cfg, 8)
    t = LatencyTable.new(_fp(), {"space": "x", "channel_step": 8})
    t.put(lo.key, _st(1.0))
    t.put(hi.key, _st(2.0))
    pr = LatencyPredictor(t, stat="median")
    want = interpolate([lo.macs(), hi.macs()], [1.0, 2.0], cfg.macs())
    assert 1.0 < want < 2.0 and pr.part_ms(cfg) == pytest.approx(want)
    assert pr.part_ms(lo) == pytest.approx(1.0)  # on-grid: exact entry
    t2 = LatencyTable.new(_fp(), {"space": "x", "channel_step": 8})
    t2.put(lo.key, _st(1.0))
    with pytest.raises(MissingEntryError, match="neighbour"):
        LatencyPredictor(t2).part_ms(cfg)


def test_spearman_known_values_and_ties():
    assert list(rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x, y = [1, 2, 2, 3, 5, 4], [2, 1, 3, 3, 6, 5]
    from scipy.stats import spearmanr

    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_prediction_metrics():
    m = prediction_metrics([1.0, 2.09, 2.75, 4.0], [1.0, 2.0, 3.0, 4.0], flops=[1, 3, 2, 4])
    assert m["n"] == 4 and m["within_5pct"] == 0.75 and m["within_10pct"] == 1.0
    assert m["rmspe"] == pytest.approx(math.sqrt((0 + 4.5 ** 2 + (25 / 3) ** 2 + 0) / 4))
    assert m["bias_pct"] == pytest.approx((4.5 - 25 / 3) / 4)
    assert m["spearman"] == pytest.approx(1.0) and m["spearman_flops"] == pytest.approx(0.8)


def test_validate_space_tiny(tmp_path):
    table = tmp_path / "tiny.json"
    r = validate_space(TINY, "onnxruntime", 3, table_path=table, warmup=2, runs=10, rounds=1, progress=False)
    assert table.exists()
    for k in ("within_5pct", "within_10pct", "rmspe", "spearman", "spearman_flops", "n", "rows", "fingerprint",
              "table_path", "by_stat", "overhead"):
        assert k in r
    assert r["n"] == 3 and len(r["rows"]) == 3 and r["table_path"] == str(table)
    assert 0.0 <= r["within_5pct"] <= r["within_10pct"] <= 1.0 and r["rmspe"] >= 0
    assert r["fingerprint"]["backend"] == "onnxruntime" and r["fingerprint"]["threads"] == 1
    for row in r["rows"]:
        assert row["macs"] > 0 and row["predicted_ms"] > 0 and row["measured_ms"] > 0
        assert row["error_pct"] == pytest.approx(100 * (row["predicted_ms"] / row["measured_ms"] - 1))
    import json

    json.dumps(r)  # JSON-able
    # second call loads (and checks) the existing table instead of rebuilding it
    r2 = validate_space(TINY, "onnxruntime", 2, table_path=table, warmup=1, runs=3, rounds=1, progress=False)
    assert r2["timing_s"]["table_build"] == 0.0 and r2["n"] == 2
    assert r["retest"] is None  # one round: nothing to compare
    r3 = validate_space(TINY, "onnxruntime", 3, table_path=table, warmup=1, runs=3, rounds=2, progress=False)
    assert r3["retest"]["n"] == 3 and 0.0 <= r3["retest"]["within_5pct"] <= r3["retest"]["within_10pct"] <= 1.0


def test_median_of_reports_the_usual_mode():
    from jaxnas.latency.builder import best_of, median_of

    fast, slow = TimingStats.from_samples([0.5] * 4), TimingStats.from_samples([0.6] * 4)
    rounds = [slow, fast, slow, slow, slow]  # one session landed in the fast mode
    assert median_of(rounds).median == pytest.approx(0.6) and best_of(rounds).median == pytest.approx(0.5)
    assert median_of(rounds).count == 20 and median_of([fast]) is fast


def test_validate_cli_with_a_network_table(tmp_path, capsys):
    """`jaxnas latency validate --context network` on a real runtime: the table is built from probes of a
    reference network, and the reference itself is predicted (before the overhead term)."""
    import json

    import yaml

    from jaxnas.cli import main
    from jaxnas.latency.network_table import reference_arch
    from jaxnas.latency.spaces import load_space

    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(yaml.safe_dump(TINY))
    space = load_space(TINY)
    ref = space.build(reference_arch(space, 1.0))
    # Every part of the reference is priced by a probe-derived entry (alone times as the prior), and their sum
    # is the reference's own time up to noise: the probe system is solved by least squares and noisy
    # in-network times (a 4x4 block costs about a microsecond) are clipped at 0, so a real runtime is only
    # near-exact; exactness is tested with an additive runtime in test_network_table.py.  The whole net takes
    # ~15 us, so load from other jobs during one measurement moves it by 20-80 % (CI: 19 % with 3 runs, 77 %
    # once with 30, -39 % and -33 % on two tables in a row another time): up to three fresh tables are
    # measured before the sum is judged off, at 50 %.  Priced by the alone entries instead (the error this
    # test exists for), the sum is ~2.2x the reference (+118 %, +122 %), outside it on every attempt.
    errors = []
    for attempt in range(3):
        table = tmp_path / f"t{attempt}.json"
        assert main(["latency", "validate", str(space_file), "--backend", "onnxruntime", "--samples", "2",
                     "--table", str(table), "--context", "network", "--warmup", "5", "--runs", "30",
                     "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["context"] == "network" and r["n"] == 2
        t = LatencyTable.load(table)
        assert t.meta["context"] == "network" and any(k.startswith("net:") for k in t)
        pr = LatencyPredictor(t)
        assert {t.get(p.key)["meta"]["derived"] for p in pr.parts(ref)} == {"network probes, calibrated alone prior"}
        assert all(f"alone:{p.key}" in t for p in pr.parts(ref))  # the prior: every part timed alone too
        summed, own = pr.predict(ref) - pr.overhead_ms(pr.parts(ref)), t.ms("net:w1:reference", "median")
        errors.append(summed / own - 1)
        if abs(errors[-1]) <= 0.5:
            break
    assert abs(errors[-1]) <= 0.5, f"sum of the reference's parts off its own time by {errors} ({len(errors)} tables)"
    # The other context on the same file is refused with a one-line reason.
    assert main(["latency", "validate", str(space_file), "--backend", "onnxruntime", "--samples", "1",
                 "--table", str(table), "--context", "alone"]) == 2
    assert "context='alone'" in capsys.readouterr().err
