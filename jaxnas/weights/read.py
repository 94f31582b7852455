"""Read a PyTorch state dict file into {name: numpy array}: `.pth`/`.pt` or `.safetensors`.

* safetensors files: the `safetensors` library's numpy API (no torch needed).
* torch.save files: `torch.load(weights_only=True)` when torch is installed; without torch, the zip
  format torch has written since 1.6 is read by a restricted unpickler that builds numpy arrays and
  accepts nothing but tensors in (ordered) dicts, so a pickle cannot run code either way.

Training checkpoints that wrap the state dict (``{'state_dict': ...}``, ``{'model': ...}``) and
DataParallel's ``module.`` prefix are unwrapped; `StateDict.notes` records what was done.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxnas.weights.errors import WeightsError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")


@dataclasses.dataclass(frozen=True)
class StateDict:
    """The tensors of a state dict as numpy arrays, and how they were read."""

    tensors: dict[str, np.ndarray]
    reader: str                        # 'safetensors' | 'torch.load' | 'zip (numpy)'
    notes: tuple[str, ...] = ()        # e.g. "unwrapped 'state_dict'", "stripped prefix 'module.'"
    dtypes: tuple[str, ...] = ()       # source dtypes of the floating tensors


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < (1 << 30)


def read_state_dict(path: str | Path) -> StateDict:
    """The state dict in `path` (format sniffed from the content, not the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (give a .pth / .pt / .safetensors state dict)")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        raw, reader = _read_safetensors(path), "safetensors"
    elif zipfile.is_zipfile(path) or _looks_like_pickle(path):
        raw, reader = _read_torch(path)
    else:
        raise WeightsError(f"{path} is neither a safetensors file nor a torch.save file; give a state dict "
                           "saved with torch.save(model.state_dict(), ...) or safetensors")
    tensors, notes = _unwrap(raw, path)
    floats = sorted({str(a.dtype) for a in tensors.values() if a.dtype.kind == "f" or a.dtype.name == "bfloat16"})
    return StateDict(tensors, reader, tuple(notes), tuple(floats))


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"     # pickle PROTO opcode: torch's pre-1.6 (legacy) format


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, which BF16 files need
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise WeightsError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise WeightsError(f"{path} is not a readable safetensors file ({_first_line(e)}); "
                           "re-download or re-save it") from None


def _read_torch(path: Path) -> tuple[Any, str]:
    try:
        import torch
    except ImportError:
        if not zipfile.is_zipfile(path):
            raise WeightsError(f"{path} is in torch's legacy (pre-1.6) format, which needs torch to read: "
                               "pip install torch, or re-save it as .safetensors") from None
        return read_torch_zip(path), "zip (numpy)"
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError / RuntimeError / EOFError ...
        raise WeightsError(f"torch.load(weights_only=True) cannot read {path} ({_first_line(e)}); give a state "
                           "dict: torch.save(model.state_dict(), path), not a pickled model") from None
    return _torch_to_numpy(obj, torch), "torch.load"


def _torch_to_numpy(obj: Any, torch) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            import ml_dtypes
            return t.float().numpy().astype(np.float16 if t.dtype == torch.float16 else ml_dtypes.bfloat16)
        try:
            return t.numpy()
        except (TypeError, RuntimeError) as e:
            raise WeightsError(f"tensor of dtype {t.dtype} cannot be imported ({_first_line(e)})") from None
    if isinstance(obj, dict):
        return {k: _torch_to_numpy(v, torch) for k, v in obj.items()}
    return obj


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    notes: list[str] = []
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), dict) and _is_tensor_dict(obj[key]):
                obj = obj[key]
                notes.append(f"unwrapped {key!r}")
                break
    if not isinstance(obj, dict) or not obj or not _is_tensor_dict(obj):
        what = type(obj).__name__ if not isinstance(obj, dict) else (
            "an empty dict" if not obj else f"a dict with non-tensor entries ({', '.join(map(str, list(obj)[:4]))})")
        raise WeightsError(f"{path} holds {what}, not a state dict of tensors; save model.state_dict()")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
            notes.append(f"stripped prefix {prefix!r}")
    return {str(k): np.asarray(v) for k, v in obj.items()}, notes


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in d.items())


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


# ------------------------------------------------------------------------ torch zip without torch

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused) -> np.ndarray:
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays from torch's zip pickle; refuses every global but the tensor builders."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state dict")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage {pid[:2]}")
        return self._load_storage(storage_type, str(key))


def read_torch_zip(path: str | Path) -> dict[str, Any]:
    """A torch.save zip file's object, with tensors as numpy arrays (no torch needed)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise pickle.UnpicklingError("no data.pkl in the archive")
            root = pkl[0][: -len("data.pkl")]
            order = z.read(root + "byteorder").decode().strip() if root + "byteorder" in names else "little"
            cache: dict[str, np.ndarray] = {}

            def load_storage(storage_type: str, key: str) -> np.ndarray:
                if key not in cache:
                    dt = _STORAGE_DTYPES[storage_type]
                    if dt == "bfloat16":
                        import ml_dtypes
                        dt = ml_dtypes.bfloat16
                    dt = np.dtype(dt).newbyteorder("<" if order == "little" else ">")
                    cache[key] = np.frombuffer(z.read(f"{root}data/{key}"), dtype=dt)
                return cache[key]

            return _RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), load_storage).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, TypeError, EOFError) as e:
        raise WeightsError(f"{path} is not a readable torch.save state dict ({_first_line(e)}); "
                           "save model.state_dict()") from None

