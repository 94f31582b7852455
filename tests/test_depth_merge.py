"""Depth compression, Flax side: mergeable specs, fix_act padding re-arrangement, exact merging."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

from jaxnas import zoo
from jaxnas.methods.depth import mbv2_chain, stride_breaks, vgg19_chain
from jaxnas.methods.depth.importance import GatedNet, gates
from jaxnas.methods.depth.merge import add_skip, compose, conv_kernel, forward, merge_network
from jaxnas.methods.depth.mergeable import (PatternError, body_of, fix_act, freeze_tx, merge_boundaries,
                                            mergeable_spec, pattern_of, reinit_conv, transfer_variables)
from jaxnas.models import build_model, init_variables
from jaxnas.spec import ArchSpec, Block, Conv, Head
from jaxnas.zoo import mbv2_block


# ------------------------------------------------------------------------------------------ helpers

def tiny_mbv2(res: int = 8, classes: int = 4, in_ch: int = 1) -> ArchSpec:
    """A reduced MobileNetV2 (L = 14): residuals (0, 2), (5, 8), (11, 14); conv 10 has stride 2."""
    blocks = (Block("conv", (Conv(8, (3, 3), 1, act="relu6"),), name="stem"),
              mbv2_block(8, 8, 8, 1, expand=False, name="b1"),
              mbv2_block(8, 16, 12, 1, name="b2"),
              mbv2_block(12, 24, 12, 1, name="b3"),
              mbv2_block(12, 24, 16, 2, name="b4"),
              mbv2_block(16, 32, 16, 1, name="b5"),
              Block("conv", (Conv(24, (1, 1), act="relu6"),), name="last"))
    return ArchSpec("tiny_mbv2", blocks, Head(classes), (res, res), in_ch)


def tiny_vgg(res: int = 16) -> ArchSpec:
    blocks = []
    for v in (8, 8, "M", 8, 16, 16, "M", 16):
        if v == "M":
            blocks.append(Block("maxpool", pool=zoo.Pool(2, 2, 0), name=f"pool{len(blocks)}"))
        else:
            blocks.append(Block("vgg", (Conv(v, (3, 3), act="relu", bias=True),), name=f"b{len(blocks)}"))
    blocks.append(Block("maxpool", pool=zoo.Pool(2, 2, 0), name="poolL"))
    return ArchSpec("tiny_vgg", tuple(blocks), Head(5), (res, res), 3)


def rand_vars(spec: ArchSpec, seed: int) -> dict:
    """Kaiming kernels, random BN affine params and running stats, random conv biases."""
    v = init_variables(build_model(spec), seed)
    rng = np.random.default_rng(seed)

    def f(path, x):
        name = getattr(path[-1], "key", "")
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        if name in ("mean", "bias"):
            return rng.normal(0, 0.2, x.shape).astype(np.float32)
        return np.asarray(x)

    return jax.tree_util.tree_map_with_path(f, v)


def random_pattern(chain, rng, ps: float = 0.4, pa: float = 0.6):
    L = chain.L
    S = {p for p in range(1, L + 1) if rng.random() < ps} | set(stride_breaks(chain)) | {L}
    B = merge_boundaries(chain, [], S)
    A = {b for b in B[1:] if rng.random() < pa}
    return sorted(A), sorted(S)


def eager(spec: ArchSpec, variables: dict, x: np.ndarray) -> np.ndarray:
    # Op-by-op: for tiny nets the per-op compile cache is shared by every pattern (a jit would
    # recompile each spec).
    return np.asarray(build_model(spec).apply(variables, x, train=False))


def check_merge(base: ArchSpec, variables: dict, A, S, x: np.ndarray, tol: float = 1e-4, run=eager):
    fs = fix_act(base, A, S)
    fv = transfer_variables(variables, fs)
    ms, mv = merge_network(fs, fv)
    ya, yb = run(fs, fv, x), run(ms, mv, x)
    scale = max(1.0, float(np.abs(ya).max()))
    assert np.abs(ya - yb).max() <= tol * scale, (A, S, np.abs(ya - yb).max())
    return fs, fv, ms, mv


# ------------------------------------------------------------------------------------------- bodies

@pytest.mark.parametrize("width,res,small", [(1.0, 224, False), (1.4, 224, False), (0.35, 16, True)])
def test_body_matches_mbv2_chain(width, res, small):
    body = body_of(zoo.mobilenet_v2(width, 10, res, small_input=small))
    want = mbv2_chain(width, res, small_input=small)
    assert body.L == 50 and body.act == "relu6"
    assert dataclasses.replace(body.chain, name="x") == dataclasses.replace(want, name="x")
    assert body.positions[0] == (1, 0) and body.positions[-1] == (17, 2)


def test_body_matches_vgg19_chain():
    body = body_of(zoo.vgg19_bn(1000, 224))
    assert body.L == 16 and body.act == "relu"
    assert dataclasses.replace(body.chain, name="x") == dataclasses.replace(vgg19_chain(224), name="x")


def test_mergeable_spec_slots_and_function():
    spec = tiny_mbv2()
    base = mergeable_spec(spec)
    body = body_of(base)
    slots = [base.blocks[i].layers[j].act_slot for i, j in body.positions]
    assert slots == [f"a{p}" for p in range(1, body.L + 1)]
    # Block ends carry no activation by default; a residual end's act is the block's post_act.
    assert set(body.chain.default_acts) == set(range(1, body.L + 1)) - set(body.chain.block_ends)
    v = rand_vars(spec, 0)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(eager(spec, v, x), eager(base, transfer_variables(v, base), x), atol=1e-6)
    assert body.chain.residuals == ((0, 2), (5, 8), (11, 14)) and body.L == 14
    full = mergeable_spec(spec, range(1, body.L + 1))
    b3 = full.blocks[3]
    assert b3.shortcut == "identity" and b3.post_act == "relu6" and b3.layers[-1].act == "identity"


# --------------------------------------------------------------------------------------- fix_act

def test_fix_act_padding_rearrangement():
    base = mergeable_spec(tiny_mbv2())
    body = body_of(base)
    # Residual b3 = positions (5, 8); segment (5, 10) starts at its input and ends after it.
    S = [1, 2, 3, 4, 5, 10, 11, 12, 13, 14]
    fs = fix_act(base, [5, 10], S)
    pads = {p: fs.blocks[i].layers[j].pads[0][0] for p, (i, j) in enumerate(body.positions, start=1)}
    assert [pads[p] for p in range(6, 11)] == [2, 0, 0, 0, 0]  # 1x1, dw, 1x1, 1x1, dw -> 2 on the first
    assert pads[4] == 1 and pads[11] == 0 and pads[13] == 1
    b3, b5 = fs.blocks[3], fs.blocks[5]
    # Its skip is zero-padded by the padding of the convs after the block (conv 10's 1).
    assert isinstance(b3.shortcut, Conv) and b3.shortcut.pads == ((1, 1), (1, 1))
    assert b5.shortcut == "identity" and not b5.crop_shortcut
    assert pattern_of(fs) == ([5, 10], S)
    # A segment starting before the block input crops the skip instead.
    fs2 = fix_act(base, [4], [1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14])
    assert fs2.blocks[3].crop_shortcut and fs2.blocks[3].shortcut == "identity"
    # Re-fixing a fixed spec with another pattern is the same as fixing the base with it.
    assert fix_act(fs, [4], fs2.metadata["depth_merge_pos"]).blocks == fs2.blocks


def test_pattern_errors():
    base = mergeable_spec(tiny_mbv2())
    L = body_of(base).L
    with pytest.raises(PatternError, match="stride break at position 11"):
        fix_act(base, [], [1, 2, 3, L])  # conv 10 has stride 2: 11 is a break
    with pytest.raises(PatternError, match="inside merge segment"):
        fix_act(base, [6], [2, 5, 8, 11, L])
    with pytest.raises(PatternError, match="outside 1"):
        fix_act(base, [0, L + 1], [5, L])
    with pytest.raises(PatternError, match="stride break"):
        fix_act(mergeable_spec(tiny_vgg()), [], [1, 5])  # pool after conv 2


def test_skip_bumps_split_residual():
    base = mergeable_spec(tiny_mbv2())
    # 7 lies inside residual (5, 8): 5 and 8 become boundaries, the skip stays an explicit add.
    v = rand_vars(tiny_mbv2(), 3)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)
    fs, fv, ms, mv = check_merge(base, v, [7], [7, 11, 14], x)
    skips = [b for b in ms.blocks if b.shortcut == "identity"]
    assert len(skips) == 1 and [c.act for c in skips[0].layers] == ["relu6", "identity"]


# ----------------------------------------------------------------------------------------- merging

def test_compose_matches_sequential_convs():
    rng = np.random.default_rng(0)
    a = Conv(6, (3, 3), depthwise=False, act="identity", norm=False, bias=True)
    b = Conv(6, (3, 3), depthwise=True, act="identity", norm=False, bias=True)
    c = Conv(5, (1, 1), 2, act="identity", norm=False, bias=True)
    pa = {"kernel": rng.normal(size=(3, 3, 4, 6)), "bias": rng.normal(size=6)}
    pb = {"kernel": rng.normal(size=(3, 3, 1, 6)), "bias": rng.normal(size=6)}
    pc = {"kernel": rng.normal(size=(1, 1, 6, 5)), "bias": rng.normal(size=5)}
    k = compose(compose(conv_kernel(a, pa, None), conv_kernel(b, pb, None)), conv_kernel(c, pc, None))
    k = add_skip(k, None) if k.w.shape[2] == k.w.shape[3] else k
    assert k.k == 5 and k.stride == 2 and k.pad == 2 and not k.dw
    dd = compose(conv_kernel(b, pb, None), conv_kernel(b, pb, None))
    assert dd.dw and dd.k == 5
    dense = compose(conv_kernel(b, pb, None), conv_kernel(a.__class__(6, (1, 1), act="identity", norm=False,
                                                                       bias=True),
                                                          {"kernel": rng.normal(size=(1, 1, 6, 6)),
                                                           "bias": rng.normal(size=6)}, None))
    assert not dense.dw and dense.k == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_merge_equivalence_tiny_mbv2(seed):
    spec = tiny_mbv2().replace(head=Head(0))
    base = mergeable_spec(spec)
    v = rand_vars(spec, seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    chain = body_of(base).chain
    for ps in (0.15, 0.5, 0.9):
        A, S = random_pattern(chain, rng, ps)
        check_merge(base, v, A, S, x)


def test_merge_special_residual_cases():
    spec = tiny_mbv2()
    base = mergeable_spec(spec)
    v = rand_vars(spec, 5)
    x = np.random.default_rng(5).normal(size=(3, 8, 8, 1)).astype(np.float32)
    L = body_of(base).L
    cases = [
        ([5, 10], [1, 2, 3, 4, 5, 10, 11, L]),   # segment starts at src, ends after tgt: padded skip
        ([4], [4, 8, 11, L]),                    # (0, 4) padded skip, (4, 8) cropped skip
        ([5, 8], [5, 8, 11, L]),                 # exactly the block: fused skip, no crop
        ([], [11, L]),                           # everything before the break in one segment
        (list(range(1, L + 1)), list(range(1, L + 1))),  # nothing merged, every act on
    ]
    for A, S in cases:
        fs, fv, ms, mv = check_merge(base, v, A, S, x)
        assert len([b for b in ms.blocks if b.kind == "merged"]) <= len(set(S) | {L})


def test_merge_equivalence_tiny_vgg():
    spec = tiny_vgg()
    base = mergeable_spec(spec)
    v = rand_vars(spec, 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    chain = body_of(base).chain
    assert stride_breaks(chain) == (2, 5, 6)
    for _ in range(3):
        A, S = random_pattern(chain, rng)
        fs, fv, ms, mv = check_merge(base, v, A, S, x)
        assert sum(b.kind == "maxpool" for b in ms.blocks) == 3


def test_merge_equivalence_real_mbv2_small():
    spec = zoo.mobilenet_v2(0.35, 10, 16, small_input=True)
    base = mergeable_spec(spec)
    v = rand_vars(spec, 0)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    chain = body_of(base).chain
    A, S = random_pattern(chain, rng, 0.35)
    # Also force a segment that swallows a whole residual block from its input on (5 -> 10).
    S = sorted((set(S) - {6, 7, 8, 9}) | {5, 10})
    A = [a for a in A if a not in (6, 7, 8, 9)]
    fs, fv, ms, mv = check_merge(base, v, A, S, x, run=forward)
    assert isinstance(fs.blocks[3].shortcut, Conv)
    assert ArchSpec.from_json(ms.to_json()) == ms
    assert all(c.kernel[0] == 2 * c.pads[0][0] + 1 for b in ms.blocks for c in b.layers if b.kind == "merged")


def test_merged_spec_exports_to_onnx(tmp_path):
    from jaxnas import export

    spec = tiny_mbv2()
    base = mergeable_spec(spec)
    v = rand_vars(spec, 1)
    fs = fix_act(base, [5, 10], [1, 2, 3, 4, 5, 10, 11, 14])
    ms, mv = merge_network(fs, transfer_variables(v, fs))
    res = export.export_onnx(ms, mv, tmp_path / "merged.onnx", check=True, tolerance=1e-4)
    assert (tmp_path / "merged.onnx").stat().st_size > 0 and res.max_abs_diff <= 1e-4


# -------------------------------------------------------------------------------- training helpers

def test_gated_net_matches_net():
    spec = tiny_mbv2()
    base = mergeable_spec(spec)
    body = body_of(base)
    v = rand_vars(spec, 2)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype(np.float32)
    A, S = [3, 5, 10], [1, 2, 3, 4, 5, 10, 11, 14]
    fs = fix_act(base, A, S)
    fv = transfer_variables(v, fs)
    want = eager(fs, fv, x)

    def apply(m, v, x, c):
        return np.asarray(m.apply(v, x, choices=c))

    np.testing.assert_allclose(np.asarray(apply(GatedNet(fs), fv, x, None)), want, atol=1e-6)
    # Same layout with every act on, switched by gates.
    fs_all = fix_act(base, merge_boundaries(body.chain, [], S)[1:], S)
    np.testing.assert_allclose(np.asarray(apply(GatedNet(fs_all), fv, x, gates(body, A))), want, atol=1e-6)


def test_freeze_tx_keeps_padded_skip_identity():
    spec = tiny_mbv2()
    fs = fix_act(mergeable_spec(spec), [5, 10], [1, 2, 3, 4, 5, 10, 11, 14])
    fv = transfer_variables(init_variables(build_model(spec), 0), fs)
    sc = fv["params"]["block3"]["shortcut"]["kernel"]
    np.testing.assert_array_equal(sc[0, 0], np.eye(12))
    tx = freeze_tx(fs, optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1)))
    params = fv["params"]
    grads = jax.tree.map(np.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    np.testing.assert_array_equal(new["block3"]["shortcut"]["kernel"], sc)
    assert not np.allclose(new["block3"]["conv0"]["kernel"], params["block3"]["conv0"]["kernel"])


def test_transfer_and_reinit():
    spec = tiny_mbv2()
    base = mergeable_spec(spec)
    v = rand_vars(spec, 4)
    with pytest.raises(PatternError, match="shape"):
        transfer_variables(v, mergeable_spec(tiny_mbv2(classes=7)))
    r = reinit_conv(v, base, 7, seed=0)
    i, j = body_of(base).positions[6]
    bn = r["params"][f"block{i}"][f"conv{j}"]["bn"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(r["batch_stats"][f"block{i}"][f"conv{j}"]["bn"]["var"], 1.0)
    assert not np.allclose(r["params"][f"block{i}"][f"conv{j}"]["kernel"], v["params"][f"block{i}"][f"conv{j}"]["kernel"])
    # Everything else untouched.
    np.testing.assert_array_equal(r["params"]["block1"]["conv0"]["kernel"], v["params"]["block1"]["conv0"]["kernel"])
