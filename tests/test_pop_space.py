"""POP search spaces: the DF space and its members, the small-input variant, the MBConv variant."""
import json

import numpy as np
import pytest

from jaxnas import spec as S
from jaxnas import zoo
from jaxnas.methods.pop.space import PRESETS, MBConvSpace, ResNetSpace, SpaceError, _structure, load_space, width_leq

# Exact MACs / parameters of the zoo's DF nets (conv + FC multiply-accumulates; BN affine counted).
DF_EXACT = {"df1": (746_729_472, 8_533_128), "df2": (1_774_333_952, 17_987_208),
            "df2a": (1_916_141_568, 19_151_240)}


@pytest.mark.parametrize("name", sorted(DF_EXACT))
def test_df_nets_are_members_of_the_imagenet_space_with_their_exact_macs(name):
    space = load_space("pop-imagenet")
    ref = zoo.get_spec(name)
    arch = space.arch_of(ref)
    built = space.build(arch)
    assert _structure(built) == _structure(ref)
    assert (S.macs(built), S.params(built)) == DF_EXACT[name] == (S.macs(ref), S.params(ref))
    assert space.contains(arch) and arch in set(space.archs())
    assert space.parse_key(space.arch_key(arch)) == arch


def test_jaxnas_info_gives_the_df_nets_exact_macs_also_from_a_pop_arch_json(capsys, tmp_path):
    from jaxnas import cli
    space = load_space("pop-imagenet")
    for name, (macs, params) in DF_EXACT.items():
        assert cli.main(["info", name, "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert (d["macs"], d["params"]) == (macs, params)
        path = tmp_path / f"{name}.json"
        space.build(space.arch_of(zoo.get_spec(name))).save(path)        # what POP writes as arch.json
        assert cli.main(["info", str(path), "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert (d["macs"], d["params"]) == (macs, params)


def test_basic_space_holds_df1_df2_but_not_the_bottleneck_df2a():
    space = load_space("pop-imagenet-basic")
    for n in ("df1", "df2"):
        assert space.contains(space.arch_of(zoo.get_spec(n)))
    with pytest.raises(SpaceError, match="not one of"):
        space.arch_of(zoo.df2a())


def test_sizes_count_the_enumeration():
    for name, d in PRESETS.items():
        space = load_space(name)
        if isinstance(space, ResNetSpace):
            assert space.size() == sum(1 for _ in space.archs()), name
    assert load_space("pop-small").size() == 405
    from jaxnas.latency.spaces import BUILTIN_SPACES
    d = BUILTIN_SPACES["mbv2-small"]
    mb = MBConvSpace({**d, "stages": d["stages"][:3]})
    assert mb.size() == sum(1 for _ in mb.archs()) == 1 * 20 * 80


def test_small_space_archs_obey_the_rules_and_build_valid_specs():
    space = load_space("pop-small", resolution=28, in_channels=1, num_classes=10)
    seen = set()
    for arch in space.archs():
        seen.add(arch)
        flat = [w for seq in arch for w in seq]
        assert all(width_leq(a, b) for a, b in zip(flat, flat[1:]))            # non-decreasing along depth
        assert all(len(seq) in st.depths for seq, st in zip(arch, space.stages))
        spec = space.build(arch)
        S.validate(spec)
        assert spec.input_size == (28, 28) and spec.in_channels == 1 and spec.head.num_classes == 10
        assert [b.layers[0].stride for b in spec.blocks[:2]] == [1, 1]         # stride-1 stem (small input)
        prev = None
        for st in spec.stages:
            for j, b in enumerate(spec.blocks[st.start:st.end]):
                stride = b.layers[0].stride
                assert stride == (2 if j == 0 else 1)
                w = b.layers[-1].out
                # projection shortcut exactly where the configured width changes or the stride is 2
                assert isinstance(b.shortcut, S.Conv) == (stride == 2 or w != prev), (arch, j)
                prev = w
    assert len(seen) == 405
    assert S.analyze(space.build(space.largest())).blocks[-1].out_shape[:2] == (4, 4)


def test_space_definition_errors_are_one_line():
    with pytest.raises(SpaceError, match="unknown key"):
        load_space({"family": "resnet", "stages": [{"depths": [1], "widths": [8]}], "stemm": []})
    with pytest.raises(SpaceError, match="width"):
        load_space({"family": "resnet", "stages": [{"depths": [1], "widths": [0]}]})
    with pytest.raises(SpaceError, match="unknown POP space"):
        load_space("pop-smal")
    # constraints can exclude everything: widths must not decrease across stages
    empty = load_space({"family": "resnet", "stages": [{"depths": [1], "widths": [64]}, {"depths": [1], "widths": [32]}]})
    assert empty.size() == 0 and list(empty.archs()) == []


def test_decreasing_or_mixed_arch_is_rejected():
    space = load_space("pop-small")
    with pytest.raises(SpaceError, match="decreases"):
        space.check(((32, 16), (32,), (64,)))
    mixed = load_space({"family": "resnet", "stages": [{"depths": [2], "widths": [16, [16, 64]]}]})
    assert all(len({type(w) for w in a[0]}) == 1 for a in mixed.archs())
    with pytest.raises(SpaceError, match="mixes"):
        mixed.check(((16, (16, 64)),))


def test_mbconv_space_is_the_latency_spaces_space():
    from jaxnas.latency.spaces import BUILTIN_SPACES, SearchSpace
    ref = SearchSpace(BUILTIN_SPACES["mbv2-small"])
    ours = load_space("mbv2-small", resolution=28, in_channels=1, num_classes=10)
    assert ours.size() == ref.size() == 13_762_560_000
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = ours.sample_arch(rng)
        a = ours.build(arch)
        assert a.input_size == (28, 28) and a.in_channels == 1 and a.head.num_classes == 10
        assert _structure(a) == _structure(SearchSpace({**BUILTIN_SPACES["mbv2-small"], "resolution": 28,
                                                         "in_channels": 1}).build(ours.arch_json(arch)))
        assert ours.parse_key(ours.arch_key(arch)) == arch and ours.contains(arch)
    assert _structure(load_space("mbv2-small").build(ours.largest())) == _structure(ref.build(ref.extreme_arch(True)))
    assert _structure(load_space("mbv2-small").build(ours.smallest())) == _structure(ref.build(ref.extreme_arch(False)))
