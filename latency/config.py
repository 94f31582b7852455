"""The latency section of the experiment config: the runtime every measured figure comes from."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from jaxnas.schema import Section

if TYPE_CHECKING:
    from .timing import TimingProtocol


class LatencyConfig(Section):
    """backend: the runtime (onnxruntime, tflite, xla, tensorrt); threads, batch_size: how it runs;
    rel_ci, max_time_s, priority: the adaptive timing protocol (time until the 95 % interval of the
    median is within ±rel_ci, at most max_time_s per measurement: default 10 s for a network, 3 s for a
    table entry; an entry of a per-layer grid at least ±3 % within 0.2 s, `latency.layer_grid.entry_protocol`;
    `jaxnas.latency.timing`); warmup:
    warm-up runs per session (default: the protocol's 10; 20 with runs); runs: a fixed number of runs in
    one session instead of the protocol (no interval); table: a lookup table file to use where a method
    needs one (it is refused when it was measured on another device or runtime)."""

    section = "latency"

    backend: str = "onnxruntime"
    threads: PositiveInt = 1
    batch_size: PositiveInt = 1
    rel_ci: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    max_time_s: PositiveFloat | None = None
    priority: Literal["auto", "fifo", "nice", "none"] = "auto"
    warmup: Annotated[int, Field(ge=0)] | None = None
    runs: PositiveInt | None = None
    table: str | None = None

    def protocol(self, default_cap_s: float | None = None) -> "TimingProtocol | None":
        """The adaptive protocol these settings ask for (the cap: ``max_time_s``, else ``default_cap_s``,
        else the protocol's 10 s), or None with fixed ``runs``."""
        if self.runs is not None:
            return None
        from .timing import DEFAULT_PROTOCOL

        cap = self.max_time_s or default_cap_s or DEFAULT_PROTOCOL.max_time_s
        return DEFAULT_PROTOCOL.replace(rel_ci=self.rel_ci, max_time_s=cap, priority=self.priority)

    @model_validator(mode="after")
    def _threads_where_honoured(self) -> "LatencyConfig":
        key = self.backend.strip().lower()
        if self.threads != 1 and key in ("xla", "jax", "tensorrt", "trt"):
            raise ValueError(f"threads: the {key} backend takes no thread count (it runs on its own pool or on "
                             "the GPU); remove latency.threads, or time on onnxruntime or tflite")
        return self
