import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import models, ops, supernet, zoo
from jaxnas import spec as S


def _rand(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("stride,k,pads", [(1, 3, ((1, 1), (1, 1))), (2, 3, ((1, 1), (1, 1))),
                                           (2, 5, ((2, 1), (0, 3))), (1, 7, ((3, 3), (3, 3)))])
def test_shift_depthwise_equals_grouped_forward_and_gradient(stride, k, pads):
    x = _rand((2, 9, 11, 6))
    w = _rand((k, k, 1, 6), 1)
    def check(fn):
        out = fn(x, w, stride, pads)
        grads = jax.grad(lambda x, w: jnp.sum(fn(x, w, stride, pads) ** 2), (0, 1))(x, w)
        return out, grads

    a, ga = jax.jit(lambda: check(ops.depthwise_conv2d_grouped))()
    b, gb = jax.jit(lambda: check(ops.depthwise_conv2d_shift))()
    np.testing.assert_allclose(a, b, atol=1e-5)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,hw", [(1, (9, 11)), (2, (9, 11)), (2, (8, 8)), (3, (7, 10))])
def test_pointwise_matmul_equals_conv_forward_and_gradient(stride, hw):
    x = _rand((2, *hw, 5))
    w = _rand((1, 1, 5, 7), 1)
    zero = ((0, 0), (0, 0))

    def check(impl):
        fn = lambda x, w: ops.conv2d(x, w, stride, zero, impl)  # noqa: E731
        return fn(x, w), jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), (0, 1))(x, w)

    a, ga = jax.jit(lambda: check("grouped"))()
    b, gb = jax.jit(lambda: check("shift"))()
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-5)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
    jaxpr = str(jax.make_jaxpr(lambda x, w: ops.conv2d(x, w, stride, zero, "shift"))(x, w))
    assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
    deep_x, deep_w = _rand((1, 4, 4, 40)), _rand((1, 1, 40, 7), 1)
    padded = str(jax.make_jaxpr(lambda x, w: ops.conv2d(x, w, 1, ((1, 1), (1, 1)), "shift"))(deep_x, deep_w))
    assert "conv_general_dilated" in padded  # a padded 1x1 conv on 40 channels stays a convolution


@pytest.mark.parametrize("k,stride,cin,pads", [(3, 2, 3, ((1, 1), (1, 1))), (5, 1, 1, ((2, 1), (0, 3))),
                                               (3, 1, 3, ((0, 0), (0, 0)))])
def test_shallow_conv_as_patch_matmul_equals_conv_forward_and_gradient(k, stride, cin, pads):
    x = _rand((2, 9, 11, cin))
    w = _rand((k, k, cin, 6), 1)

    def check(impl):
        fn = lambda x, w: ops.conv2d(x, w, stride, pads, impl)  # noqa: E731
        return fn(x, w), jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), (0, 1))(x, w)

    a, ga = jax.jit(lambda: check("grouped"))()
    b, gb = jax.jit(lambda: check("shift"))()
    np.testing.assert_allclose(a, b, atol=1e-5)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda x, w: ops.conv2d(x, w, stride, pads, "shift"))(x, w))
    deep = _rand((3, 3, 8, 6), 2)  # 72-deep patches: the convolution is kept
    assert "conv_general_dilated" in str(jax.make_jaxpr(
        lambda x: ops.conv2d(x, deep, 1, ((1, 1), (1, 1)), "shift"))(_rand((1, 5, 5, 8))))


def test_adaptive_avg_pool_matches_torch_bins():
    x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
    y = ops.adaptive_avg_pool(x, 3)
    # torch bins for 5 -> 3: [0,2), [1,4), [3,5)
    assert float(y[0, 0, 0, 0]) == pytest.approx(float(x[0, 0:2, 0:2, 0].mean()))
    assert float(y[0, 1, 2, 0]) == pytest.approx(float(x[0, 1:4, 3:5, 0].mean()))
    assert ops.adaptive_avg_pool(jnp.ones((1, 1, 1, 3)), 7).shape == (1, 7, 7, 3)


