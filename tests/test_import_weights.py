"""jaxnas.weights and `jaxnas import-weights`: torchvision / timm state dicts -> work dirs.

Two groups:
* without torch: the map round-trips every supported model (jaxnas -> state dict -> jaxnas, exactly),
  bad inputs get one line and exit 2, and an imported work dir serves eval / export / latency / depth;
* with the `torch-ref` extra: the imported net's logits equal the real torchvision / timm model's
  (random weights and BN statistics, eval mode) within 1e-4, also through ONNX export.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxnas import cli, models
from jaxnas.weights import (
    SOURCE_MODELS, WeightsError, import_state_dict, read_state_dict, resolve_model, to_state_dict, zoo_spec)

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def random_state_dict(model: str, width: float | None = None, classes: int = 1000, res: int = 32,
                      seed: int = 0) -> tuple[dict, dict]:
    """(state dict, jaxnas variables) of a zoo net: Kaiming-scaled kernels, random BN statistics and biases
    (float32 straight from the generator: VGG-19's 143 M parameters take a fraction of a second)."""
    import jax
    src, w = resolve_model(model, width)
    spec = zoo_spec(src, w, classes, res)
    net = models.build_model(spec)
    x = jax.ShapeDtypeStruct((1, res, res, 3), np.float32)
    shapes = jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = getattr(path[-1], "key", ""), leaf.shape
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if name in ("mean", "bias"):
            return (0.1 * rng.standard_normal(shape, dtype=np.float32))
        fan_out = int(np.prod(shape[:-2])) * shape[-1] if len(shape) == 4 else shape[-1]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_out))

    v = jax.tree_util.tree_map_with_path(fill, dict(shapes))
    return to_state_dict(spec, v, model, width), v


def save_safetensors(state: dict, path: Path) -> Path:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(a) for k, a in state.items()}, str(path))
    return path


needs_safetensors = pytest.mark.skipif(importlib.util.find_spec("safetensors") is None,
                                       reason="safetensors is not installed: pip install -e '.[weights]'")


# ------------------------------------------------------------------------------------ the map, no torch

@pytest.mark.parametrize("model, width", [("mobilenet_v2", 1.0), ("mobilenet_v2", 0.5), ("resnet18", None),
                                          ("resnet34", None), ("resnet50", None), ("vgg19_bn", None),
                                          ("mobilenetv2_100", None), ("mobilenetv2_140", None)])
def test_state_dict_round_trip_is_exact(model, width):
    state, v = random_state_dict(model, width)
    imported = import_state_dict(state, model, width=width, resolution=32)
    assert imported.tensors == len(state) and imported.classifier == "imported"
    assert imported.spec.metadata["bn_eps"] == 1e-5
    import jax
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(v)[0],
                                jax.tree_util.tree_flatten_with_path(imported.variables)[0]):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), b)


def test_param_counts_match_the_source_libraries():
    # torchvision / timm totals (weights and biases, without BN running statistics).
    want = {"mobilenet_v2": 3_504_872, "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
            "vgg19_bn": 143_678_248, "mobilenetv2_100": 3_504_872, "mobilenetv2_140": 6_108_776}
    from jaxnas.spec import params
    for name, n in want.items():
        src, w = resolve_model(name)
        assert params(zoo_spec(src, w, 1000, 224)) == n, name


def test_vgg_first_classifier_layer_reads_the_nchw_flatten():
    """torch flattens the 512x7x7 map channel-major; jaxnas flattens NHWC: rows are permuted."""
    from jaxnas.weights.layouts import to_jax, to_torch
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(7, 7, 3)).astype(np.float32)         # one NHWC feature map, C = 3
    w = rng.normal(size=(5, 3 * 49)).astype(np.float32)           # torch Linear(147 -> 5)
    torch_out = w @ feat.transpose(2, 0, 1).reshape(-1)            # NCHW flatten
    np.testing.assert_allclose(feat.reshape(-1) @ to_jax(w, "dense_nchw"), torch_out, rtol=1e-5)
    np.testing.assert_array_equal(to_torch(to_jax(w, "dense_nchw"), "dense_nchw"), w)


