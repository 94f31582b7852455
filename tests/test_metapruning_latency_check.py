"""MetaPruning's end-to-end latency check against the grid's calibration network (drift cancels)."""
from types import SimpleNamespace

import pytest

from jaxnas import spec as S
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.constraint import Budget
from jaxnas.methods.metapruning.latency_check import GridReference, grid_reference, measure_against, row_ms
from jaxnas.methods.metapruning.pipeline import Setup, pick_within_latency
from jaxnas.methods.metapruning.space import get_space


class _Grid:
    """What `grid_reference` reads of a layer grid: its calibration networks' latencies and its meta."""

    def __init__(self, ms: dict[str, float], **meta):
        self._ms, self.meta = ms, {"grid_fraction_step": 0.25, "min_fraction": 0.1, **meta}

    def __contains__(self, key):
        return key in self._ms

    def ms(self, key, stat="median"):
        return self._ms[key] * (0.9 if stat == "p10" else 1.0)


def _space():
    return get_space("mobilenet_v2", resolution=28, num_classes=10, in_channels=1, small_input=True,
                     channel_multiple=8)


def test_grid_reference_is_the_calibration_network_nearest_the_target_as_the_grid_built_it():
    from jaxnas.costmodel import calibration_network_spec
    from jaxnas.models import build_model, init_variables

    widest = _space().max_spec()
    grid = _Grid({"network:min": 0.11, "network:f0.25": 0.18, "network:f0.5": 0.35, "network:f0.75": 0.65,
                  "network:full": 1.31}, channel_multiple=8)
    ref = grid_reference(grid, widest, 0.30, "p10")   # |0.9 x 0.35 - 0.30| < |0.9 x 0.18 - 0.30|
    assert ref.name == "network:f0.5" and ref.grid_ms == pytest.approx(0.9 * 0.35)
    built, _ = calibration_network_spec(widest, init_variables(build_model(widest), 0), 0.5, step=0.25,
                                        min_fraction=0.1, multiple=8)
    assert ref.spec == built and S.macs(widest) > S.macs(ref.spec) > 0
    assert grid_reference(grid, widest, 2.0).name == "network:full"
    assert grid_reference(grid, widest, 2.0).spec == widest
    assert grid_reference(grid, widest, 0.0).name == "network:min"


def test_measure_against_scales_the_per_round_ratio_by_the_reference_grid_latency():
    """The machine slows 1.0 -> 1.5x over three rounds; the candidate is half the reference in each round.
    By hand: grid_ms = 0.5 x 0.8 = 0.4; measured (median) 0.6; reference now 1.2, drift 1.2 / 0.8."""
    st = lambda v: SimpleNamespace(p10=v, median=v + 1)  # noqa: E731
    calls = []

    def compare(a, b):
        calls.append((a, b))
        return SimpleNamespace(rounds=((st(1.0), st(1.2), st(1.5)), (st(0.5), st(0.6), st(0.75))))

    ref = GridReference("network:f0.5", "ref-spec", "ref-vars", 0.8)
    row = measure_against(compare, ref, "p10")("candidate-spec")
    assert calls == [(("ref-spec", "ref-vars"), ("candidate-spec", None))]
    assert row["grid_ms"] == pytest.approx(0.4) and row["measured_ms"] == pytest.approx(0.6)
    assert row["reference_ms"] == pytest.approx(1.2) and row["drift"] == pytest.approx(1.5)
    assert row["reference"] == "network:f0.5" and row_ms(row) == pytest.approx(0.4)
    assert row_ms({"measured_ms": 0.7}) == 0.7


def test_a_slower_machine_at_check_time_does_not_fail_a_candidate_the_grid_predicts_right(tmp_path):
    """The machine runs 1.3x slower at check time than when the grid was timed, the reference network
    too.  Alone, the best candidate (predicted at the target) measures 1.3x the target and the search would
    run again; against the reference it measures the target and is kept, with no second search."""
    space = _space()
    predicted = lambda g: S.macs(space.to_spec(g)) / 1e7  # noqa: E731  ms, the grid's prediction
    u = {k: space.uniform(k) for k in range(31)}
    target = predicted(u[22])
    ref = GridReference("network:f0.5", "ref", None, 1.0)

    def compare(a, b):  # 3 rounds, the machine 1.3x slower in each, both models alike
        ms = predicted(next(k for k in u.values() if space.to_spec(k) == b[0]))
        return SimpleNamespace(rounds=(tuple(SimpleNamespace(median=1.3 * 1.0) for _ in range(3)),
                                       tuple(SimpleNamespace(median=1.3 * ms) for _ in range(3))))

    def search_again(budget):
        raise AssertionError("the check searched again although the grid predicted the candidate right")

    setup = Setup(MetaPruningArgs(verify_latency=2), space, Budget("latency_ms", target, 0.9 * target), predicted,
                  (predicted(u[0]), predicted(u[30])), 0, 1)
    first = SimpleNamespace(top=[(u[22], 30.0), (u[21], 30.5)])
    genes, err, rows, again = pick_within_latency(setup, first, search_again, measure_against(compare, ref),
                                                  tmp_path, lambda m: None)
    assert genes == u[22] and err == 30.0 and again is None and len(rows) == 1
    assert rows[0]["measured_ms"] == pytest.approx(1.3 * target) and rows[0]["grid_ms"] == pytest.approx(target)
    assert rows[0]["drift"] == pytest.approx(1.3)


def test_latency_check_fn_times_a_candidate_against_the_grid_network_on_onnxruntime():
    """The check the pipeline builds, on the real runtime (fixed runs: 3 alternating rounds): the row's
    grid_ms is the median per-round candidate / reference ratio times the reference's grid latency."""
    from jaxnas.config import LatencyConfig
    from jaxnas.latency.oracle import RuntimeOracle

    space = get_space("mobilenet_v2", resolution=16, num_classes=10, in_channels=1, small_input=True,
                      channel_multiple=8)
    grid = _Grid({"network:min": 0.05, "network:f0.5": 0.2, "network:full": 0.5}, channel_multiple=8)
    ctx = SimpleNamespace(oracle=RuntimeOracle(LatencyConfig(warmup=2, runs=5), log=None, compare_rounds=3))
    setup = Setup(MetaPruningArgs(verify_latency=1, latency_stat="p10"), space, Budget("latency_ms", 0.45),
                  SimpleNamespace(table=grid), (0.05, 0.5), 0, 1)
    from jaxnas.methods.metapruning.pipeline import latency_check_fn

    row = latency_check_fn(ctx, setup)(space.to_spec(space.uniform(0)))
    assert row["reference"] == "network:full" and row["reference_grid_ms"] == pytest.approx(0.45)
    assert row["measured_ms"] > 0 and row["reference_ms"] > row["measured_ms"]  # the narrowest vs the widest
    assert 0 < row["grid_ms"] < 0.45 and row["drift"] == pytest.approx(row["reference_ms"] / 0.45)
    # Without the grid (or with verify_against_grid off): the candidate alone, in ms.
    alone = Setup(MetaPruningArgs(verify_latency=1, verify_against_grid=False), space, Budget("latency_ms", 0.45),
                  SimpleNamespace(table=grid), (0.05, 0.5), 0, 1)
    assert latency_check_fn(ctx, alone)(space.to_spec(space.uniform(0))) > 0
