"""TF-NAS supernet and search (jaxnas.methods.tfnas): exact ops against the concrete network, one compiled
weight step for every sampled path, exact resume of an interrupted search, the pipeline's input checks.

One tiny space (one block per stage, width 0.1, 8 px) serves every test; its steps compile once per process
(`get_steps` caches them), which is most of this module's time.
"""
from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas.data import DataConfig
from jaxnas.data.pipeline import Dataset
from jaxnas.latency.spaces import NUM_OPS, TfnasArch, TfnasLut, get_tfnas_space
from jaxnas.methods.tfnas import elastic as E
from jaxnas.methods.tfnas.search import SearchConfig, get_steps, search
from jaxnas.methods.tfnas.supernet import Supernet, materialize

SPACE = get_tfnas_space("tfnas-small", resolution=8, in_channels=1, width=0.1, last_channels=16, num_classes=3,
                        max_depths=(2, 1, 1, 1, 1, 1))


def linear_lut(space, per_channel=0.01, base=1.0):
    raw = {"base": base}
    for key, (lo, hi) in space.key_mid_ranges().items():
        raw[key] = {m: per_channel * m + 0.05 for m in sorted({lo, hi, *range(8, hi + 1, 8)})}
    return TfnasLut.from_raw(raw)


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (240, 8, 8, 1)).astype(np.uint8)
    y = rng.integers(0, 3, 240)
    return Dataset.from_arrays(x, y, config=DataConfig(image_size=None, holdout=0.25, test_fraction=0.2))


CFG = SearchConfig(epochs=3, warmup_epochs=1, batch_size=16, target=3.0, log_every=100, checkpoint_every=100,
                   progress=False)


def _random_masks(net, rng):
    masks = np.zeros((len(net.blocks), NUM_OPS, E.initial_masks(SPACE).shape[-1]), np.float32)
    for b in net.blocks:  # random widths in [max // 2, max], random channels
        for k in range(NUM_OPS):
            keep = rng.choice(b.max_mid(k), int(rng.integers(b.min_mid(k), b.max_mid(k) + 1)), replace=False)
            masks[b.index, k, keep] = 1.0
    return masks


def _concrete(net, params, masks, ops):
    """The parsed network of `ops` at depth 1 everywhere (stage 1 drops its second block), with the supernet's
    weights of the chosen ops sliced to their channels."""
    arch = TfnasArch([ops[:1], [ops[2]], [ops[3]], [ops[4]], [ops[5]], [ops[6]]],
                     [[int(masks[b.index, ops[b.index]].sum())] for b in (net.blocks[0], *net.blocks[2:])])
    return SPACE.build_spec(arch), materialize(SPACE, params, masks, arch)


DEPTH1 = [np.eye(2)[0], *[np.ones(1)] * 5]


@pytest.mark.slow
def test_mixed_ops_equal_the_concrete_network():
    """The arch step's forward with one-hot op weights (each group's body vmapped over its 4 members) is the
    concrete network of those ops (train mode: batch statistics)."""
    from jaxnas.models import build_model
    net = Supernet(SPACE)
    params = net.init(3)
    rng = np.random.default_rng(1)
    masks = _random_masks(net, rng)
    x = jnp.asarray(rng.normal(size=(6, 8, 8, 1)), jnp.float32)
    mixed = jax.jit(net.mixed_logits)
    for ops in ([0, 7, 2, 5, 4, 1, 6], [3, 1, 6, 0, 7, 2, 5]):
        spec, variables = _concrete(net, params, masks, ops)
        want, _ = build_model(spec).apply(variables, x, train=True, mutable=["batch_stats"])
        hot = jnp.asarray(np.eye(NUM_OPS)[ops], jnp.float32)
        got = mixed(params, jnp.asarray(masks), x, hot, [jnp.asarray(w, jnp.float32) for w in DEPTH1])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_dw_kernel_is_the_full_size_filter_of_the_op():
    """The L1 ranking reads each op's full-size depthwise kernel: its channels kept by the mask are the parsed
    network's depthwise kernel (k3 ops: the centre of the ringed 5x5)."""
    net = Supernet(SPACE)
    params = net.init(0)
    masks = _random_masks(net, np.random.default_rng(2))
    for ops in ([0, 7, 2, 5, 4, 1, 6], [3, 1, 6, 0, 7, 2, 5]):
        spec, variables = _concrete(net, params, masks, ops)
        for i, b in enumerate((net.blocks[0], *net.blocks[2:]), start=2):
            w = net.dw_kernel(params, b.index, ops[b.index])
            k = 3 if ops[b.index] in (0, 1, 4, 5) else 5
            assert w.shape[:2] == (k, k) and w.shape[-1] >= masks[b.index, ops[b.index]].sum()
            idx = np.flatnonzero(masks[b.index, ops[b.index], :w.shape[-1]])
            np.testing.assert_array_equal(w[..., idx], variables["params"][f"block{i}"]["conv1"]["kernel"])


