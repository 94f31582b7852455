"""Loaders turning each configured source into raw uint8 NHWC arrays (RawData)."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import DataConfig
from .errors import DataError, suggest
from .idx import read_idx
from .transforms import resize_images

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
EMBEDDED_RESOURCE = "embedded/fashion_mnist_subset.npz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class RawData:
    """Source arrays before preprocessing; ``x_test is None`` asks the pipeline to carve a test split."""

    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int32 (N,)
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    info: str  # provenance, shown in logs and run metadata


# ----------------------------------------------------------------------------- array checks

def as_uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """Accept (N,H,W) or (N,H,W,C) uint8, or floats in [0,1] / [0,255]; return uint8 NHWC."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or 0 in x.shape[1:]:
        raise DataError(f"{where}: images must have shape (N, H, W) or (N, H, W, C) with C in 1/3/4, got {x.shape}")
    if x.shape[-1] == 4:  # drop alpha
        x = x[..., :3]
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool:
        if x.size == 0:
            return x.astype(np.uint8)
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 1 and np.issubdtype(x.dtype, np.floating):
            return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.rint(x).astype(np.uint8)
        raise DataError(f"{where}: pixel values span [{lo:g}, {hi:g}]; store raw pixels as uint8 0..255 "
                        "or floats in [0, 1] (normalisation is applied by the pipeline)")
    raise DataError(f"{where}: unsupported image dtype {x.dtype}; use uint8")


def as_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{where}: {n} images but {y.shape[0]} labels; the image and label counts must match")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int32)


def _check_pair(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    x = as_uint8_images(x, where)
    y = as_labels(y, x.shape[0], where)
    if x.shape[0] == 0:
        raise DataError(f"{where}: the split is empty")
    return x, y


def _class_names(names: Sequence[str] | None, *ys: np.ndarray | None, where: str = "data") -> tuple[str, ...]:
    n = 1 + max(int(y.max()) for y in ys if y is not None and y.size)
    if names is None or len(names) == 0:
        # The class count is inferred from the labels: it must be the number of classes the train split
        # shows (one stray label 999 would otherwise make a 1000-class head for 10-class data).
        present = np.unique(ys[0]) if ys[0] is not None else np.arange(0)
        absent = np.setdiff1d(np.arange(n), present)
        if absent.size:
            big = ", ".join(str(int(v)) for v in present[-3:])
            raise DataError(f"{where}: the labels imply {n} classes (up to {n - 1}) but the train split has examples "
                            f"of only {present.size} (largest labels: {big}); labels must be 0..K-1 with every "
                            "class in train: fix the stray labels, or store class_names to declare the classes")
        return tuple(str(i) for i in range(n))
    names = tuple(str(s) for s in names)
    if len(names) < n:
        raise DataError(f"labels go up to {n - 1} but only {len(names)} class names are given")
    return names


# ----------------------------------------------------------------------------- npz / embedded

def _load_npz_file(path: Path, where: str) -> RawData:
    if path.is_dir():
        raise DataError(f"{where}: {path} is a directory; set data.path to an .npz file")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{where}: file {path} does not exist; set data.path to an .npz file") from e
    except ValueError as e:
        if "pickle" in str(e):  # an .npy of objects: numpy's own message suggests loading it unsafely
            raise DataError(f"{where}: {path} is a pickled object array, which jaxnas never loads (it could run "
                            "code); save numeric arrays with numpy.savez(path, x_train=..., y_train=...)") from None
        raise DataError(f"{where}: {path} is not a readable .npz file ({e}); write it with numpy.savez") from None
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, OSError: a damaged archive
        raise DataError(f"{where}: {path} is not a readable .npz file ({type(e).__name__}: {e}); it is truncated "
                        "or corrupt: write it again with numpy.savez") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{where}: {path} holds a single array (an .npy file), not an .npz archive of named arrays; "
                        "save x_train, y_train (and x_test, y_test) with numpy.savez")
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" not in str(e):
            raise DataError(f"{where}: {path} holds an unreadable array ({e}); write it again with numpy.savez") from None
        raise DataError(f"{where}: {path} holds object arrays (pickled Python objects), which jaxnas never loads "
                        "(they could run code); store numeric arrays: uint8 images, integer labels") from None
    except Exception as e:  # noqa: BLE001 - a member truncated or corrupt inside the zip
        raise DataError(f"{where}: {path} is not a readable .npz file ({type(e).__name__}: {e}); it is truncated "
                        "or corrupt: write it again with numpy.savez") from None
    keys = set(arrays)
    x_te = y_te = None
    if {"x_train", "y_train"} <= keys:
        x_tr, y_tr = _check_pair(arrays["x_train"], arrays["y_train"], f"{where} x_train/y_train")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{where}: {path} has only one of x_test/y_test; store both or neither")
        if "x_test" in keys:
            x_te, y_te = _check_pair(arrays["x_test"], arrays["y_test"], f"{where} x_test/y_test")
    elif {"x", "y"} <= keys:
        x_tr, y_tr = _check_pair(arrays["x"], arrays["y"], f"{where} x/y")
    else:
        raise DataError(f"{where}: {path} has keys {sorted(keys)}; expected x_train, y_train, x_test, y_test "
                        "(or x, y with the test split carved by data.test_fraction)")
    if x_te is not None and x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(f"{where}: train images are {x_tr.shape[1:]} but test images are {x_te.shape[1:]}")
    names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else None
    return RawData(x_tr, y_tr, x_te, y_te, _class_names(names, y_tr, y_te, where=f"{where} {path}"), f"{where}:{path}")


