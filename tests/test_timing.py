"""The adaptive timing protocol (latency.timing) on injected timing streams with known answers.

No real timing here: a fake runtime returns scripted (wall, CPU) times per run and advances a fake clock,
so the stopping rule, the interval, the cap and the noise detectors are checked deterministically.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

from jaxnas.latency import TimingStats
from jaxnas.latency.backends.base import TimerBase, compare, measure_paired, timed
from jaxnas.latency.timing import (TimingError, TimingProtocol, TimingWarning, clean_round, compare_adaptive, drift_of,
                            measure_interleaved,
                            find_modes, mann_kendall, measure_adaptive, median_ci, median_ci_ranks, min_rounds_for,
                            pool, relative_halfwidth, theil_sen_slope, timing_priority)

# Quiet, fast protocol for the fake runtime: no scheduling changes, fake seconds.
P = TimingProtocol(priority="none", max_time_s=5.0, round_s=0.02, min_round_runs=20, warmup=2, warmup_s=0.0)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class StreamTimer(TimerBase):
    """A fake runtime: run r of session s takes ``sample(s, r)`` ms (or ``(wall, cpu)``), on a fake clock."""

    self_timed = True

    def __init__(self, sample, clock: Clock, session_cost_s: float = 0.01):
        self.sample, self.clock, self.session_cost_s = sample, clock, session_cost_s
        self.sessions = 0

    def session(self):
        s = self.sessions
        self.sessions += 1
        self.clock.t += self.session_cost_s
        state = {"r": 0}

        def run():
            out = self.sample(s, state["r"], self.clock.t)
            state["r"] += 1
            self.clock.t += (out[0] if isinstance(out, tuple) else out) / 1e3
            return out
        return run


def _noise(seed):
    rng = np.random.default_rng(seed)
    return lambda: float(rng.normal(0.0, 0.002))


# ------------------------------------------------------------------ the interval
def test_median_ci_ranks_known_values():
    assert median_ci_ranks(5, 0.95) is None and min_rounds_for(0.95) == 6 and min_rounds_for(0.99) == 8
    assert median_ci_ranks(6, 0.95) == (0, 5)      # [min, max]: coverage 1 - 2/64 = 0.969
    assert median_ci_ranks(10, 0.95) == (1, 8)     # P(Bin(10,.5) <= 1) = 11/1024
    assert median_ci_ranks(20, 0.95) == (5, 14)    # P(<= 5) = 0.0207, P(<= 6) = 0.0577
    from scipy.stats import binom

    for n in range(6, 80):
        lo, hi = median_ci_ranks(n, 0.95)
        k = lo + 1
        assert hi == n - k
        assert 2 * binom.cdf(k - 1, n, 0.5) <= 0.05 + 1e-12 < 2 * binom.cdf(k, n, 0.5)
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0, 6.0]) == (1.0, 6.0)
    assert median_ci([1.0] * 5) is None
    assert relative_halfwidth(2.0, (1.9, 2.05)) == pytest.approx(0.05) and relative_halfwidth(1.0, None) == math.inf


def test_median_ci_covers_a_skewed_median():
    """Distribution-free: on lognormal data the interval covers the true median at least 95 % of the time."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = median_ci(rng.lognormal(0.0, 0.5, 15))
        hits += ci[0] <= 1.0 <= ci[1]
    assert hits / 2000 >= 0.95


def test_mann_kendall_and_theil_sen():
    z, p = mann_kendall(np.arange(10.0))  # S = 45, var = 10*9*25/18 = 125
    assert z == pytest.approx(44 / math.sqrt(125)) and p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert mann_kendall([1.0, 1.0, 1.0])[1] == 1.0
    assert theil_sen_slope([1.0, 2.0, 3.0, 100.0, 5.0]) == pytest.approx(1.0)  # robust to one outlier
    assert drift_of(1.0 + 0.004 * np.arange(12), rel=0.02) is not None  # +4.4 % over 12 rounds
    assert drift_of(1.0 + 0.001 * np.arange(12), rel=0.02) is None     # significant but tiny
    rng = np.random.default_rng(3)
    assert sum(drift_of(rng.normal(1, 0.01, 20), rel=0.02) is not None for _ in range(200)) <= 2


