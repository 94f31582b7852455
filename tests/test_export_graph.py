"""Exported graphs are as lean as PyTorch's: node counts per model family, the graph passes, TFLite ops.

Also the fast export test of each model family (the slow sweep over routes and batch modes is in
test_export.py).  ONNX (jax2onnx route, the default): no Transpose between layers (one at an NHWC input, none with
an NCHW input), one Conv per spec conv (biases inside), no Add but the residual adds, no Pad, Expand,
Dropout or Identity, parity <= 1e-4.  TFLite: no TRANSPOSE, one conv op per spec conv, no ADD but the
residual adds.  Variables are randomised so BN folding and biases are exercised.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from jaxnas import export
from jaxnas.export import onnx_graph as og
from jaxnas.export.parity import parity_input, random_variables, reference_output, run_onnx
from jaxnas import spec as S
from jaxnas import zoo
from jaxnas.methods.depth.merge import merge_network
from jaxnas.methods.depth.mergeable import fix_act, mergeable_spec, transfer_variables
from test_depth_merge import tiny_mbv2
from test_export import LAYERS, SE_MBCONV, family_spec


def _chain(block: S.Block) -> S.Block:
    return block.candidates[0] if block.kind == "choice" else block


def spec_convs(spec: S.ArchSpec) -> int:
    """Convs the network computes: chain convs and projection shortcuts (a choice block: its first)."""
    return sum(len(b.layers) + isinstance(b.shortcut, S.Conv) for b in map(_chain, spec.blocks))


def residual_adds(spec: S.ArchSpec) -> int:
    return sum(b.shortcut is not None for b in map(_chain, spec.blocks))


def merged_mbv2() -> tuple[S.ArchSpec, dict]:
    """A depth-compressed net: merged convs (large kernels, biases), fused and kept residuals."""
    spec = tiny_mbv2(res=16, classes=10, in_ch=3)
    fs = fix_act(mergeable_spec(spec), [5, 10], [1, 2, 3, 4, 5, 10, 11, 14])
    ms, mv = merge_network(fs, transfer_variables(random_variables(spec, 1), fs))
    assert any(b.kind == "merged" for b in ms.blocks) and any(c.kernel[0] > 3 for _, _, c in S.iter_convs(ms))
    return ms, mv


# conv -> avg pool (padded: count_include_pad) -> op choice -> max pool (padded) -> hidden + dropout head
POOLS_CHOICE = S.ArchSpec("pools_choice", (
    S.Block("conv", (S.Conv(16, (3, 3), act="relu"),)),
    S.Block("avgpool", pool=S.Pool(3, 1, 1)),
    S.Block("choice", candidates=(zoo.resnet_basic(16, 16, 1, in_group="a", mid_group="b", out_group="a"),
                                 zoo.mbv2_block(16, 32, 16, 1)), name="op"),
    S.Block("maxpool", pool=S.Pool(3, 2, 1)),
), S.Head(10, hidden=(32,), dropout=0.2), (12, 12), 3)


def adaptive_head(hw: int) -> S.ArchSpec:
    """A VGG-like conv + VGG's classifier (adaptive-7 pool, flatten, hidden layer with dropout)."""
    return S.ArchSpec("adaptive", (S.Block("vgg", (S.Conv(8, (3, 3), act="relu", bias=True),)),),
                      S.Head(10, pool="adaptive7", hidden=(16,), dropout=0.5), (hw, hw), 3)


def family(name: str) -> tuple[S.ArchSpec, dict]:
    if name == "merged_mbv2":
        return merged_mbv2()
    spec = {"se_mbconv": SE_MBCONV, "pools_choice": POOLS_CHOICE, "adaptive": adaptive_head(9)}.get(name) \
        or family_spec(name)
    return spec, random_variables(spec)


def assert_lean(m, spec: S.ArchSpec, layout: str) -> None:
    ops = og.op_counts(m)
    assert og.layout_transposes(m) == [], "a Transpose between layers"
    head_less = spec.head.num_classes == 0
    assert ops["Transpose"] == (0 if layout == "NCHW" else 1 + head_less), ops
    assert ops["Conv"] == spec_convs(spec), ops
    assert og.bias_adds(m) == [], "a bias left as a separate Add"
    assert ops["Add"] == residual_adds(spec), ops  # nothing else adds
    for op in ("Dropout", "Identity", "Pad", "Expand", "BatchNormalization", "Shape", "Gather", "Concat"):
        assert ops[op] == 0, (op, ops)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert all(len(n.input) == 3 and n.input[2] for n in convs), "a Conv without its bias"


