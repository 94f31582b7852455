"""Orbax checkpoints under `workdir/checkpoints/<step>/` and final weights under `workdir/final/`.

Each save is written to `<step>.orbax-checkpoint-tmp-*` and renamed into place, so a
save interrupted mid-way leaves only a tmp directory that orbax ignores; the
previous checkpoint stays the latest one.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxnas.errors import UserError
from jaxnas.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
_STATE_FIELDS = ("params", "batch_stats", "opt_state", "step", "rng")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read back into the current run, or written.

    For a caller that words its own message: `path` is the checkpoint concerned (None where the message is
    all there is), `problem` what is wrong with it without the fix ("<path> is corrupt or incompatible
    (<cause>)" for a failed read), and `writing` tells a failed write from a failed read."""

    def __init__(self, message: str, *, path: Path | str | None = None, problem: str | None = None,
                 writing: bool = False):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.writing = writing


def checkpoint_error(path: Path | str, err: BaseException | str) -> CheckpointError:
    if isinstance(err, BaseException):
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
    else:
        detail = err
    problem = f"{path} is corrupt or incompatible ({detail})"
    return CheckpointError(f"checkpoint at {problem}; delete it or use a fresh --workdir", path=path, problem=problem)


_WRITE_FAILURES = ("No space left on device", "Permission denied", "Read-only file system", "Not a directory",
                   "Disk quota exceeded")


def _write_failure(err: BaseException) -> str:
    """The part of a write error that names its cause: an OS message when one is in it, else its first line."""
    text = str(err)
    known = [m for m in _WRITE_FAILURES if m in text]
    return known[0] if known else (text.strip().splitlines() or [type(err).__name__])[0][:200]


def write_error(path: Path | str, err: BaseException) -> CheckpointError:
    """One line for a checkpoint that could not be written (a full disk, a directory that is not writable)."""
    return CheckpointError(f"cannot write the checkpoint {path} ({_write_failure(err)}); free disk space or make "
                           f"{Path(path).parent} writable, then rerun the same command to resume",
                           path=path, writing=True)


def _carries(exc: BaseException | None, cause: str) -> bool:
    """Whether `exc` or an exception it was raised from / while handling names `cause`."""
    seen = 0
    while exc is not None and seen < 16:
        if cause in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# After a failed write, orbax's `asyncio.run` has closed its event loop while tensorstore still holds
# callbacks for it; when those complete, tensorstore's C++ threads get "Event loop is closed" from
# `call_soon_threadsafe` and hand it to `sys.unraisablehook` (a bare traceback on stderr).
_CLOSED_LOOP = "Event loop is closed"


def _aftermath(exc: BaseException | None, cause: str) -> bool:
    """Whether `exc` is a consequence of the failed write whose error names `cause`."""
    return _carries(exc, cause) or (isinstance(exc, RuntimeError) and _carries(exc, _CLOSED_LOOP))


