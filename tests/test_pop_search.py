"""The POP search loop on a synthetic oracle: exact front, pruning, pre-screen, resume, bad input, outputs."""
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxnas.methods.pop import (LatencyCacheError, LocalExecutor, PopArgs, PopError, PopSearch, PopSettings,
                                load_space, order_key, pareto_boundary, precedes)
from jaxnas.methods.pop.report import plot_pareto, write_boundary
from jaxnas.methods.pop.synthetic import SYNTHETIC_SPACE, SyntheticOracle

ROOT = Path(__file__).resolve().parents[1]
SPACE = load_space(SYNTHETIC_SPACE)
# A smaller space for the resume tests (60 architectures).
TINY = load_space({**SYNTHETIC_SPACE, "name": "pop-tiny", "stages": [
    {"name": "res2", "depths": [1], "widths": [16, 24]},
    {"name": "res3", "depths": [1, 2], "widths": [32, 48, 64]},
    {"name": "res4", "depths": [1, 2], "widths": [64, 96]}]})


def pop(space, workdir, oracle=None, executor=None, log=lambda m: None, **kw):
    oracle = oracle or SyntheticOracle()
    settings = PopSettings(**{"max_trainings": 1000, "prescreen": False, **kw})
    return PopSearch(space, settings, measure=oracle.measure, fingerprint=oracle.fingerprint(),
                     executor=executor or LocalExecutor(oracle.train), workdir=workdir, log=log)


def truth(space, oracle, window=(None, None)):
    """(latency, accuracy) of every architecture (in the window) and the exact front's values."""
    pts = {}
    for a in space.archs():
        s = space.build(a)
        lat = oracle.measure(s)["median_ms"]
        if (window[0] is None or lat >= window[0]) and (window[1] is None or lat <= window[1]):
            pts[space.arch_key(a)] = (lat, oracle.accuracy(s))
    front = pareto_boundary([(k, *v) for k, v in pts.items()])
    return pts, sorted(pts[k] for k in front)


def front_of(outcome):
    return sorted((e["latency_ms"], e["accuracy"]) for e in outcome.evaluated if e["on_boundary"])


def comparable_outcome(outcome):
    return ([(e["key"], e["latency_ms"], e["accuracy"], e["on_boundary"], e["round"]) for e in outcome.evaluated],
            outcome.boundary, [{k: v for k, v in h.items() if k != "elapsed_s"} for h in outcome.history],
            outcome.counts)


def test_synthetic_oracle_is_monotone_in_the_order_and_latency_is_not_monotone_in_width():
    o = SyntheticOracle()
    specs = [SPACE.build(a) for a in SPACE.archs()]
    keys = [order_key(s) for s in specs]
    acc = [o.accuracy(s) for s in specs]
    lat = [o.latency_ms(s) for s in specs]
    pairs = [(i, j) for i in range(len(specs)) for j in range(len(specs)) if i != j and precedes(keys[i], keys[j])]
    assert all(acc[i] < acc[j] for i, j in pairs)
    assert sum(lat[j] < lat[i] for i, j in pairs) > 100     # bigger but faster: widening 48 -> 64 in res3
    a = SPACE.build(((16,), (48,), (64,)))
    b = SPACE.build(((16,), (64,), (64,)))
    assert precedes(a, b) and o.latency_ms(b) < o.latency_ms(a)


def test_pop_recovers_the_exact_front_with_far_fewer_trainings(tmp_path, capsys):
    oracle = SyntheticOracle()
    out = pop(SPACE, tmp_path, oracle).run()
    pts, front = truth(SPACE, SyntheticOracle())
    assert out.stop_reason == "exhausted" and out.counts["open"] == 0
    assert front_of(out) == front
    trained, total = out.counts["trained"], len(pts)
    assert trained + out.counts["pruned_without_training"] == total == 405
    assert oracle.trained == trained and trained <= total / 2
    assert out.counts["order_violations"] == 0 < out.counts["order_pairs_trained"]   # the oracle is monotone
    with capsys.disabled():
        print(f"\n[pop synthetic] exact front of {len(front)} nets; trained {trained} of {total} "
              f"({trained / total:.2f} of exhaustive, {total / trained:.1f}x fewer), "
              f"{out.counts['pruned_without_training']} pruned without training")
    # Every pruned architecture satisfies the rule against the final D; none is on the true front.
    ev = {e["key"]: e for e in out.evaluated}
    bd = [e for e in out.evaluated if e["on_boundary"]]
    front_keys = {k for k, v in pts.items() if v in front}
    for k, (lat, _) in pts.items():
        if k in ev:
            continue
        assert k not in front_keys
        spec = SPACE.build(SPACE.parse_key(k))
        assert any(precedes(spec, e["spec"]) and any(b["latency_ms"] <= lat and b["accuracy"] >= e["accuracy"]
                                                     for b in bd) for e in out.evaluated), k


