"""jaxnas: hardware-aware CNN search and pruning in JAX/Flax.

Core pieces: `jaxnas.spec` (the architecture spec every method outputs), `jaxnas.zoo` (reference
networks as specs), `jaxnas.models` (Flax modules built from specs; supernets via `choices` arrays),
`jaxnas.supernet` (materialise a chosen sub-network), `jaxnas.data`, `jaxnas.train`, `jaxnas.config`,
`jaxnas.methods` (DMCP, depth compression, ...).  Export lives in the top-level `export` package and
runtime latency in `latency`.
"""
__version__ = "0.1.0"
