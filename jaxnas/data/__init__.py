"""Data loading for jaxnas: sources (embedded Fashion-MNIST subset, IDX, tfds, image folder, npz),
deterministic resumable batching, light augmentation and batch sharding.

    from jaxnas.data import DataConfig, load_dataset
    ds = load_dataset(DataConfig(image_size=32, holdout=0.1))
    for batch in ds.batches("train", 128, seed=0, epoch=0):
        batch["image"], batch["label"]  # float32 NHWC, int32
"""

from .config import SOURCES, DataConfig
from .errors import DataError
from .idx import read_idx, write_idx
from .pipeline import SPLITS, Batch, Dataset, epoch_order, load_dataset, stratified_pick
from .sources import FASHION_MNIST_CLASSES, RawData, embedded_path, load_raw

__all__ = [
    "DataConfig", "DataError", "Dataset", "Batch", "load_dataset", "epoch_order", "stratified_pick",
    "SOURCES", "SPLITS", "FASHION_MNIST_CLASSES", "RawData", "load_raw", "embedded_path",
    "read_idx", "write_idx",
    "make_data_mesh", "data_sharding", "shard_batch", "pad_batch",
]


def __getattr__(name: str):
    # Sharding helpers import jax; keep `import jaxnas.data` light for scripts that only read data.
    if name in ("make_data_mesh", "data_sharding", "shard_batch", "pad_batch", "DATA_AXIS"):
        from . import sharding
        return getattr(sharding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
