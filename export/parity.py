"""Export results, the export error, and parity checks of exported files against the JAX model.

The reference is always the ORIGINAL (unfolded) spec + variables run by JAX in eval mode, so a parity
check covers BN folding as well as the conversion.  Inputs are fixed: seeded standard-normal NHWC
float32, batch 2 for dynamic-batch files, the file's own batch otherwise; a file with an NCHW boundary
(`layout`) gets it transposed, and its 4-D output is transposed back before the comparison.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxnas.errors import UserError
from jaxnas.spec import ArchSpec

__all__ = ["ExportError", "ExportResult", "PARITY_SEED", "FP16_RTOL", "LAYOUTS", "parity_input", "jax_model",
           "jax_forward", "reference_output", "output_shape", "run_onnx", "run_tflite", "compare", "to_layout",
           "from_layout", "nhwc_shape", "check_file", "check_choice", "last_line"]

PARITY_SEED = 1234
# Boundary layouts of exported files: NHWC (the JAX model's, TFLite's) or NCHW (PyTorch's).
LAYOUTS = ("NHWC", "NCHW")
# fp16 TFLite/TensorRT: weights (and, in TensorRT, activations) are rounded to 11 significant bits, so
# the check is relative to the output's magnitude: |out - ref| <= FP16_RTOL * max(1, max|ref|).
FP16_RTOL = 1e-2


class ExportError(UserError, RuntimeError):
    """An export that cannot be produced or whose output does not match the JAX model."""


def check_choice(value: str, valid: Sequence[str], what: str, valid_what: str = "valid") -> None:
    """ExportError naming the `valid` values unless `value` is one of them (route, layout, precision)."""
    if value not in valid:
        raise ExportError(f"unknown {what} {value!r}; {valid_what}: {', '.join(valid)}")


def last_line(e: BaseException) -> str:
    """The last non-empty line of an exception's message (converters raise pages), else its type."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


@dataclass(frozen=True)
class ExportResult:
    """One exported file.  Shapes are the file's own (in `layout`); a dynamic batch dim is None.

    `seconds` is the conversion time (trace + convert + write), not the parity run.
    `max_abs_diff` is None when the export was not checked.  `layout` is the boundary layout of the
    input (and of a head-less net's feature-map output): 'NHWC' or 'NCHW'.
    """

    format: str
    path: Path
    max_abs_diff: float | None
    seconds: float
    route: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    precision: str = "fp32"
    layout: str = "NHWC"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path), "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape)}


def parity_input(input_shape: Sequence[int | None], seed: int = PARITY_SEED) -> np.ndarray:
    """The fixed parity input: batch 2 where the batch dim is dynamic (None), else the given batch."""
    shape = [2 if input_shape[0] is None else int(input_shape[0])] + [int(d) for d in input_shape[1:]]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_variables(spec: ArchSpec, seed: int = 0, var_range: tuple[float, float] = (0.5, 2.0),
                     mean_std: float = 0.3, bias_std: float = 0.2) -> dict:
    """Initial variables with non-trivial BN statistics, affine parameters and biases, so that a parity
    check also exercises BatchNorm folding (fresh BN is the identity and would hide folding errors).
    Deep nets at full resolution want smaller `mean_std` / `bias_std`: their logits grow with them, and
    so does float32 rounding against an absolute tolerance."""
    import jax

    from jaxnas import models
    v = models.init_variables(models.build_model(spec), seed)
    rng = np.random.default_rng(seed + 1)
    draws = {"var": lambda shape: rng.uniform(*var_range, shape), "mean": lambda shape: rng.normal(0.0, mean_std, shape),
             "scale": lambda shape: rng.uniform(0.5, 1.5, shape), "bias": lambda shape: rng.normal(0.0, bias_std, shape)}

    def fill(path, a):
        draw = draws.get(getattr(path[-1], "key", ""))
        return np.asarray(a) if draw is None else draw(np.shape(a)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, v)


def jax_model(spec: ArchSpec, variables: Mapping[str, Any]) -> tuple[Any, dict]:
    """(model, variables) as exported: grouped depthwise convs, the spec's BN epsilon (DF nets: 1e-4)."""
    from jaxnas.export.fold import spec_bn_eps

    from jaxnas import models

    model = models.build_model(spec, depthwise_impl="grouped", bn_eps=spec_bn_eps(spec))
    return model, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}) or {}}


