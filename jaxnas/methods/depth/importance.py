"""Importance table of depth compression: short finetunes of the net with one segment merged.

For each extended segment (st, end, st_act, end_act) of `dp.extended_segments`, starting from the
trained net with its default activations: the default activations strictly inside (st, end) are removed,
the activations at st / end are set per the flags, the padding is re-arranged for that activation set
(`padding='rearrange'`, the original) or left 'same' (`padding='same'`: one compiled step serves every
segment, a documented approximation for quick CPU runs), and for end = st + 1 that conv + BN are
re-initialised.  The net is finetuned for a few steps on the train split (SGD nesterov, cosine decay
within the run) and evaluated on the held-out split (never test).  A row holds the deltas against the
unmodified net: train_loss, train_acc, val_loss, val_acc (accuracies in percentage points).

Activations are traced gates (`choices['acts']`, one per position, applied after the residual add at
block ends), so every extended segment with the same padding layout shares one compiled step.  Results
go to one JSON file per segment in a directory; a restart skips the segments already done.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas import ops
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.depth.dp import extended_importance, extended_segments, normalize_importance
from jaxnas.methods.depth.mergeable import (META_ACT, Body, _is_body_block, body_of, fix_act, freeze_tx,
                                            mergeable_spec, reinit_conv, transfer_variables)
from jaxnas.methods.depth.segments import valid_segments
from jaxnas.methods.depth.tables import (IMP_SCORE_COLUMNS, ExtImportanceTable, ImportanceTable, TableError,
                                         write_importance_table)
from jaxnas.models import BlockModule, ConvLayer, HeadModule
from jaxnas.spec import ArchSpec, Block

ExtSegment = tuple[int, int, int, int]
SETTINGS_FILE = "settings.json"
BASE_FILE = "base.json"
TABLE_FILE = "importance.csv"


# ------------------------------------------------------------------------------------------ model

class _GatedBlock(nn.Module):
    block: Block
    act: str
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    def _gate(self, y: jax.Array, slot: str | None, default: bool, acts: Mapping[str, Any]) -> jax.Array:
        g = acts.get(slot) if slot else None
        if g is None:
            return ops.activation(self.act, y) if default else y
        return g * ops.activation(self.act, y) + (1 - g) * y

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, acts: Mapping[str, Any]) -> jax.Array:
        b = self.block
        residual = b.shortcut is not None
        n = len(b.layers)
        y = x
        for j, c in enumerate(b.layers):
            plain = dataclasses.replace(c, act="identity", act_slot=None)
            y = ConvLayer(plain, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=f"conv{j}")(y, train)
            if j < n - 1 or not residual:
                y = self._gate(y, c.act_slot, c.act != "identity", acts)
        if not residual:
            return y
        if b.shortcut == "identity":
            skip = ops.center_crop(x, y.shape[1:3]) if x.shape[1:3] != y.shape[1:3] else x
        else:
            skip = ConvLayer(b.shortcut, self.depthwise_impl, self.bn_momentum, self.bn_eps, name="shortcut")(
                x, train)
        return self._gate(y + skip, b.layers[-1].act_slot, b.post_act != "identity", acts)


class GatedNet(nn.Module):
    """`Net` for mergeable / `fix_act` specs with a gate on every body position.

    ``choices['acts'][f"a{p}"] = g`` gives ``g * act(z) + (1 - g) * z`` at position p (after the add at a
    residual block end, unlike `Net`'s per-conv slots).  Missing gates fall back to the spec's own
    activations, so without choices it computes what `Net(spec)` computes.  Parameter names are Net's.
    """

    spec: ArchSpec
    depthwise_impl: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, choices: Any = None) -> jax.Array:
        acts = (choices or {}).get("acts", {})
        act = str(self.spec.metadata.get(META_ACT, "relu6"))
        for i, b in enumerate(self.spec.blocks):
            if _is_body_block(b):
                x = _GatedBlock(b, act, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=f"block{i}")(
                    x, train, acts)
            else:
                x = BlockModule(b, self.depthwise_impl, self.bn_momentum, self.bn_eps, name=f"block{i}")(x, train)
        return HeadModule(self.spec.head, name="head")(x, train)


# ---------------------------------------------------------------------------------------- helpers

@dataclass(frozen=True)
class ImportanceConfig:
    """Settings of the importance measurement (see the module docstring)."""

    steps: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-5
    batch_size: int = 64
    eval_batch_size: int = 500
    eval_examples: int | None = None   # None: the whole held-out split
    padding: str = "rearrange"          # 'rearrange' (the original) | 'same' (one compile, approximate)
    bn_momentum: float = 0.9
    label_smoothing: float = 0.0
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "holdout"
    exclude_zeros: bool = True
    zero_acts: bool = True

    def __post_init__(self):
        if self.padding not in ("rearrange", "same"):
            raise ValueError(f"importance padding must be 'rearrange' or 'same', got {self.padding!r}")
        if self.steps < 0:
            raise ValueError(f"importance steps must be >= 0, got {self.steps}")
        if self.eval_split == "test":
            raise ValueError("importance must not be measured on the test split; use 'holdout'")


def ext_segments_of(body: Body, exclude_zeros: bool = True, zero_acts: bool = True) -> list[ExtSegment]:
    """The extended segments of a body, in the original's order."""
    return extended_segments(valid_segments(body.chain), body.chain.block_ends, exclude_zeros=exclude_zeros,
                             zero_acts=zero_acts)


def segment_acts(body: Body, seg: ExtSegment) -> set[int]:
    """Activation set of an extended segment: the default acts minus (st, end)'s interior, st / end per
    the flags (position 0, the stem output, always keeps its activation)."""
    st, end, sa, ea = seg
    acts = {p for p in body.chain.default_acts if not st < p < end}
    for p, a in ((st, sa), (end, ea)):
        if p == 0:
            continue
        (acts.add if a else acts.discard)(p)
    return acts


def segment_spec(base: ArchSpec, body: Body, seg: ExtSegment, padding: str = "rearrange") -> ArchSpec:
    """The spec whose layout an extended segment is measured with (activations come from gates)."""
    if padding == "same":
        return base
    st, end = seg[0], seg[1]
    S = [p for p in range(1, body.L + 1) if not st < p < end]
    layout = fix_act(base, S, S)
    # Gates set every activation, so acts and meta are irrelevant: drop them so that layouts whose
    # paddings / skips equal the base's share its compiled steps.
    blocks = list(layout.blocks)
    for i in body.body_blocks:
        b, bb = layout.blocks[i], base.blocks[i]
        layers = tuple(dataclasses.replace(c, act=bc.act) for c, bc in zip(b.layers, bb.layers))
        blocks[i] = dataclasses.replace(b, layers=layers, post_act=bb.post_act)
    return base.replace(blocks=tuple(blocks))


def gates(body: Body, acts: Iterable[int]) -> dict[str, dict[str, jax.Array]]:
    a = set(acts)
    return {"acts": {f"a{p}": jnp.float32(1.0 if p in a else 0.0) for p in range(1, body.L + 1)}}


def _key(seg: ExtSegment) -> str:
    return "seg_{}_{}_{}_{}.json".format(*seg)


def _take_batches(dataset, split: str, batch_size: int, n: int, seed: int, limit: int | None = None,
                  drop_remainder: bool = True) -> list[dict[str, np.ndarray]]:
    out, count = [], 0
    for batch in dataset.batches(split, batch_size, seed=seed, epoch=0, drop_remainder=drop_remainder):
        img, lab = np.asarray(batch["image"]), np.asarray(batch["label"])
        if limit is not None and count + len(lab) > limit:
            img, lab = img[:limit - count], lab[:limit - count]
        if len(lab) == 0:
            break
        count += len(lab)
        out.append({"image": img, "label": lab})
        if len(out) >= n or (limit is not None and count >= limit):
            break
    return out


def _pad(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    img, lab = batch["image"], batch["label"]
    n = len(lab)
    mask = np.arange(size) < n
    if n < size:
        img = np.concatenate([img, np.zeros((size - n, *img.shape[1:]), img.dtype)])
        lab = np.concatenate([lab, np.zeros((size - n,), lab.dtype)])
    return {"image": img, "label": lab, "mask": mask}


class _Compiled:
    """Jitted train / eval steps of one layout (model), reused by every segment with that layout."""

    def __init__(self, spec: ArchSpec, cfg: ImportanceConfig):
        from jaxnas.train import make_eval_step, make_train_step

        self.spec = spec
        self.model = GatedNet(spec, bn_momentum=cfg.bn_momentum)
        steps = max(cfg.steps, 1)
        sched = optax.cosine_decay_schedule(cfg.lr, steps)
        parts = []
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(
                cfg.weight_decay, mask=lambda p: jax.tree_util.tree_map_with_path(
                    lambda path, leaf: getattr(path[-1], "key", None) == "kernel" and leaf.ndim > 1, p)))
        parts.append(optax.sgd(sched, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
        self.tx = freeze_tx(spec, optax.chain(*parts))
        self.train_step = make_train_step(self.model, self.tx, label_smoothing=cfg.label_smoothing)
        self.eval_step = make_eval_step(self.model)

    def evaluate(self, variables: Mapping[str, Any], batches: Sequence[Mapping[str, np.ndarray]],
                 choices: Any) -> dict[str, float]:
        sums = None
        for b in batches:
            out = self.eval_step(variables, b, choices)
            sums = out if sums is None else jax.tree.map(lambda a, c: a + c, sums, out)
        sums = jax.device_get(sums)
        n = int(sums["count"])
        return {"loss": float(sums["loss_sum"]) / n, "acc": 100.0 * float(sums["correct"]) / n, "count": n}


# ------------------------------------------------------------------------------------ measurement

def measure_importance(spec: ArchSpec, variables: Mapping[str, Any], dataset: Any, out_dir: str | Path,
                       cfg: ImportanceConfig = ImportanceConfig(), *,
                       segments: Sequence[ExtSegment] | None = None,
                       log: Callable[[str], None] | None = print,
                       finetune_fn: Callable[..., Any] | None = None) -> ImportanceTable:
    """Measure (or resume) the importance table of `spec` (a zoo or mergeable spec) in `out_dir`.

    Returns the raw table (deltas vs the unmodified net) and writes it to ``out_dir/importance.csv``.
    One ``seg_{st}_{end}_{st_act}_{end_act}.json`` per segment; existing ones are skipped.  The
    directory remembers its settings and refuses to mix results measured differently.
    `finetune_fn(compiled, variables, choices, batches, seed) -> variables` replaces the finetune loop
    (tests).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = spec if META_ACT in spec.metadata else mergeable_spec(spec)
    body = body_of(base)
    ext = list(segments) if segments is not None else ext_segments_of(body, cfg.exclude_zeros, cfg.zero_acts)
    settings = {**dataclasses.asdict(cfg), "spec": base.name, "input_size": list(base.input_size),
                "segments": len(ext)}
    sfile = out_dir / SETTINGS_FILE
    if sfile.exists():
        old = json.loads(sfile.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(f"{out_dir} holds importance results measured with other settings "
                             f"({', '.join(f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in diff)}); "
                             "use another directory or delete it")
    else:
        atomic_write_json(sfile, settings)
    todo = [s for s in ext if not (out_dir / _key(s)).exists()]
    say = log or (lambda _m: None)

    base_vars = transfer_variables(variables, base)
    if todo or not (out_dir / BASE_FILE).exists():
        train_batches = _take_batches(dataset, cfg.train_split, cfg.batch_size, max(cfg.steps, 1), cfg.seed)
        if len(train_batches) < max(cfg.steps, 1):
            # Fewer train batches than steps: cycle through them.
            train_batches = [train_batches[i % len(train_batches)] for i in range(max(cfg.steps, 1))]
        eval_batches = [_pad(b, cfg.eval_batch_size) for b in _take_batches(
            dataset, cfg.eval_split, cfg.eval_batch_size, 10 ** 9, cfg.seed, cfg.eval_examples, False)]
        if not eval_batches:
            raise ValueError(f"the '{cfg.eval_split}' split is empty: importance needs held-out data "
                             "(set data.holdout > 0)")
        train_eval = [_pad(b, cfg.batch_size) for b in train_batches[:max(cfg.steps, 1)]]
    compiled: dict[ArchSpec, _Compiled] = {}
    layout_vars: dict[ArchSpec, dict] = {}

    def get(layout: ArchSpec) -> _Compiled:
        if layout not in compiled:
            if compiled:  # layouts come grouped: keep one at a time
                old = next(iter(compiled))
                compiled.pop(old), layout_vars.pop(old, None)
            compiled[layout] = _Compiled(layout, cfg)
            layout_vars[layout] = transfer_variables(variables, layout)
        return compiled[layout]

    bfile = out_dir / BASE_FILE
    if bfile.exists():
        base_m = json.loads(bfile.read_text())
    else:
        c = get(base)
        ch = gates(body, body.chain.default_acts)
        tr, va = c.evaluate(base_vars, train_eval, ch), c.evaluate(base_vars, eval_batches, ch)
        base_m = {"train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                  "val_count": va["count"]}
        atomic_write_json(bfile, base_m)
    if todo:
        say(f"importance: {len(todo)} of {len(ext)} segments to measure ({cfg.steps} steps each, "
            f"padding '{cfg.padding}'); base val_acc {base_m['val_acc']:.2f}")
    # Segments sharing a padding layout run back to back: one compile per layout.
    groups: dict[ArchSpec, list[ExtSegment]] = {}
    for seg in todo:
        groups.setdefault(segment_spec(base, body, seg, cfg.padding), []).append(seg)
    order = [(layout, seg) for layout, segs in groups.items() for seg in segs]
    t_start = time.perf_counter()
    for n, (layout, seg) in enumerate(order):
        t0 = time.perf_counter()
        st, end = seg[0], seg[1]
        c = get(layout)
        v = layout_vars[layout]
        if end - st == 1:
            v = reinit_conv(v, layout, end, seed=cfg.seed)
        ch = gates(body, segment_acts(body, seg))
        if finetune_fn is not None:
            v = finetune_fn(c, v, ch, train_batches, cfg.seed)
        elif cfg.steps:
            v = _finetune(c, v, ch, train_batches[:cfg.steps], cfg.seed)
        tr, va = c.evaluate(v, train_eval, ch), c.evaluate(v, eval_batches, ch)
        row = {"st": st, "end": end, "st_act": seg[2], "end_act": seg[3],
               "train_loss": tr["loss"] - base_m["train_loss"], "train_acc": tr["acc"] - base_m["train_acc"],
               "val_loss": va["loss"] - base_m["val_loss"], "val_acc": va["acc"] - base_m["val_acc"],
               "raw": {"train": tr, "val": va}, "seconds": time.perf_counter() - t0}
        atomic_write_json(out_dir / _key(seg), row)
        if (n + 1) % 10 == 0 or n + 1 == len(todo):
            el = time.perf_counter() - t_start
            say(f"importance: {n + 1}/{len(todo)} segments, {el:.0f}s elapsed, "
                f"~{el / (n + 1) * (len(todo) - n - 1):.0f}s left; last {seg}: val_acc {row['val_acc']:+.2f}")
    table = collect_importance(out_dir, ext)
    write_importance_table(table, out_dir / TABLE_FILE)
    return table


def _finetune(c: _Compiled, variables: Mapping[str, Any], choices: Any, batches: Sequence[Mapping[str, np.ndarray]],
              seed: int) -> dict[str, Any]:
    from jaxnas.train import TrainState

    state = TrainState.create({"params": variables["params"], "batch_stats": variables["batch_stats"]}, c.tx,
                              seed=seed)
    for b in batches:
        state, _ = c.train_step(state, b, choices)
    return jax.device_get(state.variables())


def collect_importance(out_dir: str | Path, ext: Sequence[ExtSegment]) -> ImportanceTable:
    """The importance table from the per-segment files (raises if some are missing)."""
    out_dir = Path(out_dir)
    scores = {}
    missing = [s for s in ext if not (out_dir / _key(s)).exists()]
    if missing:
        raise TableError(f"{out_dir}: {len(missing)} of {len(ext)} segments have no importance result "
                         f"(first: {missing[0]})")
    for s in ext:
        row = json.loads((out_dir / _key(s)).read_text())
        scores[tuple(s)] = {k: float(row[k]) for k in IMP_SCORE_COLUMNS}
    return ImportanceTable(scores, IMP_SCORE_COLUMNS, tuple(range(len(scores))))


def optimal_importance(table: ImportanceTable, body: Body, *, alpha: float = 1.6, norm: str = "single",
                       score: str = "val_acc", exclude_zeros: bool = True,
                       zero_acts: bool = True) -> ExtImportanceTable:
    """I_opt: `normalize_importance` by alpha, then `extended_importance` over the body's ext segments."""
    normed = normalize_importance(table, alpha, norm, score, body.chain.default_acts, body.L)
    return extended_importance(normed, ext_segments_of(body, exclude_zeros, zero_acts), score)
