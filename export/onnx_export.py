"""ArchSpec + variables -> ONNX (NHWC or NCHW in, model output out), BN folded, parity-checked.

Two routes:

* ``jax2onnx`` (default): ``jax2onnx.to_onnx`` on the eval-mode forward written in NCHW
  (`export.nchw`), opset 18, then the graph passes of `export.onnx_graph` (biases into the Convs and
  Gemms, pads into the pools, no Identity/Dropout, no broadcast Expands).  The result is what
  `torch.onnx.export` writes: one Conv per spec conv with its bias, activations, residual Adds,
  ReduceMean, Gemm, and no Transpose between layers; an NHWC boundary (the default) adds one Transpose
  at the input (and one at the output of a head-less net), `input_layout='NCHW'` none.  Tracing the
  NHWC Flax model instead wraps every Conv in a Transpose pair and leaves each bias as an Add
  (MobileNetV2: 156 Transposes, 62 Adds around 52 Convs).  The `value_info` shape metadata is dropped
  (onnxruntime rejects some of jax2onnx's on ResNets), and the IR version is capped at 10 (onnxruntime
  1.31 loads at most IR 13; TensorRT's parser is older still).
* ``tflite``: jax2tf -> ``tf.lite.TFLiteConverter`` -> ``tf2onnx.convert.from_tflite``.  The TFLite
  converter fuses bias/activation into the convs and the result has two Transposes at the boundary.
  With a dynamic (polymorphic) batch the TFLite converter un-folds BN and the file runs 3-45x slower
  (with BN pre-folded here: 1.1-2.7x at batch 1, from unfused bias/activation and Shape/Expand chains),
  so use this route with static batch sizes only (README.md).  Default: jax2onnx (equal parity and static
  runtime, 10-25x faster export, sound dynamic batch).  (``jax2tf`` + ``tf2onnx.convert.from_function``
  does not work: tf2onnx cannot convert the ``XlaCallModule`` op that jax2tf emits.)  The same graph
  passes run on its output (an NCHW boundary cancels tf2onnx's boundary Transposes).
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from jaxnas.io_utils import atomic_write_bytes
from jaxnas.spec import ArchSpec, validate

from jaxnas.export.fold import fold_batchnorm, spec_bn_eps
from jaxnas.export.nchw import nchw_forward
from jaxnas.export.onnx_graph import _rename, lean_graph
from jaxnas.export.parity import LAYOUTS, ExportError, ExportResult, check_choice, check_file, last_line, run_onnx

__all__ = ["export_onnx", "onnx_bytes", "check_layout", "ONNX_ROUTES", "DEFAULT_ONNX_ROUTE", "ONNX_LAYOUTS",
           "DEFAULT_LAYOUT", "ONNX_OPSET", "ONNX_IR_VERSION"]

ONNX_ROUTES = ("jax2onnx", "tflite")
DEFAULT_ONNX_ROUTE = "jax2onnx"
ONNX_LAYOUTS = LAYOUTS
# NHWC: what the JAX model, TFLite and every latency table here feed; NCHW: what PyTorch users feed.
DEFAULT_LAYOUT = "NHWC"
ONNX_OPSET = 18
ONNX_IR_VERSION = 10


def check_layout(layout: str) -> None:
    check_choice(layout, ONNX_LAYOUTS, "input layout", "valid layouts")


def _shape_of(value_info) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims)


def _finalize(proto) -> Any:
    """Drop intermediate shape metadata, cap the IR version, keep one input and one output."""
    del proto.graph.value_info[:]
    proto.ir_version = min(int(proto.ir_version), ONNX_IR_VERSION)
    return proto


def _load_jax2onnx():
    """Import jax2onnx with its plugins, minus the Equinox layer plugins and the example models.

    jax2onnx imports every plugin module on its first conversion; the Equinox ones build and
    jit-compile Equinox modules at import time (18 s of the first export on a 2-core machine) and
    nothing jaxnas exports needs them.  Falls back to jax2onnx's own import if its internals change.
    """
    import jax2onnx

    try:
        import importlib

        from jax2onnx.plugins import plugin_system as ps

        if not getattr(ps, "_already_imported_plugins", True):
            root = Path(ps.__file__).parent
            for py in sorted(root.rglob("*.py")):
                rel = py.relative_to(root).with_suffix("")
                if py.name in ("plugin_system.py", "__init__.py") or rel.parts[0] == "examples" \
                        or rel.parts[:2] == ("equinox", "eqx"):
                    continue
                importlib.import_module(".".join(("jax2onnx.plugins",) + rel.parts))
            ps._already_imported_plugins = True
    except Exception:  # pragma: no cover - jax2onnx then imports everything itself
        pass
    return jax2onnx


def _via_jax2onnx(spec: ArchSpec, variables: Mapping[str, Any], batch_size: int, dynamic_batch: bool):
    jax2onnx = _load_jax2onnx()

    h, w = spec.input_size
    batch: int | str = "B" if dynamic_batch else int(batch_size)
    forward = nchw_forward(spec, variables, bn_eps=spec_bn_eps(spec))
    return jax2onnx.to_onnx(forward, [(batch, h, w, spec.in_channels)],
                            model_name=spec.name or "model", opset=ONNX_OPSET,
                            input_names=["input"], output_names=["output"])


def _via_tflite(spec: ArchSpec, variables: Mapping[str, Any], batch_size: int, dynamic_batch: bool):
    import onnx

    from jaxnas.export.tflite_export import tflite_bytes

    data = tflite_bytes(spec, variables, batch_size=None if dynamic_batch else batch_size)
    import tf2onnx  # after TF: tf2onnx imports tensorflow itself

    with tempfile.TemporaryDirectory(prefix="jaxnas_tfl2onnx_") as d:
        src = Path(d) / "model.tflite"
        src.write_bytes(data)
        try:
            with warnings.catch_warnings():  # tf2onnx reads the file with the deprecated tf.lite.Interpreter
                warnings.simplefilter("ignore")
                proto, _ = tf2onnx.convert.from_tflite(str(src), opset=ONNX_OPSET)
        except Exception as e:
            raise ExportError(f"tf2onnx could not convert the TFLite model of {spec.name}: {last_line(e)}") from e
    # tf2onnx names the I/O after TFLite tensors (serving_default_...): give them stable names.
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    _rename_io(proto, proto.graph.input[0].name, "input")
    _rename_io(proto, proto.graph.output[0].name, "output")
    if dynamic_batch:
        for vi in (proto.graph.input[0], proto.graph.output[0]):
            d0 = vi.type.tensor_type.shape.dim[0]
            d0.Clear()
            d0.dim_param = "B"
    return proto


def _rename_io(proto, old: str, new: str) -> None:
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if vi.name == old:
            vi.name = new
    _rename(proto.graph, old, new)


def onnx_bytes(spec: ArchSpec, variables: Mapping[str, Any], *, route: str = DEFAULT_ONNX_ROUTE,
               batch_size: int = 1, dynamic_batch: bool = False, fold_bn: bool = True,
               input_layout: str = DEFAULT_LAYOUT) -> bytes:
    """The serialized ONNX model (no parity check, nothing written)."""
    return _convert(spec, variables, route, batch_size, dynamic_batch, fold_bn, input_layout).SerializeToString()


def _convert(spec: ArchSpec, variables: Mapping[str, Any], route: str, batch_size: int, dynamic_batch: bool,
             fold_bn: bool, layout: str):
    check_choice(route, ONNX_ROUTES, "ONNX export route", "valid routes")
    check_layout(layout)
    validate(spec)
    if int(batch_size) < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size!r}")
    if fold_bn:
        spec, variables = fold_batchnorm(spec, variables)
    fn = _via_jax2onnx if route == "jax2onnx" else _via_tflite
    try:
        proto = fn(spec, variables, int(batch_size), dynamic_batch)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{route} could not convert {spec.name}: {last_line(e)}") from e
    return lean_graph(_finalize(proto), layout)


def export_onnx(spec: ArchSpec, variables: dict, path: str | Path, *, route: str = DEFAULT_ONNX_ROUTE,
                batch_size: int = 1, dynamic_batch: bool = False, fold_bn: bool = True,
                input_layout: str = DEFAULT_LAYOUT, check: bool = True, tolerance: float = 1e-4) -> ExportResult:
    """Export `spec` + `variables` (eval mode) to an ONNX file at `path` (written atomically).

    Input: float32 named ``input``, NHWC `(batch_size | 'B', H, W, in_channels)` by default or NCHW
    `(batch_size | 'B', in_channels, H, W)` with `input_layout='NCHW'` (a head-less net's feature-map
    output follows the same layout); output ``output``.  `route`: 'jax2onnx' (default) or 'tflite'
    (see the module docstring: never with `dynamic_batch` if the file is for timing).  With `check`,
    the file is run in onnxruntime (1 thread) on a fixed input and compared with the unfolded JAX
    model; raises `ExportError` above `tolerance` (absolute).
    """
    path = Path(path)
    t0 = time.perf_counter()
    proto = _convert(spec, variables, route, batch_size, dynamic_batch, fold_bn, input_layout)
    data = proto.SerializeToString()
    seconds = time.perf_counter() - t0
    in_shape, out_shape = _shape_of(proto.graph.input[0]), _shape_of(proto.graph.output[0])
    diff = None
    if check:  # before writing: a file that fails parity never replaces a good one
        diff = check_file(lambda x: run_onnx(data, x), spec, variables, in_shape, input_layout, tolerance,
                          f"ONNX ({route}) export of {spec.name}")
    t0 = time.perf_counter()
    atomic_write_bytes(path, data)
    seconds += time.perf_counter() - t0
    return ExportResult("onnx", path, diff, seconds, route, in_shape, out_shape, layout=input_layout)
