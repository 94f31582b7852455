"""PruningNet: generated-and-cropped == plain spec net, per-width BN selection, one compile for all encodings,
training schedule/decay/resume, fitness evaluation (single == vectorised == plain-net path)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import models
from jaxnas.data import Dataset, DataConfig
from jaxnas.methods.metapruning.fitness import FitnessEvaluator, calibration_images, padded_split
from jaxnas.methods.metapruning.pruningnet import (PruningNet, WideDense, build_pruningnet, init_pruningnet, materialize,
                                                   torch_linear_init)
from jaxnas.methods.metapruning.space import get_space, scaled
from jaxnas.methods.metapruning.training import (PruningNetTraining, decay_mask, epoch_schedule, make_tx,
                                                 sample_encoding, train_pruningnet)
from jaxnas.train import TrainState, evaluate, make_train_step, recalibrate_bn

SPACES = {
    "mobilenet_v2": dict(resolution=16, small_input=True, width_mult=0.25),
    "mobilenet_v1": dict(resolution=16, small_input=True, width_mult=0.25),
    "resnet50": dict(resolution=32, width_mult=0.05),
}


def _space(family, full=False, **kw):
    """The family's space at a small width; unless `full`, only its first blocks (compiles stay cheap on a
    shared 2-core machine): MobileNetV2 stem + blocks 1-4 (a stride-2 and a residual block), MobileNetV1
    stem + 3 layers, ResNet-50 stem + 5 bottlenecks (two projection shortcuts, one with stride 2)."""
    space = get_space(family, num_classes=5, in_channels=3, **{**SPACES[family], **kw})
    if full:
        return space
    keep = {"mobilenet_v2": 5, "mobilenet_v1": 4, "resnet50": 6}[family]
    blocks = space.blocks[:keep]
    return dataclasses.replace(space, blocks=blocks, head_in=blocks[-1].convs[-1].max_out)


def _calibrated(model, variables, x, ids):
    """Variables whose selected BN rows hold the statistics of `x` (so eval mode is well scaled)."""
    exact = model.clone(bn_momentum=0.0)
    stats = jax.jit(lambda v, x, ids: exact.apply(v, x, train=True, choices={"ids": ids}, mutable=["batch_stats"])[1])
    return {"params": variables["params"], "batch_stats": stats(variables, x, jnp.asarray(ids))["batch_stats"]}


def _train_apply(model, v, x, **kw):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], **kw)[0])(v, x)


def _check_cropped_equals_plain(space, trials=1):
    model = build_pruningnet(space)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), init_pruningnet(model, 0))
    rng = np.random.default_rng(1)
    # float64: both networks do the same arithmetic and agree to rounding (~1e-13).  (In float32 the BN
    # layers of a random network amplify op-order rounding differences with depth: ~1e-5 at the logits.)
    with jax.enable_x64():
        x = jnp.asarray(rng.normal(size=(8, space.resolution, space.resolution, 3)), jnp.float64)
        apply = jax.jit(lambda v, x, ids: model.apply(v, x, train=False, choices={"ids": ids}))
        for _ in range(trials):
            ids = rng.integers(0, 31, space.num_genes)
            v = _calibrated(model, variables, x, ids)
            spec, plain_vars = materialize(model, v, ids)
            assert spec == space.to_spec(ids)          # cropped to the decoded widths
            plain = models.build_model(spec)
            y = apply(v, x, jnp.asarray(ids))
            y_plain = jax.jit(lambda v, x: plain.apply(v, x, train=False))(plain_vars, x)
            assert y.dtype == y_plain.dtype == jnp.float64
            assert float(jnp.max(jnp.abs(y - y_plain))) <= 1e-10
            y_train = _train_apply(model, v, x, choices={"ids": jnp.asarray(ids)})
            y_train_plain = _train_apply(plain, plain_vars, x)
            assert float(jnp.max(jnp.abs(y_train - y_train_plain))) <= 1e-10


@pytest.mark.parametrize("family", sorted(SPACES))
def test_generated_and_cropped_network_equals_the_plain_spec_network(family):
    _check_cropped_equals_plain(_space(family))


def test_cropping_with_aligned_channels_equals_the_plain_spec_network():
    space = _space("mobilenet_v2", width_mult=0.5, channel_multiple=8)
    assert all(c.max_out % 8 == 0 for _, _, c in space.convs())
    _check_cropped_equals_plain(space)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SPACES))
def test_generated_and_cropped_full_depth_network_equals_the_plain_spec_network(family):
    _check_cropped_equals_plain(_space(family, full=True), trials=2)


def test_gradients_equal_the_cropped_networks():
    space = _space("mobilenet_v2")
    model = build_pruningnet(space)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), init_pruningnet(model, 0))
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 31, space.num_genes)
    with jax.enable_x64():
        x = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float64)
        w = jnp.asarray(rng.normal(size=(4, 5)), jnp.float64)
        kernels = jax.jit(lambda p, ids: model.apply({"params": p}, {"ids": ids}, method=PruningNet.generate))(
            variables["params"], jnp.asarray(ids))

        def loss_masked(k):
            out, _ = model.apply(variables, x, k, True, {"ids": jnp.asarray(ids)}, method=PruningNet.forward,
                                 mutable=["batch_stats"])
            return jnp.sum(out * w)

        spec, plain_vars = materialize(model, variables, ids)
        plain = models.build_model(spec)

        def loss_plain(p):
            out, _ = plain.apply({"params": p, "batch_stats": plain_vars["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(out * w)

        g_masked = jax.jit(jax.grad(loss_masked))(kernels)
        g_plain = jax.jit(jax.grad(loss_plain))(plain_vars["params"])
    # Every conv: the cropped part of the generated kernel's gradient is the plain kernel's; the rest is 0.
    for i in range(len(space.blocks)):
        for name, gm in g_masked[i].items():
            gm = np.asarray(gm)
            gp = np.asarray(g_plain[f"block{i}"][name]["kernel"])
            cout = gp.shape[3]
            if gm.shape[2] == 1:  # depthwise
                np.testing.assert_allclose(gm[..., :cout], gp, rtol=1e-8, atol=1e-12)
            else:
                cin = gp.shape[2]
                np.testing.assert_allclose(gm[:, :, :cin, :cout], gp, rtol=1e-8, atol=1e-12)
                assert np.all(gm[:, :, cin:, :] == 0)
            assert np.all(gm[..., cout:] == 0)
    assert np.abs(np.asarray(g_plain["block2"]["conv0"]["kernel"])).max() > 1e-6


def test_per_width_batchnorm_is_selected_by_scale_id():
    space = _space("mobilenet_v2")
    model = build_pruningnet(space)
    variables = init_pruningnet(model, 0)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 16, 16, 3)), jnp.float32)
    ids = np.full(space.num_genes, 20)
    ids[0] = 7                                   # stem width id 7
    _, mut = jax.jit(lambda v, x, ids: model.apply(v, x, train=True, choices={"ids": ids}, mutable=["batch_stats"]))(
        variables, x, jnp.asarray(ids))
    stem = mut["batch_stats"]["blocks_0"]["layers_conv0"]["bn"]
    mean = np.asarray(stem["mean"])
    n = scaled(space.genes[0].base, 7)
    changed_rows = np.flatnonzero(np.any(mean != 0, axis=1))
    assert changed_rows.tolist() == [7]          # only the BN of the sampled width moved
    assert np.all(mean[7, n:] == 0) and np.any(mean[7, :n] != 0)   # ... and only its channels
    # Eval mode normalises with the selected row: changing another row changes nothing, this one does.
    apply = jax.jit(lambda stats: model.apply({"params": variables["params"], "batch_stats": stats}, x,
                                              choices={"ids": jnp.asarray(ids)}))
    y = apply(mut["batch_stats"])
    other = jax.tree.map(lambda a: a, mut["batch_stats"])
    other["blocks_0"]["layers_conv0"]["bn"]["mean"] = jnp.asarray(mean).at[8].set(5.0)
    y_other = apply(other)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_other))
    other["blocks_0"]["layers_conv0"]["bn"]["mean"] = jnp.asarray(mean).at[7, 0].add(1.0)
    y_this = apply(other)
    assert not np.allclose(np.asarray(y), np.asarray(y_this))


def test_one_compiled_train_step_serves_every_encoding():
    space = _space("mobilenet_v2")
    model = build_pruningnet(space)
    tx = optax.sgd(0.01, momentum=0.9)
    state = jax.device_put(TrainState.create(init_pruningnet(model, 0), tx))
    step = make_train_step(model, tx, label_smoothing=0.1)
    rng = np.random.default_rng(4)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 5, 4), jnp.int32)}
    state, _ = step(state, batch, {"ids": jnp.asarray(sample_encoding(space, 0, 0))})
    state, _ = step(state, batch, {"ids": jnp.asarray(sample_encoding(space, 0, 1))})
    size = step._cache_size()
    losses = []
    for s in range(2, 7):
        state, m = step(state, batch, {"ids": jnp.asarray(sample_encoding(space, 0, s))})
        losses.append(float(m["loss"]))
    assert step._cache_size() == size == 1
    assert len(set(losses)) == len(losses)      # different sub-networks really ran


def test_sampled_encodings_are_deterministic_and_cover_the_scale_set():
    space = _space("mobilenet_v2")
    a = np.stack([sample_encoding(space, 3, s) for s in range(400)])
    b = np.stack([sample_encoding(space, 3, s) for s in range(400)])
    np.testing.assert_array_equal(a, b)
    assert a.min() == 0 and a.max() == 30 and a.shape == (400, space.num_genes)
    assert not np.array_equal(a[0], sample_encoding(space, 4, 0))


def test_original_schedule_semantics():
    # LambdaLR(1 - e/E) stepped at the start of each epoch: epoch e uses lr * (1 - (e + 1) / E).
    lin = epoch_schedule("linear_epoch", 0.25, 4, steps_per_epoch=10)
    assert [float(lin(s)) for s in (0, 9, 10, 25, 39)] == pytest.approx([0.1875, 0.1875, 0.125, 0.0625, 0.0])
    # MultiStepLR([E//4, E//2, E//4*3]) stepped at epoch start: epoch e uses gamma ** #{m <= e + 1}.
    ms = epoch_schedule("multistep_epoch", 0.1, 32, steps_per_epoch=1)
    got = [float(ms(e)) for e in (0, 6, 7, 15, 23, 31)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001, 0.0001])


def test_weight_decay_applies_to_generators_and_classifier_not_bn_banks():
    space = _space("mobilenet_v1")        # MBV1 has affine BN banks
    params = init_pruningnet(build_pruningnet(space), 0)["params"]
    mask = decay_mask(params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    decayed = {"/".join(str(getattr(k, "key", k)) for k in p) for p, v in flat if v}
    kept = {"/".join(str(getattr(k, "key", k)) for k in p) for p, v in flat if not v}
    assert any(n.endswith("gen/fc2/kernel") for n in decayed) and any(n.endswith("gen/fc1/bias") for n in decayed)
    assert "classifier/kernel" in decayed and "classifier/bias" in decayed
    assert kept and all("/bn/" in n for n in kept)
    tx, _ = make_tx(PruningNetTraining(weight_decay=1e-4, lr=0.1), 10)
    assert tx.init(params) is not None


def _dataset(n=96, size=16, classes=5, holdout=24):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.int64)
    return Dataset.from_arrays(x, y, x[:32], y[:32], config=DataConfig(image_size=None, holdout=holdout,
                                                                       batch_size=16))


def test_pruningnet_training_resumes_exactly(tmp_path):
    space = _space("mobilenet_v2")
    ds = _dataset()
    model = build_pruningnet(space)
    cfg = PruningNetTraining(epochs=2, batch_size=16, lr=0.1, log_every=2, checkpoint_every=2, eval_every_epochs=0,
                             progress=False)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))  # the three runs compile once
    try:
        full, _ = train_pruningnet(model, init_pruningnet(model, 0), ds, cfg, tmp_path / "full")
        train_pruningnet(model, init_pruningnet(model, 0), ds, dataclasses.replace(cfg, max_steps=3), tmp_path / "cut")
        resumed, _ = train_pruningnet(model, init_pruningnet(model, 0), ds, cfg, tmp_path / "cut")
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("lead", [(), (3,)])
def test_wide_dense_equals_nn_dense_with_its_gradients(lead):
    # The generators' last layer: same parameters, outputs and gradients as nn.Dense (its own VJP only
    # changes the layout the kernel gradient is formed in).
    import flax.linen as nn
    kw = dict(kernel_init=torch_linear_init(5), bias_init=torch_linear_init(5))
    wide, dense = WideDense(37, **kw), nn.Dense(37, **kw)
    x = jax.random.normal(jax.random.PRNGKey(1), (*lead, 5))
    params = wide.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, dense.init(jax.random.PRNGKey(0), x))
    cot = jax.random.normal(jax.random.PRNGKey(2), (*lead, 37))

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * cot), argnums=(0, 1))(params, x)

    np.testing.assert_allclose(wide.apply(params, x), dense.apply(params, x), rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads(wide)), jax.tree.leaves(grads(dense))):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_holdout_batches_are_balanced_not_padded_to_the_eval_batch_size():
    # 600 held-out images at eval_batch_size 500: 2 batches of 300 (the old split padded to 2 x 500, and every
    # candidate evaluated 400 padding images).  7 at 5: 2 batches of 4, one padded slot, masked out.
    x, y, m = padded_split(np.zeros((600, 2, 2, 1), np.float32), np.arange(600) % 10, 500)
    assert x.shape == (2, 300, 2, 2, 1) and y.shape == m.shape == (2, 300) and m.all()
    x, y, m = padded_split(np.ones((7, 2, 2, 1), np.float32), np.arange(7), 5)
    assert x.shape == (2, 4, 2, 2, 1) and m.sum() == 7 and not m[1, 3]
    assert y.reshape(-1)[:7].tolist() == list(range(7)) and x[1, 3].sum() == 0
    x, y, m = padded_split(np.ones((3, 1, 1, 1), np.float32), np.arange(3), 500)
    assert x.shape == (1, 3, 1, 1, 1) and m.all()


def test_pruningnet_evaluation_recalibrates_bn_as_the_fitness_does(tmp_path):
    """The training's eval rows score the validation encoding as the search's fitness would (BN recomputed
    over the same calibration batches), not with the per-width running statistics, which lag (chance)."""
    from jaxnas.methods.metapruning.training import validation_encoding
    space = _space("mobilenet_v2")
    ds = _dataset()
    model = build_pruningnet(space)
    cfg = PruningNetTraining(epochs=1, batch_size=16, lr=1e-4, log_every=2, checkpoint_every=100, eval_every_epochs=1,
                             eval_batch_size=8, calib_batches=3, calib_batch_size=16, recalib_momentum=0.1,
                             progress=False)
    init = init_pruningnet(model, 0)
    cls = init["params"]["classifier"]  # as below: the features, not the bias, decide the predictions
    cls["bias"], cls["kernel"] = np.zeros_like(cls["bias"]), cls["kernel"] * 10
    variables, rows = train_pruningnet(model, init, ds, cfg, tmp_path / "pn")
    acc = [r["accuracy"] for r in rows if r.get("split") == "holdout"]
    assert len(acc) == 1
    val = tuple(int(v) for v in validation_encoding(space, cfg.seed))
    fitness = FitnessEvaluator(model, variables, calibration_images(ds, 3, 16, seed=cfg.seed), ds.arrays("holdout"),
                               eval_batch_size=8, momentum=0.1)
    assert acc[0] == pytest.approx(1 - fitness([val])[0] / 100, abs=1e-6)
    running = evaluate(model, variables, ds, "holdout", 8, {"ids": np.asarray(val, np.int32)})["accuracy"]
    assert running != pytest.approx(acc[0], abs=1e-6)  # what the rows showed before: this check can tell


@pytest.mark.parametrize("augment", [False, True])
def test_calibration_images_are_augmented_as_the_pruningnet_was_trained(augment):
    """BN recalibration uses the training transforms (data.augment), as the original: a PruningNet trained on
    clean images was recalibrated on padded crops and flips and then evaluated on clean images."""
    x = np.random.default_rng(0).integers(0, 255, (64, 16, 16, 3), dtype=np.uint8)
    y = np.arange(64) % 4
    ds = Dataset.from_arrays(x, y, x[:8], y[:8], config=DataConfig(image_size=None, holdout=0, batch_size=16,
                                                                   augment=augment))
    calib = calibration_images(ds, 3, 16, seed=0)
    clean = np.stack([b["image"] for b, _ in zip(ds.batches("train", 16, seed=7919, augment=False), range(3))])
    assert calib.shape == clean.shape
    assert np.array_equal(calib, clean) is (not augment)
    # the PruningNet's own setting (PruningNetTraining.augment) wins over the dataset's
    overridden = calibration_images(ds, 3, 16, seed=0, augment=not augment)
    assert np.array_equal(overridden, clean) is augment


def test_fitness_single_vectorised_and_plain_network_agree():
    space = _space("mobilenet_v2")
    ds = _dataset()
    model = build_pruningnet(space)
    variables = init_pruningnet(model, 0)
    # Untrained, the classifier bias decides every prediction; without it the features do (errors differ).
    cls = variables["params"]["classifier"]
    cls["bias"], cls["kernel"] = np.zeros_like(cls["bias"]), cls["kernel"] * 10
    calib = calibration_images(ds, 3, 16, seed=0)
    holdout = ds.arrays("holdout")
    rng = np.random.default_rng(5)
    cands = [tuple(int(v) for v in rng.integers(0, 31, space.num_genes)) for _ in range(3)]  # K=2: 2 calls
    single = FitnessEvaluator(model, variables, calib, holdout, eval_batch_size=10, momentum=0.1)
    vec = FitnessEvaluator(model, variables, calib, holdout, eval_batch_size=10, momentum=0.1, candidates_per_call=2)
    e1, e2 = single(cands), vec(cands)
    np.testing.assert_allclose(e1, e2)
    assert single.compiled_count() == 1 and vec.compiled_count() == 1
    assert len(set(e1.tolist())) > 1
    # 24 held-out images at 5 a batch: 5 batches, one padding row that must not count in the loss either
    by_loss = FitnessEvaluator(model, variables, calib, holdout, eval_batch_size=5, momentum=0.1, metric="loss")
    losses = by_loss(cands)
    np.testing.assert_allclose(by_loss.errors(cands), e1)
    assert len(set(losses.tolist())) == len(cands)
    # The reference path: crop to a plain network, recalibrate with the core helper, evaluate.
    for g, err, loss in zip(cands[:2], e1, losses):
        spec, pv = materialize(model, variables, g)
        plain = models.build_model(spec)
        pv = recalibrate_bn(plain, pv, [{"image": b} for b in calib], momentum=0.1)
        ref = evaluate(plain, pv, ds, "holdout", batch_size=8)
        assert err == pytest.approx(100 - 100 * ref["accuracy"], abs=1e-4)
        assert loss == pytest.approx(ref["loss"], rel=1e-4)  # plain CE, the mean over the held-out images
    with pytest.raises(ValueError, match="metric"):
        FitnessEvaluator(model, variables, calib, holdout, metric="top5")


MULTIDEVICE = r"""
import os, sys, tempfile
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, TESTS_DIR)
import jax
import numpy as np
from jax.sharding import NamedSharding
from test_metapruning_net import PruningNetTraining, _dataset, _space, build_pruningnet, init_pruningnet, train_pruningnet
from jaxnas.train import make_mesh