def test_model_names():
    assert resolve_model("timm/mobilenetv2_140.ra_in1k")[0].name == "mobilenetv2_140"
    assert resolve_model("mobilenet_v2", 0.75)[1] == 0.75
    assert set(SOURCE_MODELS) >= {"mobilenet_v2", "resnet18", "resnet34", "resnet50", "vgg19_bn",
                                  "mobilenetv2_100", "mobilenetv2_140"}
    for bad, match in (("mobilenetv3", "unknown"), ("mobilenetv2_110d", "depth"), ("resnet5O", "did you mean")):
        with pytest.raises(WeightsError, match=match):
            resolve_model(bad)
    with pytest.raises(WeightsError, match="does not apply"):
        resolve_model("mobilenetv2_140", 1.0)


@needs_safetensors
def test_half_precision_files_import_as_float32(tmp_path):
    import ml_dtypes
    state, _ = random_state_dict("resnet18")
    for dtype in (ml_dtypes.bfloat16, np.float16):
        half = {k: (a.astype(dtype) if a.dtype == np.float32 else a) for k, a in state.items()}
        read = read_state_dict(save_safetensors(half, tmp_path / "h.safetensors"))
        assert read.dtypes == (np.dtype(dtype).name,)
        imported = import_state_dict(read.tensors, "resnet18", resolution=32)
        np.testing.assert_array_equal(imported.variables["params"]["block2"]["conv1"]["kernel"],
                                      half["layer1.0.conv2.weight"].astype(np.float32).transpose(2, 3, 1, 0))


def test_num_classes_keeps_or_replaces_the_classifier():
    state, v = random_state_dict("resnet18", classes=10)
    same = import_state_dict(state, "resnet18", num_classes=10, resolution=32)
    assert same.classifier == "imported" and same.spec.head.num_classes == 10
    np.testing.assert_array_equal(same.variables["params"]["head"]["classifier"]["kernel"],
                                  v["params"]["head"]["classifier"]["kernel"])
    new = import_state_dict(state, "resnet18", num_classes=7, resolution=32)
    assert new.classifier == "new" and new.source_num_classes == 10 and new.spec.head.num_classes == 7
    assert new.variables["params"]["head"]["classifier"]["kernel"].shape == (512, 7)
    np.testing.assert_array_equal(new.variables["params"]["block2"]["conv0"]["kernel"],
                                  v["params"]["block2"]["conv0"]["kernel"])


def test_misfits_are_refused_naming_the_keys():
    state, _ = random_state_dict("mobilenetv2_100")
    with pytest.raises(WeightsError) as e:                       # timm keys, torchvision model
        import_state_dict(state, "mobilenet_v2")
    msg = str(e.value)
    assert "\n" not in msg and "262 missing (features.0.0.weight" in msg and "unexpected (conv_stem.weight" in msg
    assert "use --model mobilenetv2_100" in msg and "nothing was written" in msg
    broken = dict(state)
    del broken["blocks.3.1.bn2.running_var"]
    broken["blocks.3.1.extra.weight"] = np.zeros(3, np.float32)
    broken["conv_head.weight"] = broken["conv_head.weight"][:, :-1]
    broken["bn1.bias"] = np.full(32, np.nan, np.float32)
    with pytest.raises(WeightsError) as e:
        import_state_dict(broken, "mobilenetv2_100")
    msg = str(e.value)
    assert "1 missing (blocks.3.1.bn2.running_var)" in msg and "1 unexpected (blocks.3.1.extra.weight)" in msg
    assert "1 mis-shaped (conv_head.weight (1280, 319, 1, 1) != (1280, 320, 1, 1))" in msg
    assert "1 non-finite (bn1.bias)" in msg
    # num_batches_tracked is optional (old checkpoints lack it).
    lean = {k: a for k, a in state.items() if not k.endswith("num_batches_tracked")}
    assert import_state_dict(lean, "mobilenetv2_100").tensors == len(lean)


# ------------------------------------------------------------------------------------ CLI, no torch

