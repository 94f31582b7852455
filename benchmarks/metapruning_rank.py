"""Does the PruningNet's fitness rank MetaPruning's candidates as retraining does?

    python benchmarks/metapruning_rank.py --workdir runs/metapruning-bench --fraction 0.3 [--n 8] [--seeds 1]

Reads a `benchmarks/metapruning_table.py` work dir: the search at `--fraction` (`mp_<fraction>/`) keeps the
config it ran with (`config.yaml`) and every candidate it evaluated with its fitness
(`evolution/tested.json`; all of them passed the latency window).  Takes `--n` of them evenly spread over
the ranks of that fitness (the best and the worst included), retrains each from scratch with the search's own
retraining recipe (its `train` section: the table's budget) at train.seed 0..`--seeds`-1, and prints the
Spearman rank correlation between the PruningNet's fitness and the retrained test error (1: the fitness
orders the candidates as retraining does; 0: no better than a random order), and between MACs and the
retrained test error for comparison.  The fitness is recomputed on the same candidates with the work dir's
PruningNet (`shared/pruningnet`) in four variants: held-out top-1 error (the original) and held-out loss
(`search.args.fitness`), each after BN recalibration over the search's `calib_batches` and over
`--calib-more` batches.  Every training resumes from `<workdir>/rank_<fraction>/`; the result is written
there too (`rank.json`).

With `--seeds` 2 or more it also asks whether the candidates differ at all after retraining: a one-way
ANOVA of their per-seed accuracies (F, p) and the spread of their mean accuracies against the spread seed
noise alone would give (seed SD / sqrt(seeds)).  `--uniform 18,19,20` scores the space's uniform nets
(every gene that id) with the same fitness variants, next to the candidates: does the PruningNet place its
pick above the uniform nets a table compares it with?
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from metapruning_table import pretrain_pruningnet
from scipy.stats import f_oneway, spearmanr

from jaxnas import allocator
from jaxnas import spec as S
from jaxnas.config import load_config, override_config
from jaxnas.data import load_dataset
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.pipeline import fitness_evaluator, space_for
from jaxnas.methods.metapruning.space import NUM_SCALES
from jaxnas.schema import validate
from jaxnas.trainer import Trainer


def spread_by_rank(tested: list[tuple[tuple[int, ...], float]], n: int) -> list[tuple[tuple[int, ...], float]]:
    """`n` candidates at evenly spaced ranks of their fitness (best first, worst last)."""
    ranked = sorted(tested, key=lambda t: t[1])
    picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, min(n, len(ranked)))).astype(int))
    return [ranked[i] for i in picks]


def fitness_variants(cfg, dataset, args: MetaPruningArgs, space, workdir: Path, genes: list[tuple[int, ...]],
                     calib_more: int) -> dict[str, np.ndarray]:
    """Held-out error and loss of `genes` after BN recalibration over the search's and `calib_more` batches."""
    model, variables = pretrain_pruningnet(cfg, dataset, args, space, workdir / "shared" / "pruningnet")
    out = {}
    for nb in (args.calib_batches, calib_more):
        errors, losses = fitness_evaluator(cfg, dataset, args, model, variables, calib_batches=nb).measure(genes)
        out[f"error_calib{nb}"], out[f"loss_calib{nb}"] = errors, losses
    return out


def seed_signal(acc_seeds: list[list[float]]) -> dict | None:
    """Do candidates' retrained accuracies differ beyond seed noise?  None with fewer than 2 seeds each, or
    when no candidate varies across seeds (no noise to compare with)."""
    if min(len(a) for a in acc_seeds) < 2:
        return None
    means = np.array([np.mean(a) for a in acc_seeds])
    seed_sd = float(np.sqrt(np.mean([np.var(a, ddof=1) for a in acc_seeds])))
    if seed_sd == 0:
        return None
    test = f_oneway(*acc_seeds)
    return {"anova_f": float(test.statistic), "anova_p": float(test.pvalue),
            "sd_of_means_points": 100 * float(np.std(means, ddof=1)),
            "seed_sd_points": 100 * seed_sd,
            "sd_of_means_if_equal_points": 100 * seed_sd / float(np.sqrt(min(len(a) for a in acc_seeds))),
            "range_of_means_points": 100 * float(means.max() - means.min())}


