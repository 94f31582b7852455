"""Tests for jaxnas.data: sources, splits, deterministic batching, augmentation, sharding."""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxnas.schema import validate

from jaxnas.data import (DataConfig, DataError, Dataset, epoch_order, load_dataset, read_idx,
                         stratified_pick, write_idx)
from jaxnas.data.transforms import random_crop, random_flip, resize_images

REPO = Path(__file__).resolve().parents[1]


def _toy(n: int, classes: int = 3, hw: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, hw, hw, 1), dtype=np.uint8), (np.arange(n) % classes).astype(np.int64)


# ----------------------------------------------------------------------------- IDX

def test_idx_round_trip_plain_and_gz(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "a-idx3-ubyte", imgs)
    write_idx(tmp_path / "a-idx3-ubyte.gz", imgs)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 16 + imgs.size
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        back = read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and np.array_equal(back, imgs)
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f.idx", f)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), f)


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: b"\x08\x03" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad magic"),
    (lambda b: b[:-3], "truncated"),
    (lambda b: b[:6], "truncated inside its header"),
])
def test_idx_corrupt_raises_dataerror(tmp_path, corrupt, match):
    write_idx(tmp_path / "ok", np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(corrupt((tmp_path / "ok").read_bytes())))
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "bad.gz")


def _write_fmnist_dir(d: Path, n_train=30, n_test=10, n_test_labels=None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    x, y = _toy(n_train, classes=10, hw=28)
    write_idx(d / "train-images-idx3-ubyte.gz", x[..., 0])
    write_idx(d / "train-labels-idx1-ubyte.gz", y.astype(np.uint8))
    x, y = _toy(n_test, classes=10, hw=28, seed=1)
    write_idx(d / "t10k-images-idx3-ubyte", x[..., 0])  # raw (not gz) works too
    write_idx(d / "t10k-labels-idx1-ubyte", y[: n_test_labels or n_test].astype(np.uint8))


def test_fashion_mnist_idx_source(tmp_path):
    _write_fmnist_dir(tmp_path / "fm")
    ds = load_dataset(DataConfig(source="fashion_mnist_idx", data_dir=str(tmp_path / "fm"), holdout=10))
    assert (ds.num_examples("train"), ds.num_examples("holdout"), ds.num_examples("test")) == (20, 10, 10)
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10 and ds.image_shape == (28, 28, 1)


def test_fashion_mnist_idx_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; install the Debian package dataset-fashion-mnist"):
        load_dataset(DataConfig(source="fashion_mnist_idx", data_dir=str(tmp_path / "nope")))
    _write_fmnist_dir(tmp_path / "mismatch", n_test_labels=7)
    with pytest.raises(DataError, match="10 images but .* 7 labels"):
        load_dataset(DataConfig(source="fashion_mnist_idx", data_dir=str(tmp_path / "mismatch")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_dataset(DataConfig(source="fashion_mnist_idx", data_dir=str(tmp_path / "empty")))


# ----------------------------------------------------------------------------- embedded default

@functools.cache
def _embedded(**kw) -> Dataset:
    return load_dataset(DataConfig(**kw))


def test_embedded_default_shapes_and_balance():
    ds = _embedded()
    assert ds.config.source == "embedded"
    assert ds.num_classes == 10 and len(ds.class_names) == 10 and ds.image_shape == (28, 28, 1)
    # The default holdout (0.1, the data section's default) is carved class-stratified from train.
    assert ds.num_examples("train") == 10800 and ds.num_examples("test") == 3000
    assert ds.num_examples("holdout") == 1200
    assert np.all(np.bincount(ds.labels("train")) == 1080) and np.all(np.bincount(ds.labels("holdout")) == 120)
    assert np.all(np.bincount(ds.labels("test")) == 300)
    x, y = ds.arrays("test")
    assert x.shape == (3000, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    xt, _ = ds.arrays("train")  # dataset normalisation: train split is ~zero-mean, unit-std
    assert abs(float(xt.mean())) < 1e-3 and abs(float(xt.std()) - 1) < 1e-3
    size = (REPO / "jaxnas/data/embedded/fashion_mnist_subset.npz").stat().st_size
    assert size <= 8 * 1024 * 1024


def test_embedded_provenance_meta():
    from jaxnas.data import embedded_path
    with np.load(embedded_path()) as z:
        meta = json.loads(str(z["meta"]))
    assert "MIT" in meta["license"] and "Zalando" in meta["copyright"] and meta["seed"]


def test_embedded_resize_pad_and_channels():
    ds = _embedded(image_size=32, channels=3, holdout=0.1)
    assert ds.image_shape == (32, 32, 3)
    b = next(ds.batches("test", 16))
    assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
    assert np.array_equal(b["image"][..., 0], b["image"][..., 2])  # grayscale repeated
    # 28 -> 32 is a 2 px zero border: the border equals the normalised value of a black pixel
    assert np.allclose(b["image"][:, :2], -ds.mean[0] / ds.std[0], atol=1e-5)


# ----------------------------------------------------------------------------- splits and determinism

def test_holdout_carve_deterministic_disjoint_and_stratified():
    x, y = _toy(300, classes=3)
    x[:, 0, 0, 0] = np.arange(300) % 256  # make examples identifiable
    x[:, 0, 1, 0] = np.arange(300) // 256
    ident = lambda a: a[:, 0, 0, 0].astype(int) + 256 * a[:, 0, 1, 0].astype(int)  # noqa: E731
    cfg = DataConfig(normalize="none", holdout=0.2, seed=7)
    a = Dataset.from_arrays(x, y, x[:30], y[:30], config=cfg)
    b = Dataset.from_arrays(x, y, x[:30], y[:30], config=cfg)
    c = Dataset.from_arrays(x, y, x[:30], y[:30], config=cfg.replace(seed=8))
    tr, ho = ident(a._x["train"]), ident(a._x["holdout"])
    assert len(ho) == 60 and len(tr) == 240
    assert set(tr).isdisjoint(ho) and set(tr) | set(ho) == set(range(300))
    assert np.array_equal(ho, ident(b._x["holdout"]))
    assert not np.array_equal(ho, ident(c._x["holdout"]))
    assert np.all(np.bincount(a.labels("holdout")) == 20)
    assert Dataset.from_arrays(x, y, x, y, config=cfg.replace(holdout=45)).num_examples("holdout") == 45


def test_stratified_pick_counts():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    pick, rest = stratified_pick(y, 10, seed=0, tag=1)
    assert len(pick) == 10 and len(rest) == 90 and set(pick).isdisjoint(rest)
    assert np.array_equal(np.bincount(y[pick]), [5, 3, 2])


def test_epoch_order_deterministic():
    a = epoch_order(100, seed=3, epoch=2)
    assert np.array_equal(a, epoch_order(100, seed=3, epoch=2))
    assert sorted(a) == list(range(100))
    assert not np.array_equal(a, epoch_order(100, seed=3, epoch=3))
    assert not np.array_equal(a, epoch_order(100, seed=4, epoch=2))


def _small_ds(**kw) -> Dataset:
    x, y = _toy(103, classes=4, hw=12)
    return Dataset.from_arrays(x, y, x[:25], y[:25], config=DataConfig(**{"holdout": 0, **kw}))


def test_train_batches_follow_epoch_order_and_eval_is_unshuffled():
    ds = _small_ds(augment=False, normalize="none")
    got = np.concatenate([b["label"] for b in ds.batches("train", 10, seed=5, epoch=1)])
    assert len(got) == 100  # drop_remainder
    assert np.array_equal(got, ds.labels("train")[epoch_order(103, 5, 1)[:100]])
    xs = [b["image"] for b in ds.batches("test", 10, drop_remainder=False)]
    assert [len(x) for x in xs] == [10, 10, 5]
    assert np.array_equal(np.concatenate(xs), ds.arrays("test")[0])
    assert ds.steps_per_epoch("train", 10) == 10 and ds.steps_per_epoch("test", 10, drop_remainder=False) == 3


def test_resume_at_step_matches_uninterrupted_run():
    ds = _small_ds(augment=True, holdout=0)
    full = [b for _, b in zip(range(25), ds.iterate("train", 8, seed=11))]  # 12 steps/epoch: crosses 2 epochs
    for k in (0, 5, 12, 13):
        resumed = [b for _, b in zip(range(25 - k), ds.iterate("train", 8, seed=11, start_step=k))]
        for a, b in zip(full[k:], resumed):
            assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    # within-epoch resume through batches() agrees as well
    again = list(ds.batches("train", 8, seed=11, epoch=1, start_step=3))
    assert np.array_equal(again[0]["image"], full[15]["image"])
    # different epochs see different orders and augmentations
    assert not np.array_equal(full[0]["image"], full[12]["image"])


def test_augmentation_shape_flip_and_crop():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 6, 6, 1), dtype=np.uint8)
    f = random_flip(x, np.random.default_rng(1))
    flipped = np.array([np.array_equal(f[i], x[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(f[i], x[i]) for i in range(64)])
    assert np.all(flipped | kept) and 10 < flipped.sum() < 54  # about half really flipped
    c = random_crop(x, 2, np.random.default_rng(2))
    assert c.shape == x.shape
    # each crop is the padded image shifted by some (dy, dx) in [-2, 2]^2
    for i in range(8):
        p = np.pad(x[i], ((2, 2), (2, 2), (0, 0)))
        assert any(np.array_equal(c[i], p[dy:dy + 6, dx:dx + 6]) for dy in range(5) for dx in range(5))
    ds = _small_ds(augment=True, image_size=16)
    assert ds.crop_padding == 2  # 4 px per 32 px
    aug = next(ds.batches("train", 16, seed=0))
    plain = next(ds.batches("train", 16, seed=0, augment=False))
    assert aug["image"].shape == plain["image"].shape == (16, 16, 16, 1)
    assert np.array_equal(aug["label"], plain["label"])
    assert not np.array_equal(aug["image"], plain["image"])


def test_resize_bilinear_and_pad():
    x = np.full((2, 10, 10, 3), 200, np.uint8)
    assert np.all(resize_images(x, (5, 5), "bilinear") == 200)  # constant image stays constant
    up = resize_images(x, (24, 24), "auto")
    assert up.shape == (2, 24, 24, 3) and np.all(up == 200)  # 10->24 grows too much for padding
    padded = resize_images(x, (12, 12), "auto")
    assert padded[0, 0, 0, 0] == 0 and padded[0, 1, 1, 0] == 200
    with pytest.raises(DataError, match="cannot pad"):
        resize_images(x, (8, 8), "pad")


def test_normalize_modes():
    x, y = _toy(40, classes=2)
    unit = Dataset.from_arrays(x, y, config=DataConfig(normalize="unit", augment=False))
    assert unit.arrays("train")[0].max() <= 1.0
    raw = Dataset.from_arrays(x, y, config=DataConfig(normalize="none"))
    assert np.array_equal(raw.arrays("train")[0], raw._x["train"].astype(np.float32))
    exp = Dataset.from_arrays(x, y, config=DataConfig(normalize=[[0.5], [0.25]]))
    assert np.allclose(exp.arrays("test")[0], (exp._x["test"] / 255.0 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(DataError, match="normalize"):
        DataConfig(normalize="datset")


# ----------------------------------------------------------------------------- npz and image folder

def test_npz_source(tmp_path):
    x, y = _toy(50, classes=5)
    np.savez(tmp_path / "full.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10],
             class_names=np.array(list("abcde")))
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "full.npz")))
    assert ds.class_names == tuple("abcde") and ds.num_examples("test") == 10
    np.savez(tmp_path / "xy.npz", x=x[..., 0].astype(np.float32) / 255.0, y=y)  # (N,H,W) floats in [0,1]
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "xy.npz"), test_fraction=0.2, holdout=0))
    assert ds.num_examples("train") == 40 and ds.num_examples("test") == 10 and ds.image_shape == (8, 8, 1)
    np.savez(tmp_path / "bad.npz", images=x, labels=y)
    with pytest.raises(DataError, match="expected x_train, y_train, x_test, y_test"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "count.npz", x=x, y=y[:-1])
    with pytest.raises(DataError, match="50 images but 49 labels"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "count.npz")))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "missing.npz")))


