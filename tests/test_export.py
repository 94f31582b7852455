"""Export: BN folding, ONNX (both routes), TFLite, TensorRT, parity and export_model.

Variables are randomised (BN running mean/var, BN scale/bias, conv biases) so that folding is really
exercised; every export is parity-checked against the unfolded JAX model (<= 1e-4 absolute, fp32).
"""
from __future__ import annotations

import importlib.util
import json

import jax
import numpy as np
import pytest

from jaxnas import export
from jaxnas.export import fold as fold_mod
from jaxnas.export import onnx_export
from jaxnas.export.parity import ExportError, compare, parity_input, reference_output, run_onnx
from jaxnas.export.parity import random_variables as rand_vars
from jaxnas import models, supernet, zoo
from jaxnas import spec as S


def family_spec(name: str, resolution: int = 32) -> S.ArchSpec:
    if name.startswith("df"):
        return zoo.get_spec(name, resolution=resolution, num_classes=10)
    return zoo.get_spec(name, width=0.25, resolution=resolution, num_classes=10)


def single(*layers: S.Conv, cin: int = 8, hw: int = 16, **block_kw) -> S.ArchSpec:
    """A one-block, head-less spec (what latency tables time)."""
    return S.ArchSpec("block", (S.Block(block_kw.pop("kind", "merged"), tuple(layers), **block_kw),),
                      S.Head(num_classes=0), (hw, hw), cin)


LAYERS = {
    "dense3x3": single(S.Conv(16, (3, 3), 2, act="relu")),
    "depthwise5x5": single(S.Conv(8, (5, 5), 1, depthwise=True, act="relu6")),
    "merged9x9": single(S.Conv(12, (9, 9), 1, padding=((3, 1), (0, 2)), act="relu", norm=False, bias=True)),
    "mbconv": single(S.Conv(24, (1, 1), act="relu6"), S.Conv(24, (3, 3), 2, depthwise=True, act="relu6"),
                     S.Conv(16, (1, 1), act="identity"), kind="mbconv"),
}

MERGED_CROP = S.ArchSpec("merged_crop", (
    S.Block("conv", (S.Conv(8, (3, 3), act="relu"),)),
    # Depth compression moves all padding to the merged conv: output is smaller than the input, so
    # the identity shortcut is centre-cropped.
    S.Block("merged", (S.Conv(16, (7, 7), padding=((3, 1), (0, 2)), act="relu", norm=False, bias=True),
                       S.Conv(8, (3, 3), padding=0, act="identity")), "identity", post_act="relu",
            crop_shortcut=True),
), S.Head(10), (20, 20), 3)

SE_MBCONV = S.ArchSpec("se_mbconv", (
    S.Block("conv", (S.Conv(16, (3, 3), 2, act="swish"),)),
    S.Block("mbconv", (S.Conv(48, (1, 1), act="swish"), S.Conv(48, (5, 5), depthwise=True, act="swish"),
                       S.Conv(16, (1, 1), act="identity")), "identity", se=S.SE(8, after=1, gate="hsigmoid")),
    S.Block("mbconv", (S.Conv(32, (1, 1), act="hswish"), S.Conv(32, (3, 3), 2, depthwise=True, act="hswish"),
                       S.Conv(24, (1, 1), act="identity")), se=S.SE(8, after=1)),
), S.Head(10), (24, 24), 3)

# DF nets build BN with epsilon 1e-4 (spec.meta['bn_eps']): folding must use the spec's epsilon.
DF_LIKE = S.ArchSpec("df_like", (
    S.Block("conv", (S.Conv(16, (3, 3), 2, act="relu"),)),
    zoo.resnet_basic(16, 24, 2, in_group="a", mid_group="b", out_group="c"),
), S.Head(0), (16, 16), 3, meta={"bn_eps": 1e-4})


def tiny_supernet() -> S.ArchSpec:
    """Residual chains sharing width groups, projections, depthwise: what `materialize` has to slice."""
    stem = S.Block("conv", (S.Conv(16, (3, 3), act="relu6", width="stem"),), name="stem")
    return S.ArchSpec("tiny_supernet", (
        stem,
        zoo.mbv2_block(16, 48, 16, 1, in_group="stem", mid_group="b1.mid", name="b1"),
        zoo.mbv2_block(16, 48, 24, 2, in_group="stem", mid_group="b2.mid", out_group="b2.out", name="b2"),
        zoo.resnet_basic(24, 24, 1, in_group="b2.out", mid_group="b3.mid", out_group="b2.out"),
        zoo.resnet_bottleneck(24, 16, 32, 2, in_group="b2.out", mid_group="b4.mid", out_group="s3"),
    ), S.Head(10), (16, 16), 3)


