"""Write imported weights as a normal jaxnas work dir: arch.json, config.yaml, final/, summary.json.

`jaxnas eval`, `jaxnas export`, `jaxnas latency measure` and a method's `search.args.baseline` read it
like a trained one (`jaxnas.workdir.load_workdir`).  The work dir is assembled in a hidden sibling
directory and renamed into place, so an interrupted import leaves no half-written work dir. The
work dir is locked while it is written (one command per work dir); an earlier import in the same place is
replaced only when it came from the same file with the same config (or with `replace`), anything else
there is refused.
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
    d = apply_overrides(d, list(overrides), ExperimentConfig)
    if d["data"].get("source") != "tfds" and not any(o.split("=")[0].strip() == "data.name" for o in overrides):
        d["data"].pop("name")  # ImageNet's tfds name; another source takes none (it would be refused)
    return config_from_dict(d, ExperimentConfig)


def _is_import_dir(path: Path) -> bool:
    try:
        return bool(json.loads((path / "summary.json").read_text()).get(MARKER))
    except (OSError, ValueError):
        return False


def check_out(out: str | Path) -> None:
    """Refuse an --out that is a file, lies under a file or in a directory it cannot write, or is a
    directory holding anything but an earlier import."""
    from jaxnas.workdir import LOCK

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"--out {out} is a file; give a directory for the work dir")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not _is_import_dir(out):
        raise WeightsError(f"--out {out} already holds files that are not an earlier import; "
                           "give a new or empty directory")
    parent = next(p for p in out.absolute().parents if p.exists())  # the work dir is assembled beside it
    if not parent.is_dir():
        raise WeightsError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WeightsError(f"--out {out}: cannot write in {parent}; choose a writable --out")


def check_replace(out: Path, cfg: Any, summary: dict[str, Any]) -> None:
    """Refuse to replace an earlier import at `out` made from another file or with another config (keys that
    change what the weights mean, as for a rerun of `jaxnas train`); the same import again passes."""
    from jaxnas.config import config_to_dict, load_config
    from jaxnas.workdir import CONFIG, config_changes, read_summary

    old = read_summary(out)
    if not old:
        return
    changes = []
    if old.get("source_sha256") != summary["source_sha256"]:
        changes.append(f"source: {old.get('source')} (sha256 {str(old.get('source_sha256'))[:12]}) -> "
                       f"{summary['source']} (sha256 {summary['source_sha256'][:12]})")
    try:
        changes += config_changes(config_to_dict(load_config(out / CONFIG)), config_to_dict(cfg), search=False)
    except (OSError, ValueError) as e:  # a damaged config.yaml: what it held cannot be compared
        changes.append(f"{CONFIG}: unreadable ({str(e).splitlines()[0]})")
    if changes:
        raise WeightsError(f"--out {out} holds another import ({'; '.join(changes)}); use a new --out, or pass "
                           "--replace to replace it")


def write_workdir(imported: ImportedWeights, out: str | Path, *, source: dict[str, Any],
                  overrides: Sequence[str] = (), replace: bool = False) -> dict[str, Any]:
    """Write the work dir `out` and return its summary (`source`: path, sha256, reader, notes); `replace`:
    replace an earlier import there even when it came from another file or config."""
    from jaxnas import spec as S
    from jaxnas.config import save_resolved_config
    from jaxnas.io_utils import atomic_write_json
    from jaxnas.train import save_final
    from jaxnas.workdir import ARCH, LOCK, SUMMARY, WorkdirLock

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
    created = not out.exists()
    lock = WorkdirLock(out, flag="--out").acquire()  # creates `out` (and its parents) with the lock file
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    try:
        if not replace:
            check_replace(out, cfg, summary)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        spec.save(tmp / ARCH)
        save_resolved_config(cfg, tmp)
        save_final(tmp, imported.variables)
        atomic_write_json(tmp / SUMMARY, summary)
        (tmp / LOCK).touch()  # as every work dir has it: a later command's lock changes no file
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.replace(out, old)  # the locked directory (held until the new one is in place)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        if created and out.is_dir() and all(p.name == LOCK for p in out.iterdir()):
            (out / LOCK).unlink(missing_ok=True)  # a failed first import leaves nothing
            out.rmdir()
        if isinstance(e, OSError):
            raise WeightsError(f"--out {out}: cannot write the work dir ({e.strerror or e}: {e.filename}); "
                               "choose a writable --out with free space") from None
        raise
    finally:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
