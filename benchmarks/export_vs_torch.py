"""jaxnas's ONNX export against `torch.onnx.export` of the same network with the same weights.

For each model and resolution: random weights with non-trivial BN statistics; the PyTorch network is
built from the ArchSpec + those variables (`torch_net.py`, BN folded as every jaxnas export folds it,
so no torchvision is needed), its output checked against the JAX model, and exported with
`torch.onnx.export` (TorchScript exporter, opset 18; `--dynamo` for the dynamo exporter, which needs
onnxscript).  jaxnas exports with `export.export_onnx` (parity-checked), with the default NHWC input and,
unless `--layouts NHWC`, also with an NCHW input.  All files are timed in one process with the latency
package's onnxruntime sessions (CPU, 1 thread, sequential, ORT_ENABLE_ALL), batch 1, in alternating
rounds (the order reverses every round; `--turn-runs K`: turns of K runs within a round, for a loaded
machine); each round's figure is the median of its runs, the table
gives the median over rounds and the median of the per-round ratios jaxnas / PyTorch.  The NCHW file is
also compared with PyTorch's node by node (`graph_signature`: ops, non-default attributes, edges,
weight shapes): equal graphs can only differ in time by the machine's noise.  As a control
the PyTorch file is timed a second time in its own session (`torch/torch`, unless `--no-control`): the
ratio of two identical files is what the machine's noise alone gives.

Models: MobileNetV2-1.0 (10 classes at 32/64 px, 1000 at 224), ResNet-18 (same), and a depth-compressed
MobileNetV2-1.0 (seeded random activation/merge pattern, `merge_network`: merged convs with large
kernels and fused residuals).  Needs torch (`pip install torch==2.13.0`; not a jaxnas dependency).
Run it alone on the machine (`flock /tmp/jaxnas-timing.lock python benchmarks/export_vs_torch.py`).

    python benchmarks/export_vs_torch.py [--models mobilenet_v2 resnet18 merged_mbv2]
        [--resolutions 32 64 224] [--rounds 9] [--target-ms 300] [--layouts NHWC NCHW] [--no-control]
        [--turn-runs K] [--dynamo] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from jaxnas import export
from jaxnas.export import onnx_graph
from jaxnas.export.parity import parity_input, random_variables, reference_output
from jaxnas import spec as S
from jaxnas import zoo
from torch_net import torch_net

MODELS = ("mobilenet_v2", "resnet18", "merged_mbv2")
PATTERN_SEED = 0


def classes_at(resolution: int) -> int:
    return 1000 if resolution >= 224 else 10


def merged_mbv2(resolution: int, num_classes: int, seed: int = PATTERN_SEED) -> tuple[S.ArchSpec, dict]:
    """A depth-compressed MobileNetV2-1.0: a seeded random pattern (40 % merge points, 60 % of the
    segment ends keep their ReLU6), merged exactly (`merge_network`)."""
    from jaxnas.methods.depth import merge_boundaries, stride_breaks
    from jaxnas.methods.depth.merge import merge_network
    from jaxnas.methods.depth.mergeable import body_of, fix_act, mergeable_spec, transfer_variables

    spec = zoo.mobilenet_v2(1.0, num_classes, resolution)
    variables = random_variables(spec, mean_std=0.1, bias_std=0.1)
    chain = body_of(mergeable_spec(spec)).chain
    rng = np.random.default_rng(seed)
    merge = {p for p in range(1, chain.L + 1) if rng.random() < 0.4} | set(stride_breaks(chain)) | {chain.L}
    acts = {b for b in merge_boundaries(chain, [], merge)[1:] if rng.random() < 0.6}
    fs = fix_act(spec, sorted(acts), sorted(merge))
    return merge_network(fs, transfer_variables(variables, fs))


def build(model: str, resolution: int) -> tuple[S.ArchSpec, dict]:
    if model == "merged_mbv2":
        return merged_mbv2(resolution, classes_at(resolution))
    spec = zoo.get_spec(model, resolution=resolution, num_classes=classes_at(resolution))
    # small BN shifts: deep nets' logits grow with them, and parity is absolute
    return spec, random_variables(spec, mean_std=0.1, bias_std=0.1)


def torch_onnx(spec: S.ArchSpec, variables: dict, dynamo: bool) -> tuple[bytes, float]:
    """(ONNX bytes of torch.onnx.export, max |torch - JAX| on the parity input)."""
    import torch

    net = torch_net(spec, variables)
    h, w = spec.input_size
    x = parity_input((1, h, w, spec.in_channels))
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    diff = float(np.abs(y - reference_output(spec, variables, x)).max())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, spec.in_channels, h, w),), buf, input_names=["input"],
                          output_names=["output"], opset_version=18, dynamo=dynamo)
    return buf.getvalue(), diff


def node_summary(data: bytes) -> dict[str, int]:
    import onnx

    m = onnx.ModelProto.FromString(data)
    ops = onnx_graph.op_counts(m)
    return {"nodes": sum(v for k, v in ops.items() if k != "Constant"), "Conv": ops["Conv"], "Add": ops["Add"],
            "Transpose": ops["Transpose"], "layout_transposes": len(onnx_graph.layout_transposes(m)),
            "bias_adds": len(onnx_graph.bias_adds(m))}


# ONNX attributes whose value here is the operator's default (torch writes them, jax2onnx does not) or is
# implied by the weight's shape
_DEFAULT_ATTRS = {"group": 1, "dilations": [1, 1], "kernel_shape": None, "ceil_mode": 0, "storage_order": 0,
                  "auto_pad": b"NOTSET"}


def graph_signature(data: bytes) -> list[tuple]:
    """The computation a file's graph describes, names aside: per node in order (Constant nodes folded
    into their value's shape), its op, its non-default attributes and where each input comes from (the
    graph input, an initializer of a given shape, or output k of the n-th node).  Two files with equal
    signatures run the same kernels on the same shapes."""
    import onnx

    m = onnx.ModelProto.FromString(data)
    consts = {i.name: tuple(i.dims) for i in m.graph.initializer}
    inputs = {i.name for i in m.graph.input}
    producer: dict[str, tuple[int, int]] = {}
    sig = []
    for node in m.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = tuple(node.attribute[0].t.dims)
            continue
        attrs = {}
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            v = list(v) if isinstance(v, (list, tuple)) else v
            if a.name in _DEFAULT_ATTRS and (_DEFAULT_ATTRS[a.name] is None or _DEFAULT_ATTRS[a.name] == v):
                continue
            attrs[a.name] = str(v)
        srcs = ["input" if x in inputs else ("const", consts[x]) if x in consts
                else ("node", *producer[x]) if x in producer else ("none",) for x in node.input]
        if node.op_type == "Gemm" and attrs.get("transB") == "1" and srcs[1][0] == "const":
            # a constant (out, in) weight with transB is the (in, out) one: onnxruntime packs B at load
            attrs.pop("transB")
            srcs[1] = ("const", srcs[1][1][::-1])
        for k, out in enumerate(node.output):
            producer[out] = (len(sig), k)
        sig.append((node.op_type, tuple(sorted(attrs.items())), tuple(srcs)))
    return sig


def time_rounds(sessions: dict, rounds: int, target_ms: float, turn_runs: int = 0) -> dict[str, list[float]]:
    """Per-round median ms of each session, the order alternating between rounds.  `turn_runs` > 0:
    within a round the sessions take turns of that many runs (a b c a b c ...), so that load changing within
    a round hits all files alike; the first run of a turn finds another model's weights in the caches, the
    median of the runs does not see it when a turn has 3 runs or more."""
    names = list(sessions)
    for name in names:  # warm-up + a per-run estimate that sets the runs per round
        sess, feed = sessions[name]
        for _ in range(5):
            sess.run(None, feed)
    est = {}
    for name in names:
        sess, feed = sessions[name]
        t0 = time.perf_counter()
        for _ in range(5):
            sess.run(None, feed)
        est[name] = (time.perf_counter() - t0) / 5 * 1e3
    runs = max(10, int(target_ms / max(min(est.values()), 1e-3)))
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        if turn_runs > 0:
            ts_of: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(-(-runs // turn_runs)):
                for name in order:
                    sess, feed = sessions[name]
                    for _ in range(turn_runs):
                        t0 = time.perf_counter()
                        sess.run(None, feed)
                        ts_of[name].append(time.perf_counter() - t0)
            for name in names:
                out[name].append(statistics.median(ts_of[name]) * 1e3)
            continue
        for name in order:
            sess, feed = sessions[name]
            for _ in range(3):
                sess.run(None, feed)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                ts.append(time.perf_counter() - t0)
            out[name].append(statistics.median(ts) * 1e3)
    return out


def run_case(model: str, resolution: int, args, backend) -> dict:
    spec, variables = build(model, resolution)
    h, w = spec.input_size
    x = np.random.default_rng(0).standard_normal((1, h, w, spec.in_channels)).astype(np.float32)
    files: dict[str, tuple[bytes, np.ndarray]] = {}
    row: dict = {"model": model, "resolution": resolution, "classes": classes_at(resolution),
                 "convs": sum(len(b.layers) + isinstance(b.shortcut, S.Conv) for b in spec.blocks)}
    with tempfile.TemporaryDirectory(prefix="jaxnas_vs_torch_") as tmp:
        for layout in args.layouts:
            r = export.export_onnx(spec, variables, Path(tmp) / f"{layout}.onnx", input_layout=layout)
            files[f"jaxnas_{layout}"] = (r.path.read_bytes(), x if layout == "NHWC" else x.transpose(0, 3, 1, 2))
            row[f"parity_{layout}"] = r.max_abs_diff
    tdata, row["parity_torch"] = torch_onnx(spec, variables, args.dynamo)
    files["torch"] = (tdata, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if not args.no_control:  # the same file in a second session: its ratio is the noise of the protocol
        files["torch_again"] = files["torch"]
    sessions = {}
    for name, (data, inp) in files.items():
        sess = backend.make_session(data)
        sessions[name] = (sess, {sess.get_inputs()[0].name: np.ascontiguousarray(inp)})
        row[f"nodes_{name}"] = node_summary(data)
    if "jaxnas_NCHW" in files:  # an NCHW file has the same graph as PyTorch's when lean: the timing can only differ by noise
        row["same_graph_NCHW"] = graph_signature(files["jaxnas_NCHW"][0]) == graph_signature(files["torch"][0])
    times = time_rounds(sessions, args.rounds, args.target_ms, turn_runs=args.turn_runs)
    for name, ts in times.items():
        row[f"ms_{name}"] = statistics.median(ts)
        if name != "torch":
            row[f"ratio_{name}"] = statistics.median(a / b for a, b in zip(ts, times["torch"]))
            row[f"ratio_max_{name}"] = max(a / b for a, b in zip(ts, times["torch"]))
    row["rounds"] = {k: [round(v, 4) for v in ts] for k, ts in times.items()}
    return row


def _nodes(n: dict) -> str:
    return f"{n['nodes']} ({n['Conv']} Conv, {n['Add']} Add, {n['Transpose']} T)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 224])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--target-ms", type=float, default=300.0, help="timed milliseconds per file per round")
    ap.add_argument("--layouts", nargs="+", default=["NHWC", "NCHW"], choices=list(export.ONNX_LAYOUTS))
    ap.add_argument("--dynamo", action="store_true", help="torch.onnx.export(dynamo=True) (needs onnxscript)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip timing the PyTorch file a second time (the ratio of identical files: the noise)")
    ap.add_argument("--turn-runs", type=int, default=0, metavar="K",
                    help="within a round, the files take turns of K runs (robust to a loaded machine; 0: one "
                         "turn per file and round)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: this benchmark needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from jaxnas.latency import get_backend

    backend = get_backend("onnxruntime", threads=1)
    load0 = os.getloadavg()
    rows = [run_case(m, r, args, backend) for m in args.models for r in args.resolutions]
    load1 = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg_start": load0, "loadavg_end": load1, "turn_runs": args.turn_runs,
                          "torch": torch.__version__}, indent=1))
        return 0
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, 1 thread, batch 1, {args.rounds} "
          f"alternating rounds{f' (turns of {args.turn_runs} runs)' if args.turn_runs else ''}; load average at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    head = f"{'model':13s} {'px':>4s} " + " ".join(f"{'jaxnas ' + l + ' ms':>16s} {'/torch':>7s} {'(max)':>6s}"
                                                   for l in args.layouts)
    control = not args.no_control
    print(head + f" {'torch ms':>9s}" + (f" {'torch/torch':>11s}" if control else "")
          + "  nodes jaxnas NHWC | torch   NCHW graph = torch's   parity jaxnas / torch")
    for row in rows:
        cells = " ".join(f"{row[f'ms_jaxnas_{l}']:16.3f} {row[f'ratio_jaxnas_{l}']:7.3f} "
                         f"{row[f'ratio_max_jaxnas_{l}']:6.2f}" for l in args.layouts)
        first = args.layouts[0]
        noise = f" {row['ratio_torch_again']:11.3f}" if control else ""
        print(f"{row['model']:13s} {row['resolution']:4d} {cells} {row['ms_torch']:9.3f}{noise}  "
              f"{_nodes(row[f'nodes_jaxnas_{first}'])} | {_nodes(row['nodes_torch'])}   "
              f"{({True: 'yes', False: 'NO'}.get(row.get('same_graph_NCHW'), '-')):^20s}   "
              f"{row[f'parity_{first}']:.1e} / {row['parity_torch']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