def test_find_modes():
    rng = np.random.default_rng(1)
    vals = np.concatenate([rng.normal(0.82, 0.002, 8), rng.normal(1.0, 0.003, 12)])
    m = find_modes(rng.permutation(vals))
    assert m is not None and m.low_count == 8 and m.n == 20
    assert m.low == pytest.approx(0.82, abs=0.01) and m.high == pytest.approx(1.0, abs=0.01)
    assert "8 of 20 rounds 18% faster" in m.describe()
    assert find_modes(vals[6:]) is None  # two in the low group: too few to call it a mode
    false = sum(find_modes(rng.normal(1.0, 0.01, 30)) is not None for _ in range(300))
    assert false == 0


def test_clean_round_drops_preempted_runs_and_bursts():
    wall = np.full(100, 1.0)
    cpu = wall.copy()
    wall[::10] += 3.0  # 10 runs waited 3 ms for the core
    r = clean_round(wall, cpu)
    assert r.status == "ok" and r.dropped == 10 and r.median == 1.0 and len(r.runs) == 90
    assert clean_round(wall + 5.0, cpu).status == "preempted"  # every run preempted: the round is lost
    most = np.full(100, 1.0)
    most[20:85] = 1.4  # a burst over most of the round (it carries the median): its runs still go
    r = clean_round(most)
    assert r.status == "ok" and r.burst_runs == 65 and r.median == 1.0
    bursty = np.full(100, 1.0)
    bursty[40:55] = 1.4  # a burst: 15 consecutive runs 40 % slower, no preemption visible
    bursty[47] = 1.0     # (one fast run inside it stays)
    r = clean_round(bursty)
    assert r.status == "ok" and r.burst_runs == 14 and len(r.runs) == 86 and r.runs.max() == 1.0
    bursty = np.full(100, 1.0)
    bursty[30:80] = 1.4
    cpu = bursty.copy()  # a burst slows the computation itself: its CPU time rises too
    bursty[:30] += 4.0  # 30 runs preempted, 50 in a burst: over three quarters of the round are lost
    r = clean_round(bursty, cpu)
    assert (r.status, r.dropped, r.burst_runs, len(r.runs)) == ("burst", 30, 50, 20)
    scattered = np.full(100, 1.0)
    scattered[::7] = 3.0  # isolated slow runs are no burst
    r = clean_round(scattered)
    assert r.status == "ok" and r.burst_runs == 0 and len(r.runs) == 100


# ------------------------------------------------------------------ the stopping rule
def test_stable_stream_stops_early_with_the_true_median():
    clock = Clock()
    noise = _noise(0)
    st = measure_adaptive(StreamTimer(lambda s, r, t: 1.0 + noise(), clock), P, now=clock)
    assert st.trusted and not st.capped and st.flags == ()
    assert st.rounds == 6  # the fewest rounds with a 95 % interval already meet ±1 %
    assert st.ci_low <= 1.0 <= st.ci_high and st.rel_ci <= 0.01
    assert st.median == pytest.approx(1.0, abs=0.002) and len(st.round_medians) == 6
    assert 6 * 20 <= st.count <= 6 * 22  # ~20 ms per round at 1 ms per run
    assert clock.t < 1.0


def test_noisy_sessions_take_more_rounds():
    clock = Clock()
    rng = np.random.default_rng(5)
    level = {}

    def sample(s, r, t):
        level.setdefault(s, 1.0 + rng.normal(0, 0.02))  # each session has its own speed (2 % spread)
        return level[s]

    st = measure_adaptive(StreamTimer(sample, clock), P, now=clock)
    assert st.trusted and not st.capped and 12 < st.rounds < 100 and st.rel_ci <= 0.01
    assert st.ci_low <= 1.0 <= st.ci_high  # the median of the sessions' speeds


