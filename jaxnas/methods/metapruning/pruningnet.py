"""The PruningNet (seed spec §2.2) as functional Flax modules with a traced encoding.

For every conv a small MLP maps raw scale values of its genes to the *full-size* (scale 1.0) kernel:
``W = FC_hidden->numel(ReLU(FC_n->hidden(c)))``; the original then crops ``W[:out, :in]``.  Here the
encoding is a traced array (``choices = {'ids': int32 (num_genes,)}``), so one compiled step serves every
sub-network: the crop is a mask on the kernel's output channels (input channels beyond the sampled width
are already zero, being masked outputs of the previous layer), and each layer's per-width BatchNorm (31 of
them, one per scale id: ``(31, C_max)`` banks of running statistics, and of scale/bias when affine) is
selected by a gather with the scale id.  A masked channel is exactly 0 after every layer, so the masked
network computes what the cropped one computes, and its gradients are the cropped network's (zero for the
masked kernel entries).

Port decisions:

* The generator's output units are laid out in HWIO order (the original views them as OIHW): a fixed
  permutation of the last FC's rows, which saves a transpose of every generated kernel per step.
* Initialisation is PyTorch's ``nn.Linear`` default (weights and biases U(+-1/sqrt(fan_in))), which the
  original relies on; running statistics start at (0, 1).
* Running statistics use the biased batch variance (as `jaxnas.models.BatchNorm`; PyTorch stores the
  unbiased one) and are updated only for the channels of the sampled width; momentum 0.9 in Flax's
  convention is PyTorch's 0.1.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import ops
from jaxnas.methods.metapruning.space import FULL_ID, NUM_SCALES, SCALES, GenBlock, GenConv, MetaSpace, Ref
from jaxnas.spec import ArchSpec

_SCALES = np.asarray(SCALES, np.float32)


class Encoding:
    """Scale ids of one candidate (traced) and what layers derive from them."""

    def __init__(self, ids: jax.Array):
        ids = jnp.asarray(ids, jnp.int32)
        self.ids = jnp.concatenate([ids, jnp.full((1,), FULL_ID, jnp.int32)])  # ref None -> scale 1.0
        self.none = ids.shape[0]

    def sid(self, ref: Ref) -> jax.Array:
        return self.ids[self.none if ref is None else ref]

    def scales(self, refs: Sequence[Ref]) -> jax.Array:
        return jnp.asarray(_SCALES)[self.ids[np.asarray([self.none if r is None else r for r in refs])]]

    def mask(self, conv: GenConv) -> jax.Array | None:
        """(max_out,) prefix mask of the conv's sampled width, None for fixed-width (scale 1.0) layers."""
        if conv.out_gene is None:
            return None
        table = np.arange(conv.max_out)[None, :] < np.asarray([conv.width(k) for k in range(NUM_SCALES)])[:, None]
        return select_row(self.sid(conv.out_gene), table.astype(np.float32))


def select_row(sid: jax.Array, bank: Any) -> jax.Array:
    """Row `sid` (a traced scale id) of a (31, C) bank as a one-hot product, not an indexed read.

    An indexed read (`bank[sid]`) of a traced id is fused by XLA into every consumer loop, so each element
    of a conv's output recomputes the index lookups of its kernel mask and BN row (per tap of a depthwise
    conv; XLA's compiled forward had the plain network's dots and elementwise work and ran 1.47x its time).
    A dot is not fused into its consumers: the row is computed once per layer and read
    (`benchmarks/metapruning_eval.py --forward`)."""
    onehot = jax.nn.one_hot(sid, NUM_SCALES, dtype=jnp.float32)
    return jnp.dot(onehot, jnp.asarray(bank), precision=jax.lax.Precision.HIGHEST)


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear's default init for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class WideDense(nn.Module):
    """`nn.Dense` (same parameters, same outputs) through `ops.pointwise_matmul`, for a layer with a few
    inputs and millions of outputs.  Autodiff of `nn.Dense` formed its kernel gradient as the (numel,
    hidden) outer product and then transposed it into the kernel's layout: a strided copy of every
    generator's whole last layer in each training step.  The op's own gradient comes out in the kernel's
    layout (quick config, XLA's cost analysis of the step: 17.0 -> 16.1 GB of memory traffic)."""

    features: int
    kernel_init: Any
    bias_init: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return ops.pointwise_matmul(x, kernel) + bias


