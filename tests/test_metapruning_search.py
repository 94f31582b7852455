"""MetaPruning evolutionary search: mutation/crossover/random rules, constraint rejection, exact resume."""
import dataclasses
from types import SimpleNamespace
import json

import numpy as np
import pytest

from jaxnas.methods.metapruning.constraint import CostFunction
from jaxnas.methods.metapruning.evolution import (EvolutionConfig, EvolutionError, Proposer, run_evolution)
from jaxnas.methods.metapruning.space import get_space


def _fake_error(genes):
    """A deterministic fitness: wider early stages and narrower late ones are 'better'."""
    g = np.asarray(genes, np.float64)
    w = np.linspace(1.0, -0.5, len(g))
    return float(50.0 - 0.3 * (g * w).sum() / len(g) + 0.01 * (hash(tuple(genes)) % 7))


def _evaluate(batch):
    return [_fake_error(g) for g in batch]


def test_mutation_changes_genes_by_offsets_in_1_30_and_keeps_stage_genes_shared():
    space = get_space("mobilenet_v2")
    cfg = EvolutionConfig(mutation_num=25, mutation_prob=0.1)
    rng = np.random.default_rng(0)
    prop = Proposer(cfg, space.num_genes, rng, cost=lambda g: 0.0, allowed=lambda c: True)
    parents = [tuple(int(v) for v in rng.integers(0, 31, space.num_genes)) for _ in range(10)]
    children = prop.mutation(parents, {p: 1.0 for p in parents}, {})   # parents are always tested
    assert len(children) == 25
    changed_fraction = []
    for child, _ in children:
        # Each child is a parent with some genes moved; find the closest parent.
        diffs = [np.asarray(child) != np.asarray(p) for p in parents]
        k = int(np.argmin([d.sum() for d in diffs]))
        assert diffs[k].sum() >= 1                       # identical children are rejected (already "tested")
        changed_fraction.append(diffs[k].mean())
        # In the original's printed form a stage's layers always share one id.
        printed = space.to_printed(child)
        assert space.from_printed(printed) == child
    assert 0.02 < np.mean(changed_fraction) < 0.25      # per-gene probability 0.1 (at least one change)
    # Probability 0: every proposal equals its parent, which was tested: no mutants.
    prop0 = Proposer(EvolutionConfig(mutation_prob=0.0), space.num_genes, rng, lambda g: 0.0, lambda c: True)
    assert prop0.mutation(parents, {p: 1.0 for p in parents}, {}) == []


def test_crossover_takes_every_gene_from_one_of_two_parents():
    cfg = EvolutionConfig(crossover_num=25)
    rng = np.random.default_rng(1)
    prop = Proposer(cfg, 20, rng, cost=lambda g: 0.0, allowed=lambda c: True)
    parents = [tuple([k] * 20) for k in range(10)]   # parent k: every gene k
    out = prop.crossover(parents, {}, {})
    assert len(out) == 25
    for child, _ in out:
        assert 1 <= len(set(child)) <= 2               # genes of at most two distinct parents
        assert set(child) <= set(range(10))
    assert any(len(set(c)) == 2 for c, _ in out)


def test_proposals_violating_the_constraint_or_seen_before_are_rejected():
    space = get_space("mobilenet_v2")
    cost = CostFunction(space, "macs")
    cap = 150e6
    rng = np.random.default_rng(2)
    prop = Proposer(EvolutionConfig(), space.num_genes, rng, cost, lambda c: c <= cap)
    rand = prop.random(30, {}, {})
    assert len(rand) == 30 and all(c <= cap for _, c in rand)
    assert all(cost(g) == c for g, c in rand)
    tested = {g: 1.0 for g, _ in rand[:10]}
    proposed = {}
    muts = prop.mutation([g for g, _ in rand[:10]], tested, proposed)
    assert all(c <= cap for _, c in muts) and not set(tested) & {g for g, _ in muts}
    assert len({g for g, _ in muts}) == len(muts)
    # A window (ResNet-style) rejects the too-cheap side as well.
    lo = 120e6
    prop2 = Proposer(EvolutionConfig(), space.num_genes, rng, cost, lambda c: lo <= c <= cap)
    assert all(lo <= c <= cap for _, c in prop2.random(10, {}, {}))


