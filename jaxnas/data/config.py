"""The data section of the experiment config: which data to load and how to preprocess it."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from jaxnas.schema import Section

from .errors import DataError, suggest

SOURCES = ("embedded", "fashion_mnist_idx", "tfds", "image_folder", "npz")
RESIZE_METHODS = ("auto", "pad", "bilinear")
NORMALIZE_MODES = ("dataset", "unit", "none")

Normalize = Union[str, tuple[tuple[float, ...], tuple[float, ...]]]


class DataConfig(Section):
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
    seed: seed for holdout carving, limits, shuffling and augmentation; null (the default in an experiment
        config) follows train.seed.
    augment: default augmentation for the train split (random crop with padding + optional flip).
    crop_padding: pixels of zero padding for random crops; None scales 4 px per 32 px of image size.
    flip: random horizontal flips during augmentation.
    normalize: 'dataset' (per-channel train mean/std) | 'unit' (x/255 only) | 'none' (raw 0..255) |
        explicit ((mean per channel), (std per channel)) in 0..1 pixel units.
    limit_train / limit_test: keep a class-stratified subset of this many examples (before holdout).
    batch_size / eval_batch_size: the training and evaluation batch sizes of every trainer and method.
    """

    section = "data"
    error = DataError

    source: Literal[SOURCES] = "embedded"
    name: str | None = None
    data_dir: str | None = None
    path: str | None = None
    download: bool = False
    train_split: str = "train"
    test_split: str = "test"
    image_key: str = "image"
    label_key: str = "label"
    image_size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None
    resize: Literal[RESIZE_METHODS] = "auto"
    channels: int | None = None
    holdout: float | int = 0.1
    test_fraction: float = 0.2
    seed: int | None = None
    augment: bool = True
    crop_padding: Annotated[int, Field(ge=0)] | None = None
    flip: bool = True
    normalize: Normalize = "dataset"
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 500
    limit_train: PositiveInt | None = None
    limit_test: PositiveInt | None = None

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError(f"must be null, 1 or 3, got {v!r}")
        return v

    @field_validator("normalize")
    @classmethod
    def _normalize(cls, v: Normalize) -> Normalize:
        if isinstance(v, str):
            if v not in NORMALIZE_MODES:
                raise ValueError(f"unknown mode {v!r};{suggest(v, NORMALIZE_MODES)} valid: "
                                 f"{', '.join(NORMALIZE_MODES)} or explicit [[mean...], [std...]]")
        else:
            mean, std = v
            if len(mean) != len(std) or not mean or min(std) <= 0:
                raise ValueError(f"mean and std need the same length and std > 0, got {[list(m) for m in v]}")
        return v

    @field_validator("holdout")
    @classmethod
    def _whole_count(cls, h: float | int) -> float | int:
        if h < 0 or not (h < 1 or float(h).is_integer()):
            raise ValueError(f"must be a fraction in [0, 1) or a whole example count, got {h!r}")
        return int(h) if h >= 1 else h

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        errs = self.out_of_range({"test_fraction": "in (0, 1)"})
        if self.source == "tfds" and not self.name:
            errs.append("name: the tfds source needs a dataset name, e.g. name: cifar10")
        if self.source == "npz" and not (self.path or self.data_dir):
            errs.append("path: the npz source needs path: /path/to/arrays.npz")
        if self.source == "image_folder" and not (self.path or self.data_dir):
            errs.append("path: the image_folder source needs path: /root/with/<class>/*.png")
        return self.checked(errs + self._unused_keys())

    def _unused_keys(self) -> list[str]:
        """Keys the chosen source would silently ignore are refused (every accepted key does something)."""
        src, errs = self.source, []
        if self.name is not None and src != "tfds":
            if src in ("embedded", "fashion_mnist_idx"):
                if self.name != "fashion_mnist":
                    errs.append(f"name: the {src} source is Fashion-MNIST (name: fashion_mnist or null), got "
                                f"{self.name!r}; for another dataset use source: tfds")
            else:
                errs.append(f"name: the {src} source reads data.path and takes no dataset name; remove data.name "
                            "(or use source: tfds)")
        if self.download and src != "tfds":
            errs.append(f"download: only the tfds source downloads; remove data.download for source {src}")
        for key in ("image_key", "label_key"):
            if getattr(self, key) != type(self).model_fields[key].default and src != "tfds":
                errs.append(f"{key}: only the tfds source has feature keys; remove data.{key} for source {src}")
        if src == "embedded" and (self.path or self.data_dir):
            errs.append("path: the embedded source is packaged with jaxnas and reads no path; remove "
                        "data.path / data.data_dir, or set source: npz, image_folder or fashion_mnist_idx")
        if src == "tfds" and self.path:
            errs.append("path: the tfds source reads data.data_dir (its tfds data_dir); rename data.path to "
                        "data.data_dir")
        return errs
