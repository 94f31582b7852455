"""`jaxnas metapruning ...` sub-commands (registered through the method contract's `add_commands`).

    jaxnas metapruning decode {mobilenet_v1,mobilenet_v2,resnet50} --genes 14,12,11,... \
        [--resolution R] [--num-classes N] [--small-input] --out arch.json [--json]

`--genes` takes the vector as the original's search prints it (MobileNetV2: 18 per-layer output ids, equal
within a stage, then 17 mid ids; brackets, commas, spaces and trailing dots are fine) or the compact form
(MobileNetV2: 8 stage ids + 17 mid ids), told apart by length.  Handlers return (result dict, one line).
"""
from __future__ import annotations

import argparse
from typing import Any

from jaxnas import spec as S
from jaxnas.methods.metapruning.flops import flops_original
from jaxnas.methods.metapruning.space import FAMILIES, RESIDUAL_RULES, GeneError, get_space


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`jaxnas metapruning decode` (the CLI makes `jaxnas metapruning` and hands its sub-parsers here)."""
    d = sub.add_parser("decode", help="decode a gene vector into an arch spec",
                       description="Decode a MetaPruning gene vector (search convention) into an arch spec JSON.")
    d.add_argument("family", choices=FAMILIES)
    d.add_argument("--genes", required=True,
                   help="scale ids, e.g. 14,12,11,... (MobileNetV2: 35 as the original prints them, or 25)")
    d.add_argument("--resolution", type=int, default=224)
    d.add_argument("--num-classes", type=int, default=1000)
    d.add_argument("--in-channels", type=int, default=3)
    d.add_argument("--small-input", action="store_true", help="stride-1 stem for 28-32 px inputs (MobileNets)")
    d.add_argument("--width-mult", type=float, default=1.0, help="scale the space's base widths (1.0: original)")
    d.add_argument("--channel-multiple", type=int, default=1,
                   help="round every width to a multiple of this (1: the original)")
    d.add_argument("--residual-rule", choices=RESIDUAL_RULES, default="base",
                   help="base: the PruningNet's shortcuts (default); pruned: the original's final nets'")
    d.add_argument("--out", required=True, help="where to write the arch spec JSON")
    d.set_defaults(handler=decode_command)


def decode(family: str, genes: Any, *, resolution: int = 224, num_classes: int = 1000, in_channels: int = 3,
           small_input: bool = False, width_mult: float = 1.0, channel_multiple: int = 1,
           residual_rule: str = "base") -> tuple[S.ArchSpec, dict]:
    """(spec, facts) of a gene vector; raises `GeneError` / `SpecError` on bad input."""
    for name, v in (("--resolution", resolution), ("--num-classes", num_classes), ("--in-channels", in_channels)):
        if v < 1:
            raise GeneError(f"{name} must be >= 1, got {v}")
    space = get_space(family, resolution=resolution, num_classes=num_classes, in_channels=in_channels,
                      small_input=small_input, width_mult=width_mult, channel_multiple=channel_multiple)
    ids = space.parse_genes(genes)
    spec = space.to_spec(ids, residual_rule=residual_rule)
    cost = S.analyze(spec)
    return spec, {"family": family, "genes": list(ids), "genes_original": list(space.to_printed(ids)),
                  "macs": cost.macs, "flops_original": flops_original(spec), "params": cost.params,
                  "channels": space.channels(ids), "resolution": resolution, "num_classes": num_classes}


def decode_command(args: argparse.Namespace) -> tuple[dict, str]:
    spec, facts = decode(args.family, args.genes, resolution=args.resolution, num_classes=args.num_classes,
                         in_channels=args.in_channels, small_input=args.small_input, width_mult=args.width_mult,
                         channel_multiple=args.channel_multiple, residual_rule=args.residual_rule)
    spec.save(args.out)
    facts["arch_path"] = str(args.out)
    text = (f"{spec.name}: {facts['macs'] / 1e6:.2f} M MACs, {facts['flops_original'] / 1e6:.2f} M FLOPs (original "
            f"counter), {facts['params'] / 1e6:.3f} M params -> {args.out}")
    return facts, text


__all__ = ["add_commands", "decode", "decode_command"]