def test_window_and_budget(tmp_path):
    pts, front = truth(SPACE, SyntheticOracle(), window=(0.3, 0.6))
    out = pop(SPACE, tmp_path / "w", window_ms=(0.3, 0.6)).run()
    assert front_of(out) == front
    assert all(0.3 <= e["latency_ms"] <= 0.6 for e in out.evaluated)
    assert out.counts["excluded_outside_window"] == 405 - len(pts)
    # A budget stops the search; continuing with a larger one follows the same trajectory.
    full = pop(TINY, tmp_path / "full").run()
    part = pop(TINY, tmp_path / "b", max_trainings=10).run()
    assert part.stop_reason == "max_trainings" and part.counts["trained"] == 10
    rest = pop(TINY, tmp_path / "b").run()
    assert comparable_outcome(rest) == comparable_outcome(full)


class NoisyOracle(SyntheticOracle):
    """Measured latency = the synthetic one times (1 + a deterministic ±`noise` per architecture)."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def fingerprint(self):
        return {**super().fingerprint(), "noise": self.noise}

    def latency_ms(self, spec):
        u = int(hashlib.sha1(spec.to_json().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return super().latency_ms(spec) * (1 + self.noise * (2 * u - 1))


def test_prescreen_saves_measurements_and_keeps_the_exact_front(tmp_path):
    oracle = NoisyOracle(0.03)
    out = pop(SPACE, tmp_path, oracle, prescreen=True, prescreen_audit=True).run()
    _, front = truth(SPACE, NoisyOracle(0.03))
    assert front_of(out) == front
    pre = out.prescreen
    assert pre["margin"] >= pre["loo_max_rel_error"] and pre["saved_measurements"] > 0.3 * 405
    assert out.counts["pruned_by_predicted_latency"] > 0
    audit = pre["audit"]
    assert audit["measured"] == pre["saved_measurements"] and audit["within_margin"] == 1.0
    assert audit["wrong_decisions"] == []
    # The audit measures into its own file: a rerun reports the same counts and the same audit, measuring nothing.
    calls = oracle.measured
    again = pop(SPACE, tmp_path, oracle, prescreen=True, prescreen_audit=True).run()
    assert again.counts == out.counts and again.prescreen == pre and oracle.measured == calls


def test_prescreen_audit_counts_wrong_decisions_when_the_margin_is_too_small(tmp_path):
    """With a bound below the predictor's real error, the pre-screen decides wrongly and the audit says so."""
    # (PopArgs refuses a safety factor below 1; the settings object is forced here on purpose.)
    out = pop(SPACE, tmp_path, NoisyOracle(0.15), prescreen=True, prescreen_audit=True, prescreen_min_margin=0.0,
              prescreen_safety=0.05).run()
    audit = out.prescreen["audit"]
    assert audit["within_margin"] < 1.0 and len(audit["wrong_decisions"]) > 0


class Interrupt(Exception):
    pass


def test_resume_after_interruptions_ends_with_the_same_boundary(tmp_path):
    ref = pop(TINY, tmp_path / "ref", candidates_per_round=3).run()

    # Killed in the middle of a round (after the 5th training), then restarted.
    oracle = SyntheticOracle()

    def train_then_die(job):
        if oracle.trained == 5:
            raise Interrupt
        return oracle.train(job)

    with pytest.raises(Interrupt):
        pop(TINY, tmp_path / "a", oracle, LocalExecutor(train_then_die), candidates_per_round=3).run()
    state = json.loads((tmp_path / "a" / "pop_state.json").read_text())
    assert len(state["trained"]) == 5 and state["pending"] is not None
    resumed = pop(TINY, tmp_path / "a", candidates_per_round=3).run()
    assert comparable_outcome(resumed) == comparable_outcome(ref)

    # Killed while measuring latencies (before any training), then restarted with pre-screening.
    ref_p = pop(TINY, tmp_path / "refp", prescreen=True).run()
    o2 = SyntheticOracle()

    def measure_then_die(spec):
        if o2.measured == 4:
            raise Interrupt
        return o2.measure(spec)

    s = pop(TINY, tmp_path / "b", o2, prescreen=True)
    s.measurer.measure_fn = measure_then_die
    with pytest.raises(Interrupt):
        s.run()
    assert comparable_outcome(pop(TINY, tmp_path / "b", prescreen=True).run()) == comparable_outcome(ref_p)

    # Restarting a finished search measures and trains nothing more and reports the same counts (a wide
    # pre-screen bound puts unmeasured nets first in the target check's order).
    kw = dict(prescreen=True, target_latency_ms=0.3, prescreen_min_margin=0.6, max_trainings=6)
    first = pop(TINY, tmp_path / "c", **kw).run()
    o3 = SyntheticOracle()
    again = pop(TINY, tmp_path / "c", o3, **kw).run()
    assert (o3.measured, o3.trained) == (0, 0) and comparable_outcome(again) == comparable_outcome(first)


class ReverseExecutor:
    """Finishes a round's jobs in reverse order (as a cluster might)."""

    def __init__(self, train):
        self.train = train

    def run(self, jobs, done, should_stop=lambda: False):
        for job in reversed(list(jobs)):
            done(job, self.train(job))


