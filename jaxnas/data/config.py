"""Typed configuration selecting and preprocessing a data source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import DataError, suggest

SOURCES = ("embedded", "fashion_mnist_idx", "tfds", "image_folder", "npz")
RESIZE_METHODS = ("auto", "pad", "bilinear")
NORMALIZE_MODES = ("dataset", "unit", "none")

Normalize = Union[str, tuple[tuple[float, ...], tuple[float, ...]]]


@dataclass(frozen=True)
class DataConfig:
    """Which data to load and how to preprocess it.

    source: 'embedded' (packaged Fashion-MNIST subset) | 'fashion_mnist_idx' | 'tfds' | 'image_folder' | 'npz'.
    name: tfds dataset name ('cifar10', 'fashion_mnist:3.*', ...).
    data_dir: IDX directory, tfds data_dir, or image-folder root (``path`` is accepted too).
    path: .npz file or image-folder root.
    download: let tfds download and prepare the dataset (needs internet); off by default.
    image_size: output H=W (or (H, W)); None keeps the source size.
    resize: 'auto' (zero-pad when growing by an even margin, else bilinear) | 'pad' | 'bilinear'.
    channels: None keeps the source channels; 3 repeats grayscale, 1 averages RGB.
    holdout: fraction in (0, 1) or example count of train carved off (class-stratified, by seed)
        as the 'holdout' split used by search steps.
    test_fraction: share carved off as test when a source has no test split (image folder / npz x,y).
    seed: seed for holdout carving, limits, shuffling and augmentation.
    augment: default augmentation for the train split (random crop with padding + optional flip).
    crop_padding: pixels of zero padding for random crops; None scales 4 px per 32 px of image size.
    flip: random horizontal flips during augmentation.
    normalize: 'dataset' (per-channel train mean/std) | 'unit' (x/255 only) | 'none' (raw 0..255) |
        explicit ((mean per channel), (std per channel)) in 0..1 pixel units.
    limit_train / limit_test: keep a class-stratified subset of this many examples (before holdout).
    """

    source: str = "embedded"
    name: str | None = None
    data_dir: str | None = None
    path: str | None = None
    download: bool = False
    train_split: str = "train"
    test_split: str = "test"
    image_key: str = "image"
    label_key: str = "label"
    image_size: int | tuple[int, int] | None = None
    resize: str = "auto"
    channels: int | None = None
    holdout: float | int = 0
    test_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    crop_padding: int | None = None
    flip: bool = True
    normalize: Normalize = "dataset"
    batch_size: int = 128
    eval_batch_size: int = 512
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        if self.source not in SOURCES:
            raise DataError(f"data.source: unknown data source {self.source!r};{suggest(self.source, SOURCES)} "
                            f"valid sources: {', '.join(SOURCES)}")
        if self.resize not in RESIZE_METHODS:
            raise DataError(f"data.resize: unknown method {self.resize!r};{suggest(self.resize, RESIZE_METHODS)} "
                            f"valid: {', '.join(RESIZE_METHODS)}")
        if isinstance(self.image_size, (list, tuple)):
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise DataError(f"data.image_size: expected an int or (H, W), got {self.image_size!r}")
            set_("image_size", (int(self.image_size[0]), int(self.image_size[1])))
        elif self.image_size is not None and int(self.image_size) < 1:
            raise DataError(f"data.image_size must be positive, got {self.image_size!r}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"data.channels must be None, 1 or 3, got {self.channels!r}")
        if isinstance(self.normalize, str):
            if self.normalize not in NORMALIZE_MODES:
                raise DataError(f"data.normalize: unknown mode {self.normalize!r};"
                                f"{suggest(self.normalize, NORMALIZE_MODES)} valid: {', '.join(NORMALIZE_MODES)} "
                                "or explicit [[mean...], [std...]]")
        else:
            try:
                mean, std = self.normalize
                mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
            except (TypeError, ValueError) as e:
                raise DataError("data.normalize: expected a mode or [[mean...], [std...]], "
                                f"got {self.normalize!r}") from e
            if len(mean) != len(std) or not mean or min(std) <= 0:
                raise DataError("data.normalize: mean and std need the same length and std > 0, "
                                f"got {self.normalize!r}")
            set_("normalize", (mean, std))
        h = self.holdout
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not (0 <= h < 1 or float(h).is_integer()):
            raise DataError(f"data.holdout must be a fraction in [0, 1) or a whole example count, got {h!r}")
        if h >= 1:
            set_("holdout", int(h))
        if not 0 < self.test_fraction < 1:
            raise DataError(f"data.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for k in ("batch_size", "eval_batch_size"):
            if int(getattr(self, k)) < 1:
                raise DataError(f"data.{k} must be >= 1, got {getattr(self, k)!r}")
        for k in ("limit_train", "limit_test"):
            if getattr(self, k) is not None and int(getattr(self, k)) < 1:
                raise DataError(f"data.{k} must be None or >= 1, got {getattr(self, k)!r}")
        if self.crop_padding is not None and int(self.crop_padding) < 0:
            raise DataError(f"data.crop_padding must be >= 0, got {self.crop_padding!r}")
        if self.source == "tfds" and not self.name:
            raise DataError("data.name: the tfds source needs a dataset name, e.g. name: cifar10")
        if self.source == "npz" and not (self.path or self.data_dir):
            raise DataError("data.path: the npz source needs path: /path/to/arrays.npz")
        if self.source == "image_folder" and not (self.path or self.data_dir):
            raise DataError("data.path: the image_folder source needs path: /root/with/<class>/*.png")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DataConfig":
        """Build from a (YAML-loaded) mapping; unknown keys raise DataError with a suggestion."""
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise DataError(f"data: unknown key {k!r};{suggest(k, names)} valid keys: {', '.join(names)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "DataConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
