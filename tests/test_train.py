"""Tests of jaxnas.train with a tiny in-test model and dataset that follow the model/data contracts."""

from __future__ import annotations

import functools
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas.train import (
    CSV_FIELDS, CheckpointError, CheckpointStore, DistillConfig, Distillation, OptimConfig, ScheduleConfig,
    TrainConfig, TrainState, classification_loss, cross_entropy, distillation_kl, evaluate, fit, load_variables,
    make_eval_step, make_optimizer, make_schedule, make_train_step, read_metrics, weight_decay_mask)

NUM_CLASSES = 4


# ---------------------------------------------------------------------------------------------
# Contract stand-ins.


class TinyNet(nn.Module):
    """Conv-BN-ReLU, optional channel mask from `choices`, global pool, dense."""

    features: int = 8
    use_bn: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False, choices=None):
        init = nn.initializers.normal(0.3)  # cheaper to compile than the default truncated normal
        x = nn.Conv(self.features, (3, 3), use_bias=not self.use_bn, kernel_init=init)(x)
        if self.use_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        if choices is not None:
            x = x * choices["mask"]
        return nn.Dense(NUM_CLASSES, kernel_init=init)(x.mean(axis=(1, 2)))


class TinyDataset:
    """Random data with the `jaxnas.data` Dataset interface; batches are a pure function of (seed, epoch)."""

    num_classes = NUM_CLASSES

    def __init__(self, n_train: int = 40, n_test: int = 13, n_holdout: int = 8, hw: int = 6):
        rng = np.random.default_rng(123)
        self.data = {}
        for split, n in (("train", n_train), ("test", n_test), ("holdout", n_holdout)):
            x = rng.normal(size=(n, hw, hw, 3)).astype(np.float32)
            y = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
            self.data[split] = (x, y)
        self.calls: list[dict] = []

    def num_examples(self, split: str) -> int:
        return len(self.data[split][1])

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        return self.num_examples(split) // batch_size

    def _batch(self, split, order, i, batch_size, seed, epoch, augment):
        x, y = self.data[split]
        idx = order[i * batch_size:(i + 1) * batch_size]
        xb = x[idx]
        if split == "train" and augment is not False:  # deterministic "augmentation"
            xb = xb + 0.1 * np.random.default_rng([seed, epoch, i]).normal(size=xb.shape).astype(np.float32)
        return {"image": xb, "label": y[idx]}

    def batches(self, split, batch_size, *, seed, epoch=0, augment=None, drop_remainder=True):
        self.calls.append({"split": split, "epoch": epoch})
        n = self.num_examples(split)
        order = np.random.default_rng([seed, epoch]).permutation(n) if split == "train" else np.arange(n)
        count = n // batch_size if drop_remainder else -(-n // batch_size)
        for i in range(count):
            yield self._batch(split, order, i, batch_size, seed, epoch, augment)


class TinyDatasetStartStep(TinyDataset):
    """Same batches, but supports `start_step` (skips without producing the skipped batches)."""

    def batches(self, split, batch_size, *, seed, epoch=0, augment=None, drop_remainder=True, start_step=0):
        self.calls.append({"split": split, "epoch": epoch, "start_step": start_step})
        n = self.num_examples(split)
        order = np.random.default_rng([seed, epoch]).permutation(n) if split == "train" else np.arange(n)
        count = n // batch_size if drop_remainder else -(-n // batch_size)
        for i in range(start_step, count):
            yield self._batch(split, order, i, batch_size, seed, epoch, augment)


@functools.lru_cache(maxsize=None)
def init_variables(model: nn.Module, hw: int = 6, seed: int = 0) -> dict:
    """Cached: `fit` must never modify or free the caller's variables, which the tests rely on."""
    return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, hw, hw, 3)), train=False))(jax.random.PRNGKey(seed))


