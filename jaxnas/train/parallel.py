"""Data parallelism with `jax.sharding`: a 1-D mesh with axis 'data'.

State is replicated and batches are split along their leading axis; under jit the
compiler inserts the all-reduces, so BN batch statistics and gradients are those
of the global batch, exactly as on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnas.data.errors import DataError
from jaxnas.data.sharding import data_sharding, make_data_mesh as make_mesh


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises DataError (a ValueError) unless the mesh's device count divides `batch_size`."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise DataError(
            f"{what}={batch_size} must be a positive multiple of the device count ({n}) "
            f"for data-parallel training; use e.g. {what}={max(n, batch_size - batch_size % n)}")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A copy of `tree` on every device of the mesh (a copy, so donation never frees the caller's arrays)."""
    # device_put(may_alias=False) can still alias the shard already on a target device; copy explicitly.
    return jax.tree.map(lambda x: jnp.copy(x) if isinstance(x, jax.Array) else x,
                        jax.device_put(tree, replicated(mesh)))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Splits every array of `batch` along its leading (batch) axis over the mesh."""
    return jax.device_put(batch, data_sharding(mesh))