def test_drifting_stream_is_remeasured_then_flagged():
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: 1.0 + 0.5 * t, clock), P, now=clock)  # +50 % a second
    assert not st.trusted and st.capped
    assert [f.split(":")[0] for f in st.flags] == ["imprecise", "drift"] or \
        [f.split(":")[0] for f in st.flags] == ["drift"]
    assert any(f.startswith("drift") for f in st.flags)
    assert any(n.startswith("re-measured after drift") for n in st.notes)
    assert clock.t == pytest.approx(2 * P.max_time_s, abs=0.2)  # one attempt + one retry, each capped


def test_drift_that_settles_is_remeasured_and_trusted():
    """A transient (a busy minute that ends): the first attempt drifts, the re-measurement is clean."""
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: 1.0 + (0.5 * t if t < 5.0 else 0.0), clock), P, now=clock)
    assert st.trusted and any(n.startswith("re-measured after drift") for n in st.notes)
    assert st.median == pytest.approx(1.0)


def test_even_bimodal_sessions_end_at_the_cap_flagged():
    """Half the sessions 18 % faster: the median's interval spans both modes and cannot close."""
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: 0.82 if s % 2 else 1.0, clock), P, now=clock)
    assert st.capped and not st.trusted and 0.82 <= st.median <= 1.0 and st.rounds > 50
    assert len(st.flags) == 1 and st.flags[0].startswith("imprecise")
    assert st.flags[0].endswith(f"bimodal sessions: {st.rounds // 2} of {st.rounds} rounds 22% slower (1 vs 0.82 ms)")


def test_rare_fast_sessions_are_noted_not_flagged():
    """A quarter of the sessions 18 % faster: the median (the usual session) is pinned down once the
    order-statistic interval's lower rank passes the fast group (17 rounds, 4 fast); the mode is a note."""
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: 0.82 if s % 4 == 1 else 1.0, clock), P, now=clock)
    assert st.trusted and not st.capped and st.median == 1.0 and st.ci_low == st.ci_high == 1.0
    assert st.rounds == 17
    assert "bimodal sessions: 4 of 17 rounds 18% faster (0.82 vs 1 ms)" in st.notes


def test_bursts_are_dropped_and_slow_rounds_outvoted():
    clock = Clock()

    def sample(s, r, t):
        if s % 6 == 1 and 5 <= r < 12:
            return 3.0  # one session in six: a burst of 7 slow runs (of ~20)
        if s % 6 == 4 and r >= 8:
            return 1.5  # another: a burst over most of the round
        return 1.1 if s % 6 == 3 else 1.0  # another: slower throughout (no burst to see)

    st = measure_adaptive(StreamTimer(sample, clock), P, now=clock)
    assert st.trusted and not st.capped and st.median == 1.0 and st.ci_low == st.ci_high == 1.0
    assert 3.0 not in st.round_medians and 1.5 not in st.round_medians and st.p90 <= 1.1  # bursts dropped
    assert st.round_medians.count(1.1) >= 1  # a uniformly slower session stays: the median outvotes it
    assert any("in outlier bursts" in n for n in st.notes)


def test_persistent_disturbance_is_flagged():
    """Three sessions in four lose over three quarters of their runs (preempted + bursts): discarded, and
    flagged."""
    clock = Clock()

    def sample(s, r, t):
        if s % 4 == 0:
            return (1.0, 1.0)
        return (5.0, 1.0) if r % 3 == 0 else ((1.4, 1.4) if r % 3 == 1 or 8 <= r < 16 else (1.0, 1.0))

    st = measure_adaptive(StreamTimer(sample, clock), P, now=clock)
    assert not st.trusted and st.median == 1.0
    assert [f.split(":")[0] for f in st.flags] == ["bursts"]
    assert "rounds discarded (" in st.flags[0] and "outlier bursts" in st.flags[0]


