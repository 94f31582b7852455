"""Search spaces, block keys, and the resumable, fingerprint-checked lookup-table builder."""
from __future__ import annotations

import json

import numpy as np
import pytest

import jaxnas.latency.builder as builder
from jaxnas.latency import Fingerprint, LatencyTable, TableError, TimingStats
from jaxnas.latency.builder import build_table, grid_parts, reference_archs
from jaxnas.latency.spaces import BlockConfig, SearchSpace, SpaceError, load_space, space_names

TINY = {
    "name": "tiny", "resolution": 8, "in_channels": 3, "act": "relu6",
    "kernels": [3], "expansions": [2], "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "stages": [{"channels": 8, "blocks": 2, "stride": 2, "depths": [1, 2]}],
    "last": {"channels": 16}, "head": {"num_classes": 4},
}

SMALL = {  # more choices, for enumeration tests only (nothing is measured)
    "name": "small", "resolution": 16, "kernels": [3, 5], "expansions": [1, 3], "se": [False, True],
    "widths": [0.5, 1.0], "stem": {"channels": 16, "stride": 2},
    "stages": [{"channels": 16, "blocks": 1, "stride": 1, "kernels": [3], "expansions": [1], "se": [False]},
               {"channels": 24, "blocks": 3, "stride": 2, "depths": [1, 2, 3]},
               {"channels": 32, "blocks": 2, "stride": 1, "depths": [2]}],
    "last": {"channels": 64}, "head": {"num_classes": 10},
}


class FakeBackend:
    """Deterministic 'runtime': latency = f(MACs of the exported spec); counts its calls."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, runtime: str = "fake-ort 1.0"):
        self.threads = threads
        self.runtime = runtime
        self.calls = 0

    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        return Fingerprint(backend="onnxruntime", runtime=self.runtime, device="test CPU",
                           provider="CPUExecutionProvider", threads=self.threads, batch_size=batch_size)


def install_fake_runtime(monkeypatch, latency_ms):
    """Skip export + runtime: `FakeBackend.measure` returns `latency_ms(spec, n)` ms (n: this call's
    1-based count).  Returns the list of measured spec names."""
    calls = []

    def measure(self, spec, input_shape, *, warmup, runs):
        calls.append(spec.name)
        return TimingStats.from_samples([latency_ms(spec, len(calls))] * 5)

    monkeypatch.setattr(builder, "export_for", lambda spec, backend, directory, **kw: spec)
    monkeypatch.setattr(FakeBackend, "measure", measure, raising=False)
    return calls


@pytest.fixture
def fake_measure(monkeypatch):
    """An entry's latency is 0.01 ms + MACs / 1e6 (rounds differ); records what was measured."""
    from jaxnas.spec import macs

    return install_fake_runtime(monkeypatch, lambda spec, n: (0.01 + macs(spec) / 1e6) * (1 + 0.1 * (n % 3)))


# ------------------------------------------------------------------ keys / spaces
def test_key_is_stable_and_readable():
    c = BlockConfig("mbconv", 16, 16, 24, 32, 5, 2, 144, "relu6", 0)
    assert c.key == "mbconv_h16_w16_c24_o32_k5_s2_e6_relu6_se0"
    assert BlockConfig("mbconv", 16, 16, 24, 32, 5, 2, 144, "relu6", 0).key == c.key  # value semantics
    assert BlockConfig("mbconv", 8, 8, 16, 16, 3, 1, 16, "relu6", 0).key == "mbconv_h8_w8_c16_o16_k3_s1_e1_relu6_se0"
    assert BlockConfig("mbconv", 8, 8, 16, 16, 3, 1, 72, "relu6", 24).key.endswith("_e4.5_relu6_se24")
    assert "_m50_" in BlockConfig("mbconv", 8, 8, 24, 24, 3, 1, 50, "relu6", 0).key
    assert BlockConfig("conv", 32, 32, 3, 32, 3, 1).key == "conv_h32_w32_c3_o32_k3_s1_relu6"
    assert BlockConfig("head", 2, 2, 320, 1280, num_classes=10).key == "head_h2_w2_c320_o1280_relu6_n10"


def test_builtin_spaces_and_unknown_name():
    assert {"mbv2-small", "mbv2-224"} <= set(space_names())
    small = load_space("mbv2-small")
    assert small.resolution == (32, 32) and len(small.unique_blocks()) == 45
    spec = small.sample(0)
    assert spec.input_size == (32, 32) and spec.blocks[0].layers[0].stride == 1  # small-input stem
    big = load_space("mbv2-224")
    assert big.resolution == (224, 224) and big.stem_stride == 2
    assert {b.kernel for b in big.unique_blocks()} == {3, 5, 7}
    with pytest.raises(SpaceError, match="did you mean 'mbv2-small'.*mbv2-224"):
        load_space("mbv2-smal")
    with pytest.raises(ValueError, match="unknown search space"):
        load_space("resnet-space")


