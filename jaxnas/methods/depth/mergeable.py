"""Mergeable networks for depth compression: activation slots, `fix_act`, padding re-arrangement.

A *mergeable* spec is a zoo MobileNetV2 / VGG-19-BN spec whose body convs are numbered p = 1..L (the
body is every conv except MobileNetV2's stem and last 1x1 conv) and carry ``act_slot = f"a{p}"``.  The
activation at position p ("after the p-th body conv") is the conv's own `act`, except at the end of a
residual block, where it is the block's `post_act` (applied after the add, as the original's SkipFeed).
Parameter names are those of the zoo spec, so trained zoo weights load unchanged.

`fix_act(spec, A, S)` gives the spec the finetuning and merging work on: slots in A keep the
nonlinearity (ReLU6 for MobileNetV2, ReLU for VGG), the others become identity, and within each merge
segment the padding is moved to the segment's first conv (so the unmerged net computes exactly what the
merged conv computes, borders included).  A residual block swallowed by a segment sees a skip tensor of
a different size than its output: it is centre-cropped (`crop_shortcut`) when the segment starts before
the block, and zero-padded when the segment starts exactly at the block input and ends after the block
(spec language has no padded identity, so that skip is a frozen identity 1x1 conv with padding; see
:func:`frozen_paths`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.errors import UserError
from jaxnas.methods.depth.segments import ConvChain, is_valid_segment, stride_breaks
from jaxnas.spec import ArchSpec, Block, Conv, analyze

NON_BODY_NAMES = ("stem", "last")
BODY_KINDS = ("mbconv", "vgg", "conv")
META_ACTS = "depth_act_pos"
META_MERGE = "depth_merge_pos"
META_ACT = "depth_act"


class PatternError(UserError, ValueError):
    """An activation / merge pattern (A, S) that the network cannot realise."""


@dataclass(frozen=True)
class Body:
    """Where the body convs of a spec live, plus the chain the DP works on.

    `positions[p - 1] = (block index, layer index)` of body conv p.  `residual_blocks` maps a block
    index to its (src, tgt) positions.  `act` is the body's nonlinearity ('relu6' or 'relu').
    """

    positions: tuple[tuple[int, int], ...]
    chain: ConvChain
    act: str
    residual_blocks: tuple[tuple[int, tuple[int, int]], ...]
    body_blocks: tuple[int, ...]

    @property
    def L(self) -> int:
        return self.chain.L


def _is_body_block(b: Block) -> bool:
    return bool(b.layers) and b.kind in BODY_KINDS and (b.name not in NON_BODY_NAMES)


def body_of(spec: ArchSpec) -> Body:
    """The body of a MobileNetV2- or VGG-style spec (zoo, mergeable, or `fix_act` output).

    Paddings in the returned chain are the nominal k // 2 ('same' convs, as the original networks);
    a `fix_act` spec's re-arranged paddings are not read back.
    """
    cost = analyze(spec)
    positions: list[tuple[int, int]] = []
    kern, strd, pad, dw, cin_l, cout_l = [], [], [], [], [], []
    block_ends, default_acts, pools, body_blocks, res_blocks = [], [], [], [], []
    input_hw = None
    acts = set()
    for i, b in enumerate(spec.blocks):
        if b.kind in ("maxpool", "avgpool"):
            if b.kind == "maxpool" and positions and i - 1 in body_blocks:
                pools.append(len(positions))
            continue
        if not _is_body_block(b):
            if positions and any(_is_body_block(c) for c in spec.blocks[i + 1:]):
                raise PatternError(f"blocks[{i}] ({b.name or b.kind}) interrupts the body")
            continue
        if b.se is not None:
            raise PatternError(f"blocks[{i}]: squeeze-and-excitation blocks cannot be merged")
        if input_hw is None:
            input_hw = cost.blocks[i].in_shape[:2]
        body_blocks.append(i)
        src = len(positions)
        ch = cost.blocks[i].in_shape[2]
        for j, c in enumerate(b.layers):
            k = c.kernel[0]
            if c.kernel[1] != k or k % 2 == 0:
                raise PatternError(f"blocks[{i}].layers[{j}]: depth compression needs square odd kernels, "
                                   f"got {c.kernel}")
            positions.append((i, j))
            kern.append(k), strd.append(c.stride), pad.append(k // 2), dw.append(c.depthwise)
            cin_l.append(ch), cout_l.append(c.out)
            ch = c.out
            last = j == len(b.layers) - 1
            act = b.post_act if (last and b.shortcut is not None) else c.act
            if act != "identity":
                default_acts.append(len(positions))
                acts.add(act)
        block_ends.append(len(positions))
        if b.shortcut is not None:
            if isinstance(b.shortcut, Conv) and not _is_skip_conv(b.shortcut):
                raise PatternError(f"blocks[{i}]: projection shortcuts cannot be merged")
            res_blocks.append((i, (src, len(positions))))
    if not positions:
        raise PatternError(f"spec {spec.name!r} has no mergeable body convs")
    if all(spec.blocks[i].kind == "vgg" for i in body_blocks):
        # VGG: the original's blocks are the conv runs between max-pools (`get_blk_info`).
        block_ends = sorted(set(pools) | {len(positions)})
    acts.discard("identity")
    if len(acts) > 1:
        raise PatternError(f"body mixes activations {sorted(acts)}; depth compression needs one")
    act = acts.pop() if acts else "relu6"
    chain = ConvChain(kern, strd, pad, dw, cin_l, cout_l, residuals=tuple(rt for _, rt in res_blocks),
                      block_ends=tuple(block_ends), stride_breaks=tuple(pools),
                      default_acts=tuple(default_acts), pools=tuple(pools), input_hw=tuple(input_hw),
                      name=spec.name)
    return Body(tuple(positions), chain, act, tuple(res_blocks), tuple(body_blocks))


def _is_skip_conv(c: Conv) -> bool:
    """The frozen identity 1x1 conv `fix_act` uses for a zero-padded skip."""
    return c.kernel == (1, 1) and c.stride == 1 and not c.norm and not c.bias and c.act == "identity"


def _set_acts(spec: ArchSpec, body: Body, acts: set[int], act: str,
              paddings: Mapping[int, Any] | None = None,
              shortcuts: Mapping[int, Any] | None = None,
              crops: Iterable[int] = ()) -> tuple[Block, ...]:
    crops = set(crops)
    paddings = paddings or {}
    shortcuts = shortcuts or {}
    pos_of = {ij: p for p, ij in enumerate(body.positions, start=1)}
    blocks = list(spec.blocks)
    for i in body.body_blocks:
        b = spec.blocks[i]
        residual = b.shortcut is not None
        layers = []
        for j, c in enumerate(b.layers):
            p = pos_of[(i, j)]
            last = j == len(b.layers) - 1
            a = "identity" if (last and residual) else (act if p in acts else "identity")
            kw = dict(act=a, act_slot=f"a{p}")
            if p in paddings:
                kw["padding"] = paddings[p]
            layers.append(dataclasses.replace(c, **kw))
        kw = dict(layers=tuple(layers))
        if residual:
            tgt = pos_of[(i, len(b.layers) - 1)]
            kw["post_act"] = act if tgt in acts else "identity"
            kw["shortcut"] = shortcuts.get(i, "identity")
            kw["crop_shortcut"] = i in crops
        blocks[i] = dataclasses.replace(b, **kw)
    return tuple(blocks)


def _meta(spec: ArchSpec, **kw) -> tuple:
    m = {k: v for k, v in dict(spec.meta).items() if k not in (META_ACTS, META_MERGE)}
    m.update({k: v for k, v in kw.items() if v is not None})
    return tuple(sorted(m.items()))


def mergeable_spec(base: ArchSpec, acts: Iterable[int] | None = None) -> ArchSpec:
    """`base` with an act slot ``a{p}`` on every body conv; positions in `acts` (default: the base's own
    activations) are nonlinear, the others identity.  Paddings are left as in `base`.
    """
    body = body_of(base)
    for p, (i, j) in enumerate(body.positions, start=1):
        c = base.blocks[i].layers[j]
        if c.padding is not None and c.pads != ((c.kernel[0] // 2,) * 2, (c.kernel[1] // 2,) * 2):
            raise PatternError(f"body conv {p} has padding {c.padding}; mergeable_spec needs 'same' convs "
                               "(use fix_act on a mergeable spec instead)")
    act = body.act
    a = set(body.chain.default_acts) if acts is None else {int(p) for p in acts}
    _check_positions(a, body.L, "activation")
    return base.replace(blocks=_set_acts(base, body, a, act), meta=_meta(base, **{META_ACT: act}))


def _check_positions(ps: Iterable[int], L: int, what: str) -> None:
    bad = sorted(p for p in ps if not 1 <= p <= L)
    if bad:
        raise PatternError(f"{what} position(s) {bad} outside 1..{L}")


def skip_bumps(chain: ConvChain, merge_pos: Iterable[int]) -> set[int]:
    """Residual ends that must become boundaries: (src, tgt) of every residual with some s in S strictly
    inside (the skip then cannot be fused into a kernel)."""
    S = set(merge_pos)
    out: set[int] = set()
    for src, tgt in chain.residuals:
        if any(src < s < tgt for s in S):
            out.update((src, tgt))
    out.discard(0)
    return out


def merge_boundaries(chain: ConvChain, act_pos: Iterable[int], merge_pos: Iterable[int]) -> list[int]:
    """Sorted boundaries 0 = b0 < ... < bn = L of the pattern, validated.

    Boundaries = S ∪ {L} ∪ skip bumps.  Raises PatternError if a stride break is not in S (a segment
    would cross it), if an activation lies strictly inside a segment, or if a segment is not mergeable.
    """
    L = chain.L
    A = {int(p) for p in act_pos}
    S = {int(p) for p in merge_pos} | {L}
    S.discard(0)
    _check_positions(A, L, "activation")
    _check_positions(S, L, "merge")
    for b in stride_breaks(chain):
        if b not in S:
            lo = max([s for s in S if s < b], default=0)
            hi = min(s for s in S if s > b)
            raise PatternError(f"merge pattern crosses the stride break at position {b}: segment "
                               f"({lo}, {hi}) would merge across a stride/pooling break; add {b} to S")
    B = sorted({0} | S | skip_bumps(chain, S))
    for a in sorted(A):
        if a not in B:
            lo = max(b for b in B if b < a)
            hi = min(b for b in B if b > a)
            raise PatternError(f"activation at position {a} lies inside merge segment ({lo}, {hi}); "
                               "every activation position must be a merge boundary (A ⊆ S)")
    for st, end in zip(B, B[1:]):
        if not is_valid_segment(chain, st, end):
            raise PatternError(f"merge segment ({st}, {end}) is not mergeable in {chain.name}")
    return B


def merge_segments(chain: ConvChain, act_pos: Iterable[int], merge_pos: Iterable[int]) -> list[tuple[int, int]]:
    """The (st, end) segments of a pattern (see :func:`merge_boundaries`)."""
    B = merge_boundaries(chain, act_pos, merge_pos)
    return list(zip(B, B[1:]))


def fused_residuals(chain: ConvChain, segments: Sequence[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """{residual (src, tgt): the segment containing it} for residuals fused into a merged kernel."""
    out = {}
    for src, tgt in chain.residuals:
        for st, end in segments:
            if st <= src and tgt <= end:
                out[(src, tgt)] = (st, end)
                break
    return out


def fix_act(spec: ArchSpec, act_pos: Iterable[int], merge_pos: Iterable[int]) -> ArchSpec:
    """The finetuning spec of a pattern: acts in A nonlinear, others identity; paddings re-arranged.

    `spec` is a zoo or mergeable spec with 'same' paddings.  Within each segment of
    :func:`merge_boundaries` every conv gets padding 0 and the first conv the segment's padding sum.
    Residual blocks fused into a segment crop their skip (`crop_shortcut`) when the segment starts
    before the block, or zero-pad it (frozen identity 1x1 conv with padding) when the segment starts at
    the block input and ends after it.  The pattern is stored in the spec's meta.
    """
    base = mergeable_spec(spec) if META_ACT not in spec.metadata else spec
    body = body_of(base)
    chain = body.chain
    act = str(base.metadata.get(META_ACT, body.act))
    A = {int(p) for p in act_pos}
    segs = merge_segments(chain, A, merge_pos)
    paddings: dict[int, Any] = {}
    for st, end in segs:
        if end - st == 1:
            paddings[end] = None  # nominal k // 2 (also undoes an earlier pattern's re-arrangement)
            continue
        P = sum(chain.padding[st:end])
        for p in range(st + 1, end + 1):
            q = P if p == st + 1 else 0
            paddings[p] = ((q, q), (q, q))
    crops, shortcuts = [], {}
    fused = fused_residuals(chain, segs)
    for i, (src, tgt) in body.residual_blocks:
        if (src, tgt) not in fused:
            continue
        st, end = fused[(src, tgt)]
        if st < src:
            crops.append(i)
        elif end > tgt:
            delta = sum(chain.padding[tgt:end])
            if delta:
                c = chain.out_ch[tgt - 1]
                shortcuts[i] = Conv(c, (1, 1), 1, padding=((delta, delta), (delta, delta)), act="identity",
                                    norm=False, bias=False)
    blocks = _set_acts(base, body, A, act, paddings, shortcuts, crops)
    S = tuple(end for _, end in segs)
    return base.replace(blocks=blocks, meta=_meta(base, **{META_ACTS: tuple(sorted(A)), META_MERGE: S,
                                                            META_ACT: act}))


def pattern_of(spec: ArchSpec) -> tuple[list[int], list[int]]:
    """(A, S) stored in a `fix_act` spec's meta."""
    m = spec.metadata
    if META_ACTS not in m or META_MERGE not in m:
        raise PatternError(f"spec {spec.name!r} carries no depth pattern; make it with fix_act(spec, A, S)")
    return [int(p) for p in m[META_ACTS]], [int(p) for p in m[META_MERGE]]


