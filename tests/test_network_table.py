"""Block tables measured inside a reference network (latency.network_table via build_table(context='network'))."""
from __future__ import annotations

import numpy as np
import pytest

from jaxnas.latency import TableError
from jaxnas.latency.builder import build_table
from jaxnas.latency.network_table import PROBE_PREFIX, probes, reference_arch
from jaxnas.latency.predictor import LatencyPredictor
from jaxnas.latency.spaces import load_space

from test_latency_builder import SMALL, TINY, FakeBackend, install_fake_runtime

CALL_MS = 0.05  # per-network cost a block timed alone would pay again
ALONE_MS = 0.02  # boundary work a part timed alone pays and a network does not
# the single-part specs the builder times alone, by name
PARTS = {p.to_spec().name: p for sp in (SMALL, TINY) for p in load_space(sp).unique_parts()}


def part_ms(p) -> float:
    return 0.01 * (1 + p.kernel % 5) + p.macs() / 1e6


def additive_ms(spec) -> float:
    """A runtime whose latency is a per-network cost plus a block-dependent cost per part; a part timed
    alone pays the per-network cost and its own boundary work on top."""
    from jaxnas.latency.spaces import decompose_spec

    if spec.name in PARTS:
        return CALL_MS + ALONE_MS * (1 + PARTS[spec.name].kernel % 3) + part_ms(PARTS[spec.name])
    return CALL_MS + sum(part_ms(p) for p in decompose_spec(spec))


@pytest.fixture
def additive_runtime(monkeypatch):
    return install_fake_runtime(monkeypatch, lambda spec, n: additive_ms(spec))


def test_probes_cover_every_choice_and_depth():
    space = load_space(SMALL)
    pr = probes(space, 1.0)
    ref = reference_arch(space, 1.0)
    assert ref["depths"] == [1, 3, 2]
    kinds = [v[0] for v in pr.values()]
    n_choices = [len(space._choices(st)) for st in space.stages]  # 1, 8, 8
    assert kinds.count("reference") == 1
    assert kinds.count("first") == sum(n - 1 for n in n_choices)
    assert kinds.count("later") == (8 - 1) * 2  # stages 1 and 2 have later blocks
    assert kinds.count("depth") == 2  # stage 1: depths 1 and 2 below 3; stage 2 has no depth choice
    for kind, si, what, arch in pr.values():
        space.build(arch)  # every probe is an architecture of the space
        if kind == "depth":
            assert arch["depths"][si] == what


def test_network_table_predicts_an_additive_runtime_exactly(tmp_path, additive_runtime):
    """With a runtime that is additive over blocks, the derived entries reproduce every architecture,
    widths, SE choices and a fixed-depth stage included."""
    space = load_space(SMALL)
    out = tmp_path / "net.json"
    table = build_table(space, FakeBackend(), out, references=None, progress=False, rounds=2, context="network")
    assert table.meta["context"] == "network"
    pred = LatencyPredictor(table)
    rng = np.random.default_rng(0)
    for i in range(12):
        spec = space.sample(rng)
        assert pred.predict(spec) == pytest.approx(additive_ms(spec), rel=1e-6)
    for w in space.widths:  # R is reproduced by construction
        assert pred.predict(space.build(reference_arch(space, w))) == pytest.approx(
            table.ms(f"{PROBE_PREFIX}w{w:g}:reference"), rel=1e-6)


def test_network_table_resumes_and_refuses_the_other_context(tmp_path, additive_runtime):
    out = tmp_path / "net.json"
    build_table(TINY, FakeBackend(), out, references=None, progress=False, rounds=2, context="network")
    n = len(additive_runtime)
    build_table(TINY, FakeBackend(), out, references=None, progress=False, rounds=2, context="network")
    assert len(additive_runtime) == n  # nothing re-measured
    with pytest.raises(TableError, match="context='alone'"):
        build_table(TINY, FakeBackend(), out, references=None, progress=False)
    with pytest.raises(TableError, match="channel_step"):
        build_table(TINY, FakeBackend(), tmp_path / "x.json", channel_step=8, progress=False, context="network")