def test_random_candidates_use_the_spaces_id_range_and_fail_clearly_when_impossible():
    space = get_space("resnet50")
    cfg = EvolutionConfig(random_low=space.random_low, random_high=space.random_high, random_tries=200)
    prop = Proposer(cfg, space.num_genes, np.random.default_rng(3), lambda g: 0.0, lambda c: True)
    ids = np.asarray([g for g, _ in prop.random(20, {}, {})])
    assert ids.min() >= 12 and ids.max() <= 23
    never = Proposer(cfg, space.num_genes, np.random.default_rng(3), lambda g: 1.0, lambda c: c < 0.5)
    assert never.random(5, {}, {}) == []    # the draws ran out: run_evolution decides what that means
    with pytest.raises(EvolutionError, match="no candidate satisfies the constraint in 200 random draws"):
        run_evolution(cfg, space.num_genes, _evaluate, lambda g: 1.0, lambda c: c < 0.5)


def _few_networks(genes):
    """Seven 'networks': the gene vectors' sums modulo 7 (as aliases of a width decode to one network)."""
    return sum(genes) % 7
_few_networks.__name__ = "few_networks"


def test_a_budget_that_admits_few_networks_ends_the_search_when_all_are_evaluated(tmp_path):
    """Keyed by network, a generation can run out of new candidates (every admitted network evaluated): the
    search ends there with its best instead of failing after the PruningNet's training, and a resume
    returns that end.  (It raised 'only 0 of 8 random candidates satisfy the constraint'.)"""
    cfg = EvolutionConfig(population=4, select_num=4, top_k=2, mutation_num=1, crossover_num=1, max_iters=10,
                          random_tries=300, random_uniform_tries=100, eval_batch=2, seed=0)
    calls = []

    def evaluate(batch):
        calls.extend(batch)
        return [float(_few_networks(g)) for g in batch]

    kw = dict(cost=lambda g: 0.0, allowed=lambda c: True, key=_few_networks)
    state = run_evolution(cfg, 25, evaluate, workdir=tmp_path, **kw)
    assert state.exhausted and state.iteration < cfg.max_iters
    assert sorted(_few_networks(g) for g in state.tested) == list(range(7))   # each network once
    assert len(calls) == 7 and state.top[0][1] == 0.0
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["exhausted"] and saved["candidate_key"] == "few_networks"
    again = run_evolution(cfg, 25, evaluate, workdir=tmp_path, **kw)
    assert again.top == state.top and len(calls) == 7


def test_a_search_state_keyed_otherwise_is_refused_on_resume(tmp_path):
    """A state written by a search that keyed candidates by gene vector (before network keys) would mix
    aliases into the resumed top list: refused with one clear error."""
    cfg = EvolutionConfig(population=6, select_num=6, top_k=2, mutation_num=2, crossover_num=2, max_iters=1,
                          seed=0)
    kw = dict(cost=lambda g: float(sum(g)), allowed=lambda c: True)
    run_evolution(cfg, 25, _evaluate, workdir=tmp_path, **kw)
    state = json.loads((tmp_path / "state.json").read_text())
    del state["candidate_key"]                     # as states written before the key was recorded
    (tmp_path / "state.json").write_text(json.dumps(state))
    bigger = dataclasses.replace(cfg, max_iters=2)
    with pytest.raises(EvolutionError, match="told candidates apart by genes .* this one tells them apart by "
                                             "few_networks"):
        run_evolution(bigger, 25, _evaluate, workdir=tmp_path, key=_few_networks, **kw)
    assert run_evolution(bigger, 25, _evaluate, workdir=tmp_path, **kw).iteration == 2   # same keying: resumes


