"""The export section of the experiment config: what the pipeline's deploy step writes."""
from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat, field_validator

from jaxnas.schema import Section


class ExportConfig(Section):
    """formats: files the deploy step writes (each parity-checked against the JAX model); route: how the
    ONNX file is made; input_layout: the ONNX / TensorRT input, NHWC (as the JAX model and TFLite take it)
    or NCHW (as a PyTorch user feeds it; no layout op in the graph at all); tolerance: the largest absolute
    output difference accepted (fp32)."""

    section = "export"

    formats: tuple[Literal["onnx", "tflite", "tensorrt"], ...] = ("onnx", "tflite")
    route: Literal["jax2onnx", "tflite"] = "jax2onnx"
    input_layout: Literal["NHWC", "NCHW"] = "NHWC"
    tolerance: PositiveFloat = 1e-4

    @field_validator("formats")
    @classmethod
    def _some_format(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one format is needed (onnx, tflite, tensorrt)")
        return tuple(dict.fromkeys(v))