def test_executor_order_does_not_change_the_result(tmp_path):
    a = pop(TINY, tmp_path / "a", candidates_per_round=4).run()
    o = SyntheticOracle()
    b = pop(TINY, tmp_path / "b", o, ReverseExecutor(o.train), candidates_per_round=4).run()
    assert comparable_outcome(a) == comparable_outcome(b)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{root!r}, {root!r} + "/tests"]
    from test_pop_search import TINY, pop
    from jaxnas.methods.pop import LocalExecutor
    from jaxnas.methods.pop.synthetic import SyntheticOracle
    o = SyntheticOracle()
    def slow(job):
        time.sleep(float(sys.argv[2]))
        return o.train(job)
    out = pop(TINY, sys.argv[1], o, LocalExecutor(slow), candidates_per_round=3).run()
    print("DONE", out.boundary)
""")


@pytest.mark.slow
def test_kill_9_mid_search_then_restart_ends_with_the_same_boundary(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT)))
    ref = pop(TINY, tmp_path / "ref", candidates_per_round=3).run()
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(work), "0.05"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = work / "pop_state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.is_file() and len(json.loads(state.read_text() or "{}").get("trained", {})) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(json.loads(state.read_text())["trained"]) < ref.counts["trained"]
    out = subprocess.run([sys.executable, str(script), str(work), "0"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert comparable_outcome(pop(TINY, work, candidates_per_round=3).run()) == comparable_outcome(ref)


def test_bad_input_fails_before_any_training(tmp_path):
    empty = load_space({"family": "resnet", "name": "empty", "resolution": 28, "in_channels": 1, "num_classes": 10,
                        "stem": [[8, 1]], "stages": [{"depths": [1], "widths": [64]}, {"depths": [1], "widths": [32]}]})
    o = SyntheticOracle()
    with pytest.raises(PopError, match="exclude every architecture"):
        pop(empty, tmp_path / "e", o).run()
    with pytest.raises(PopError, match="outside the latency range"):
        pop(SPACE, tmp_path / "w", o, window_ms=(5.0, 9.0)).run()
    with pytest.raises(PopError, match="outside the latency range"):
        pop(SPACE, tmp_path / "w2", o, window_ms=(0.001, 0.01), prescreen=True).run()
    with pytest.raises(PopError, match="below the fastest"):
        pop(SPACE, tmp_path / "t", o, target_latency_ms=0.01).run()
    # Within the fast check's slack (x2 of the extremes): caught once every latency is known.
    with pytest.raises(PopError, match="outside the latency range"):
        pop(SPACE, tmp_path / "w3", o, window_ms=(1.0, 1.5)).run()
    with pytest.raises(PopError, match="below the fastest"):
        pop(SPACE, tmp_path / "t2", o, target_latency_ms=0.15, prescreen=True).run()
    assert o.trained == 0
    with pytest.raises(ValueError, match="max_trainings: must be >= 1"):
        PopArgs(max_trainings=0)
    with pytest.raises(ValueError, match="latency_window_ms"):
        PopArgs(latency_window_ms=(2.0, 1.0))


def test_latency_cache_refuses_another_device(tmp_path):
    pop(TINY, tmp_path, max_trainings=2).run()
    with pytest.raises(LatencyCacheError, match="fresh workdir"):
        pop(TINY, tmp_path, NoisyOracle(0.01), max_trainings=2)
    with pytest.raises(PopError, match="another POP search"):
        pop(TINY, tmp_path, max_trainings=2, seed=1).run()


def test_boundary_files_and_pareto_chart(tmp_path):
    out = pop(TINY, tmp_path).run()
    paths = write_boundary(tmp_path, out, {"space": TINY.describe()})
    rows = list(csv.DictReader(open(paths["boundary_csv"])))
    assert len(rows) == out.counts["trained"]
    assert sorted(r["key"] for r in rows if r["on_boundary"] == "1") == sorted(out.boundary)
    data = json.loads(Path(paths["boundary_json"]).read_text())
    assert data["counts"]["pruned_without_training"] == out.counts["pruned_without_training"]
    assert all("spec" in e and "latency_ms" in e for e in data["evaluated"])
    pytest.importorskip("matplotlib")
    chosen = out.best_under(0.5)
    png = plot_pareto(tmp_path / "pareto.png", out, title="tiny", target_ms=0.5, chosen_key=chosen["key"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chosen["on_boundary"] and chosen["latency_ms"] <= 0.5
    assert chosen["accuracy"] == max(e["accuracy"] for e in out.evaluated if e["latency_ms"] <= 0.5)


def test_mbconv_space_is_searched_on_a_seeded_random_pool(tmp_path):
    space = load_space("mbv2-small")
    out = pop(space, tmp_path, pool_size=60, max_trainings=12, candidates_per_round=6).run()
    c = out.counts
    assert c["pool_mode"] == "sampled" and c["pool_size"] == 60 and c["space_size"] == space.size()
    assert c["trained"] == 12 and out.boundary
    again = pop(space, tmp_path / "again", pool_size=60, max_trainings=12, candidates_per_round=6).run()
    assert comparable_outcome(again)[:2] == comparable_outcome(out)[:2]     # the same pool and trajectory