@pytest.mark.parametrize("name,kw", [("mobilenet_v2", dict(width=0.35, resolution=32, small_input=True)),
                                     ("resnet18", dict(width=0.25, resolution=32, small_input=True)),
                                     ("vgg19_bn", dict(width=0.125, resolution=32, small_input=True)),
                                     ("resnet50", dict(width=0.125, resolution=64)),
                                     ("df1", dict(resolution=64))])
def test_param_count_of_built_model_equals_spec(name, kw):
    spec = zoo.get_spec(name, num_classes=10, **kw)
    v = models.init_variables(models.build_model(spec), 0)
    n = sum(x.size for x in jax.tree_util.tree_leaves(v["params"]))
    assert n == S.params(spec)


def _valid_macs(spec):
    # XLA's cost analysis counts only taps that read real input (not padding): count the same way.
    total = 0
    for b in S.analyze(spec).blocks:
        blk = spec.blocks[b.index]
        convs = list(blk.layers) + ([blk.shortcut] if isinstance(blk.shortcut, S.Conv) else [])
        for conv, lc in zip(convs, [lc for lc in b.layers if not lc.name.endswith(".se")]):
            h, w, cin = lc.in_shape
            ho, wo, cout = lc.out_shape
            (pt, _), (pl, _) = conv.pads
            kh, kw = conv.kernel
            rows = sum(sum(0 <= o * conv.stride - pt + a < h for a in range(kh)) for o in range(ho))
            cols = sum(sum(0 <= o * conv.stride - pl + a < w for a in range(kw)) for o in range(wo))
            total += rows * cols * cout * (1 if conv.depthwise else cin)
    return total + S.analyze(spec).head.macs


def test_macs_agree_with_xla_cost_analysis():
    for spec in (zoo.resnet18(width=0.5, resolution=64, num_classes=10),
                 zoo.mobilenet_v2(width=0.5, resolution=64, num_classes=10)):
        model = models.build_model(spec, depthwise_impl="grouped")
        v = models.init_variables(model, 0)
        cost = jax.jit(lambda v, x: model.apply(v, x)).lower(v, jnp.ones((1, 64, 64, 3))).cost_analysis()
        # XLA counts 2 flops per MAC plus BN/activation/add elementwise work (a few % of the convs).
        ratio = cost["flops"] / 2 / _valid_macs(spec)
        assert 1.0 <= ratio < 1.1, ratio
        assert S.macs(spec) >= _valid_macs(spec)


def test_vgg_full_head_and_train_mode_updates_batch_stats():
    spec = zoo.vgg19_bn(width=0.125, resolution=32, num_classes=10)  # adaptive7 head on a 1x1 map
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    x = _rand((2, 32, 32, 3))
    y, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert y.shape == (2, 10)
    before = v["batch_stats"]["block0"]["conv0"]["bn"]["mean"]
    after = new["batch_stats"]["block0"]["conv0"]["bn"]["mean"]
    assert not np.allclose(before, after)


def _random_masks(spec, rng, prefix=False):
    masks = {}
    for g, c in supernet.width_groups(spec).items():
        keep = int(rng.integers(1, c + 1))
        if prefix:
            masks[g] = supernet.prefix_mask(c, keep)
        else:
            m = np.zeros(c, np.float32)
            m[rng.choice(c, keep, replace=False)] = 1
            masks[g] = m
    return masks


