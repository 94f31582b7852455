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


def additive_ms(spec) -> float:
    """A runtime whose latency is a per-network cost plus a block-dependent cost per part."""
    from jaxnas.latency.spaces import decompose_spec

    return CALL_MS + sum(0.01 * (1 + p.kernel % 5) + p.macs() / 1e6 for p in decompose_spec(spec))


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
    # calls 1-3: the reference alone; then (reference, probe) pairs; the 2nd pair runs on a busy core
    calls = install_fake_runtime(monkeypatch, lambda spec, n: additive_ms(spec) * (2.0 if n in (6, 7) else 1.0))
    table = build_table(space, FakeBackend(), tmp_path / "t.json", references=None, progress=False, rounds=3,
                        context="network")
    key = next(k for k in probes(space, 1.0) if ":depth1" in k)
    arch = probes(space, 1.0)[key][3]
    true = additive_ms(space.build(arch)) - additive_ms(space.build(reference_arch(space, 1.0)))
    assert table.get(key)["meta"]["delta_ms"] == pytest.approx(true, rel=1e-9)
    assert len(calls) == 3 + 2 * 3
