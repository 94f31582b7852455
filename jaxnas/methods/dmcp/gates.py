"""Markov channel gates over a supernet's width groups (DMCP §3.1-3.2).

Every prunable width group of C channels (C at the supernet's maximum width) is split into a kept
minimum and ``n`` equal channel groups of ``offset`` channels (the original `AlphaLayer`)::

    offset = int(width_offset * C / max_width)
    n      = int((max_width - min_width) / width_offset + 1e-4)
    min_ch = C - n * offset                      # candidates: min_ch + k * offset, k = 0..n

Channel group k (1-based) can only be kept if group k-1 is kept: ``P(keep k | keep k-1) = sigmoid(a_k)``,
so the marginals are cumulative products and ``E[c] = min_ch + offset * sum_k P(keep k)``.

One `DMCPSpace` serves every width group of the spec; groups whose channel count is too small for a
non-empty channel group (offset 0) or that the user excludes stay at full width.  Architecture
parameters are a dict {group: (n,) array}; the group names are the spec's `Conv.width` names, so a
residual chain shares one parameter (as the original shares one AlphaLayer object).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.spec import ArchSpec, SpecError
from jaxnas.supernet import prefix_mask, width_groups

Alphas = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GroupLayout:
    """Channel-group layout of one width group."""

    name: str
    channels: int  # C at the supernet's maximum width
    min_ch: int
    offset: int
    n: int  # number of prunable channel groups (0: fixed)

    @property
    def prunable(self) -> bool:
        return self.n > 0

    def width(self, k: int) -> int:
        """Channels when the first `k` channel groups are kept."""
        return self.min_ch + int(k) * self.offset

    def group_ids(self) -> np.ndarray:
        """(C,) int: 0 for the always-kept channels, k for channels of channel group k."""
        c = np.arange(self.channels)
        if not self.prunable:
            return np.zeros(self.channels, np.int32)
        return np.where(c < self.min_ch, 0, 1 + (c - self.min_ch) // self.offset).astype(np.int32)


def layout(name: str, channels: int, min_width: float, max_width: float, width_offset: float,
           multiple: int = 1) -> GroupLayout:
    """The original `_get_ch_indice` for one group; with `multiple` > 1 (and `channels` a multiple of
    it) the group size is rounded to a multiple of `multiple` (at least one) and at most as many
    groups are kept as leave `multiple` channels, so that every candidate width is a multiple too."""
    offset = int(width_offset * channels / max_width)
    n = int((max_width - min_width) / width_offset + 1e-4)
    if multiple > 1 and channels % multiple == 0:
        # Runtimes block channels (onnxruntime's NCHWc by 8/16, GPU tensor cores by 8): an unaligned
        # width falls off the fast kernels and can run slower than the full layer.
        offset = max(multiple, int(round(offset / multiple)) * multiple)
        n = min(n, (channels - multiple) // offset)
    if offset < 1 or n < 1:
        return GroupLayout(name, channels, channels, 0, 0)
    return GroupLayout(name, channels, channels - n * offset, offset, n)


class DMCPSpace:
    """Width groups of a supernet spec with their channel-group layouts and Markov gates."""

    def __init__(self, spec: ArchSpec, *, min_width: float = 0.1, max_width: float = 1.0,
                 width_offset: float = 0.1, exclude: Sequence[str] = (), channel_multiple: int = 1):
        if not 0 < min_width < max_width:
            raise SpecError(f"DMCP needs 0 < min_width < max_width, got {min_width} and {max_width}")
        if not 0 < width_offset <= max_width - min_width:
            raise SpecError(f"DMCP width_offset {width_offset} must be in (0, max_width - min_width]")
        if channel_multiple < 1:
            raise SpecError(f"DMCP channel_multiple must be >= 1, got {channel_multiple}")
        groups = width_groups(spec)
        unknown = sorted(set(exclude) - set(groups))
        if unknown:
            raise SpecError(f"exclude names unknown width group(s) {unknown}; known: {sorted(groups)}")
        self.spec = spec
        self.min_width, self.max_width, self.width_offset = min_width, max_width, width_offset
        self.channel_multiple = channel_multiple
        self.layouts: dict[str, GroupLayout] = {}
        for g, c in groups.items():
            lay = layout(g, c, min_width, max_width, width_offset, channel_multiple)
            self.layouts[g] = GroupLayout(g, c, c, 0, 0) if g in exclude else lay
        self.prunable: tuple[str, ...] = tuple(g for g, lay in self.layouts.items() if lay.prunable)
        if not self.prunable:
            raise SpecError(f"{spec.name}: no width group can be pruned with min_width={min_width}, "
                            f"max_width={max_width}, width_offset={width_offset}")
        self._gids = {g: jnp.asarray(self.layouts[g].group_ids()) for g in self.prunable}

    # ----------------------------------------------------------------------------- parameters
    def init_alphas(self, value: Any = 0.0) -> dict[str, jax.Array]:
        """Architecture parameters, all `value` (the original uses 0: P(keep) = 1/2 per step)."""
        return {g: jnp.full((self.layouts[g].n,), value, jnp.float32) for g in self.prunable}

    def marginals(self, alphas: Alphas) -> dict[str, jax.Array]:
        """{group: (n,) P(keep channel group k)} = cumulative products of sigmoid(alpha)."""
        return {g: jnp.cumprod(jax.nn.sigmoid(alphas[g])) for g in self.prunable}

    def expected_channels(self, alphas: Alphas) -> dict[str, jax.Array]:
        """{group: E[c]} for every width group (fixed groups: their channel count)."""
        marg = self.marginals(alphas)
        return {g: lay.min_ch + lay.offset * jnp.sum(marg[g]) if lay.prunable else jnp.asarray(float(lay.channels))
                for g, lay in self.layouts.items()}

    # ---------------------------------------------------------------------------------- masks
    def soft_masks(self, alphas: Alphas) -> dict[str, jax.Array]:
        """(C,) masks: channel group k scaled by P(keep k), the first min_ch channels by 1."""
        marg = self.marginals(alphas)
        return {g: jnp.concatenate([jnp.ones((1,), jnp.float32), marg[g]])[self._gids[g]]
                for g in self.prunable}

    def masks_from_k(self, ks: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Hard prefix masks keeping the first `ks[g]` channel groups (traceable)."""
        return {g: (self._gids[g] <= ks[g]).astype(jnp.float32) for g in self.prunable}

    def hard_masks(self, channels: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Prefix masks (numpy) keeping `channels[g]` channels of each prunable group."""
        out = {}
        for g in self.prunable:
            c = int(channels.get(g, self.layouts[g].channels))
            if not 1 <= c <= self.layouts[g].channels:
                raise ValueError(f"{g}: {c} channels outside 1..{self.layouts[g].channels}")
            out[g] = prefix_mask(self.layouts[g].channels, c)
        return out

    # ------------------------------------------------------------------------------- sampling
    def full_k(self) -> dict[str, int]:
        return {g: self.layouts[g].n for g in self.prunable}

    def min_k(self) -> dict[str, int]:
        return {g: 0 for g in self.prunable}

    def channels_of(self, ks: Mapping[str, Any]) -> dict[str, int]:
        """{group: channels} for every width group given kept channel groups of the prunable ones."""
        return {g: lay.width(int(ks[g])) if lay.prunable else lay.channels for g, lay in self.layouts.items()}

    def random_k(self, key: jax.Array) -> dict[str, jax.Array]:
        """Uniform non-uniform width (each group independently one of min_ch + k*offset), traceable."""
        keys = jax.random.split(key, len(self.prunable))
        return {g: jax.random.randint(k, (), 0, self.layouts[g].n + 1) for g, k in zip(self.prunable, keys)}

    def markov_k(self, alphas: Alphas, key: jax.Array) -> dict[str, jax.Array]:
        """Direct sampling from the Markov chain: keep adding groups while U <= sigmoid(alpha_k)."""
        keys = jax.random.split(key, len(self.prunable))
        return {g: jnp.sum(jnp.cumprod(jax.random.uniform(k, (self.layouts[g].n,)) <= jax.nn.sigmoid(alphas[g])))
                for g, k in zip(self.prunable, keys)}

    def markov_k_numpy(self, alphas: Alphas, rng: np.random.Generator, num: int) -> dict[str, np.ndarray]:
        """`num` direct samples at once: {group: (num,) kept channel groups}."""
        ps = {g: 1.0 / (1.0 + np.exp(-np.asarray(alphas[g], np.float64))) for g in self.prunable}
        return {g: np.cumprod(rng.random((num, p.size)) <= p, axis=1).sum(axis=1) for g, p in ps.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(lay) for lay in self.layouts.values()]
