"""Write imported weights as a normal jaxnas work dir: arch.json, config.yaml, final/, summary.json.

`jaxnas eval`, `jaxnas export`, `jaxnas latency measure` and a method's `search.args.baseline` read it
like a trained one (`jaxnas.workdir.load_workdir`).  The work dir is assembled in a hidden sibling
directory and renamed into place, so an interrupted import leaves no half-written work dir; an earlier
import in the same place is replaced, anything else there is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from jaxnas.weights.convert import ImportedWeights
from jaxnas.weights.errors import WeightsError

MARKER = "imported_weights"   # summary.json key that marks a work dir written by this module
# The input normalisation torchvision's and timm's ImageNet weights (these models) were trained with.
IMAGENET_NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


def workdir_config(imported: ImportedWeights, overrides: Sequence[str] = ()):
    """The work dir's config: the imported net's model section; ImageNet (tfds) with the ImageNet
    mean/std normalisation the weights expect as its data.

    `overrides` (``data.source=embedded`` ...) are applied and validated as `--set` does for train.
    """
    from jaxnas.config import ExperimentConfig, apply_overrides, config_from_dict

    spec = imported.spec
    d = {"name": f"import-{imported.source.name}",
         "data": {"source": "tfds", "name": "imagenet2012", "image_size": spec.input_size[0],
                  "normalize": IMAGENET_NORMALIZE},
         "model": {"name": imported.source.zoo, "width": imported.width, "small_input": False,
                   "num_classes": spec.head.num_classes, "dropout": spec.head.dropout}}
    return config_from_dict(apply_overrides(d, list(overrides), ExperimentConfig), ExperimentConfig)


def _is_import_dir(path: Path) -> bool:
    try:
        return bool(json.loads((path / "summary.json").read_text()).get(MARKER))
    except (OSError, ValueError):
        return False


def check_out(out: str | Path) -> None:
    """Refuse an --out that is a file or a directory holding anything but an earlier import."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"--out {out} is a file; give a directory for the work dir")
    if out.is_dir() and any(out.iterdir()) and not _is_import_dir(out):
        raise WeightsError(f"--out {out} already holds files that are not an earlier import; "
                           "give a new or empty directory")


def write_workdir(imported: ImportedWeights, out: str | Path, *, source: dict[str, Any],
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Write the work dir `out` and return its summary (`source`: path, sha256, reader, notes)."""
    from jaxnas import spec as S
    from jaxnas.config import save_resolved_config
    from jaxnas.io_utils import atomic_write_json
    from jaxnas.train import save_final
    from jaxnas.workdir import ARCH, SUMMARY

    out = Path(out).absolute()
    check_out(out)
    cfg = workdir_config(imported, overrides)
    spec = imported.spec
    cost = S.analyze(spec)
    summary = {
        MARKER: True, "name": cfg.name, "model": imported.source.name, "layout": imported.source.layout,
        "zoo_model": spec.name, "width": imported.width, "num_classes": spec.head.num_classes,
        "source_num_classes": imported.source_num_classes, "classifier": imported.classifier,
        "bn_eps": spec.metadata["bn_eps"], "tensors": imported.tensors, "resolution": list(spec.input_size),
        "params": cost.params, "macs": cost.macs, "arch_path": str(out / ARCH),
        "source": source["path"], "source_sha256": source["sha256"], "source_reader": source["reader"],
        "source_notes": list(source.get("notes", ())), "source_dtypes": list(source.get("dtypes", ())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        spec.save(tmp / ARCH)
        save_resolved_config(cfg, tmp)
        save_final(tmp, imported.variables)
        atomic_write_json(tmp / SUMMARY, summary)
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