def test_one_compiled_weight_step_serves_every_path(dataset):
    """Bi-sampling steps over many sampled paths, widths and learning rates: no piece recompiles, and a
    step trains exactly the two sampled ops of each block (the others' weights stay put)."""
    steps = get_steps(SPACE, "auto", CFG)
    net = steps.net
    params = net.init(0)
    masks = jnp.asarray(E.initial_masks(SPACE))
    arch = {"log_alphas": jax.nn.log_softmax(jnp.zeros((len(net.blocks), NUM_OPS))),
            "betas": tuple(jnp.zeros(len(s)) for s in net.stages)}
    buf = jax.tree.map(jnp.zeros_like, params)
    batch = next(iter(dataset.batches("train", 16, seed=0)))
    x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    rng = jax.random.PRNGKey(0)
    # the path is exactly the concrete network of its ops: every op (3x3 kernels in a ringed 5x5, SE gated,
    # random masked widths) computes what the parsed network computes (train mode: batch statistics)
    from jaxnas.models import build_model
    from jaxnas.train import cross_entropy
    rand_masks = _random_masks(net, np.random.default_rng(1))
    betas = tuple(jnp.asarray(np.log(w + 1e-30), jnp.float32) for w in DEPTH1)  # softmax: depth 1
    for ops in ([0, 7, 2, 5, 4, 1, 6], [3, 1, 6, 0, 7, 2, 5]):
        spec, variables = _concrete(net, params, rand_masks, ops)
        logits, _ = build_model(spec).apply(variables, x, train=True, mutable=["batch_stats"])
        loss, _, _ = steps.grad_pass(params, jnp.asarray(rand_masks), betas, x, y, jnp.asarray(ops, jnp.int32),
                                     jax.tree.map(jnp.zeros_like, params))
        assert float(loss) == pytest.approx(float(cross_entropy(logits, y)), rel=1e-5)
    seen = set()
    for step in range(6):
        a, b = (np.asarray(v) for v in steps.sample(arch["log_alphas"], rng, step))
        seen.add(tuple(a))
        before = jax.device_get(params)
        params, buf, m = steps.weight_step(params, buf, masks, arch, x, y, jnp.float32(0.1 / (step + 1)), rng, step,
                                           bisample=True)
        after = jax.device_get(params)
        for blk in net.blocks:
            for op in range(NUM_OPS):
                g, i = op % 2, op // 2
                moved = not np.allclose(before[f"b{blk.index}"][("e3", "e6")[g]]["expand"][i],
                                        after[f"b{blk.index}"][("e3", "e6")[g]]["expand"][i])
                if step == 0:  # momentum is zero before the first step: only the sampled ops move
                    assert moved == (op in (a[blk.index], b[blk.index])), (blk.name, op)
        masks = masks.at[0, 1, 40:].set(0.0)  # another width: still the same programs
    assert len(seen) == 6
    for fn in (steps.sample, steps.grad_pass, steps.weight_update):
        assert fn._cache_size() == 1


