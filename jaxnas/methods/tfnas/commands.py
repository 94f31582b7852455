"""`jaxnas tfnas import-config | export-config`: the original's model.config <-> arch.json (pure Python;
registered through the method contract's `add_commands`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jaxnas.schema import argument_type

__all__ = ["add_commands", "import_config", "export_config"]


def import_config(config_path: str | Path, out: str | Path, *, resolution: int = 224, num_classes: int | None = None,
                  dropout: float = 0.0, drop_connect: float = 0.0) -> dict[str, Any]:
    """Read an original model.config and write the arch spec JSON; returns a summary."""
    from jaxnas import spec as S
    from jaxnas.latency.spaces import TfnasError  # here, not at import: the parser is built on every command
    from jaxnas.methods.tfnas.config_io import from_model_config

    path = Path(config_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TfnasError(f"model.config {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TfnasError(f"cannot read {path} as JSON: {e}") from None
    spec = from_model_config(config, resolution=resolution, num_classes=num_classes, dropout=dropout,
                             drop_connect=drop_connect, name=path.stem)
    spec.save(out)
    cost = S.analyze(spec)
    return {"out": str(out), "name": spec.name, "blocks": len(spec.blocks), "macs": cost.macs, "params": cost.params,
            "depths": [s.end - s.start for s in spec.stages]}


def export_config(spec_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the original's model.config of a TF-NAS arch spec JSON; returns a summary."""
    from jaxnas.io_utils import atomic_write_text
    from jaxnas.methods.tfnas.config_io import to_model_config
    from jaxnas.spec import ArchSpec

    spec = ArchSpec.load(spec_path)
    config = to_model_config(spec)
    atomic_write_text(out, json.dumps(config, indent=4))  # the original writes json.dump(config, f, indent=4)
    return {"out": str(out), "name": spec.name, "stages": {s.name: len(config[s.name]) for s in spec.stages}}


_POSITIVE_INT, _RATE = "expected a positive integer, got {text!r}", "expected a number in [0, 1), got {text!r}"
_positive_int = argument_type(int, (lambda v: v >= 1, _POSITIVE_INT), unparsed=_POSITIVE_INT)
_rate = argument_type(float, (lambda v: 0.0 <= v < 1.0, _RATE), unparsed=_RATE)


def _cmd_import(args: argparse.Namespace) -> tuple[dict, str]:
    out = import_config(args.config, args.out, resolution=args.resolution, num_classes=args.num_classes,
                        dropout=args.dropout, drop_connect=args.drop_connect)
    return out, (f"{out['out']}: {out['name']}, depths {out['depths']}, {out['macs'] / 1e6:.1f} M MACs, "
                 f"{out['params'] / 1e6:.3f} M params")


def _cmd_export(args: argparse.Namespace) -> tuple[dict, str]:
    out = export_config(args.spec, args.out)
    return out, f"{out['out']}: model.config of {out['name']} (blocks per stage {list(out['stages'].values())})"


def add_commands(sub: Any) -> None:
    """`jaxnas tfnas import-config | export-config`."""
    q = sub.add_parser("import-config", help="the original's model.config (parsing_model.py) -> arch.json")
    q.add_argument("config", metavar="MODEL_CONFIG")
    q.add_argument("--out", required=True, help="arch spec JSON to write")
    q.add_argument("--resolution", type=_positive_int, default=224, help="input size (default 224)")
    q.add_argument("--num-classes", type=_positive_int, help="override the classifier's out_features")
    q.add_argument("--dropout", type=_rate, default=0.0, help="dropout before the classifier (original: 0.2)")
    q.add_argument("--drop-connect", type=_rate, default=0.0,
                   help="drop-connect rate, scaled per block by block_idx / block_count (original: 0.2)")
    q.set_defaults(handler=_cmd_import)
    q = sub.add_parser("export-config", help="arch.json of a TF-NAS network -> the original's model.config")
    q.add_argument("spec", metavar="ARCH_JSON")
    q.add_argument("--out", required=True, help="model.config to write")
    q.set_defaults(handler=_cmd_export)
