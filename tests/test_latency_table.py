"""LatencyTable JSON container, interpolation, and importers of published tables."""
from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict

import pytest

from jaxnas.latency import (Fingerprint, LatencyTable, TableError, TimingStats, import_depth_csv,
                     import_tfnas_pkl, interpolate, tfnas_base, tfnas_lookup)
from jaxnas.latency.imports import parse_tfnas_key, tfnas_key


def _fp(**kw) -> Fingerprint:
    base = dict(backend="onnxruntime", runtime="onnxruntime 1.31.1", device="Intel Xeon Gold 6130",
                provider="CPUExecutionProvider", threads=1, batch_size=1, precision="fp32", arch="x86_64")
    base.update(kw)
    return Fingerprint(**base)


def _stats(v: float) -> TimingStats:
    return TimingStats.from_samples([v * 0.9, v, v, v * 1.1, v * 1.3])


def _table(meta=None) -> LatencyTable:
    t = LatencyTable.new(_fp(), meta=meta or {"space": "tfnas", "input_size": 224, "channel_grid": [8, 16, 24]})
    t.put("blk_a", _stats(1.0))
    t.put("blk_b", _stats(2.5), meta={"H": 56, "cin": 24})
    return t


# ------------------------------------------------------------- basic API
def test_put_get_contains_ms():
    t = _table()
    assert "blk_a" in t and "nope" not in t and len(t) == 2 and sorted(t) == ["blk_a", "blk_b"]
    e = t.get("blk_b")
    assert set(e) >= {"count", "mean", "std", "median", "p10", "p90"}
    assert e["count"] == 5 and e["median"] == pytest.approx(2.5) and e["meta"] == {"H": 56, "cin": 24}
    assert t.get("nope") is None and t.get("nope", 0) == 0
    assert t.ms("blk_a") == pytest.approx(1.0)
    assert t.ms("blk_a", "mean") == pytest.approx(_stats(1.0).mean)
    t.put("imported", {"count": None, "mean": 3.0, "std": None, "median": None, "p10": None, "p90": None})
    assert t.ms("imported") == 3.0  # median is null → mean
    with pytest.raises(KeyError, match="nope"):
        t.ms("nope")
    with pytest.raises(TableError, match="mean"):
        t.put("bad", {"count": 1, "mean": float("nan"), "std": 0, "median": 1, "p10": 1, "p90": 1})
    with pytest.raises(TableError, match="missing"):
        t.put("bad", {"mean": 1.0})


def test_save_load_roundtrip(tmp_path):
    t = _table()
    p = t.save(tmp_path / "sub" / "lat.json")
    raw = json.loads(p.read_text())
    assert raw["schema_version"] == 1 and raw["units"] == "ms" and raw["backend"] == "onnxruntime"
    assert raw["fingerprint"]["threads"] == 1
    assert set(raw["entries"]["blk_a"]) >= {"count", "mean", "std", "median", "p10", "p90"}
    t2 = LatencyTable.load(p)
    assert t2.to_dict() == t.to_dict()
    assert t2.ms("blk_b") == t.ms("blk_b")


def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch):
    p = tmp_path / "lat.json"
    t = _table()
    t.save(p)
    t.put("blk_c", _stats(0.7))
    t.save(p)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["lat.json"]
    assert "blk_c" in LatencyTable.load(p)
    # a crash between write and rename keeps the old file intact and cleans the temp
    before = p.read_text()
    t.put("blk_d", _stats(0.9))

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        t.save(p)
    monkeypatch.undo()
    assert p.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["lat.json"]


def test_resume_with_open_or_create(tmp_path):
    p = tmp_path / "lat.json"
    meta = {"space": "tfnas", "input_size": 224, "channel_grid": (8, 16, 24)}
    t = LatencyTable.open_or_create(p, _fp(), meta)
    assert len(t) == 0 and not p.exists()
    t.put("blk_a", _stats(1.0))
    t.save(p)
    # resumed build keeps entries, skips measured keys, adds new ones
    t2 = LatencyTable.open_or_create(p, _fp(), meta)
    assert "blk_a" in t2 and t2.ms("blk_a") == t.ms("blk_a")
    todo = [k for k in ("blk_a", "blk_b") if k not in t2]
    assert todo == ["blk_b"]
    t2.put("blk_b", _stats(2.0))
    t2.save(p)
    t3 = LatencyTable.open_or_create(p, _fp(), {**meta, "note": "new meta key is added"})
    assert sorted(t3) == ["blk_a", "blk_b"] and t3.meta["note"] == "new meta key is added"
    # only the compared fields matter: another provider string is fine by default
    LatencyTable.open_or_create(p, _fp(provider="whatever"), meta)
    with pytest.raises(TableError, match="input_size"):
        LatencyTable.open_or_create(p, _fp(), {**meta, "input_size": 192})


