"""jaxnas: hardware-aware CNN search and pruning in JAX/Flax.

Core pieces: `jaxnas.spec` (the architecture spec every method outputs), `jaxnas.zoo` (reference
networks as specs), `jaxnas.models` (Flax modules built from specs; supernets via `choices` arrays),
`jaxnas.supernet` (materialise a chosen sub-network), `jaxnas.data`, `jaxnas.train`, `jaxnas.config`,
`jaxnas.methods` (one folder per method), `jaxnas.pipeline` / `jaxnas.deploy` (train or search, then
export and measure), `jaxnas.export` and `jaxnas.latency` (installed from the top-level folders export/ and
latency/). See docs/architecture.md.
"""
__version__ = "0.1.0"