def _record_carries(record: logging.LogRecord, cause: str) -> bool:
    """Whether a log record's message or the exception it logs is the failed write's (see `_aftermath`)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a record whose arguments do not format still gets judged on exc_info
        message = str(record.msg)
    return cause in message or _aftermath(record.exc_info[1] if record.exc_info else None, cause)


def _dropping_hook(cause: str | None, previous: Any) -> Any:
    """A `threading.excepthook` or `sys.unraisablehook` (both get an object with `exc_value`) that drops an
    exception of the failed write naming `cause` (None: any exception), and hands every other one to
    `previous`."""
    def hook(args: Any) -> None:
        if cause is not None and not _aftermath(args.exc_value, cause):
            previous(args)
    return hook


@contextlib.contextmanager
def _quiet_failures() -> Iterator[None]:
    """Orbax reports a failed write from each of its worker threads (absl ERROR lines with tracebacks,
    megabytes on a full disk) before raising; the raised error is reported once, in one line, instead.

    Orbax also leaves asyncio tasks of the failed write whose exception nobody retrieves; asyncio logs them
    (traceback and all) when they are garbage-collected, which may be after this block or at interpreter
    exit.  So on failure the pending ones are collected here, while everything is still dropped, and a
    filter stays on the asyncio, absl, orbax and jax loggers for records carrying the same cause (orbax's
    worker threads log their failure, traceback and all, and may do so after the raise).  Those threads can
    also end with the same error after it was raised here; Python prints such a thread's traceback
    (`threading.excepthook`) unless it is dropped, and tensorstore's threads report the event loop orbax
    closed through `sys.unraisablehook` (see `_CLOSED_LOOP`); so hooks on both drop every exception during
    the block, and after a failure those of that failure."""
    if os.environ.get("JAXNAS_VERBOSE"):
        yield
        return
    drop = lambda record: False  # noqa: E731 - a logging filter (any callable will do) that drops everything
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio", "jax")]
    for lg in loggers:
        lg.addFilter(drop)
    hooks = (threading, "excepthook"), (sys, "unraisablehook")
    previous = [getattr(m, n) for m, n in hooks]
    after = list(previous)
    for (m, n), prev in zip(hooks, previous):
        setattr(m, n, _dropping_hook(None, prev))
    try:
        yield
    except Exception as e:
        gc.collect()
        cause = _write_failure(e)
        # Drops later log records of the failure reported here: asyncio's "Task exception was never
        # retrieved", and orbax's worker threads logging the same error (absl, with a traceback) once they
        # fail too, which may be after the raise (CI once printed 125 lines of that after the one line).
        for lg in loggers:
            lg.addFilter(lambda record: not _record_carries(record, cause))
        after = [_dropping_hook(cause, prev) for prev in previous]
        raise
    finally:  # also on KeyboardInterrupt: the drop-everything hooks never outlive the block
        for (m, n), hook in zip(hooks, after):
            setattr(m, n, hook)
        for lg in loggers:
            lg.removeFilter(drop)


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
        try:
            with _quiet_failures():
                self._manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(_state_tree(state)),
                    meta=ocp.args.JsonSave({**meta, "step": step})))
                self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for one I/O failure
            raise write_error(self.path(step), e) from None

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON item of a checkpoint (step, epoch, total_steps, ...)."""
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})

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
    meta = {"step": int(jax.device_get(state.step))} if isinstance(state, TrainState) else {}
    try:
        with _quiet_failures(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
            ckptr.save(path, args=ocp.args.PyTreeSave(tree), force=True, custom_metadata=meta)
    except Exception as e:  # noqa: BLE001
        raise write_error(path, e) from None
    return path


def weights_source(workdir: str | Path) -> dict[str, Any]:
    """Where `load_variables(workdir)` takes the weights from: {'source': 'final' | 'checkpoint', 'step',
    'total_steps', 'text'} ('text' says it in words, e.g. for an interrupted run)."""
    _quiet_orbax()
    workdir = Path(workdir).absolute()
    latest = total = None
    if (workdir / CHECKPOINT_DIR).is_dir():
        store = CheckpointStore(workdir / CHECKPOINT_DIR)
        try:
            latest = store.latest_step()
            if latest is not None:
                total = store.meta(latest).get("total_steps")
        except Exception:  # noqa: BLE001 - the step alone is still worth reporting
            pass
        finally:
            store.close()
    if (workdir / FINAL_DIR).exists():
        step = None
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                step = (ckptr.metadata(workdir / FINAL_DIR).custom_metadata or {}).get("step")
        except Exception:  # noqa: BLE001
            pass
        text = f"weights from {FINAL_DIR}/"
        if step is not None:
            text += f" (step {step}" + (f" of {total})" if total else ")")
            if total and step < total and (latest is None or latest <= step):
                text += ": the run stopped early (train.max_steps); rerun without it to finish"
        if step is not None and latest is not None and latest > step:
            text += (f"; the checkpoints reach step {latest}: a continued run is unfinished, rerun it to "
                     "finish")
        return {"source": "final", "step": step, "total_steps": total, "text": text}
    text = (f"weights from the checkpoint at step {latest}" + (f" of {total}" if total else "")
            + ": the run is unfinished, rerun the same command to finish it")
    return {"source": "checkpoint", "step": latest, "total_steps": total, "text": text}


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
