"""Export an `ArchSpec` + variables to deployable files: ONNX, TFLite/LiteRT, TensorRT engines.

Every export folds BatchNorm (`fold_batchnorm`), uses grouped depthwise convs, runs eval mode, takes
float32 NHWC input (ONNX: NCHW with `input_layout='NCHW'`), and (with `check=True`) verifies the file
against the unfolded JAX model on a fixed input (`export.parity`), raising `ExportError` above the
tolerance.  ONNX graphs are lean: one Conv per spec conv with its bias, no Transpose between layers
(`export.nchw`, `export.onnx_graph`).

    export_onnx(spec, variables, "block.onnx")            # route='jax2onnx' (default) or 'tflite'
    export_onnx(spec, variables, "m.onnx", input_layout="NCHW")   # what PyTorch users feed
    export_tflite(spec, variables, "m.tflite", precision="fp16")
    export_tensorrt(spec, variables, "m.engine")          # needs tensorrt + an NVIDIA GPU
    export_model(spec, variables, "out/", formats=("onnx", "tflite"))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jaxnas.io_utils import atomic_write_json
from jaxnas.spec import ArchSpec

from jaxnas.export.fold import fold_batchnorm
from jaxnas.export.onnx_export import (DEFAULT_LAYOUT, DEFAULT_ONNX_ROUTE, ONNX_LAYOUTS, ONNX_ROUTES, check_layout,
                                       export_onnx, onnx_bytes)
from jaxnas.export.parity import ExportError, ExportResult
from jaxnas.export.tensorrt_export import TensorRTMissing, engine_export, export_tensorrt, run_engine
from jaxnas.export.tflite_export import export_tflite, tflite_bytes

__all__ = ["ExportError", "ExportResult", "TensorRTMissing", "fold_batchnorm", "export_onnx", "onnx_bytes",
           "export_tflite", "tflite_bytes", "export_tensorrt", "run_engine", "export_model", "FORMATS",
           "ONNX_ROUTES", "DEFAULT_ONNX_ROUTE", "ONNX_LAYOUTS", "DEFAULT_LAYOUT"]

# format -> file name written by export_model
FORMATS: dict[str, str] = {"onnx": "model.onnx", "tflite": "model.tflite", "tensorrt": "model.engine"}


def export_model(spec: ArchSpec, variables: dict, out_dir: str | Path, formats: Sequence[str] = ("onnx", "tflite"),
                 *, route: str = DEFAULT_ONNX_ROUTE, precision: str = "fp32", dynamic_batch: bool = False,
                 input_layout: str = DEFAULT_LAYOUT, tolerance: float = 1e-4) -> dict[str, ExportResult]:
    """Write `model.onnx` / `model.tflite` / `model.engine` and `export.json` into `out_dir`.

    Every file is parity-checked (fp16: relative tolerance, see `export_tflite`) and written atomically.
    `route`, `dynamic_batch` and `input_layout` ('NHWC' or 'NCHW') apply to ONNX and to the TensorRT
    engine built from it (TFLite is always NHWC, batch 1; an engine gets a batch-1 profile).  `precision` applies to TFLite and TensorRT; ONNX is fp32.
    `export.json` maps each format to {path, max_abs_diff, seconds, route, precision, input/output shape}.
    """
    fmts = list(dict.fromkeys(formats))
    check_layout(input_layout)  # before any work
    unknown = [f for f in fmts if f not in FORMATS]
    if unknown or not fmts:
        raise ExportError(f"unknown export format {unknown[0] if unknown else '(none given)'!r}; "
                          f"valid formats: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, ExportResult] = {}
    if "tensorrt" in fmts:
        from jaxnas.export.tensorrt_export import _import_tensorrt

        _import_tensorrt()  # fail before spending time on the other formats
    if "onnx" in fmts or "tensorrt" in fmts:
        onnx_res = export_onnx(spec, variables, out / FORMATS["onnx"], route=route, dynamic_batch=dynamic_batch,
                               input_layout=input_layout, tolerance=tolerance)
        if "onnx" in fmts:
            results["onnx"] = onnx_res
        if "tensorrt" in fmts:
            results["tensorrt"] = engine_export(spec, variables, out / FORMATS["tensorrt"], onnx_res,
                                                precision=precision, tolerance=tolerance)
            if "onnx" not in fmts:
                onnx_res.path.unlink(missing_ok=True)
    if "tflite" in fmts:
        results["tflite"] = export_tflite(spec, variables, out / FORMATS["tflite"], precision=precision,
                                          tolerance=tolerance)
    summary: dict[str, Any] = {"model": spec.name,
                               "formats": {f: results[f].to_json() for f in fmts}}
    atomic_write_json(out / "export.json", summary)
    return {f: results[f] for f in fmts}
