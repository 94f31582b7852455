import json

import pytest

from jaxnas import spec as S
from jaxnas import zoo

PUBLISHED = {  # torchvision parameter counts (exact) and MACs (published, within 2%)
    "mobilenet_v1": (4_231_976, 569e6),  # MobileNets paper, Table 8: 569 M mult-adds, 4.2 M params
    "mobilenet_v2": (3_504_872, 300e6),
    "resnet18": (11_689_512, 1.82e9),
    "resnet50": (25_557_032, 4.1e9),
    "vgg19_bn": (143_678_248, 19.6e9),
    "df1": (None, 0.747e9),
    "df2": (None, 1.774e9),
    "df2a": (None, 1.916e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_params_and_macs_match_references(name):
    p_ref, m_ref = PUBLISHED[name]
    cost = S.analyze(zoo.get_spec(name))
    if p_ref is not None:
        assert cost.params == p_ref
    assert abs(cost.macs - m_ref) / m_ref < 0.02


@pytest.mark.parametrize("width,macs,params", [(0.75, 325e6, 2.6e6), (0.5, 149e6, 1.3e6), (0.25, 41e6, 0.5e6)])
def test_mobilenet_v1_width_multipliers_match_the_paper(width, macs, params):
    # MobileNets paper, Table 6 (rounded to the figures it prints).
    cost = S.analyze(zoo.mobilenet_v1(width=width))
    assert round(cost.macs / 1e6) == macs / 1e6
    assert round(cost.params / 1e5) / 10 == params / 1e6


def test_resnet34_params():
    assert S.params(zoo.resnet34()) == 21_797_672


def test_make_divisible_rule():
    assert S.make_divisible(32 * 0.35) == 16  # 11.2 -> 8 would be < 0.9x, bumped
    assert S.make_divisible(24 * 1.4) == 32
    assert S.make_divisible(3) == 8
    assert S.make_divisible(1280 * 0.5) == 640


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "vgg19_bn", "df2a"])
def test_json_round_trip(name):
    spec = zoo.get_spec(name)
    back = S.ArchSpec.from_json(spec.to_json())
    assert back == spec
    assert json.loads(back.to_json()) == json.loads(spec.to_json())


def test_merged_conv_with_asymmetric_padding_round_trips_and_costs():
    conv = S.Conv(16, (5, 3), 1, padding=((2, 1), (0, 3)), act="relu6", norm=False, bias=True)
    spec = S.ArchSpec("m", (S.Block("merged", (conv,)),), S.Head(10), (8, 8), 4)
    back = S.ArchSpec.from_json(spec.to_json())
    assert back.blocks[0].layers[0].padding == ((2, 1), (0, 3))
    c = S.analyze(spec).blocks[0]
    # out: H = 8 + 3 - 5 + 1 = 7, W = 8 + 3 - 3 + 1 = 9
    assert c.out_shape == (7, 9, 16)
    assert c.macs == 7 * 9 * 16 * 5 * 3 * 4
    assert c.params == 16 * 5 * 3 * 4 + 16


def test_residual_shape_mismatch_is_a_clear_error():
    bad = S.Block("basic", (S.Conv(8, (3, 3), 2), S.Conv(8, (3, 3), act="identity")), "identity")
    with pytest.raises(S.SpecError, match="identity shortcut cannot add"):
        S.validate(S.ArchSpec("bad", (bad,), S.Head(10), (8, 8), 8))


def test_unknown_fields_and_activations_are_rejected():
    d = S.to_dict(zoo.resnet18())
    d["blocks"][0]["layers"][0]["kernal"] = 3
    with pytest.raises(S.SpecError, match="did you mean 'kernel'"):
        S.from_dict(d)
    bad = S.ArchSpec("x", (S.Block("conv", (S.Conv(8, act="gelu"),)),), S.Head(2), (8, 8))
    with pytest.raises(S.SpecError, match="unknown activation"):
        S.validate(bad)


def test_too_small_input_is_reported():
    with pytest.raises(S.SpecError, match="too small"):
        S.analyze(zoo.vgg19_bn(resolution=16))


def test_depthwise_needs_equal_channels():
    bad = S.ArchSpec("x", (S.Block("conv", (S.Conv(8, depthwise=True),)),), S.Head(2), (8, 8), 4)
    with pytest.raises(S.SpecError, match="depthwise"):
        S.validate(bad)


def test_unknown_model_suggests():
    with pytest.raises(S.SpecError, match="did you mean 'resnet18'"):
        zoo.get_spec("resnet81")


def test_small_input_mbv2_downsamples_by_16():
    spec = zoo.mobilenet_v2(resolution=32, small_input=True, num_classes=10)
    assert S.analyze(spec).head.in_shape == (2, 2, 1280)
    assert S.params(spec) == S.params(zoo.mobilenet_v2(resolution=32, num_classes=10))
