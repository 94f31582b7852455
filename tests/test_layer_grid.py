"""Per-layer latency grids (latency.layer_grid) with a fake exporter/backend, and their use by DMCP."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxnas import zoo
from jaxnas.spec import ArchSpec, Block, Conv, Head
from jaxnas.latency import LatencyTable, TableError, TimingStats
from jaxnas.latency.layer_grid import build_layer_grid, grid_layers, grid_points, layer_spec


def tiny_spec() -> ArchSpec:
    blocks = (Block("conv", (Conv(8, (3, 3), act="relu6", width="stem"),), name="stem"),
              zoo.mbv2_block(8, 16, 12, 2, in_group="stem", mid_group="m", out_group="o", name="b1"),
              zoo.resnet_basic(12, 16, 1, in_group="o", mid_group="r", out_group="ro", name="b2"))
    return ArchSpec("tiny", blocks, Head(3), (8, 8), 3)


def fake_ms(desc: dict) -> float:
    """A latency that is bilinear in (cin, cout) per layer (linear in c for depthwise) plus a per-model
    overhead."""
    if desc.get("dw"):
        return 0.01 + 1e-4 * desc["cout"] * desc["k"] + 3e-3 * desc["cout"]
    return 0.01 + 1e-4 * desc["cin"] * desc["cout"] * desc["k"] + 1e-3 * desc["cin"] + 2e-3 * desc["cout"]


class FakeBackend:
    name = "fake"

    def __init__(self, device: str = "cpu0"):
        self.device, self.calls = device, 0

    def fingerprint(self, batch_size: int = 1) -> dict:
        return {"backend": "fake", "runtime": "1.0", "threads": 1, "batch_size": batch_size, "device": self.device}

    def measure(self, path, input_shape, *, warmup: int = 0, runs: int = 1) -> TimingStats:
        self.calls += 1
        desc = json.loads(open(path).read())
        assert list(input_shape) == [1, *desc["in_shape"]]
        return TimingStats.from_samples([desc["ms"]] * 3)


def fake_exporter(spec: ArchSpec, variables, path) -> None:
    """Writes the spec's input shape and a synthetic latency instead of an ONNX model."""
    if len(spec.blocks) == 1 and spec.head.num_classes == 0:
        conv = spec.blocks[0].layers[0]
        ms = fake_ms({"cin": spec.in_channels, "cout": conv.out, "k": conv.kernel[0] * conv.kernel[1],
                      "dw": conv.depthwise})
    else:  # a whole network: the sum of its convs' synthetic latencies, minus shared overheads
        from jaxnas.supernet import conv_sites
        sites, _ = conv_sites(spec, frozenset())
        ms = 0.05 + sum(fake_ms({"cin": s.cin[1], "cout": s.cout[1], "k": s.conv.kernel[0] * s.conv.kernel[1],
                                 "dw": s.conv.depthwise}) - 0.01 for s in sites)
    with open(path, "w") as f:
        json.dump({"in_shape": [*spec.input_size, spec.in_channels], "ms": ms}, f)


def test_grid_points():
    assert grid_points(32) == [3, 8, 16, 24, 32]
    assert grid_points(1280) == [128, 320, 640, 960, 1280]
    assert grid_points(8, step=0.5, min_fraction=0.1) == [1, 4, 8]
    assert grid_points(4, step=1.0) == [1, 4]
    assert grid_points(144, multiple=8) == [8, 32, 72, 112, 144]  # 36 and 108 would be unaligned
    assert grid_points(20, multiple=8) == grid_points(20)  # C not a multiple: unchanged