def test_arch_step_compiles_once_and_renormalises(dataset):
    steps = get_steps(SPACE, "auto", CFG)
    net = steps.net
    params = net.init(0)
    masks = jnp.asarray(E.initial_masks(SPACE))
    from jaxnas.methods.tfnas.search import init_arch
    arch = init_arch(SPACE)
    adam = steps.adam.init(arch)
    lut = linear_lut(SPACE)
    xs, ys = (jnp.asarray(a) for a in lut.arrays(SPACE))
    hb = next(iter(dataset.batches("holdout", 16, seed=0)))
    for i, tau in enumerate((5.0, 4.8, 1.0)):
        arch, adam, m = steps.arch_step(params, masks, arch, adam, jnp.asarray(hb["image"]), jnp.asarray(hb["label"]),
                                        jnp.float32(tau), jax.random.PRNGKey(i), xs, ys, jnp.float32(lut.base),
                                        jnp.float32(2.0 + i))
        np.testing.assert_allclose(np.exp(np.asarray(arch["log_alphas"])).sum(-1), 1.0, rtol=1e-5)
        masks = masks.at[1, 3, :10].set(0.0)
    assert steps.arch_step._cache_size() == 1
    # the latency term: the soft network's table latency, between the narrowest and the widest network
    assert 1.0 < float(m["lat"]) < 1.0 + sum(0.01 * b.max_mid(7) + 0.05 for b in net.blocks)


@pytest.mark.slow
def test_search_resumes_exactly(tmp_path, dataset):
    """Stopped mid-epoch, resumed (fresh process state: nothing but the work dir), stopped at an epoch end
    (after its elasticity scaling), resumed again: the same weights, arch parameters, masks and parse."""
    lut = linear_lut(SPACE)
    full = search(SPACE, lut, dataset, CFG, tmp_path / "a", log=lambda m: None)
    assert full.steps == 3 * 9 and len(full.epochs) == 2  # elasticity after epochs 1 and 2
    search(SPACE, lut, dataset, dataclasses.replace(CFG, max_steps=13), tmp_path / "b", log=lambda m: None)
    search(SPACE, lut, dataset, dataclasses.replace(CFG, max_steps=18), tmp_path / "b", log=lambda m: None)
    resumed = search(SPACE, lut, dataset, CFG, tmp_path / "b", log=lambda m: None)
    assert resumed.steps == full.steps and resumed.arch == full.arch
    np.testing.assert_allclose(resumed.log_alphas, full.log_alphas, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.masks, full.masks)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [e["lat_after"] for e in resumed.epochs] == [e["lat_after"] for e in full.epochs]
    assert not np.allclose(full.log_alphas, np.log(1 / 8))  # the architecture did train
    # the parsed network's table latency is what elasticity scaling left after the last epoch
    assert full.table_ms == pytest.approx(full.epochs[-1]["lat_after"])


# --------------------------------------------------------------------------------------------- pipeline checks

class FakeOracle:
    backend = "onnxruntime"

    def __init__(self, table, batch_size=1):
        self.table = table
        self.batch_size = batch_size

    def fingerprint(self):
        return {"backend": "onnxruntime", "runtime": "onnxruntime 1.0", "device": "test CPU", "threads": 1,
                "batch_size": self.batch_size, "precision": "fp32"}

    def block_table(self, space, *, out=None, context="network"):
        return self.table


