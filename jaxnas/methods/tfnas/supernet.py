"""The TF-NAS supernet as pure jax functions over a parameter tree.

Search-time network as the original's `model_search.Network`: BatchNorm without affine parameters and
without running statistics (batch statistics always), PyTorch default initialisation (uniform +-1/sqrt(fan_in)
kernels, zero biases), every candidate op at full size (mid = 4*in or 8*in) with its current width a
0/1 channel mask on the kernels (expand columns, depthwise filters, SE rows/columns, projection rows).  A
masked channel is exactly zero everywhere, so the masked supernet computes what the original's sliced
network computes, and one compiled step serves every width.

Two forwards:

* `path_logits(params, masks, x, ops, depth_w)`: one op per block chosen by the traced int array `ops`
  with `lax.switch`, so a step costs one op per block whatever op was drawn (the weight step).
* `mixed_logits(params, masks, x, op_w, depth_w)`: every op of every block, weighted by `op_w`
  (blocks, 8) (the architecture step).

Both sink-connect depth: a stage's output is Σ_j depth_w[stage][j] * (output after its block j).
Convolutions go through `jaxnas.ops` (shifted-add depthwise and matmul 1x1 forms on CPU).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnas import ops as O
from jaxnas.methods.tfnas.space import NUM_OPS, OPS, BlockPos, TfnasSpace

Params = dict[str, Any]
_ZERO = ((0, 0), (0, 0))
BN_EPS = 1e-5


def batch_norm(y: jax.Array) -> jax.Array:
    """BatchNorm2d(affine=False, track_running_stats=False): normalise with the batch statistics."""
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
    return (y - mean) * lax.rsqrt(var + BN_EPS)


def _uniform(gen: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    bound = 1.0 / np.sqrt(fan_in)
    return gen.uniform(-bound, bound, shape).astype(np.float32)


class Supernet:
    """Parameters, masks and forwards of the TF-NAS supernet of `space`."""

    def __init__(self, space: TfnasSpace, depthwise_impl: str = "auto"):
        self.space = space
        self.impl = O.resolve_depthwise_impl(depthwise_impl)
        self.blocks = space.blocks()
        self.stages = space.stage_blocks()
        self._switches: dict[int, Any] = {}

    # ------------------------------------------------------------------ parameters
    def init(self, seed: int = 0) -> Params:
        """Full-size parameters, PyTorch's default init (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)))."""
        gen = np.random.default_rng(seed)
        s = self.space
        c0, c1, se1 = s.stem_channels, s.second_stem_out, s.second_stem_se
        p: Params = {
            "first_stem": {"kernel": _uniform(gen, (3, 3, s.in_channels, c0), 9 * s.in_channels)},
            "second_stem": {"dw": _uniform(gen, (3, 3, 1, c0), 9),
                            "se_reduce": {"kernel": _uniform(gen, (c0, se1), c0), "bias": np.zeros(se1, np.float32)},
                            "se_expand": {"kernel": _uniform(gen, (se1, c0), se1), "bias": np.zeros(c0, np.float32)},
                            "proj": _uniform(gen, (1, 1, c0, c1), c0)},
        }
        for b in self.blocks:
            block = {}
            for k, op in enumerate(OPS):
                mid = b.max_mid(k)
                q = {"expand": _uniform(gen, (1, 1, b.cin, mid), b.cin),
                     "dw": _uniform(gen, (op.kernel, op.kernel, 1, mid), op.kernel ** 2),
                     "proj": _uniform(gen, (1, 1, mid, b.cout), mid)}
                if op.se:
                    se = b.se(k)
                    q["se_reduce"] = {"kernel": _uniform(gen, (mid, se), mid), "bias": np.zeros(se, np.float32)}
                    q["se_expand"] = {"kernel": _uniform(gen, (se, mid), se), "bias": np.zeros(mid, np.float32)}
                block[f"op{k}"] = q
            p[f"b{b.index}"] = block
        cl = s.stage_blocks()[-1][-1].cout
        p["feature_mix"] = {"kernel": _uniform(gen, (1, 1, cl, s.feature_channels), cl)}
        p["classifier"] = {"kernel": _uniform(gen, (s.feature_channels, s.num_classes), s.feature_channels),
                           "bias": np.zeros(s.num_classes, np.float32)}
        return jax.tree.map(jnp.asarray, p)

    def trainable(self, params: Params, masks: jax.Array) -> Params:
        """A tree like `params`: 1 where a weight belongs to an active channel, 0 where its channel is masked
        (the original trains a sliced network, so masked channels keep their values: no weight decay, no
        momentum)."""
        out: Params = {}
        for name, sub in params.items():
            if not (name.startswith("b") and name[1:].isdigit()):
                out[name] = jax.tree.map(jnp.ones_like, sub)
                continue
            i = int(name[1:])
            block = {}
            for k in range(NUM_OPS):
                m = masks[i, k, :self.blocks[i].max_mid(k)]
                q = sub[f"op{k}"]
                t = {"expand": jnp.broadcast_to(m, q["expand"].shape), "dw": jnp.broadcast_to(m, q["dw"].shape),
                     "proj": jnp.broadcast_to(m[:, None], q["proj"].shape)}
                if "se_reduce" in q:
                    t["se_reduce"] = {"kernel": jnp.broadcast_to(m[:, None], q["se_reduce"]["kernel"].shape),
                                      "bias": jnp.ones_like(q["se_reduce"]["bias"])}
                    t["se_expand"] = {"kernel": jnp.broadcast_to(m, q["se_expand"]["kernel"].shape), "bias": m}
                block[f"op{k}"] = t
            out[name] = block
        return out

    # ------------------------------------------------------------------ layers
    def _conv1x1(self, x, w):
        return O.conv2d(x, w, 1, _ZERO, self.impl)

    def _dw(self, x, w, stride):
        k = w.shape[0]
        return O.depthwise_conv2d(x, w, stride, ((k // 2, k // 2), (k // 2, k // 2)), self.impl)

    @staticmethod
    def _se(y, p, act, mask=None):
        s = jnp.mean(y, axis=(1, 2))
        wr, we, be = p["se_reduce"]["kernel"], p["se_expand"]["kernel"], p["se_expand"]["bias"]
        if mask is not None:
            wr, we, be = wr * mask[:, None], we * mask, be * mask
        s = O.activation(act, s @ wr + p["se_reduce"]["bias"])
        return y * jax.nn.sigmoid(s @ we + be)[:, None, None, :]

    def op_forward(self, b: BlockPos, k: int, p: Params, mask: jax.Array, x: jax.Array) -> jax.Array:
        """Candidate op k of block b at full size with `mask` (max_mid,) on its mid channels."""
        op = OPS[k]
        y = O.activation(b.act, batch_norm(self._conv1x1(x, p["expand"] * mask)))
        y = O.activation(b.act, batch_norm(self._dw(y, p["dw"] * mask, b.stride)))
        if op.se:
            y = self._se(y, p, b.act, mask)
        y = batch_norm(self._conv1x1(y, p["proj"] * mask[:, None]))
        return x + y if b.residual else y

    def _stems(self, p: Params, x: jax.Array) -> jax.Array:
        s = self.space
        w = p["first_stem"]["kernel"]
        x = jax.nn.relu(batch_norm(O.conv2d(x, w, s.stem_stride, ((1, 1), (1, 1)), self.impl)))
        q = p["second_stem"]
        y = jax.nn.relu(batch_norm(self._dw(x, q["dw"], 1)))  # mid == in: no expand conv
        y = self._se(y, q, "relu")
        return batch_norm(self._conv1x1(y, q["proj"]))

    def _head(self, p: Params, x: jax.Array) -> jax.Array:
        x = O.activation("swish", batch_norm(self._conv1x1(x, p["feature_mix"]["kernel"])))
        x = jnp.mean(x, axis=(1, 2))
        return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]

    def _stages(self, x: jax.Array, depth_w, block_fn) -> jax.Array:
        for si, blocks in enumerate(self.stages):
            outs = []
            for b in blocks:
                x = block_fn(b, x)
                outs.append(x)
            w = depth_w[si]
            x = sum(w[j] * o for j, o in enumerate(outs)) if len(outs) > 1 else w[0] * outs[0]
        return x

    # ------------------------------------------------------------------ forwards
    def path_logits(self, params: Params, masks: jax.Array, x: jax.Array, ops: jax.Array, depth_w) -> jax.Array:
        """Single path: block i runs op `ops[i]` (traced) through lax.switch; depth sink-connected."""
        def block(b: BlockPos, h):
            return self._switch(b)(ops[b.index], params[f"b{b.index}"], masks[b.index], h)

        return self._head(params, self._stages(self._stems(params, x), depth_w, block))

    def _switch(self, b: BlockPos):
        """`f(op, block_params, block_masks, x)`: op `op` of block b, one op computed forward and backward.

        Differentiating through `lax.switch` makes every branch emit (zero-filled) residuals of every other
        branch; here the backward pass is its own switch that recomputes the chosen op's forward and takes
        its VJP, so the residuals are the block input alone (measured: 1.6x -> 1.15x of a fixed path)."""
        if b.index in self._switches:
            return self._switches[b.index]

        def fwd_k(k, p, m, h):
            return self.op_forward(b, k, p[f"op{k}"], m[k, :b.max_mid(k)], h)

        def bwd_k(k, p, m, h, g):
            _, vjp = jax.vjp(lambda p, h: fwd_k(k, p, m, h), p, h)
            return vjp(g)

        @jax.custom_vjp
        def run(op, p, m, h):
            return lax.switch(op, [functools.partial(fwd_k, k) for k in range(NUM_OPS)], p, m, h)

        def run_fwd(op, p, m, h):
            return run(op, p, m, h), (op, p, m, h)

        def run_bwd(res, g):
            op, p, m, h = res
            dp, dh = lax.switch(op, [functools.partial(bwd_k, k) for k in range(NUM_OPS)], p, m, h, g)
            return None, dp, jnp.zeros_like(m), dh

        run.defvjp(run_fwd, run_bwd)
        self._switches[b.index] = run
        return run

    def mixed_logits(self, params: Params, masks: jax.Array, x: jax.Array, op_w: jax.Array, depth_w) -> jax.Array:
        """Every op of every block, weighted by `op_w` (blocks, 8); depth sink-connected."""
        def block(b: BlockPos, h):
            p = params[f"b{b.index}"]
            return sum(op_w[b.index, k] * self.op_forward(b, k, p[f"op{k}"], masks[b.index, k, :b.max_mid(k)], h)
                       for k in range(NUM_OPS))

        return self._head(params, self._stages(self._stems(params, x), depth_w, block))

    def stage_latency(self, op_w: jax.Array, op_lat: jax.Array, depth_w) -> jax.Array:
        """Σ_stages Σ_j depth_w[s][j] * (lat_1 + ... + lat_j), lat_i = Σ_k op_w[i, k] * op_lat[i, k]."""
        block_lat = jnp.sum(op_w * op_lat, axis=-1)
        total = 0.0
        for si, blocks in enumerate(self.stages):
            cum = jnp.cumsum(jnp.stack([block_lat[b.index] for b in blocks]))
            total = total + jnp.sum(depth_w[si] * cum)
        return total
