"""Latency measurement for jaxnas: backends, timing stats, fingerprints, lookup tables.

Runtime-facing pieces only; every runtime (onnxruntime, LiteRT, JAX, TensorRT)
is imported lazily by the backend that uses it, so ``import latency`` is cheap.

    from jaxnas.latency import get_backend, LatencyTable
    be = get_backend("onnxruntime", threads=1)
    fp = be.fingerprint(batch_size=1)
    table = LatencyTable.open_or_create("lat.json", fp, meta={"space": "tfnas"})
    if "blk" not in table:
        table.put("blk", be.measure("blk.onnx", (1, 56, 56, 24), warmup=10, runs=50))
        table.save("lat.json")
"""
from .backends import (ALIASES, BACKENDS, BackendError, LatencyBackend, OnnxRuntimeBackend,
                       TensorRTBackend, TFLiteBackend, UnknownBackendError, XlaBackend, backend_names,
                       build_engine, collect_samples, get_backend)
from .fingerprint import DEFAULT_MATCH_KEYS, Fingerprint, cpu_model_name, host_arch
from .imports import (import_depth_csv, import_tfnas_pkl, load_tfnas_pkl, tfnas_base, tfnas_key,
                      tfnas_lookup)
from .stats import TimingStats
from .table import DEFAULT_COMPAT_KEYS, SCHEMA_VERSION, LatencyTable, TableError, interpolate

__all__ = [
    "TimingStats",
    "Fingerprint", "DEFAULT_MATCH_KEYS", "cpu_model_name", "host_arch",
    "LatencyBackend", "BackendError", "UnknownBackendError", "get_backend", "backend_names",
    "BACKENDS", "ALIASES", "OnnxRuntimeBackend", "TFLiteBackend", "XlaBackend", "TensorRTBackend",
    "build_engine", "collect_samples",
    "LatencyTable", "TableError", "interpolate", "SCHEMA_VERSION", "DEFAULT_COMPAT_KEYS",
    "import_tfnas_pkl", "load_tfnas_pkl", "tfnas_lookup", "tfnas_base", "tfnas_key", "import_depth_csv",
]
