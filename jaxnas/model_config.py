"""The model section of the experiment config, and the spec it describes sized to the data."""
from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import PositiveFloat, PositiveInt, model_validator

from jaxnas.schema import Fraction, Section
from jaxnas.spec import ArchSpec, validate
from jaxnas.zoo import get_spec

__all__ = ["ModelConfig", "build_spec"]


class ModelConfig(Section):
    """The model section of the experiment config: a zoo model (name, width, small_input, dropout) or an
    arch spec JSON (`spec`: the whole network; name, width, small_input and dropout set beside it
    are refused); `num_classes` null takes the data's class count;
    `depthwise` picks the conv implementation ('auto': the CPU forms on CPU, XLA's grouped conv elsewhere;
    exports always use plain convs)."""

    section = "model"

    name: str = "mobilenet_v2"
    spec: str | None = None
    width: PositiveFloat = 1.0
    num_classes: PositiveInt | None = None
    small_input: bool = True  # stride-1 stem for 28-32 px inputs (MobileNetV2)
    dropout: Fraction = 0.0
    depthwise: Literal["auto", "shift", "grouped"] = "auto"

    @model_validator(mode="after")
    def _no_ignored_keys(self) -> "ModelConfig":
        return self.checked([] if self.spec is None else self.ignored(
            ("name", "width", "small_input", "dropout"), "model.spec gives the whole network",
            "remove it (or remove spec to build a zoo model)"))


def build_spec(model: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> ArchSpec:
    """The model section as a validated spec sized for the data (resolution, channels, classes)."""
    classes = model.num_classes or num_classes
    h, w, c = image_shape
    if model.spec:
        spec = ArchSpec.load(model.spec).with_input((h, w), classes, c)
    else:
        fixed = model.name.startswith("df")  # POP's nets have fixed widths and stems
        spec = get_spec(model.name, resolution=h, num_classes=classes, width=None if fixed else model.width,
                        small_input=None if fixed else model.small_input, in_channels=c)
        if model.dropout != spec.head.dropout and spec.head.pool == "global":
            spec = spec.replace(head=dataclasses.replace(spec.head, dropout=model.dropout))
    return validate(spec)