def test_a_meta_clash_is_one_short_line_with_the_callers_fix(tmp_path):
    # A layer grid's meta holds its whole layer list (thousands of characters): the error shows it in brief.
    layers = [{"cin_grid": list(range(0, 400, 8)), "cout_grid": list(range(0, 400, 8))}] * 40
    p = _table(meta={"layers": layers}).save(tmp_path / "lat.json")
    with pytest.raises(TableError) as ei:
        LatencyTable.open_or_create(p, _fp(), {"layers": layers[:30]}, hint="point latency.table elsewhere")
    msg = str(ei.value)
    assert len(msg) < 400 and "40 items" in msg and "30 items" in msg and "\n" not in msg
    assert msg.endswith("; point latency.table elsewhere")
    p.write_text("{not json")
    with pytest.raises(TableError, match=r"is not valid JSON .*; point latency.table elsewhere$"):
        LatencyTable.open_or_create(p, _fp(), hint="point latency.table elsewhere")
    p.write_text(json.dumps({**_table().to_dict(), "schema_version": 99}))
    with pytest.raises(TableError,
                       match=r"schema_version 99 \(this jaxnas reads \d+\); point latency.table elsewhere$"):
        LatencyTable.open_or_create(p, _fp(), hint="point latency.table elsewhere")


def test_refuses_mismatched_fingerprint(tmp_path):
    p = _table().save(tmp_path / "lat.json")
    with pytest.raises(TableError) as ei:
        LatencyTable.open_or_create(p, _fp(backend="tflite", runtime="ai-edge-litert 2.3.0",
                                           provider="XNNPACK"))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: table was measured with onnxruntime") and "requested tflite" in msg
    assert "backend ('onnxruntime' vs 'tflite')" in msg and "runtime" in msg
    assert "Intel Xeon Gold 6130" in msg and msg.endswith("delete it or use another path (a missing table is "
                                                          "measured anew)")
    assert "threads (" not in msg  # threads match, so they are not listed as mismatched
    t = LatencyTable.load(p)
    with pytest.raises(TableError, match=r"threads \(1 vs 4\)"):
        t.check_compatible(_fp(threads=4))
    with pytest.raises(TableError, match=r"batch_size \(1 vs 32\).*precision \('fp32' vs 'fp16'\)"):
        t.check_compatible(_fp(batch_size=32, precision="fp16"))
    with pytest.raises(TableError, match="device"):
        t.check_compatible(_fp(device="AMD EPYC"))
    t.check_compatible(_fp(device="AMD EPYC"), keys=("backend", "threads"))
    assert t.is_compatible(_fp().to_dict()) and not t.is_compatible(_fp(threads=2))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema_version=2), "unsupported schema_version 2"),
    (lambda d: d.pop("schema_version"), "missing 'schema_version'"),
    (lambda d: d.update(schema_version="1"), "must be an integer"),
    (lambda d: d.update(units="us"), "units must be 'ms'"),
    (lambda d: d.update(entries=[]), "'entries' must be an object"),
    (lambda d: d.update(fingerprint=None), "'fingerprint' must be an object"),
    (lambda d: d["entries"]["blk_a"].pop("p90"), r"blk_a.*missing required field\(s\) \['p90'\]"),
    (lambda d: d["entries"]["blk_a"].update(mean="fast"), "'mean' must be a finite number"),
    (lambda d: d["entries"]["blk_a"].update(std=-1.0), "'std' must be a finite number"),
    (lambda d: d["entries"]["blk_a"].update(count=2.5), "'count' must be an integer"),
    (lambda d: d["entries"]["blk_a"].update(median=True), "'median' must be a finite number"),
])
def test_load_validation_errors(tmp_path, mutate, match):
    d = _table().to_dict()
    mutate(d)
    p = tmp_path / "lat.json"
    p.write_text(json.dumps(d))
    with pytest.raises(TableError, match=match) as ei:
        LatencyTable.load(p)
    assert str(p) in str(ei.value)


