"""A synthetic oracle for testing POP without training or timing anything.

* accuracy grows with a capacity that sums an increasing function of every chain conv's size over all
  blocks, so it is monotone in the partial order (a wider block or an added block only adds capacity);
* latency sums each conv's MACs at a per-channel-count efficiency that drops for channel counts off the
  hardware's alignment (not a multiple of `aligned`), plus a fixed cost per block, so widening a block
  from an unaligned to an aligned width can make the network *faster*: latency is not monotone in width,
  as on real hardware (onnxruntime's NCHWc kernels, TensorRT tactics).

`SYNTHETIC_SPACE` is a 405-architecture ResNet-like space where that happens (48 -> 64 in res3).
"""
from __future__ import annotations

import math
from typing import Any

from jaxnas.spec import ArchSpec, analyze

from jaxnas.methods.pop.executor import TrainJob

SYNTHETIC_SPACE = {
    "name": "pop-synthetic", "family": "resnet", "resolution": 28, "in_channels": 1, "num_classes": 10,
    "stem": [[8, 1], [16, 1]],
    "stages": [
        {"name": "res2", "depths": [1, 2], "widths": [16, 24]},
        {"name": "res3", "depths": [1, 2], "widths": [32, 48, 64]},
        {"name": "res4", "depths": [1, 2, 3], "widths": [64, 96]},
    ],
}


class SyntheticOracle:
    def __init__(self, aligned: int = 32, penalty: float = 1.8, ms_per_gmac: float = 40.0,
                 block_overhead_ms: float = 0.004):
        self.aligned, self.penalty = aligned, penalty
        self.ms_per_mac = ms_per_gmac / 1e9
        self.block_overhead_ms = block_overhead_ms
        self.measured = 0
        self.trained = 0

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "synthetic", "aligned": self.aligned, "penalty": self.penalty,
                "ms_per_mac": self.ms_per_mac, "block_overhead_ms": self.block_overhead_ms}

    def latency_ms(self, spec: ArchSpec) -> float:
        cost = analyze(spec)
        total = 0.0
        for bc in cost.blocks:
            for layer in bc.layers:
                c = layer.out_shape[2]
                eff = 1.0 if c % self.aligned == 0 else self.penalty
                total += layer.macs * eff * self.ms_per_mac
            total += self.block_overhead_ms
        return total + cost.head.macs * self.ms_per_mac

    def capacity(self, spec: ArchSpec) -> float:
        return sum(math.log1p(conv.out * conv.kernel[0] * conv.kernel[1]) for b in spec.blocks for conv in b.layers)

    def accuracy(self, spec: ArchSpec) -> float:
        return 0.95 - 0.6 * math.exp(-self.capacity(spec) / 40.0)

    def measure(self, spec: ArchSpec) -> dict[str, Any]:
        self.measured += 1
        ms = self.latency_ms(spec)
        return {"median_ms": ms, "ci_ms": [ms, ms], "runs": 1}

    def train(self, job: TrainJob) -> dict[str, Any]:
        self.trained += 1
        return {"accuracy": self.accuracy(job.spec)}


__all__ = ["SYNTHETIC_SPACE", "SyntheticOracle"]