def uniform_ids(text: str) -> list[int]:
    """`--uniform`'s comma-separated scale ids, each in [0, NUM_SCALES)."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated scale ids like 18,19,20, got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < NUM_SCALES]
    if bad:
        raise argparse.ArgumentTypeError(f"scale ids run from 0 to {NUM_SCALES - 1}, got {bad}")
    return ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a benchmarks/metapruning_table.py work dir")
    p.add_argument("--fraction", type=float, default=0.3, help="which target's search (mp_<fraction>/)")
    p.add_argument("--n", type=int, default=8, help="candidates retrained")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--calib-more", type=int, default=16, help="BN calibration batches of the larger variants")
    p.add_argument("--uniform", type=uniform_ids, default=[],
                   help="uniform ids to score with the fitness variants, e.g. 18,19,20")
    p.add_argument("--set", action="append", default=[], help="config override a.b=c (e.g. train.epochs=0.1)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    allocator.reexec_with_tcmalloc()
    search_dir = Path(a.workdir).absolute() / f"mp_{a.fraction:g}"
    tested_path = search_dir / "evolution" / "tested.json"
    if not tested_path.is_file():
        p.error(f"{tested_path} not found: --workdir must be a metapruning_table.py work dir with a search at "
                f"--fraction {a.fraction:g}")
    cfg = load_config(search_dir / "config.yaml", a.set)
    dataset = load_dataset(cfg.dataset_config())
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    space = space_for(cfg, dataset, args)
    tested = [(tuple(g), float(e)) for g, e in json.loads(tested_path.read_text())["tested"]]
    chosen = spread_by_rank(tested, a.n)
    out = search_dir.parent / f"rank_{a.fraction:g}"
    seeds = [cfg.train.seed + i for i in range(a.seeds)]
    trainers = {sd: Trainer(override_config(cfg, [f"train.seed={sd}"]), dataset) for sd in seeds}
    rows = []
    for i, (genes, fitness) in enumerate(chosen):
        spec = space.to_spec(genes, residual_rule=args.residual_rule, name=f"rank_candidate_{i}")
        accs = [float(trainers[sd].train(spec, out / f"cand{i}_seed{sd}").metrics["test"]["accuracy"]) for sd in seeds]
        macs = S.macs(spec)
        rows.append({"genes": list(genes), "search_fitness": fitness, "macs": macs,
                     "test_accuracy_seeds": accs, "test_error": 100 * (1 - float(np.mean(accs)))})
        print(f"candidate {i}: {args.fitness} {fitness:.4g} (PruningNet), {macs / 1e6:.2f} M MACs, "
              f"retrained test error {rows[-1]['test_error']:.2f} %", flush=True)
    n_genes = len(chosen[0][0])
    scored = [tuple(r["genes"]) for r in rows] + [(u,) * n_genes for u in a.uniform]
    variants = fitness_variants(cfg, dataset, args, space, search_dir.parent, scored, a.calib_more)
    for i, r in enumerate(rows):
        r["fitness_variants"] = {k: float(v[i]) for k, v in variants.items()}
    uniform = [{"id": u, "macs": S.macs(space.to_spec(scored[len(rows) + j], residual_rule=args.residual_rule)),
                "fitness_variants": {k: float(v[len(rows) + j]) for k, v in variants.items()}}
               for j, u in enumerate(a.uniform)]
    variants = {k: v[:len(rows)] for k, v in variants.items()}
    err = [r["test_error"] for r in rows]
    result = {"workdir": str(search_dir), "candidates_tested": len(tested), "seeds": seeds,
              "train_epochs": cfg.train.epochs, "search_fitness": args.fitness, "rows": rows,
              "spearman_fitness_vs_retrained": float(spearmanr([r["search_fitness"] for r in rows], err).statistic),
              "spearman_variants_vs_retrained": {k: float(spearmanr(v, err).statistic) for k, v in variants.items()},
              "spearman_macs_vs_retrained": float(spearmanr([-r["macs"] for r in rows], err).statistic),
              "seed_signal": seed_signal([r["test_accuracy_seeds"] for r in rows]), "uniform": uniform}
    atomic_write_json(out / "rank.json", result)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(rows)} of {len(tested)} candidates, retrained {cfg.train.epochs:g} epochs at seeds {seeds}: "
              f"Spearman(PruningNet {args.fitness}, retrained test error) = "
              f"{result['spearman_fitness_vs_retrained']:.3f}; Spearman(-MACs, retrained test error) = "
              f"{result['spearman_macs_vs_retrained']:.3f}")
        for k, v in result["spearman_variants_vs_retrained"].items():
            print(f"  fitness {k}: Spearman {v:.3f}")
        sig = result["seed_signal"]
        if sig is not None:
            print(f"retrained accuracies: means spread {sig['sd_of_means_points']:.2f} points (SD; range "
                  f"{sig['range_of_means_points']:.2f}), seed noise alone would give "
                  f"{sig['sd_of_means_if_equal_points']:.2f} (seed SD {sig['seed_sd_points']:.2f}); one-way ANOVA "
                  f"F {sig['anova_f']:.2f}, p {sig['anova_p']:.3f}")
        for u in uniform:
            print(f"uniform id {u['id']} ({u['macs'] / 1e6:.2f} M MACs): " + ", ".join(
                f"{k} {v:.4g}" for k, v in u["fitness_variants"].items()))
        for i, r in enumerate(rows):
            print(f"candidate {i}: " + ", ".join(f"{k} {v:.4g}" for k, v in r["fitness_variants"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