def test_preempted_runs_are_dropped():
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: (4.0, 1.0) if r % 9 == 4 else (1.0, 1.0), clock), P, now=clock)
    assert st.trusted and st.median == 1.0 and st.p90 == 1.0
    assert any("runs dropped (" in n and " preempted, 0 in outlier bursts)" in n for n in st.notes)


def test_every_round_discarded_is_an_error():
    clock = Clock()
    with pytest.raises(TimingError, match="every round was discarded"):
        measure_adaptive(StreamTimer(lambda s, r, t: (5.0, 1.0), clock), P.replace(max_time_s=0.5), now=clock)


def test_too_few_rounds_in_the_cap_is_imprecise():
    clock = Clock()
    st = measure_adaptive(StreamTimer(lambda s, r, t: 100.0, clock), P.replace(max_time_s=5.0), now=clock)
    assert st.capped and st.rounds < 6 and st.ci_low is None
    assert st.flags and st.flags[0].startswith("imprecise: only")


# ------------------------------------------------------------------ paired comparisons
def test_alternating_rounds_cancel_a_common_drift():
    """Both models slow down 20 % over the measurement; per-round ratios stay exact (0.8)."""
    clock = Clock()
    load = lambda t: 1.0 + 0.02 * t  # noqa: E731
    a = StreamTimer(lambda s, r, t: 1.0 * load(t), clock)
    b = StreamTimer(lambda s, r, t: 0.8 * load(t), clock)
    c = compare_adaptive([a, b], P, names=("base", "pruned"), now=clock)
    assert c.trusted and not c.capped and len(c.rounds[0]) == 6
    assert c.ratio == c.speedup(1) == pytest.approx(1.25, rel=2e-3) and c.delta_ms() < 0
    lo, hi = c.speedup_ci(1)
    assert lo <= 1.25 <= hi * 1.002 and hi / lo < 1.02
    assert "pruned vs base: 1.250x faster" in c.describe()
    d = c.to_dict()
    assert d["speedup"]["pruned"]["value"] == pytest.approx(1.25, rel=2e-3) and d["rounds"] == 6
    assert c.a.median_ms == c.stats[0].median and c.b.median_ms == pytest.approx(0.8 * c.a.median_ms, rel=0.05)
    assert a.sessions == b.sessions == 6  # a fresh session per model per round
    swapped = compare_adaptive([b, a], P, names=("pruned", "base"), now=clock)
    assert "base vs pruned: 1.250x slower" in swapped.describe()


