"""DMCP: Differentiable Markov Channel Pruning (Guo et al., CVPR 2020) on jaxnas supernets.

    jaxnas search configs/dmcp/quick.yaml          # search.method: dmcp

Pieces: `gates` (Markov channel gates, marginals, expected channels, masks, sampling), `cost` (expected
MACs, expected latency from a layer-grid table, the log_l1 loss), `search` (the alternating training),
`sample` (snapping, direct sampling, target adjustment), `run` (the method on the contract).
The method sees latency only through the oracle's per-layer table, never a runtime.

Port decisions (see docs of each module):

* Prunable: every width group of the zoo spec (`jaxnas.supernet.width_groups`), i.e. the stem, every
  expansion width, every block/stage output (residual chains share one group and one alpha) and the
  last conv (the classifier input follows it), as in the original; groups too narrow for a non-empty
  channel group (offset 0) and `exclude_groups` stay at full width.
* Soft masks scale a group's channels after BN and before the activation, on every conv writing the
  group.  As in the original the MBV2 expansion gate acts twice (after the 1x1 and after the depthwise
  conv), identity blocks also scale their last BN output by the shared stage gate, and the stem/ResNet
  gates act before the ReLU.  Difference: the original scales MBV2 expansion outputs after ReLU6;
  relu6(p*x) and p*relu6(x) differ only where x > 6.
* The target is cast to float (the original compared a string).  Expected MACs follow jaxnas' MAC
  convention (no bias terms; `count_bias: true` adds them), so the cost at hard widths equals
  `jaxnas.spec.macs` of the materialised sub-network.
* log_l1 for ms targets: the loss is log |E - T| in the target's units; its gradient 1/(E - T) is
  unit-free, so the same formula and weight work for ms.  r (0.1 when far) only shifts the loss value;
  "far" is 200 MFLOPs for MACs (original) and 2/3 of the target for ms (200 M relative to the
  original's 300 M flagship target).
* Direct sampling draws every group from its own chain, so a ResNet bottleneck's conv2 width comes
  from its own alpha; the original's R50 bug (conv2 sampled from alpha1) is not replicated.
* BN recalibration averages the batch means and variances of ALL calibration batches (the original's
  momentum-1.0 calibration kept only the last batch).
* The expected architecture is snapped to channel-group boundaries and, like any chosen architecture,
  greedily adjusted (by the marginals) to within ±`tolerance` (3 %) of the target, as a budget when
  possible (cost <= target).
* Running BN statistics during the search follow the max-width pass only; the arch step's BN stats are
  discarded (every sub-network is recalibrated before it is evaluated).
"""
from jaxnas.methods.base import Method, SearchError, lazy_exports


METHOD = Method(
    name="dmcp",
    summary="Differentiable Markov channel pruning (CVPR'20): per-layer widths under a MACs or latency target",
    targets=("macs", "latency_ms"),
    args="jaxnas.methods.dmcp.args:DMCPArgs",
    search="jaxnas.methods.dmcp.run:run_search",
    requires_target=True,
    table_targets=("latency_ms",),  # the per-layer grid of a latency target
)

_LAZY = {  # module -> names loaded from it on first access
    "args": ("DMCPArgs",),
    "cost": ("CostModel", "CostTarget", "LatencyModel", "MacsModel", "log_l1"),
    "gates": ("DMCPSpace", "GroupLayout"),
    "run": ("Setup", "prepare", "build_cost", "check_reachable", "reachable_range", "run_search"),
    "sample": ("adjust_to_target", "direct_samples", "expected_architecture", "materialize_k", "recalibrate_bn"),
    "search": ("SearchConfig", "SearchResult"),  # the function `search`: jaxnas.methods.dmcp.search.search
}
__getattr__, _LAZY_NAMES = lazy_exports(__name__, _LAZY)

__all__ = ["METHOD", "SearchError", *_LAZY_NAMES]
