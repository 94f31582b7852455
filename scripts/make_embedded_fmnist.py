#!/usr/bin/env python
"""Build jaxnas/data/embedded/fashion_mnist_subset.npz: a class-balanced Fashion-MNIST subset.

Deterministic: a fixed seed picks the same examples from the same IDX files every time, so
`--check` can verify a shipped file against a fresh build (array contents; the zip container's
timestamps differ between runs).

    python scripts/make_embedded_fmnist.py                    # rebuild
    python scripts/make_embedded_fmnist.py --check            # verify the shipped file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxnas.data.idx import read_idx  # noqa: E402
from jaxnas.data.sources import FASHION_MNIST_CLASSES  # noqa: E402

SEED = 20240917
TRAIN_PER_CLASS = 1200
TEST_PER_CLASS = 300
OUT = ROOT / "jaxnas" / "data" / "embedded" / "fashion_mnist_subset.npz"
LICENSE_TEXT = (
    "The MIT License (MIT) Copyright (c) 2017 Zalando SE, https://tech.zalando.com\n\n"
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files (the \"Software\"), to deal in the Software without restriction, including "
    "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell "
    "copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
    "following conditions:\n\nThe above copyright notice and this permission notice shall be included in all "
    "copies or substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF "
    "ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A "
    "PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY "
    "CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF "
    "OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."
)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of each class, returned in a seeded random (class-interleaved) order."""
    picks = []
    for c in range(len(FASHION_MNIST_CLASSES)):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has only {len(pool)} examples, {per_class} requested")
        picks.append(np.sort(rng.choice(pool, per_class, replace=False)))
    idx = np.concatenate(picks)
    return idx[rng.permutation(len(idx))]


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ("x_train", "y_train", "x_test", "y_test"):
        h.update(k.encode())
        h.update(str(arrays[k].shape).encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def build(src: Path) -> dict[str, np.ndarray]:
    paths = {k: src / v for k, v in FILES.items()}
    x_tr, y_tr = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    x_te, y_te = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    rng = np.random.default_rng(SEED)
    tr = balanced_indices(y_tr, TRAIN_PER_CLASS, rng)
    te = balanced_indices(y_te, TEST_PER_CLASS, rng)
    arrays = {
        "x_train": x_tr[tr][..., None].astype(np.uint8),
        "y_train": y_tr[tr].astype(np.uint8),
        "x_test": x_te[te][..., None].astype(np.uint8),
        "y_test": y_te[te].astype(np.uint8),
        # positions in the original files, so every example can be traced back
        "train_index": tr.astype(np.uint16),
        "test_index": te.astype(np.uint16),
        "class_names": np.asarray(FASHION_MNIST_CLASSES),
    }
    meta = {
        "name": "fashion_mnist_subset",
        "description": f"Class-balanced subset of Fashion-MNIST: {TRAIN_PER_CLASS}/class from the official "
                       f"train split, {TEST_PER_CLASS}/class from the official t10k test split",
        "source": "https://github.com/zalandoresearch/fashion-mnist via Debian package dataset-fashion-mnist "
                  "(0.0~git20200523.55506a9-1)",
        "source_files": {v: hashlib.sha256(paths[k].read_bytes()).hexdigest() for k, v in FILES.items()},
        "license": "MIT (Expat)",
        "license_text": LICENSE_TEXT,
        "copyright": "Copyright (c) 2017 Zalando SE, https://tech.zalando.com",
        "citation": "Xiao, Rasul, Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine "
                    "Learning Algorithms. arXiv:1708.07747, 2017",
        "generator": "scripts/make_embedded_fmnist.py",
        "seed": SEED,
        "train_per_class": TRAIN_PER_CLASS,
        "test_per_class": TEST_PER_CLASS,
    }
    meta["content_sha256"] = content_sha256(arrays)
    arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    return arrays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                    help="directory with the four Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="verify --out against a fresh build instead of writing")
    args = ap.parse_args(argv)
    arrays = build(args.src)
    if args.check:
        with np.load(args.out, allow_pickle=False) as z:
            shipped = {k: z[k] for k in z.files}
        bad = [k for k in arrays if k not in shipped or not np.array_equal(arrays[k], shipped[k])]
        print("OK: shipped file matches a fresh build" if not bad else f"MISMATCH in {bad}")
        return 1 if bad else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    meta = json.loads(str(arrays["meta"]))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): train {len(arrays['y_train'])}, "
          f"test {len(arrays['y_test'])}, content sha256 {meta['content_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