def _tiny_spec(family):
    """Small nets with every structural feature of the zoo families (residual group sharing,
    projections, depthwise, SE, VGG's adaptive-7 head), cheap enough to compile in a test."""
    stem = S.Block("conv", (S.Conv(8, (3, 3), act="relu6", width="stem"),), name="stem")
    if family == "mbv2":
        blocks = (stem,
                  zoo.mbv2_block(8, 8, 8, 1, expand=False, in_group="stem", mid_group="b1.mid", name="b1"),
                  zoo.mbv2_block(8, 24, 12, 2, in_group="stem", mid_group="b2.mid", out_group="b2.out"),
                  S.Block("mbconv", (S.Conv(36, (1, 1), act="swish", width="b3.mid"),
                                     S.Conv(36, (5, 5), depthwise=True, act="swish", width="b3.mid"),
                                     S.Conv(12, (1, 1), act="identity", width="b2.out")),
                          "identity", se=S.SE(6, after=1)),
                  S.Block("conv", (S.Conv(32, (1, 1), act="relu6", width="last"),)))
        head = S.Head(10)
    elif family == "resnet":
        blocks = (stem,
                  zoo.resnet_basic(8, 8, 1, in_group="stem", mid_group="b1.mid", out_group="x"),
                  zoo.resnet_basic(8, 16, 2, in_group="stem", mid_group="b2.mid", out_group="s2"),
                  zoo.resnet_bottleneck(16, 8, 16, 1, in_group="s2", mid_group="b3.mid", out_group="y"),
                  zoo.resnet_bottleneck(16, 8, 32, 2, in_group="s2", mid_group="b4.mid", out_group="s3"))
        head = S.Head(10)
    else:
        blocks = (stem, S.Block("vgg", (S.Conv(16, act="relu", bias=True, width="v1"),)),
                  S.Block("maxpool", pool=S.Pool(2, 2, 0)),
                  S.Block("vgg", (S.Conv(16, act="relu", bias=True, width="v2"),)))
        head = S.Head(10, "adaptive7", (24,), 0.5)
    return S.ArchSpec(family, blocks, head, (12, 12), 3)


