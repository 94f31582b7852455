"""A work dir: what a run leaves for the user and for resuming.

    config.yaml     the resolved config (reloads with jaxnas.config.load_config)
    arch.json       the architecture spec of the trained / found network
    checkpoints/    orbax checkpoints (every train.checkpoint_every steps and at the end); final/ weights
    metrics.jsonl   metrics rows (and metrics.csv)
    export/         deployable files with export.json
    summary.json    the run's figures (strict JSON)
    .jaxnas.lock    the exclusive lock of the command running in it (its pid and command line)

A run never damages what a work dir holds: `WorkdirLock` admits one command at a time (an OS file lock,
released by the kernel when its process dies, so a `kill -9` leaves no stale lock), and
`check_config_change` refuses a config that would change what the stored weights mean before anything
is written (keys that only change logging, checkpointing, evaluation, export or timing may change).
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from jaxnas.errors import UserError
from jaxnas.io_utils import atomic_write_json

if TYPE_CHECKING:
    from jaxnas.config import ExperimentConfig
    from jaxnas.spec import ArchSpec

SUMMARY = "summary.json"
ARCH = "arch.json"
CONFIG = "config.yaml"

LOCK = ".jaxnas.lock"

__all__ = ["WorkdirError", "SUMMARY", "ARCH", "CONFIG", "LOCK", "read_summary", "write_summary", "load_workdir",
           "WorkdirLock", "check_workdir_path", "config_changes", "check_config_change", "keep_previous_config",
           "holds_results", "FREE_KEYS"]


class WorkdirError(UserError, ValueError):
    """A work dir that does not hold what a command needs, or that a command must not touch."""


def read_summary(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / SUMMARY
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} is not readable JSON ({e}); delete it to start the summary afresh") from None


def write_summary(workdir: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into workdir/summary.json (atomic, strict JSON); returns the whole summary."""
    summary = read_summary(workdir)
    summary.update(updates)
    atomic_write_json(Path(workdir) / SUMMARY, summary)
    return json.loads((Path(workdir) / SUMMARY).read_text())


def load_workdir(workdir: str | Path) -> tuple[ExperimentConfig, ArchSpec, dict]:
    """(config, spec, trained variables) of a finished or interrupted training work dir."""
    from jaxnas import spec as S
    from jaxnas.config import load_config
    from jaxnas.train import load_variables

    workdir = Path(workdir)
    if not workdir.is_dir():
        what = "is not a directory" if workdir.exists() else "does not exist"
        raise WorkdirError(f"work dir {workdir} {what}; run `jaxnas train CONFIG --workdir {workdir}` first")
    for need in (CONFIG, ARCH):
        if not (workdir / need).is_file():
            raise WorkdirError(f"{workdir} has no {need}: it is not a jaxnas work dir (run `jaxnas train` into it)")
    return load_config(workdir / CONFIG), S.ArchSpec.load(workdir / ARCH), load_variables(str(workdir))


# ----------------------------------------------------------------------------------------------------
# Integrity: where a run may go, one command at a time, no silent change of what the weights mean.
# ----------------------------------------------------------------------------------------------------