@needs_safetensors
def test_bad_inputs_get_one_line_and_exit_2(capsys, tmp_path):
    state, _ = random_state_dict("mobilenet_v2", 0.35)
    good = save_safetensors(state, tmp_path / "m.safetensors")
    text = tmp_path / "notes.pth"
    text.write_text("not a state dict\n")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-1000])
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    out = tmp_path / "w"
    cases = [
        ((good, "--model", "mobilenetv2_035", "--out", out), "does not fit timm mobilenetv2_035"),   # wrong layout
        ((good, "--model", "mobilenet_v2", "--out", out), "use --model mobilenet_v2 --width 0.35"),  # wrong width
        ((good, "--model", "mobilenetv3_large", "--out", out), "--model mobilenetv3_large: unknown"),
        ((text, "--model", "mobilenet_v2", "--out", out), "neither a safetensors file nor a torch.save file"),
        ((corrupt, "--model", "mobilenet_v2", "--out", out), "not a readable safetensors file"),
        ((tmp_path / "nope.pth", "--model", "mobilenet_v2", "--out", out), "no such file"),
        ((good, "--model", "mobilenet_v2", "--width", "0.35", "--out", a_file), "is a file"),
        ((good, "--model", "mobilenet_v2", "--width", "0.35", "--out", other), "not an earlier import"),
        ((good, "--model", "resnet18", "--width", "0.5", "--out", out), "does not apply to resnet18"),
    ]
    for argv, expect in cases:
        code, stdout, err = run_cli(capsys, "import-weights", *argv)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expect in err, (argv, err)
        assert not out.exists()                     # never a partial work dir
    code, _, err = run_cli(capsys, "import-weights", good, "--model", "mobilenet_v2", "--width", "0.35",
                           "--out", out, "--set", "data.sourse=embedded")
    assert code == 2 and "did you mean 'data.source'" in err and not out.exists()


