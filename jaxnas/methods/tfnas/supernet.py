"""The TF-NAS supernet as pure jax functions over a parameter tree.

Search-time network as the original's `model_search.Network`: BatchNorm without affine parameters and
without running statistics (batch statistics always), PyTorch's default initialisation (U(+-1/sqrt(fan_in))
kernels, zero biases), every candidate op at full size (mid = 4*in for e3, 8*in for e6) with its current
width a 0/1 channel mask on the kernels (expand columns, depthwise filters, SE rows/columns, projection
rows).  A masked channel is exactly zero everywhere, so the masked supernet computes what the original's
sliced network computes, and one compiled step serves every width.

Op layout.  The 8 ops of a block form two groups by expansion ratio, e3 = [k3e3, k5e3, k3e3se, k5e3se] and
e6 = [k3e6, k5e6, k3e6se, k5e6se] (op k is member k // 2 of group k % 2).  Within a group the 4 ops share
one computation: their parameters are stacked on a leading axis, a 3x3 depthwise kernel sits in the
centre of a 5x5 one whose outer ring is masked to zero (same output: padding 2 instead of 1), and the SE
(width in for e3, 2*in for e6, as the original) is gated by a 0/1 flag (gate = flag * sigmoid(.) + 1 -
flag: an op without SE passes its features unchanged, and its SE weights stay zero).  Each op is thus
computed exactly, and a block compiles two op bodies instead of eight (XLA:CPU compile time grows with
the number of bodies; measured here 8 -> 2 bodies: minutes -> a quarter of it).

Forwards:

* `path_logits(params, masks, x, ops, depth_w)`: one op per block, chosen by the traced int array `ops`:
  `lax.switch` on its group runs that group's body on the chosen member's parameters, so a step costs one
  op per block (a k3 op pays the 5x5 depthwise taps, a non-SE op the SE's pooled matmuls).  Its backward
  pass is a second switch that recomputes the chosen op and takes its VJP (differentiating through the
  switch made every branch emit zero-filled residuals of the other; measured 1.5x -> 1.15x of a fixed
  path).  Used by the weight steps.
* `mixed_logits(params, masks, x, op_w, depth_w)`: all 8 ops of every block (each group's body vmapped
  over its 4 members), weighted by `op_w` (blocks, 8).  Used by the architecture step.

Both sink-connect depth: a stage's output is Σ_j depth_w[stage][j] * (output after its block j).
Convolutions go through `jaxnas.ops` (shifted-add depthwise and matmul 1x1 forms on CPU).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnas import ops as O
from jaxnas.latency.spaces import NUM_OPS, OPS, BlockPos, TfnasSpace

Params = dict[str, Any]
_ZERO = ((0, 0), (0, 0))
BN_EPS = 1e-5
KMAX = 5
GROUPS = ("e3", "e6")
GROUP_OPS = ((0, 2, 4, 6), (1, 3, 5, 7))  # op indices of each group, in member order (op k = member k // 2)


def batch_norm(y: jax.Array) -> jax.Array:
    """BatchNorm2d(affine=False, track_running_stats=False): normalise with the batch statistics."""
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
    return (y - mean) * lax.rsqrt(var + BN_EPS)


def _uniform(gen: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    bound = 1.0 / np.sqrt(fan_in)
    return gen.uniform(-bound, bound, shape).astype(np.float32)


def group_mid(b: BlockPos, g: int) -> int:
    return (4, 8)[g] * b.cin


def op_member(op: int) -> tuple[int, int]:
    """(group, member) of op `op`."""
    return op % 2, op // 2


def kernel_rings() -> np.ndarray:
    """(4, 5, 5, 1, 1): 1 inside each member's kernel window (k3: the centre 3x3)."""
    r = np.zeros((4, KMAX, KMAX, 1, 1), np.float32)
    for m, op in enumerate(GROUP_OPS[0]):
        k = OPS[op].kernel
        o = (KMAX - k) // 2
        r[m, o:o + k, o:o + k] = 1.0
    return r


SE_FLAGS = np.array([float(OPS[op].se) for op in GROUP_OPS[0]], np.float32)  # the same for both groups