def test_a_carried_over_cache_answers_for_an_alias_of_a_cached_network(tmp_path):
    """The corrected search starts from the first search's cache: a proposal that decodes to a cached
    network is not evaluated again (it would get another fitness, another generator input)."""
    cfg = EvolutionConfig(population=3, select_num=3, top_k=2, mutation_num=0, crossover_num=0, max_iters=1,
                          random_tries=300, random_uniform_tries=100, seed=3)
    aliases = {k: tuple([k] + [0] * 24) for k in range(7)}       # one gene vector per 'network'
    (tmp_path / "tested.json").write_text(json.dumps(
        {"fitness": "error", "tested": [[list(g), 10.0 + k] for k, g in aliases.items()]}))
    calls = []

    def evaluate(batch):
        calls.extend(batch)
        return [0.0 for _ in batch]

    state = run_evolution(cfg, 25, evaluate, cost=lambda g: 0.0, allowed=lambda c: True, workdir=tmp_path,
                          key=_few_networks)
    assert calls == []                              # every network of the population was cached
    assert all(e == 10.0 + _few_networks(g) for g, e in state.tested.items())


def test_random_candidates_reach_a_budget_near_the_narrow_end_of_the_space():
    """Uniform ids put the sum of 25 genes near 375 +- 45: a cap of 60 is out of reach of 200 such draws,
    not of draws under a random upper id."""
    cfg = EvolutionConfig(random_tries=400, random_uniform_tries=200)
    prop = Proposer(cfg, 25, np.random.default_rng(0), lambda g: float(sum(g)), lambda c: c <= 60)
    got = prop.random(5, {}, {})
    assert len(got) == 5 and all(c == sum(g) <= 60 for g, c in got)
    assert len({g for g, _ in got}) == 5


def test_evolution_improves_and_keeps_a_sorted_top_list(tmp_path):
    cfg = EvolutionConfig(population=20, select_num=20, top_k=5, mutation_num=8, crossover_num=8, max_iters=6, seed=0)
    state = run_evolution(cfg, 25, _evaluate, cost=lambda g: float(sum(g)), allowed=lambda c: c <= 500,
                          workdir=tmp_path)
    errs = [e for _, e in state.top]
    assert errs == sorted(errs) and len(state.top) == 20
    assert state.trace[-1]["best_fitness"] < state.trace[0]["best_fitness"]
    assert [t["iteration"] for t in state.trace] == list(range(6))
    assert all(sum(g) <= 500 for g in state.tested)
    assert len(state.tested) == 6 * 20                    # every candidate distinct, evaluated once


def test_a_resume_under_another_fitness_metric_is_refused(tmp_path):
    """The cache holds fitness values of one metric: reusing top-1 errors (%) as losses would rank garbage."""
    cfg = EvolutionConfig(population=6, select_num=6, top_k=2, mutation_num=2, crossover_num=2, max_iters=1, seed=0)
    kw = dict(cost=lambda g: float(sum(g)), allowed=lambda c: c <= 500, workdir=tmp_path)
    run_evolution(cfg, 25, _evaluate, **kw)
    assert json.loads((tmp_path / "tested.json").read_text())["fitness"] == "error"
    with pytest.raises(EvolutionError, match="holds error fitness values but this search ranks by loss"):
        run_evolution(dataclasses.replace(cfg, fitness="loss", max_iters=2), 25, _evaluate, **kw)
    state = run_evolution(dataclasses.replace(cfg, max_iters=2), 25, _evaluate, **kw)   # same metric: resumes
    assert state.iteration == 2