def load_npz(cfg: DataConfig) -> RawData:
    return _load_npz_file(Path(cfg.path or cfg.data_dir), "npz")


def embedded_path() -> importlib.resources.abc.Traversable:
    """Location of the packaged Fashion-MNIST subset."""
    return importlib.resources.files(__package__).joinpath(EMBEDDED_RESOURCE)


def load_embedded(cfg: DataConfig) -> RawData:
    res = embedded_path()
    if not res.is_file():
        raise DataError(f"embedded: packaged file {EMBEDDED_RESOURCE} is missing from jaxnas.data; regenerate it "
                        "with `python scripts/make_embedded_fmnist.py` or reinstall jaxnas")
    with importlib.resources.as_file(res) as p:
        raw = _load_npz_file(Path(p), "embedded")
    raw.info = "embedded:fashion_mnist_subset (Fashion-MNIST, MIT, Zalando SE)"
    return raw


# ----------------------------------------------------------------------------- Fashion-MNIST IDX

def _find_idx(root: Path, split: str, kind: str) -> Path:
    rank = "3" if kind == "images" else "1"
    for stem in (f"{split}-{kind}-idx{rank}-ubyte", f"{split}-{kind}.idx{rank}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise DataError(f"fashion_mnist_idx: {root} has no {split}-{kind}-idx{rank}-ubyte[.gz]; point data.data_dir at "
                    "the directory holding the four Fashion-MNIST IDX files")


def load_fashion_mnist_idx(cfg: DataConfig) -> RawData:
    root = Path(cfg.data_dir or cfg.path or DEFAULT_IDX_DIR)
    if not root.is_dir():
        raise DataError(f"fashion_mnist_idx: directory {root} does not exist; install the Debian package "
                        "dataset-fashion-mnist or set data.data_dir")
    out = []
    for split in ("train", "t10k"):
        ip, lp = _find_idx(root, split, "images"), _find_idx(root, split, "labels")
        x, y = read_idx(ip), read_idx(lp)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"fashion_mnist_idx: {ip} holds a {x.dtype} array of shape {x.shape}; "
                            "expected uint8 (N, H, W)")
        if y.ndim != 1:
            raise DataError(f"fashion_mnist_idx: {lp} holds shape {y.shape}; expected 1-D labels")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"fashion_mnist_idx: {ip.name} has {x.shape[0]} images but {lp.name} has {y.shape[0]} "
                            "labels; the files do not belong together")
        out += list(_check_pair(x, y, f"fashion_mnist_idx {ip.name}"))
    x_tr, y_tr, x_te, y_te = out
    if max(y_tr.max(), y_te.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"fashion_mnist_idx: labels exceed 9 in {root}; these are not Fashion-MNIST files")
    return RawData(x_tr, y_tr, x_te, y_te, FASHION_MNIST_CLASSES, f"fashion_mnist_idx:{root}")


# ----------------------------------------------------------------------------- shared helpers for variable-size images

def target_hw(cfg: DataConfig) -> tuple[int, int] | None:
    s = cfg.image_size
    return None if s is None else (s, s) if isinstance(s, int) else tuple(s)