def quick_loop(**kw) -> dict:
    """`fit` keyword arguments: the train section plus the batch sizes and an optional teacher."""
    extra = {k: kw.pop(k) for k in ("batch_size", "eval_batch_size", "distill") if k in kw}
    base = dict(epochs=3, log_every=2, checkpoint_every=4, keep_checkpoints=2, eval_every_epochs=1, progress=False)
    return {"train": TrainConfig(**{**base, **kw}), "batch_size": 8, "eval_batch_size": 4, **extra}


def replace_loop(loop: dict, **kw) -> dict:
    out = dict(loop)
    for k in ("batch_size", "eval_batch_size"):
        if k in kw:
            out[k] = kw.pop(k)
    out["train"] = loop["train"].replace(**kw)
    return out


OPTIM = OptimConfig(learning_rate=0.05, weight_decay=1e-3)
SCHEDULE = ScheduleConfig(warmup_epochs=1, warmup_start=0.1)


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# ---------------------------------------------------------------------------------------------
# Configs, losses, optimizer.


def test_config_sections_defaults_and_validation():
    o, s, t = OptimConfig(), ScheduleConfig(), TrainConfig()
    assert (o.name, o.learning_rate, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.1, 0.9, True, 4e-5)
    assert s.name == "cosine"
    assert (t.epochs, t.seed, t.label_smoothing, t.log_every, t.checkpoint_every, t.keep_checkpoints,
            t.eval_every_epochs, t.progress, t.max_steps) == (10, 0, 0, 50, 500, 2, 1, True, None)
    kd = {"teacher": "runs/t", "weight": 0.5, "temperature": 2.0}
    assert TrainConfig(epochs=2.5, distill=kd).distill == DistillConfig(**kd)
    # The sections are the experiment config's own: the same class, validated the same way.
    from jaxnas.config import ExperimentConfig, ConfigError
    assert type(ExperimentConfig().optim) is OptimConfig and type(ExperimentConfig().train) is TrainConfig
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lr' \(valid keys in 'optim'"):
        OptimConfig(lr=0.1)
    with pytest.raises(ConfigError, match="train.epochs: must be > 0, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="train.distill.weight: is 0.5 but no teacher is set"):
        DistillConfig(weight=0.5)


def test_label_smoothing_loss_matches_hand_computation():
    logits = jnp.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    labels = jnp.array([0, 3])
    a, k = 0.1, 4
    logp = np.asarray(jax.nn.log_softmax(logits))
    targets = np.full((2, k), a / k)
    targets[np.arange(2), np.asarray(labels)] += 1 - a
    expected = -(targets * logp).sum(-1).mean()
    np.testing.assert_allclose(cross_entropy(logits, labels, a), expected, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, labels), -logp[np.arange(2), [0, 3]].mean(), rtol=1e-6)


def test_distillation_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    labels = np.array([0, 1, 4])
    temp, w = 2.0, 0.7

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lt, ls = log_softmax(t / temp), log_softmax(s / temp)
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean()
    ce = -log_softmax(s)[np.arange(3), labels].mean()
    np.testing.assert_allclose(distillation_kl(s, t, temp), kl, rtol=1e-5)
    got = classification_loss(s, labels, teacher_logits=t, distill_weight=w, temperature=temp)
    np.testing.assert_allclose(got, (1 - w) * ce + w * temp**2 * kl, rtol=1e-5)
    assert float(distillation_kl(s, s, temp)) == pytest.approx(0.0, abs=1e-7)


def test_distillation_in_train_step_from_identical_teacher_leaves_only_ce():
    model = TinyNet(use_bn=False)  # also: a model without batch_stats
    variables = init_variables(model)
    assert "batch_stats" not in variables
    tx = optax.sgd(0.0)
    distill = Distillation(teacher=model, teacher_variables=variables, weight=0.25, temperature=3.0)
    step = make_train_step(model, tx, distill=distill)
    batch = next(TinyDataset().batches("train", 8, seed=0))
    state = TrainState.create(variables, tx)
    new_state, metrics = step(state, batch)
    logits = model.apply(variables, batch["image"])
    np.testing.assert_allclose(metrics["loss"], 0.75 * cross_entropy(logits, batch["label"]), rtol=1e-5)
    assert new_state.batch_stats == {} and "batch_stats" not in new_state.variables()


