"""The original's evolutionary search (seed spec §2.3), with a checkpointed state.

Per iteration: evaluate the population's candidates -> merge them into the running top `select_num`
(sorted by fitness, lower is better: the held-out top-1 error as the original, or the held-out loss;
ties keep the order of arrival) -> parents = its first `top_k` -> next population =
`mutation_num` mutants + `crossover_num` crossovers + random candidates up to `population`.  The first
population is random.

* Mutation: up to `mutation_rounds` rounds of `mutation_num` proposals; each picks a parent uniformly from
  the top-k, and each gene mutates with probability `mutation_prob` by adding a random offset in [1, 30]
  modulo 31 (so the new id always differs).  Genes are the compact encoding: a MobileNetV2 stage gene
  mutates once and its new value holds for every layer of the stage, as the original writes one value per
  stage into its per-layer vector.
* Crossover: up to `crossover_tries * crossover_num` attempts; two distinct parents from the top-k, one
  uniform bit per gene (per stage / per block for MobileNetV2, as the original's mask).
* Random: ids uniform in [random_low, random_high) per gene (ResNet: [12, 24)); when a budget far from
  the space's middle admits too few such draws, under a random upper or over a random lower id.
* A proposal is rejected when it violates the constraint, was evaluated before in this search, or is
  already proposed in this generation.  "The same candidate" is decided by `key` (`run_evolution`'s
  argument; the search passes the decoded widths): with ``channel_multiple`` > 1 several gene vectors
  decode to one network (the quick space's first genes take 3-6 widths over 31 ids), and each alias got a
  fitness of its own (a different generator input), so the running top list filled with the luckiest
  draws of a few networks (two quick-config searches: 9 networks in a top list of 20, 2 and 3 among the 5
  parents) and the pick favoured the networks with most aliases.  Keyed by widths, each network is evaluated once.  Where every id
  decodes to its own network (the original's spaces, ``channel_multiple`` 1, up to a few rounding
  coincidences) this is the original's rule.

State (`EvolutionState`, JSON): the iteration to run next, its population (with constraint values), the
running top list, every evaluated candidate with its fitness, the numpy bit generator state and the trace.
`run_evolution` saves it after every iteration, and the evaluation cache after every evaluated batch, so a
search killed at any point and restarted ends with exactly the result of an uninterrupted one.  (The
original's snapshot forgot which candidates were tested, so its resumed searches could differ.)
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Container, Hashable, Sequence

import numpy as np

from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.base import SearchError
from jaxnas.methods.metapruning.space import NUM_SCALES

Genes = tuple[int, ...]


class EvolutionError(SearchError):
    """The search cannot proceed (e.g. no candidate satisfies the constraint)."""


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The search's numbers (validated where the user gives them: `MetaPruningArgs`)."""

    population: int = 50
    select_num: int = 50         # the running top list ("keep_top_50")
    top_k: int = 10              # parents
    mutation_num: int = 25
    mutation_prob: float = 0.1
    crossover_num: int = 25
    max_iters: int = 20
    mutation_rounds: int = 10
    crossover_tries: int = 10    # attempts per wanted crossover child
    random_low: int = 0
    random_high: int = NUM_SCALES
    random_tries: int = 100_000  # the original loops forever
    random_uniform_tries: int = 2_000  # of those, the original's uniform draws before the random bounds
    eval_batch: int = 10         # candidates evaluated (and cached) per evaluator call
    seed: int = 0
    fitness: str = "error"       # what the evaluator returns ("error": top-1 %, "loss": mean CE): labels the
                                 # log and the cache, which a resume with another metric must not reuse


def read_fitness(value: float | None) -> float:
    """A saved fitness: the JSON files (strict JSON) hold a diverged candidate's infinity as null."""
    return float("inf") if value is None else float(value)


@dataclasses.dataclass
class EvolutionState:
    iteration: int                                   # the next iteration to run
    population: list[tuple[Genes, float]]           # (genes, constraint value) to evaluate in `iteration`
    top: list[tuple[Genes, float]]                   # (genes, fitness) sorted by fitness, at most select_num
    tested: dict[Genes, float]                       # every candidate evaluated in this search -> fitness
    rng: dict                                        # numpy bit generator state
    trace: list[dict] = dataclasses.field(default_factory=list)
    candidate_key: str = "genes"                     # what tells two candidates apart (`run_evolution`'s key)
    exhausted: bool = False                          # a generation found no new candidate: the search ended

    def to_json(self) -> dict:
        return {"iteration": self.iteration,
                "population": [[list(g), c] for g, c in self.population],
                "top": [[list(g), e] for g, e in self.top],
                "tested": [[list(g), e] for g, e in self.tested.items()],
                "rng": self.rng, "trace": self.trace, "candidate_key": self.candidate_key,
                "exhausted": self.exhausted}

    @staticmethod
    def from_json(d: dict) -> "EvolutionState":
        return EvolutionState(
            iteration=int(d["iteration"]),
            population=[(tuple(g), float(c)) for g, c in d["population"]],
            top=[(tuple(g), read_fitness(e)) for g, e in d["top"]],
            tested={tuple(g): read_fitness(e) for g, e in d["tested"]},
            rng=d["rng"], trace=list(d.get("trace", [])),
            # states written before candidates could be keyed by network were keyed by genes
            candidate_key=str(d.get("candidate_key", "genes")), exhausted=bool(d.get("exhausted", False)))