assert len(jax.devices()) == 2, jax.devices()
space = _space("mobilenet_v2")
model = build_pruningnet(space)
cfg = PruningNetTraining(epochs=1, batch_size=16, lr=0.1, log_every=2, checkpoint_every=100, eval_every_epochs=1,
                         eval_batch_size=8, progress=False)
tmp = tempfile.mkdtemp()
one, rows1 = train_pruningnet(model, init_pruningnet(model, 0), _dataset(), cfg, f"{tmp}/one", mesh=make_mesh(jax.devices()[:1]))
two, rows2 = train_pruningnet(model, init_pruningnet(model, 0), _dataset(), cfg, f"{tmp}/two", mesh=make_mesh())
jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5), one, two)
l1 = [r["loss"] for r in rows1 if r["split"] == "holdout"]
l2 = [r["loss"] for r in rows2 if r["split"] == "holdout"]
assert l1 and np.allclose(l1, l2, rtol=1e-5), (l1, l2)
print("OK")
"""


def test_pruningnet_trains_data_parallel_like_one_device():
    """2 (virtual CPU) devices, global batch split between them, train like 1 device (BN sees the global
    batch; the encoding is replicated).  A subprocess: XLA_FLAGS must be set before jax is imported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(tests.parent)}
    env.pop("XLA_FLAGS", None)
    script = f"TESTS_DIR = {str(tests)!r}\n" + MULTIDEVICE
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
