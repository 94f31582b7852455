"""Start from a trained network: torchvision / timm state dicts -> jaxnas spec + variables -> work dir.

    from jaxnas.weights import read_state_dict, import_state_dict, write_workdir
    state = read_state_dict("mobilenetv2_140.safetensors")
    imported = import_state_dict(state.tensors, "mobilenetv2_140")      # .spec, .variables
    write_workdir(imported, "runs/pretrained/mbv2_1.4", source={...})

or all three: `import_weights(path, model, out)` (the `jaxnas import-weights` command).

Supported (`layouts.SOURCE_MODELS`): torchvision ``mobilenet_v2`` (any ``--width``), ``resnet18/34/50``
(timm's share the layout), ``vgg19_bn``; timm ``mobilenetv2_035/050/075/100/140``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jaxnas.weights.convert import ImportedWeights, import_state_dict, to_state_dict, zoo_spec
from jaxnas.weights.errors import WeightsError
from jaxnas.weights.layouts import SOURCE_MODELS, detect_model, resolve_model, tensor_map
from jaxnas.weights.read import StateDict, file_sha256, read_state_dict
from jaxnas.weights.workdir import check_out, workdir_config, write_workdir

__all__ = ["ImportedWeights", "SOURCE_MODELS", "StateDict", "WeightsError", "check_out", "detect_model", "file_sha256",
           "import_state_dict", "import_weights", "read_state_dict", "resolve_model", "tensor_map",
           "to_state_dict", "workdir_config", "write_workdir", "zoo_spec"]


def import_weights(source: str | Path, model: str, out: str | Path, *, width: float | None = None,
                   num_classes: int | None = None, resolution: int = 224,
                   overrides: Sequence[str] = (), replace: bool = False) -> dict[str, Any]:
    """Read `source`, convert it as `model`, write the work dir `out`; returns its summary. `replace`: replace
    an earlier import at `out` made from another file or config (refused otherwise)."""
    source = Path(source)
    resolve_model(model, width)          # a bad --model / --width / --out fails before reading a large file
    check_out(out)
    state = read_state_dict(source)
    imported = import_state_dict(state.tensors, model, width=width, num_classes=num_classes,
                                 resolution=resolution, source_name=source.name)
    info = {"path": str(source.absolute()), "sha256": file_sha256(source), "reader": state.reader,
            "notes": state.notes, "dtypes": state.dtypes}
    return write_workdir(imported, out, source=info, overrides=overrides, replace=replace)
