"""The latency section of the experiment config: the runtime every measured figure comes from."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from jaxnas.schema import Section

PositiveInt = Annotated[int, Field(gt=0)]


class LatencyConfig(Section):
    """backend: the runtime (onnxruntime, tflite, xla, tensorrt); threads, batch_size: how it runs;
    warmup, runs: the timing protocol; table: a lookup table file to use where a method needs one (it is
    refused when it was measured on another device or runtime)."""

    section = "latency"

    backend: str = "onnxruntime"
    threads: PositiveInt = 1
    batch_size: PositiveInt = 1
    warmup: Annotated[int, Field(ge=0)] = 20
    runs: PositiveInt = 100
    table: str | None = None

    @model_validator(mode="after")
    def _threads_where_honoured(self) -> "LatencyConfig":
        key = self.backend.strip().lower()
        if self.threads != 1 and key in ("xla", "jax", "tensorrt", "trt"):
            raise ValueError(f"threads: the {key} backend takes no thread count (it runs on its own pool or on "
                             "the GPU); remove latency.threads, or time on onnxruntime or tflite")
        return self