GRAPH_FAMILIES = ["mobilenet_v2", "resnet18", "resnet50", "vgg19_bn", "df1", "merged_mbv2", "se_mbconv",
                  "pools_choice"]


@pytest.mark.parametrize("name", GRAPH_FAMILIES)
def test_onnx_graph_is_lean(name, tmp_path):
    spec, v = family(name)
    r = export.export_onnx(spec, v, tmp_path / "m.onnx")
    assert r.max_abs_diff <= 1e-4 and r.layout == "NHWC" and r.route == "jax2onnx"
    assert r.input_shape == (1, *spec.input_size, 3) and r.output_shape == (1, 10)
    assert_lean(onnx.load(str(r.path)), spec, "NHWC")


@pytest.mark.parametrize("name", ["mobilenet_v2", "se_mbconv", "merged_mbv2"])
def test_onnx_nchw_input_has_no_transpose(name, tmp_path):
    spec, v = family(name)
    r = export.export_onnx(spec, v, tmp_path / "m.onnx", input_layout="NCHW")
    h, w = spec.input_size
    assert r.input_shape == (1, 3, h, w) and r.layout == "NCHW" and r.max_abs_diff <= 1e-4
    assert_lean(onnx.load(str(r.path)), spec, "NCHW")
    # the file takes the NCHW array a PyTorch user feeds
    x = parity_input((1, h, w, 3), seed=5)
    np.testing.assert_allclose(run_onnx(r.path, np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                               reference_output(spec, v, x), atol=1e-4)


@pytest.mark.parametrize("name", ["se_mbconv", "adaptive", "pools_choice"])
def test_onnx_dynamic_batch_is_lean(name, tmp_path):
    spec, v = family(name)
    r = export.export_onnx(spec, v, tmp_path / "m.onnx", dynamic_batch=True)
    assert r.input_shape[0] is None and r.max_abs_diff <= 1e-4
    m = onnx.load(str(r.path))
    assert_lean(m, spec, "NHWC")
    assert og.op_counts(m)["Reshape"] == 0  # SE gates: Unsqueeze; VGG's classifier: Flatten


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_onnx_head_less_block_layouts(layout, tmp_path):
    spec = LAYERS["mbconv"]
    r = export.export_onnx(spec, random_variables(spec), tmp_path / "b.onnx", input_layout=layout)
    out_hwc = S.analyze(spec).blocks[-1].out_shape
    if layout == "NHWC":
        assert r.input_shape == (1, 16, 16, 8) and r.output_shape == (1, *out_hwc)
    else:
        assert r.input_shape == (1, 8, 16, 16) and r.output_shape == (1, out_hwc[2], *out_hwc[:2])
    assert r.max_abs_diff <= 1e-4
    assert_lean(onnx.load(str(r.path)), spec, layout)


@pytest.mark.parametrize("hw", [7, 9, 3], ids=["identity_pool", "overlapping_bins", "repeated_bins"])
def test_adaptive7_head_folds_into_the_dense_layer(hw, tmp_path):
    # The adaptive-7 pool and the (h, w, c) flattening become the first dense layer's weights.
    spec = adaptive_head(hw)
    r = export.export_onnx(spec, random_variables(spec), tmp_path / "m.onnx")
    assert r.max_abs_diff <= 1e-4
    m = onnx.load(str(r.path))
    assert_lean(m, spec, "NHWC")
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    w = next(i for i in m.graph.initializer if i.name == gemm.input[1])
    assert tuple(w.dims) == (8 * hw * hw, 16)  # reads the feature map itself, not 7 x 7 pooled bins


def test_unfolded_bn_exports(tmp_path):
    spec = SE_MBCONV
    r = export.export_onnx(spec, random_variables(spec), tmp_path / "m.onnx", fold_bn=False)
    assert r.max_abs_diff <= 1e-4
    ops = og.op_counts(onnx.load(str(r.path)))
    assert ops["Conv"] == spec_convs(spec) and ops["Transpose"] == 1  # BN as a per-channel Mul + Add


def test_bad_layout_is_one_line_error(tmp_path):
    spec = LAYERS["dense3x3"]
    with pytest.raises(export.ExportError, match="unknown input layout 'NWHC'; valid layouts: NHWC, NCHW"):
        export.export_onnx(spec, random_variables(spec), tmp_path / "m.onnx", input_layout="NWHC")
    with pytest.raises(export.ExportError, match="valid layouts"):
        export.export_model(spec, random_variables(spec), tmp_path, ("onnx",), input_layout="nchw")
    assert not list(tmp_path.iterdir())


def test_export_model_passes_the_layout(tmp_path):
    spec = LAYERS["dense3x3"]
    res = export.export_model(spec, random_variables(spec), tmp_path, ("onnx",), input_layout="NCHW")
    assert res["onnx"].layout == "NCHW" and res["onnx"].input_shape == (1, 8, 16, 16)
    import json

    assert json.loads((tmp_path / "export.json").read_text())["formats"]["onnx"]["layout"] == "NCHW"


def test_nchw_through_the_cli_and_the_deploy_timing(capsys, tmp_path):
    # `jaxnas export --input-layout NCHW` ships an NCHW file, and the deploy step times it (and a baseline)
    # with NCHW arrays: an NHWC array would be refused by onnxruntime (16x16 input, 8 channels).
    import json

    from jaxnas import cli
    from jaxnas.deploy import deploy
    from jaxnas.export.config import ExportConfig
    from jaxnas.latency.config import LatencyConfig

    spec = LAYERS["mbconv"]
    spec.save(tmp_path / "b.json")
    code = cli.main(["export", str(tmp_path / "b.json"), "--random-init", "--format", "onnx", "--out",
                     str(tmp_path / "e"), "--input-layout", "NCHW", "--json"])
    out = json.loads(capsys.readouterr().out)["onnx"]
    assert code == 0 and out["layout"] == "NCHW" and out["input_shape"] == [1, 8, 16, 16]
    assert og.op_counts(onnx.load(out["path"]))["Transpose"] == 0
    v = random_variables(spec)
    r = deploy(spec, v, ExportConfig(formats=("onnx",), input_layout="NCHW"), LatencyConfig(warmup=1, runs=3),
               out_dir=tmp_path / "d", baseline=(spec, v), compare_rounds=1)
    assert r.exports["onnx"].layout == "NCHW" and r.latency.stats.count == 3 and len(r.comparison.ratios) == 1


# ------------------------------------------------------------------------------------- graph passes

def _model(nodes, inits, x_shape, y_shape, extra_inputs=()):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape),
                                       *extra_inputs],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(np.asarray(v, np.float32 if k != "pads" else np.int64), k)
                           for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _same_output(before, after, shape) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(run_onnx(after.SerializeToString(), x), run_onnx(before.SerializeToString(), x),
                               atol=1e-5)


