"""DMCP (jaxnas.methods.dmcp): gates, expected cost, loss, sampling, BN recalibration, pipeline smoke."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import spec as S
from jaxnas import zoo
from jaxnas.config import ConfigError, config_from_dict
from jaxnas.methods.dmcp import (CostModel, CostTarget, DMCPArgs, DMCPSpace, MacsModel, SearchError, direct_samples,
                                 log_l1, materialize_k, recalibrate_bn)
from jaxnas.methods.dmcp.gates import GroupLayout, layout
from jaxnas.methods.dmcp.run import choose_architecture, make_target
from jaxnas.models import build_model, init_variables
from jaxnas.spec import ArchSpec, Block, Conv, Head


def tiny_spec(classes: int = 3, hw: int = 6) -> ArchSpec:
    """stem 3x3 (group a, 10 ch) -> depthwise 3x3 (follows a) -> 1x1 (group b, 20 ch) -> head."""
    blocks = (Block("conv", (Conv(10, (3, 3), act="relu6", width="a"),), name="stem"),
              Block("mbconv", (Conv(10, (3, 3), depthwise=True, act="relu6", width="a"),
                               Conv(20, (1, 1), act="relu6", width="b")), name="b1"))
    return ArchSpec("tiny", blocks, Head(classes), (hw, hw), 3)


def mbv2_small(width: float = 1.0) -> ArchSpec:
    return zoo.mobilenet_v2(width=width, small_input=True, resolution=32, num_classes=10)


# ------------------------------------------------------------------------------------------- gates

def test_channel_groups_follow_the_original():
    space = DMCPSpace(zoo.mobilenet_v2(width=1.5), min_width=0.1, max_width=1.5, width_offset=0.1)
    stem, last = space.layouts["stem"], space.layouts["last"]
    assert (stem.channels, stem.offset, stem.min_ch, stem.n) == (48, 3, 6, 14)
    assert (last.channels, last.offset, last.min_ch, last.n) == (1920, 128, 128, 14)
    assert len(space.prunable) == 25  # every width group, including the last conv (classifier input)
    r50 = DMCPSpace(zoo.resnet50())
    assert r50.layouts["stem"].n == 9 and "s1.out" in r50.prunable and "b2.mid2" in r50.prunable


def test_aligned_channel_groups():
    """channel_multiple=8: every candidate width is a multiple of 8 (runtimes block channels by 8)."""
    assert layout("g", 96, 0.1, 1.0, 0.1, 8) == GroupLayout("g", 96, 24, 8, 9)
    assert layout("g", 16, 0.1, 1.0, 0.1, 8) == GroupLayout("g", 16, 8, 8, 1)
    assert layout("g", 1280, 0.1, 1.0, 0.1, 8) == GroupLayout("g", 1280, 128, 128, 9)
    assert layout("g", 20, 0.1, 1.0, 0.1, 8) == layout("g", 20, 0.1, 1.0, 0.1)  # unaligned C: the original
    space = DMCPSpace(zoo.mobilenet_v2(width=1.0, small_input=True, resolution=32, num_classes=10),
                      min_width=0.1, max_width=1.0, width_offset=0.1, channel_multiple=8)
    for g in space.prunable:
        lay = space.layouts[g]
        assert all(lay.width(k) % 8 == 0 for k in range(lay.n + 1)) and lay.min_ch >= 8, lay


def test_marginals_and_expected_channels_by_hand():
    space = DMCPSpace(tiny_spec(), min_width=0.2, max_width=1.0, width_offset=0.2)
    a = space.layouts["a"]
    assert (a.min_ch, a.offset, a.n) == (2, 2, 4)  # 10 channels: 2 kept + 4 groups of 2
    alphas = {"a": jnp.asarray([2.0, 0.0, -1.0, 1.0]), "b": jnp.zeros(4)}
    sig = 1 / (1 + np.exp(-np.asarray([2.0, 0.0, -1.0, 1.0])))
    marg = np.cumprod(sig)
    np.testing.assert_allclose(space.marginals(alphas)["a"], marg, rtol=1e-6)
    e = space.expected_channels(alphas)
    assert float(e["a"]) == pytest.approx(2 + 2 * marg.sum(), rel=1e-6)
    assert float(e["b"]) == pytest.approx(4 + 4 * (0.5 + 0.25 + 0.125 + 0.0625), rel=1e-6)
    soft = np.asarray(space.soft_masks(alphas)["a"])
    np.testing.assert_allclose(soft, [1, 1, *np.repeat(marg, 2)], rtol=1e-6)
    hard = np.asarray(space.masks_from_k({"a": 2, "b": 0})["a"])
    np.testing.assert_array_equal(hard, [1] * 6 + [0] * 4)


def test_expected_macs_by_hand_and_exact_equals_materialised():
    spec = tiny_spec()
    space = DMCPSpace(spec, min_width=0.2, max_width=1.0, width_offset=0.2)
    macs = MacsModel(spec, space.prunable)
    ea, eb = 4.3, 11.7
    hand = 9 * 3 * ea * 36 + 9 * ea * 36 + ea * eb * 36 + eb * 3  # conv, depthwise, 1x1, classifier
    assert float(macs.expected({"a": ea, "b": eb})) == pytest.approx(hand, rel=1e-6)
    v = init_variables(build_model(spec), 0)
    for ks in ({"a": 0, "b": 0}, {"a": 3, "b": 1}, {"a": 4, "b": 4}):
        sub, _ = materialize_k(space, v, ks)
        assert macs.exact(space.channels_of(ks)) == S.macs(sub)


@pytest.mark.parametrize("name,make,max_width,at0,full,low", [
    ("mbv2x1.5", lambda: zoo.mobilenet_v2(width=1.5), 1.5, 29.18, 672.83, 13.92),
    ("resnet18", zoo.resnet18, 1.0, 121.3, 1814.07, 50.64),
    ("resnet50", zoo.resnet50, 1.0, 226.75, 4089.19, 81.92),
])
def test_reference_expected_flops(name, make, max_width, at0, full, low):
    spec = make()
    space = DMCPSpace(spec, min_width=0.1, max_width=max_width, width_offset=0.1)
    macs = MacsModel(spec, space.prunable)
    assert float(macs.expected(space.expected_channels(space.init_alphas()))) / 1e6 == pytest.approx(at0, abs=0.01)
    assert macs.exact(space.channels_of(space.full_k())) / 1e6 == pytest.approx(full, abs=0.01)
    assert macs.exact(space.channels_of(space.full_k())) == S.macs(spec)
    assert macs.exact(space.channels_of(space.min_k())) / 1e6 == pytest.approx(low, abs=0.01)


# ------------------------------------------------------------------------------------------- loss

def test_log_l1_branches():
    def f(e, t):
        return float(log_l1(jnp.asarray(e), t, far=200.0))
    assert f(50.0, 100.0) == pytest.approx(math.log(50))            # below 0.95 T
    assert f(97.0, 100.0) == 0.0                                     # in [0.95 T, T)
    assert f(110.0, 100.0) == pytest.approx(math.log(15))           # above: distance to 0.95 T
    assert f(100.0, 100.0) == pytest.approx(math.log(5))
    assert f(500.0, 100.0) == pytest.approx(math.log(0.1 * 405))    # far: r = 0.1
    assert f(100.0, 400.0) == pytest.approx(math.log(0.1 * 300))


def test_cost_gradient_pushes_towards_target():
    spec = tiny_spec()
    space = DMCPSpace(spec, min_width=0.2, max_width=1.0, width_offset=0.2)
    macs = MacsModel(spec, space.prunable)
    alphas = space.init_alphas(1.0)
    e0 = float(macs.expected(space.expected_channels(alphas)))

    def grad_for(target):
        cost = CostModel(CostTarget("macs", target), macs)
        return jax.grad(lambda a: cost.loss(space.expected_channels(a)))(alphas)

    above = grad_for(0.5 * e0)  # expected cost above the target: descent must shrink it
    assert all(np.all(np.asarray(g) > 0) for g in above.values())
    below = grad_for(2.0 * e0)
    assert all(np.all(np.asarray(g) < 0) for g in below.values())
    inside = grad_for(e0 / 0.97)
    assert all(np.all(np.asarray(g) == 0) for g in inside.values())
    # a descent step lowers the expected cost when above the target
    stepped = jax.tree.map(lambda a, g: a - 0.5 * g, alphas, above)
    assert float(macs.expected(space.expected_channels(stepped))) < e0


def test_target_is_cast_to_float_and_args_validated():
    from jaxnas.config import ExperimentConfig
    cfg = config_from_dict({"search": {"method": "dmcp", "target_macs": 300000000}}, ExperimentConfig)
    t = make_target(cfg)
    assert t.kind == "macs" and isinstance(t.value, float)
    with pytest.raises(SearchError):
        make_target(config_from_dict({"search": {"method": "dmcp"}}, ExperimentConfig))
    with pytest.raises(ConfigError, match="search.args.min_widht"):
        config_from_dict({"min_widht": 0.2}, DMCPArgs, prefix="search.args")
    with pytest.raises(ConfigError, match="tolerance"):
        config_from_dict({"tolerance": 2.0}, DMCPArgs, prefix="search.args")


# --------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_chosen_architecture_within_tolerance(fraction):
    spec = mbv2_small()
    space = DMCPSpace(spec)
    macs = MacsModel(spec, space.prunable)
    lo, hi = macs.exact(space.channels_of(space.min_k())), macs.exact(space.channels_of(space.full_k()))
    target = lo + fraction * (hi - lo)
    rng = np.random.default_rng(int(fraction * 100))
    alphas = {g: rng.normal(1.0, 1.5, space.layouts[g].n).astype(np.float32) for g in space.prunable}
    cost = CostModel(CostTarget("macs", target), macs)
    for mode in ("expected", "direct"):
        args = DMCPArgs(sample=mode)
        ks, info = choose_architecture(space, cost, alphas, args, seed=0)
        got = macs.exact(space.channels_of(ks))
        assert abs(got - target) / target <= 0.03, (mode, got, target)
        assert info["chosen"]["macs"] == got and info["chosen"]["within_tolerance"]


def test_direct_samples_within_one_percent():
    spec = mbv2_small()
    space = DMCPSpace(spec)
    macs = MacsModel(spec, space.prunable)
    alphas = {g: np.full(space.layouts[g].n, 1.5, np.float32) for g in space.prunable}
    center = float(macs.expected(space.expected_channels(alphas)))
    cost = CostModel(CostTarget("macs", center), macs)
    samples, ok = direct_samples(space, cost, alphas, center, num=5, tolerance=0.01, max_tries=4000, seed=1)
    assert ok and len(samples) == 5
    for ks in samples:
        assert abs(macs.exact(space.channels_of(ks)) - center) / center <= 0.01


def test_bn_recalibration_is_exact_average_over_all_batches():
    spec = tiny_spec()
    model = build_model(spec)
    v = init_variables(model, 0)
    rng = np.random.default_rng(0)
    batches = [{"image": (rng.normal(size=(4, 6, 6, 3)) * s + m).astype(np.float32)}
               for s, m in ((1.0, 0.0), (2.0, 3.0), (0.5, -1.0))]
    out = recalibrate_bn(model, v, batches)
    kernel = np.asarray(v["params"]["block0"]["conv0"]["kernel"])
    means, variances = [], []
    for b in batches:
        y = jax.lax.conv_general_dilated(b["image"], kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = np.asarray(y)
        means.append(y.mean((0, 1, 2)))
        variances.append(y.var((0, 1, 2)))
    stats = out["batch_stats"]["block0"]["conv0"]["bn"]
    np.testing.assert_allclose(stats["mean"], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], np.mean(variances, 0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(stats["mean"], means[-1], atol=1e-3)  # not "keep the last batch"
    # every BN layer was recalibrated (deeper layers too), params untouched
    assert out["params"] is v["params"]
    deep = out["batch_stats"]["block1"]["conv1"]["bn"]["var"]
    assert not np.allclose(deep, 1.0)


# ------------------------------------------------------------------------------------------ pipeline

def _tiny_setup(tmp_path, target_macs, args=None, train=None):
    from jaxnas.config import ExperimentConfig
    spec = ArchSpec("tiny", (Block("conv", (Conv(8, (3, 3), act="relu6", width="stem"),), name="stem"),
                             zoo.mbv2_block(8, 16, 8, 1, in_group="stem", mid_group="m", name="b1"),
                             Block("conv", (Conv(16, (1, 1), act="relu6", width="last"),), name="last")),
                    Head(3), (6, 6), 3)
    spec.save(tmp_path / "super.json")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    x = rng.integers(0, 255, (48, 6, 6, 3)).astype(np.uint8)
    x[..., 0] = (y * 100)[:, None, None]
    np.savez(tmp_path / "data.npz", x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    cfg = config_from_dict({
        "data": {"source": "npz", "path": str(tmp_path / "data.npz"), "image_size": None, "holdout": 0,
                 "batch_size": 8, "eval_batch_size": 16, "augment": False},
        "model": {"spec": str(tmp_path / "super.json")},
        "train": {"epochs": 1, "max_steps": 2, "log_every": 1, "progress": False},
        "search": {"method": "dmcp", "target_macs": target_macs,
                   "args": {"epochs": 0.5, "log_every": 1, "calib_batches": 2, **(args or {})}},
    }, ExperimentConfig)
    return spec, cfg


def _prepare(cfg, table=None):
    """DMCP's setup of a config, as the runner prepares it (data, sized supernet, validated args)."""
    from jaxnas.methods.dmcp.run import prepare
    from jaxnas.pipeline import prepare as prepare_run

    p = prepare_run(cfg, search=True)
    return prepare(cfg, p.args, p.dataset, p.spec, table)


