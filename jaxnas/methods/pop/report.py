"""POP's outputs: boundary.json / boundary.csv (every evaluated candidate) and pareto.png."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxnas.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from jaxnas.spec import to_dict

from jaxnas.methods.pop.search import PopOutcome

CSV_FIELDS = ("key", "latency_ms", "ci_low_ms", "ci_high_ms", "accuracy", "on_boundary", "round", "macs", "params",
              "predicted_ms")


def _ci(e: Mapping[str, Any]) -> tuple[Any, Any]:
    lat = e.get("latency") or {}
    ci = lat.get("ci_ms")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return ci[0], ci[1]
    return lat.get("p10_ms"), lat.get("p90_ms")


def _xy(evaluated: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """(latencies, accuracies) of evaluated candidates, to plot."""
    return [e["latency_ms"] for e in evaluated], [e["accuracy"] for e in evaluated]


def write_boundary(workdir: str | Path, outcome: PopOutcome, header: Mapping[str, Any]) -> dict[str, str]:
    """boundary.json ({**header, counts, prescreen, stop_reason, boundary, evaluated, history}) and
    boundary.csv (one row per evaluated candidate), atomically."""
    workdir = Path(workdir)
    evaluated = [{**{k: v for k, v in e.items() if k != "spec"}, "spec": to_dict(e["spec"])} for e in outcome.evaluated]
    atomic_write_json(workdir / "boundary.json", {
        **header, "counts": outcome.counts, "prescreen": outcome.prescreen, "stop_reason": outcome.stop_reason,
        "boundary": outcome.boundary, "evaluated": evaluated, "history": outcome.history})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for e in outcome.evaluated:
        lo, hi = _ci(e)
        w.writerow([e["key"], e["latency_ms"], lo, hi, e["accuracy"], int(e["on_boundary"]), e["round"], e["macs"],
                    e["params"], e["predicted_ms"]])
    atomic_write_text(workdir / "boundary.csv", buf.getvalue())
    return {"boundary_json": str(workdir / "boundary.json"), "boundary_csv": str(workdir / "boundary.csv")}


def plot_pareto(path: str | Path, outcome: PopOutcome, *, title: str,
                target_ms: float | Sequence[float] | None = None, chosen_key: str | Sequence[str] | None = None,
                window_ms: tuple[float | None, float | None] = (None, None),
                accuracy_label: str = "held-out accuracy (short schedule)") -> Path:
    """pareto.png: evaluated candidates, the boundary B(D) as a step line, the count pruned without
    training, the target latencies and the chosen nets.  Needs matplotlib (`pip install jaxnas[plot]`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = outcome.evaluated
    on = [e for e in ev if e["on_boundary"]]
    off = [e for e in ev if not e["on_boundary"]]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    ax.scatter(*_xy(off), s=18, c="0.6", label=f"trained, dominated ({len(off)})")
    if on:
        ax.step(*_xy(on), where="post", c="tab:red", lw=1.2)
        ax.scatter(*_xy(on), s=26, c="tab:red", label=f"boundary B(D) ({len(on)})", zorder=3)
    c = outcome.counts
    ax.plot([], [], " ", label=f"pruned without training: {c['pruned_without_training']}")
    ax.plot([], [], " ", label=f"space {c['space_size']}, in window {c['in_window']}, trained {c['trained']}")
    lo, hi = window_ms
    for v in (lo, hi):
        if v is not None:
            ax.axvline(v, c="0.8", lw=0.8, ls=":")
    targets = [] if target_ms is None else [target_ms] if isinstance(target_ms, (int, float)) else list(target_ms)
    for j, t in enumerate(targets):
        ax.axvline(t, c="tab:blue", lw=1.0, ls="--", label="target " + ", ".join(f"{x:g}" for x in targets) + " ms"
                   if j == 0 else None)
    keys = [] if chosen_key is None else [chosen_key] if isinstance(chosen_key, str) else list(chosen_key)
    ch = [e for e in ev if e["key"] in set(keys)]
    if ch:
        ax.scatter(*_xy(ch), s=140, marker="*", c="tab:blue", zorder=4, label="chosen")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel(accuracy_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = ["CSV_FIELDS", "plot_pareto", "write_boundary"]