# ------------------------------------------------------------------------------------------------ fold

@pytest.mark.parametrize("spec", [LAYERS["mbconv"], SE_MBCONV, MERGED_CROP, DF_LIKE],
                         ids=["mbconv", "se_mbconv", "merged_crop", "bn_eps1e-4"])
def test_fold_batchnorm_keeps_eval_output(spec):
    # small running variances make epsilon matter (DF_LIKE checks the spec's own epsilon is used)
    v = rand_vars(spec, var_range=(0.01, 0.1) if spec is DF_LIKE else (0.5, 2.0))
    fspec, fv = export.fold_batchnorm(spec, v)
    convs = [c for _, _, c in S.iter_convs(fspec)] + [b.shortcut for b in fspec.blocks
                                                       if isinstance(b.shortcut, S.Conv)]
    assert convs and all(not c.norm and c.bias for c in convs)
    assert not jax.tree_util.tree_leaves(fv["batch_stats"])
    if spec is DF_LIKE:  # folding with the default epsilon would be off by more than the tolerance
        _, fv_wrong = export.fold_batchnorm(spec, v, bn_eps=1e-5)
        x1 = parity_input((1, *spec.input_size, spec.in_channels))
        assert np.abs(reference_output(fspec, fv_wrong, x1) - reference_output(spec, v, x1)).max() > 1e-3
    assert S.params(fspec) == sum(a.size for a in jax.tree_util.tree_leaves(fv["params"]))
    x = parity_input((2, *spec.input_size, spec.in_channels))
    ref = reference_output(spec, v, x)
    np.testing.assert_allclose(reference_output(fspec, fv, x), ref, atol=2e-5, rtol=1e-5)
    # the randomised BN statistics matter: with the init statistics the output differs
    init_stats = models.init_variables(models.build_model(spec), 0)["batch_stats"]
    assert np.abs(reference_output(spec, {**v, "batch_stats": init_stats}, x) - ref).max() > 1e-2