def run(cfg, workdir):
    from jaxnas.pipeline import run as run_pipeline

    return run_pipeline(cfg, workdir, search=True, deploy=False, log=None)


def test_unreachable_target_fails_before_training(tmp_path):
    spec, cfg = _tiny_setup(tmp_path, 10.0)
    with pytest.raises(SearchError, match=r"outside the reachable range \["):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w" / "search").exists()
    _, cfg = _tiny_setup(tmp_path, 2.0 * S.macs(spec))
    with pytest.raises(SearchError, match="reachable"):
        run(cfg, tmp_path / "w")
    from jaxnas.config import override_config
    with pytest.raises(SearchError, match="latency table"):
        _prepare(override_config(cfg, ["search.target_macs=null", "search.target_latency_ms=1.0"]))


def test_two_step_search_sample_retrain_smoke(tmp_path):
    from jaxnas.train import load_variables, read_metrics
    target = 21000.0  # the supernet has 26832 MACs, its smallest sub-network 16113
    spec, cfg = _tiny_setup(tmp_path, target)
    work = tmp_path / "w"
    summary = run(cfg, work)
    assert summary["reachable"] == {"min": 16113.0, "max": float(S.macs(spec))}
    arch = ArchSpec.load(work / "arch.json")
    hash(arch)  # specs are used as cache keys (export); the DMCP meta must stay hashable
    assert arch.metadata["dmcp_supernet"] == "tiny"
    assert S.macs(arch) == summary["achieved"]["macs"] == summary["macs"]
    assert abs(summary["achieved"]["macs"] - target) / target <= 0.03
    assert summary["target"] == {"macs": target} and summary["search_steps"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["params"] == S.params(arch)
    rows = read_metrics(work / "search")
    assert [r["step"] for r in rows] == [1, 2] and "expected_macs" in rows[1]  # step 2 trained alpha
    v = load_variables(work / "retrain")
    out = build_model(arch).apply(v, np.zeros((2, 6, 6, 3), np.float32))
    assert out.shape == (2, 3) and np.all(np.isfinite(out))
    # The runner keeps the chosen network's weights in the work dir itself: eval/export/measure read them.
    top = load_variables(work)
    np.testing.assert_array_equal(jax.tree.leaves(top)[0], jax.tree.leaves(v)[0])


def test_dmcp_configs_load():
    from pathlib import Path

    from jaxnas.config import load_config
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "dmcp").glob("*.yaml"))
    assert {p.name for p in paths} >= {"quick.yaml", "mbv2_300m.yaml", "mbv2_211m.yaml", "r50_2.2g.yaml",
                                       "r50_1.1g.yaml"}
    for path in paths:
        cfg = load_config(path)
        assert cfg.search.method == "dmcp"
        config_from_dict(cfg.search.args, DMCPArgs, prefix="search.args")
        assert make_target(cfg).value > 0
        header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
        assert any(f"jaxnas search configs/dmcp/{path.name}" in ln for ln in header), path.name