def test_fuse_bias_only_per_channel_constants():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3))
    per_channel = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                          helper.make_node("Add", ["c", "b"], ["y"])],
                         {"w": w, "b": rng.standard_normal((1, 4, 1, 1))}, [1, 3, 5, 5], [1, 4, 5, 5])
    fused = onnx.ModelProto.FromString(per_channel.SerializeToString())
    assert og.fuse_bias(fused) == 1 and og.op_counts(fused) == {"Conv": 1}
    _same_output(per_channel, fused, (1, 3, 5, 5))
    # a (W,)-shaped constant broadcasts along W, not over channels: no bias, left alone
    along_w = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                      helper.make_node("Add", ["c", "b"], ["y"])],
                     {"w": w, "b": rng.standard_normal(5)}, [1, 3, 5, 5], [1, 4, 5, 5])
    assert og.fuse_bias(along_w) == 0 and og.op_counts(along_w)["Add"] == 1
    # a Conv output that something else also reads keeps its Add
    shared = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Add", ["c", "b"], ["a"]), helper.make_node("Mul", ["a", "c"], ["y"])],
                    {"w": w, "b": rng.standard_normal((1, 4, 1, 1))}, [1, 3, 5, 5], [1, 4, 5, 5])
    assert og.fuse_bias(shared) == 0