def test_gene_vectors_that_decode_to_one_network_are_one_candidate(tmp_path):
    """With channel_multiple 8 many ids of a gene round to one width.  Each alias got a fitness of its own,
    so the top list filled with the luckiest draws of a few networks; keyed by the decoded widths
    (`MetaSpace.network_key`, what the search passes), every evaluated candidate is a different network."""
    space = get_space("mobilenet_v2", resolution=28, num_classes=10, small_input=True, channel_multiple=8)
    a = space.uniform(0)
    alias = (1,) + a[1:]   # gene 0 (the stem, 44 channels at most): ids 0 and 1 both round to 8 channels
    assert alias != a and space.network_key(alias) == space.network_key(a)
    cfg = EvolutionConfig(population=30, select_num=30, top_k=5, mutation_num=12, crossover_num=12, max_iters=6,
                          seed=0)

    def noisy(batch):   # the fitness of a gene vector, not of its network: aliases draw different values
        return [float(np.random.default_rng(list(g)).normal()) for g in batch]

    kw = dict(cost=lambda g: float(sum(g)), allowed=lambda c: c <= 450)
    keyed = run_evolution(cfg, space.num_genes, noisy, key=space.network_key, **kw)
    nets = [space.network_key(g) for g in keyed.tested]
    assert len(nets) == 6 * 30 and len(set(nets)) == len(nets)
    assert len({space.network_key(g) for g, _ in keyed.top}) == len(keyed.top)
    by_genes = run_evolution(cfg, space.num_genes, noisy, **kw)     # the gene vector as the key: aliases
    nets = [space.network_key(g) for g in by_genes.tested]
    assert len(set(nets)) < len(nets)
    # The proposer alone: a proposal whose network was tested (under other ids) is rejected.
    prop = Proposer(cfg, space.num_genes, np.random.default_rng(0), lambda g: 0.0, lambda c: True, space.network_key)
    tested = {space.network_key(a)}
    assert not prop._accept(alias, tested, {}, [])
    proposed: dict = {}
    assert prop._accept(space.uniform(24), tested, proposed, [])
    assert not prop._accept((29,) + space.uniform(24)[1:], tested, proposed, [])   # an alias of one just proposed


def test_a_candidate_whose_fitness_is_nan_ranks_last_not_anywhere(tmp_path):
    """A diverged candidate's held-out loss is NaN; sorted among numbers it could land at the top and be picked."""
    cfg = EvolutionConfig(population=12, select_num=12, top_k=4, mutation_num=4, crossover_num=4, max_iters=3, seed=0)

    def some_nan(batch):
        return [float("nan") if sum(g) % 3 == 0 else _fake_error(g) for g in batch]

    state = run_evolution(cfg, 25, some_nan, cost=lambda g: float(sum(g)), allowed=lambda c: c <= 500,
                          workdir=tmp_path)
    assert any(sum(g) % 3 == 0 for g in state.tested)
    fit = [e for _, e in state.top]
    assert fit == sorted(fit) and not np.isnan(fit).any()
    assert sum(state.top[0][0]) % 3 != 0
    resumed = run_evolution(cfg, 25, some_nan, cost=lambda g: float(sum(g)), allowed=lambda c: c <= 500,
                            workdir=tmp_path)    # the cache (with its infinities) reads back
    assert resumed.top == state.top


class _Interrupt(Exception):
    pass


