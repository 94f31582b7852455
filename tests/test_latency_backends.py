"""Latency backends: timing loop, stats, fingerprints, onnxruntime/LiteRT/XLA/TensorRT."""
from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

from jaxnas import latency
from jaxnas.latency import (BackendError, Fingerprint, LatencyBackend, OnnxRuntimeBackend, TimingStats,
                     get_backend)
from jaxnas.latency.backends import UnknownBackendError, collect_samples, resolve_shape
from jaxnas.latency.backends import trt as trt_mod
from jaxnas.latency.fingerprint import cpu_model_name

H = W = 16
CIN, COUT = 3, 8


# ------------------------------------------------------------------ helpers
def _check_stats(st: TimingStats, runs: int) -> None:
    assert isinstance(st, TimingStats)
    assert st.unit == "ms"
    assert st.count == runs
    assert st.median > 0
    assert st.min <= st.p10 <= st.median <= st.p90
    assert st.mean > 0 and st.std >= 0


def _onnx_conv_relu(batch="N", ir_version=8):
    """NHWC input → Transpose → Conv 3x3 → Relu (dynamic batch unless ``batch`` is an int)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((COUT, CIN, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(COUT, np.float32), "b")
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, H, W, CIN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, COUT, H, W])
    g = helper.make_graph(nodes, "conv_relu", [x], [y], initializer=[w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version)
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("onnx") / "conv_relu.onnx"
    p.write_bytes(_onnx_conv_relu().SerializeToString())
    return p


# ------------------------------------------------------------------- stats
def test_timing_stats_matches_numpy():
    rng = np.random.default_rng(1)
    s = rng.gamma(2.0, 1.5, size=257)
    st = TimingStats.from_samples(s.tolist())
    assert st.count == 257
    assert st.median == pytest.approx(np.median(s))
    assert st.mean == pytest.approx(np.mean(s))
    assert st.std == pytest.approx(np.std(s))
    assert st.p10 == pytest.approx(np.percentile(s, 10))
    assert st.p90 == pytest.approx(np.percentile(s, 90))
    assert st.min == pytest.approx(s.min())
    assert TimingStats.from_dict(st.to_dict()) == st
    one = TimingStats.from_samples([2.5])
    assert (one.median, one.std, one.p10, one.p90, one.count) == (2.5, 0.0, 2.5, 2.5, 1)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -0.5]])
def test_timing_stats_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        TimingStats.from_samples(bad)


def test_timing_stats_from_dict_validates():
    d = TimingStats.from_samples([1, 2, 3]).to_dict()
    with pytest.raises(ValueError, match="unit"):
        TimingStats.from_dict({**d, "unit": "us"})
    with pytest.raises(ValueError, match="missing"):
        TimingStats.from_dict({k: v for k, v in d.items() if k != "p90"})
    with pytest.raises(ValueError, match="finite"):
        TimingStats.from_dict({**d, "mean": "fast"})


# ------------------------------------------------------------- timing loop
def test_collect_samples_counts_and_warmup():
    calls = []
    out = collect_samples(lambda: calls.append(1), warmup=4, runs=7)
    assert len(out) == 7 and len(calls) == 11
    assert all(v >= 0 for v in out)


def test_collect_samples_min_time_extends_runs():
    out = collect_samples(lambda: time.sleep(0.002), warmup=0, runs=2, min_time_s=0.03)
    assert len(out) > 2
    assert sum(out) >= 30.0
    assert min(out) >= 1.5  # perf_counter_ns really brackets each run (ms units)
    capped = collect_samples(lambda: time.sleep(0.001), warmup=0, runs=2, min_time_s=10.0, max_runs=5)
    assert len(capped) == 5


def test_collect_samples_self_timed_and_arg_checks():
    assert collect_samples(lambda: 0.25, warmup=1, runs=3, self_timed=True) == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError):
        collect_samples(lambda: None, runs=0)
    with pytest.raises(ValueError):
        collect_samples(lambda: None, warmup=-1)


def test_resolve_shape():
    assert resolve_shape((1, 16, 16, 3), ["N", 16, 16, 3], None) == (1, 16, 16, 3)
    assert resolve_shape((1, 16, 16, 3), [None, 16, 16, 3], 4) == (4, 16, 16, 3)
    assert resolve_shape(None, [-1, 16, 16, 3], None) == (1, 16, 16, 3)
    assert resolve_shape(None, [2, 8], None) == (2, 8)
    with pytest.raises(BackendError, match="NCHW"):
        resolve_shape((1, 16, 16, 3), [1, 3, 16, 16], None)
    with pytest.raises(BackendError, match="rank"):
        resolve_shape((1, 16, 3), [1, 16, 16, 3], None)
    with pytest.raises(BackendError, match="dynamic"):
        resolve_shape(None, ["N", "H", 16, 3], None)


# ----------------------------------------------------------------- registry
def test_registry_and_protocol():
    be = get_backend("onnxruntime", threads=1)
    assert isinstance(be, OnnxRuntimeBackend) and isinstance(be, LatencyBackend)
    assert isinstance(get_backend("ORT"), OnnxRuntimeBackend)
    assert get_backend("tflite").name == "tflite"
    assert get_backend("xla").name == "xla"
    assert set(latency.backend_names()) == {"onnxruntime", "tflite", "xla", "tensorrt"}
    with pytest.raises(UnknownBackendError, match="did you mean 'onnxruntime'") as ei:
        get_backend("onnxrt")
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, BackendError)
    with pytest.raises(UnknownBackendError, match="known backends: onnxruntime, tflite, xla, tensorrt"):
        get_backend("coreml-xyz")


# -------------------------------------------------------------- onnxruntime
def test_ort_times_conv_relu(onnx_path):
    be = OnnxRuntimeBackend(threads=1)
    st = be.measure(onnx_path, (1, H, W, CIN), warmup=3, runs=25)
    _check_stats(st, 25)
    # dynamic batch: batch_size replaces dim 0; bytes input also accepted
    st2 = be.measure(onnx_path.read_bytes(), (1, H, W, CIN), warmup=1, runs=5, batch_size=3)
    _check_stats(st2, 5)


def test_ort_session_options_and_fingerprint(onnx_path):
    import onnxruntime as ort

    be = OnnxRuntimeBackend(threads=1)
    so = be.session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = be.make_session(onnx_path)
    assert sess.get_providers()[0] == "CPUExecutionProvider"
    fp = be.fingerprint(batch_size=1)
    assert isinstance(fp, Fingerprint)
    assert fp.backend == "onnxruntime" and fp.runtime == f"onnxruntime {ort.__version__}"
    assert fp.provider == "CPUExecutionProvider" and fp.threads == 1 and fp.batch_size == 1
    assert fp.precision == "fp32" and fp.device == cpu_model_name() and fp.arch
    assert "threads=1" in fp.describe() and "onnxruntime" in fp.describe()
    assert fp.matches(Fingerprint.from_dict(fp.to_dict()))
    assert not fp.matches(be.fingerprint(batch_size=8))
    assert fp.matches(be.fingerprint(batch_size=8), keys=("backend", "runtime", "threads"))


def test_ort_missing_file_is_backend_error(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        OnnxRuntimeBackend().measure(tmp_path / "nope.onnx", (1, H, W, CIN), runs=1)


def test_ort_garbage_file_is_backend_error(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(b"definitely not protobuf")
    with pytest.raises(BackendError, match="could not load"):
        OnnxRuntimeBackend().measure(p, (1, H, W, CIN), runs=1)


def test_ort_static_shape_mismatch(tmp_path):
    p = tmp_path / "static.onnx"
    p.write_bytes(_onnx_conv_relu(batch=1).SerializeToString())
    be = OnnxRuntimeBackend()
    _check_stats(be.measure(p, None, warmup=0, runs=3), 3)  # shape read from the model
    with pytest.raises(BackendError, match="static input shape"):
        be.measure(p, (1, H, W, CIN), batch_size=2, runs=1)


def test_ort_cuda_provider_not_active_is_refused(onnx_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the fallback check is for CPU-only boxes")
    be = OnnxRuntimeBackend(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not active") as ei:
        be.measure(onnx_path, (1, H, W, CIN), runs=1)
    assert "CPUExecutionProvider" in str(ei.value)  # says what is active instead
    with pytest.raises(BackendError, match="not active"):
        be.fingerprint()


# ------------------------------------------------------------------ tflite
@pytest.fixture(scope="module")
def tflite_bytes():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.standard_normal((3, 3, CIN, COUT)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, H, W, CIN], tf.float32)])
    def conv(x):
        return tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"))

    conv_fn = conv.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([conv_fn], conv).convert()


def test_tflite_times_conv(tflite_bytes, tmp_path):
    pytest.importorskip("ai_edge_litert")
    p = tmp_path / "conv.tflite"
    p.write_bytes(tflite_bytes)
    be = get_backend("tflite", threads=1)
    _check_stats(be.measure(p, (1, H, W, CIN), warmup=2, runs=15), 15)
    # dynamic batch → resize_tensor_input; builtin kernels without XNNPACK; bytes input
    be2 = get_backend("tflite", threads=1, use_xnnpack=False)
    _check_stats(be2.measure(tflite_bytes, (1, H, W, CIN), warmup=1, runs=5, batch_size=2), 5)
    fp = be.fingerprint()
    assert fp.backend == "tflite" and fp.provider == "XNNPACK" and fp.threads == 1
    assert fp.runtime.startswith("ai-edge-litert ")
    assert be2.fingerprint().provider == "builtin"
    with pytest.raises(BackendError, match="not found"):
        be.measure(tmp_path / "missing.tflite", (1, H, W, CIN), runs=1)
    with pytest.raises(BackendError, match="input shape mismatch"):
        be.measure(p, (1, H + 1, W, CIN), runs=1)


# --------------------------------------------------------------------- xla
def test_xla_times_jnp_function():
    import jax
    import jax.numpy as jnp

    w = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, CIN, COUT)).astype(np.float32))

    def conv(x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y)

    be = get_backend("xla")
    _check_stats(be.measure(conv, (1, H, W, CIN), warmup=2, runs=10), 10)
    _check_stats(be.measure(lambda x: jnp.tanh(x) * 2.0, (4, 32), warmup=0, runs=3), 3)
    fp = be.fingerprint(batch_size=1)
    assert fp.backend == "xla" and fp.provider == jax.devices()[0].platform
    assert fp.runtime.startswith(f"jax {jax.__version__}")
    with pytest.raises(BackendError, match="callables"):
        be.measure("model.onnx", (1, 4))
    with pytest.raises(BackendError, match="failed under jax.jit"):
        be.measure(lambda x: x @ jnp.ones((5, 5)), (1, 4), runs=1)


# ---------------------------------------------------------------- tensorrt
def test_tensorrt_missing_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    msg = "tensorrt is not installed: pip install tensorrt (NVIDIA GPU required)"
    with pytest.raises(BackendError) as ei:
        get_backend("tensorrt", precision="fp16")
    assert str(ei.value) == msg and "\n" not in str(ei.value)
    with pytest.raises(BackendError) as ei:
        latency.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    assert str(ei.value) == msg


def _real_trt_available() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    from jaxnas.runtime.cuda_driver import gpu_name

    if gpu_name(0) is None:
        return "no NVIDIA GPU visible"
    return None


def test_tensorrt_real_engine_build_and_time(tmp_path):
    reason = _real_trt_available()
    if reason:
        pytest.skip(f"real TensorRT test needs tensorrt + an NVIDIA GPU: {reason}")
    onnx_file = tmp_path / "conv.onnx"
    onnx_file.write_bytes(_onnx_conv_relu().SerializeToString())
    for precision in ("fp32", "fp16"):
        be = get_backend("tensorrt", precision=precision, workspace_mb=256)
        _check_stats(be.measure(onnx_file, (2, H, W, CIN), warmup=5, runs=20), 20)
        fp = be.fingerprint(batch_size=2)
        assert fp.backend == "tensorrt" and fp.precision == precision and fp.device
    eng = latency.build_engine(onnx_file, tmp_path / "conv.engine", "fp32", input_shape=(2, H, W, CIN))
    assert eng.stat().st_size > 0
    _check_stats(get_backend("tensorrt").measure(eng, (2, H, W, CIN), warmup=2, runs=5), 5)


# A scripted stand-in for the tensorrt module, to exercise the backend's control flow
# (flags, profiles, buffer sizes, event timing, cleanup) on machines without a GPU.
def _fake_trt(version: str, log: dict, has_fp16: bool = True):
    m = types.ModuleType("tensorrt")
    m.__version__ = version

    class Logger:
        ERROR, WARNING, INFO, VERBOSE = range(4)

        def __init__(self, sev):
            self.sev = sev

    class DataType:
        FLOAT, HALF = "float", "half"

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Tensor:
        def __init__(self, name, shape, dtype=DataType.FLOAT):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        num_outputs = 1

        def get_output(self, j):
            return Tensor("c", (-1, COUT, H, W))

    class Network:
        num_inputs, num_layers = 1, 1

        def get_input(self, i):
            return Tensor("x", (-1, H, W, CIN))

        def get_layer(self, i):
            return Layer()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            log["pool"] = (pool, size)

        def set_flag(self, f):
            log.setdefault("flags", []).append(f)

        def clear_flag(self, f):
            log.setdefault("cleared", []).append(f)

        def add_optimization_profile(self, p):
            log["profiles_added"] = log.get("profiles_added", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            log["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse(self, data):
            log["parsed_bytes"] = len(data)
            return True

    class Context:
        def __init__(self):
            self.shapes = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n = self.shapes["x"][0]
            return (n, COUT, H, W)

        def set_tensor_address(self, name, ptr):
            log.setdefault("addresses", {})[name] = ptr

        def execute_async_v3(self, stream):
            log["executes"] = log.get("executes", 0) + 1
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, n):
            return TensorIOMode.INPUT if n == "x" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, n):
            return (-1, H, W, CIN) if n == "x" else (-1, COUT, H, W)

        def get_tensor_dtype(self, n):
            return DataType.FLOAT

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            assert plan == b"PLAN"
            return Engine()

    flags = {"TF32": "TF32"}
    if has_fp16:
        flags["FP16"] = "FP16"
    m.Logger, m.DataType, m.TensorIOMode = Logger, DataType, TensorIOMode
    m.Builder, m.OnnxParser, m.Runtime = Builder, OnnxParser, Runtime
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    m.BuilderFlag = types.SimpleNamespace(**flags)
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    m.nptype = lambda dt: np.float32 if dt == DataType.FLOAT else np.float16
    return m


class _FakeCuda:
    instances: list = []

    def __init__(self, device=0):
        self.allocs, self.freed, self.closed, self.copies = {}, [], False, []
        self._next = 0x1000
        _FakeCuda.instances.append(self)

    def mem_alloc(self, n):
        self._next += 0x1000
        self.allocs[self._next] = n
        return self._next

    def memcpy_htod(self, ptr, arr):
        self.copies.append((ptr, arr.nbytes))

    def stream_create(self):
        return 77

    def event_create(self):
        return 5

    def event_record(self, ev, stream):
        assert stream == 77

    def event_synchronize(self, ev):
        pass

    def event_elapsed_ms(self, a, b):
        return 0.5

    def stream_synchronize(self, s):
        pass

    def event_destroy(self, ev):
        pass

    def stream_destroy(self, s):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("version,flags", [("8.6.1", 1), ("10.3.0", 0)])
def test_tensorrt_control_flow_with_fake_module(monkeypatch, onnx_path, version, flags):
    log: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(version, log))
    monkeypatch.setattr("jaxnas.runtime.cuda_driver.CudaDriver", _FakeCuda)
    _FakeCuda.instances.clear()
    be = get_backend("tensorrt", precision="fp16", workspace_mb=64)
    st = be.measure(onnx_path, (1, H, W, CIN), batch_size=2, warmup=3, runs=6)
    assert st.count == 6 and st.median == 0.5  # CUDA-event time, not wall clock
    assert log["network_flags"] == flags  # EXPLICIT_BATCH only before TensorRT 10
    assert log["flags"] == ["FP16"] and log["pool"] == ("WORKSPACE", 64 << 20)
    assert log["profile"] == ("x", (2, H, W, CIN), (2, H, W, CIN), (2, H, W, CIN))
    assert log["executes"] == 1 + 3 + 6  # first run + warm-up + timed
    drv = _FakeCuda.instances[-1]
    assert sorted(drv.allocs.values()) == sorted([2 * H * W * CIN * 4, 2 * COUT * H * W * 4])
    assert set(log["addresses"].values()) == set(drv.allocs)
    assert drv.copies == [(log["addresses"]["x"], 2 * H * W * CIN * 4)]
    assert drv.closed
    # wall-clock timer and prebuilt engine file
    eng = tmp_eng = onnx_path.parent / f"fake_{version}.engine"
    tmp_eng.write_bytes(b"PLAN")
    st2 = get_backend("tensorrt", timer="wall").measure(eng, (2, H, W, CIN), warmup=0, runs=4)
    assert st2.count == 4 and st2.median >= 0
    out = latency.build_engine(onnx_path, onnx_path.parent / "built.plan", "fp32", input_shape=(1, H, W, CIN))
    assert out.read_bytes() == b"PLAN"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_tensorrt11_fp16_needs_fp16_model(monkeypatch, onnx_path):
    log: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("11.4.0", log, has_fp16=False))
    with pytest.raises(BackendError, match="BuilderFlag.FP16"):
        trt_mod.build_serialized_engine(onnx_path, precision="fp16", input_shape=(1, H, W, CIN))
    assert trt_mod.build_serialized_engine(onnx_path, precision="fp32", input_shape=(1, H, W, CIN)) == b"PLAN"
    with pytest.raises(ValueError, match="precision"):
        trt_mod.build_serialized_engine(onnx_path, precision="int3")


class _FakeLibcuda:
    """Python stand-in for libcuda.so.1: checks the ctypes plumbing of CudaDriver byte for byte."""

    OOM = 2

    def __init__(self):
        import ctypes

        self.ct = ctypes
        self.mem: dict[int, bytearray] = {}
        self.calls: list[str] = []
        self._err = b"out of memory"
        self._next = 0x10000
        for name in dir(type(self)):  # plain functions, like ctypes symbols, accept `.restype = …`
            if name.startswith("cu"):
                setattr(self, name, (lambda m: lambda *a: m(*a))(getattr(self, name)))

    def _rec(name):  # noqa: N805 - decorator factory
        def deco(fn):
            def wrapper(self, *a):
                self.calls.append(name)
                return fn(self, *a)
            return wrapper
        return deco

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, p):
        p._obj.value = 1
        return 0

    def cuDeviceGet(self, p, ordinal):
        p._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, n, dev):
        buf.value = b"Fake GPU 9000"
        return 0

    @_rec("retain")
    def cuDevicePrimaryCtxRetain(self, p, dev):
        p._obj.value = 0xC0
        return 0

    def cuCtxSetCurrent(self, ctx):
        return 0

    @_rec("release_v2")
    def cuDevicePrimaryCtxRelease_v2(self, dev):
        return 0

    def cuMemAlloc_v2(self, p, n):
        if n.value > 1 << 40:
            return self.OOM
        self._next += 0x1000
        self.mem[self._next] = bytearray(n.value)
        p._obj.value = self._next
        return 0

    @_rec("free_unversioned")
    def cuMemFree(self, ptr):  # only the unversioned symbol: exercises the _v2 fallback
        del self.mem[ptr.value]
        return 0

    def cuMemcpyHtoD_v2(self, dst, src, n):
        self.mem[dst.value][: n.value] = self.ct.string_at(src.value, n.value)
        return 0

    def cuMemcpyDtoH_v2(self, dst, src, n):
        self.ct.memmove(dst.value, bytes(self.mem[src.value][: n.value]), n.value)
        return 0

    def cuStreamCreate(self, p, flags):
        p._obj.value = 0x57
        return 0

    def cuStreamSynchronize(self, s):
        return 0

    def cuStreamDestroy_v2(self, s):
        return 0

    def cuEventCreate(self, p, flags):
        p._obj.value = 0xE0
        return 0

    def cuEventRecord(self, e, s):
        assert s.value == 0x57
        return 0

    def cuEventSynchronize(self, e):
        return 0

    def cuEventElapsedTime(self, p, a, b):
        p._obj.value = 1.5
        return 0

    def cuEventDestroy_v2(self, e):
        return 0

    def cuGetErrorString(self, rc, p):
        p._obj.value = self._err
        return 0


def test_cuda_driver_ctypes_plumbing(monkeypatch):
    from jaxnas.runtime import cuda_driver

    lib = _FakeLibcuda()
    monkeypatch.setattr(cuda_driver, "_load_libcuda", lambda: lib)
    drv = cuda_driver.CudaDriver(0)
    assert drv.device_name() == "Fake GPU 9000"
    x = np.arange(6, dtype=np.float32)
    ptr = drv.mem_alloc(x.nbytes)
    drv.memcpy_htod(ptr, x)
    y = np.zeros_like(x)
    drv.memcpy_dtoh(y, ptr)
    np.testing.assert_array_equal(x, y)
    s = drv.stream_create()
    e0, e1 = drv.event_create(), drv.event_create()
    drv.event_record(e0, s)
    drv.event_record(e1, s)
    drv.event_synchronize(e1)
    assert drv.event_elapsed_ms(e0, e1) == 1.5
    with pytest.raises(BackendError, match=r"cuMemAlloc.*error 2: out of memory"):
        drv.mem_alloc(1 << 41)
    drv.close()
    assert lib.mem == {} and "free_unversioned" in lib.calls and lib.calls[-1] == "release_v2"
    with pytest.raises(BackendError, match="does not exist"):
        cuda_driver.CudaDriver(3)
    n = len(lib.calls)
    assert cuda_driver.CudaDriver(0, context=False).device_name() == "Fake GPU 9000"
    assert "retain" not in lib.calls[n:]  # a name query creates no context
