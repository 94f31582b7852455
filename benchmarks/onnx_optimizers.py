"""Which ONNX clean-up gives PyTorch-lean graphs?  Node counts of one network through each candidate.

The starting point is what jaxnas exported before: jax2onnx's trace of the NHWC Flax model (BN folded),
where every Conv sits between two Transposes and its bias is a separate Add.  Candidates: onnxruntime's
own offline optimisation (ORT_ENABLE_BASIC, saved with `optimized_model_filepath`), tf2onnx's optimiser,
onnxsim and onnxscript's optimiser / rewriter (when installed: they are not jaxnas dependencies),
`export.onnx_graph`'s passes alone, and what `export.export_onnx` ships: the network traced in NCHW
(`export.nchw`) + those passes.  Each row: Transposes (and how many sit between layers), Adds, Adds
that only carry a bias, Dropout, non-Constant nodes, max |file - JAX| and the seconds the clean-up took.

    python benchmarks/onnx_optimizers.py [--model mobilenet_v2] [--resolution 64] [--num-classes 10]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from jaxnas.export import onnx_graph
from jaxnas.export.fold import fold_batchnorm
from jaxnas.export.onnx_export import ONNX_OPSET, _finalize, _load_jax2onnx, onnx_bytes
from jaxnas.export.parity import jax_forward, parity_input, random_variables, reference_output, run_onnx
from jaxnas import zoo


def nhwc_trace(spec, variables):
    """jax2onnx's graph of the NHWC Flax model (BN folded): the export before `export.nchw`."""
    fspec, fvars = fold_batchnorm(spec, variables)
    h, w = spec.input_size
    return _finalize(_load_jax2onnx().to_onnx(jax_forward(fspec, fvars), [(1, h, w, spec.in_channels)],
                                              opset=ONNX_OPSET, input_names=["input"], output_names=["output"]))


def ort_basic(model):
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(d) / "m.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def tf2onnx_optimizer(model):
    from tf2onnx import optimizer
    from tf2onnx.graph import GraphUtil

    return optimizer.optimize_graph(GraphUtil.create_graph_from_onnx_model(model)).make_model("m")


def onnxsim_simplify(model):
    import onnxsim

    return onnxsim.simplify(model)[0]


def onnxscript_optimize(model):
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def onnxscript_rewrite(model):
    from onnxscript import rewriter

    return rewriter.rewrite(model)


# tf2onnx last: onnxsim segfaults once TensorFlow (which tf2onnx imports) is loaded
CANDIDATES = {"ORT_ENABLE_BASIC (offline)": ort_basic, "onnxsim": onnxsim_simplify,
              "onnxscript optimizer": onnxscript_optimize, "onnxscript rewriter": onnxscript_rewrite,
              "onnx_graph passes": onnx_graph.lean_graph, "tf2onnx optimizer": tf2onnx_optimizer}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=10)
    a = ap.parse_args(argv)
    spec = zoo.get_spec(a.model, resolution=a.resolution, num_classes=a.num_classes)
    variables = random_variables(spec)
    x = parity_input((1, *spec.input_size, spec.in_channels))
    ref = reference_output(spec, variables, x)
    base = nhwc_trace(spec, variables)
    import onnx

    print(f"{spec.name} @{a.resolution} px: {'graph':40s} {'Transpose (between layers)':>26s} {'Add':>4s} "
          f"{'bias Add':>8s} {'Dropout':>7s} {'nodes':>5s} {'max diff':>9s} {'s':>5s}")

    def row(name, model, seconds):
        ops = onnx_graph.op_counts(model)
        diff = float(np.abs(run_onnx(model.SerializeToString(), x) - ref).max())
        print(f"{'':{len(spec.name) + len(str(a.resolution)) + 6}s} {name:40s} "
              f"{ops['Transpose']:>11d} ({len(onnx_graph.layout_transposes(model)):>3d})          "
              f"{ops['Add']:>4d} {len(onnx_graph.bias_adds(model)):>8d} {ops['Dropout']:>7d} "
              f"{sum(v for k, v in ops.items() if k != 'Constant'):>5d} {diff:9.1e} {seconds:5.2f}", flush=True)

    row("jax2onnx, NHWC model (before)", base, 0.0)
    for name, fn in CANDIDATES.items():
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn(copy.deepcopy(base))
        except ImportError as e:
            print(f"{'':{len(spec.name) + len(str(a.resolution)) + 6}s} {name:40s} not installed ({e.name})")
            continue
        row(name, out if out is not None else base, time.perf_counter() - t0)
    t0 = time.perf_counter()
    shipped = onnx.ModelProto.FromString(onnx_bytes(spec, variables))
    row("export_onnx: NCHW trace+passes (s: all)", shipped, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