def _table(space, fingerprint, drop=None, reference=None):
    from jaxnas.latency import LatencyTable
    t = LatencyTable.new(fingerprint, meta={"source": "test"})
    stats = lambda v: {"count": 1, "mean": v, "std": 0.0, "median": v, "p10": v, "p90": v}  # noqa: E731
    t.put("base", stats(1.0))
    if reference is not None:
        t.put("net:reference", stats(reference))
    for key, (lo, hi) in space.key_mid_ranges().items():
        if key != drop:
            for m in sorted({lo, hi, *range(8, hi + 1, 8)}):
                t.put(f"{key}:mid{m}", stats(0.01 * m))
    return t


def _ctx(tmp_path, dataset, oracle, target, **cfg_search):
    cfg = types.SimpleNamespace(search=types.SimpleNamespace(target_latency_ms=target, target_macs=None),
                                latency=types.SimpleNamespace(table=None, batch_size=oracle.batch_size),
                                data=types.SimpleNamespace(batch_size=16), train=types.SimpleNamespace(seed=0),
                                model=types.SimpleNamespace(depthwise="auto"))
    from jaxnas.methods.base import SearchContext
    return SearchContext(cfg=cfg, workdir=tmp_path, dataset=dataset, spec=None, oracle=oracle, trainer=None,
                         log=lambda m: None)


def test_bad_inputs_fail_before_training(tmp_path, dataset):
    from jaxnas.methods.base import SearchError
    from jaxnas.methods.tfnas.args import TfnasArgs
    from jaxnas.methods.tfnas.run import make_space, reachable_range, run_search
    args = TfnasArgs(space="tfnas-small", width=0.1, last_channels=16, max_depths=(2, 1, 1, 1, 1, 1))
    space = make_space(args, dataset)
    assert space == SPACE
    good = FakeOracle(_table(SPACE, FakeOracle(None).fingerprint()))
    lo, hi = reachable_range(linear_lut(SPACE, base=1.0, per_channel=0.01), SPACE)
    inside = (lo + hi) / 2  # a reachable target: the later refusals are about the table, not the range
    with pytest.raises(SearchError, match=r"target_latency_ms 100 is outside what the table reaches for tfnas-small: \[\d+\.\d+, \d+\.\d+\] ms"):
        run_search(_ctx(tmp_path, dataset, good, 100.0), args)
    with pytest.raises(SearchError, match="outside"):
        run_search(_ctx(tmp_path, dataset, good, 0.5), args)
    missing = SPACE.blocks()[3].key(5)
    holey = FakeOracle(_table(SPACE, FakeOracle(None).fingerprint(), drop=missing))
    with pytest.raises(Exception, match=f"no entry for '{missing}'"):
        run_search(_ctx(tmp_path, dataset, holey, inside), args)
    other = dict(FakeOracle(None).fingerprint(), device="another CPU")
    with pytest.raises(SearchError, match="measured on another setup: device 'another CPU'"):
        run_search(_ctx(tmp_path, dataset, FakeOracle(_table(SPACE, other)), inside), args)
    batch8 = dict(FakeOracle(None).fingerprint(), batch_size=8)
    with pytest.raises(SearchError, match="per batch of 8 .* latency.batch_size is 1"):
        run_search(_ctx(tmp_path, dataset, FakeOracle(_table(SPACE, batch8)), inside), args)
    assert not (tmp_path / "search").exists()  # nothing trained
    assert 0.5 < lo < inside < hi < 100.0