def test_space_from_yaml_and_hash(tmp_path):
    import yaml

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    s = load_space(p)
    assert s.name == "tiny" and s.hash == SearchSpace(TINY).hash
    assert s.hash != SearchSpace({**TINY, "kernels": [3, 5]}).hash
    with pytest.raises(SpaceError, match="unknown search-space key"):
        SearchSpace({**TINY, "kernel": [3]})
    with pytest.raises(SpaceError, match="exceeds"):
        SearchSpace({**TINY, "stages": [{"channels": 8, "blocks": 1, "stride": 2, "depths": [2]}]})


@pytest.mark.parametrize("definition", [TINY, SMALL])
def test_unique_blocks_equal_blocks_seen_in_samples(definition):
    space = SearchSpace(definition)
    unique = {b.key for b in space.unique_blocks()}
    seen, stems, heads = set(), set(), set()
    rng = np.random.default_rng(0)
    for _ in range(400):
        parts = space.decompose(space.sample(rng))
        stems.add(parts[0].key)
        heads.add(parts[-1].key)
        seen |= {p.key for p in parts[1:-1]}
    assert seen == unique
    assert {p.key for p in space.unique_parts()} == unique | stems | heads


def test_decompose_matches_the_built_architecture():
    space = SearchSpace(SMALL)
    arch = {"width": 1.0, "depths": [1, 2, 2],
            "blocks": [[[3, 1, False]], [[5, 3, True], [3, 1, False]], [[3, 3, False], [5, 1, True]]]}
    spec = space.build(arch)
    parts = space.decompose(spec)
    assert [p.kind for p in parts] == ["conv"] + ["mbconv"] * 5 + ["head"]
    assert parts[0].key == "conv_h16_w16_c3_o16_k3_s2_relu6"
    b = parts[2]  # stage 2, first block: stride 2, 16 -> 24, k5, e3, SE
    assert (b.h, b.cin, b.cout, b.kernel, b.stride, b.mid, b.se > 0) == (8, 16, 24, 5, 2, 48, True)
    assert parts[3].residual and parts[3].cin == parts[3].cout == 24 and parts[3].stride == 1
    assert parts[-1].key == "head_h4_w4_c32_o64_relu6_n10"
    # every part rebuilds the spec's own block
    for p, blk in zip(parts[:-1], spec.blocks[:-1]):
        assert p.to_block(name=blk.name) == blk
    # a part exported alone has the same MACs as inside the network
    from jaxnas.spec import analyze

    cost = analyze(spec)
    for p, bc in zip(parts[1:-1], cost.blocks[1:-1]):
        assert p.macs() == bc.macs
    with pytest.raises(SpaceError, match="not in the space"):
        space.build({**arch, "blocks": [[[7, 1, False]], *arch["blocks"][1:]]})


def test_zoo_mobilenet_v2_small_is_in_mbv2_small():
    from jaxnas import zoo

    space = load_space("mbv2-small")
    spec = zoo.mobilenet_v2(num_classes=10, resolution=32, small_input=True)
    keys = {p.key for p in space.unique_parts()}
    parts = space.decompose(spec)
    assert len(parts) == len(spec.blocks) and {p.key for p in parts} <= keys


def test_extreme_and_reference_archs_are_deterministic():
    space = SearchSpace(SMALL)
    refs = reference_archs(space, 3, seed=1)
    assert list(refs) == ["min", "max", "r0", "r1", "r2"] and refs == reference_archs(space, 3, seed=1)
    assert refs["max"]["depths"] == [1, 3, 2] and refs["min"]["depths"] == [1, 1, 2]
    from jaxnas.spec import macs

    assert macs(space.build(refs["min"])) < macs(space.build(refs["max"]))


# ------------------------------------------------------------------ building
def test_build_real_roundtrip(tmp_path):
    """One real build on onnxruntime: every part + references, JSON with schema/units/fingerprint/meta."""
    out = tmp_path / "tiny.json"
    table = build_table(TINY, "onnxruntime", out, warmup=2, runs=5, references=0, progress=False)
    space = SearchSpace(TINY)
    keys = {p.key for p in space.unique_parts()} | {"ref:min", "ref:max"}
    assert set(table) == keys and len(table) == 6
    raw = json.loads(out.read_text())
    assert raw["schema_version"] == 1 and raw["units"] == "ms" and raw["backend"] == "onnxruntime"
    assert raw["fingerprint"]["threads"] == 1 and raw["fingerprint"]["runtime"].startswith("onnxruntime")
    assert raw["meta"]["space"] == "tiny" and raw["meta"]["space_hash"] == space.hash
    assert raw["meta"]["resolution"] == [8, 8]
    for e in raw["entries"].values():
        assert {"count", "mean", "std", "median", "p10", "p90"} <= set(e) and e["median"] > 0
        assert e["count"] == 5 * e["meta"]["rounds"]  # references: best of 3 rounds
    assert LatencyTable.load(out).to_dict() == table.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json"]  # no temp files left