def jax_forward(spec: ArchSpec, variables: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The eval-mode forward `x -> model(x)` as exported, with the weights closed over."""
    model, v = jax_model(spec, variables)

    def forward(x):
        return model.apply(v, x, train=False)

    return forward


def output_shape(spec: ArchSpec, variables: Mapping[str, Any], input_shape: Sequence[int]) -> tuple[int, ...]:
    """The model's output shape for a concrete NHWC `input_shape` (traced, not run)."""
    import jax

    out = jax.eval_shape(jax_forward(spec, variables), jax.ShapeDtypeStruct(tuple(input_shape), np.float32))
    return tuple(int(d) for d in out.shape)


@functools.lru_cache(maxsize=32)
def _jitted_apply(spec: ArchSpec) -> Callable[[Any, Any], Any]:
    # Variables are jit arguments, not closed-over constants: VGG's 100 MB classifier would otherwise
    # be baked into the HLO (slow to compile), and one compile serves every set of weights.
    import jax

    model, _ = jax_model(spec, {"params": {}})
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def reference_output(spec: ArchSpec, variables: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """JAX eval-mode output of the original spec + variables on `x`."""
    _, v = jax_model(spec, variables)
    return np.asarray(_jitted_apply(spec)(v, x))


def run_onnx(model: str | os.PathLike | bytes, x: np.ndarray) -> np.ndarray:
    """Run an NHWC single-input ONNX model in onnxruntime (CPU, 1 thread); returns the first output."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        sess = ort.InferenceSession(bytes(data), so, providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot run the exported model: {last_line(e)}") from e


def run_tflite(model: str | os.PathLike | bytes, x: np.ndarray) -> np.ndarray:
    """Run a single-input TFLite model in LiteRT (1 thread) on `x`; returns the first output."""
    from ai_edge_litert.interpreter import Interpreter

    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        interp = Interpreter(model_content=bytes(data), num_threads=1)
        inp = interp.get_input_details()[0]
        if tuple(inp["shape"]) != x.shape:
            interp.resize_tensor_input(inp["index"], x.shape)
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))
    except Exception as e:
        raise ExportError(f"LiteRT cannot run the exported model: {last_line(e)}") from e


def to_layout(x_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """An NHWC array in the file's boundary layout."""
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)) if layout == "NCHW" else x_nhwc


def from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    """A file's output in the JAX model's layout (4-D feature maps NCHW -> NHWC; logits unchanged)."""
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if layout == "NCHW" and y.ndim == 4 else y


def nhwc_shape(shape: Sequence[int | None], layout: str) -> tuple[int | None, ...]:
    """A 4-D shape given in `layout`, as NHWC."""
    shape = tuple(shape)
    return (shape[0], shape[2], shape[3], shape[1]) if layout == "NCHW" and len(shape) == 4 else shape


def check_file(run: Callable[[np.ndarray], np.ndarray], spec: ArchSpec, variables: Mapping[str, Any],
               input_shape: Sequence[int | None], layout: str, tolerance: float, what: str, *,
               precision: str = "fp32") -> float:
    """Parity of a file (`run(x) -> output`, x in the file's `layout`) against the unfolded JAX model.

    The fixed NHWC parity input is transposed into the file's layout and a 4-D output back.  fp32:
    `tolerance` absolute; fp16: max(tolerance, FP16_RTOL) relative to max(1, max|reference|).
    """
    x = parity_input(nhwc_shape(input_shape, layout))
    out = from_layout(np.asarray(run(to_layout(x, layout))), layout)
    fp16 = precision == "fp16"
    return compare(out, reference_output(spec, variables, x), max(tolerance, FP16_RTOL) if fp16 else tolerance, what,
                   relative=fp16)


def compare(out: np.ndarray, ref: np.ndarray, tolerance: float, what: str, *, relative: bool = False) -> float:
    """max |out - ref|; raises ExportError when above `tolerance` (scaled by max(1, max|ref|) if relative)."""
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    if out.shape != ref.shape:
        raise ExportError(f"{what}: output shape {out.shape} differs from the JAX model's {ref.shape}")
    diff = float(np.max(np.abs(out - ref))) if out.size else 0.0
    bound = tolerance * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0) if relative else tolerance
    if not np.isfinite(diff) or diff > bound:
        kind = f"{tolerance:g} relative (bound {bound:.3g})" if relative else f"{tolerance:g}"
        raise ExportError(f"{what}: max_abs_diff {diff:.3g} vs the JAX model exceeds the tolerance {kind}")
    return diff