def test_weight_decay_mask_excludes_bn_and_bias():
    variables = init_variables(TinyNet())
    mask = weight_decay_mask(variables["params"])
    assert mask["Conv_0"]["kernel"] and mask["Dense_0"]["kernel"]
    assert not mask["Dense_0"]["bias"]
    assert not mask["BatchNorm_0"]["scale"] and not mask["BatchNorm_0"]["bias"]
    assert all(jax.tree.leaves(weight_decay_mask(variables["params"], decay_bn_and_bias=True)))

    # With zero gradients only the masked params move (SGD: L2 added before momentum).
    for name in ("sgd", "adamw"):
        tx, _ = make_optimizer(OptimConfig(name=name, weight_decay=0.5), ScheduleConfig(name="constant"), 10, 100)
        params = variables["params"]
        updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), jax.jit(tx.init)(params), params)
        assert np.abs(updates["Dense_0"]["kernel"]).sum() > 0, name
        assert np.abs(updates["Dense_0"]["bias"]).sum() == 0, name
        assert np.abs(updates["BatchNorm_0"]["scale"]).sum() == 0, name


def test_schedules():
    lr, spe, total = 0.1, 10, 100
    cos = make_schedule(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start=0.1, end_value=0.01), lr, spe, total)
    np.testing.assert_allclose(cos(0), 0.01, rtol=1e-6)  # warmup_start * lr
    np.testing.assert_allclose(cos(5), 0.055, rtol=1e-6)  # linear warm-up
    np.testing.assert_allclose(cos(10), 0.1, rtol=1e-6)  # peak at the end of warm-up
    np.testing.assert_allclose(cos(55), 0.001 + (0.1 - 0.001) * 0.5, rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(cos(100), 0.001, rtol=1e-5)  # end_value * lr
    no_warmup = make_schedule(ScheduleConfig(name="cosine"), lr, spe, total)
    np.testing.assert_allclose([no_warmup(0), no_warmup(100)], [0.1, 0.0], atol=1e-7)
    const = make_schedule(ScheduleConfig(name="constant", warmup_epochs=2), lr, spe, total)
    np.testing.assert_allclose([const(0), const(10), const(20), const(99)], [0, 0.05, 0.1, 0.1], atol=1e-7)
    lin = make_schedule(ScheduleConfig(name="linear", end_value=0.5), lr, spe, total)
    np.testing.assert_allclose([lin(0), lin(50), lin(100)], [0.1, 0.075, 0.05], rtol=1e-6)
    with pytest.raises(ValueError, match=r"schedule.name: expected one of 'cosine', 'constant', 'linear', got 'step'"):
        ScheduleConfig(name="step")


# ---------------------------------------------------------------------------------------------
# Steps.


def test_choices_are_traced_not_static():
    model = TinyNet()
    variables = init_variables(model)
    tx, schedule_fn = make_optimizer(OPTIM, SCHEDULE, 5, 15)
    step = make_train_step(model, tx, schedule_fn=schedule_fn)
    traces = []
    loss_fn = lambda ctx: (traces.append(1), ctx.base_loss)[1]  # noqa: E731 - counts traces
    counted = make_train_step(model, tx, loss_fn=loss_fn)
    eval_step = make_eval_step(model)
    state = TrainState.create(variables, tx)
    batch = next(TinyDataset().batches("train", 8, seed=0))
    outs = []
    for k in range(4):
        mask = jnp.asarray(np.arange(8) < 8 - k, jnp.float32)
        state, metrics = step(state, batch, {"mask": mask})
        counted(state, batch, {"mask": mask})
        outs.append(eval_step(state, batch, {"mask": mask})["loss_sum"])
        assert set(metrics) >= {"loss", "accuracy", "lr", "grad_norm"}
    assert step._cache_size() == 1 and eval_step._cache_size() == 1
    assert len(traces) == 1
    assert len(set(np.asarray(outs).tolist())) == 4  # the masks did change the outputs


def test_loss_fn_hook_adds_terms_and_metrics():
    model = TinyNet()
    variables = init_variables(model)
    tx = optax.sgd(0.0)

    def loss_fn(ctx):
        penalty = 0.5 * sum(jnp.sum(p**2) for p in jax.tree.leaves(ctx.params))
        return ctx.base_loss + penalty, {"penalty": penalty}

    batch = next(TinyDataset().batches("train", 8, seed=0))
    state = TrainState.create(variables, tx)
    _, base = make_train_step(model, tx)(state, batch)
    _, hooked = make_train_step(model, tx, loss_fn=loss_fn)(state, batch)
    np.testing.assert_allclose(hooked["loss"], base["loss"] + hooked["penalty"], rtol=1e-6)


def test_evaluate_counts_every_example_with_uneven_batches():
    model, ds = TinyNet(), TinyDataset(n_test=13)
    variables = init_variables(model)
    result = evaluate(model, variables, ds, "test", batch_size=4)
    assert result["count"] == 13
    x, y = ds.data["test"]
    logits = model.apply(variables, x)
    np.testing.assert_allclose(result["loss"], optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(result["accuracy"], np.mean(np.argmax(logits, -1) == y))
    assert evaluate(model, variables, ds, "holdout", batch_size=3)["count"] == 8


# ---------------------------------------------------------------------------------------------
# fit: metrics, checkpoints, resume.


def test_fit_writes_metrics_checkpoints_and_final(tmp_path, capsys):
    model, ds = TinyNet(), TinyDataset()
    variables = init_variables(model)
    state, history = fit(model, variables, ds, workdir=tmp_path, optim=OPTIM, schedule=SCHEDULE,
                         **quick_loop(label_smoothing=0.1))
    # 40 train examples / batch 8 = 5 steps per epoch, 3 epochs.
    assert int(state.step) == 15
    train = [r for r in history if r["split"] == "train"]
    evals = [r for r in history if r["split"] == "test"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12, 14, 15]
    assert [r["step"] for r in evals] == [5, 10, 15] and all(r["count"] == 13 for r in evals)
    assert read_metrics(tmp_path) == history
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_FIELDS) and len(lines) == 1 + len(history)
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 and "grad_norm" in r for r in train)
    out = capsys.readouterr().out
    assert "step 14/15" in out and "ETA" in out and "eval[test]" in out

    assert CheckpointStore(tmp_path / "checkpoints").all_steps() == [12, 15]  # keep_checkpoints=2
    loaded = load_variables(tmp_path)
    assert_trees_equal(loaded, state.variables())
    final_eval = evaluate(model, loaded, ds, "test", batch_size=4)
    assert final_eval["accuracy"] == pytest.approx(evals[-1]["accuracy"])
    assert final_eval["loss"] == pytest.approx(evals[-1]["loss"], rel=1e-5)

    assert not any(x.is_deleted() for x in jax.tree.leaves(variables))  # donation never frees the caller's arrays
    # A second fit on a finished workdir is a no-op that returns the same state and history.
    again, history2 = fit(model, variables, ds, workdir=tmp_path, optim=OPTIM, schedule=SCHEDULE,
                          **quick_loop(label_smoothing=0.1))
    assert_trees_equal(again.params, state.params)
    assert history2 == history