def test_comparison_of_three_models_rotates_the_order():
    clock = Clock()
    order = []

    def make(v, name):
        def sample(s, r, t):
            if r == 0:
                order.append(name)
            return v
        return StreamTimer(sample, clock)

    c = compare_adaptive([make(1.0, "a"), make(0.5, "b"), make(2.0, "c")], P, now=clock)
    assert c.speedup(1) == 2.0 and c.speedup(2) == 0.5
    assert order[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_flagged_comparison_warns(monkeypatch):
    clock = Clock()
    a = StreamTimer(lambda s, r, t: 1.0, clock)
    b = StreamTimer(lambda s, r, t: 0.82 if s % 5 in (0, 1) else 1.0, clock)  # candidate's sessions bimodal

    class Backend:
        name = "fake"

        def prepare(self, model, input_shape=None, batch_size=None):
            return model

    monkeypatch.setattr("jaxnas.latency.backends.base.compare_adaptive",
                        lambda timers, p, names=None: compare_adaptive(timers, P, names=names, now=clock))
    with pytest.warns(TimingWarning, match="untrusted timing of the comparison a vs b: imprecise"):
        c = compare(Backend(), {"a": a, "b": b})
    assert not c.trusted and c.capped


# ------------------------------------------------------------------ backends' measure
def test_timed_uses_the_protocol_and_warns_when_flagged(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("jaxnas.latency.backends.base.measure_adaptive",
                        lambda t, p, what: measure_adaptive(t, p, what=what, now=clock))
    good = timed(StreamTimer(lambda s, r, t: 1.0, clock), warmup=None, runs=None, min_time_s=0.0, protocol=P,
                 what="m")
    assert good.trusted and good.rounds == 6 and good.ci_low == 1.0
    with pytest.warns(TimingWarning, match=r"untrusted timing of drifty.onnx: .*drift"):
        bad = timed(StreamTimer(lambda s, r, t: 1.0 + 0.5 * t, clock), warmup=None, runs=None, min_time_s=0.0,
                    protocol=P, what="drifty.onnx")
    assert not bad.trusted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixed loop: exactly `runs` runs, one session, no interval
        fixed = timed(StreamTimer(lambda s, r, t: 2.0, clock), warmup=3, runs=7, min_time_s=0.0, protocol=None,
                      what="m")
    assert fixed.count == 7 and fixed.rounds == 1 and fixed.ci_low is None
    with pytest.raises(ValueError, match="either"):
        timed(StreamTimer(lambda s, r, t: 2.0, clock), warmup=None, runs=5, min_time_s=0.0, protocol=P, what="m")


def test_measure_paired_fixed_rounds_for_backends_without_prepare():
    calls = []

    class Legacy:
        name = "legacy"

        def measure(self, model, input_shape, *, warmup, runs):
            calls.append((model, warmup, runs))
            return TimingStats.from_samples([{"a": 1.0, "b": 0.5}[model]] * 3)

    pt = measure_paired(Legacy(), "a", "b", (1, 4))
    assert [c[0] for c in calls] == ["a", "b"] * 3 and calls[0][1:] == (20, 100)
    assert pt.ratio == pt.speedup() == 2.0 and pt.delta_ms() == -0.5 and pt.speedup_ci() is None
    assert pt.names == ("reference", "candidate") and pt.stats[1].median == 0.5


# ------------------------------------------------------------------ stats, pooling, tables
def test_timing_stats_protocol_fields_roundtrip():
    st = TimingStats(median=1.0, mean=1.1, std=0.1, p10=0.9, p90=1.3, min=0.8, count=120, ci_low=0.99,
                     ci_high=1.01, confidence=0.95, rounds=6, capped=True, flags=("drift: x",), notes=("n",),
                     round_medians=(1.0,) * 6)
    d = st.to_dict()
    assert d["flags"] == ["drift: x"] and d["round_medians"] == [1.0] * 6
    assert TimingStats.from_dict(d) == st and not st.trusted and st.rel_ci == pytest.approx(0.01)
    old = {k: d[k] for k in ("median", "mean", "std", "p10", "p90", "min", "count")}
    assert TimingStats.from_dict(old).rounds == 1 and TimingStats.from_dict(old).trusted
    with pytest.raises(ValueError, match="capped"):
        TimingStats.from_dict({**d, "capped": "yes"})
    assert "UNTRUSTED: drift: x" in str(st) and "CI ±1.0% over 6 rounds" in str(st)


def test_pool_merges_rounds_and_keeps_flags():
    a = TimingStats(median=1.0, mean=1.0, std=0, p10=1, p90=1, min=1, count=10, rounds=3,
                    round_medians=(1.0, 1.01, 0.99), confidence=0.95)
    b = TimingStats(median=1.02, mean=1.0, std=0, p10=1, p90=1, min=1, count=10, rounds=3,
                    round_medians=(1.02, 1.03, 1.0), flags=("drift: y",), confidence=0.95)
    p = pool([a, b])
    assert p.rounds == 6 and p.count == 20 and p.median == pytest.approx(1.005)
    assert (p.ci_low, p.ci_high) == (0.99, 1.03) and p.flags == ("drift: y",)
    legacy = pool([TimingStats.from_samples([1.0]), TimingStats.from_samples([3.0]), TimingStats.from_samples([2.0])])
    assert legacy.median == 2.0 and legacy.ci_low is None and legacy.rounds == 3


# ------------------------------------------------------------------ scheduling
def test_timing_priority_is_restored():
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0))
    with timing_priority("none") as applied:
        assert applied == {"priority": "default", "pin": None}
    with timing_priority("auto", exclusive=True, pin=min(before[2])) as applied:
        if applied["priority"].startswith("SCHED_FIFO"):
            assert os.sched_getscheduler(0) == os.SCHED_FIFO
        elif applied["priority"].startswith("nice"):
            assert os.getpriority(os.PRIO_PROCESS, 0) == -10
        assert applied["pin"] in (None, min(before[2]))
    with timing_priority("auto", exclusive=False) as applied:
        assert not applied["priority"].startswith("SCHED_FIFO")  # never FIFO beside runtime worker threads
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)) == before