class Generator(nn.Module):
    """FC(n -> hidden) -> ReLU -> FC(hidden -> numel): the full-size kernel from raw scale values."""

    numel: int
    hidden: int

    @nn.compact
    def __call__(self, c: jax.Array) -> jax.Array:
        n = c.shape[-1]
        h = nn.relu(nn.Dense(self.hidden, kernel_init=torch_linear_init(n), bias_init=torch_linear_init(n),
                             name="fc1")(c))
        return WideDense(self.numel, kernel_init=torch_linear_init(self.hidden),
                         bias_init=torch_linear_init(self.hidden), name="fc2")(h)


class WidthBatchNorm(nn.Module):
    """31 BatchNorms of one layer (one per scale id) as (31, C) banks, one selected by a traced id."""

    channels: int
    affine: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, y: jax.Array, sid: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        shape = (NUM_SCALES, self.channels)
        mean_bank = self.variable("batch_stats", "mean", jnp.zeros, shape)
        var_bank = self.variable("batch_stats", "var", jnp.ones, shape)
        if train:
            mean = jnp.mean(y, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
            if not self.is_initializing():
                banks = jnp.asarray(mean_bank.value), jnp.asarray(var_bank.value)
                old_m, old_v = banks[0][sid], banks[1][sid]
                new_m = self.momentum * old_m + (1 - self.momentum) * mean
                new_v = self.momentum * old_v + (1 - self.momentum) * var
                if mask is not None:  # channels beyond the sampled width do not exist in this BN
                    keep = mask > 0
                    new_m, new_v = jnp.where(keep, new_m, old_m), jnp.where(keep, new_v, old_v)
                mean_bank.value = banks[0].at[sid].set(new_m)
                var_bank.value = banks[1].at[sid].set(new_v)
        else:
            mean, var = select_row(sid, mean_bank.value), select_row(sid, var_bank.value)
        mul = jax.lax.rsqrt(var + self.epsilon)
        if not self.affine:
            # y * mul - mean * mul, not (y - mean) * mul: with the centred tensor as a full-size intermediate
            # XLA's backward is slower (the PruningNet step at 64 x 28 px: 648 -> 413 ms,
            # benchmarks/metapruning_step.py).
            return y * mul - mean * mul
        scale = select_row(sid, self.param("scale", nn.initializers.ones, shape))
        bias = select_row(sid, self.param("bias", nn.initializers.zeros, shape))
        if mask is not None:
            scale, bias = scale * mask, bias * mask
        mul = scale * mul
        return y * mul + (bias - mean * mul)


class GenConvLayer(nn.Module):
    """One generated conv -> per-width BN -> activation."""

    conv: GenConv
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def setup(self):
        self.gen = Generator(int(np.prod(self.conv.weight_shape)), self.conv.hidden)
        self.bn = WidthBatchNorm(self.conv.max_out, self.conv.bn_affine, self.bn_momentum, self.bn_eps)

    def kernel(self, enc: Encoding) -> jax.Array:
        """The full-size HWIO kernel generated for this encoding (leading candidate axes allowed)."""
        flat = self.gen(enc.scales(self.conv.gen_genes))
        return flat.reshape(self.conv.weight_shape)

    def __call__(self, x: jax.Array, w: jax.Array, enc: Encoding, train: bool) -> jax.Array:
        c = self.conv
        mask = enc.mask(c)
        if mask is not None:
            w = w * mask
        pads = ((c.kernel // 2,) * 2,) * 2
        if c.depthwise:
            y = ops.depthwise_conv2d(x, w, c.stride, pads, self.depthwise_impl)
        else:
            y = ops.conv2d(x, w, c.stride, pads, self.depthwise_impl)
        y = self.bn(y, enc.sid(c.bn_gene), mask, train)
        return ops.activation(c.act, y)


class GenBlockModule(nn.Module):
    block: GenBlock
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def setup(self):
        kw = dict(depthwise_impl=self.depthwise_impl, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
        self.layers = {c.name: GenConvLayer(c, **kw) for c in self.block.all_convs}

    def kernels(self, enc: Encoding) -> dict[str, jax.Array]:
        return {name: layer.kernel(enc) for name, layer in self.layers.items()}

    def __call__(self, x: jax.Array, kernels: Mapping[str, jax.Array], enc: Encoding, train: bool) -> jax.Array:
        b = self.block
        y = x
        for c in b.convs:
            y = self.layers[c.name](y, kernels[c.name], enc, train)
        if isinstance(b.shortcut, GenConv):
            y = y + self.layers["shortcut"](x, kernels["shortcut"], enc, train)
        elif b.shortcut == "identity":
            y = y + x
        y = ops.activation(b.post_act, y)
        if b.pool_after is not None:
            p = b.pool_after
            y = jnp.pad(y, ((0, 0), (p.padding,) * 2, (p.padding,) * 2, (0, 0)), constant_values=-jnp.inf)
            y = nn.max_pool(y, window_shape=(p.kernel, p.kernel), strides=(p.stride, p.stride), padding="VALID")
        return y


class PruningNet(nn.Module):
    """The MetaPruning PruningNet of a `MetaSpace`.

    ``apply(variables, x, train=False, choices={'ids': ids})``; ``choices=None`` is the widest network.
    `generate` and `forward` split a call so that evaluation generates the kernels once per candidate.
    Parameters: ``blocks_{i}/layers_{conv}/gen/fc{1,2}/{kernel,bias}``, affine BN banks
    ``blocks_{i}/layers_{conv}/bn/{scale,bias}``, ``classifier/{kernel,bias}``; batch_stats
    ``.../bn/{mean,var}`` of shape (31, C).
    """

    space: MetaSpace
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def setup(self):
        kw = dict(depthwise_impl=self.depthwise_impl, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
        self.blocks = [GenBlockModule(b, **kw) for b in self.space.blocks]
        h = self.space.head_in
        self.classifier = nn.Dense(self.space.num_classes, kernel_init=torch_linear_init(h),
                                   bias_init=torch_linear_init(h))

    def _enc(self, choices: Mapping[str, Any] | None) -> Encoding:
        if choices is None:
            return Encoding(jnp.full((self.space.num_genes,), FULL_ID, jnp.int32))
        return Encoding(choices["ids"])

    def generate(self, choices: Mapping[str, Any] | None = None) -> list[dict[str, jax.Array]]:
        """The full-size kernels of every layer for this encoding."""
        enc = self._enc(choices)
        return [blk.kernels(enc) for blk in self.blocks]

    def forward(self, x: jax.Array, kernels: Sequence[Mapping[str, jax.Array]], train: bool = False,
                choices: Mapping[str, Any] | None = None) -> jax.Array:
        enc = self._enc(choices)
        for blk, k in zip(self.blocks, kernels):
            x = blk(x, k, enc, train)
        return self.classifier(jnp.mean(x, axis=(1, 2)))

    def __call__(self, x: jax.Array, train: bool = False, choices: Mapping[str, Any] | None = None) -> jax.Array:
        return self.forward(x, self.generate(choices), train, choices)


def build_pruningnet(space: MetaSpace, depthwise_impl: str = "auto", bn_momentum: float = 0.9,
                     bn_eps: float = 1e-5) -> PruningNet:
    return PruningNet(space, depthwise_impl, bn_momentum, bn_eps)


def init_pruningnet(model: PruningNet, seed: int = 0) -> dict[str, Any]:
    """Variables of `model`, filled with numpy (no XLA compile per shape): PyTorch's Linear init for the
    generators and the classifier, BN scale 1 / bias 0, running statistics (0, 1)."""
    space = model.space
    x = jax.ShapeDtypeStruct((1, space.resolution, space.resolution, space.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    gen = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        coll, leaf_name = names[0], names[-1]
        if coll == "batch_stats":
            return np.ones(leaf.shape, np.float32) if leaf_name == "var" else np.zeros(leaf.shape, np.float32)
        if "bn" in names:
            return np.ones(leaf.shape, np.float32) if leaf_name == "scale" else np.zeros(leaf.shape, np.float32)
        # Dense kernels are (fan_in, fan_out); a bias shares its layer's fan_in.
        fan_in = leaf.shape[0] if leaf_name == "kernel" else _fan_in(shapes["params"], names[1:-1])
        bound = np.float32(1.0 / np.sqrt(fan_in))
        u = gen.random(leaf.shape, dtype=np.float32)
        u *= 2 * bound
        u -= bound
        return u

    variables = jax.tree_util.tree_map_with_path(fill, dict(shapes))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _fan_in(params: Mapping[str, Any], path: Sequence[str]) -> int:
    node = params
    for p in path:
        node = node[p]
    return int(node["kernel"].shape[0])


# ----------------------------------------------------------------------------------------------------
# The cropped plain network
# ----------------------------------------------------------------------------------------------------

def generated_kernels(model: PruningNet, params: Mapping[str, Any], genes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    ids = jnp.asarray(np.asarray(genes, np.int32))
    out = jax.jit(lambda p, ids: model.apply({"params": p}, {"ids": ids}, method=PruningNet.generate))(params, ids)
    return jax.tree.map(np.asarray, out)


def materialize(model: PruningNet, variables: Mapping[str, Any], genes: Sequence[int]) -> tuple[ArchSpec, dict]:
    """(plain spec, variables) of the sub-network `genes`: the generated kernels cropped to its widths, the
    selected BN rows (non-affine BNs as scale 1, bias 0), the classifier.  `jaxnas.models.build_model(spec)`
    computes what the PruningNet computes with ``choices={'ids': genes}`` (base residual rule)."""
    space = model.space
    genes = space.check(genes)
    spec = space.to_spec(genes)
    kernels = generated_kernels(model, variables["params"], genes)
    params, stats = variables["params"], variables["batch_stats"]
    new_p: dict[str, Any] = {}
    new_s: dict[str, Any] = {}
    k = 0
    cin = space.in_channels
    for i, b in enumerate(space.blocks):
        bp, bs = {}, {}
        block_in = cin
        for c in b.all_convs:
            cout = space.width(genes, c)
            src_in = block_in if c.name == "shortcut" else cin
            w = kernels[i][c.name]
            w = w[..., :cout] if c.depthwise else w[:, :, :src_in, :cout]
            sid = space.sid(genes, c.bn_gene)
            lp, ls = params[f"blocks_{i}"][f"layers_{c.name}"], stats[f"blocks_{i}"][f"layers_{c.name}"]
            bn_p = ({"scale": np.asarray(lp["bn"]["scale"])[sid, :cout], "bias": np.asarray(lp["bn"]["bias"])[sid, :cout]}
                    if c.bn_affine else {"scale": np.ones((cout,), np.float32), "bias": np.zeros((cout,), np.float32)})
            bp[c.name] = {"kernel": w, "bn": bn_p}
            bs[c.name] = {"bn": {"mean": np.asarray(ls["bn"]["mean"])[sid, :cout],
                               "var": np.asarray(ls["bn"]["var"])[sid, :cout]}}
            if c.name != "shortcut":
                cin = cout
        new_p[f"block{k}"], new_s[f"block{k}"] = bp, bs
        k += 2 if b.pool_after is not None else 1
    cls = params["classifier"]   # its input rows beyond the last width see zeros in the PruningNet
    new_p["head"] = {"classifier": {"kernel": np.asarray(cls["kernel"])[:cin], "bias": np.asarray(cls["bias"])}}
    return spec, {"params": new_p, "batch_stats": new_s}


__all__ = ["Encoding", "GenBlockModule", "GenConvLayer", "Generator", "PruningNet", "WidthBatchNorm",
           "WideDense", "build_pruningnet", "generated_kernels", "init_pruningnet", "materialize",
           "torch_linear_init"]
