"""Flax (linen) modules built from an `ArchSpec`.

One module, `Net`, builds any spec.  It doubles as a supernet: `choices` (a pytree of arrays, traced,
never static) carries

* ``masks``: {width group name: (C,) array} multiplied into the kernel's output channels and the BN
  affine parameters of every conv whose `Conv.width` names the group (a masked channel is exactly
  zero after the layer, so slicing it away changes nothing — see `jaxnas.supernet.materialize`);
* ``gates``: {width group name: (C,) array} multiplied into the BN affine parameters only (into the
  kernel for a conv without BN): a soft scale of the channels after normalisation that the BN does not
  undo (DMCP's architecture step; a kernel mask m gives BN(m*z), which renormalises m away except
  through eps).  Hard 0/1 gates give the same outputs as masks;
* ``acts``: {act slot name: scalar in [0, 1]} blending a layer's activation with identity;
* ``ops``: {choice block name: (n_candidates,) weights} for op-choice blocks;
* ``depth``: {stage name: (n_blocks,) weights} for sink-connected depth choice: the stage's output
  is the weighted sum of the outputs after each of its blocks.

Parameter names are stable and mirror the spec: ``block{i}/conv{j}/{kernel,bias}``,
``block{i}/conv{j}/bn/{scale,bias}``, ``block{i}/shortcut``, ``block{i}/se_reduce``,
``block{i}/se_expand``, ``block{i}/cand{k}/...``, ``head/fc{j}``, ``head/classifier``.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import ops
from jaxnas.spec import ArchSpec, Block, Conv, Head, validate

Choices = Mapping[str, Mapping[str, jax.Array]]

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(0.01)


def _lookup(choices: Choices | None, kind: str, key: str | None):
    if choices is None or key is None:
        return None
    return choices.get(kind, {}).get(key)


class BatchNorm(nn.Module):
    """BatchNorm whose affine parameters can be multiplied by a channel mask."""

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        if train:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        if mask is not None:
            scale, bias = scale * mask, bias * mask
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return x * mul + (bias - mean * mul)


class ConvLayer(nn.Module):
    conv: Conv
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, choices: Choices | None = None) -> jax.Array:
        c = self.conv
        cin = x.shape[-1]
        kh, kw = c.kernel
        shape = (kh, kw, 1, c.out) if c.depthwise else (kh, kw, cin, c.out)
        w = self.param("kernel", conv_init, shape)
        mask = _lookup(choices, "masks", c.width)
        scale = _lookup(choices, "gates", c.width)  # scales the BN output (see the module docstring)
        if scale is not None and not c.norm:
            mask, scale = (scale if mask is None else mask * scale), None  # linear conv: gate = kernel mask
        if mask is not None:
            w = w * mask
        if c.depthwise:
            y = ops.depthwise_conv2d(x, w, c.stride, c.pads, self.depthwise_impl)
        else:
            y = ops.conv2d(x, w, c.stride, c.pads, self.depthwise_impl)
        if c.bias:
            b = self.param("bias", nn.initializers.zeros, (c.out,))
            y = y + (b * mask if mask is not None else b)
        if c.norm:
            if scale is not None:
                mask = scale if mask is None else mask * scale
            y = BatchNorm(self.bn_momentum, self.bn_eps, name="bn")(y, train, mask)
        out = ops.activation(c.act, y)
        gate = _lookup(choices, "acts", c.act_slot)
        if gate is not None:
            out = gate * out + (1 - gate) * y
        return out


class BlockModule(nn.Module):
    block: Block
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def _layer(self, conv: Conv, name: str) -> ConvLayer:
        return ConvLayer(conv, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, choices: Choices | None = None) -> jax.Array:
        b = self.block
        if b.kind in ("maxpool", "avgpool"):
            # Explicit padding (-inf for max, 0 for avg with count_include_pad) + VALID pooling, with
            # keyword arguments: the form jax2onnx's pooling plugins can export.  Same outputs.
            p = b.pool
            if p.padding:
                fill = -jnp.inf if b.kind == "maxpool" else 0.0
                x = jnp.pad(x, ((0, 0), (p.padding,) * 2, (p.padding,) * 2, (0, 0)), constant_values=fill)
            pool = nn.max_pool if b.kind == "maxpool" else nn.avg_pool
            return pool(x, window_shape=(p.kernel, p.kernel), strides=(p.stride, p.stride), padding="VALID")
        if b.kind == "choice":
            outs = [BlockModule(cand, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=f"cand{k}")(
                x, train, choices) for k, cand in enumerate(b.candidates)]
            weights = _lookup(choices, "ops", b.name)
            if weights is None:
                return outs[0]
            return sum(weights[k] * o for k, o in enumerate(outs))
        y = x
        for j, conv in enumerate(b.layers):
            y = self._layer(conv, f"conv{j}")(y, train, choices)
            if b.se is not None and b.se.after == j:
                y = self._squeeze_excite(y)
        if b.shortcut is None:
            return y
        if b.drop_connect and train and self.has_rng("dropout"):
            y = _drop_connect(y, b.drop_connect, self.make_rng("dropout"))
        if b.shortcut == "identity":
            skip = ops.center_crop(x, y.shape[1:3]) if x.shape[1:3] != y.shape[1:3] else x
        else:
            skip = self._layer(b.shortcut, "shortcut")(x, train, choices)
        return ops.activation(b.post_act, y + skip)

    def _squeeze_excite(self, y: jax.Array) -> jax.Array:
        se = self.block.se
        s = jnp.mean(y, axis=(1, 2))
        s = nn.Dense(se.channels, kernel_init=conv_init, name="se_reduce")(s)
        s = ops.activation(se.act, s)
        s = nn.Dense(y.shape[-1], kernel_init=conv_init, name="se_expand")(s)
        gate = jax.nn.sigmoid(s) if se.gate == "sigmoid" else jnp.clip(s + 3.0, 0.0, 6.0) / 6.0
        return y * gate[:, None, None, :]


def _drop_connect(y: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Per example: zero the residual branch with probability `rate`, else scale it by 1 / (1 - rate)."""
    keep = 1.0 - rate
    kept = jnp.floor(keep + jax.random.uniform(rng, (y.shape[0],) + (1,) * (y.ndim - 1), y.dtype))
    return y * (kept / keep)