def _write_pngs(root: Path, classes: dict[str, int], size=(10, 10), channels=3, seed=0) -> None:
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())


def test_image_folder_sources(tmp_path):
    _write_pngs(tmp_path / "split" / "train", {"cat": 4, "dog": 3})
    _write_pngs(tmp_path / "split" / "test", {"cat": 2, "dog": 2}, seed=1)
    ds = load_dataset(DataConfig(source="image_folder", path=str(tmp_path / "split"), holdout=0))
    assert ds.class_names == ("cat", "dog") and ds.image_shape == (10, 10, 3)
    assert ds.num_examples("train") == 7 and ds.num_examples("test") == 4
    assert list(ds.labels("train")) == [0, 0, 0, 0, 1, 1, 1]
    # decoded pixels are exact (PNG is lossless)
    import tensorflow as tf
    first = tf.io.decode_png((tmp_path / "split/train/cat/0.png").read_bytes()).numpy()
    assert np.array_equal(ds._x["train"][0], first)

    _write_pngs(tmp_path / "flat", {"a": 5, "b": 5, "c": 5}, channels=1)
    _write_pngs(tmp_path / "flat", {"c": 1}, size=(14, 12), channels=1, seed=3)  # overwrites c/0.png, other size
    with pytest.raises(DataError, match="set data.image_size"):
        load_dataset(DataConfig(source="image_folder", path=str(tmp_path / "flat")))
    ds = load_dataset(DataConfig(source="image_folder", path=str(tmp_path / "flat"), holdout=0, image_size=8,
                                 test_fraction=0.2))
    assert ds.num_examples("train") == 12 and ds.num_examples("test") == 3 and ds.image_shape == (8, 8, 1)
    assert sorted(ds.labels("test")) == [0, 1, 2]

    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        load_dataset(DataConfig(source="image_folder", path=str(tmp_path / "empty")))
    (tmp_path / "noclass").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(DataConfig(source="image_folder", path=str(tmp_path / "noclass")))