def _coarse(genes):
    """A network key under which several gene vectors are one candidate (as `MetaSpace.network_key`)."""
    return tuple(v // 4 for v in genes)


@pytest.mark.parametrize("key", [None, _coarse])
@pytest.mark.parametrize("kill_after", [7, 25, 40])   # mid first iteration, mid later ones
def test_a_search_interrupted_mid_way_ends_exactly_like_an_uninterrupted_one(tmp_path, kill_after, key):
    cfg = EvolutionConfig(population=12, select_num=12, top_k=4, mutation_num=5, crossover_num=4, max_iters=5,
                          eval_batch=3, seed=7)
    kw = dict(cost=lambda g: float(sum(g)), allowed=lambda c: c <= 450, key=key)
    full = run_evolution(cfg, 25, _evaluate, workdir=tmp_path / "full", **kw)

    calls = []

    def counting(batch):
        calls.append(len(batch))
        return _evaluate(batch)

    def interrupt(n):
        if n >= kill_after:
            raise _Interrupt
    with pytest.raises(_Interrupt):
        run_evolution(cfg, 25, counting, workdir=tmp_path / "cut", on_evaluated=interrupt, **kw)
    first = sum(calls)
    resumed = run_evolution(cfg, 25, counting, workdir=tmp_path / "cut", **kw)
    assert resumed.top == full.top
    assert resumed.tested == full.tested
    assert [t["best_fitness"] for t in resumed.trace] == [t["best_fitness"] for t in full.trace]
    assert resumed.rng == full.rng
    # Nothing was evaluated twice: the cache written after each batch survived the interruption.
    assert sum(calls) == len(full.tested) and first >= kill_after
    saved = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert saved["iteration"] == 5


def test_latency_check_searches_again_under_the_corrected_budget_before_settling_for_the_fastest(tmp_path):
    """The runtime runs every net 1.2x slower than the grid predicts: neither of the 2 best candidates fits
    the target (+5 %), so the search runs again under target / 1.2 (window bound / 1.2 too), and the best of
    its candidates measured within the target is kept; resumed, nothing is measured again."""
    from types import SimpleNamespace

    from jaxnas import spec as S
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.methods.metapruning.constraint import Budget
    from jaxnas.methods.metapruning.pipeline import Setup, pick_within_latency

    space = get_space("mobilenet_v2", resolution=28, num_classes=10, in_channels=1, small_input=True,
                      channel_multiple=8)
    predicted = lambda g: S.macs(space.to_spec(g)) / 1e7  # noqa: E731  ms
    measured_calls = []

    def measure(spec):
        measured_calls.append(S.macs(spec))
        return 1.2 * S.macs(spec) / 1e7

    u = {k: space.uniform(k) for k in range(31)}
    # predicted ms: u22 2.442, u21 2.274, u20 2.183, u18 1.910, u12 1.024
    target = predicted(u[22])
    errors = {u[22]: 30.0, u[21]: 30.5, u[20]: 31.0, u[18]: 31.5, u[12]: 33.0}
    budgets = []

    def search_again(budget):
        budgets.append(budget)
        return SimpleNamespace(top=sorted(((g, e) for g, e in errors.items() if budget.allows(predicted(g))),
                                          key=lambda t: t[1]))

    first = SimpleNamespace(top=[(u[22], 30.0), (u[21], 30.5)])
    setup = Setup(MetaPruningArgs(verify_latency=2), space, Budget("latency_ms", target, 0.5 * target), predicted,
                  (predicted(u[0]), predicted(u[30])), 0, 1)
    genes, err, rows, again = pick_within_latency(setup, first, search_again, measure, tmp_path, lambda m: None)
    # By hand: corrected budget [0.5, 1] x 2.442 / 1.2 = [1.018, 2.035] ms predicted: u20 is out, u18 is the
    # best inside, measured 1.2 x 1.910 = 2.29 ms <= 1.05 x 2.442 = 2.56 ms.
    assert budgets[0].max == pytest.approx(target / 1.2) and budgets[0].min == pytest.approx(0.5 * target / 1.2)
    assert genes == u[18] and err == 31.5 and again is not None
    assert [tuple(r["genes"]) for r in rows] == [u[22], u[21], u[18]] and rows[2]["corrected_search"]
    assert S.macs(space.to_spec(u[20])) not in measured_calls and len(measured_calls) == 3
    # Resumed from verify.json and verify_corrected.json: the same pick, nothing measured again.
    again = pick_within_latency(setup, first, search_again, measure, tmp_path, lambda m: None)
    assert again[0] == u[18] and len(measured_calls) == 3


def test_random_candidates_reach_a_window_near_the_wide_end_of_the_space():
    """A window of sums in [600, 650] (uniform ids: 375 +- 45, at most 750) is out of reach of uniform draws
    and of draws under a random upper id; draws over a random lower id reach it."""
    cfg = EvolutionConfig(random_tries=2000, random_uniform_tries=200)
    prop = Proposer(cfg, 25, np.random.default_rng(0), lambda g: float(sum(g)), lambda c: 600 <= c <= 650)
    got = prop.random(5, {}, {})
    assert len(got) == 5 and all(c == sum(g) and 600 <= c <= 650 for g, c in got)
    assert len({g for g, _ in got}) == 5


class _SumCost:
    """A cost with a vectorised `batch`, counting the candidates it was asked for one at a time."""

    def __init__(self):
        self.one_by_one = 0

    def __call__(self, genes):
        self.one_by_one += 1
        return float(sum(genes))

    def batch(self, ids):
        return np.asarray(ids, np.float64).sum(axis=1)


def test_random_fill_with_a_batched_cost_takes_the_same_candidates_without_one_by_one_calls():
    cfg = EvolutionConfig(random_tries=3000, random_uniform_tries=500)
    allowed = lambda c: c <= 120 or 560 <= c <= 600   # both tails: uniform and bounded draws
    batched = _SumCost()
    a = Proposer(cfg, 25, np.random.default_rng(7), batched, allowed).random(8, {}, {})
    b = Proposer(cfg, 25, np.random.default_rng(7), lambda g: float(sum(g)), allowed).random(8, {}, {})
    assert a == b and len(a) == 8
    assert batched.one_by_one == 0


class _GridTable:
    """A duck-typed per-layer grid: every entry's latency a smooth function of its channels."""

    def __init__(self, spec):
        from latency.layer_grid import grid_entries, grid_layers
        self.meta = {"layers": grid_layers(spec, multiple=8)}
        self.values = {key: 1e-3 + 2e-6 * cin * cout + 1e-4 * cout ** 0.5
                       for key, _, cin, cout in grid_entries(spec, multiple=8, layers=self.meta["layers"])}

    def __contains__(self, key):
        return key in self.values

    def ms(self, key, stat="median"):
        return self.values[key]


@pytest.mark.parametrize("kind", ["macs", "flops_original", "latency_ms"])
def test_cost_batch_equals_the_one_by_one_cost(kind):
    from jaxnas.methods.metapruning.space import get_space
    space = get_space("mobilenet_v2", resolution=28, num_classes=10, in_channels=1, small_input=True,
                      channel_multiple=8)
    table = _GridTable(space.max_spec()) if kind == "latency_ms" else None
    cost = CostFunction(space, kind, table=table)
    ids = np.random.default_rng(0).integers(0, 31, (40, space.num_genes))
    ids[0], ids[1] = 0, 30
    one = np.asarray([CostFunction(space, kind, table=table)(tuple(int(v) for v in r)) for r in ids])
    np.testing.assert_array_equal(cost.batch(ids), one)
    assert len(set(one.tolist())) > 30                  # the rows are different networks
    with pytest.raises(Exception, match="batch wants"):
        cost.batch(ids[:, :5])


def test_a_verified_pick_with_infinite_fitness_resumes_from_its_null_row(tmp_path):
    """verify.json holds a diverged candidate's infinite fitness as null (strict JSON); the resumed check
    reads it back as infinity (float(None) raised a TypeError)."""
    from jaxnas import spec as S
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.methods.metapruning.constraint import Budget
    from jaxnas.methods.metapruning.pipeline import Setup, pick_within_latency

    space = get_space("mobilenet_v2", resolution=28, num_classes=10, in_channels=1, small_input=True,
                      channel_multiple=8)
    predicted = lambda g: S.macs(space.to_spec(g)) / 1e7  # noqa: E731  ms
    u22 = space.uniform(22)
    setup = Setup(MetaPruningArgs(verify_latency=1), space, Budget("latency_ms", predicted(u22), None), predicted,
                  (predicted(space.uniform(0)), predicted(space.uniform(30))), 0, 1)
    first = SimpleNamespace(top=[(u22, float("inf"))])
    measure = lambda spec: S.macs(spec) / 1e7  # noqa: E731  as predicted: within the target
    got = pick_within_latency(setup, first, None, measure, tmp_path, lambda m: None)
    assert json.loads((tmp_path / "verify.json").read_text())["rows"][0]["fitness"] is None
    resumed = pick_within_latency(setup, first, None, measure, tmp_path, lambda m: None)
    assert got[:2] == resumed[:2] == (u22, float("inf"))
