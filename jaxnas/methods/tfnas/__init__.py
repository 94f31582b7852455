"""TF-NAS: Three-Freedom NAS (Hu et al., ECCV 2020) on jaxnas (seed-specs §4).

A latency-targeted differentiable search over an EfficientNet-B0-like skeleton with three freedoms:
the operation of every block (8 MBInvertedResBlocks: k3/k5 x e3/e6 x SE or not), the depth of every
stage (sink-connected: a stage's output is the softmax(beta)-weighted sum of its blocks' outputs) and the
width of every block (elastic mid channels, set by elasticity scaling to hit the target on a lookup table).

Pieces: `space` (the skeleton, ops, table keys, concrete specs), `supernet` (the masked full-size supernet:
one op per block through `lax.switch` for weight steps, all ops for arch steps), `lut` (table curves,
interpolated in mid), `elastic` (parsing, fit_mc_num_by_latency, L1 channel ranking), `search` (the
resumable loop: bi-sampling weight steps, Gumbel arch steps, per-epoch optimiser reset, tau schedule),
`config_io` + `commands` (the original's model.config), `run` (the pipeline on the method contract).

Port decisions:

* Widths are 0/1 channel masks on the full-size weights (the original slices each epoch and scatters
  back); masked channels are frozen (no update, no decay, no momentum), as in a sliced network, and one
  compiled step serves every width.
* The Gumbel path's op and the random path's op are drawn on device from the step's key: a = argmax(log
  alpha + Gumbel noise) (gumbel_softmax's argmax), b uniform over the other seven.
* Both optimisers follow PyTorch (SGD: clip 5, L2 decay added before momentum; Adam: clip 5, L2 decay, bias
  correction) and are re-created every epoch; log_softmax renormalises every architecture parameter after
  each arch step (the original applies it to the betas too).
* Within an epoch, held-out batches for the arch steps come from a stream reshuffled per epoch (the
  original re-creates its validation iterator every epoch).
* Search BN has no affine parameters and always uses batch statistics (as the original).  The retrained
  network is a plain jaxnas spec (BN with affine parameters and running statistics, Kaiming init).
* Tables: the original's pickles (imported) or tables built for the space on any backend at a grid of
  8 mids (interpolated), alone or calibrated in-network (jaxnas.latency.tfnas_table).
"""
from __future__ import annotations

from jaxnas.methods.base import Method, SearchError, lazy_exports
from jaxnas.methods.tfnas.commands import add_commands


METHOD = Method(
    name="tfnas",
    summary="TF-NAS (ECCV'20): op, depth and width search under a lookup-table latency target, precise to ±1 %",
    targets=("latency_ms",),
    args="jaxnas.methods.tfnas.args:TfnasArgs",
    search="jaxnas.methods.tfnas.run:run_search",
    add_commands=add_commands,
    requires_target=False,  # search.target_latency_ms, or search.args.target_fraction (checked by the method)
    table_targets=("latency_ms", "none"),  # its TF-NAS table: latency.table, else built (or the args' pickle)
)

__getattr__, _LAZY_NAMES = lazy_exports(__name__, {"args": ("TfnasArgs",)})

__all__ = ["METHOD", "SearchError", *_LAZY_NAMES]
