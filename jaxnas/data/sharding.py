"""Placing host (numpy) batches on devices, split along the batch axis over a 1-D 'data' mesh."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .errors import DataError

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``) with axis name 'data'."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise DataError("make_data_mesh: no devices given")
    return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,))


def data_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """NamedSharding splitting the leading (batch) axis over the mesh's 'data' axis."""
    mesh = make_data_mesh() if mesh is None else mesh
    if DATA_AXIS not in mesh.axis_names:
        raise DataError(f"data_sharding: mesh axes are {mesh.axis_names}; it needs an axis named {DATA_AXIS!r}")
    return NamedSharding(mesh, P(DATA_AXIS))


def _num_batch_shards(sharding: jax.sharding.Sharding, ndim: int) -> int:
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * ndim
        axes = spec[0]
        if axes is None:
            return 1
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        return int(np.prod([sharding.mesh.shape[a] for a in axes]))
    return len(sharding.device_set)


def shard_batch(batch: Any, mesh_or_sharding: Mesh | jax.sharding.Sharding | None = None) -> Any:
    """Put every array of ``batch`` (a pytree, e.g. ``{"image": x, "label": y}``) on devices, split along axis 0.

    The batch size must be divisible by the number of devices on the 'data' axis.
    """
    sharding = (mesh_or_sharding if isinstance(mesh_or_sharding, jax.sharding.Sharding)
                else data_sharding(mesh_or_sharding))
    leaves = jax.tree.leaves(batch)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise DataError("shard_batch: every array in the batch needs a leading batch axis")
    if len(sizes) > 1:
        raise DataError(f"shard_batch: arrays in the batch disagree on the batch size: {sorted(sizes)}")
    for leaf in leaves:
        k = _num_batch_shards(sharding, np.ndim(leaf))
        if np.shape(leaf)[0] % k:
            raise DataError(f"shard_batch: batch size {np.shape(leaf)[0]} is not divisible by the {k} devices of "
                            f"the {DATA_AXIS!r} mesh axis; use a batch size that is a multiple of {k} (or pad the "
                            "last eval batch with pad_batch)")
    if jax.process_count() > 1:  # each host holds only its slice of the global batch
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch)
    return jax.device_put(batch, sharding)


def pad_batch(batch: Any, multiple: int) -> tuple[Any, int]:
    """Zero-pad every array of ``batch`` along axis 0 to a multiple of ``multiple``; return (padded, n_valid).

    Lets the last, partial eval batch be sharded; callers mask out rows >= n_valid.
    """
    leaves = jax.tree.leaves(batch)
    n = int(np.shape(leaves[0])[0]) if leaves else 0
    target = -(-n // int(multiple)) * int(multiple)
    if target == n:
        return batch, n
    return jax.tree.map(lambda a: np.pad(np.asarray(a), [(0, target - n)] + [(0, 0)] * (np.ndim(a) - 1)), batch), n
