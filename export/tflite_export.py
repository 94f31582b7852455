"""ArchSpec + variables -> TFLite / LiteRT flatbuffer via jax2tf and the TFLite converter.

jax2tf wraps the model in a TF function (one ``XlaCallModule`` op holding StableHLO); the TFLite
converter lowers the StableHLO to TFLite builtins (Conv2D, DepthwiseConv2D, ...) and folds constants.
Export uses a static batch: with a polymorphic batch the converter un-folds BN (3-45x slower; 1.1-2.7x
with BN pre-folded as here, from unfused bias/activation and Shape/Expand chains; see README.md).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxnas.io_utils import atomic_write_bytes
from jaxnas.spec import ArchSpec, validate

from jaxnas.export.fold import fold_batchnorm
from jaxnas.export.parity import (ExportError, ExportResult, check_choice, check_file, jax_model, last_line,
                                  output_shape, run_tflite)

__all__ = ["export_tflite", "tflite_bytes", "TFLITE_PRECISIONS"]

TFLITE_PRECISIONS = ("fp32", "fp16")


def tflite_bytes(spec: ArchSpec, variables: Mapping[str, Any], *, batch_size: int | None = 1,
                 precision: str = "fp32", fold_bn: bool = True) -> bytes:
    """The TFLite flatbuffer of the eval-mode model; `batch_size=None` makes the batch polymorphic.

    A polymorphic batch makes the converter un-fold BN and leave bias/activation unfused: 3-45x slower
    at run time (1.1-2.7x with `fold_bn`).  Use it only when a dynamic batch is required.
    """
    check_choice(precision, TFLITE_PRECISIONS, "TFLite precision")
    validate(spec)
    if fold_bn:
        spec, variables = fold_batchnorm(spec, variables)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's first import
    import tensorflow as tf
    from jax.experimental import jax2tf

    h, w = spec.input_size
    shape = (batch_size, h, w, spec.in_channels)
    poly = None if batch_size is not None else f"(b, {h}, {w}, {spec.in_channels})"
    model, v = jax_model(spec, variables)
    try:
        # Weights as tf.Variables (frozen by the converter) rather than constants closed over in the
        # StableHLO module: 10x faster conversion for large dense layers (VGG: 9 s instead of 100 s).
        module = tf.Module()
        module.params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), v)
        converted = jax2tf.convert(lambda p, x: model.apply(p, x, train=False), polymorphic_shapes=[None, poly])
        module.f = tf.function(lambda x: converted(module.params, x), autograph=False,
                               input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
        concrete = module.f.get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return bytes(converter.convert())
    except Exception as e:
        raise ExportError(f"TFLite conversion of {spec.name} failed: {last_line(e)}") from e


def export_tflite(spec: ArchSpec, variables: dict, path: str | Path, *, precision: str = "fp32",
                  check: bool = True, tolerance: float = 1e-4) -> ExportResult:
    """Export to a `.tflite` file at `path` (static batch 1, NHWC float32 input), written atomically.

    With `check`, the file runs in LiteRT on a fixed input and is compared with the unfolded JAX model:
    fp32 against `tolerance` absolute; fp16 (weights stored as float16) against
    max(tolerance, FP16_RTOL) relative to max(1, max|reference|).
    """
    path = Path(path)
    t0 = time.perf_counter()
    data = tflite_bytes(spec, variables, batch_size=1, precision=precision)
    seconds = time.perf_counter() - t0
    h, w = spec.input_size
    in_shape = (1, h, w, spec.in_channels)
    diff = None
    if check:  # before writing: a file that fails parity never replaces a good one
        diff = check_file(lambda x: run_tflite(data, x), spec, variables, in_shape, "NHWC", tolerance,
                          f"TFLite ({precision}) export of {spec.name}", precision=precision)
    t0 = time.perf_counter()
    atomic_write_bytes(path, data)
    seconds += time.perf_counter() - t0
    return ExportResult("tflite", path, diff, seconds, "jax2tf", in_shape, output_shape(spec, variables, in_shape),
                        precision)
