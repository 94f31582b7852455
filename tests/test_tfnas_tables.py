"""TF-NAS latency tables (jaxnas.latency.tfnas_table, .predict): built for a space on a (fake) runtime, alone
and in-network, resumable and fingerprint-checked; the original's pickles imported; `jaxnas latency predict`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxnas.latency.tfnas_table as tt
from jaxnas.latency import Fingerprint, TableError, TimingStats, import_tfnas_pkl
from jaxnas.latency.spaces import NUM_OPS, TfnasArch, TfnasLut, get_tfnas_space, tfnas_block_key_and_mid
from jaxnas.latency.tfnas_table import build_tfnas_table, global_probes, grid_mids, probes, table_entries

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tfnas"
needs_tables = pytest.mark.skipif(not (REFERENCE / "latency_gpu.pkl").is_file(),
                                  reason=f"the original's TF-NAS latency pickles are not at {REFERENCE}")
SPACE = get_tfnas_space("tfnas-small", resolution=8, in_channels=1, width=0.1, last_channels=16, num_classes=3,
                        max_depths=(2, 2, 1, 1, 1, 1))


class FakeBackend:
    """A runtime whose networks cost base + Σ (scale * alone(block) + offset): blocks alone cost
    0.001 * mid + 0.02 ms; inside a network a block costs 0.9x that minus 0.012 ms (its call overhead)."""

    name = "onnxruntime"

    def __init__(self, base=0.3):
        self.base = base
        self.calls = 0
        self.seen = {}

    def fingerprint(self, batch_size=1):
        return Fingerprint(backend="onnxruntime", runtime="fake-ort 1.0", device="test CPU",
                           provider="CPUExecutionProvider", threads=1, batch_size=batch_size)

    @staticmethod
    def alone(mid):
        return 0.001 * mid + 0.02

    def network(self, spec):
        from jaxnas.latency.spaces import tfnas_spec_blocks
        total = self.base
        for _, block, shape in tfnas_spec_blocks(spec):
            key, mid = tfnas_block_key_and_mid(block, shape)
            total += 0.9 * self.alone(mid) - 0.012
        return total

    def measure(self, spec, input_shape, *, warmup, runs):
        self.calls += 1
        if len(spec.blocks) > 2:
            return TimingStats.from_samples([self.network(spec)] * 5)
        if spec.name in ("first_stem", "second_stem", "head"):
            ms = 0.1
        else:
            ms = self.alone(tfnas_block_key_and_mid(spec.blocks[0], (*spec.input_size, spec.in_channels))[1])
        self.seen[spec] = self.seen.get(spec, -1) + 1  # later rounds of a part are slower: the best is kept
        return TimingStats.from_samples([ms + 0.002 * self.seen[spec]] * 5)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(tt._Exporter, "__call__", lambda self, spec: spec)
    return FakeBackend()


def test_grid_and_entries():
    assert grid_mids(20, 64, 8) == [20, 24, 32, 40, 48, 56, 64]
    assert grid_mids(16, 16, 8) == [16]
    grids = table_entries(SPACE, 8)
    assert set(grids) == set(SPACE.table_keys())
    for key, (lo, hi) in SPACE.key_mid_ranges().items():
        assert grids[key][0] == lo and grids[key][-1] == hi


def test_alone_table(tmp_path, fake):
    t = build_tfnas_table(SPACE, fake, tmp_path / "t.json", context="alone", rounds=2, progress=False)
    assert t.meta["context"] == "alone" and t.meta["space_def"] == SPACE.to_dict()
    assert t.ms("base") == pytest.approx(0.3)  # three base parts of 0.1 ms, best rounds
    lut = TfnasLut.from_table(t)
    for key, mids in table_entries(SPACE, 8).items():
        for m in mids:
            assert t.ms(f"{key}:mid{m}") == pytest.approx(FakeBackend.alone(m))
        assert lut.ms(key, mids[0] + 3) == pytest.approx(FakeBackend.alone(mids[0] + 3))  # interpolated
    calls = fake.calls
    build_tfnas_table(SPACE, fake, tmp_path / "t.json", context="alone", rounds=2, progress=False)
    assert fake.calls == calls  # resumed: nothing left to measure
    with pytest.raises(TableError, match="context='alone' but 'network' is requested"):
        build_tfnas_table(SPACE, fake, tmp_path / "t.json", context="network", progress=False)
    with pytest.raises(TableError, match="batch_size"):
        build_tfnas_table(SPACE, fake, tmp_path / "t.json", context="alone", batch_size=4, progress=False)


def test_network_table_recovers_in_network_costs(tmp_path, fake):
    """Probes of a reference network determine the in-network base, scale and per-block offset: the table
    then predicts every network of the space exactly (the fake runtime is additive), alone it would not."""
    t = build_tfnas_table(SPACE, fake, tmp_path / "net.json", context="network", rounds=1, progress=False)
    fit = t.meta["network_fit"]["median"]
    assert fit["scale"] == pytest.approx(0.9) and fit["block_offset_ms"] == pytest.approx(-0.012)
    assert fit["base_ms"] == pytest.approx(0.3) and fit["rms_residual_ms"] < 1e-9
    assert t.meta["network_fit"]["clipped_entries"] == 0
    assert any(k.startswith("net:") for k in t) and any(k.startswith("alone:") for k in t)
    lut = TfnasLut.from_table(t)
    alone = TfnasLut.from_table(build_tfnas_table(SPACE, fake, tmp_path / "alone.json", context="alone", rounds=1,
                                                  progress=False))
    rng = np.random.default_rng(0)
    worst_alone = 0.0
    for _ in range(20):
        stages = SPACE.stage_blocks()
        depths = [int(rng.integers(1, len(s) + 1)) for s in stages]
        ops = [[int(rng.integers(NUM_OPS)) for _ in range(d)] for d in depths]
        mids = [[int(rng.integers(b.min_mid(o), b.max_mid(o) + 1)) for b, o in zip(s, os_)]
                for s, os_ in zip(stages, ops)]
        arch = TfnasArch(ops, mids)
        truth = fake.network(SPACE.build_spec(arch))
        assert lut.arch_latency(SPACE, arch) == pytest.approx(truth, abs=1e-6)
        worst_alone = max(worst_alone, abs(alone.arch_latency(SPACE, arch) - truth) / truth)
    assert worst_alone > 0.02
    n_probes = len(probes(SPACE))
    # stages of 1-2 blocks: half depth is depth 1, so 4 of the 8 uniform whole-network probes are kept, once
    # each, and the 8 random ones
    assert n_probes == 1 + sum(5 * (1 + (len(s) > 1)) + len(s) - 1 for s in SPACE.stage_blocks()) + 4 + 8
    assert len(set(probes(SPACE).values())) == n_probes
    assert t.meta["network_fit"]["median"]["networks"] == n_probes


def test_global_probes_span_depths_and_widths():
    """Whole-network probes at depth 1 and half depth, narrowest to widest: the fit's rows reach the block
    counts and widths of searched nets, not only the reference's neighbourhood."""
    g = global_probes(SPACE)
    stages = SPACE.stage_blocks()
    assert len(g) == 16
    for k in (f"net:random{i}" for i in range(8)):  # mixed: valid archs, widths on the grid of 8
        blocks = SPACE.arch_blocks(g[k])
        assert all(b.min_mid(op) <= mid <= b.max_mid(op) and mid % 8 == 0 for b, op, mid in blocks)
    assert len({g[f"net:random{i}"] for i in range(8)}) == 8 and global_probes(SPACE) == g  # fixed seeds
    counts = {k: len(SPACE.arch_blocks(a)) for k, a in g.items()}
    assert counts["net:all:depth1:k3e3:min"] == len(stages)
    assert counts["net:all:halfdepth:k5e6se:max"] == sum((len(s) + 1) // 2 for s in stages)
    a = g["net:all:depth1:k5e6se:max"]
    assert [m[0] for m in a.mids] == [s[0].max_mid(7) for s in stages] and all(o == (7,) for o in a.ops)
    a = g["net:all:depth1:k3e3:min"]
    assert [m[0] for m in a.mids] == [s[0].max_mid(0) // 2 for s in stages]
    assert {k for k in g if ":depth1:" in k} <= set(probes(SPACE))
    deep = get_tfnas_space("tfnas-small")  # stages of up to 4 blocks: all 8 are distinct probes
    assert set(global_probes(deep)) <= set(probes(deep)) and len(set(probes(deep).values())) == len(probes(deep))


def test_builder_and_oracle_dispatch_tfnas_spaces(tmp_path, fake, monkeypatch):
    from jaxnas.latency import builder
    monkeypatch.setattr(builder, "resolve_backend", lambda backend, threads=1: fake)
    t = builder.build_table(SPACE.to_dict(), "onnxruntime", tmp_path / "b.json", context="alone", rounds=1,
                            progress=False, batch_size=2)
    assert t.fingerprint["batch_size"] == 2 and "base" in t


@needs_tables
def test_shipped_pickles_import(tmp_path):
    from jaxnas.latency import load_tfnas_pkl
    raw = load_tfnas_pkl(REFERENCE / "latency_cpu.pkl")
    t = import_tfnas_pkl(REFERENCE / "latency_cpu.pkl", device="Xeon Gold 6130", batch_size=1)
    assert len(t) == 1 + sum(len(v) for k, v in raw.items() if k != "base")
    negative = [f"{k}:mid{m}" for k, v in raw.items() if k != "base" for m, ms in v.items() if ms < 0]
    assert negative and t.meta["clamped_negative"] == negative  # the extrapolated tiny mids, stored as 0
    assert all(t.ms(k) == 0.0 for k in negative)
    space = get_tfnas_space("tfnas-224")
    for key, (lo, hi) in space.key_mid_ranges().items():
        assert all(raw[key][m] > 0 for m in range(lo, hi + 1)), key  # never in the queried range


@needs_tables
def test_latency_predict_command(tmp_path, capsys):
    from jaxnas import cli
    from jaxnas.latency import load_tfnas_pkl
    space = get_tfnas_space("tfnas-224")
    arch = TfnasArch([[1, 5], [0, 3], [7], [2, 4, 6], [1], [3]], [[96, 150], [120, 240], [200], [300, 400, 440],
                                                                   [700], [1536]])
    spec = space.build_spec(arch, name="probe")
    spec.save(tmp_path / "arch.json")
    raw = load_tfnas_pkl(REFERENCE / "latency_gpu.pkl")
    hand = raw["base"] + sum(raw[b.key(op)][mid] for b, op, mid in space.arch_blocks(arch))
    assert cli.main(["latency", "predict", str(tmp_path / "arch.json"), "--table", str(REFERENCE / "latency_gpu.pkl"),
                     "--device", "Titan RTX", "--batch-size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_ms"] == pytest.approx(hand, rel=1e-9) and out["kind"] == "tfnas" and len(out["parts"]) == 10
    assert out["table_fingerprint"]["batch_size"] == 32
    # the same through an imported JSON table, and the human line
    import_tfnas_pkl(REFERENCE / "latency_gpu.pkl").save(tmp_path / "gpu.json")
    assert cli.main(["latency", "predict", str(tmp_path / "arch.json"), "--table", str(tmp_path / "gpu.json")]) == 0
    assert f"{hand:.4f} ms" in capsys.readouterr().out
    # a spec the table cannot price: one line naming the missing key
    small = get_tfnas_space("tfnas-small")
    small.build_spec(small.default_arch()).save(tmp_path / "small.json")
    assert cli.main(["latency", "predict", str(tmp_path / "small.json"), "--table", str(tmp_path / "gpu.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no entry for 'MBInvertedResBlock_32_8_0_16_k3_s2_relu'" in err


def _tfnas_json_table(space, path, *, backend="tfnas", device="Titan RTX", batch_size=1, drop=None):
    from jaxnas.latency import LatencyTable
    t = LatencyTable.new(Fingerprint(backend=backend, runtime="pytorch 1.1 (TF-NAS)", device=device,
                                     batch_size=batch_size), meta={"source": "test"})
    stats = lambda v: {"count": None, "mean": v, "std": None, "median": None, "p10": None, "p90": None}  # noqa: E731
    t.put("base", stats(1.0))
    for key, (lo, hi) in space.key_mid_ranges().items():
        if key != drop:
            for m in sorted({lo, hi, *range(8, hi + 1, 8)}):
                t.put(f"{key}:mid{m}", stats(0.01 * m))
    t.save(path)


@pytest.mark.parametrize("case", ["target", "key", "device", "batch"])
def test_search_command_refuses_bad_inputs_before_training(tmp_path, capsys, case):
    """`jaxnas search` with a target outside the table, a table lacking a key, a table of another device or
    batch size: one line `error: ...`, exit 2, nothing trained."""
    import yaml

    from jaxnas import cli
    space = get_tfnas_space("tfnas-small", resolution=8, in_channels=1, num_classes=10, width=0.1, last_channels=16,
                            max_depths=(1, 1, 1, 1, 1, 1))
    missing = space.blocks()[3].key(5)
    kw = {"target": {}, "key": {"drop": missing}, "device": {"backend": "onnxruntime", "device": "another CPU"},
          "batch": {"batch_size": 32}}[case]
    _tfnas_json_table(space, tmp_path / "table.json", **kw)
    cfg = {"name": "bad", "data": {"source": "embedded", "image_size": 8, "holdout": 0.25, "limit_train": 200,
                                   "batch_size": 16},
           "search": {"method": "tfnas", "target_latency_ms": 100.0 if case == "target" else 2.0,
                      "args": {"space": "tfnas-small", "width": 0.1, "last_channels": 16,
                               "max_depths": [1, 1, 1, 1, 1, 1], "lookup_table": str(tmp_path / "table.json")}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    code = cli.main(["search", str(tmp_path / "bad.yaml"), "--workdir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    want = {"target": "target_latency_ms 100 is outside what the table reaches", "key": f"no entry for '{missing}'",
            "device": "measured on another setup", "batch": "per batch of 32"}[case]
    assert want in err[0]
    assert not (tmp_path / "run" / "search").exists()