def test_grid_layers_order_shapes_and_grids():
    spec = tiny_spec()
    layers = grid_layers(spec)
    names = [(r["block"], r["layer"]) for r in layers]
    assert names == [(0, "conv0"), (1, "conv0"), (1, "conv1"), (1, "conv2"), (2, "conv0"), (2, "conv1"),
                     (2, "shortcut")]
    assert layers[0]["cin_grid"] == [3] and layers[0]["in_shape"] == [8, 8, 3]
    dw = layers[2]
    assert dw["depthwise"] and dw["cin_grid"] == dw["cout_grid"] == grid_points(16)
    sc = layers[-1]
    assert sc["in_shape"] == [4, 4, 12] and sc["out"] == 16  # the shortcut sees the block input
    one = layer_spec(spec, layers[1], 5, 7)
    assert one.in_channels == 5 and one.blocks[0].layers[0].out == 7 and one.head.num_classes == 0
    # MobileNetV2 (small input): 52 convs, the first has 3 fixed input channels
    mb = grid_layers(zoo.mobilenet_v2(width=1.0, small_input=True, resolution=32, num_classes=10))
    assert len(mb) == 52 and mb[0]["cin_grid"] == [3] and mb[-1]["cout_grid"][-1] == 1280


def test_build_resume_refuse_and_predict(tmp_path):
    from jaxnas.methods.dmcp import DMCPSpace, LatencyModel
    spec = tiny_spec()
    path = tmp_path / "grid.json"
    be = FakeBackend()
    table = build_layer_grid(spec, be, out_path=path, exporter=fake_exporter, log=None)
    n_layers = sum(len(r["cout_grid"]) if r["depthwise"] else len(r["cin_grid"]) * len(r["cout_grid"])
                   for r in grid_layers(spec))
    assert len(table) <= n_layers + 5 and "network:full" in table and "network:min" in table
    assert be.calls == len(table)
    assert LatencyTable.load(path).to_dict() == table.to_dict()
    # resume: nothing is measured again
    be2 = FakeBackend()
    again = build_layer_grid(spec, be2, out_path=path, exporter=fake_exporter, log=None)
    assert be2.calls == 0 and len(again) == len(table)
    # another device, or another grid for the same file, is refused
    with pytest.raises(TableError):
        build_layer_grid(spec, FakeBackend("cpu1"), out_path=path, exporter=fake_exporter, log=None)
    with pytest.raises(TableError):
        build_layer_grid(spec, FakeBackend(), out_path=path, grid_fraction_step=0.5, exporter=fake_exporter,
                         log=None)
    # the synthetic latency is bilinear per layer, so interpolation + calibration is exact everywhere
    cal = table.meta["calibration"]["median"]
    assert cal["scale"] == pytest.approx(1.0) and cal["constant_ms"] == pytest.approx(0.05 - 0.01 * 7)
    space = DMCPSpace(spec, min_width=0.25, max_width=1.0, width_offset=0.25)
    lm = LatencyModel(spec, space.prunable, table)
    smooth = LatencyModel(spec, space.prunable, table, smooth=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ks = {g: int(rng.integers(0, space.layouts[g].n + 1)) for g in space.prunable}
        ch = space.channels_of(ks)
        from jaxnas.methods.dmcp import materialize_k
        from jaxnas.models import build_model, init_variables
        sub, v = materialize_k(space, init_variables(build_model(spec), 0), ks)
        fake_exporter(sub, v, tmp_path / "sub.json")
        measured = json.loads((tmp_path / "sub.json").read_text())["ms"]
        assert lm.exact(ch) == pytest.approx(measured, rel=1e-6)
        assert smooth.exact(ch) == pytest.approx(measured, rel=1e-6)  # a bilinear grid is its own fit
        assert float(lm.expected({g: float(c) for g, c in ch.items()})) == pytest.approx(measured, rel=1e-5)


def test_latency_model_rejects_other_supernet(tmp_path):
    from jaxnas.methods.dmcp import DMCPSpace, LatencyModel, SearchError, build_cost
    from jaxnas.methods.dmcp.cost import CostTarget
    table = build_layer_grid(tiny_spec(), FakeBackend(), out_path=tmp_path / "g.json", exporter=fake_exporter,
                             log=None)
    other = tiny_spec().with_input(16)
    space = DMCPSpace(other)
    with pytest.raises(Exception, match="rebuild"):
        LatencyModel(other, space.prunable, table)
    with pytest.raises(SearchError, match="does not fit"):
        build_cost(space, CostTarget("latency_ms", 1.0), table)


@pytest.mark.slow
def test_real_onnxruntime_grid(tmp_path):
    """One conv layer exported with jax2onnx and timed on onnxruntime (1 thread)."""
    pytest.importorskip("onnxruntime")
    spec = ArchSpec("one", (Block("conv", (Conv(8, (3, 3), act="relu", width="a"),)),), Head(2), (8, 8), 3)
    table = build_layer_grid(spec, "onnxruntime", out_path=tmp_path / "g.json", grid_fraction_step=0.5,
                             warmup=2, runs=5, log=None)
    assert table.backend == "onnxruntime"
    assert all(table.ms(k) > 0 for k in table)


def test_latency_target_sampling_and_gradient(tmp_path):
    """With a latency table the chosen architecture's predicted latency is within 3 % of an ms target."""
    import jax

    from jaxnas.methods.dmcp import DMCPArgs, DMCPSpace, build_cost, check_reachable
    from jaxnas.methods.dmcp.cost import CostTarget
    from jaxnas.methods.dmcp.run import choose_architecture
    spec = tiny_spec()
    table = build_layer_grid(spec, FakeBackend(), out_path=tmp_path / "g.json", exporter=fake_exporter, log=None)
    space = DMCPSpace(spec, min_width=0.25, max_width=1.0, width_offset=0.125)
    probe = build_cost(space, CostTarget("latency_ms", 1.0), table)
    lo, hi = probe.exact(space.channels_of(space.min_k())), probe.exact(space.channels_of(space.full_k()))
    target = lo + 0.6 * (hi - lo)
    cost = build_cost(space, CostTarget("latency_ms", target), table)
    assert check_reachable(space, cost) == (lo, hi)
    rng = np.random.default_rng(3)
    alphas = {g: rng.normal(0.5, 1.0, space.layouts[g].n).astype(np.float32) for g in space.prunable}
    ks, info = choose_architecture(space, cost, alphas, DMCPArgs(), seed=0)
    assert abs(info["chosen"]["predicted_latency_ms"] - target) / target <= 0.03
    # the ms loss pulls the expected latency towards the target from above
    low = build_cost(space, CostTarget("latency_ms", lo * 1.05), table)
    a = space.init_alphas(2.0)
    g = jax.grad(lambda al: low.loss(space.expected_channels(al)))(a)
    assert all(np.all(np.asarray(v) >= 0) for v in g.values()) and any(np.any(np.asarray(v) > 0) for v in g.values())


def test_layer_entries_use_the_entry_protocol_and_networks_the_given_one(tmp_path, monkeypatch):
    """Layer entries are timed by `entry_protocol` (at least +-3 %, at most 0.2 s, 20 ms rounds): the table
    protocol's +-1 % took its 3 s cap on nearly every entry; the two networks keep the given protocol."""
    from jaxnas.latency import builder
    from jaxnas.latency.layer_grid import entry_protocol
    from jaxnas.latency.timing import DEFAULT_PROTOCOL

    given = DEFAULT_PROTOCOL.replace(rel_ci=0.01, max_time_s=3.0)
    real, seen = builder.measure_models, []

    def recording(backend, items, *, protocol, warmup, runs, **kw):
        seen.append((len(items), protocol))
        return real(backend, items, protocol=None, warmup=warmup, runs=1, **kw)

    monkeypatch.setattr(builder, "measure_models", recording)
    table = build_layer_grid(tiny_spec(), FakeBackend(), out_path=tmp_path / "g.json", exporter=fake_exporter,
                             protocol=given, log=None)
    (n_layers, layer_p), (n_nets, net_p) = seen
    assert n_layers == len(table) - 5 and n_nets == 5
    assert net_p == given
    assert layer_p == entry_protocol(given)
    assert (layer_p.rel_ci, layer_p.max_time_s, layer_p.round_s, layer_p.warmup_s) == (0.03, 0.2, 0.02, 0.02)
    # a looser or shorter protocol is never tightened; the cap is a parameter (build_layer_grid's too)
    loose = given.replace(rel_ci=0.05, max_time_s=0.1, round_s=0.01, warmup_s=0.01)
    assert entry_protocol(loose) == loose
    assert entry_protocol(given, 1.0).max_time_s == 1.0
    seen.clear()
    build_layer_grid(tiny_spec(), FakeBackend(), out_path=tmp_path / "g1.json", exporter=fake_exporter,
                     protocol=given, entry_max_time_s=0.5, log=None)
    assert seen[0][1].max_time_s == 0.5 and seen[1][1] == given


def convex_exporter(spec: ArchSpec, variables, path) -> None:
    """As `fake_exporter`, but a whole network's latency is a convex function of its layers' sum (as on
    onnxruntime, where small layers timed alone pay per-call costs the network does not)."""
    fake_exporter(spec, variables, path)
    desc = json.loads(open(path).read())
    if not (len(spec.blocks) == 1 and spec.head.num_classes == 0):
        desc["ms"] = 0.02 + 4.0 * desc["ms"] ** 2
    with open(path, "w") as f:
        json.dump(desc, f)


def test_calibration_networks_make_the_map_piecewise_linear_through_them(tmp_path):
    from jaxnas.costmodel import CALIBRATION_NETWORKS, LatencyModel, calibration_network, fraction_point
    from jaxnas.latency.layer_grid import calibration_network_spec
    from jaxnas.models import build_model, init_variables
    from jaxnas.supernet import width_groups
    spec = tiny_spec()
    table = build_layer_grid(spec, FakeBackend(), out_path=tmp_path / "g.json", exporter=convex_exporter, log=None)
    assert all(k in table for k in CALIBRATION_NETWORKS)
    cal = table.meta["calibration"]["median"]
    assert len(cal["knots"]) == 5 and [k[0] for k in cal["knots"]] == sorted(k[0] for k in cal["knots"])
    prunable = frozenset(width_groups(spec))
    lm = LatencyModel(spec, prunable, table)
    smooth = LatencyModel(spec, prunable, table, smooth=True)
    variables = init_variables(build_model(spec), 0)
    for key, fraction in CALIBRATION_NETWORKS.items():
        sub, v = calibration_network_spec(spec, variables, fraction)
        # by key, as the grid builds them and MetaPruning's check rebuilds them: the supernet itself for full
        by_key, _ = calibration_network(key, spec, variables)
        assert (by_key is spec) == (key == "network:full") and width_groups(by_key) == width_groups(sub)
        groups = width_groups(spec)
        ch = {g: grid_points(c)[fraction_point(grid_points(c), fraction)] for g, c in groups.items()}
        assert width_groups(sub) == ch
        # exact at every calibration network (the bilinear grid is its own smooth fit)
        assert lm.exact(ch) == pytest.approx(table.ms(key), rel=1e-6)
        assert smooth.exact(ch) == pytest.approx(table.ms(key), rel=1e-6)
        assert float(lm.expected({g: float(c) for g, c in ch.items()})) == pytest.approx(table.ms(key), rel=1e-5)
    # the line through the full and the minimal network misses the middle of a convex map
    s_half = sum(table.ms(f"{r['key']}:{r['cin_grid'][fraction_point(r['cin_grid'], 0.5)]}x"
                          f"{r['cout_grid'][fraction_point(r['cout_grid'], 0.5)]}") for r in table.meta["layers"])
    assert cal["constant_ms"] + cal["scale"] * s_half > 1.1 * table.ms("network:f0.5")


def test_calibration_knots_stay_monotone_and_extrapolate_linearly():
    import jax
    from jaxnas.costmodel import calibration_knots, piecewise_linear
    knots = calibration_knots([(3.0, 2.0), (1.0, 1.0), (2.0, 1.2), (2.5, 1.1), (4.0, 4.0)])
    assert knots == [[1.0, 1.0], [2.0, 1.2], [3.0, 2.0], [4.0, 4.0]]  # (2.5, 1.1) would slope down
    xs = np.array([0.0, 1.0, 1.5, 2.0, 3.0, 3.5, 5.0])
    want = np.array([0.8, 1.0, 1.1, 1.2, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(piecewise_linear(xs, knots, np), want, rtol=1e-12)
    grad = jax.grad(lambda x: piecewise_linear(x, knots))
    assert float(grad(1.5)) == pytest.approx(0.2) and float(grad(3.5)) == pytest.approx(2.0)