def frozen_paths(spec: ArchSpec) -> list[tuple[str, str]]:
    """(block name, 'shortcut') of the frozen identity skip convs of a `fix_act` spec."""
    body = body_of(spec)
    return [(f"block{i}", "shortcut") for i, _ in body.residual_blocks
            if isinstance(spec.blocks[i].shortcut, Conv)]


def freeze_tx(spec: ArchSpec, tx):
    """`tx` with the frozen skip convs of `spec` excluded from updates (and weight decay)."""
    import optax

    frozen = set(frozen_paths(spec))
    if not frozen:
        return tx

    def label(path, _leaf):
        return "frozen" if tuple(getattr(k, "key", str(k)) for k in path)[:2] in frozen else "train"

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 lambda params: jax.tree_util.tree_map_with_path(label, dict(params)))


# ----------------------------------------------------------------------------------------- weights

def _np_tree(tree: Any, dtype: Any = None) -> Any:
    """Nested mappings as plain dicts of numpy arrays (of `dtype`, if given)."""
    if isinstance(tree, Mapping):
        return {k: _np_tree(v, dtype) for k, v in tree.items()}
    return np.asarray(tree, dtype)


def transfer_variables(variables: Mapping[str, Any], dst: ArchSpec) -> dict[str, Any]:
    """Variables of a spec with the same parameter names (zoo -> mergeable -> fix_act) for `dst`.

    Entries are matched by path and must agree in shape; the frozen skip convs `fix_act` adds get an
    identity kernel.  Anything else missing is an error.
    """
    from jaxnas.models import build_model

    model = build_model(dst)
    x = jax.ShapeDtypeStruct((1, *dst.input_size, dst.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)  # no compile
    shapes = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
    src = {k: _np_tree(variables.get(k, {})) for k in ("params", "batch_stats")}
    skip = set(frozen_paths(dst))

    def fill(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        node: Any = src
        for n in names:
            if not isinstance(node, Mapping) or n not in node:
                node = None
                break
            node = node[n]
        if node is None:
            if tuple(names[1:3]) in skip and names[-1] == "kernel":
                c = leaf.shape[-1]
                return np.eye(c, dtype=np.float32).reshape(1, 1, c, c)
            raise PatternError(f"no variable {'/'.join(names)} to transfer into {dst.name!r}")
        if tuple(node.shape) != tuple(leaf.shape):
            raise PatternError(f"variable {'/'.join(names)} has shape {tuple(node.shape)}, "
                               f"{dst.name!r} needs {tuple(leaf.shape)}")
        return np.asarray(node, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def reinit_conv(variables: Mapping[str, Any], spec: ArchSpec, position: int, seed: int = 0) -> dict[str, Any]:
    """A copy of `variables` with body conv `position` (and its BN) re-initialised as `init_variables`
    does: Kaiming-normal (fan_out) kernel, zero bias, BN scale 1 / bias 0 / mean 0 / var 1."""
    body = body_of(spec)
    i, j = body.positions[position - 1]
    params = {k: dict(v) if isinstance(v, Mapping) else v for k, v in variables["params"].items()}
    stats = {k: dict(v) if isinstance(v, Mapping) else v for k, v in variables.get("batch_stats", {}).items()}
    blk, cname = f"block{i}", f"conv{j}"
    p = dict(params[blk][cname])
    k = np.asarray(p["kernel"])
    fan_out = int(np.prod(k.shape[:-2])) * k.shape[-1]
    rng = np.random.default_rng(seed + 7919 * position)
    p["kernel"] = rng.normal(0.0, np.sqrt(2.0 / fan_out), k.shape).astype(np.float32)
    if "bias" in p:
        p["bias"] = np.zeros_like(np.asarray(p["bias"]))
    if "bn" in p:
        c = k.shape[-1]
        p["bn"] = {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
        s = dict(stats[blk])
        s[cname] = {"bn": {"mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)}}
        stats[blk] = s
    params[blk] = {**params[blk], cname: p}
    return {"params": params, "batch_stats": stats}