class Proposer:
    """Mutation, crossover and random proposals under the constraint (the original's rules)."""

    def __init__(self, cfg: EvolutionConfig, num_genes: int, rng: np.random.Generator,
                 cost: Callable[[Genes], float], allowed: Callable[[float], bool],
                 key: Callable[[Genes], Hashable] | None = None):
        self.cfg, self.n, self.rng = cfg, num_genes, rng
        self._cost, self.allowed = cost, allowed
        self.key = key or (lambda genes: genes)   # what makes two gene vectors the same candidate
        self.costs: dict[Genes, float] = {}

    def cost(self, genes: Genes) -> float:
        if genes not in self.costs:
            self.costs[genes] = float(self._cost(genes))
        return self.costs[genes]

    def _accept(self, genes: Genes, tested: Container, proposed: dict, out: list, value: float | None = None) -> bool:
        """Take `genes` (cost `value` when already known) unless seen before or outside the constraint.
        `tested` and `proposed` are keyed by `self.key` (`run_evolution` passes the tested keys)."""
        if value is not None and not self.allowed(value):
            return False
        k = self.key(genes)
        if k in tested or k in proposed:
            return False
        c = self.cost(genes) if value is None else value
        if not self.allowed(c):
            return False
        self.costs[genes] = c
        proposed[k] = c
        out.append((genes, c))
        return True

    def mutation(self, parents: Sequence[Genes], tested: Container, proposed: dict) -> list[tuple[Genes, float]]:
        cfg, out = self.cfg, []
        if not parents or cfg.mutation_num == 0:
            return out
        p = np.asarray(parents, np.int64)
        for _ in range(cfg.mutation_rounds):
            if len(out) >= cfg.mutation_num:
                break
            seeds = p[self.rng.choice(len(p), cfg.mutation_num)]
            flip = self.rng.random((cfg.mutation_num, self.n)) < cfg.mutation_prob
            offset = self.rng.integers(1, NUM_SCALES, (cfg.mutation_num, self.n)) * flip
            for child in (seeds + offset) % NUM_SCALES:
                if self._accept(tuple(int(v) for v in child), tested, proposed, out) and len(out) == cfg.mutation_num:
                    break
        return out

    def crossover(self, parents: Sequence[Genes], tested: Container, proposed: dict) -> list[tuple[Genes, float]]:
        cfg, out = self.cfg, []
        if len(parents) < 2 or cfg.crossover_num == 0:
            return out
        p = np.asarray(parents, np.int64)
        for _ in range(cfg.crossover_tries * cfg.crossover_num):
            if len(out) >= cfg.crossover_num:
                break
            i, j = self.rng.choice(len(p), 2, replace=False)
            bits = self.rng.integers(0, 2, self.n).astype(bool)
            self._accept(tuple(int(v) for v in np.where(bits, p[i], p[j])), tested, proposed, out)
        return out

    def draw(self, k: int, bounded: bool) -> np.ndarray:
        """(k, num_genes) random ids: uniform in [random_low, random_high) as the original, or `bounded`:
        each row first draws a bound and a side, then its ids uniform under the bound or over it."""
        lo_id, hi_id = self.cfg.random_low, self.cfg.random_high
        if not bounded:
            return self.rng.integers(lo_id, hi_id, (k, self.n))
        bound = self.rng.integers(lo_id + 1, hi_id + 1, k)
        upper = self.rng.random(k) < 0.5
        lows, highs = np.where(upper, lo_id, bound - 1), np.where(upper, bound, hi_id)
        return self.rng.integers(lows[:, None], highs[:, None], (k, self.n))

    def random(self, num: int, tested: Container, proposed: dict) -> list[tuple[Genes, float]]:
        """`num` new candidates within the constraint, every gene uniform in [random_low, random_high) as the
        original.  When `random_uniform_tries` such draws admit too few, the rest of the `random_tries` draws
        each first draw a random bound and a side: ids uniform under a random upper id (narrow networks) or
        over a random lower id (wide ones).  Uniform ids concentrate a network's cost near the space's middle
        (a sum over 25 genes): the quick config's 0.4 ms cap on a machine where the widest net measured
        1.54 ms admitted 2 of 20 in 100,000 uniform draws; the window [0.95, 1] x 50 % of the widest net,
        above the middle, admitted 11 of 12 in 100,000 draws under a random upper id alone.

        Draws go in chunks, their costs computed at once where the cost function has a vectorised
        ``batch(ids (k, n)) -> (k,)`` (`CostFunction.batch`; ~1 ms per candidate one at a time, so the
        window above spent ~27 s of each 60 s iteration drawing); the accepted ones are those the one-by-one
        loop would take, in the same order.

        Returns fewer than `num` when the draws run out first: a budget that admits few networks of the space
        (with candidates keyed by network, every one of them may have been evaluated).  `run_evolution`
        decides what a short or empty population means."""
        cfg, out = self.cfg, []
        batch = getattr(self._cost, "batch", None)
        uniform = min(cfg.random_uniform_tries, cfg.random_tries)
        drawn, chunk = 0, 64
        while drawn < cfg.random_tries and len(out) < num:
            k = min(chunk, (uniform if drawn < uniform else cfg.random_tries) - drawn)
            ids = self.draw(k, bounded=drawn >= uniform)
            drawn += k
            chunk = min(2 * chunk, 4096)
            costs = np.asarray(batch(ids), np.float64) if batch is not None else None
            for r, row in enumerate(ids):
                value = None if costs is None else float(costs[r])
                if value is not None and not self.allowed(value):
                    continue  # rejected whatever else holds; skips building the tuple and its key
                if self._accept(tuple(int(v) for v in row), tested, proposed, out, value) and len(out) >= num:
                    return out
        return out


