"""State dict (numpy) <-> jaxnas (spec, variables), all or nothing.

`import_state_dict` checks every key and shape against the zoo model before it converts anything: a
missing, unexpected, mis-shaped or non-finite tensor is refused with one line naming the first few
offending keys (never a partial load).  `to_state_dict` is the inverse (used by the tests, and to hand a
jaxnas net back to PyTorch).
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Mapping

import numpy as np

from jaxnas import zoo
from jaxnas.spec import ArchSpec
from jaxnas.weights.errors import WeightsError
from jaxnas.weights.layouts import (
    BN_EPS, CLASSIFIER_KEYS, SourceModel, TensorMap, detect_model, family, resolve_model, tensor_map, to_jax,
    to_torch, torch_shape)

SHOW_KEYS = 3   # offending keys named per kind of problem in the one-line refusal


@dataclasses.dataclass(frozen=True)
class ImportedWeights:
    """A converted state dict: the zoo spec and its {'params', 'batch_stats'} (numpy float32)."""

    spec: ArchSpec
    variables: dict[str, Any]
    source: SourceModel
    width: float
    source_num_classes: int
    classifier: str             # 'imported' | 'new' (--num-classes differs: a fresh N(0, 0.01) classifier)
    tensors: int                # state dict tensors used


def zoo_spec(src: SourceModel, width: float, num_classes: int, resolution: int) -> ArchSpec:
    """The zoo spec of `src` with PyTorch's BatchNorm epsilon recorded (`meta['bn_eps']`)."""
    if resolution < 1:
        raise WeightsError(f"--resolution must be >= 1, got {resolution}")
    spec = zoo.get_spec(src.zoo, resolution=resolution, num_classes=num_classes,
                        width=width if src.zoo == "mobilenet_v2" else None)
    return spec.replace(meta={**spec.metadata, "bn_eps": BN_EPS, "weights_layout": src.layout,
                              "weights_model": src.name})


def _variable_shapes(spec: ArchSpec) -> dict[tuple[str, ...], tuple[int, ...]]:
    import jax

    from jaxnas import models
    model = models.build_model(spec)
    x = jax.ShapeDtypeStruct((1, *spec.input_size, spec.in_channels), np.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    leaves = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
    return {tuple(getattr(k, "key", str(k)) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _checked_map(spec: ArchSpec, src: SourceModel) -> tuple[list[TensorMap], dict[tuple[str, ...], tuple]]:
    entries = tensor_map(spec, src)
    shapes = _variable_shapes(spec)
    mapped = [e.path for e in entries if e.path is not None]
    if sorted(mapped) != sorted(shapes):   # the map and the model disagree: a bug here, not a user error
        extra, lacking = set(mapped) - set(shapes), set(shapes) - set(mapped)
        raise RuntimeError(f"weight map of {src.name} out of sync with the zoo spec: maps {sorted(extra)[:3]} "
                           f"that the model lacks, misses {sorted(lacking)[:3]}")
    return entries, shapes


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOW_KEYS])
    return shown + (f", ... (+{len(items) - SHOW_KEYS} more)" if len(items) > SHOW_KEYS else "")


def _shape(s) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def check_state_dict(state: Mapping[str, np.ndarray], entries: list[TensorMap],
                     shapes: Mapping[tuple[str, ...], tuple]) -> list[str]:
    """The problems that stop an import: missing, unexpected, mis-shaped and non-finite tensors."""
    known = {e.key for e in entries}
    missing = [e.key for e in entries if not e.optional and e.key not in state]
    unexpected = [k for k in state if k not in known]
    misshaped, nonfinite = [], []
    for e in entries:
        if e.path is None or e.key not in state:
            continue
        a = state[e.key]
        want = torch_shape(shapes[e.path], e.kind)
        if tuple(a.shape) != want:
            misshaped.append(f"{e.key} {_shape(a.shape)} != {_shape(want)}")
        elif a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
            misshaped.append(f"{e.key} has dtype {a.dtype}")
        elif not np.isfinite(np.asarray(a, np.float32)).all():
            nonfinite.append(e.key)
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                         ("non-finite", nonfinite)):
        if items:
            problems.append(f"{len(items)} {label} ({_listing(items)})")
    return problems


def _source_classes(state: Mapping[str, np.ndarray], src: SourceModel) -> int:
    w = state.get(CLASSIFIER_KEYS[family(src), src.layout])
    return int(w.shape[0]) if w is not None and w.ndim == 2 and w.shape[0] > 0 else 1000


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def import_state_dict(state: Mapping[str, np.ndarray], model: str, *, width: float | None = None,
                      num_classes: int | None = None, resolution: int = 224,
                      source_name: str = "state dict") -> ImportedWeights:
    """Convert a torchvision / timm state dict of `model` into a zoo spec and its variables.

    The class count is the state dict's (its classifier's rows); `num_classes` that differs replaces
    the classifier by a fresh one (N(0, 0.01) weights, zero bias: fine-tuning on another label set).
    Raises `WeightsError` (one line) when the state dict does not fit the model.
    """
    src, w = resolve_model(model, width)
    if num_classes is not None and num_classes < 1:
        raise WeightsError(f"--num-classes must be >= 1, got {num_classes}")
    classes = _source_classes(state, src)
    spec = zoo_spec(src, w, classes, resolution)
    entries, shapes = _checked_map(spec, src)
    problems = check_state_dict(state, entries, shapes)
    if problems:
        seen = detect_model(state)
        wanted = src.name + (f" --width {w:g}" if src.width is None and w != 1.0 else "")
        hint = (f"; it looks like {seen}: use --model {seen}" if seen and seen != wanted else
                "; check --model / --width")
        raise WeightsError(f"{source_name} does not fit {src.layout} {src.name} (width {w:g}): "
                           + "; ".join(problems) + hint + "; nothing was written")
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for e in entries:
        if e.path is not None:
            _set(variables, e.path, to_jax(state[e.key], e.kind))
    classifier = "imported"
    if num_classes is not None and num_classes != classes:
        spec = spec.with_input(num_classes=num_classes)
        head = variables["params"]["head"]["classifier"]
        rng = np.random.default_rng(0)
        head["kernel"] = rng.normal(0.0, 0.01, (head["kernel"].shape[0], num_classes)).astype(np.float32)
        head["bias"] = np.zeros(num_classes, np.float32)
        classifier = "new"
    return ImportedWeights(spec, variables, src, w, classes, classifier,
                           sum(1 for e in entries if e.key in state))


def to_state_dict(spec: ArchSpec, variables: Mapping[str, Any], model: str,
                  width: float | None = None) -> dict[str, np.ndarray]:
    """The `model` (torchvision / timm name) state dict of a zoo net's variables (inverse of the import)."""
    src, _ = resolve_model(model, width)
    return {e.key: np.zeros((), np.int64) if e.path is None  # num_batches_tracked
            else to_torch(np.asarray(functools.reduce(operator.getitem, e.path, variables)), e.kind)
            for e in tensor_map(spec, src)}