class Kill(Exception):
    pass


def test_resume_is_bitwise_identical_to_uninterrupted(tmp_path):
    model = TinyNet()
    variables = init_variables(model)
    kwargs = dict(optim=OPTIM, schedule=SCHEDULE)
    loop = quick_loop(log_every=1)

    full, full_history = fit(model, variables, TinyDataset(), workdir=tmp_path / "full", **loop, **kwargs)

    # 1) Stopped by max_steps in the middle of epoch 2 (checkpoint at the stop), then resumed.
    fit(model, variables, TinyDataset(), workdir=tmp_path / "a", **replace_loop(loop, max_steps=6), **kwargs)
    assert CheckpointStore(tmp_path / "a" / "checkpoints").latest_step() == 6
    ds = TinyDataset()
    resumed, history = fit(model, variables, ds, workdir=tmp_path / "a", **loop, **kwargs)
    assert ds.calls[0] == {"split": "train", "epoch": 1}  # resumed inside epoch 1 (0-based)
    assert_trees_equal(resumed, full)  # params, batch_stats, opt_state, step, rng
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_sec", "elapsed_s")}  # noqa: E731
                          for r in rows if r["split"] == "train"]
    assert strip(history) == strip(full_history)

    # 2) Killed at step 11 by a callback; the latest checkpoint is step 8; the dataset can seek.
    def killer(info):
        if info.step == 11:
            assert CheckpointStore(info.workdir / "checkpoints").latest_step() == 8
            raise Kill()

    with pytest.raises(Kill):
        fit(model, variables, TinyDataset(), workdir=tmp_path / "b", **loop, callbacks=[killer], **kwargs)
    ds = TinyDatasetStartStep()
    resumed, _ = fit(model, variables, ds, workdir=tmp_path / "b", **loop, **kwargs)
    assert ds.calls[0] == {"split": "train", "epoch": 1, "start_step": 3}
    assert_trees_equal(resumed, full)
    assert max(r["step"] for r in read_metrics(tmp_path / "b")) == 15


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    variables = init_variables(TinyNet())
    tx = optax.sgd(0.1, 0.9)
    state = TrainState.create(variables, tx)
    store = CheckpointStore(tmp_path, keep=2)
    store.save(state.replace(step=jnp.asarray(2, jnp.int32)), {"epoch": 0})

    async def crash(self):
        raise Kill("killed during save")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", crash)
    with pytest.raises(Exception):
        store.save(state.replace(step=jnp.asarray(4, jnp.int32), params=jax.tree.map(lambda p: p + 1, state.params)),
                   {"epoch": 0})
    monkeypatch.undo()
    assert any("tmp" in p.name for p in tmp_path.iterdir())  # the half-written step 4

    fresh = CheckpointStore(tmp_path, keep=2)
    assert fresh.latest_step() == 2
    restored, meta = fresh.restore(2, state)
    assert_trees_equal(restored.params, state.params) and meta["step"] == 2


