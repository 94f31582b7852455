"""Dataset: split carving, preprocessing, deterministic (resumable) batching and augmentation."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from jaxnas.resources import check_fits_memory

from .config import DataConfig
from .errors import DataError, suggest
from .sources import RawData, as_labels, as_uint8_images, load_raw, target_hw
from .transforms import augment_batch, default_crop_padding, resize_images, to_gray

SPLITS = ("train", "holdout", "test")
_ALIASES = {"val": "holdout", "valid": "holdout", "validation": "holdout", "heldout": "holdout",
            "held_out": "holdout", "search": "holdout"}
# Distinct streams of randomness derived from the one user seed.
_TAG_SHUFFLE, _TAG_AUGMENT, _TAG_HOLDOUT, _TAG_TEST, _TAG_LIMIT_TRAIN, _TAG_LIMIT_TEST = range(1, 7)
_SPLIT_SALT = {"train": 0, "holdout": 1, "test": 2}


Batch = dict  # {"image": float32 (B, H, W, C), "label": int32 (B,)}; a plain dict, hence a JAX pytree


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([int(e) % (1 << 63) for e in entropy])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used for training epoch ``epoch``; a pure function of (seed, epoch)."""
    return _rng(seed, epoch, _TAG_SHUFFLE).permutation(n)