def test_protocol_validation():
    with pytest.raises(ValueError, match="rel_ci"):
        TimingProtocol(rel_ci=0)
    with pytest.raises(ValueError, match="priority"):
        TimingProtocol(priority="rt")
    assert TimingProtocol().rounds_needed == 6 and TimingProtocol(confidence=0.99).rounds_needed == 8
    assert TimingProtocol().replace(rel_ci=0.02).to_dict()["rel_ci"] == 0.02


# ------------------------------------------------------------------ interleaved measurements
def test_interleaved_rounds_spread_a_busy_spell_over_all_models():
    """A busy spell (everything 30 % slower) for a stretch of the run: measured one after the other, the
    model timed during it is off by 30 % with a tight interval; interleaved, every model keeps its true
    median and the spell shows as a few slow rounds of each."""
    true = [1.0, 1.5, 2.0, 0.7]
    busy = lambda t: 1.3 if 0.19 <= t < 0.6 else 1.0  # noqa: E731

    clock = Clock()
    seq = [measure_adaptive(StreamTimer(lambda s, r, t, v=v: v * busy(t), clock), P, now=clock) for v in true]
    assert any(abs(st.median / v - 1) > 0.2 for st, v in zip(seq, true))  # one landed in the spell

    clock = Clock()
    done = []
    timers = [StreamTimer(lambda s, r, t, v=v: v * busy(t), clock) for v in true]
    inter = measure_interleaved(timers, P, now=clock, on_done=lambda j, st: done.append(j))
    assert [st.median for st in inter] == true and sorted(done) == [0, 1, 2, 3]
    assert all(st.trusted and st.rel_ci <= 0.01 for st in inter)
    assert all(1.3 * v in st.round_medians for st, v in zip(inter, true))  # each saw the spell


def test_interleaved_models_leave_when_precise_and_cap_shares_time():
    clock = Clock()
    rng = np.random.default_rng(2)
    noisy = {}

    def noisy_sample(s, r, t):
        noisy.setdefault(s, 1.0 + rng.normal(0, 0.03))
        return noisy[s]

    a = StreamTimer(lambda s, r, t: 1.0, clock)
    b = StreamTimer(noisy_sample, clock)
    c = StreamTimer(lambda s, r, t: 0.82 if s % 2 else 1.0, clock)  # even modes: never precise
    out = measure_interleaved([a, b, c], P.replace(max_time_s=3.0), now=clock)
    assert a.sessions == 6 and out[0].rounds == 6 and out[0].trusted  # left the rotation at the first chance
    assert b.sessions > 6 and out[1].rel_ci <= 0.01 and not out[1].capped
    assert out[2].capped and out[2].flags[0].startswith("imprecise")
    assert clock.t <= 3.0 * 3 + 0.5