def test_fold_formula_depthwise_scales_output_channels():
    spec = LAYERS["depthwise5x5"]
    v = rand_vars(spec)
    _, fv = export.fold_batchnorm(spec, v, bn_eps=1e-3)
    p, s = v["params"]["block0"]["conv0"], v["batch_stats"]["block0"]["conv0"]["bn"]
    mul = p["bn"]["scale"] / np.sqrt(s["var"] + 1e-3)
    np.testing.assert_allclose(fv["params"]["block0"]["conv0"]["kernel"], p["kernel"] * mul, rtol=1e-6)
    np.testing.assert_allclose(fv["params"]["block0"]["conv0"]["bias"], p["bn"]["bias"] - s["mean"] * mul,
                               rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ ONNX

@pytest.mark.parametrize("name", list(LAYERS))
def test_export_onnx_single_layers(name, tmp_path):
    spec = LAYERS[name]
    r = export.export_onnx(spec, rand_vars(spec), tmp_path / f"{name}.onnx")
    assert r.format == "onnx" and r.route == "jax2onnx" and r.path.is_file()
    assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    assert r.input_shape == (1, 16, 16, 8)
    assert r.output_shape == (1, *S.analyze(spec).blocks[-1].out_shape)
    assert r.seconds > 0
    import onnx

    m = onnx.load(str(r.path))
    assert m.ir_version <= 10 and max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert not m.graph.value_info
    assert not any(n.op_type.startswith("BatchNorm") for n in m.graph.node)


def test_export_onnx_dynamic_batch_runs_any_batch(tmp_path):
    spec = LAYERS["mbconv"]
    v = rand_vars(spec)
    r = export.export_onnx(spec, v, tmp_path / "m.onnx", dynamic_batch=True)
    assert r.input_shape == (None, 16, 16, 8) and r.output_shape[0] is None
    x = parity_input((3, 16, 16, 8), seed=7)
    compare(run_onnx(r.path, x), reference_output(spec, v, x), 1e-4, "batch 3")


FAMILIES = ["mobilenet_v2", "resnet18", "resnet50", "vgg19_bn", "df1", "df2"]
FAST_FAMILIES = FAMILIES[:-1]  # df2 (~13 s on a loaded 2-core box) runs in the slow sweep


def _check_family(name: str, tmp_path, route: str, dynamic_batch: bool = False) -> float:
    spec = family_spec(name)
    r = export.export_onnx(spec, rand_vars(spec), tmp_path / f"{name}.onnx", route=route,
                           dynamic_batch=dynamic_batch)
    assert r.max_abs_diff <= 1e-4 and r.output_shape[1:] == (10,)
    return r.max_abs_diff


@pytest.mark.parametrize("name", FAST_FAMILIES)
def test_export_onnx_families(name, tmp_path):
    _check_family(name, tmp_path, "jax2onnx")


@pytest.mark.slow
@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("route", export.ONNX_ROUTES)
@pytest.mark.parametrize("name", FAMILIES)
def test_export_onnx_all_families_both_routes(name, route, dynamic_batch, tmp_path):
    _check_family(name, tmp_path, route, dynamic_batch)


@pytest.mark.parametrize("spec", [MERGED_CROP, SE_MBCONV], ids=["merged_crop", "se_mbconv"])
def test_export_onnx_merged_and_se(spec, tmp_path):
    r = export.export_onnx(spec, rand_vars(spec), tmp_path / "m.onnx")
    assert r.max_abs_diff <= 1e-4


def test_export_onnx_materialized_supernet(tmp_path):
    sup = tiny_supernet()
    v = rand_vars(sup, 3)
    rng = np.random.default_rng(0)
    masks = {}
    for g, c in supernet.width_groups(sup).items():
        m = np.zeros(c, np.float32)
        m[rng.choice(c, int(rng.integers(1, c + 1)), replace=False)] = 1
        masks[g] = m
    sub_spec, sub_v = supernet.materialize(sup, v, {"masks": masks})
    assert S.params(sub_spec) < S.params(sup)
    r = export.export_onnx(sub_spec, sub_v, tmp_path / "sub.onnx")
    assert r.max_abs_diff <= 1e-4
    # ...and the file computes what the masked supernet computes
    x = parity_input(r.input_shape)
    model = models.build_model(sup, "grouped")
    masked = np.asarray(jax.jit(lambda v, x, c: model.apply(v, x, choices=c))(v, x, {"masks": masks}))
    compare(run_onnx(r.path, x), masked, 1e-4, "materialised subnet vs masked supernet")


def test_export_onnx_tflite_route(tmp_path):
    spec = LAYERS["merged9x9"]
    r = export.export_onnx(spec, rand_vars(spec), tmp_path / "m.onnx", route="tflite")
    assert r.route == "tflite" and r.max_abs_diff <= 1e-4
    assert r.input_shape == (1, 16, 16, 8) and r.output_shape == (1, 12, 10, 12)
    spec = family_spec("resnet18")
    assert export.export_onnx(spec, rand_vars(spec), tmp_path / "r.onnx", route="tflite").max_abs_diff <= 1e-4


def test_parity_failure_raises(tmp_path, monkeypatch):
    spec = LAYERS["dense3x3"]

    def wrong_fold(spec, variables, bn_eps=None):  # forgets the running mean
        v = jax.tree_util.tree_map_with_path(
            lambda p, a: np.zeros_like(a) if getattr(p[-1], "key", "") == "mean" else a, variables)
        return fold_mod.fold_batchnorm(spec, v, bn_eps=bn_eps)

    monkeypatch.setattr(onnx_export, "fold_batchnorm", wrong_fold)
    with pytest.raises(ExportError, match="max_abs_diff .* exceeds the tolerance 0.0001"):
        export.export_onnx(spec, rand_vars(spec), tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())  # checked before writing: nothing left behind
    with pytest.raises(ExportError, match="shape"):
        compare(np.zeros((1, 2)), np.zeros((1, 3)), 1e-4, "x")


def test_bad_arguments(tmp_path):
    spec = LAYERS["dense3x3"]
    with pytest.raises(ExportError, match="valid routes: jax2onnx, tflite"):
        export.export_onnx(spec, rand_vars(spec), tmp_path / "m.onnx", route="torch")
    with pytest.raises(ExportError, match="valid formats: onnx, tflite, tensorrt"):
        export.export_model(spec, rand_vars(spec), tmp_path, formats=("onnx", "coreml"))
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------- TFLite

def test_export_tflite_fp32_family(tmp_path):
    spec = family_spec("mobilenet_v2")
    r = export.export_tflite(spec, rand_vars(spec), tmp_path / "m.tflite")
    assert r.format == "tflite" and r.precision == "fp32" and r.path.is_file()
    assert r.input_shape == (1, 32, 32, 3) and r.output_shape == (1, 10)
    assert r.max_abs_diff <= 1e-4


def test_export_tflite_fp16(tmp_path):
    spec = SE_MBCONV.replace(head=S.Head(0))  # feature maps of O(1): fp16 rounding is visible
    v = rand_vars(spec)
    r = export.export_tflite(spec, v, tmp_path / "m.tflite", precision="fp16")
    assert r.precision == "fp16" and r.max_abs_diff is not None
    fp32 = export.export_tflite(spec, v, tmp_path / "m32.tflite")
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {d["dtype"] for d in Interpreter(model_path=str(r.path)).get_tensor_details()}
    assert np.float16 in dtypes  # weights stored as float16, dequantised at load
    assert fp32.max_abs_diff <= 1e-4 < r.max_abs_diff <= 1e-2 * max(1.0, np.abs(reference_output(
        spec, v, parity_input(r.input_shape))).max())


def test_export_tflite_blocks(tmp_path):
    for spec in (LAYERS["mbconv"], MERGED_CROP):
        r = export.export_tflite(spec, rand_vars(spec), tmp_path / "b.tflite")
        assert r.max_abs_diff <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_export_tflite_all_families(name, tmp_path):
    spec = family_spec(name)
    assert export.export_tflite(spec, rand_vars(spec), tmp_path / "m.tflite").max_abs_diff <= 1e-4


# ------------------------------------------------------------------------------------------ export_model

def test_export_model_writes_files_and_summary(tmp_path):
    spec = family_spec("resnet18")
    out = tmp_path / "out"
    res = export.export_model(spec, rand_vars(spec), out, formats=("onnx", "tflite"))
    assert set(res) == {"onnx", "tflite"}
    assert (out / "model.onnx").is_file() and (out / "model.tflite").is_file()
    summary = json.loads((out / "export.json").read_text())
    assert summary["model"] == spec.name
    for fmt in ("onnx", "tflite"):
        entry = summary["formats"][fmt]
        assert entry["path"] == str(out / export.FORMATS[fmt])
        assert entry["max_abs_diff"] <= 1e-4 and entry["seconds"] > 0 and entry["route"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -------------------------------------------------------------------------------------------- TensorRT

def _gpu_visible() -> bool:
    from jaxnas.runtime.cuda_driver import gpu_name

    return gpu_name(0) is not None


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed")
def test_tensorrt_missing_is_one_line_error(tmp_path):
    from jaxnas.latency.backends import TENSORRT_MISSING, BackendError

    spec = LAYERS["dense3x3"]
    for call in (lambda: export.export_tensorrt(spec, rand_vars(spec), tmp_path / "m.engine"),
                 lambda: export.export_model(spec, rand_vars(spec), tmp_path, formats=("tensorrt",))):
        with pytest.raises(ExportError) as info:
            call()
        assert str(info.value) == TENSORRT_MISSING and isinstance(info.value, BackendError)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt (pip install tensorrt) and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_tensorrt(precision, tmp_path):
    if not _gpu_visible():
        pytest.skip("needs an NVIDIA GPU")
    for spec in (LAYERS["mbconv"], family_spec("resnet18")):
        r = export.export_tensorrt(spec, rand_vars(spec), tmp_path / f"{spec.name}.engine", precision=precision,
                                   onnx_path=tmp_path / f"{spec.name}.onnx")
        assert r.format == "tensorrt" and r.path.is_file() and (tmp_path / f"{spec.name}.onnx").is_file()
        assert r.max_abs_diff is not None  # the bound itself is checked by export_tensorrt
        x = parity_input(r.input_shape, seed=3)
        y = export.run_engine(r.path, x)
        assert y.shape == r.output_shape
    res = export.export_model(spec, rand_vars(spec), tmp_path / "out", formats=("tensorrt",), precision=precision)
    assert (tmp_path / "out" / "model.engine").is_file() and not (tmp_path / "out" / "model.onnx").exists()
    assert res["tensorrt"].max_abs_diff is not None
