"""Numpy image transforms on uint8 NHWC batches: resize/pad, channel conversion, augmentation."""

from __future__ import annotations

import numpy as np

from .errors import DataError

_CHUNK = 2048  # images per chunk when resizing a whole split, bounds float32 temporaries


def pick_resize_method(src_hw: tuple[int, int], dst_hw: tuple[int, int], method: str) -> str:
    """Resolve 'auto': zero-pad when growing by at most a quarter of the size (28->32), else bilinear."""
    if method != "auto":
        return method
    grows = all(d >= s for s, d in zip(src_hw, dst_hw))
    small = all(4 * (d - s) <= s for s, d in zip(src_hw, dst_hw))
    return "pad" if grows and small else "bilinear"


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) triangle-filter weights; widened when shrinking so downsampling is antialiased."""
    scale = n_out / n_in
    width = max(1.0, 1.0 / scale)
    centers = (np.arange(n_out) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centers[:, None]) / width)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(x: np.ndarray, size: tuple[int, int], method: str = "auto") -> np.ndarray:
    """Resize uint8 NHWC images to ``size`` (H, W) by centred zero padding or bilinear interpolation."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    method = pick_resize_method((h, w), size, method)
    th, tw = size
    if method == "pad":
        if th < h or tw < w:
            raise DataError(f"resize: cannot pad {h}x{w} images down to {th}x{tw}; use resize: bilinear")
        top, left = (th - h) // 2, (tw - w) // 2
        out = np.zeros((x.shape[0], th, tw, x.shape[3]), x.dtype)
        out[:, top:top + h, left:left + w] = x
        return out
    if method != "bilinear":
        raise DataError(f"resize: unknown method {method!r}; use auto, pad or bilinear")
    wh, ww = _linear_weights(h, th), _linear_weights(w, tw)
    out = np.empty((x.shape[0], th, tw, x.shape[3]), np.uint8)
    for i in range(0, x.shape[0], _CHUNK):
        chunk = x[i:i + _CHUNK].astype(np.float32)
        r = np.einsum("oh,nhwc,pw->nopc", wh, chunk, ww, optimize=True)
        out[i:i + _CHUNK] = np.clip(np.rint(r), 0, 255).astype(np.uint8)
    return out


def to_gray(x: np.ndarray) -> np.ndarray:
    """RGB uint8 NHWC -> 1-channel luma (ITU-R 601 weights)."""
    if x.shape[-1] == 1:
        return x
    luma = x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Per-image random crop of the original size from the zero-padded batch."""
    if pad <= 0:
        return x
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, size=n)
    ox = rng.integers(0, 2 * pad + 1, size=n)
    rows = (oy[:, None] + np.arange(h))[:, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def random_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip each image horizontally with probability 1/2."""
    mask = rng.random(x.shape[0]) < 0.5
    return np.where(mask[:, None, None, None], x[:, :, ::-1], x)


def default_crop_padding(image_hw: tuple[int, int]) -> int:
    """4 px per 32 px of the smaller side (the CIFAR recipe), at least 1."""
    return max(1, int(round(4 * min(image_hw) / 32)))


def augment_batch(x: np.ndarray, rng: np.random.Generator, *, crop_padding: int, flip: bool) -> np.ndarray:
    """Standard light augmentation: random crop with zero padding, then optional horizontal flip."""
    x = random_crop(x, crop_padding, rng)
    if flip:
        x = random_flip(x, rng)
    return x