def test_resume_after_interruption_measures_only_the_rest(tmp_path, fake_measure):
    out = tmp_path / "t.json"
    be = FakeBackend()

    class Stop(Exception):
        pass

    def stop_after(k):
        def cb(key, done, total):
            if done >= k:
                raise Stop
        return cb

    with pytest.raises(Stop):
        build_table(TINY, be, out, references=1, rounds=1, progress=False, on_entry=stop_after(3))
    assert len(fake_measure) == 3 and len(LatencyTable.load(out)) == 3
    done_first = list(LatencyTable.load(out))
    table = build_table(TINY, be, out, references=1, rounds=1, progress=False)
    assert list(reference_archs(SearchSpace(TINY), 1)) == ["min", "max"]  # r0 repeats one: deduplicated
    assert len(table) == 6 and len(fake_measure) == 6  # 4 parts + min + max: only 3 new measurements
    assert list(table)[:3] == done_first
    build_table(TINY, be, out, references=1, rounds=1, progress=False)
    assert len(fake_measure) == 6  # complete: nothing re-measured


def test_rounds_are_passes_and_resume_mid_round(tmp_path, fake_measure):
    out = tmp_path / "t.json"
    be = FakeBackend()

    def stop_after(k):
        def cb(key, done, total):
            assert total == 12
            if done >= k:
                raise KeyboardInterrupt
        return cb

    with pytest.raises(KeyboardInterrupt):  # interrupted in the second pass
        build_table(TINY, be, out, references=1, rounds=2, progress=False, on_entry=stop_after(8))
    names = list(fake_measure)
    assert len(set(names[:6])) == 6 and names[6:8] == names[:2]  # pass 1 covers everything, then pass 2
    t = LatencyTable.load(out)
    assert sorted(e["meta"]["rounds"] for e in t.entries.values()) == [1, 1, 1, 1, 2, 2]
    table = build_table(TINY, be, out, references=1, rounds=2, progress=False)
    assert len(fake_measure) == 12 and all(e["meta"]["rounds"] == 2 for e in table.entries.values())
    # each statistic keeps its best round (the fake runtime is 0/10/20% slower by call number)
    from jaxnas.spec import macs

    for i, key in enumerate(table):
        e = table.get(key)
        spec = SearchSpace(TINY).build(e["meta"]["arch"]) if key.startswith("ref:") else \
            BlockConfig(**e["meta"]["config"]).to_spec()
        v = 0.01 + macs(spec) / 1e6
        slow = [1 + 0.1 * (n % 3) for n in (i + 1, i + 7)]
        assert e["count"] == 10 and e["median"] == pytest.approx(v * min(slow))


def test_mismatched_table_is_refused(tmp_path, fake_measure):
    out = tmp_path / "t.json"
    build_table(TINY, FakeBackend(), out, references=None, progress=False)
    with pytest.raises(TableError, match="threads"):
        build_table(TINY, FakeBackend(threads=2), out, progress=False)
    with pytest.raises(TableError, match="runtime"):
        build_table(TINY, FakeBackend(runtime="fake-ort 2.0"), out, progress=False)
    with pytest.raises(TableError, match="search space"):
        build_table({**TINY, "kernels": [5]}, FakeBackend(), out, progress=False)
    with pytest.raises(TableError, match="channel_step"):
        build_table(TINY, FakeBackend(), out, channel_step=16, progress=False)
    raw = json.loads(out.read_text())
    raw["units"] = "us"
    bad = tmp_path / "units.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(TableError, match="units"):
        build_table(TINY, FakeBackend(), bad, progress=False)
    # a table without a space hash (imported elsewhere) is not silently adopted
    raw["units"] = "ms"
    del raw["meta"]["space_hash"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(TableError, match="search space"):
        build_table(TINY, FakeBackend(), bad, progress=False)


def test_channel_grid_parts(fake_measure, tmp_path):
    cfg = BlockConfig("mbconv", 8, 8, 20, 20, 3, 1, 60, "relu6", 0)
    lo, hi = grid_parts(cfg, 8)
    assert (lo.cin, lo.cout, lo.mid) == (16, 16, 56) and (hi.cin, hi.cout, hi.mid) == (24, 24, 64)
    assert grid_parts(BlockConfig("mbconv", 8, 8, 16, 16, 3, 1, 48, "relu6", 0), 8) == \
        [BlockConfig("mbconv", 8, 8, 16, 16, 3, 1, 48, "relu6", 0)]
    stem = BlockConfig("conv", 8, 8, 3, 12, 3, 1)
    assert [g.cin for g in grid_parts(stem, 8)] == [3, 3]  # image channels are never rounded
    # a space whose widths are off a 16-channel grid stores grid neighbours only
    space = {**TINY, "widths": [0.5, 1.5], "stem": {"channels": 16, "stride": 1},
             "stages": [{"channels": 16, "blocks": 1, "stride": 1}]}
    table = build_table(space, FakeBackend(), tmp_path / "g.json", channel_step=16, references=None,
                        progress=False)
    assert table.meta["channel_step"] == 16
    for k in table:
        cfg = BlockConfig(**table.get(k)["meta"]["config"])
        assert cfg.cout % 16 == 0 and (cfg.kind == "conv" or cfg.cin % 16 == 0)
