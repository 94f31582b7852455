"""MetaPruning (Liu et al., ICCV 2019): a PruningNet generates the weights of any channel configuration;
an evolutionary search under a MACs or measured-latency budget picks one; it is retrained from scratch.

    jaxnas search configs/metapruning/quick.yaml           # search.method: metapruning
    jaxnas metapruning decode mobilenet_v2 --genes 14,12,11,... --out arch.json --json

Pieces (seed spec §2): `space` (the three search spaces and their gene encodings, decoding to `ArchSpec`),
`flops` (the original's FLOPs counter), `pruningnet` (the PruningNet as Flax modules with a traced
encoding), `training` (stochastic structure sampling on the core loop), `fitness` (BN recalibration +
held-out top-1 error, single or vectorised over candidates), `evolution` (the original's evolutionary
search with a checkpointed state), `constraint` (MACs / original FLOPs / per-layer-table latency budgets),
`pipeline` (the method on the contract), `commands` (`jaxnas metapruning decode`).  The method sees
latency only through the oracle (a per-layer table of the widest network, end-to-end measurements).

Port decisions (details in each module):

* Genes follow the original's *search* convention (block i uses mid gene i-1); candidates are kept in a
  compact form (MobileNetV2: 8 stage ids + 17 mid ids) and printed/accepted in the original's form too.
* The PruningNet crops by masking kernels' output channels and selects each layer's per-width BN by a
  gather, so one compiled step serves every encoding; generator outputs are laid out HWIO (a fixed
  permutation of the original's OIHW view).  BN running statistics store the biased variance.
* Fitness calibration batches are drawn once per search (the same for every candidate) instead of a fresh
  shuffle per candidate; the recalibration itself is the original's (reset, PyTorch EMA 0.1) by default.
* The PruningNet's validation during training (one random encoding, as the original) recalibrates BN as
  the fitness does: the per-width running statistics lag (each is updated only when its width is
  sampled), and with them the accuracy was chance.
* The decoded (retrained) network keeps the PruningNet's residual rule (base widths) by default; the
  original's final nets' rule (pruned widths) is `residual_rule: pruned`.
* Constraints: jaxnas MACs (default), the original counter, or predicted latency from a per-layer latency
  grid, with an end-to-end check of the best candidates on the runtime before retraining.
* The search state records which candidates were tested (the original's snapshot did not, so its resumed
  searches could re-propose them); a resumed search ends exactly like an uninterrupted one.
"""
from jaxnas.methods.base import Method, lazy_exports


def _add_commands(sub):
    from jaxnas.methods.metapruning.commands import add_commands

    add_commands(sub)


METHOD = Method(
    name="metapruning",
    summary="MetaPruning (ICCV'19): PruningNet weight generation + evolutionary search under a MACs or latency budget",
    targets=("macs", "latency_ms"),
    args="jaxnas.methods.metapruning.args:MetaPruningArgs",
    search="jaxnas.methods.metapruning.pipeline:run_search",
    add_commands=_add_commands,
    requires_target=True,
    table_targets=("latency_ms",),  # the per-layer grid of a latency budget
)

_LAZY = {  # module -> names loaded from it on first access (importing the package stays light)
    "args": ("MetaPruningArgs",),
    "commands": ("decode",),
    "constraint": ("Budget", "BudgetError", "CostFunction"),
    "pipeline": ("MetaPruningError", "run_search"),
    "space": ("FAMILIES", "GeneError", "MetaSpace", "get_space"),
}
__getattr__, _LAZY_NAMES = lazy_exports(__name__, _LAZY)

__all__ = ["METHOD", *_LAZY_NAMES]