@needs_safetensors
def test_import_then_eval_export_latency(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    state, v = random_state_dict("mobilenet_v2", 0.35, classes=10)
    src = save_safetensors(state, tmp_path / "mbv2_035.safetensors")
    wd = tmp_path / "w"
    data = ("--set", "data.source=embedded", "--set", "data.channels=3", "--set", "data.limit_test=100")
    code, out, err = run_cli(capsys, "import-weights", src, "--model", "mobilenet_v2", "--width", "0.35",
                             "--out", wd, "--resolution", "32", *data, "--json")
    assert code == 0, err
    s = json.loads(out)
    from jaxnas.weights import file_sha256
    assert s["source"] == str(src) and s["source_sha256"] == file_sha256(src) and s["layout"] == "torchvision"
    assert s["model"] == "mobilenet_v2" and s["width"] == 0.35 and s["num_classes"] == 10 and s["tensors"] == 314
    assert json.loads((wd / "summary.json").read_text()) == s
    # A normal work dir: the config reloads, load_workdir gives back the spec and the exact weights.
    from jaxnas.config import load_config
    from jaxnas.workdir import load_workdir
    cfg = load_config(wd / "config.yaml")
    assert (cfg.model.name, cfg.model.width, cfg.data.image_size, cfg.data.source) == ("mobilenet_v2", 0.35, 32,
                                                                                       "embedded")
    _, spec, loaded = load_workdir(wd)
    assert spec.metadata["bn_eps"] == 1e-5 and spec.input_size == (32, 32)
    np.testing.assert_array_equal(loaded["params"]["block5"]["conv1"]["kernel"],
                                  v["params"]["block5"]["conv1"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["block5"]["conv1"]["bn"]["var"],
                                  v["batch_stats"]["block5"]["conv1"]["bn"]["var"])
    code, out, err = run_cli(capsys, "eval", wd, "--json")
    assert code == 0 and json.loads(out)["test_examples"] == 100, err
    code, out, err = run_cli(capsys, "export", wd, "--format", "onnx", "--out", tmp_path / "exp", "--json")
    assert code == 0 and json.loads(out)["onnx"]["max_abs_diff"] <= TOL, err
    code, out, err = run_cli(capsys, "latency", "measure", wd, "--warmup", "1", "--runs", "3", "--json")
    assert code == 0 and json.loads(out)["median_ms"] > 0, err
    # Importing again into the same work dir replaces it (an earlier import, nothing else).
    code, out, err = run_cli(capsys, "import-weights", src, "--model", "mobilenet_v2", "--width", "0.35",
                             "--out", wd, "--resolution", "32", *data)
    assert code == 0 and "as mobilenet_v2_0.35 (" in out and not list(tmp_path.glob(".w.*")), err


def _depth_config(baseline: Path, **args):
    from jaxnas.config import config_from_dict
    return config_from_dict({
        "data": {"source": "embedded", "image_size": 16, "channels": 3, "holdout": 0.2, "limit_train": 400,
                 "limit_test": 200, "batch_size": 32, "eval_batch_size": 100},
        "model": {"name": "mobilenet_v2", "width": 0.35, "small_input": True, "num_classes": 10},
        "train": {"epochs": 1, "max_steps": 2, "progress": False, "log_every": 2, "eval_every_epochs": 1},
        "search": {"method": "depth", "args": {"baseline": str(baseline), **args}}})


def _import_mbv2_035(tmp_path: Path) -> Path:
    from jaxnas.weights import import_weights
    state, _ = random_state_dict("mobilenet_v2", 0.35, classes=10)
    import_weights(save_safetensors(state, tmp_path / "m.safetensors"), "mobilenet_v2", tmp_path / "base",
                   width=0.35, resolution=16)
    return tmp_path / "base"


@needs_safetensors
def test_depth_baseline_and_distill_teacher_accept_an_imported_workdir(tmp_path):
    """Depth compression's first step on `search.args.baseline` (load, fit the configured model, evaluate),
    and `train.distill.teacher` (a work dir the trainer loads)."""
    from jaxnas.config import override_config
    from jaxnas.methods.depth.mergeable import mergeable_spec, transfer_variables
    from jaxnas.pipeline import prepare
    from jaxnas.train import load_variables
    from jaxnas.trainer import Trainer

    base_dir = _import_mbv2_035(tmp_path)
    cfg = _depth_config(base_dir)
    prep = prepare(cfg, search=True)
    base = mergeable_spec(prep.spec)
    variables = transfer_variables(load_variables(base_dir), base)
    trainer = Trainer(cfg, prep.dataset, log=lambda _m: None)
    assert 0.0 <= trainer.evaluate(base, variables, "test")["accuracy"] <= 1.0
    teacher = Trainer(override_config(cfg, [f"train.distill.teacher={base_dir}", "train.distill.weight=0.5"]),
                      prep.dataset).teacher_from_config()
    assert teacher[0].metadata["weights_model"] == "mobilenet_v2" and teacher[0].head.num_classes == 10


@pytest.mark.slow
@needs_safetensors
def test_depth_search_runs_from_an_imported_baseline(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_depth_pipeline import write_synthetic_table

    from jaxnas.methods.depth.mergeable import body_of, mergeable_spec
    from jaxnas.pipeline import prepare, run

    base_dir = _import_mbv2_035(tmp_path)
    cfg = _depth_config(base_dir)
    write_synthetic_table(body_of(mergeable_spec(prepare(cfg).spec)).chain, tmp_path / "t.csv")
    from jaxnas.config import override_config
    cfg = override_config(cfg, [f"search.args.time_table={tmp_path / 't.csv'}", "search.args.time_fraction=0.9",
                                "search.args.prec=null", "search.args.importance_steps=0",
                                "search.args.importance_padding=same", "search.args.importance_batch_size=16",
                                "search.args.importance_eval_examples=50", "search.args.finetune_epochs=1",
                                # random weights with statistics that do not match the data: at lr 0.1 two
                                # steps blow the kernels up (x1e4) and the merge check fails on rounding
                                "search.args.finetune_lr=0.001"])
    s = run(cfg, tmp_path / "depth", search=True, deploy=False, log=None)
    assert s["baseline_variables"] == str(base_dir) and s["max_merge_diff"] <= TOL


# ------------------------------------------------------------------------------------ parity with PyTorch

_TORCHVISION_OPS = []   # keeps the op definitions below alive (a Library drops them when collected)


def _declare_torchvision_ops(torch) -> None:
    """Let a torchvision whose C++ ops cannot load import its pure-Python models.

    The registry's torchvision 0.28 is built against CUDA torch 2.13 (its _C.so needs libtorch_cuda.so);
    beside the CPU build of torch 2.13 that extension does not load, and `import torchvision` then fails
    on two unguarded fake-kernel registrations (`operator torchvision::nms does not exist`).  Declaring
    the two schemas (no kernels: calling nms would raise) is enough: classification models use no
    torchvision C++ op.  With a matched torch / torchvision pair this is never reached.
    """
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OPS.append(lib)


def torch_reference():
    """(torch, torchvision, timm); skips only when one is not installed."""
    for pkg in ("torch", "torchvision", "timm", "safetensors"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed: pip install -e '.[torch-ref]' runs the PyTorch parity tests")
    import torch
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        _declare_torchvision_ops(torch)
        import torchvision
    import timm
    return torch, torchvision, timm


def reference_model(layout: str, name: str, width: float | None, seed: int = 0):
    """The real torchvision / timm model in eval mode with random weights, conditioned like a trained one.

    BN affine parameters are random (gamma in [0.2, 0.6], as trained residual nets keep their branch
    outputs small), then the running statistics come from one train-mode pass, so every BN really
    normalises; conv biases are random and Linear layers give O(1) logits.  (With gamma ~ 1 a random
    ResNet-50 is so ill-conditioned that PyTorch's own float32 logits are 2e-4 off its float64 ones.)
    """
    torch, torchvision, timm = torch_reference()
    torch.manual_seed(seed)
    if layout == "timm":
        m = timm.create_model(name, pretrained=False)
    else:
        m = torchvision.models.get_model(name, weights=None, **({"width_mult": width} if width else {}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, mod.in_features ** -0.5, generator=g)
                mod.bias.normal_(0, 0.1, generator=g)
            if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
                mod.bias.normal_(0, 0.1, generator=g)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.2, 0.6, generator=g)
                mod.bias.normal_(0, 0.2, generator=g)
                mod.momentum = 1.0                 # running stats := this batch's
        m.train()
        m(torch.randn(8, 3, 64, 64, generator=g))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = 0.1
    return m.eval()


def save_state_dict(torch, model, path: Path) -> Path:
    if path.suffix == ".safetensors":
        return save_safetensors({k: t.numpy() for k, t in model.state_dict().items()}, path)
    torch.save(model.state_dict(), path)
    return path


def jax_logits(imported, x_nchw: np.ndarray, dtype=np.float32) -> np.ndarray:
    import jax
    net = models.build_model(imported.spec, bn_eps=imported.spec.metadata["bn_eps"])
    with jax.enable_x64(dtype == np.float64):
        v = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), imported.variables)
        return np.asarray(jax.jit(net.apply)(v, x_nchw.transpose(0, 2, 3, 1).astype(dtype)))


PARITY = [  # layout, model, torchvision width_mult, input (H, W), file format
    ("torchvision", "mobilenet_v2", None, (64, 64), "pth"),
    ("torchvision", "mobilenet_v2", 0.5, (64, 64), "safetensors"),
    ("torchvision", "resnet18", None, (64, 64), "safetensors"),
    ("torchvision", "resnet34", None, (64, 64), "pth"),
    ("torchvision", "resnet50", None, (64, 64), "pth"),
    # 64x96 -> a 2x3 map that AdaptiveAvgPool2d(7) spreads unevenly: a row/column mix-up would show.
    # The heaviest (143 M parameters, ~5 GB peak with the float64 check): slow, CI runs it after the default suite.
    pytest.param("torchvision", "vgg19_bn", None, (64, 96), "pth", marks=pytest.mark.slow),
    ("timm", "mobilenetv2_100", None, (64, 64), "safetensors"),
    ("timm", "mobilenetv2_140", None, (64, 64), "pth"),
    ("timm", "resnet50", None, (64, 64), "safetensors"),   # timm's ResNets share torchvision's layout
]


def _parity_id(p) -> str:
    layout, name, width, _, fmt = p.values if hasattr(p, "values") else p
    return f"{layout}-{name}{'-' + str(width) if width else ''}-{fmt}"


@pytest.mark.parametrize("layout, name, width, hw, fmt", PARITY, ids=[_parity_id(p) for p in PARITY])
def test_logits_equal_the_pytorch_model(layout, name, width, hw, fmt, tmp_path):
    """float32: within 1e-4 of PyTorch's logits.  float64 (both sides): equal to 1e-9, i.e. the mapping is
    exact and the float32 difference is rounding (PyTorch's own float32 error is printed beside it)."""
    torch, _, _ = torch_reference()
    ref = reference_model(layout, name, width)
    path = save_state_dict(torch, ref, tmp_path / f"{name}.{fmt}")
    state = read_state_dict(path)
    assert state.reader == ("safetensors" if fmt == "safetensors" else "torch.load")
    imported = import_state_dict(state.tensors, name, width=width, resolution=hw[0])
    assert imported.source.layout == ("timm" if name.startswith("mobilenetv2_") else "torchvision")
    x = np.random.default_rng(1).normal(size=(2, 3, *hw)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
        want64 = ref.double()(torch.from_numpy(x).double()).numpy()
    got, got64 = jax_logits(imported, x), jax_logits(imported, x, np.float64)
    diff, diff64 = float(np.abs(got - want).max()), float(np.abs(got64 - want64).max())
    print(f"\nparity {layout} {name}{f' x{width}' if width else ''} {hw[0]}x{hw[1]} ({fmt}): max |diff| "
          f"{diff:.2e} (float64: {diff64:.1e}; PyTorch float32 vs float64: {np.abs(want - want64).max():.1e}), "
          f"max |logit| {np.abs(want).max():.2f}")
    assert got.shape == want.shape and diff <= TOL and diff64 <= 1e-9


def test_onnx_export_of_an_imported_net_matches_pytorch(tmp_path):
    torch, _, _ = torch_reference()
    pytest.importorskip("onnxruntime")
    from jaxnas import export
    from jaxnas.export.parity import run_onnx
    ref = reference_model("timm", "mobilenetv2_140", None, seed=3)
    imported = import_state_dict(read_state_dict(save_state_dict(torch, ref, tmp_path / "m.pth")).tensors,
                                 "mobilenetv2_140", resolution=64)
    res = export.export_onnx(imported.spec, imported.variables, tmp_path / "m.onnx", batch_size=2)
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = run_onnx(res.path.read_bytes(), x.transpose(0, 2, 3, 1))
    diff = float(np.abs(got - want).max())
    print(f"\nparity ONNX (jax2onnx, BN folded) timm mobilenetv2_140 64x64: max |diff| {diff:.2e}")
    assert res.max_abs_diff <= TOL and diff <= TOL


def test_torch_files_read_the_same_with_and_without_torch(tmp_path, monkeypatch):
    """torch.load(weights_only=True), and the restricted numpy reader used when torch is absent."""
    torch, _, _ = torch_reference()
    sd = {"w": torch.randn(4, 3, 3, 3), "t": torch.randn(5, 6).t(), "h": torch.randn(7).half(),
          "b": torch.randn(7).bfloat16(), "n": torch.tensor(12), "s": torch.arange(10)[2:7]}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "c.pth")
    with_torch = read_state_dict(tmp_path / "c.pth")
    monkeypatch.setitem(sys.modules, "torch", None)             # `import torch` now fails
    without = read_state_dict(tmp_path / "c.pth")
    assert (with_torch.reader, without.reader) == ("torch.load", "zip (numpy)")
    assert with_torch.notes == without.notes == ("unwrapped 'state_dict'", "stripped prefix 'module.'")
    for k, t in sd.items():
        want = t.float().numpy() if t.is_floating_point() else t.numpy()
        for got in (with_torch.tensors[k], without.tensors[k]):
            assert got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got, want.dtype), want)


def test_torch_objects_that_are_not_state_dicts_are_refused(capsys, tmp_path):
    torch, _, _ = torch_reference()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")      # a pickled model, not its state dict
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    for f, expect in (("module.pth", "weights_only"), ("list.pth", "holds list, not a state dict")):
        code, _, err = run_cli(capsys, "import-weights", tmp_path / f, "--model", "resnet18", "--out", tmp_path / "w")
        assert code == 2 and err.count("\n") == 1 and expect in err, err
