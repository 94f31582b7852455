"""POP: Partial Order Pruning (Li, Zhou, Pan, Feng, CVPR 2019) — the first runnable implementation.

The original repository ships only the searched "Dongfeng" nets (Caffe prototxts), no search code,
so this follows the paper's algorithm (seed spec §1.2) and decides what the paper leaves open:

    from jaxnas.methods.pop import PopSearch, PopSettings, LocalExecutor, load_space
    outcome = PopSearch(load_space("pop-small"), PopSettings(window_ms=(0.1, 0.4), max_trainings=40),
                        measure=oracle.measure, fingerprint=oracle.fingerprint(),
                        executor=LocalExecutor(train_fn), workdir="runs/pop").run()

Pieces: `space` (search spaces as ArchSpec generators), `order` (the partial order on specs),
`boundary` (B(D) and the pruning rule), `timing` (measured-latency cache, additive pre-screen),
`executor` (candidate trainings), `search` (the resumable loop), `report` (boundary.json/csv,
pareto.png), `synthetic` (a test oracle), `args` (search.args).

What the paper fixes, and this follows: the target is *measured* latency of whole networks on the
target runtime (batch 1); D = trained candidates, B(D) = their speed/accuracy boundary; the partial
order A ⪯ A' (A' from A by widening and/or adding blocks) with the assumption A ⪯ A' => Acc(A) <=
Acc(A'); the pruned space P (an unevaluated A is discarded when an evaluated A' ⪰ A is already
dominated at A's latency: b in B(D), Lat(b) <= Lat(A), Acc(b) >= Acc(A')); sampling from S \\ P in
the latency range of interest, more samples near the current boundary; short training of each
sample; repeat until the budget is spent; retrain the chosen boundary nets fully.  The ResNet-like
space (fixed stem, three searched stages, basic blocks, widths from a set non-decreasing along depth,
projection whenever the width changes or the stride is 2) is reconstructed from the released nets;
DF1/DF2/DF2A are members of ``pop-imagenet`` with their exact MACs.

Decisions (the paper leaves these open):

1. Space: per-stage width sets {64,128} / {128,256} / {256,512} and depth ranges 2-4 / 2-12 / 2-8
   (the released nets have 3 / 3-11 / 4-6 blocks); bottleneck widths (mid, out) as DF2A's for
   res3/res4, one block kind per stage; "non-decreasing" compares (mid, out) componentwise, across
   stages too.  The small-input variant (``pop-small``) uses stride-1 stem convs of 8/16 channels and
   a quarter of the widths.  The MBConv variant searches the spaces of `jaxnas.latency.spaces`.
2. Partial order: a stage's first (stride-2) block maps to the other's first block; the rest embed in
   order anywhere ("adding blocks" anywhere after it).  Larger kernels and an added SE count as
   widening (MBConv space); shortcut types are ignored (they follow from the widths); a basic and a
   bottleneck block are incomparable.
3. Ties: an architecture that can at best tie a boundary net is pruned (it cannot lift B(D)).
4. Latency: the median of the runtime's timed runs of the whole network (random weights, batch 1);
   every trained candidate is measured end to end.  The rest may be classified by an additive table
   learned from end-to-end measurements, only where the decision holds over the table's error bound
   (worst leave-one-out error x 1.5, at least 5 %) — the paper does not say how it profiled.
5. Sampling: rounds of ``candidates_per_round`` draws; with probability 0.75 a draw is an open
   architecture comparable to a random boundary net, weighted by latency closeness
   (exp(-|log ratio| / 0.15)); otherwise uniform over a random latency bin of the open set.  The first
   draw is the fastest open architecture, so B(D) has a left end.
6. Short schedule: ``candidate_epochs`` of the config's recipe, seed `train.seed`, accuracy on the
   `holdout` split (never on `test`).  The chosen net (the most accurate boundary net measured at or
   under ``search.target_latency_ms``; without a target, the most accurate boundary net) is retrained
   from scratch with the full recipe.
7. Window and budget: the latency window is a setting (default: the whole space); the search stops at
   ``max_trainings``, ``time_budget_s`` or when nothing is left open — then B(D) is the exact boundary
   of the window under the partial-order assumption.  Spaces above ``max_enumerate`` architectures are
   searched on a seeded random pool of ``pool_size``.
8. Short-training noise can violate the partial-order assumption; as in the paper nothing corrects it.
"""
from jaxnas.methods.base import Method, lazy_exports

METHOD = Method(
    name="pop",
    summary="Partial order pruning (CVPR'19): measured-latency Pareto search over block widths and depths",
    targets=("latency_ms",),
    args="jaxnas.methods.pop.args:PopArgs",
    search="jaxnas.methods.pop.method:search",
)

_LAZY = {  # module -> names loaded from it on first access (the registry and `jaxnas --help` stay light)
    "args": ("PopArgs",),
    "boundary": ("Boundary", "dominated_at", "pareto_boundary"),
    "executor": ("Executor", "LocalExecutor", "TrainJob"),
    "order": ("OrderKey", "comparable", "order_key", "precedes"),
    "search": ("PopError", "PopOutcome", "PopSearch", "PopSettings"),
    "space": ("PRESETS", "MBConvSpace", "ResNetSpace", "SpaceError", "load_space"),
    "timing": ("AdditiveLatencyModel", "LatencyCache", "LatencyCacheError"),
}
__getattr__, _names = lazy_exports(__name__, _LAZY)
__all__ = ["METHOD", *_names]