# ----------------------------------------------------------------------------- tfds

@functools.cache
def _tiny_tfds_builders():
    import tensorflow_datasets as tfds

    def examples(n, seed, hw):
        rng = np.random.default_rng(seed)
        for i in range(n):
            label = i % 2
            size = hw if hw else (6 + i % 3, 7)
            img = rng.integers(0, 100, (*size, 1), dtype=np.uint8) + 150 * label  # bright = class 1
            yield i, {"image": img.astype(np.uint8), "label": label}

    class JaxnasTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(names=["dark", "bright"])}))

        def _split_generators(self, dl_manager):
            return {"train": examples(40, 0, (8, 8)), "test": examples(10, 1, (8, 8))}

        def _generate_examples(self):  # abstract in the base class; splits above yield directly
            raise NotImplementedError

    class JaxnasTinyVarsize(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": examples(12, 2, None)}

        def _generate_examples(self):
            raise NotImplementedError

    return JaxnasTinyShapes, JaxnasTinyVarsize


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory) -> str:
    fixed, varsize = _tiny_tfds_builders()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    fixed(data_dir=data_dir).download_and_prepare()
    varsize(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_source_on_locally_built_dataset(tiny_tfds_dir, tmp_path):
    data_dir = tiny_tfds_dir
    ds = load_dataset(DataConfig(source="tfds", name="jaxnas_tiny_shapes", data_dir=data_dir, holdout=4))
    assert ds.class_names == ("dark", "bright") and ds.image_shape == (8, 8, 1)
    assert (ds.num_examples("train"), ds.num_examples("holdout"), ds.num_examples("test")) == (36, 4, 10)
    x, y = ds.arrays("test")
    bright = x.mean(axis=(1, 2, 3)) > 0
    assert np.array_equal(bright, y == 1)  # labels travel with their images

    ds = load_dataset(DataConfig(source="tfds", name="jaxnas_tiny_varsize:1.0.0", data_dir=data_dir,
                                 image_size=6, test_fraction=0.25))
    assert ds.image_shape == (6, 6, 1) and ds.num_examples("test") == 3
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(DataConfig(source="tfds", name="jaxnas_tiny_varsize", data_dir=data_dir))

    with pytest.raises(DataError, match="is not prepared .* set data.download: true"):
        load_dataset(DataConfig(source="tfds", name="jaxnas_tiny_shapes", data_dir=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="no feature 'img'"):
        load_dataset(DataConfig(source="tfds", name="jaxnas_tiny_shapes", data_dir=data_dir, image_key="img"))


def test_tfds_prepared_dataset_loads_by_name_without_builder_code(tiny_tfds_dir):
    # A fresh process has no JaxnasTinyShapes class: tfds must read the prepared files by name alone,
    # as for a dataset prepared earlier with `tfds build`.
    code = ("from jaxnas.data import DataConfig, load_dataset\n"
            f"ds = load_dataset(DataConfig(source='tfds', name='jaxnas_tiny_shapes', data_dir={tiny_tfds_dir!r}, holdout=0))\n"
            "print('TFDS', ds.num_examples('train'), ds.num_examples('test'), ds.class_names)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TFDS 40 10 ('dark', 'bright')" in r.stdout


def test_tfds_unknown_name(tmp_path):
    with pytest.raises(DataError, match="no dataset named 'fashion_mnistt'.*did you mean 'fashion_mnist'"):
        load_dataset(DataConfig(source="tfds", name="fashion_mnistt", data_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- config errors

def test_unknown_source_and_keys_suggest():
    with pytest.raises(DataError, match="did you mean 'image_folder'") as e:
        DataConfig(source="imagefolder")
    assert isinstance(e.value, ValueError)
    with pytest.raises(DataError, match="did you mean 'data.holdout'"):
        validate({"hold_out": 0.1}, DataConfig, "data")
    with pytest.raises(DataError, match="unknown split 'tst'.*did you mean 'test'"):
        _small_ds().num_examples("tst")
    with pytest.raises(DataError, match="holdout"):
        DataConfig(holdout=1.5)
    with pytest.raises(DataError, match="split 'holdout' is empty"):
        next(_small_ds().batches("holdout", 4))
    assert validate({"source": "npz", "path": "x.npz", "image_size": [32, 32]}, DataConfig).image_size == (32, 32)


# ----------------------------------------------------------------------------- sharding

def test_shard_batch_over_two_forced_host_devices():
    code = textwrap.dedent("""
        import numpy as np, jax
        from jaxnas.data import DataError, make_data_mesh, shard_batch, pad_batch
        assert len(jax.devices()) == 2, jax.devices()
        mesh = make_data_mesh()
        assert mesh.axis_names == ("data",) and mesh.shape["data"] == 2
        b = {"image": np.arange(4 * 3, dtype=np.float32).reshape(4, 3), "label": np.arange(4, dtype=np.int32)}
        s = shard_batch(b, mesh)
        assert set(s) == {"image", "label"} and s["image"].shape == (4, 3)
        shards = sorted(s["image"].addressable_shards, key=lambda sh: sh.index[0].start)
        assert [sh.data.shape for sh in shards] == [(2, 3), (2, 3)]
        assert len({sh.device for sh in shards}) == 2
        assert np.array_equal(np.asarray(shards[1].data), b["image"][2:])
        assert np.array_equal(np.asarray(s["label"]), b["label"])
        odd = {k: v[:3] for k, v in b.items()}
        try:
            shard_batch(odd, mesh)
            raise SystemExit("no error for odd batch")
        except DataError as e:
            assert "not divisible by the 2 devices" in str(e), e
        padded, n = pad_batch(odd, 2)
        assert n == 3 and padded["image"].shape == (4, 3)
        shard_batch(padded, s["image"].sharding)
        # real dataset batches shard too
        from jaxnas.data import DataConfig, Dataset
        x = np.zeros((10, 4, 4, 1), np.uint8); y = np.arange(10) % 2
        ds = Dataset.from_arrays(x, y, x, y, config=DataConfig())
        sb = shard_batch(next(ds.batches("train", 4, seed=0)), mesh)
        assert sb["image"].shape == (4, 4, 4, 1) and len(sb["label"].addressable_shards) == 2
        print("SHARD-OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SHARD-OK" in r.stdout, r.stdout + r.stderr