def test_probe_delta_is_the_median_of_alternating_rounds(tmp_path, monkeypatch):
    """Δ pairs each probe round with a reference round measured just before it: a slow spell that hits
    one pair moves the rounds' differences less than it moves either model's own timings."""
    space = load_space(TINY)
    # call 1: the reference alone; then (reference, probe) pairs; the 3rd pair runs on a busy core
    calls = install_fake_runtime(monkeypatch, lambda spec, n: additive_ms(spec) * (2.0 if n in (6, 7) else 1.0))
    table = build_table(space, FakeBackend(), tmp_path / "t.json", references=None, progress=False, rounds=3,
                        context="network")
    key = next(k for k in probes(space, 1.0) if ":depth1" in k)
    arch = probes(space, 1.0)[key][3]
    true = additive_ms(space.build(arch)) - additive_ms(space.build(reference_arch(space, 1.0)))
    assert table.get(key)["meta"]["delta_ms"] == pytest.approx(true, rel=1e-9)
    probe_calls = [c for c in calls if c not in PARTS]
    assert len(probe_calls) == 1 + 2 * 3 and calls[:len(probe_calls)] == probe_calls  # probes first, then alone
    assert len(calls) - len(probe_calls) == 3 * len(space.unique_parts())  # every part alone, 3 rounds


def test_noisy_probes_fall_back_to_the_calibrated_alone_times(tmp_path, additive_runtime):
    """Probes whose Δ is known only to ±10 ms (a block drowned in a large network's noise) leave every τ
    at its prior c · alone (c = L_R / Σ alone over R's parts, by hand); precise probes (the additive
    runtime, Δ exact) override the prior: the first test above."""
    from jaxnas.latency.network_table import ALONE_PREFIX, derive_parts
    from jaxnas.latency.spaces import decompose_spec

    space = load_space(TINY)
    table = build_table(space, FakeBackend(), tmp_path / "t.json", references=None, progress=False, rounds=1,
                        context="network")
    ref_key = f"{PROBE_PREFIX}w1:reference"
    ref_parts = decompose_spec(space.build(reference_arch(space, 1.0)))
    L_R = table.ms(ref_key, "median")
    c = L_R / sum(table.ms(ALONE_PREFIX + p.key, "median") for p in ref_parts)
    assert c < 1  # the alone times carry per-call costs the network pays once
    rng = np.random.default_rng(0)
    for key in probes(space, 1.0):
        if key != ref_key:
            meta = table.get(key)["meta"]
            meta["delta_ms"] += float(rng.normal(0, 5.0))  # garbage, and said to be garbage
            meta["delta_ci_ms"] = [meta["delta_ms"] - 10.0, meta["delta_ms"] + 10.0]
    tau = derive_parts(space, table)
    for k, e in tau.items():
        assert e["median"] == pytest.approx(c * table.ms(ALONE_PREFIX + k, "median"), rel=1e-3), k
        assert e["meta"]["derived"] == "network probes, calibrated alone prior"
    # R is still reproduced (its own row is precise)
    assert sum(tau[p.key]["median"] for p in ref_parts) == pytest.approx(L_R, rel=1e-6)


def test_a_table_without_alone_entries_keeps_the_macs_prior(tmp_path, additive_runtime):
    """Network tables built before the alone prior: derived from the probes alone, as then."""
    from jaxnas.latency.network_table import ALONE_PREFIX, derive_parts

    space = load_space(TINY)
    table = build_table(space, FakeBackend(), tmp_path / "t.json", references=None, progress=False, rounds=1,
                        context="network")
    for k in [k for k in table.entries if k.startswith(ALONE_PREFIX)]:
        del table.entries[k]
    tau = derive_parts(space, table)
    assert {e["meta"]["derived"] for e in tau.values()} == {"network probes"}
    for k, e in tau.items():
        table.put(k, e)
    rng = np.random.default_rng(1)
    for _ in range(4):
        spec = space.sample(rng)
        assert LatencyPredictor(table).predict(spec) == pytest.approx(additive_ms(spec), rel=1e-6)


def test_prior_spread_by_hand():
    """ρ² = Σ (r² − SE²) / Σ Σ_k (Δn_k π_k)² over the probes (R's own row moves nothing)."""
    from jaxnas.latency.network_table import PRIOR_REL_MAX, PRIOR_REL_MIN, prior_spread

    a = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])  # R, then one more of part 0, one more of part 1
    rhs = np.array([2.0, 3.5, 2.5])  # Δ = +1.5, +0.5 against a prior of 1 ms each: residuals +0.5, -0.5
    prior = np.array([1.0, 1.0])
    rho = prior_spread(a, rhs, np.array([0.0, 0.3, 0.4]), [0, 0, 0], prior)
    assert rho == pytest.approx(np.sqrt(((0.25 - 0.09) + (0.25 - 0.16)) / 2))
    # probes noisier than their residuals: the alone times decide (the floor); huge residuals: the ceiling
    assert prior_spread(a, rhs, np.array([0.0, 1.0, 1.0]), [0, 0, 0], prior) == PRIOR_REL_MIN
    assert prior_spread(a, np.array([2.0, 9.0, -4.0]), np.zeros(3), [0, 0, 0], prior) == PRIOR_REL_MAX