def test_a_failed_write_is_reported_once_even_when_orbax_leaves_a_task_behind(caplog, monkeypatch):
    """Orbax's failed write leaves asyncio tasks whose exception nobody retrieves; asyncio logs each with its
    traceback whenever it is garbage-collected (after the save returned, or at exit).  That record must not
    reach the console beside the one-line error; an unrelated task's failure still must."""
    import asyncio
    import gc
    import logging

    from jaxnas.train import checkpoint

    monkeypatch.delenv("JAXNAS_VERBOSE", raising=False)
    asyncio_logger = logging.getLogger("asyncio")
    before = list(asyncio_logger.filters)

    def abandoned_task(message: str) -> asyncio.Task:
        async def fail():
            raise ValueError(message)
        loop = asyncio.new_event_loop()
        task = loop.create_task(fail())
        loop.run_until_complete(asyncio.sleep(0))  # the task fails; its exception is never retrieved
        loop.close()
        return task

    leftover = []
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with pytest.raises(ValueError):
                with checkpoint._quiet_failures():
                    leftover.append(abandoned_task("RESOURCE_EXHAUSTED: write failed: No space left on device"))
                    raise ValueError("RESOURCE_EXHAUSTED: No space left on device [os_error_code='28']")
            leftover.clear()  # collected after the block, as orbax's tasks may be
            gc.collect()
            assert not [r for r in caplog.records if r.name == "asyncio"]
            leftover.append(abandoned_task("an unrelated failure"))
            leftover.clear()
            gc.collect()
            assert [r for r in caplog.records if r.name == "asyncio"]
    finally:
        asyncio_logger.filters[:] = before


