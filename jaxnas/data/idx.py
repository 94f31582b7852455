"""Reader/writer for the IDX format used by (Fashion-)MNIST, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .errors import DataError

# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"idx: cannot read {path}: {e.strerror or e}") from e
    if raw[:2] == _GZIP_MAGIC:  # detect by content, not by file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"idx: {path} looks gzip-compressed but cannot be decompressed ({e}); "
                            "the file is truncated or corrupt, re-download or reinstall it") from e
    return raw


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an uncompressed IDX byte string into a native-endian numpy array."""
    if len(raw) < 4:
        raise DataError(f"idx: {name} is too short ({len(raw)} bytes) to hold an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"idx: {name} has bad magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with "
                        f"type TT in {{08,09,0B,0C,0D,0E}} and NN>=1 dims); it is not an IDX file or is corrupt")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx: {name} is truncated inside its header ({len(raw)} < {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"idx: {name} header declares shape {shape} ({expected} data bytes) but holds "
                        f"{len(raw) - header} data bytes; the file is truncated or corrupt")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array, validating its header."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as IDX; gzip-compressed when ``compress`` or when the name ends in .gz."""
    path = Path(path)
    arr = np.asarray(array)
    code = _DTYPE_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"idx: dtype {arr.dtype} cannot be stored in IDX (use uint8, int8, int16, int32, "
                        "float32 or float64)")
    if arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"idx: cannot store a {arr.ndim}-d array")
    payload = (struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
               + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes())
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