@pytest.mark.slow
def test_run_search_fits_the_parsed_net_to_the_target(tmp_path, dataset):
    """The method end to end without retraining: parse, final fit to the target on the table (within 1 % here:
    1-channel steps of 0.01 ms), result.json keeps the search's own parse; final_fit=False is the original's."""
    import json

    from jaxnas.methods.tfnas.args import TfnasArgs
    from jaxnas.methods.tfnas.run import reachable_range, run_search
    oracle = FakeOracle(_table(SPACE, FakeOracle(None).fingerprint()))
    lut = TfnasLut.from_table(oracle.table)
    lo, hi = reachable_range(lut, SPACE)
    target = lo + 0.6 * (hi - lo)
    common = dict(space="tfnas-small", width=0.1, last_channels=16, max_depths=(2, 1, 1, 1, 1, 1), epochs=2,
                  warmup_epochs=1, batch_size=16, retrain=False, log_every=100, checkpoint_every=100)
    fitted = run_search(_ctx(tmp_path / "fit", dataset, oracle, target), TfnasArgs(**common))
    m = fitted.metrics
    assert abs(m["table_error_pct"]) <= 1.0 and m["target_miss"] is None
    assert m["table_latency_ms"] == pytest.approx(lut.arch_latency(SPACE, TfnasArch.from_dict(m["choices"])))
    assert m["final_fit"]["table_after_ms"] == pytest.approx(m["table_latency_ms"])
    saved = json.loads((tmp_path / "fit" / "search" / "result.json").read_text())
    assert saved["arch"] == m["choices"] and saved["final_fit"]["parsed"] == saved["parsed_arch"]
    plain = run_search(_ctx(tmp_path / "plain", dataset, oracle, target), TfnasArgs(**common, final_fit=False))
    assert plain.metrics["final_fit"] is None
    assert plain.metrics["choices"] == saved["parsed_arch"]  # the same search, parsed as the original
    assert plain.metrics["table_latency_ms"] == pytest.approx(saved["parsed_table_latency_ms"])

    class Slower(FakeOracle):  # the table's reference network times 10 % over its entry now
        def measure(self, spec, variables=None):
            return types.SimpleNamespace(stats=types.SimpleNamespace(median=2.2), trusted=True)

    # the same (finished, resumed) search; the final fit on the table x 1.1
    rebased = run_search(_ctx(tmp_path / "fit", dataset, Slower(_table(SPACE, oracle.fingerprint(), reference=2.0)),
                              target), TfnasArgs(**common, rebase_table=True, rebase_rounds=3,
                                                               rebase_window_s=0))
    r = rebased.metrics
    assert r["rebase"]["applied"] and r["rebase"]["factor"] == pytest.approx(1.1)
    assert abs(r["table_error_pct"]) <= 1.0 and r["target_miss"] is None
    assert r["table_latency_ms_as_built"] == pytest.approx(lut.arch_latency(SPACE, TfnasArch.from_dict(r["choices"])))
    assert r["table_latency_ms"] == pytest.approx(1.1 * r["table_latency_ms_as_built"])
    assert r["table_latency_ms_as_built"] < 0.95 * m["table_latency_ms"]  # a narrower net than without re-basing
    assert json.loads((tmp_path / "fit" / "search" / "rebase.json").read_text())["factor"] == pytest.approx(1.1)


@pytest.mark.slow
def test_switch_gradients_equal_a_fixed_path():
    """The single path's own VJP (a second switch that recomputes the chosen op) gives the gradients of the
    same path written without a switch."""
    net = Supernet(SPACE)
    params = net.init(0)
    masks = jnp.asarray(_random_masks(net, np.random.default_rng(2)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
    y = jnp.arange(8) % 3
    ops = [0, 7, 2, 5, 4, 1, 6]
    depth = [jnp.asarray(w, jnp.float32) for w in DEPTH1]
    from jaxnas.train import cross_entropy

    def fixed(p):
        blk = lambda b, h: net._member(b, ops[b.index] % 2, p[f"b{b.index}"], ops[b.index] // 2,  # noqa: E731
                                       masks[b.index], ops[b.index], h)
        return cross_entropy(net._head(p, net._stages(net._stems(p, x), depth, blk)), y)

    g_switch = jax.jit(jax.grad(lambda p: cross_entropy(net.path_logits(p, masks, x, jnp.asarray(ops), depth), y)))(params)
    g_fixed = jax.jit(jax.grad(fixed))(params)
    for a, b in zip(jax.tree.leaves(g_switch), jax.tree.leaves(g_fixed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(g_switch)) > 0