def stack_images(images: list[np.ndarray], cfg: DataConfig, where: str) -> np.ndarray:
    """Stack decoded HWC uint8 images, unifying channels (gray+RGB -> RGB) and sizes (needs data.image_size)."""
    images = [im[..., None] if im.ndim == 2 else im[..., :3] for im in images]
    channels = max(im.shape[-1] for im in images)
    if channels == 3:
        images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in images]
    sizes = {im.shape[:2] for im in images}
    target = target_hw(cfg)
    if len(sizes) > 1 and target is None:
        raise DataError(f"{where}: images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); set "
                        "data.image_size so they can be resized to one size")
    if len(sizes) > 1:
        images = [resize_images(im[None], target, cfg.resize)[0] for im in images]
    return np.stack(images).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------- image folder

def _decoder() -> Callable[[Path], np.ndarray]:
    try:
        from PIL import Image  # optional; faster than TF for per-file decoding

        def decode(p: Path) -> np.ndarray:
            with Image.open(p) as im:
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGBA" if "A" in im.getbands() or im.mode == "P" else "RGB")
                return np.asarray(im)
        return decode
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as e:
        raise DataError("image_folder: decoding images needs Pillow or tensorflow; pip install pillow") from e

    def decode(p: Path) -> np.ndarray:
        img = tf.io.decode_image(tf.io.read_file(str(p)), expand_animations=False).numpy()
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        return img
    return decode


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_folders(root: Path, class_names: Sequence[str], cfg: DataConfig, decode, where: str,
                        allow_missing: bool) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    extra = [p.name for p in _class_dirs(root) if p.name not in class_names]
    if extra:
        raise DataError(f"{where}: {root} has class folders {extra} that the train split lacks; "
                        "every test class needs train examples")
    for label, name in enumerate(class_names):
        d = root / name
        if not d.is_dir():
            if allow_missing:
                continue
            raise DataError(f"{where}: missing class folder {d}")
        files = _list_images(d)
        if not files and not allow_missing:
            raise DataError(f"{where}: class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for f in files:
            try:
                images.append(decode(f))
            except Exception as e:  # decoder-specific exception types
                raise DataError(f"{where}: cannot decode {f} ({type(e).__name__}: {e}); remove or fix the file") from e
            labels.append(label)
    if not images:
        raise DataError(f"{where}: no images (*{', *'.join(IMAGE_EXTENSIONS)}) found under {root}")
    return stack_images(images, cfg, where), np.asarray(labels, np.int32)


def load_image_folder(cfg: DataConfig) -> RawData:
    root = Path(cfg.path or cfg.data_dir)
    where = "image_folder"
    if not root.is_dir():
        raise DataError(f"{where}: directory {root} does not exist; set data.path to a folder laid out as "
                        "root/<class>/*.png or root/<train|test>/<class>/*.png")
    split_layout = (root / cfg.train_split).is_dir()
    train_root = root / cfg.train_split if split_layout else root
    class_names = [p.name for p in _class_dirs(train_root)]
    if not class_names:
        raise DataError(f"{where}: {train_root} has no class sub-folders; lay images out as "
                        f"{train_root}/<class_name>/*.png")
    decode = _decoder()
    x_tr, y_tr = _read_class_folders(train_root, class_names, cfg, decode, where, allow_missing=False)
    x_te = y_te = None
    if split_layout and (root / cfg.test_split).is_dir():
        x_te, y_te = _read_class_folders(root / cfg.test_split, class_names, cfg, decode, where, allow_missing=True)
        if x_te.shape[1:3] != x_tr.shape[1:3]:
            x_te = resize_images(x_te, x_tr.shape[1:3], cfg.resize)
        if x_te.shape[-1] != x_tr.shape[-1]:  # one split all-gray, the other RGB
            x_tr, x_te = (np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in (x_tr, x_te))
    return RawData(x_tr, y_tr, x_te, y_te, tuple(class_names), f"{where}:{root}")


# ----------------------------------------------------------------------------- tfds

def load_tfds(cfg: DataConfig) -> RawData:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError("tfds: tensorflow-datasets is not installed; pip install 'jaxnas[data]'") from e
    name, where = cfg.name, "tfds"
    kwargs = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    try:
        builder = tfds.builder(name, **kwargs)
    except tfds.core.DatasetNotFoundError as e:
        hint = suggest(name.split(":")[0], tfds.list_builders(with_community_datasets=False))
        raise DataError(f"{where}: no dataset named {name!r} (looked in the tfds registry and {cfg.data_dir});"
                        f"{hint} check data.name or data.data_dir") from e
    if not builder.is_prepared():
        offline = (f"without internet access, prepare it on a machine that has it (`tfds build {name} --data_dir "
                   f"DIR`), copy DIR here and set data.data_dir: DIR (or use data.source: npz or image_folder)")
        if not cfg.download:
            raise DataError(f"{where}: dataset {name!r} is not prepared in {builder.data_dir}; with internet access "
                            f"set data.download: true; {offline}")
        if not _internet_reachable():
            raise DataError(f"{where}: dataset {name!r} is not prepared in {builder.data_dir} and this machine has no "
                            f"internet access to download it (data.download: true); {offline}")
        try:
            _download_and_prepare(builder)
        except ModuleNotFoundError as e:  # tfds imports some download helpers lazily, undeclared
            raise DataError(f"{where}: downloading {name!r} needs the Python module {e.name!r}, which is not "
                            f"installed: pip install {(e.name or '').replace('_', '-')} (or pip install "
                            f"'jaxnas[data]'); {offline}") from None
        except Exception as e:  # network / checksum / manual-download errors come in many types
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            raise DataError(f"{where}: downloading {name!r} failed ({type(e).__name__}: {detail}); {offline}") from None
    info = builder.info
    for key in (cfg.image_key, cfg.label_key):
        if key not in info.features:
            raise DataError(f"{where}: {name!r} has no feature {key!r};{suggest(key, info.features.keys())} "
                            f"features: {', '.join(info.features.keys())} (set data.image_key / data.label_key)")
    if cfg.train_split not in info.splits:
        raise DataError(f"{where}: {name!r} has no split {cfg.train_split!r}; splits: {', '.join(info.splits)} "
                        "(set data.train_split)")

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex[cfg.image_key], ex[cfg.label_key]))
        shape = info.features[cfg.image_key].shape
        if shape is not None and None not in shape:  # fixed size: one big batch is much faster
            pairs = list(tfds.as_numpy(ds.batch(4096)))
            if not pairs:
                raise DataError("tfds: the split is empty")
            x, y = (np.concatenate(a) for a in zip(*pairs))
        else:
            pairs = list(tfds.as_numpy(ds))
            x = stack_images([p[0] for p in pairs], cfg, f"{where} {name}[{split}]")
            y = np.asarray([p[1] for p in pairs])
        return _check_pair(x, y, f"{where} {name}[{split}]")

    x_tr, y_tr = read(cfg.train_split)
    x_te = y_te = None
    if cfg.test_split in info.splits:
        x_te, y_te = read(cfg.test_split)
        if x_te.shape[1:] != x_tr.shape[1:]:
            x_te = resize_images(x_te, x_tr.shape[1:3], cfg.resize)
    label = info.features[cfg.label_key]
    names = list(getattr(label, "names", None) or []) or None
    return RawData(x_tr, y_tr, x_te, y_te, _class_names(names, y_tr, y_te, where=f"tfds {name}"),
                   f"tfds:{builder.info.full_name}")


def _internet_reachable(host: str = "storage.googleapis.com", timeout: float = 5.0) -> bool:
    """Whether a download can start: tfds otherwise retries for minutes before failing. With a proxy
    configured the answer is left to tfds (True)."""
    import os
    import socket

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_and_prepare(builder) -> None:
    """tfds's download, with its progress bars only on an interactive terminal (in logs they are noise)."""
    import sys

    import tensorflow_datasets as tfds

    if sys.stderr.isatty():
        builder.download_and_prepare()
        return
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)  # tfds's default


LOADERS: dict[str, Callable[[DataConfig], RawData]] = {
    "embedded": load_embedded,
    "fashion_mnist_idx": load_fashion_mnist_idx,
    "tfds": load_tfds,
    "image_folder": load_image_folder,
    "npz": load_npz,
}


def load_raw(cfg: DataConfig) -> RawData:
    """Dispatch to the loader for ``cfg.source``."""
    try:
        loader = LOADERS[cfg.source]
    except KeyError:
        raise DataError(f"data.source: unknown data source {cfg.source!r};{suggest(cfg.source, LOADERS)} "
                        f"valid sources: {', '.join(LOADERS)}") from None
    return loader(cfg)