def test_corrupt_missing_and_nan_json(tmp_path):
    p = tmp_path / "lat.json"
    text = json.dumps(_table().to_dict())
    p.write_text(text[: len(text) // 2])  # truncated write
    with pytest.raises(TableError, match="not valid JSON"):
        LatencyTable.load(p)
    with pytest.raises(TableError, match="not valid JSON"):
        LatencyTable.open_or_create(p, _fp())  # resume refuses a corrupt file, never clobbers it
    d = _table().to_dict()
    d["entries"]["blk_a"]["mean"] = float("nan")
    p.write_text(json.dumps(d))  # Python's json writes a bare NaN
    assert "NaN" in p.read_text()
    with pytest.raises(TableError, match="non-finite number NaN"):
        LatencyTable.load(p)
    with pytest.raises(TableError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")
    p.write_text("[1, 2]")
    with pytest.raises(TableError, match="JSON object"):
        LatencyTable.load(p)


# ----------------------------------------------------------- interpolate
def test_interpolate():
    xs, ys = [8, 16, 32], [1.0, 2.0, 2.5]
    assert interpolate(xs, ys, 16) == 2.0
    assert interpolate(xs, ys, 12) == pytest.approx(1.5)
    assert interpolate(xs, ys, 24) == pytest.approx(2.25)
    assert interpolate(xs, ys, 4) == pytest.approx(0.5)  # extrapolate with the first segment
    assert interpolate(xs, ys, 48) == pytest.approx(3.0)  # … and the last one
    assert interpolate([32, 8, 16], [2.5, 1.0, 2.0], 12) == pytest.approx(1.5)  # unsorted ok
    assert interpolate([8], [1.25], 100) == 1.25
    with pytest.raises(ValueError):
        interpolate([8, 8], [1, 2], 8)
    with pytest.raises(ValueError):
        interpolate([], [], 1)
    with pytest.raises(ValueError):
        interpolate([1, 2], [1], 1)


# ----------------------------------------------------------------- TF-NAS
def _tfnas_dict():
    d = OrderedDict()
    d["base"] = 4.25
    k1 = "MBInvertedResBlock_112_16_0_24_k3_s2_relu"
    d[k1] = OrderedDict((mid, 0.1 + 0.01 * mid) for mid in range(8, 129, 8))  # every 8 channels
    k2 = "MBInvertedResBlock_14_112_224_192_k5_s2_swish"
    d[k2] = OrderedDict((mid, 0.5 + 0.002 * mid) for mid in range(1, 897))  # every channel
    return d


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_tfnas_pkl_import_and_lookup(tmp_path, protocol):
    p = tmp_path / "latency_gpu.pkl"
    with open(p, "wb") as f:
        pickle.dump(_tfnas_dict(), f, protocol=protocol)
    t = import_tfnas_pkl(p, device="Titan RTX", batch_size=32)
    assert len(t) == 1 + 16 + 896
    assert t.fingerprint["device"] == "Titan RTX" and t.fingerprint["batch_size"] == 32
    assert tfnas_base(t) == 4.25
    e = t.get("MBInvertedResBlock_112_16_0_24_k3_s2_relu:mid24")
    assert e["mean"] == pytest.approx(0.34) and e["count"] is None and e["std"] is None
    assert e["meta"] == {"block": "MBInvertedResBlock", "H": 112, "in": 16, "se": 0, "out": 24, "k": 3,
                         "s": 2, "act": "relu", "mid": 24,
                         "source_key": "MBInvertedResBlock_112_16_0_24_k3_s2_relu"}
    assert t.meta["channel_grid"]["MBInvertedResBlock_112_16_0_24_k3_s2_relu"] == list(range(8, 129, 8))
    look = lambda mid: tfnas_lookup(t, 112, 16, 0, 24, 3, 2, "relu", mid)  # noqa: E731
    assert look(24) == pytest.approx(0.34)  # measured
    assert look(20) == pytest.approx(0.30)  # between 16 and 24
    assert look(4) == pytest.approx(0.14)  # extrapolated below the grid
    assert look(136) == pytest.approx(1.46)  # … and above
    assert tfnas_lookup(t, 14, 112, 224, 192, 5, 2, "swish", 300) == pytest.approx(1.1)
    with pytest.raises(KeyError):
        tfnas_lookup(t, 7, 192, 0, 320, 3, 1, "swish", 100)
    # the imported table survives a save/load round trip, lookups included
    t2 = LatencyTable.load(t.save(tmp_path / "tfnas.json"))
    assert tfnas_lookup(t2, 112, 16, 0, 24, 3, 2, "relu", 20) == pytest.approx(0.30)


def test_tfnas_key_helpers():
    k = tfnas_key(56, 24, 48, 40, 5, 2, "swish")
    assert k == "MBInvertedResBlock_56_24_48_40_k5_s2_swish"
    assert parse_tfnas_key(k)["se"] == 48 and parse_tfnas_key("base") is None


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_tfnas_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(OrderedDict(base=1.0, x=_Evil(marker))))
    with pytest.raises(TableError, match="refusing to load global .*system"):
        import_tfnas_pkl(p)
    assert not marker.exists()
    with pytest.raises(TableError, match="refusing to load global builtins.eval"):
        import_tfnas_pkl(pickle.dumps(OrderedDict(base=_EvalEvil())))
    with pytest.raises(TableError, match="not a readable pickle"):
        import_tfnas_pkl(b"\x80\x04garbage")
    with pytest.raises(TableError, match="expected a dict"):
        import_tfnas_pkl(pickle.dumps([1.0, 2.0]))
    with pytest.raises(TableError, match="latency must be a finite number"):
        import_tfnas_pkl(pickle.dumps(OrderedDict(base="slow")))
    with pytest.raises(TableError, match="not found"):
        import_tfnas_pkl(tmp_path / "nope.pkl")


# ----------------------------------------------------- depth-compression CSV
def test_depth_csv_import(tmp_path):
    p = tmp_path / "time_table.csv"
    p.write_text("id,st,end,time,stdev,breaks\n"
                 "0,0,1,0.512,0.010,\n"
                 "1,0,2,0.730,0.020,1\n"
                 "2,1,3,0.655,0.015,1-2\n")
    t = import_depth_csv(p, device="RTX 2080 Ti", batch_size=64)
    assert sorted(t) == ["seg_0_1", "seg_0_2", "seg_1_3"]
    e = t.get("seg_0_2")
    assert e["mean"] == 0.730 and e["std"] == 0.020 and e["count"] is None and e["median"] is None
    assert e["meta"] == {"id": 1, "st": 0, "end": 2, "breaks": "1"}
    assert t.get("seg_1_3")["meta"]["breaks"] == "1-2"
    assert "breaks" not in t.get("seg_0_1")["meta"]
    assert t.ms("seg_1_3") == 0.655  # null median → mean
    assert t.fingerprint["batch_size"] == 64 and t.meta["source"] == "depth-compression"
    assert LatencyTable.load(t.save(tmp_path / "seg.json")).to_dict() == t.to_dict()

    p2 = tmp_path / "no_breaks.csv"
    p2.write_text("id,st,end,time,stdev\n3,2,4,1.5,0.1\n\n")
    t2 = import_depth_csv(p2)
    assert t2.keys() == ["seg_2_4"] and "breaks" not in t2.get("seg_2_4")["meta"]


@pytest.mark.parametrize("text,match", [
    ("id,st,time,stdev\n0,0,1.0,0.1\n", r"missing column\(s\) \['end'\]"),
    ("id,st,end,time,stdev\n0,0,1,fast,0.1\n", r":2: st/end must be integers"),
    ("id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,0,1,1.1,0.1\n", "duplicate segment st=0 end=1"),
    ("id,st,end,time,stdev\n0,0,1,-1.0,0.1\n", "latency must be a finite number"),
    ("", "missing column"),
])
def test_depth_csv_errors(tmp_path, text, match):
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(TableError, match=match):
        import_depth_csv(p)