def test_fold_pad_only_with_the_pools_own_fill():
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    for pool, fill, attrs, folds in (("MaxPool", -np.inf, {}, True), ("MaxPool", 0.0, {}, False),
                                     ("AveragePool", 0.0, {}, True), ("AveragePool", 1.0, {}, False),
                                     ("Conv", 0.0, {}, True)):
        ins = ["p", "w"] if pool == "Conv" else ["p"]
        kw = {} if pool == "Conv" else {"kernel_shape": [3, 3]}
        inits = {"pads": pads, "v": fill, **({"w": np.ones((2, 2, 3, 3)) / 9} if pool == "Conv" else {})}
        m = _model([helper.make_node("Pad", ["x", "pads", "v"], ["p"]), helper.make_node(pool, ins, ["y"], **kw)],
                   inits, [1, 2, 6, 6], None)
        before = onnx.ModelProto.FromString(m.SerializeToString())
        assert og.fold_pad(m) == int(folds), (pool, fill)
        assert og.op_counts(m)["Pad"] == int(not folds)
        _same_output(before, m, (1, 2, 6, 6))


def test_remove_identities_and_cancel_transposes():
    m = _model([helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
                helper.make_node("Identity", ["t1"], ["i"]),
                helper.make_node("Transpose", ["i"], ["t2"], perm=[0, 3, 1, 2]),
                helper.make_node("Dropout", ["t2"], ["d"]),
                helper.make_node("Relu", ["d"], ["y"])], {}, [1, 2, 3, 4], [1, 2, 3, 4])
    before = onnx.ModelProto.FromString(m.SerializeToString())
    og.lean_graph(m)
    assert og.op_counts(m) == {"Relu": 1} and m.graph.node[0].input[0] == "x"
    _same_output(before, m, (1, 2, 3, 4))
    # not inverse: the two transposes stay
    m = _model([helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
                helper.make_node("Transpose", ["t1"], ["y"], perm=[0, 2, 3, 1])], {}, [1, 2, 3, 4], None)
    assert og.cancel_transpose_pairs(m) == 0 and og.op_counts(m)["Transpose"] == 2


# ------------------------------------------------------------------------------------------- TFLite

def tflite_ops(data: bytes) -> dict[str, int]:
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    return dict(Counter(op["op_name"] for op in Interpreter(model_content=data)._get_ops_details()))


@pytest.mark.parametrize("name", ["mobilenet_v2", "se_mbconv", "merged_mbv2", "pools_choice"])
def test_tflite_ops_are_lean(name, tmp_path):
    spec, v = family(name)
    r = export.export_tflite(spec, v, tmp_path / "m.tflite")
    assert r.format == "tflite" and r.precision == "fp32" and r.path.is_file() and r.layout == "NHWC"
    assert r.input_shape == (1, *spec.input_size, 3) and r.output_shape == (1, 10)
    assert r.max_abs_diff <= 1e-4
    ops = tflite_ops(r.path.read_bytes())
    assert "TRANSPOSE" not in ops, ops
    assert ops.get("CONV_2D", 0) + ops.get("DEPTHWISE_CONV_2D", 0) == spec_convs(spec), ops
    assert ops.get("ADD", 0) == residual_adds(spec), ops  # biases live in the convs


def test_tensorrt_engine_parity_uses_the_onnx_layout(tmp_path, monkeypatch):
    # No TensorRT here: the "engine" is the ONNX file run by onnxruntime; what is checked is that the
    # engine's parity input and output follow the ONNX file's layout.
    from jaxnas.export import tensorrt_export as trt_mod

    def fake_build(onnx_path, path, **kw):
        path.write_bytes(open(onnx_path, "rb").read())
        return path

    monkeypatch.setattr(trt_mod, "engine_from_onnx", fake_build)
    monkeypatch.setattr(trt_mod, "run_engine", lambda path, x: run_onnx(path, x))
    spec = LAYERS["mbconv"]
    v = random_variables(spec)
    for layout in ("NHWC", "NCHW"):
        onnx_res = export.export_onnx(spec, v, tmp_path / f"{layout}.onnx", input_layout=layout)
        r = trt_mod.engine_export(spec, v, tmp_path / f"{layout}.engine", onnx_res)
        assert r.layout == layout and r.input_shape == onnx_res.input_shape and r.max_abs_diff <= 1e-4
