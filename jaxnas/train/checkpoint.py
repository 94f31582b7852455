"""Orbax checkpoints under `workdir/checkpoints/<step>/` and final weights under `workdir/final/`.

Each save is written to `<step>.orbax-checkpoint-tmp-*` and renamed into place, so a
save interrupted mid-way leaves only a tmp directory that orbax ignores; the
previous checkpoint stays the latest one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxnas.errors import UserError
from jaxnas.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
_STATE_FIELDS = ("params", "batch_stats", "opt_state", "step", "rng")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read back into the current run."""


def checkpoint_error(path: Path | str, err: BaseException | str) -> CheckpointError:
    if isinstance(err, BaseException):
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
    else:
        detail = err
    return CheckpointError(
        f"checkpoint at {path} is corrupt or incompatible ({detail}); delete it or use a fresh --workdir")


def _state_tree(state: TrainState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in _STATE_FIELDS}


def _quiet_orbax() -> None:
    # Orbax logs every save/restore/rename at INFO through absl; keep the console for training logs.
    logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.WARNING))


class CheckpointStore:
    """A `CheckpointManager` over `directory` keeping the newest `keep` steps (synchronous saves).

    Each checkpoint holds the items 'state' (params, batch_stats, opt_state, step, rng)
    and 'meta' (JSON: step, epoch, step_in_epoch, batch_size, ...).
    """

    def __init__(self, directory: str | Path, keep: int = 2):
        _quiet_orbax()
        self.directory = Path(directory).absolute()
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, create=True, enable_async_checkpointing=False),
                item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            )
        except Exception as e:  # noqa: BLE001 - any failure to read the directory is reported the same way
            raise checkpoint_error(self.directory, e) from None

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Saves `state` at its step (a no-op when that step is already saved)."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(_state_tree(state)),
            meta=ocp.args.JsonSave({**meta, "step": step})))
        self._manager.wait_until_finished()

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Restores `step` into the structure, dtypes and shardings of `target`."""
        tree = _state_tree(target)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args),
                meta=ocp.args.JsonRestore()))
            state_tree, meta = restored["state"], restored["meta"]
            if jax.tree.structure(state_tree) != jax.tree.structure(tree):
                raise ValueError("restored state has a different structure than the model/optimizer")
            for got, want in zip(jax.tree.leaves(state_tree), jax.tree.leaves(tree)):
                if got.shape != want.shape or got.dtype != want.dtype:
                    raise ValueError(f"array {got.shape}/{got.dtype} where the run has {want.shape}/{want.dtype}")
        except Exception as e:  # noqa: BLE001
            raise checkpoint_error(self.path(step), e) from None
        return TrainState(**state_tree), dict(meta or {})

    def close(self) -> None:
        self._manager.close()


def save_final(workdir: str | Path, state: TrainState | dict[str, Any]) -> Path:
    """Writes params + batch_stats to `workdir/final/` (replacing it) and returns that path."""
    _quiet_orbax()
    variables = state.variables() if isinstance(state, TrainState) else state
    tree = {"params": variables["params"], "batch_stats": dict(variables.get("batch_stats", {}))}
    path = Path(workdir).absolute() / FINAL_DIR
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.PyTreeSave(tree), force=True)
    return path


def _restore_variables(ckptr_restore, metadata: Any) -> dict[str, Any]:
    tree = dict(metadata)
    if "params" not in tree:
        raise ValueError("no 'params' in the checkpoint")
    target = {k: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree.get(k, {})) for k in ("params", "batch_stats")}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    return ckptr_restore(ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))


def load_variables(workdir: str | Path) -> dict[str, Any]:
    """{'params', 'batch_stats'} as numpy arrays from `workdir/final/`, else from the latest checkpoint."""
    _quiet_orbax()
    workdir = Path(workdir).absolute()
    final = workdir / FINAL_DIR
    if final.exists():
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                return _restore_variables(lambda a: ckptr.restore(final, args=a), ckptr.metadata(final).item_metadata)
        except Exception as e:  # noqa: BLE001
            raise checkpoint_error(final, e) from None
    store = CheckpointStore(workdir / CHECKPOINT_DIR) if (workdir / CHECKPOINT_DIR).exists() else None
    step = store.latest_step() if store else None
    if step is None:
        raise CheckpointError(f"no trained weights in {workdir}: neither {FINAL_DIR}/ nor {CHECKPOINT_DIR}/<step>/")
    try:
        metadata = store._manager.item_metadata(step)["state"]
        return _restore_variables(
            lambda a: store._manager.restore(step, args=ocp.args.Composite(state=a))["state"], metadata)
    except Exception as e:  # noqa: BLE001
        raise checkpoint_error(store.path(step), e) from None
    finally:
        store.close()