class HeadModule(nn.Module):
    head: Head

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = self.head
        if h.num_classes == 0:
            return x
        if h.pool == "global":
            x = jnp.mean(x, axis=(1, 2))
        else:
            x = ops.adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
        deterministic = not train or not self.has_rng("dropout")
        for j, width in enumerate(h.hidden):
            x = jax.nn.relu(nn.Dense(width, kernel_init=dense_init, name=f"fc{j}")(x))
            x = nn.Dropout(h.dropout, deterministic=deterministic)(x)
        if h.dropout and not h.hidden:
            x = nn.Dropout(h.dropout, deterministic=deterministic)(x)
        return nn.Dense(h.num_classes, kernel_init=dense_init, name="classifier")(x)


class Net(nn.Module):
    """Any `ArchSpec` as a Flax module (a supernet when `choices` are given)."""

    spec: ArchSpec
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def features(self, x: jax.Array, train: bool, choices: Choices | None = None) -> jax.Array:
        stage_of = {i: s for s in self.spec.stages for i in range(s.start, s.end)}
        collected: list[jax.Array] = []
        for i, block in enumerate(self.spec.blocks):
            x = BlockModule(block, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=f"block{i}")(
                x, train, choices)
            stage = stage_of.get(i)
            weights = _lookup(choices, "depth", stage.name) if stage else None
            if weights is not None:
                collected.append(x)
                if i == stage.end - 1:
                    x = sum(weights[k] * o for k, o in enumerate(collected))
                    collected = []
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, choices: Choices | None = None) -> jax.Array:
        x = self.features(x, train, choices)
        return HeadModule(self.spec.head, name="head")(x, train)


def build_model(spec: ArchSpec, depthwise_impl: str = "auto", bn_momentum: float = 0.9,
                bn_eps: float | None = None) -> Net:
    """The Flax network of `spec`. `bn_eps` defaults to the spec's own (metadata 'bn_eps', e.g. 1e-4 for
    POP's nets and PyTorch's 1e-5 for imported weights), else 1e-5."""
    validate(spec)
    if bn_eps is None:
        bn_eps = float(spec.metadata.get("bn_eps", 1e-5))
    return Net(spec, depthwise_impl, bn_momentum, bn_eps)


def init_variables(model: Net, rng: int = 0, batch_size: int = 1) -> dict[str, Any]:
    """Initialise every variable with numpy from its shape (no XLA compile per parameter shape).

    Conv kernels: Kaiming normal (fan_out, as torchvision); SE dense layers likewise; classifier and
    hidden dense layers: N(0, 0.01); BN scale 1, biases 0; running mean 0, var 1.  Deterministic in
    `rng` (an int seed).
    """
    spec = model.spec
    x = jax.ShapeDtypeStruct((batch_size, *spec.input_size, spec.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    gen = np.random.default_rng(int(np.asarray(rng).ravel()[-1]) if not isinstance(rng, int) else rng)

    def fill(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        coll, leaf_name = names[0], names[-1]
        shape = leaf.shape
        if coll == "batch_stats":
            return jnp.ones(shape) if leaf_name == "var" else jnp.zeros(shape)
        if leaf_name == "scale":
            return jnp.ones(shape)
        if leaf_name == "bias":
            return jnp.zeros(shape)
        if "head" in names:
            return jnp.asarray(gen.normal(0.0, 0.01, shape), jnp.float32)
        fan_out = int(np.prod(shape[:-2])) * shape[-1] if len(shape) == 4 else shape[-1]
        return jnp.asarray(gen.normal(0.0, np.sqrt(2.0 / fan_out), shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, dict(shapes))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