def stratified_pick(y: np.ndarray, k: int, seed: int, tag: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` indices with per-class counts proportional to ``y``; return (picked, rest), both sorted."""
    n = len(y)
    k = max(0, min(int(k), n))
    perm = _rng(seed, tag).permutation(n)
    by_class = perm[np.argsort(y[perm], kind="stable")]  # grouped by class, random within a class
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (k / n) if n else counts.astype(float)
    take = np.floor(quota).astype(int)
    rest_k = k - int(take.sum())
    if rest_k:  # largest remainders get the leftover examples, ties to the smaller class id
        take[np.argsort(-(quota - take), kind="stable")[:rest_k]] += 1
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picked = np.concatenate([by_class[s:s + t] for s, t in zip(starts, take)]) if len(classes) else by_class[:0]
    mask = np.zeros(n, bool)
    mask[picked] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _split_name(split: str) -> str:
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise DataError(f"unknown split {split!r};{suggest(split, SPLITS + tuple(_ALIASES))} "
                        f"valid: {', '.join(SPLITS)}")
    return s


class Dataset:
    """Preprocessed in-memory splits ('train', 'holdout', 'test') with deterministic batching.

    Images are stored as uint8 after resizing; augmentation, scaling, channel repeat and
    normalisation happen per batch, producing float32 NHWC.
    """

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, class_names: Sequence[str],
                 config: DataConfig, info: str = "") -> None:
        self.config = config = _seeded(config)
        self.info = info
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self._x = {s: splits[s][0] for s in SPLITS}
        self._y = {s: splits[s][1] for s in SPLITS}
        for a in (*self._x.values(), *self._y.values()):
            a.setflags(write=False)  # shared by every batch iterator; must never change
        h, w, c_store = self._x["train"].shape[1:]
        self._expand = config.channels == 3 and c_store == 1
        self.image_shape: tuple[int, int, int] = (h, w, 3 if self._expand else c_store)
        self.crop_padding = (default_crop_padding((h, w)) if config.crop_padding is None
                             else int(config.crop_padding))
        self.mean, self.std = self._norm_stats(c_store)
        # x_float = x_uint8 * scale + shift  ==  (x/255 - mean) / std
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._shift = (-self.mean / self.std).astype(np.float32)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_raw(cls, raw: RawData, cfg: DataConfig) -> "Dataset":
        """Apply limits, test/holdout carving, resizing and channel conversion to raw source arrays."""
        cfg = _seeded(cfg)
        x_tr, y_tr = raw.x_train, raw.y_train
        x_te, y_te = raw.x_test, raw.y_test
        info = raw.info
        if len(raw.class_names) <= int(y_tr.max()) or (y_te is not None and len(y_te) and
                                                        len(raw.class_names) <= int(y_te.max())):
            raise DataError(f"{info}: labels exceed the {len(raw.class_names)} known class names")
        if x_te is None:
            te, tr = stratified_pick(y_tr, round(cfg.test_fraction * len(y_tr)), cfg.seed, _TAG_TEST)
            x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
            info += f" (test carved: {cfg.test_fraction:g} of train, seed {cfg.seed})"
        if cfg.limit_train is not None and cfg.limit_train < len(y_tr):
            keep, _ = stratified_pick(y_tr, cfg.limit_train, cfg.seed, _TAG_LIMIT_TRAIN)
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        if cfg.limit_test is not None and cfg.limit_test < len(y_te):
            keep, _ = stratified_pick(y_te, cfg.limit_test, cfg.seed, _TAG_LIMIT_TEST)
            x_te, y_te = x_te[keep], y_te[keep]
        unseen = np.setdiff1d(y_te, y_tr)
        if unseen.size:
            shown = ", ".join(str(int(v)) for v in unseen[:8]) + (", ..." if unseen.size > 8 else "")
            hint = (f" (data.limit_train={cfg.limit_train} may keep too few examples to cover every class)"
                    if cfg.limit_train is not None else "")
            raise DataError(f"{info}: test labels {shown} never occur in the train split{hint}; the model cannot "
                            "learn them: check the labels of the test split")
        h = cfg.holdout
        n_hold = int(h) if h >= 1 else int(round(h * len(y_tr)))
        if n_hold >= len(y_tr):
            raise DataError(f"data.holdout={h!r} takes {n_hold} of {len(y_tr)} train examples; leave some for training")
        hold, tr = stratified_pick(y_tr, n_hold, cfg.seed, _TAG_HOLDOUT)
        splits = {"train": (x_tr[tr], y_tr[tr]), "holdout": (x_tr[hold], y_tr[hold]), "test": (x_te, y_te)}
        target = target_hw(cfg)
        if target is not None:
            n, c = len(y_tr) + len(y_te), x_tr.shape[-1]
            # The resized splits alone (uint8): a lower bound, refused only when it cannot fit at all.
            check_fits_memory(n * target[0] * target[1] * c, f"data.image_size={cfg.image_size} ({n} images "
                              f"of {target[0]}x{target[1]}x{c})", "lower data.image_size or data.limit_train / "
                              "data.limit_test", share=1.0)
        for k, (x, y) in splits.items():
            if target is not None:
                x = resize_images(x, target, cfg.resize)
            if cfg.channels == 1:
                x = to_gray(x)
            splits[k] = (np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int32))
        return cls(splits, class_names=raw.class_names, config=cfg, info=info)

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None = None,
                    y_test: np.ndarray | None = None, *, class_names: Sequence[str] | None = None,
                    config: DataConfig | None = None) -> "Dataset":
        """Build from in-memory arrays (uint8 0..255 or float 0..1); a missing test split is carved."""
        cfg = config or DataConfig()
        x_tr = as_uint8_images(x_train, "arrays x_train")
        y_tr = as_labels(y_train, len(x_tr), "arrays y_train")
        x_te = y_te = None
        if x_test is not None:
            x_te = as_uint8_images(x_test, "arrays x_test")
            y_te = as_labels(y_test, len(x_te), "arrays y_test")
        n = 1 + max(int(y_tr.max()), int(y_te.max()) if y_te is not None and len(y_te) else 0)
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(n))
        return cls.from_raw(RawData(x_tr, y_tr, x_te, y_te, names, "arrays"), cfg)

    def _norm_stats(self, c_store: int) -> tuple[np.ndarray, np.ndarray]:
        c_out = self.image_shape[2]
        norm = self.config.normalize
        if norm == "dataset":
            mean, std = _channel_stats(self._x["train"])
        elif norm == "unit":
            mean, std = np.zeros(c_store), np.ones(c_store)
        elif norm == "none":
            mean, std = np.zeros(c_store), np.full(c_store, 1 / 255.0)
        else:
            mean, std = (np.asarray(v, np.float64) for v in norm)
            if len(mean) not in (1, c_out):
                raise DataError(f"data.normalize: {len(mean)} mean/std values given for {c_out}-channel images; "
                                f"give 1 or {c_out}")
        if len(mean) != c_out:
            mean, std = np.resize(mean, c_out), np.resize(std, c_out)
        return mean.astype(np.float32), std.astype(np.float32)

    # ------------------------------------------------------------------ queries
    def num_examples(self, split: str) -> int:
        return int(len(self._y[_split_name(split)]))

    def steps_per_epoch(self, split: str, batch_size: int | None = None, *, drop_remainder: bool = True) -> int:
        n = self.num_examples(split)
        bs = self._batch_size(_split_name(split), batch_size)
        return n // bs if drop_remainder else math.ceil(n / bs)

    def labels(self, split: str) -> np.ndarray:
        return self._y[_split_name(split)]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split, preprocessed and unaugmented: float32 (N, H, W, C) and int32 (N,)."""
        s = _split_name(split)
        return self._finish(self._x[s]), self._y[s].copy()

    # ------------------------------------------------------------------ batching
    def batches(self, split: str, batch_size: int | None = None, *, seed: int | None = None, epoch: int = 0,
                augment: bool | None = None, shuffle: bool | None = None, drop_remainder: bool = True,
                start_step: int = 0) -> Iterator[Batch]:
        """One epoch of batches, starting at ``start_step`` within the epoch.

        Train is shuffled by ``epoch_order(n, seed, epoch)`` and augmented per ``config.augment``;
        holdout/test are unshuffled and unaugmented unless asked. Augmentation randomness depends only
        on (seed, split, epoch, step), so a run resumed at any step sees identical batches.
        """
        s = _split_name(split)
        bs = self._batch_size(s, batch_size)
        seed = self.config.seed if seed is None else int(seed)
        shuffle = (s == "train") if shuffle is None else shuffle
        augment = (self.config.augment and s == "train") if augment is None else augment
        x_all, y_all = self._x[s], self._y[s]
        n = len(y_all)
        if n == 0:
            hint = " set data.holdout to a fraction or count" if s == "holdout" else ""
            raise DataError(f"split {s!r} is empty;{hint}")
        if drop_remainder and n < bs:
            raise DataError(f"batch size {bs} exceeds the {n} examples of split {s!r}; lower the batch size "
                            "or pass drop_remainder=False")
        order = epoch_order(n, seed + _SPLIT_SALT[s], epoch) if shuffle else np.arange(n)
        steps = n // bs if drop_remainder else math.ceil(n / bs)
        for step in range(int(start_step), steps):
            idx = order[step * bs:(step + 1) * bs]
            x = x_all[idx]
            if augment:
                rng = _rng(seed, _SPLIT_SALT[s], epoch, step, _TAG_AUGMENT)
                x = augment_batch(x, rng, crop_padding=self.crop_padding, flip=self.config.flip)
            yield {"image": self._finish(x), "label": y_all[idx]}

    def iterate(self, split: str = "train", batch_size: int | None = None, *, seed: int | None = None,
                start_step: int = 0, augment: bool | None = None, shuffle: bool | None = None) -> Iterator[Batch]:
        """Endless stream of full batches over consecutive epochs, starting at global step ``start_step``.

        Step ``k`` is batch ``k % steps_per_epoch`` of epoch ``k // steps_per_epoch``, so resuming at
        ``start_step=k`` reproduces an uninterrupted run exactly. Train and holdout are shuffled by default.
        """
        shuffle = (_split_name(split) != "test") if shuffle is None else shuffle
        spe = self.steps_per_epoch(split, batch_size)
        if spe == 0:
            raise DataError(f"batch size exceeds the {self.num_examples(split)} examples of split {split!r}")
        epoch, step = divmod(int(start_step), spe)
        while True:
            yield from self.batches(split, batch_size, seed=seed, epoch=epoch, augment=augment, shuffle=shuffle,
                                    start_step=step)
            epoch, step = epoch + 1, 0

    # ------------------------------------------------------------------ internals
    def _batch_size(self, split: str, batch_size: int | None) -> int:
        bs = batch_size or (self.config.batch_size if split == "train" else self.config.eval_batch_size)
        if int(bs) < 1:
            raise DataError(f"batch size must be >= 1, got {bs}")
        return int(bs)

    def _finish(self, x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)
        if self._expand:
            out = np.repeat(out, 3, axis=-1)
        out *= self._scale
        out += self._shift
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_examples(s)}" for s in SPLITS)
        return (f"Dataset({self.info}; {sizes}; image_shape={self.image_shape}; "
                f"num_classes={self.num_classes})")


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std in 0..1 units, accumulated in float64 over chunks."""
    c = x.shape[-1]
    n = max(x.size // c, 1)  # pixels per channel
    s, ss = np.zeros(c), np.zeros(c)
    for i in range(0, len(x), 4096):
        chunk = x[i:i + 4096].reshape(-1, c).astype(np.float64) / 255.0
        s += chunk.sum(0)
        ss += np.square(chunk).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
    return mean, np.where(std < 1e-6, 1.0, std)


def _seeded(cfg: DataConfig) -> DataConfig:
    # seed null means "follow train.seed" in an experiment config (resolved there); alone it is 0.
    return cfg if cfg.seed is not None else cfg.replace(seed=0)


def load_dataset(cfg: DataConfig | None = None, **overrides) -> Dataset:
    """Load and preprocess the configured source (default: the embedded Fashion-MNIST subset)."""
    cfg = cfg or DataConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    return Dataset.from_raw(load_raw(cfg), cfg)
