"""Export time and parity per model family: ONNX via jax2onnx and via TFLite, and TFLite itself.

Variables are the numpy init with randomised BN statistics (so folding matters).  Each row exports
one family by one route, checks parity against the unfolded JAX model (max_abs_diff; a parity or
conversion failure is reported in the row, not raised) and, with --latency, times the file with the
latency backends (onnxruntime / LiteRT, 1 thread, batch 1).  One tiny export per route runs first so
the one-off imports (TensorFlow, jax2onnx plugins) are not charged to the first family.

    python benchmarks/export_time.py [--families mobilenet_v2 resnet18 resnet50 df1] [--resolution 224]
        [--width 1.0] [--routes jax2onnx tflite] [--no-tflite] [--precision fp32|fp16] [--dynamic-batch]
        [--latency] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path



from jaxnas import export  # noqa: E402
from jaxnas.export.parity import random_variables  # noqa: E402
from jaxnas import zoo  # noqa: E402
from jaxnas import spec as S  # noqa: E402

DEFAULT_FAMILIES = ("mobilenet_v2", "resnet18", "resnet50", "df1")


def family_spec(name: str, resolution: int, width: float, num_classes: int) -> S.ArchSpec:
    if name.startswith("df"):
        return zoo.get_spec(name, resolution=resolution, num_classes=num_classes)
    return zoo.get_spec(name, resolution=resolution, num_classes=num_classes, width=width)


def _latency_ms(fmt: str, path: Path) -> float:
    from jaxnas.latency.backends import get_backend

    backend = get_backend("onnxruntime" if fmt == "onnx" else "tflite", threads=1)
    return backend.measure(str(path), batch_size=1, warmup=3, runs=10).median


def run_one(kind: str, spec: S.ArchSpec, variables: dict, out: Path, args) -> dict:
    row: dict = {"model": spec.name, "kind": kind}
    try:
        if kind == "tflite":
            r = export.export_tflite(spec, variables, out / f"{spec.name}.tflite", precision=args.precision,
                                     tolerance=args.tolerance)
        else:
            r = export.export_onnx(spec, variables, out / f"{spec.name}.{kind}.onnx", route=kind.split(":")[1],
                                   dynamic_batch=args.dynamic_batch, tolerance=args.tolerance)
        row.update(seconds=round(r.seconds, 3), max_abs_diff=r.max_abs_diff, mb=round(r.path.stat().st_size / 2**20, 2))
        if args.latency:
            row["latency_ms"] = round(_latency_ms(r.format, r.path), 3)
    except export.ExportError as e:
        row["error"] = str(e)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=sorted(zoo.ZOO))
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width", type=float, default=1.0, help="width multiplier (not for df nets)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--routes", nargs="*", default=list(export.ONNX_ROUTES), choices=export.ONNX_ROUTES)
    ap.add_argument("--no-tflite", action="store_true", help="skip the .tflite export")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="of the .tflite export")
    ap.add_argument("--dynamic-batch", action="store_true", help="ONNX with a dynamic batch dimension")
    ap.add_argument("--latency", action="store_true", help="also time each file (1 thread, batch 1)")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)

    kinds = [f"onnx:{r}" for r in args.routes] + ([] if args.no_tflite else ["tflite"])
    if args.precision == "fp16" and args.tolerance == 1e-4:
        args.tolerance = export.parity.FP16_RTOL
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxnas_export_bench_") as tmp:
        out = Path(tmp)
        warm = S.ArchSpec("warmup", (S.Block("conv", (S.Conv(8, (3, 3)),)),), S.Head(0), (8, 8), 3)
        for kind in kinds:
            run_one(kind, warm, random_variables(warm, mean_std=0.1, bias_std=0.1), out, argparse.Namespace(**{**vars(args), "latency": False}))
        if not args.json:
            print(_header(), flush=True)
        for name in args.families:
            spec = family_spec(name, args.resolution, args.width, args.num_classes)
            variables = random_variables(spec, mean_std=0.1, bias_std=0.1)
            for kind in kinds:
                t0 = time.perf_counter()
                row = run_one(kind, spec, variables, out, args)
                row["total_s"] = round(time.perf_counter() - t0, 3)
                rows.append(row)
                if not args.json:
                    print(_fmt(row), flush=True)
                for f in out.iterdir():
                    f.unlink()
    if args.json:
        print(json.dumps({"resolution": args.resolution, "width": args.width, "dynamic_batch": args.dynamic_batch,
                          "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


def _header() -> str:
    return (f"{'model':<16} {'export':<14} {'export s':>9} {'total s':>8} {'max_abs_diff':>13} {'MB':>7} "
            f"{'lat ms':>8}  note")


def _fmt(row: dict) -> str:
    diff = "-" if row.get("max_abs_diff") is None else f"{row['max_abs_diff']:.2e}"
    lat = f"{row['latency_ms']:.2f}" if "latency_ms" in row else "-"
    secs = f"{row['seconds']:.2f}" if "seconds" in row else "-"
    mb = f"{row['mb']:.1f}" if "mb" in row else "-"
    return (f"{row['model']:<16} {row['kind']:<14} {secs:>9} {row['total_s']:>8.2f} {diff:>13} {mb:>7} {lat:>8}  "
            f"{row.get('error', '')}")


if __name__ == "__main__":
    sys.exit(main())