class Supernet:
    """Parameters, masks and forwards of the TF-NAS supernet of `space`."""

    def __init__(self, space: TfnasSpace, depthwise_impl: str = "auto"):
        self.space = space
        self.impl = O.resolve_depthwise_impl(depthwise_impl)
        self.blocks = space.blocks()
        self.stages = space.stage_blocks()
        self.rings = jnp.asarray(kernel_rings())
        self.se_flags = jnp.asarray(SE_FLAGS)
        self._switches: dict[int, Any] = {}

    # ------------------------------------------------------------------ parameters
    def init(self, seed: int = 0) -> Params:
        """Full-size parameters, PyTorch's default init for each op at its own kernel size and width."""
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
            for g, name in enumerate(GROUPS):
                mid, se = group_mid(b, g), (1, 2)[g] * b.cin  # SE width: in for e3, 2*in for e6
                q = {"expand": np.zeros((4, 1, 1, b.cin, mid), np.float32),
                     "dw": np.zeros((4, KMAX, KMAX, 1, mid), np.float32),
                     "proj": np.zeros((4, 1, 1, mid, b.cout), np.float32),
                     "se_reduce": {"kernel": np.zeros((4, mid, se), np.float32), "bias": np.zeros((4, se), np.float32)},
                     "se_expand": {"kernel": np.zeros((4, se, mid), np.float32), "bias": np.zeros((4, mid), np.float32)}}
                for m, op in enumerate(GROUP_OPS[g]):
                    k = OPS[op].kernel
                    o = (KMAX - k) // 2
                    q["expand"][m] = _uniform(gen, (1, 1, b.cin, mid), b.cin)
                    q["dw"][m, o:o + k, o:o + k] = _uniform(gen, (k, k, 1, mid), k * k)
                    q["proj"][m] = _uniform(gen, (1, 1, mid, b.cout), mid)
                    if OPS[op].se:
                        q["se_reduce"]["kernel"][m] = _uniform(gen, (mid, se), mid)
                        q["se_expand"]["kernel"][m] = _uniform(gen, (se, mid), se)
                block[name] = q
            p[f"b{b.index}"] = block
        cl = s.stage_blocks()[-1][-1].cout
        p["feature_mix"] = {"kernel": _uniform(gen, (1, 1, cl, s.feature_channels), cl)}
        p["classifier"] = {"kernel": _uniform(gen, (s.feature_channels, s.num_classes), s.feature_channels),
                           "bias": np.zeros(s.num_classes, np.float32)}
        return jax.tree.map(jnp.asarray, p)

    def group_masks(self, masks: jax.Array, b: BlockPos, g: int) -> jax.Array:
        """(4, mid) channel masks of group g's members in block b."""
        return masks[b.index, np.asarray(GROUP_OPS[g]), :group_mid(b, g)]

    def trainable(self, params: Params, masks: jax.Array) -> Params:
        """A tree like `params`: 1 where a weight belongs to an active channel of its op, 0 elsewhere (masked
        channels, the ring around a 3x3 kernel, the SE of an op without SE).  The original trains a sliced
        network, so masked channels keep their values: no update, no weight decay, no momentum."""
        out: Params = {}
        for name, sub in params.items():
            if not (name.startswith("b") and name[1:].isdigit()):
                out[name] = jax.tree.map(jnp.ones_like, sub)
                continue
            b = self.blocks[int(name[1:])]
            block = {}
            for g, gname in enumerate(GROUPS):
                m = self.group_masks(masks, b, g)  # (4, mid)
                f = self.se_flags[:, None]
                q = sub[gname]
                block[gname] = {
                    "expand": jnp.broadcast_to(m[:, None, None, None, :], q["expand"].shape),
                    "dw": m[:, None, None, None, :] * self.rings,
                    "proj": jnp.broadcast_to(m[:, None, None, :, None], q["proj"].shape),
                    "se_reduce": {"kernel": jnp.broadcast_to((m * f)[:, :, None], q["se_reduce"]["kernel"].shape),
                                  "bias": jnp.broadcast_to(f, q["se_reduce"]["bias"].shape)},
                    "se_expand": {"kernel": jnp.broadcast_to((m * f)[:, None, :], q["se_expand"]["kernel"].shape),
                                  "bias": m * f}}
            out[name] = block
        return out

    def dw_kernel(self, params: Params, b: int, op: int) -> np.ndarray:
        """The full-size (k, k, 1, max_mid) depthwise kernel of op `op` in block `b` (for L1 ranking)."""
        g, m = op_member(op)
        k = OPS[op].kernel
        o = (KMAX - k) // 2
        # index on the host: indexing the device array compiles a slice per shape (minutes on a loaded CPU)
        w = np.asarray(jax.device_get(params[f"b{b}"][GROUPS[g]]["dw"]))[m]
        return w[o:o + k, o:o + k]

    # ------------------------------------------------------------------ layers
    def _conv1x1(self, x, w):
        return O.conv2d(x, w, 1, _ZERO, self.impl)

    def _dw(self, x, w, stride):
        k = w.shape[0]
        return O.depthwise_conv2d(x, w, stride, ((k // 2, k // 2), (k // 2, k // 2)), self.impl)

    def op_body(self, b: BlockPos, p: Params, ring: jax.Array, se_flag: jax.Array, mask: jax.Array,
                x: jax.Array) -> jax.Array:
        """One op of block b from its (unstacked) group parameters `p`: exactly the op given its kernel ring
        and SE flag, at full size with `mask` (mid,) on its channels."""
        y = O.activation(b.act, batch_norm(self._conv1x1(x, p["expand"] * mask)))
        y = O.activation(b.act, batch_norm(self._dw(y, p["dw"] * (ring * mask), b.stride)))
        s = jnp.mean(y, axis=(1, 2))
        s = O.activation(b.act, s @ (p["se_reduce"]["kernel"] * mask[:, None]) + p["se_reduce"]["bias"])
        gate = jax.nn.sigmoid(s @ (p["se_expand"]["kernel"] * mask) + p["se_expand"]["bias"] * mask)
        y = y * (se_flag * gate + (1.0 - se_flag))[:, None, None, :]
        y = batch_norm(self._conv1x1(y, p["proj"] * mask[:, None]))
        return x + y if b.residual else y

    def _member(self, b: BlockPos, g: int, block_p: Params, member, masks_b: jax.Array, op, x):
        p = jax.tree.map(lambda a: a[member], block_p[GROUPS[g]])
        return self.op_body(b, p, self.rings[member], self.se_flags[member], masks_b[op, :group_mid(b, g)], x)

    def _stems(self, p: Params, x: jax.Array) -> jax.Array:
        s = self.space
        w = p["first_stem"]["kernel"]
        x = jax.nn.relu(batch_norm(O.conv2d(x, w, s.stem_stride, ((1, 1), (1, 1)), self.impl)))
        q = p["second_stem"]
        y = jax.nn.relu(batch_norm(self._dw(x, q["dw"], 1)))  # mid == in: no expand conv
        t = jnp.mean(y, axis=(1, 2))
        t = jax.nn.relu(t @ q["se_reduce"]["kernel"] + q["se_reduce"]["bias"])
        y = y * jax.nn.sigmoid(t @ q["se_expand"]["kernel"] + q["se_expand"]["bias"])[:, None, None, :]
        y = batch_norm(self._conv1x1(y, q["proj"]))
        return x + y if s.stem_channels == s.second_stem_out else y  # MBInvertedResBlock's residual rule

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
            x = sum(w[j] * o for j, o in enumerate(outs))
        return x

    # ------------------------------------------------------------------ forwards
    def path_logits(self, params: Params, masks: jax.Array, x: jax.Array, ops: jax.Array, depth_w) -> jax.Array:
        """Single path: block i runs op `ops[i]` (traced); depth sink-connected."""
        def block(b: BlockPos, h):
            return self._switch(b)(ops[b.index], params[f"b{b.index}"], masks[b.index], h)

        return self._head(params, self._stages(self._stems(params, x), depth_w, block))

    def _switch(self, b: BlockPos):
        """`f(op, block_params, block_masks, x)`: op `op` of block b, one op computed forward and backward."""
        if b.index in self._switches:
            return self._switches[b.index]

        def fwd_g(g, op, p, m, h):
            return self._member(b, g, p, op // 2, m, op, h)

        def bwd_g(g, op, p, m, h, ct):
            _, vjp = jax.vjp(lambda p, h: fwd_g(g, op, p, m, h), p, h)
            return vjp(ct)

        @jax.custom_vjp
        def run(op, p, m, h):
            return lax.switch(op % 2, [lambda *a, g=g: fwd_g(g, *a) for g in range(2)], op, p, m, h)

        def run_fwd(op, p, m, h):
            return run(op, p, m, h), (op, p, m, h)

        def run_bwd(res, ct):
            op, p, m, h = res
            dp, dh = lax.switch(op % 2, [lambda *a, g=g: bwd_g(g, *a) for g in range(2)], op, p, m, h, ct)
            return None, dp, jnp.zeros_like(m), dh

        run.defvjp(run_fwd, run_bwd)
        self._switches[b.index] = run
        return run

    def mixed_logits(self, params: Params, masks: jax.Array, x: jax.Array, op_w: jax.Array, depth_w) -> jax.Array:
        """Every op of every block, weighted by `op_w` (blocks, 8); depth sink-connected."""
        def block(b: BlockPos, h):
            out = 0.0
            for g, gname in enumerate(GROUPS):
                body = lambda p, ring, flag, mask: self.op_body(b, p, ring, flag, mask, h)  # noqa: E731
                ys = jax.vmap(body)(params[f"b{b.index}"][gname], self.rings, self.se_flags,
                                    self.group_masks(masks, b, g))
                w = op_w[b.index, np.asarray(GROUP_OPS[g])]
                out = out + jnp.tensordot(w, ys, axes=1)
            return out

        return self._head(params, self._stages(self._stems(params, x), depth_w, block))

    def stage_latency(self, op_w: jax.Array, op_lat: jax.Array, depth_w) -> jax.Array:
        """Σ_stages Σ_j depth_w[s][j] * (lat_1 + ... + lat_j), lat_i = Σ_k op_w[i, k] * op_lat[i, k]."""
        block_lat = jnp.sum(op_w * op_lat, axis=-1)
        total = 0.0
        for si, blocks in enumerate(self.stages):
            cum = jnp.cumsum(jnp.stack([block_lat[b.index] for b in blocks]))
            total = total + jnp.sum(depth_w[si] * cum)
        return total


def materialize(space: TfnasSpace, params: Params, masks: Any, arch: Any) -> dict[str, Any]:
    """Variables of `space.build_spec(arch)` holding the supernet weights of the chosen ops, sliced to their
    active channels (the original's parsing + state-dict slicing).  BN gets scale 1, bias 0 and unit
    running statistics: in train mode (batch statistics) the network computes what the supernet's path
    computes; `arch.mids` must equal the masks' channel counts."""
    from jaxnas.models import build_model, init_variables

    spec = space.build_spec(arch)
    variables = init_variables(build_model(spec), 0)
    out = jax.tree.map(np.asarray, jax.device_get(variables))
    pr = jax.tree.map(np.asarray, jax.device_get(params))
    masks = np.asarray(masks)
    net = out["params"]
    net["block0"]["conv0"]["kernel"] = pr["first_stem"]["kernel"]
    q, b1 = pr["second_stem"], net["block1"]
    b1["conv0"]["kernel"], b1["conv1"]["kernel"] = q["dw"], q["proj"]
    b1["se_reduce"] = dict(q["se_reduce"])
    b1["se_expand"] = dict(q["se_expand"])
    for i, (b, op, mid) in enumerate(space.arch_blocks(arch), start=2):
        g, m = op_member(op)
        idx = np.flatnonzero(masks[b.index, op, :group_mid(b, g)])
        if idx.size != mid:
            raise ValueError(f"{b.name}: arch mid {mid} but the mask keeps {idx.size} channels")
        src = jax.tree.map(lambda a: a[m], pr[f"b{b.index}"][GROUPS[g]])
        k = OPS[op].kernel
        o = (KMAX - k) // 2
        blk = net[f"block{i}"]
        blk["conv0"]["kernel"] = src["expand"][..., idx]
        blk["conv1"]["kernel"] = src["dw"][o:o + k, o:o + k][..., idx]
        blk["conv2"]["kernel"] = src["proj"][:, :, idx, :]
        if OPS[op].se:
            blk["se_reduce"] = {"kernel": src["se_reduce"]["kernel"][idx], "bias": src["se_reduce"]["bias"]}
            blk["se_expand"] = {"kernel": src["se_expand"]["kernel"][:, idx], "bias": src["se_expand"]["bias"][idx]}
    n = len(spec.blocks) - 1
    net[f"block{n}"]["conv0"]["kernel"] = pr["feature_mix"]["kernel"]
    net["head"]["classifier"] = dict(pr["classifier"])
    for blk in net.values():
        for layer in blk.values():
            if isinstance(layer, dict) and "bn" in layer:
                layer["bn"] = {"scale": np.ones_like(layer["bn"]["scale"]),
                               "bias": np.zeros_like(layer["bn"]["bias"])}
    return out


def interp_jnp(mids: jax.Array, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Differentiable table lookup: `mids` (...,) on curves `xs`, `ys` (..., G) from `TfnasLut.arrays`.

    Linear between the two points around each mid (the first or last segment outside), so it equals
    `TfnasLut.ms` wherever the mids lie inside a curve's measured range."""
    g = xs.shape[-1]
    idx = jnp.sum(xs < mids[..., None], axis=-1)  # the first point >= mid
    lo = jnp.clip(idx - 1, 0, g - 2)
    take = lambda a, i: jnp.take_along_axis(a, i[..., None], axis=-1)[..., 0]  # noqa: E731
    x0, x1, y0, y1 = take(xs, lo), take(xs, lo + 1), take(ys, lo), take(ys, lo + 1)
    return y0 + (y1 - y0) * (mids - x0) / (x1 - x0)


__all__ = ["Supernet", "batch_norm", "interp_jnp", "materialize", "op_member", "kernel_rings", "GROUPS", "GROUP_OPS", "NUM_OPS"]
