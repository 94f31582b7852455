"""TF-NAS table re-basing (jaxnas.methods.tfnas.rebase, TfnasLut.scaled): the factor by hand from a fake
oracle's timings, the cases that must not re-base, and a resumed run reusing its factor; the deployed
latency reported on the target's statistic (jaxnas.pipeline.achieved_latency)."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from jaxnas.latency import LatencyTable
from jaxnas.latency.spaces import TfnasLut, get_tfnas_space
from jaxnas.methods.tfnas import rebase as R

SPACE = get_tfnas_space("tfnas-small", resolution=8, in_channels=1, width=0.1, last_channels=16, num_classes=3,
                        max_depths=[2, 1, 1, 1, 1, 1])


class TimingOracle:
    """Returns the given per-round statistics, in order; records what it timed."""

    def __init__(self, mins, trusted=True):
        self.mins, self.trusted, self.timed = list(mins), trusted, []

    def measure(self, spec, variables=None):
        self.timed.append(spec)
        v = self.mins.pop(0)
        return types.SimpleNamespace(stats=types.SimpleNamespace(min=v, median=2 * v), trusted=self.trusted)


def _table(reference=None):
    t = LatencyTable.new({"backend": "onnxruntime"}, meta={"source": "test"})
    t.put("base", {"count": 1, "mean": 1.0, "std": 0.0, "median": 1.0, "p10": 1.0, "p90": 1.0, "min": 1.0})
    if reference is not None:
        t.put(R.REFERENCE_KEY, {"count": 3, "mean": reference, "std": 0.0, "median": 2 * reference, "p10": reference,
                                "p90": reference, "min": reference})
    return t


def test_scaled_lut_multiplies_every_latency():
    lut = TfnasLut(0.5, {"k": (np.array([4.0, 8.0]), np.array([0.1, 0.3]))}, {"device": "d"}, {"source": "s"})
    s = lut.scaled(1.1)
    assert s.base == pytest.approx(0.55) and s.ms("k", 6) == pytest.approx(1.1 * 0.2)
    assert lut.ms("k", 6) == pytest.approx(0.2)  # the original is untouched
    assert s.fingerprint == {"device": "d"} and s.meta["scaled_by"] == 1.1


def test_factor_is_the_median_round_over_the_table_entry():
    assert R.reference_entry(_table(0.2), "min") == 0.2 and R.reference_entry(_table(0.2), "median") == 0.4
    oracle = TimingOracle([0.23, 0.21, 0.22, 0.30, 0.215])
    out = R.table_drift(oracle, SPACE, 0.2, "min", rounds=5, window_s=0, tries=1, log=lambda m: None)
    # median of (0.23, 0.21, 0.22, 0.30, 0.215) = 0.22 -> 0.22 / 0.2
    assert out["applied"] and out["factor"] == pytest.approx(1.1) and out["reference_now_ms"] == pytest.approx(0.22)
    assert len(oracle.timed) == 5
    ref = oracle.timed[0]  # the table's reference network: every block k3e6 at its initial width
    assert ref == SPACE.build_spec(SPACE.reference_arch(), name=f"{SPACE.name}_netref")


def test_no_reference_or_a_flagged_timing_does_not_rebase():
    logs = []
    out = R.table_drift(TimingOracle([]), SPACE, R.reference_entry(_table(None), "min"), "min", window_s=0,
                        log=logs.append)
    assert not out["applied"] and out["factor"] == 1.0 and "no reference network" in logs[0]
    out = R.table_drift(TimingOracle([0.3] * 3, trusted=False), SPACE, 0.2, "min", rounds=3, window_s=0,
                        log=logs.append)
    assert not out["applied"] and out["factor"] == 1.0 and "flagged" in out["reason"]


def test_rounds_are_spread_over_the_window(monkeypatch):
    now, slept = [100.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    monkeypatch.setattr(R.time, "monotonic", lambda: now[0])
    R.time_reference(TimingOracle([0.2] * 4), SPACE, "min", 4, window_s=30.0, sleep=sleep)
    assert slept == pytest.approx([10.0, 10.0, 10.0])  # rounds start at 0, 10, 20, 30 s


def test_a_bursty_window_is_timed_again():
    # p90 / p10 of (0.2, 0.2, 0.3, 0.3, 0.2) is 1.5: a burst; the next window (spread 1 %) is used
    assert R.window_spread([0.2, 0.2, 0.3, 0.3, 0.2]) == pytest.approx(0.5)
    logs = []
    oracle = TimingOracle([0.2, 0.2, 0.3, 0.3, 0.2] + [0.21, 0.212, 0.21, 0.211, 0.21])
    out = R.table_drift(oracle, SPACE, 0.2, "min", rounds=5, window_s=0, log=logs.append)
    assert out["applied"] and out["windows"] == 2 and out["factor"] == pytest.approx(1.05)
    assert out["spread"] <= R.BURST_SPREAD and "timed again" in logs[0]
    # every window bursty: the least spread one (the second, 0.25 / 0.2 - 1 = 25 %) is used, and said so
    logs.clear()
    oracle = TimingOracle([0.2, 0.2, 0.3, 0.3, 0.2] + [0.2, 0.2, 0.25, 0.25, 0.2])
    out = R.table_drift(oracle, SPACE, 0.2, "min", rounds=5, window_s=0, tries=2, log=logs.append)
    assert out["windows"] == 2 and out["spread"] == pytest.approx(0.25) and out["factor"] == pytest.approx(1.0)
    assert "least spread" in logs[1] and not oracle.mins


def test_busy_machine_is_named():
    logs = []
    out = R.table_drift(TimingOracle([0.3]), SPACE, 0.2, "min", rounds=1, window_s=0, log=logs.append)
    assert out["factor"] == pytest.approx(1.5) and any("+50 % off the table's speed" in m for m in logs)


def test_a_resumed_run_reuses_its_factor(tmp_path):
    path = tmp_path / "rebase.json"
    kw = dict(rounds=1, window_s=0, log=lambda m: None)
    first = R.cached_table_drift(path, TimingOracle([0.22]), SPACE, 0.2, "min", **kw)
    again = R.cached_table_drift(path, TimingOracle([0.5]), SPACE, 0.2, "min", **kw)
    assert again == first == json.loads(path.read_text()) and first["factor"] == pytest.approx(1.1)
    # another table (another reference entry): timed again
    other = R.cached_table_drift(path, TimingOracle([0.5]), SPACE, 0.25, "min", **kw)
    assert other["factor"] == pytest.approx(2.0)


def test_achieved_latency_is_on_the_targets_statistic():
    from jaxnas.pipeline import achieved_latency
    m = types.SimpleNamespace(stats=types.SimpleNamespace(median=0.196, min=0.172, p10=0.18, mean=0.2))
    assert achieved_latency({"kind": "latency_ms", "value": 0.18, "statistic": "min"}, m) == {
        "latency_ms": 0.172, "latency_statistic": "min"}
    assert achieved_latency({"kind": "macs", "value": 1e6}, m) == {"latency_ms": 0.196}
    assert achieved_latency(None, m) == {"latency_ms": 0.196}
