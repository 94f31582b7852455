"""The adaptive protocol through its callers: tables, validation, paired comparisons, the CLI.

Flagged measurements are injected through fake backends (no timing); a few short real-runtime checks
confirm that every backend's `measure` and `compare` really time by the protocol.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import warnings

import pytest

from jaxnas.latency import LatencyTable, TableError, TimingProtocol, TimingWarning, get_backend
from jaxnas.latency.builder import build_table
from jaxnas.latency.predictor import LatencyPredictor, format_validation, noise_warning, validate_space

from test_latency_builder import TINY, FakeBackend
from test_timing import Clock, StreamTimer
from test_latency_backends import CIN, COUT, H, W, _fake_trt, _FakeCuda, onnx_path  # noqa: F401 (fixture)

FAST = TimingProtocol(max_time_s=3.0, rel_ci=0.05, round_s=0.005, min_round_runs=3, warmup=2, priority="none")


class ProtocolFake(FakeBackend):
    """A backend with the protocol: `prepare(spec)` gives a scripted timing stream (latency = f(MACs)),
    through the real adaptive engine.  For the specs that `bad(spec)` picks the sessions are evenly
    bimodal, so the interval never closes and the measurement ends flagged `imprecise` at the round cap;
    with `always_bad=False` only their first measurement is."""

    def __init__(self, bad=lambda spec: False, always_bad=True, **kw):
        super().__init__(**kw)
        self.bad, self.always_bad = bad, always_bad
        self.prepared: list[str] = []

    def prepare(self, spec, input_shape=None, *, batch_size=None):
        from jaxnas.spec import macs

        v = 0.01 + macs(spec) / 1e6
        flagged = self.bad(spec) and (self.always_bad or spec.name not in self.prepared)
        self.prepared.append(spec.name)
        return StreamTimer((lambda s, r, t: v * (0.82 if s % 2 else 1.0)) if flagged else (lambda s, r, t: v), Clock())

    def measure(self, *a, **kw):  # pragma: no cover - the protocol path never calls it
        raise AssertionError("a backend with prepare() is timed through it")


QUICK = TimingProtocol(priority="none", max_time_s=2.0, max_rounds=60, min_round_runs=5, round_s=0.0, warmup=2,
                       warmup_s=0.0)


@pytest.fixture
def no_export(monkeypatch):
    import jaxnas.latency.builder as builder

    monkeypatch.setattr(builder, "export_for", lambda spec, backend, directory, **kw: spec)


def test_table_entries_store_the_interval_and_old_tables_still_load(tmp_path, no_export):
    out = tmp_path / "t.json"
    table = build_table(TINY, ProtocolFake(), out, references=None, progress=False)
    raw = json.loads(out.read_text())
    for e in raw["entries"].values():
        assert e["ci_low"] == e["median"] == e["ci_high"] and e["rounds"] == 6 and e["confidence"] == 0.95
        assert len(e["round_medians"]) == 6 and "flags" not in e and e["capped"] is False
        assert e["count"] >= 6 * 5
    assert raw["meta"]["timing"]["protocol"]["max_time_s"] == 3.0  # the table protocol
    key = next(iter(table))
    assert table.stats(key).ci_low == raw["entries"][key]["ci_low"] and table.untrusted() == {}
    # a table written before the protocol (no interval fields) loads and predicts as before
    for e in raw["entries"].values():
        for f in ("ci_low", "ci_high", "confidence", "rounds", "capped", "round_medians"):
            del e[f]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(raw))
    assert LatencyTable.load(old).stats(key).ci_low is None
    raw["entries"][key]["flags"] = "drift"
    old.write_text(json.dumps(raw))
    with pytest.raises(TableError, match="'flags' must be a list of strings"):
        LatencyTable.load(old)


def test_flagged_entry_is_remeasured_then_stored_flagged_and_warned(tmp_path, no_export):
    msgs: list[str] = []
    be = ProtocolFake(bad=lambda spec: spec.name.endswith("ref_min"))
    out = tmp_path / "t.json"
    table = build_table(TINY, be, out, references=0, progress=msgs.append, protocol=QUICK)
    assert be.prepared.count("tiny_ref_min") == 2  # timed once more
    (key, flags), = table.untrusted().items()
    assert key == "ref:min" and flags[0].startswith("imprecise: the median known to ±") and "bimodal" in flags[0]
    assert table.get("ref:min")["rounds"] == 120  # both measurements pooled
    assert msgs[-1].startswith("[latency] warning: 1 of 6 entries of") and "(imprecise: 1;" in msgs[-1]
    assert "\n" not in msgs[-1]
    with pytest.warns(TimingWarning, match="1 of 6 entries .* untrusted timings"):
        pr = LatencyPredictor(out)
    assert list(pr.untrusted) == ["ref:min"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyPredictor(out, warn_untrusted=False)
    # a transient flag (clean on the second try) leaves a trusted entry
    be2 = ProtocolFake(bad=lambda spec: spec.name.endswith("ref_min"), always_bad=False)
    t2 = build_table(TINY, be2, tmp_path / "t2.json", references=0, progress=False, protocol=QUICK)
    assert t2.untrusted() == {} and be2.prepared.count("tiny_ref_min") == 2 and t2.get("ref:min")["rounds"] == 6


def test_validate_never_uses_a_flagged_measurement_silently(tmp_path, monkeypatch, capsys):
    import jaxnas.latency.builder as builder
    import jaxnas.latency.predictor as predictor

    monkeypatch.setattr(builder, "export_for", lambda spec, backend, directory, **kw: spec)
    bad = lambda spec: spec.name == "tiny_sample1"  # noqa: E731
    monkeypatch.setattr(builder, "resolve_backend", lambda backend, threads=1: ProtocolFake(bad=bad))
    r = validate_space(TINY, "fake", 3, table_path=tmp_path / "t.json", progress=False, protocol=QUICK)
    assert r["untrusted"] == ["tiny_sample1"] and r["settings"]["passes"] == 2
    row = next(x for x in r["rows"] if x["name"] == "tiny_sample1")
    assert row["flags"] and row["flags"][0].startswith("imprecise")
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith("1 of 3 measured nets are untrusted timings")
    assert r["retest"]["within_5pct"] == 1.0 and noise_warning(r) is None
    text = format_validation(r)
    assert "(retest 100%)" in text and "untrusted measurements: 1 of 3" in text and "2 passes" in text
    # the CLI prints the report and one `warning:` line per warning
    from jaxnas.cli import main

    monkeypatch.setattr(predictor, "default_table_path", lambda *a, **k: tmp_path / "cli.json")
    assert main(["latency", "validate", "tiny-yaml-not-needed", "--samples", "3"]) == 2  # unknown space
    capsys.readouterr()
    space = tmp_path / "tiny.yaml"
    import yaml

    space.write_text(yaml.safe_dump(TINY))
    assert main(["latency", "validate", str(space), "--samples", "3", "--table", str(tmp_path / "c.json"),
                 "--max-time", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert "within ±5 %" in out and "(retest" in out
    warned = [ln for ln in err.splitlines() if ln.startswith("warning:")]  # the rest is build progress
    assert warned[0].startswith("warning: 1 of 3 measured nets are untrusted timings")
    # the flagged net's sessions are evenly bimodal: its two passes may disagree, which the retest shows
    assert all("too noisy" in w for w in warned[1:])


def test_noise_warning_is_one_line():
    r = {"retest": {"spearman": 0.82, "within_5pct": 0.6}, "loadavg_1m": [7.2, 7.9]}
    w = noise_warning(r)
    assert w and "\n" not in w and "Spearman 0.82" in w and "60% within ±5 %" in w and "load average 7.2 -> 7.9" in w
    assert noise_warning({"retest": {"spearman": 0.97, "within_5pct": 0.97}}) is None
    assert noise_warning({"retest": None}) is None


# ------------------------------------------------------------------ real runtimes, briefly
def test_every_backend_measures_by_the_protocol(onnx_path, tmp_path):  # noqa: F811
    FAST = TimingProtocol(max_time_s=1.5, rel_ci=0.05, round_s=0.005, min_round_runs=3, warmup=2, priority="none")
    be = get_backend("onnxruntime", threads=1)
    st = be.measure(onnx_path, (1, H, W, CIN), protocol=FAST)
    assert st.rounds >= 6 and st.confidence == 0.95 and st.ci_low <= st.median <= st.ci_high
    assert len(st.round_medians) == st.rounds and st.count >= 3 * st.rounds
    import jax.numpy as jnp

    st = get_backend("xla").measure(lambda x: jnp.tanh(x) * 2.0, (4, 32), protocol=FAST)
    assert st.rounds >= 6 and st.ci_low is not None
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, CIN], tf.float32)])
    def relu(x):
        return tf.nn.relu(x)

    p = tmp_path / "relu.tflite"
    p.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([relu.get_concrete_function()], relu).convert())
    st = get_backend("tflite", threads=1).measure(p, (1, H, W, CIN), protocol=FAST)
    assert st.rounds >= 6 and st.ci_low is not None


def test_tensorrt_measures_by_the_protocol_with_a_fake_module(monkeypatch, onnx_path):  # noqa: F811
    log: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.3.0", log))
    monkeypatch.setattr("jaxnas.runtime.cuda_driver.CudaDriver", _FakeCuda)
    _FakeCuda.instances.clear()
    st = get_backend("tensorrt").measure(onnx_path, (1, H, W, CIN), protocol=FAST)
    assert st.median == 0.5 and st.ci_low == st.ci_high == 0.5 and st.rounds == 6 and st.trusted
    assert len(_FakeCuda.instances) == 1 and _FakeCuda.instances[0].closed  # one engine for every round


@pytest.fixture(scope="module")
def two_nets(tmp_path_factory):
    """Two 3-block MBConv nets at 16 px, 8 and 64 channels: specs, variables, ONNX files, spec JSON."""
    from jaxnas.export.onnx_export import export_onnx
    from jaxnas import models
    from jaxnas.latency.spaces import SearchSpace

    d = tmp_path_factory.mktemp("two_nets")
    out = {}
    for name, c in (("small", 8), ("big", 64)):
        space = SearchSpace({**TINY, "name": name, "resolution": 16, "expansions": [6],
                             "stem": {"channels": c, "kernel": 3, "stride": 1},
                             "stages": [{"channels": c, "blocks": 2, "stride": 1}], "last": {"channels": 2 * c}})
        s = space.build({"width": 1.0, "depths": [2], "blocks": [[[3, 6.0, False]] * 2]}, name=name)
        s = dataclasses.replace(s, meta=())  # a plain spec file, as a user would have
        v = models.init_variables(models.build_model(s), 0)
        s.save(d / f"{name}.json")
        out[name] = (s, v, str(export_onnx(s, v, d / f"{name}.onnx", check=False).path), str(d / f"{name}.json"))
    return out


def test_compare_specs_and_files_on_onnxruntime(two_nets):
    """From specs + variables (export, then alternating rounds) and from the exported files."""
    from jaxnas.latency import measure_paired
    from jaxnas.latency.measure import compare_files, compare_specs

    small, big = two_nets["small"], two_nets["big"]
    c = compare_specs({"small": small[:2], "big": big[:2]}, "onnxruntime", protocol=FAST)
    assert c.names == ("small", "big") and len(c.rounds[0]) == len(c.rounds[1]) >= 6
    assert c.speedup(1) < 1 / 1.5 and c.ratio == c.speedup(1)  # the 8x wider net is slower
    assert "big vs small:" in c.describe() and "slower" in c.describe()
    d = c.to_dict()
    assert d["speedup"]["big"]["value"] == pytest.approx(c.speedup(1)) and d["speedup"]["big"]["ci"] is not None
    c2 = compare_files({"small": small[2], "big": big[2]}, small[0], protocol=FAST)
    assert c2.speedup() < 1 / 1.5 and c2.a.fingerprint["backend"] == "onnxruntime"
    pt = measure_paired(get_backend("onnxruntime"), small[2], big[2], protocol=FAST)
    assert pt.speedup() < 1 and pt.speedup_ci() is not None and len(pt.rounds[0]) >= 6
    fixed = compare_files({"small": small[2], "big": big[2]}, small[0], runs=20, rounds=3)
    assert fixed.names == ("small", "big") and len(fixed.rounds[1]) == 3 and fixed.speedup() < 1


def test_cli_measure_and_compare_report_the_interval(two_nets, capsys):
    from jaxnas.cli import main

    argv = ["latency", "measure", two_nets["big"][3], "--random-init", "--max-time", "2", "--rel-ci", "0.05",
            "--priority", "none"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("big on onnxruntime: median")  # the interval (or, capped under load, its absence):
    assert re.search(r"\((95% CI [\d.]+-[\d.]+, ±[\d.]+%|no interval), \d+ sessions, n=\d+", out), out
    assert main(argv[:3] + ["--random-init", "--runs", "7", "--json"]) == 0  # fixed runs: no interval
    d = json.loads(capsys.readouterr().out)
    assert d["count"] == 7 and "ci_ms" not in d
    files = [two_nets["small"][2], two_nets["big"][2]]
    assert main(["latency", "compare", *files, "--max-time", "3", "--rel-ci", "0.05", "--priority", "none",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    # under heavy load the 3 s cap can end it before 6 rounds (no interval, flagged): the report still holds
    assert d["names"] == ["small", "big"] and d["speedup"]["big"]["value"] < 1 / 1.5 and d["rounds"] >= 2
    assert main(["latency", "compare", *files, "--max-time", "3", "--rel-ci", "0.05", "--priority", "none"]) == 0
    assert capsys.readouterr().out.startswith("big vs small: ")
    assert main(argv[:4] + ["--rel-ci", "0.7"]) == 2
    assert capsys.readouterr().err == "error: --rel-ci: must be < 0.5, got 0.7\n"


def test_when_most_entries_are_flagged_they_are_not_timed_again(tmp_path, no_export):
    """A quarter or more flagged is the machine, not a transient: reported, not re-measured (which would
    double the build and change nothing)."""
    be = ProtocolFake(bad=lambda spec: True)
    table = build_table(TINY, be, tmp_path / "t.json", references=0, progress=False, protocol=QUICK)
    assert len(table.untrusted()) == 6 and all(be.prepared.count(n) == 1 for n in be.prepared)


def test_oracle_times_each_and_against_by_the_configured_protocol(tmp_path, no_export):
    """The latency section's protocol reaches a method's cached timings: every entry carries its interval;
    a flagged one is timed again, stored with its flags and named in one log line."""
    from jaxnas.latency.config import LatencyConfig
    from jaxnas.latency.oracle import RuntimeOracle
    from jaxnas.latency.spaces import load_space

    space = load_space(TINY)
    specs = {p.key: p.to_spec() for p in space.unique_parts()}
    be = ProtocolFake(bad=lambda spec: spec.name.startswith("part_head"))
    msgs: list[str] = []
    cfg = LatencyConfig(priority="none", max_time_s=1.0)
    assert cfg.protocol().max_time_s == 1.0 and LatencyConfig().protocol(3.0).max_time_s == 3.0
    assert LatencyConfig(runs=50).protocol() is None
    oracle = RuntimeOracle(cfg, log=msgs.append)
    oracle._runtime = be
    stats = oracle.measure_each(specs, cache=tmp_path / "each.json")
    bad = next(k for k in specs if k.startswith("head"))
    assert all(s.ci_low is not None and s.rounds >= 6 for k, s in stats.items() if k != bad)
    assert stats[bad].flags and stats[bad].flags[0].startswith("imprecise") and be.prepared.count(specs[bad].name) == 2
    assert "warning: 1 of 4 entries" in msgs[-1] and "(imprecise: 1;" in msgs[-1]
    big, small = space.build(space.extreme_arch(largest=True)), space.build(space.extreme_arch(largest=False))
    base_ms, deltas = oracle.paired_deltas((big, None), {"small": lambda: (small, None)},
                                           cache=tmp_path / "against.json")
    entry = json.loads((tmp_path / "against.json").read_text())["entries"]["small"]
    assert deltas["small"][0] < 0 and entry["meta"]["rounds"] >= 6 and len(entry["meta"]["delta_ci_ms"]) == 2
    assert base_ms > 0 and "flags" not in entry


def test_deploy_times_the_net_against_its_baseline_in_alternating_rounds(two_nets):
    """A method's net against its baseline (the runner's deploy step): one Comparison, baseline first, by
    the latency section's protocol (or its fixed runs), with the speed-up's interval in the summary."""
    from jaxnas.deploy import deploy
    from jaxnas.latency.config import LatencyConfig

    small, big = two_nets["small"], two_nets["big"]
    lat = LatencyConfig(rel_ci=0.05, max_time_s=3.0, priority="none")
    r = deploy(small[0], small[1], None, lat, out_dir=None, baseline=big[:2])
    c = r.comparison
    assert c.names == ("baseline", "model") and len(c.rounds[0]) >= 6 and c.ratio > 1.5  # the small net is faster
    s = r.summary()
    assert s["speedup"] == c.ratio and s["speedup_ci"][0] <= c.ratio <= s["speedup_ci"][1]
    assert s["latency"]["ci_ms"][0] is not None and s["baseline_latency_ms"] == c.a.median_ms
    assert "faster than the baseline (paired" in r.describe() and "95% CI" in r.describe()
    fixed = deploy(small[0], small[1], None, LatencyConfig(runs=20), out_dir=None, baseline=big[:2]).comparison
    assert len(fixed.rounds[0]) == 5 and fixed.ratio > 1.5 and fixed.stats[0].ci_low is None