def test_uniform_alpha_hits_the_expected_cost():
    from jaxnas.methods.dmcp.cost import uniform_alpha_for
    spec = mbv2_small()
    space = DMCPSpace(spec)
    macs = MacsModel(spec, space.prunable)
    cost = CostModel(CostTarget("macs", 10e6), macs)
    a = uniform_alpha_for(space, cost, 10e6)
    assert float(macs.expected(space.expected_channels(space.init_alphas(a)))) == pytest.approx(10e6, rel=1e-4)


def test_search_resumes_exactly(tmp_path):
    """A search interrupted after one step and resumed equals an uninterrupted one (weights and alphas)."""
    import dataclasses

    from jaxnas.methods.dmcp.search import search
    spec, cfg = _tiny_setup(tmp_path, 21000.0, args={"epochs": 0.75, "warmup_fraction": 0.34})
    setup = _prepare(cfg)  # 3 iterations, alpha trained from iteration 1
    model = build_model(setup.supernet)
    v = init_variables(model, 0)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
    try:
        full = search(model, v, setup.space, setup.cost, setup.dataset, setup.search, tmp_path / "a", log=lambda m: None)
        search(model, v, setup.space, setup.cost, setup.dataset, dataclasses.replace(setup.search, max_steps=2),
               tmp_path / "b", log=lambda m: None)
        resumed = search(model, v, setup.space, setup.cost, setup.dataset, setup.search, tmp_path / "b",
                         log=lambda m: None)
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    assert full.steps == resumed.steps == 3
    for g in setup.space.prunable:
        np.testing.assert_allclose(full.alphas[g], resumed.alphas[g], rtol=1e-6, atol=1e-7)
        assert not np.allclose(full.alphas[g], 0.0)  # two architecture steps moved them
    for a, b in zip(jax.tree.leaves(full.variables), jax.tree.leaves(resumed.variables)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