@pytest.mark.parametrize("family", ["mbv2", "resnet", "vgg"])
def test_materialized_subnet_equals_masked_supernet(family):
    rng = np.random.default_rng(0)
    spec = _tiny_spec(family)
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    x = _rand((4, 12, 12, 3))
    masks = _random_masks(spec, rng)
    choices = {"masks": {k: jnp.asarray(m) for k, m in masks.items()}}
    sup_train = jax.jit(lambda v, x, c: model.apply(v, x, train=True, choices=c, mutable=["batch_stats"]))
    # One train step with masks so BN running stats differ per channel, then compare in both modes.
    _, new = sup_train(v, x, choices)
    v = {"params": v["params"], "batch_stats": new["batch_stats"]}
    sub_spec, sub_v = supernet.materialize(spec, v, choices)
    assert S.params(sub_spec) < S.params(spec)
    assert sum(t.size for t in jax.tree_util.tree_leaves(sub_v["params"])) == S.params(sub_spec)
    sub = models.build_model(sub_spec)
    a = jax.jit(lambda v, x, c: model.apply(v, x, choices=c))(v, x, choices)
    b = jax.jit(lambda v, x: sub.apply(v, x))(sub_v, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    a, _ = sup_train(v, x, choices)
    b, _ = jax.jit(lambda v, x: sub.apply(v, x, train=True, mutable=["batch_stats"]))(sub_v, x)
    # Train-mode BN divides by per-batch std: float round-off of different summation orders grows.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "df2a", "vgg19_bn"])
def test_zoo_supernets_materialize_with_shared_residual_groups(name):
    spec = zoo.get_spec(name, resolution=32, num_classes=10)
    v = models.init_variables(models.build_model(spec), 0)
    masks = _random_masks(spec, np.random.default_rng(1), prefix=True)
    sub_spec, sub_v = supernet.materialize(spec, v, {"masks": masks})
    assert sum(t.size for t in jax.tree_util.tree_leaves(sub_v["params"])) == S.params(sub_spec)
    for block in sub_spec.blocks:
        for conv in block.layers:
            if conv.width in masks:
                assert conv.out == int(masks[conv.width].sum())


def test_op_choice_depth_choice_and_act_slots_materialize():
    def mb(k, e, name=None):
        return zoo.mbv2_block(8, 8 * e, 8, 1, kernel=k, in_group="in", mid_group=f"{name}.k{k}e{e}", name=name)
    stem = S.Block("conv", (S.Conv(8, (3, 3), act="relu", act_slot="stem_act"),), name="stem")
    choice = S.Block("choice", name="c0", candidates=(mb(3, 3, "c0a"), mb(5, 6, "c0b")))
    choice2 = S.Block("choice", name="c1", candidates=(mb(3, 6, "c1a"), mb(5, 3, "c1b")))
    spec = S.ArchSpec("sn", (stem, choice, choice2), S.Head(5), (8, 8), 3, (S.Stage("s", 1, 3),))
    model = models.build_model(spec)
    v = models.init_variables(model, 1)
    x = _rand((2, 8, 8, 3))
    choices = {"ops": {"c0": jnp.array([0.0, 1.0]), "c1": jnp.array([1.0, 0.0])},
               "depth": {"s": jnp.array([1.0, 0.0])}, "acts": {"stem_act": jnp.array(0.0)}}
    a = model.apply(v, x, choices=choices)
    sub_spec, sub_v = supernet.materialize(spec, v, choices)
    assert len(sub_spec.blocks) == 2 and sub_spec.blocks[1].layers[1].kernel == (5, 5)
    assert sub_spec.blocks[0].layers[0].act == "identity"
    b = models.build_model(sub_spec).apply(sub_v, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # A soft choice cannot be materialised.
    with pytest.raises(S.SpecError, match="hard"):
        supernet.materialize(spec, v, {"ops": {"c0": jnp.array([0.5, 0.5])}})


def test_changing_masks_does_not_recompile():
    spec = zoo.mobilenet_v2(width=0.35, resolution=32, small_input=True, num_classes=10)
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    traces = []

    @jax.jit
    def f(v, x, choices):
        traces.append(1)
        return model.apply(v, x, choices=choices)

    rng = np.random.default_rng(0)
    x = jnp.ones((1, 32, 32, 3))
    for _ in range(3):
        f(v, x, {"masks": {k: jnp.asarray(m) for k, m in _random_masks(spec, rng, prefix=True).items()}})
    assert len(traces) == 1


def test_gates_scale_bn_outputs_and_hard_gates_equal_masks():
    spec = _tiny_spec("mbv2")
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    x = _rand((4, 12, 12, 3))
    rng = np.random.default_rng(2)
    masks = {k: jnp.asarray(m) for k, m in _random_masks(spec, rng).items()}
    for train in (False, True):
        a = model.apply(v, x, train=train, choices={"masks": masks}, mutable=["batch_stats"])[0]
        b = model.apply(v, x, train=train, choices={"gates": masks}, mutable=["batch_stats"])[0]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # A soft gate multiplies the layer's BN output (before its activation): a one-conv net with identity
    # activation and no head outputs it.
    stem = S.ArchSpec("s", (S.Block("conv", (S.Conv(8, (3, 3), act="identity", width="g"),)),), S.Head(0),
                      (6, 6), 3)
    net = models.build_model(stem)
    sv = models.init_variables(net, 1)
    xs = _rand((2, 6, 6, 3), 3)
    g = jnp.linspace(0.1, 1.0, 8)
    plain = net.apply(sv, xs, train=True, mutable=["batch_stats"])[0]
    gated = net.apply(sv, xs, train=True, choices={"gates": {"g": g}}, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(gated, plain * g, rtol=1e-5, atol=1e-6)


def test_materialize_of_traced_weights_gives_the_masked_supernet_loss_and_gradients():
    """The sliced sub-network built inside jit from traced supernet weights: same loss as the masked
    supernet, and its gradients scattered back to the supernet equal the masked supernet's (zero on
    the dropped channels)."""
    spec = _tiny_spec("mbv2")
    model = models.build_model(spec)
    v = models.init_variables(model, 0)
    x = _rand((4, 12, 12, 3))
    masks = _random_masks(spec, np.random.default_rng(3), prefix=True)

    def masked(p):
        out = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                          choices={"masks": {k: jnp.asarray(m) for k, m in masks.items()}}, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out[0]))

    def sliced(p):
        sub_spec, sub_v = supernet.materialize(spec, {"params": p, "batch_stats": v["batch_stats"]},
                                               {"masks": masks})
        out = models.build_model(sub_spec).apply(sub_v, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out[0]))

    la, ga = jax.jit(jax.value_and_grad(masked))(v["params"])
    lb, gb = jax.jit(jax.value_and_grad(sliced))(v["params"])
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    zero_somewhere = False
    for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        zero_somewhere |= bool(np.any(np.asarray(b) == 0))
    assert zero_somewhere
