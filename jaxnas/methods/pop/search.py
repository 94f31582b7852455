"""The POP search loop (seed spec §1.2), resumable.

    search = PopSearch(space, settings, measure=oracle.measure, fingerprint=oracle.fingerprint(),
                       executor=LocalExecutor(train_fn), workdir=workdir)
    outcome = search.run()

1. Pool: every architecture of the space (or, above ``max_enumerate``, a seeded random sample of
   ``pool_size`` distinct ones plus the space's smallest and largest).  Latency: with ``prescreen`` an additive table is fitted to a seed
   set of end-to-end measurements covering every part of the pool (`timing`), and each architecture
   gets a prediction with a relative error bound; without it every architecture is measured.
2. Round: classify the untrained architectures — *excluded* when certainly outside the latency
   window, *pruned* when the pruning rule holds for every latency the bound allows (`boundary`),
   else *open* — and draw up to ``candidates_per_round`` open ones.  A draw is measured end to end
   (if it was not yet) and classified again with its measured latency; if it is now excluded or
   pruned it is dropped without training and another is drawn.
   Draws are biased towards the current boundary: with probability ``boundary_bias`` a boundary net b
   is picked at random and an open architecture comparable to b in the partial order (a wider/deeper
   or narrower/shallower relative) is drawn with weight exp(-|log Lat(A) - log Lat(b)| /
   ``neighbour_scale``); otherwise (and in the first round) a latency bin of the window is picked at
   random and an open architecture in it.  The first round starts with the fastest open architecture,
   so the boundary has a left end.
3. The round's candidates are trained with the short schedule through the executor; their held-out
   accuracies join D; B(D) is recomputed.
4. Repeat until ``max_trainings`` or ``time_budget_s`` is spent or nothing is open (then B(D) is the
   exact boundary of the window under the partial-order assumption).

State (``pop_state.json``: RNG state, round, the round's drawn candidates, every result, the budget
used) is written after every training, latencies after every measurement (``latency_cache.json``),
and each candidate trains in its own resumable work dir, so a search killed at any point and
restarted ends with the same boundary (given the same measured latencies: a measurement interrupted
before it was cached is repeated).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.base import SearchError
from jaxnas.spec import ArchSpec, analyze

from jaxnas.methods.pop.boundary import Boundary
from jaxnas.methods.pop.executor import Executor, TrainJob
from jaxnas.methods.pop.order import OrderKey, key_leq, order_key
from jaxnas.methods.pop.space import Space
from jaxnas.methods.pop.timing import AdditiveLatencyModel, LatencyCache, Measurer, part_keys, seed_design

STATE_FILE = "pop_state.json"
CACHE_FILE = "latency_cache.json"
AUDIT_FILE = "latency_audit.json"
STATE_VERSION = 1


class PopError(SearchError):
    """A POP search that cannot start or continue (bad window, empty space, other workdir): one line."""


@dataclasses.dataclass(frozen=True)
class PopSettings:
    """The numbers the loop needs (`PopArgs` maps onto it)."""

    window_ms: tuple[float | None, float | None] = (None, None)
    max_trainings: int = 50
    time_budget_s: float | None = None
    candidates_per_round: int = 4
    boundary_bias: float = 0.75
    neighbour_scale: float = 0.15
    latency_bins: int = 8
    seed: int = 0
    prescreen: bool = True
    prescreen_seed_size: int | None = None   # None: 2 x parts + 8
    prescreen_min_margin: float = 0.05
    prescreen_safety: float = 1.5
    prescreen_audit: bool = False
    max_enumerate: int = 200_000
    pool_size: int = 20_000
    candidate_epochs: float | None = None
    target_latency_ms: float | None = None

    def decision_digest(self) -> str:
        """Hash of what decides the trajectory (budgets and the audit may change between runs)."""
        d = dataclasses.asdict(self)
        for k in ("max_trainings", "time_budget_s", "prescreen_audit", "target_latency_ms"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class PopOutcome:
    """What a finished (or budget-stopped) search found."""

    evaluated: list[dict[str, Any]]          # every trained candidate (key, arch, latency, accuracy, ...)
    boundary: list[str]                      # keys on B(D), fastest first
    counts: dict[str, Any]
    history: list[dict[str, Any]]
    prescreen: dict[str, Any] | None
    stop_reason: str

    def best_under(self, latency_ms: float) -> dict[str, Any] | None:
        """The most accurate boundary net with measured latency <= latency_ms."""
        on = [e for e in self.evaluated if e["on_boundary"] and e["latency_ms"] <= latency_ms]
        return max(on, key=lambda e: (e["accuracy"], -e["latency_ms"])) if on else None


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class PopSearch:
    def __init__(self, space: Space, settings: PopSettings, *, measure: Callable[[ArchSpec], Any],
                 fingerprint: Mapping[str, Any], executor: Executor, workdir: str | Path,
                 log: Callable[[str], None] = print):
        self.space, self.s, self.executor, self.log = space, settings, executor, log
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.workdir / STATE_FILE
        self.cache = LatencyCache(self.workdir / CACHE_FILE, fingerprint)
        self.measurer = Measurer(self.cache, measure)
        self._specs: dict[int, ArchSpec] = {}
        self.model: AdditiveLatencyModel | None = None
        self._leq: dict[tuple[int, int], bool] = {}
        self.prepared = False

    # ------------------------------------------------------------------ setup
    def _pool(self) -> tuple[list[Any], str]:
        size = self.space.size()
        if size == 0:
            raise PopError(f"search.args.space: the constraints of space {self.space.name!r} exclude every "
                           "architecture; widen its depths/widths")
        if size <= self.s.max_enumerate:
            return list(self.space.archs()), "all"
        rng = np.random.default_rng([self.s.seed, 2])
        # The smallest and the largest architecture always belong to the pool (the ends of the range).
        seen: dict[str, Any] = {self.space.arch_key(a): a for a in (self.space.smallest(), self.space.largest())}
        tries = 0
        while len(seen) < self.s.pool_size and tries < 20 * self.s.pool_size:
            a = self.space.sample_arch(rng)
            seen.setdefault(self.space.arch_key(a), a)
            tries += 1
        return [seen[k] for k in sorted(seen)], "sampled"

    def spec(self, i: int) -> ArchSpec:
        s = self._specs.get(i)
        if s is None:
            s = self._specs[i] = self.space.build(self.archs[i])
        return s

    def prepare(self) -> None:
        """Pool, order keys, latency estimates and the input checks (all before any training)."""
        if self.prepared:
            return
        t0 = time.time()
        self.archs, self.pool_mode = self._pool()
        self.keys = [self.space.arch_key(a) for a in self.archs]
        self.index = {k: i for i, k in enumerate(self.keys)}
        n = len(self.archs)
        self.okeys: list[OrderKey] = []
        parts: list[list[str]] = []
        for i in range(n):
            sp = self.space.build(self.archs[i])
            self.okeys.append(order_key(sp))
            if self.s.prescreen:
                parts.append(part_keys(sp))
        self.log(f"pop: space {self.space.name} has {self.space.size()} architectures; pool {n} ({self.pool_mode}), "
                 f"order keys in {time.time() - t0:.1f} s")
        lo, hi = self.s.window_ms
        if lo is not None and hi is not None and lo > hi:
            raise PopError(f"search.args.latency_window_ms: [{lo}, {hi}] is empty (low > high)")
        extremes = sorted({self.index[self.space.arch_key(a)] for a in (self.space.smallest(), self.space.largest())})
        self._early_check([self.measurer(self.keys[i], self.spec(i)) for i in extremes])
        self.pred = np.full(n, np.nan)
        self.margin = 0.0
        if self.s.prescreen:
            rng = np.random.default_rng([self.s.seed, 1])
            size = self.s.prescreen_seed_size or (2 * len({p for ps in parts for p in ps}) + 8)
            seeds = seed_design(parts, size, rng, must=extremes)
            self.log(f"pop: pre-screen: measuring {len(seeds)} seed networks end to end "
                     f"({sum(1 for i in seeds if self.keys[i] in self.cache)} cached)")
            ms = [self.measurer(self.keys[i], self.spec(i)) for i in seeds]
            self.model = AdditiveLatencyModel(self.s.prescreen_min_margin, self.s.prescreen_safety).fit(
                [parts[i] for i in seeds], ms)
            for i in range(n):
                p = self.model.predict_parts(parts[i])
                self.pred[i] = np.nan if p is None else p
            self.margin = self.model.margin
            self.seed_indices = seeds
            blind = [i for i in range(n) if not np.isfinite(self.pred[i])]
            if blind:  # parts the seed set never held: no prediction, so measure them
                self.log(f"pop: pre-screen: {len(blind)} architectures hold parts no seed network holds; measuring them")
                for i in blind:
                    self.measurer(self.keys[i], self.spec(i))
            d = self.model.describe()
            self.log(f"pop: pre-screen table: {d['parts']} parts, leave-one-out error median "
                     f"{_pct(d['loo_median_rel_error'])}, max {_pct(d['loo_max_rel_error'])} -> margin "
                     f"±{self.margin * 100:.1f} %")
        else:
            self.seed_indices = []
            self.log(f"pop: measuring all {n} architectures end to end ({len(self.cache)} cached)")
            for i in range(n):
                self.measurer(self.keys[i], self.spec(i))
        self.cache.flush()
        self._check_window()
        self.prepared = True

    def _early_check(self, extreme_ms: Sequence[float]) -> None:
        """Fail fast on a window or target far outside the space: the smallest and largest nets'
        latencies, with a factor 2 of slack (latency is not monotone), bound the space's range.
        `_check_window` checks exactly once every architecture has a latency."""
        lo_ms, hi_ms = min(extreme_ms) / 2, max(extreme_ms) * 2
        w_lo, w_hi = self.s.window_ms
        if (w_lo is not None and w_lo > hi_ms) or (w_hi is not None and w_hi < lo_ms):
            raise PopError(f"search.args.latency_window_ms [{w_lo}, {w_hi}] is outside the latency range of space "
                           f"{self.space.name!r} (its smallest and largest nets measure {min(extreme_ms):.4g} and "
                           f"{max(extreme_ms):.4g} ms); pick a window inside it")
        t = self.s.target_latency_ms
        if t is not None and t < lo_ms:
            raise PopError(f"search.target_latency_ms {t} is below the fastest architecture of space "
                           f"{self.space.name!r} (its smallest net measures {min(extreme_ms):.4g} ms); raise the "
                           "target or use a smaller space")

    def lat_bounds(self, i: int) -> tuple[float, float, bool]:
        """(low, high, measured) latency bounds of architecture i."""
        ms = self.cache.ms(self.keys[i])
        if ms is not None:
            return ms, ms, True
        p = self.pred[i]
        if not np.isfinite(p):
            return 0.0, math.inf, False
        return p * (1 - self.margin), p * (1 + self.margin), False

    def lat_estimate(self, i: int) -> float:
        ms = self.cache.ms(self.keys[i])
        return ms if ms is not None else float(self.pred[i])

    def _check_window(self) -> None:
        n = len(self.archs)
        lows, highs = np.array([self.lat_bounds(i)[:2] for i in range(n)], dtype=float).T
        span = f"[{lows.min():.4g}, {highs[np.isfinite(highs)].max(initial=lows.max()):.4g}] ms"
        lo, hi = self.s.window_ms
        if (lo is not None and highs.max() < lo) or (hi is not None and lows.min() > hi):
            raise PopError(f"search.args.latency_window_ms [{lo}, {hi}] is outside the latency range {span} of "
                           f"space {self.space.name!r} ({'predicted ±margin' if self.s.prescreen else 'measured'}); "
                           "pick a window inside it")
        t = self.s.target_latency_ms
        if t is not None:
            # Some architecture must measure at or under the target: one already measured (usually the
            # space's smallest), else the fastest candidates by their lower bound, measured until one does.
            ok = any(self.cache.ms(k) is not None and self.cache.ms(k) <= t for k in self.keys)
            for i in sorted((i for i in range(n) if lows[i] <= t and not ok), key=lambda i: lows[i]):
                if self.measurer(self.keys[i], self.spec(i)) <= t:
                    ok = True
                    break
            self.cache.flush()
            if not ok:
                raise PopError(f"search.target_latency_ms {t} is below the fastest architecture of space "
                               f"{self.space.name!r} (latency range {span}); raise the target or use a smaller space")
        if t is not None and lo is not None and t < lo:
            raise PopError(f"search.target_latency_ms {t} is below the latency window's low end {lo} ms: "
                           "no evaluated net can meet it; lower the window")

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> dict[str, Any]:
        rng = np.random.default_rng([self.s.seed, 3])
        return {"version": STATE_VERSION, "space": {"name": self.space.name, "hash": self.space.hash},
                "pool": {"mode": self.pool_mode, "size": len(self.keys), "digest": _digest("\n".join(self.keys))},
                "settings": self.s.decision_digest(), "rng": rng.bit_generator.state, "round": 0,
                "trained": {}, "pending": None, "elapsed_s": 0.0, "history": []}

    def _load_state(self) -> dict[str, Any]:
        p = self.state_path
        if not p.is_file():
            return self._fresh_state()
        st = json.loads(p.read_text())
        fresh = self._fresh_state()
        for k in ("version", "space", "pool", "settings"):
            if st.get(k) != fresh[k]:
                raise PopError(f"{p} belongs to another POP search ({k} differs: {st.get(k)} vs {fresh[k]}); "
                               "use a fresh workdir, or restore the settings it was started with")
        return st

    def _save_state(self) -> None:
        self.cache.flush()  # the state never refers to a latency that is not on disk
        self.state["elapsed_s"] = self._elapsed()
        atomic_write_json(self.state_path, self.state)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.time() - self._t_start

    # ------------------------------------------------------------------ classification
    def _boundary(self) -> Boundary:
        pts = [(k, self.cache.ms(k), r["accuracy"]) for k, r in self.state["trained"].items()]
        return Boundary(pts)

    def _in_window(self, low: float, high: float) -> str:
        lo, hi = self.s.window_ms
        if (lo is not None and high < lo) or (hi is not None and low > hi):
            return "out"
        if (lo is None or low >= lo) and (hi is None or high <= hi):
            return "in"
        return "maybe"

    def _supers(self, boundary: Boundary) -> list[tuple[float, int]]:
        """(threshold L*(A'), index) of every trained A', smallest threshold first."""
        out = []
        for k, r in self.state["trained"].items():
            t = boundary.threshold(r["accuracy"])
            if math.isfinite(t):
                out.append((t, self.index[k]))
        return sorted(out)

    def leq(self, i: int, j: int) -> bool:
        """A_i ⪯ A_j (memoised: the same pairs come back every round)."""
        r = self._leq.get((i, j))
        if r is None:
            r = self._leq[(i, j)] = key_leq(self.okeys[i], self.okeys[j])
        return r

    def _pruned(self, i: int, low: float, supers: Sequence[tuple[float, int]]) -> bool:
        for t, j in supers:
            if t > low:
                return False
            if self.leq(i, j):
                return True
        return False

    def _status(self, i: int, low: float, high: float, supers: Sequence[tuple[float, int]]) -> str:
        """'excluded' | 'pruned' | 'open' of untrained architecture i with latency in [low, high]."""
        if self._in_window(low, high) == "out":
            return "excluded"
        return "pruned" if self._pruned(i, low, supers) else "open"

    def classify(self, i: int, supers: Sequence[tuple[float, int]]) -> tuple[str, bool]:
        """('trained' | 'excluded' | 'pruned' | 'open', decided from a measured latency)."""
        if self.keys[i] in self.state["trained"]:
            return "trained", True
        low, high, measured = self.lat_bounds(i)
        return self._status(i, low, high, supers), measured

    def _classify_all(self, boundary: Boundary) -> tuple[list[str], list[bool]]:
        supers = self._supers(boundary)
        pairs = [self.classify(i, supers) for i in range(len(self.keys))]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # ------------------------------------------------------------------ sampling
    def _draw(self, rng: np.random.Generator, open_idx: list[int], boundary: Boundary, first: bool) -> int:
        est = {i: self.lat_estimate(i) for i in open_idx}
        if first:
            return min(open_idx, key=lambda i: (est[i], self.keys[i]))
        members = [self.index[k] for k in boundary.keys]
        if members and rng.random() < self.s.boundary_bias:
            b = members[int(rng.integers(len(members)))]
            lb = self.cache.ms(self.keys[b])
            near = [i for i in open_idx if self.leq(i, b) or self.leq(b, i)]
            if near:
                w = np.array([math.exp(-abs(math.log(est[i] / lb)) / self.s.neighbour_scale) for i in near])
                return near[int(rng.choice(len(near), p=w / w.sum()))]
        logs = np.log(np.array([est[i] for i in open_idx]))
        lo, hi = logs.min(), logs.max()
        nb = max(1, self.s.latency_bins)
        bins = np.minimum(((logs - lo) / max(hi - lo, 1e-12) * nb).astype(int), nb - 1)
        filled = sorted(set(bins.tolist()))
        pick = filled[int(rng.integers(len(filled)))]
        members_bin = [i for i, b in zip(open_idx, bins) if b == pick]
        return members_bin[int(rng.integers(len(members_bin)))]

    def _select_round(self, boundary: Boundary) -> list[str]:
        rng = np.random.default_rng()
        rng.bit_generator.state = self.state["rng"]
        status, _ = self._classify_all(boundary)
        open_idx = [i for i, s in enumerate(status) if s == "open"]
        supers = self._supers(boundary)
        batch: list[int] = []
        first = self.state["round"] == 0
        while open_idx and len(batch) < self.s.candidates_per_round:
            i = self._draw(rng, open_idx, boundary, first and not batch)
            open_idx.remove(i)
            self.measurer(self.keys[i], self.spec(i))
            low, high, _ = self.lat_bounds(i)
            if self._in_window(low, high) != "in" or self._pruned(i, low, supers):
                continue  # resolved by its measured latency: no training
            batch.append(i)
        self.state["rng"] = rng.bit_generator.state
        return [self.keys[i] for i in batch]

    # ------------------------------------------------------------------ loop
    def _job(self, key: str) -> TrainJob:
        i = self.index[key]
        return TrainJob(key, self.spec(i), self.workdir / "candidates" / _digest(key), self.s.candidate_epochs)

    def _budget_left(self) -> int:
        return self.s.max_trainings - len(self.state["trained"])

    def _time_up(self) -> bool:
        return self.s.time_budget_s is not None and self._elapsed() >= self.s.time_budget_s

    def run(self) -> PopOutcome:
        self.prepare()
        self.state = self._load_state()
        self._elapsed_before, self._t_start = float(self.state.get("elapsed_s", 0.0)), time.time()
        if self.state["trained"] or self.state["pending"]:
            self.log(f"pop: resuming at round {self.state['round']} with {len(self.state['trained'])} trained")
        while True:
            boundary = self._boundary()
            pending = self.state["pending"]
            if pending is None:
                if self._budget_left() <= 0:
                    stop = "max_trainings"
                    break
                if self._time_up():
                    stop = "time_budget"
                    break
                keys = self._select_round(boundary)
                if not keys:
                    stop = "exhausted"
                    self._save_state()
                    break
                pending = self.state["pending"] = {"round": self.state["round"], "keys": keys}
                self._save_state()
            todo = [k for k in pending["keys"] if k not in self.state["trained"]]
            self.log(f"pop: round {pending['round']}: training {len(todo)} of {len(pending['keys'])} candidates "
                     f"({len(self.state['trained'])} trained so far, budget {self.s.max_trainings})")

            def done(job: TrainJob, metrics: Mapping[str, Any]) -> None:
                acc = float(metrics["accuracy"])
                self.state["trained"][job.key] = {"accuracy": acc, "round": pending["round"],
                                                  "metrics": _plain(metrics), "workdir": str(job.workdir)}
                self._save_state()
                self.log(f"pop:   {job.key}: {self.cache.ms(job.key):.4f} ms, held-out accuracy {acc:.4f}")

            # A round is always drawn whole; the budget only limits what is trained now, so a search
            # continued with a larger budget follows the same trajectory as one started with it.
            self.executor.run([self._job(k) for k in todo[:max(0, self._budget_left())]], done,
                              should_stop=self._time_up)
            if any(k not in self.state["trained"] for k in pending["keys"]):
                stop = "max_trainings" if self._budget_left() <= 0 else "time_budget"
                break
            boundary = self._boundary()
            status, _ = self._classify_all(boundary)
            self.state["history"].append({
                "round": pending["round"], "trained": list(pending["keys"]),
                "boundary": boundary.keys, "open": status.count("open"), "pruned": status.count("pruned"),
                "excluded": status.count("excluded"), "elapsed_s": round(self._elapsed(), 1)})
            self.state["round"] += 1
            self.state["pending"] = None
            self._save_state()
            self.log(f"pop: after round {pending['round']}: boundary {len(boundary.keys)} nets, "
                     f"{status.count('pruned')} pruned without training, {status.count('open')} open")
        return self._outcome(stop)

    # ------------------------------------------------------------------ results
    def _outcome(self, stop: str) -> PopOutcome:
        boundary = self._boundary()
        status, by_measured = self._classify_all(boundary)
        on = set(boundary.keys)
        evaluated = []
        for k, r in sorted(self.state["trained"].items(), key=lambda kv: (self.cache.ms(kv[0]), kv[0])):
            i = self.index[k]
            cost = analyze(self.spec(i))
            evaluated.append({"key": k, "arch": self.space.arch_json(self.archs[i]), "latency_ms": self.cache.ms(k),
                              "latency": self.cache.entries[k], "accuracy": r["accuracy"], "on_boundary": k in on,
                              "round": r["round"], "macs": cost.macs, "params": cost.params,
                              "predicted_ms": None if not np.isfinite(self.pred[i]) else float(self.pred[i]),
                              "workdir": r.get("workdir"), "spec": self.spec(i)})
        counts = {
            "space_size": self.space.size(), "pool_size": len(self.keys), "pool_mode": self.pool_mode,
            "trained": len(self.state["trained"]),
            "pruned_without_training": status.count("pruned"),
            "pruned_by_predicted_latency": sum(1 for s, m in zip(status, by_measured) if s == "pruned" and not m),
            "excluded_outside_window": status.count("excluded"),
            "open": status.count("open"),
            "in_window": sum(1 for s in status if s != "excluded"),
            "measured_end_to_end": sum(1 for k in self.keys if k in self.cache),
            "rounds": self.state["round"], "boundary_size": len(boundary.keys),
            **self._violations(),
        }
        prescreen = None
        if self.model is not None:
            prescreen = {**self.model.describe(), "seed_measured": len(self.seed_indices),
                         "saved_measurements": len(self.keys) - counts["measured_end_to_end"]}
            if self.s.prescreen_audit:
                prescreen["audit"] = self._audit(boundary, status)
        return PopOutcome(evaluated, boundary.keys, counts, list(self.state["history"]), prescreen, stop)

    def _violations(self) -> dict[str, Any]:
        """How far the trained candidates contradict the partial-order assumption (A ⪯ A' but
        Acc(A) > Acc(A'), e.g. from short-training noise): such an A' prunes more than it should."""
        acc = {self.index[k]: r["accuracy"] for k, r in self.state["trained"].items()}
        pairs = [(acc[i] - acc[j]) for i in acc for j in acc if i != j and acc[i] > acc[j] and self.leq(i, j)]
        comparable = sum(1 for i in acc for j in acc if i != j and self.leq(i, j))
        return {"order_pairs_trained": comparable, "order_violations": len(pairs),
                "order_violation_max": max(pairs, default=0.0)}

    def _audit(self, boundary: Boundary, status: Sequence[str]) -> dict[str, Any]:
        """Measure every architecture the pre-screen classified without a measurement and count the
        decisions its measured latency would have changed (candidates wrongly excluded or pruned).
        The audit's measurements go to their own cache (``latency_audit.json``): the search's cache
        keeps only what the search measured, so a rerun reports the same counts and a resumed search
        follows the same trajectory with or without an audit in between."""
        unmeasured = [i for i, k in enumerate(self.keys) if k not in self.cache]
        audit = LatencyCache(self.workdir / AUDIT_FILE, self.cache.fingerprint)
        measure = Measurer(audit, self.measurer.measure_fn)
        todo = sum(1 for i in unmeasured if self.keys[i] not in audit)
        self.log(f"pop: audit: {len(unmeasured)} architectures the pre-screen left unmeasured ({todo} to measure)")
        supers = self._supers(boundary)
        errs, wrong = [], []
        for i in unmeasured:
            ms = measure(self.keys[i], self.spec(i))
            errs.append(abs(ms - self.pred[i]) / ms)
            now = self._status(i, ms, ms, supers)
            if status[i] in ("excluded", "pruned") and now == "open":
                wrong.append({"key": self.keys[i], "was": status[i], "predicted_ms": float(self.pred[i]),
                              "measured_ms": ms})
        audit.flush()
        e = np.asarray(errs) if errs else np.zeros(1)
        return {"measured": len(unmeasured), "max_rel_error": float(e.max()), "median_rel_error": float(np.median(e)),
                "within_margin": float(np.mean(e <= self.margin)), "wrong_decisions": wrong}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f} %"


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


__all__ = ["AUDIT_FILE", "CACHE_FILE", "PopError", "PopOutcome", "PopSearch", "PopSettings", "STATE_FILE"]
