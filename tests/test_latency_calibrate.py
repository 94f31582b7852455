"""latency.calibrate: a table's drift since it was built, from its reference networks timed again; the
predictor's scale; validate_space's recalibration (its default); `jaxnas latency calibrate`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxnas.latency import LatencyTable, TableError
from jaxnas.latency.builder import build_table
from jaxnas.latency.calibrate import drift_scale, recalibrate, reference_specs, table_scale
from jaxnas.latency.predictor import LatencyPredictor, validate_space
from jaxnas.latency.spaces import SearchSpace
from jaxnas.spec import macs
from test_latency_builder import SMALL, TINY, FakeBackend, install_fake_runtime


def test_drift_scale_is_the_median_ratio_of_the_references_both_hold():
    cal = drift_scale({"ref:a": 10.0, "ref:b": 20.0, "ref:c": 5.0}, {"ref:a": 9.0, "ref:b": 18.0, "ref:c": 6.0,
                                                                    "ref:new": 1.0})
    # ratios 0.9, 0.9, 1.2: median 0.9; p90 by linear interpolation 0.9 + 0.8 * 0.3
    assert cal["scale"] == pytest.approx(0.9) and cal["n"] == 3
    assert cal["ratio_p10"] == pytest.approx(0.9) and cal["ratio_p90"] == pytest.approx(1.14)
    assert cal["uniform"] is False  # 1.14 / 0.9 > 1.10
    assert cal["references"]["ref:c"] == {"then_ms": 5.0, "now_ms": 6.0}
    assert drift_scale({"ref:a": 2.0, "ref:b": 4.0}, {"ref:a": 1.0, "ref:b": 2.1})["uniform"] is True
    with pytest.raises(TableError, match="no reference network timed both"):
        drift_scale({"ref:a": 1.0}, {"ref:b": 1.0})


@pytest.fixture
def drifting_runtime(monkeypatch):
    """A fake runtime whose every net takes drift[0] x (0.01 + MACs / 1e6) ms: additive in its parts up to a
    per-call 0.01 ms, so the table (sum of parts + the overhead fit) predicts it exactly at drift 1."""
    drift = [1.0]
    install_fake_runtime(monkeypatch, lambda spec, n: drift[0] * (0.01 + macs(spec) / 1e6))
    return drift


def test_recalibrate_stores_the_drift_and_every_prediction_scales_by_it(tmp_path, drifting_runtime):
    space, out = SearchSpace(SMALL), tmp_path / "t.json"
    build_table(SMALL, FakeBackend(), out, runs=5, progress=False)
    spec = space.sample(3)
    before = LatencyPredictor(out).predict(spec)
    truth = 0.01 + macs(spec) / 1e6
    assert before == pytest.approx(truth, rel=1e-6)
    assert table_scale(LatencyTable.load(out)) == 1.0

    drifting_runtime[0] = 0.8  # the machine runs 20 % faster than when the table was built
    cal = recalibrate(SMALL, FakeBackend(), out, runs=5, passes=1, progress=False)
    assert cal["scale"] == pytest.approx(0.8) and cal["uniform"] and cal["n"] == len(reference_specs(
        space, LatencyTable.load(out))) >= 3
    table = LatencyTable.load(out)  # stored in the file
    assert table.meta["calibration"]["scale"] == pytest.approx(0.8) and "measured_at" in table.meta["calibration"]
    pr = LatencyPredictor(out)
    assert pr.scale == pytest.approx(0.8) and pr.predict(spec) == pytest.approx(0.8 * truth, rel=1e-6)
    assert "calibrated x0.800" in pr.describe()
    # every entry and the overhead scale: a part's time too, so a method's LUT sees the same device
    key = pr.parts(spec)[1].key
    assert pr.part_ms(pr.parts(spec)[1]) == pytest.approx(0.8 * table.ms(key, "median"))
    assert LatencyPredictor(out, scale=1.0).predict(spec) == pytest.approx(before)  # explicitly uncalibrated
    with pytest.raises(ValueError, match="scale must be a positive number"):
        LatencyPredictor(out, scale=0.0)

    # A build that measures anything again drops the calibration (it scaled the old entries only).
    build_table(SMALL, FakeBackend(), out, runs=5, progress=False)
    assert "calibration" in LatencyTable.load(out).meta  # complete: nothing measured, calibration kept
    table.entries.pop(key)
    table.save(out)
    build_table(SMALL, FakeBackend(), out, runs=5, progress=False)
    assert "calibration" not in LatencyTable.load(out).meta


def test_validate_recalibrates_by_default_and_stores_what_it_validated(tmp_path, drifting_runtime):
    out = tmp_path / "t.json"
    build_table(SMALL, FakeBackend(), out, runs=5, progress=False)
    drifting_runtime[0] = 0.8
    stale = validate_space(SMALL, FakeBackend(), 6, table_path=out, runs=5, rounds=1, progress=False,
                           recalibrate=False)
    assert stale["bias_pct"] == pytest.approx(25.0) and stale["within_10pct"] == 0.0 and stale["calibration"] is None
    assert "calibration" not in LatencyTable.load(out).meta and stale["warnings"] == []  # as stored, unchanged

    r = validate_space(SMALL, FakeBackend(), 6, table_path=out, runs=5, rounds=1, progress=False)  # the default
    assert r["calibration"]["scale"] == pytest.approx(0.8) and r["scale"] == pytest.approx(0.8)
    assert r["within_5pct"] == 1.0 and abs(r["bias_pct"]) < 1e-6
    assert r["uncalibrated"]["bias_pct"] == pytest.approx(25.0)  # what the table as it came would have said
    assert all(row["predicted_ms"] == pytest.approx(row["measured_ms"]) for row in r["rows"])
    # stored, so the predictor a search reads from the table is the one validated
    cal = LatencyTable.load(out).meta["calibration"]
    assert cal["scale"] == pytest.approx(0.8) and cal["by"] == "validate" and cal["previous_scale"] == 1.0
    assert r["calibration"]["stored_in"] == str(out)
    assert LatencyPredictor(out).predict(space_sample := SearchSpace(SMALL).sample(3)) == pytest.approx(
        0.8 * (0.01 + macs(space_sample) / 1e6), rel=1e-6)
    assert len(r["warnings"]) == 1 and "runs at x0.800 the table's times" in r["warnings"][0]
    assert "+25 % as it stood" in r["warnings"][0]
    json.dumps(r, allow_nan=False)

    # validated again: the stored scale is now right, no drift to report; the references are not in the retest
    two = validate_space(SMALL, FakeBackend(), 6, table_path=out, runs=5, rounds=2, progress=False)
    assert two["retest"]["n"] == 6 and two["n"] == 6
    assert two["calibration"]["previous_scale"] == pytest.approx(0.8) and abs(two["uncalibrated"]["bias_pct"]) < 1e-6
    assert two["warnings"] == []


def test_validate_without_references_or_a_writable_table(tmp_path, drifting_runtime, monkeypatch):
    bare = tmp_path / "bare.json"
    build_table(SMALL, FakeBackend(), bare, runs=5, progress=False, references=None)
    r = validate_space(SMALL, FakeBackend(), 3, table_path=bare, runs=5, rounds=1, progress=False)
    assert r["calibration"] is None and r["scale"] == 1.0  # the default: nothing to calibrate against
    with pytest.raises(TableError, match="holds no reference networks"):  # asked for explicitly
        validate_space(SMALL, FakeBackend(), 3, table_path=bare, runs=5, rounds=1, progress=False, recalibrate=True)

    out = tmp_path / "t.json"
    build_table(SMALL, FakeBackend(), out, runs=5, progress=False)
    drifting_runtime[0] = 1.1

    def read_only(self, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(LatencyTable, "save", read_only)
    r = validate_space(SMALL, FakeBackend(), 3, table_path=out, runs=5, rounds=1, progress=False)
    # the figures stand (measured, calibrated); the table keeps its old scale and the user is told
    assert r["scale"] == pytest.approx(1.1) and r["calibration"]["stored_in"] is None
    assert any(w.startswith(f"could not store the calibration in {out}") for w in r["warnings"])
    monkeypatch.undo()
    assert "calibration" not in LatencyTable.load(out).meta


def test_drift_warning():
    from jaxnas.latency.calibrate import drift_warning

    even = {"scale": 0.96, "ratio_p10": 0.95, "ratio_p90": 0.97, "uniform": True}
    assert drift_warning(even) is None  # within ±5 % of the table's times
    assert drift_warning({**even, "previous_scale": 0.9}) is not None  # 6.7 % off the scale it held
    assert "x0.860" in drift_warning({**even, "scale": 0.86})
    assert "unevenly" in drift_warning({**even, "ratio_p10": 0.8, "uniform": False})


def test_calibrate_cli_and_its_one_line_errors(tmp_path, drifting_runtime, capsys, monkeypatch):
    import yaml

    from jaxnas import cli
    from jaxnas.latency import builder

    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(builder, "resolve_backend", lambda backend, threads=1: FakeBackend())
    out = tmp_path / "t.json"
    build_table(TINY, FakeBackend(), out, runs=5, progress=False)
    drifting_runtime[0] = 1.25
    assert cli.main(["latency", "calibrate", str(space_file), "--table", str(out), "--runs", "5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["scale"] == pytest.approx(1.25) and got["n"] == 2  # min and max: TINY has no other architecture
    assert np.isclose(LatencyTable.load(out).meta["calibration"]["scale"], 1.25)

    bare = tmp_path / "bare.json"
    build_table(TINY, FakeBackend(), bare, runs=5, progress=False, references=None)
    for table, why in [(bare, "holds no reference networks"), (tmp_path / "none.json", "latency table not found")]:
        assert cli.main(["latency", "calibrate", str(space_file), "--table", str(table), "--runs", "5"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err


def test_references_are_timed_among_themselves_not_with_the_parts(tmp_path, drifting_runtime, monkeypatch):
    """Whole networks interleaved with whole networks, as a validation's samples and a search's candidates
    are: each build round times the parts in one interleaved call and the references in another."""
    from jaxnas.latency import builder

    calls, measure = [], builder.measure_models
    monkeypatch.setattr(builder, "measure_models", lambda be, items, **kw: (calls.append(list(kw["names"])),
                                                                           measure(be, items, **kw))[1])
    build_table(SMALL, FakeBackend(), tmp_path / "t.json", runs=5, rounds=1, progress=False)
    assert len(calls) == 2
    assert not any(k.startswith("ref:") for k in calls[0]) and calls[1] and all(k.startswith("ref:") for k in calls[1])
