"""How a network table's derivation predicts the nets a validation measured: the same measurements, the
same probes, several derivations (no timing; run after `predictor_validation.py --table-dir D --out R`).

For each report in R (network-context tables only): the table as built, re-derived with the prior spread
ρ estimated from its probes (`latency.network_table.prior_spread`, the default), with ρ fixed, and the
old derivation (alone entries left out: unweighted equations, weak MACs prior).  `--probe-noise K ...`
adds Gaussian noise of sd K x L_R to every probe's Δ (its interval widened to match: the noise is known,
as the timing protocol reports it) over `--noise-seeds` draws, and reports both derivations: what a noisier
machine's probes would do to each.

    python benchmarks/predictor_validation.py --contexts network --table-dir tables --out val.json
    python benchmarks/network_table_derivation.py val.json [--fixed 0.1 0.5] [--probe-noise 0.005 0.01 0.02]
"""
from __future__ import annotations

import argparse
import copy
import json
from typing import Optional

import numpy as np

from jaxnas.latency import network_table as NT
from jaxnas.latency.predictor import LatencyPredictor, prediction_metrics
from jaxnas.latency.spaces import load_space
from jaxnas.latency.table import LatencyTable


def derived(table: LatencyTable, space, prior_rel: Optional[float], old: bool = False) -> tuple[LatencyTable, object]:
    """A copy of `table` re-derived (ρ fixed to prior_rel, or estimated when None; old: without alone entries)."""
    t = copy.deepcopy(table)
    if old:
        for k in [k for k in t.entries if k.startswith(NT.ALONE_PREFIX)]:
            del t.entries[k]
    saved, NT.PRIOR_REL = NT.PRIOR_REL, prior_rel
    try:
        parts = NT.derive_parts(space, t)
    finally:
        NT.PRIOR_REL = saved
    for k, e in parts.items():
        t.put(k, e)
    return t, next(iter(parts.values()))["meta"].get("prior_rel")


def with_probe_noise(table: LatencyTable, rel: float, seed: int) -> LatencyTable:
    t = copy.deepcopy(table)
    rng = np.random.default_rng(seed)
    ref = next(k for k in t.entries if k.startswith(NT.PROBE_PREFIX) and k.endswith(":reference"))
    sd = rel * t.ms(ref, "median")
    for key, e in t.entries.items():
        if key.startswith(NT.PROBE_PREFIX) and key != ref:
            m = e["meta"]
            m["delta_ms"] += float(rng.normal(0.0, sd))
            ci = m.get("delta_ci_ms")
            half = max(abs(ci[1] - ci[0]) / 2 if ci else 0.0, 1.96 * sd)
            m["delta_ci_ms"] = [m["delta_ms"] - half, m["delta_ms"] + half]
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="predictor_validation.py --out file")
    ap.add_argument("--fixed", type=float, nargs="*", default=[0.1, 0.5], help="fixed prior spreads to compare")
    ap.add_argument("--probe-noise", type=float, nargs="*", default=[], help="extra probe noise, x L_R")
    ap.add_argument("--noise-seeds", type=int, default=3)
    args = ap.parse_args()
    reports = json.load(open(args.report))
    for name, r in reports.items():
        if r.get("context") != "network":
            continue
        table, space = LatencyTable.load(r["table_path"]), load_space(r["space"])
        specs = [space.build(row["arch"], name=row["name"]) for row in r["rows"]]
        measured = [row["measured_ms"] for row in r["rows"]]

        def fit(t: LatencyTable) -> str:
            p = LatencyPredictor(t, stat=r["stat"], warn_untrusted=False)
            m = prediction_metrics([p.predict(s) for s in specs], measured)
            return (f"within ±5 % {100 * m['within_5pct']:3.0f} %, ±10 % {100 * m['within_10pct']:3.0f} %, "
                    f"Spearman {m['spearman']:.3f}, bias {m['bias_pct']:+.1f} %")

        print(f"{name}: {len(specs)} nets (retest Spearman {r['retest']['spearman']:.3f}, "
              f"{len(r.get('untrusted', []))} flagged)")
        print(f"  as built                      {fit(table)}")
        t, rho = derived(table, space, None)
        print(f"  rho estimated ({rho:.3f})         {fit(t)}")
        for rel in args.fixed:
            print(f"  rho fixed {rel:<5g}               {fit(derived(table, space, rel)[0])}")
        print(f"  old derivation (no alone)     {fit(derived(table, space, None, old=True)[0])}")
        for k in args.probe_noise:
            for label, old in (("rho estimated", False), ("old derivation", True)):
                fits = []
                for seed in range(args.noise_seeds):
                    t, rho = derived(with_probe_noise(table, k, seed), space, None, old=old)
                    fits.append(fit(t) + (f", rho {rho:.3f}" if rho is not None else ""))
                print(f"  probe noise {100 * k:.1f} % of L_R, {label}: " + " | ".join(fits))


if __name__ == "__main__":
    main()