def check_workdir_path(workdir: str | Path, flag: str = "--workdir") -> None:
    """A work dir must be a jaxnas work dir, an empty directory or a path where one can be made (nothing is
    created here): a run never mixes its files into a directory that holds something else. `flag`: the
    option that named it, for the message."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"{flag} {workdir} is a file, not a directory; choose another {flag}")
    if workdir.is_dir() and not (workdir / CONFIG).exists():
        others = [p.name for p in workdir.iterdir() if p.name != LOCK]
        if others:
            raise WorkdirError(f"{flag} {workdir} is not empty and holds no jaxnas run (no {CONFIG}; it has "
                               f"{', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}); choose an "
                               f"empty or new {flag}")
    parent = next(p for p in workdir.absolute().parents if p.exists())  # the root exists
    if not parent.is_dir():
        raise WorkdirError(f"{flag} {workdir}: {parent} is a file, not a directory; choose another {flag}")


class WorkdirLock:
    """An exclusive lock on a work dir for the life of one command (`with WorkdirLock(dir): ...`).

    `fcntl.flock` on `workdir/.jaxnas.lock`: the kernel drops it when the holding process exits or is
    killed, so a lock left by a `kill -9` is taken over by the next command without any clean-up. Nothing
    is written into the file (a refused command changes nothing in the work dir); the holder's pid and
    command line for the refusal come from the kernel's lock table (/proc/locks).
    """

    def __init__(self, workdir: str | Path, flag: str = "--workdir"):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK
        self.flag = flag  # the option that named the work dir, for messages
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        flag = self.flag
        check_workdir_path(self.workdir, flag)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise WorkdirError(f"cannot use {flag} {self.workdir}: {e.strerror or e} ({e.filename or self.path});"
                               f" choose a writable {flag}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = lock_holder(fd)
            os.close(fd)
            raise WorkdirError(f"{self.workdir} is in use by another jaxnas command ({holder}); wait for it to "
                               f"finish or stop it, or use another {flag}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(fd: int) -> str:
    """'pid N: `command line`' of the process holding a flock on the file open as `fd` (Linux)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            pids = [line.split()[4] for line in f if " FLOCK " in line and line.split()[5] == key]
        pid = int(pids[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (OSError, ValueError, IndexError):
        return "another process"
    if argv[1:3] == ["-m", "jaxnas.cli"]:
        argv = ["jaxnas", *argv[3:]]
    elif len(argv) >= 2 and Path(argv[0]).name.startswith("python") and argv[1].endswith(("jaxnas", "cli.py")):
        argv = ["jaxnas", *argv[2:]]
    elif argv and argv[0].endswith("jaxnas"):
        argv = ["jaxnas", *argv[1:]]
    cmd = " ".join(" ".join(argv).split())  # one line, whatever the arguments hold
    return f"pid {pid}: `{cmd if len(cmd) <= 400 else cmd[:400] + '...'}`"


# Config keys that do not change what a work dir's weights mean: logging, checkpointing, evaluation, the
# run's label and the conv implementation (same math); export and timing settings after the weights. A
# search whose method measures latency (through the oracle) gets different results on another runtime, so
# for a search only the timing protocol's repetitions are free in the latency section.
FREE_KEYS = ("name", "model.depthwise", "data.eval_batch_size", "data.download", "train.max_steps",
             "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.progress",
             "train.eval_every_epochs", "export")
FREE_KEYS_TRAIN = ("latency",)
FREE_KEYS_SEARCH = ("latency.warmup", "latency.runs")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))  # an empty section adds no key
        else:
            out[key] = v
    return out


def _is_free(key: str, free: tuple[str, ...]) -> bool:
    return any(key == f or key.startswith(f + ".") for f in free)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], *, search: bool) -> list[str]:
    """'key: old -> new' for every leaf that differs and changes what the weights mean (see FREE_KEYS)."""
    a, b = _flatten(old), _flatten(new)
    free = FREE_KEYS + (FREE_KEYS_SEARCH if search else FREE_KEYS_TRAIN)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb and not _is_free(key, free):
            show = lambda v: "(unset)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(va)} -> {show(vb)}")
    return out


def check_config_change(workdir: str | Path, cfg: ExperimentConfig, *, search: bool,
                        allow: bool = False) -> list[str]:
    """Refuse (WorkdirError) a config whose differences from the work dir's stored config.yaml change what
    its weights mean, unless `allow`; returns those differences (allowed). Reads only; a work dir without
    config.yaml passes."""
    from jaxnas.config import ConfigError, config_to_dict, load_config

    path = Path(workdir) / CONFIG
    if not path.is_file() or not holds_results(workdir):
        return []  # no weights or results yet (a run refused by its method's own checks): nothing to protect
    try:
        stored = load_config(path)
    except ConfigError as e:
        if allow:
            return [f"{CONFIG}: unreadable ({e.errors[0]})"]
        raise WorkdirError(f"{path} does not load with this jaxnas ({e.errors[0]}); use a new --workdir, or pass "
                           "--allow-config-change to overwrite it") from None
    changes = config_changes(config_to_dict(stored), config_to_dict(cfg), search=search)
    if changes and not allow:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise WorkdirError(f"{workdir} holds a run with another config ({shown}): its weights were made with the "
                           "stored values; use a new --workdir, or pass --allow-config-change to continue it "
                           "with this config")
    return changes


def holds_results(workdir: str | Path) -> bool:
    """Whether a work dir holds anything a run made besides its config (weights, metrics, tables, ...)."""
    return any(p.name not in (CONFIG, LOCK) and not p.name.startswith("config.previous-")
               for p in Path(workdir).iterdir())


def keep_previous_config(workdir: str | Path) -> Path:
    """Copy config.yaml aside (config.previous-<time>.yaml) before an allowed change replaces it."""
    import shutil
    import time

    src = Path(workdir) / CONFIG
    dst = src.with_name(f"config.previous-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    shutil.copy2(src, dst)
    return dst