def _bitgen_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state, default=int))


def _restore_rng(state: dict) -> np.random.Generator:
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
    return np.random.Generator(bg)


def key_name(key: Callable[[Genes], Hashable] | None) -> str:
    """How a search's candidates are told apart, as its state records it (a resume must tell them apart alike)."""
    return "genes" if key is None else getattr(key, "__name__", "custom")


def fitness_label(metric: str, value: float) -> str:
    return f"top-1 error {value:.2f} %" if metric == "error" else f"held-out loss {value:.4f}"


def run_evolution(cfg: EvolutionConfig, num_genes: int, evaluate: Callable[[list[Genes]], Sequence[float]],
                  cost: Callable[[Genes], float], allowed: Callable[[float], bool], workdir: str | Path | None = None,
                  *, key: Callable[[Genes], Hashable] | None = None, log: Callable[[str], None] | None = None,
                  on_evaluated: Callable[[int], None] | None = None) -> EvolutionState:
    """Run (or resume, from ``workdir/state.json`` and ``workdir/tested.json``) the search; returns the final state.

    `evaluate(genes list) -> fitness values` (lower is better; `cfg.fitness` names them); `cost(genes) ->
    constraint value`; `allowed(value) -> bool`; `key(genes)`: what makes two gene vectors the same
    candidate (default: the genes themselves; module docstring).
    `on_evaluated(n)` is called after each evaluated batch with the number of new evaluations so far in
    this session (tests use it to interrupt a search mid-iteration).

    The search ends before `cfg.max_iters` when a generation proposes no new candidate (mutation, crossover
    and `random_tries` random draws all found only evaluated ones or none within the constraint): a budget
    that admits few networks, all evaluated.  A short generation is evaluated as it is.
    """
    say = log or (lambda _m: None)
    workdir = Path(workdir) if workdir is not None else None
    state_path = workdir / "state.json" if workdir else None
    cache_path = workdir / "tested.json" if workdir else None
    cache: dict[Genes, float] = {}
    if cache_path is not None and cache_path.is_file():
        saved = json.loads(cache_path.read_text())
        if saved.get("fitness", "error") != cfg.fitness:
            raise EvolutionError(f"{cache_path} holds {saved.get('fitness', 'error')} fitness values but this search "
                                 f"ranks by {cfg.fitness} (search.args.fitness); use a fresh work dir or the same fitness")
        cache = {tuple(g): read_fitness(e) for g, e in saved["tested"]}
    if state_path is not None and state_path.is_file():
        state = EvolutionState.from_json(json.loads(state_path.read_text()))
        if state.candidate_key != key_name(key):
            raise EvolutionError(f"{state_path} is a search that told candidates apart by {state.candidate_key} "
                                 f"(an earlier jaxnas), this one tells them apart by {key_name(key)}: its top list "
                                 f"would mix the two; delete {state_path.parent} to search again (the trained "
                                 "PruningNet and the fitness cache are kept), or use a fresh work dir")
        rng = _restore_rng(state.rng)
        proposer = Proposer(cfg, num_genes, rng, cost, allowed, key)
        say(f"evolution: resumed at iteration {state.iteration} ({len(state.tested)} candidates evaluated, "
            f"{len(cache)} cached)")
    else:
        rng = np.random.default_rng(cfg.seed)
        proposer = Proposer(cfg, num_genes, rng, cost, allowed, key)
        first = proposer.random(cfg.population, {}, {})
        if not first:
            raise EvolutionError(f"no candidate satisfies the constraint in {cfg.random_tries} random draws (most "
                                 "under a random upper or over a random lower id): the budget admits too few "
                                 "networks of the space; relax it")
        if len(first) < cfg.population:
            say(f"evolution: the constraint admits only {len(first)} networks in {cfg.random_tries} random draws; "
                f"the first population has {len(first)} of {cfg.population}")
        state = EvolutionState(0, first, [], {}, _bitgen_state(rng), candidate_key=key_name(key))
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    # The cache answers by candidate: a cache carried over from another search (the corrected one) may hold
    # an alias of a proposed network; its first entry is the network's fitness.
    cached: dict[Hashable, float] = {}
    for g, e in cache.items():
        cached.setdefault(proposer.key(g), e)
    evaluated = 0
    while state.iteration < cfg.max_iters and not state.exhausted:
        t0 = time.perf_counter()
        todo = [g for g, _ in state.population if proposer.key(g) not in cached]
        for start in range(0, len(todo), cfg.eval_batch):
            chunk = todo[start:start + cfg.eval_batch]
            for g, e in zip(chunk, evaluate(chunk)):
                # a diverged candidate's loss is NaN, which a sort puts anywhere (top[0] included): worst instead
                cache[g] = float(e) if np.isfinite(e) else float("inf")
                cached.setdefault(proposer.key(g), cache[g])
            evaluated += len(chunk)
            if cache_path is not None:
                atomic_write_json(cache_path, {"fitness": cfg.fitness, "tested": [[list(g), e] for g, e in cache.items()]})
            if on_evaluated is not None:
                on_evaluated(evaluated)
        fresh = [(g, cached[proposer.key(g)]) for g, _ in state.population]
        for g, e in fresh:
            state.tested[g] = e
        state.top = sorted(state.top + fresh, key=lambda t: t[1])[:cfg.select_num]
        parents = [g for g, _ in state.top[:cfg.top_k]]
        best_g, best_e = state.top[0]
        state.trace.append({"iteration": state.iteration, "best_fitness": best_e, "best_genes": list(best_g),
                            "best_cost": proposer.cost(best_g),
                            "mean_top_k_fitness": float(np.mean([e for _, e in state.top[:cfg.top_k]])),
                            "evaluated": len(todo), "seconds": round(time.perf_counter() - t0, 3)})
        say(f"evolution: iteration {state.iteration}: best {fitness_label(cfg.fitness, best_e)} (cost "
            f"{proposer.cost(best_g):.6g}), top-{cfg.top_k} mean {fitness_label(cfg.fitness, state.trace[-1]['mean_top_k_fitness'])}, "
            f"{len(todo)} evaluated in {state.trace[-1]['seconds']:.1f} s")
        tested = {proposer.key(g) for g in state.tested}
        proposed: dict[Hashable, float] = {}
        mutation = proposer.mutation(parents, tested, proposed)
        crossover = proposer.crossover(parents, tested, proposed)
        rand = proposer.random(cfg.population - len(mutation) - len(crossover), tested, proposed)
        state.population = mutation + crossover + rand
        if not state.population:
            state.exhausted = True
            say(f"evolution: iteration {state.iteration + 1} found no new candidate within the constraint "
                f"({len(state.tested)} evaluated; {cfg.random_tries} random draws found none unevaluated): the "
                "budget admits few networks and these were all; the search ends here")
        elif len(state.population) < cfg.population:
            say(f"evolution: iteration {state.iteration + 1}: only {len(state.population)} new candidates of "
                f"{cfg.population} within the constraint (the budget admits few networks)")
        state.iteration += 1
        state.rng = _bitgen_state(rng)
        if state_path is not None:
            atomic_write_json(state_path, state.to_json())
    return state


__all__ = ["EvolutionConfig", "EvolutionError", "EvolutionState", "Proposer", "fitness_label", "key_name",
           "read_fitness", "run_evolution"]