def test_corrupt_or_incompatible_checkpoint_raises_checkpoint_error(tmp_path):
    model, ds = TinyNet(), TinyDataset()
    variables = init_variables(model)
    loop = quick_loop(max_steps=2)
    fit(model, variables, ds, workdir=tmp_path / "w", **loop)

    # A different architecture on the same workdir.
    wide = TinyNet(features=16)
    with pytest.raises(CheckpointError, match="corrupt or incompatible.*fresh --workdir"):
        fit(wide, init_variables(wide), ds, workdir=tmp_path / "w", **loop)
    # A different batch size: the saved data position no longer maps onto the data.
    with pytest.raises(CheckpointError, match="batch_size=8"):
        fit(model, variables, ds, workdir=tmp_path / "w", **replace_loop(loop, batch_size=4))

    # Garbage in the checkpoint's files.
    shutil.rmtree(tmp_path / "w" / "final")
    for f in (tmp_path / "w" / "checkpoints" / "2").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"checkpoints/2 is corrupt or incompatible") as caught:
        fit(model, variables, ds, workdir=tmp_path / "w", **loop)
    # The parts a caller words its own message from (metapruning's search.args.pruningnet_from).
    e = caught.value
    assert e.path == (tmp_path / "w" / "checkpoints" / "2").absolute() and not e.writing
    assert str(e) == f"checkpoint at {e.problem}; delete it or use a fresh --workdir"
    assert e.problem.startswith(f"{e.path} is corrupt or incompatible (")
    with pytest.raises(CheckpointError):
        load_variables(tmp_path / "w")
    with pytest.raises(CheckpointError, match="no trained weights"):
        load_variables(tmp_path / "empty")


def test_a_checkpoint_write_error_says_it_is_one():
    from pathlib import Path

    from jaxnas.train.checkpoint import write_error

    e = write_error("/runs/w/checkpoints/3", OSError("[Errno 28] No space left on device"))
    assert e.writing and e.path == Path("/runs/w/checkpoints/3") and e.problem is None
    assert str(e).startswith("cannot write the checkpoint /runs/w/checkpoints/3 (No space left on device)")


def test_fit_with_choices_fn_distillation_and_no_batch_stats(tmp_path):
    """A sub-network per step (choices as a function of the step), a frozen teacher, a student without BN."""
    model = TinyNet(use_bn=False)
    variables = init_variables(model)
    teacher = TinyNet(features=4)
    distill = Distillation(teacher=teacher, teacher_variables=init_variables(teacher, seed=1), weight=0.5,
                            temperature=2.0)
    choices = lambda step: {"mask": (np.arange(8) < 4 + step % 5).astype(np.float32)}  # noqa: E731
    kwargs = dict(choices=choices, eval_choices={"mask": np.ones(8, np.float32)})
    loop = quick_loop(epochs=1, distill=distill)
    full, _ = fit(model, variables, TinyDataset(), workdir=tmp_path / "full", **loop, **kwargs)
    fit(model, variables, TinyDataset(), workdir=tmp_path / "cut", **replace_loop(loop, max_steps=3),
        **kwargs)
    state, history = fit(model, variables, TinyDataset(), workdir=tmp_path / "cut", **loop, **kwargs)
    assert int(state.step) == 5 and state.batch_stats == {}
    assert_trees_equal(state, full)
    assert [(r["step"], r["split"]) for r in history] == [(2, "train"), (3, "train"), (3, "test"), (4, "train"),
                                                          (5, "train"), (5, "test")]
    assert json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 2
    assert set(load_variables(tmp_path / "cut")["batch_stats"]) == set()
