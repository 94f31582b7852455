"""MetaPruning search spaces, gene decoding and the original's FLOPs counter (no jax needed)."""
import numpy as np
import pytest

from jaxnas import spec as S
from jaxnas import zoo
from jaxnas.methods.metapruning.constraint import (Budget, BudgetError, CostFunction, check_reachable,
                                                   check_table_covers)
from jaxnas.methods.metapruning.flops import flops_original
from jaxnas.methods.metapruning.space import FAMILIES, SCALES, GeneError, get_space, scaled

# The gene vector hard-coded in the original's mobilenetv2/evaluating/mobilenet_v2.py (seed spec §2.7).
OVERALL = [14, 12, 11, 11, 8, 8, 8, 7, 7, 7, 7, 8, 8, 8, 14, 14, 14, 8]
MID = [6, 5, 2, 15, 7, 17, 14, 5, 11, 12, 12, 11, 6, 16, 14, 13, 14]
OVERALL_CH = [22, 10, 14, 14, 14, 14, 14, 27, 27, 27, 27, 44, 44, 44, 116, 116, 116, 152]
MID_CH = [12, 33, 31, 108, 81, 161, 137, 132, 227, 242, 242, 340, 221, 459, 698, 658, 698]


def test_scale_set_and_rounding():
    assert len(SCALES) == 31 and SCALES[0] == 0.10 and SCALES[-1] == 1.0
    assert SCALES[5] == pytest.approx(0.25)
    assert scaled(44, 14) == 22 and scaled(88, 7) == 27  # int(44 * 0.52), int(88 * 0.31): floor
    space = get_space("mobilenet_v2", channel_multiple=8)
    table = space.gene_width_table  # what batched costs index: row k is gene k's width at every id
    assert table.shape == (space.num_genes, 31) and not table.flags.writeable
    genes = [(3 * k) % 31 for k in range(space.num_genes)]
    assert space.gene_channels(genes) == {g.name: scaled(g.base, v, 8) for g, v in zip(space.genes, genes)}
    assert [int(table[k, v]) for k, v in enumerate(genes)] == list(space.gene_channels(genes).values())


def test_fixture_gene_vector_gives_the_originals_channels_and_flops():
    space = get_space("mobilenet_v2")
    genes = space.parse_genes(",".join(map(str, OVERALL + MID)))
    assert genes == (14, 12, 11, 8, 7, 8, 14, 8, *MID)
    ch = space.channels(genes)
    assert ch["overall"] == OVERALL_CH and ch["mid"] == MID_CH
    spec = space.to_spec(genes)
    # 103.59 M conv MACs + 3.47 M BN + 1.28 M FC (+bias) + 0.06 M pool = 108.40 M (seed spec §2.7).
    assert flops_original(spec) == 108_404_800
    assert S.macs(spec) == 104_870_557   # conv + FC MACs, as `jaxnas info`
    # The compact form (8 stage ids + 17 mid ids) decodes to the same network.
    assert space.parse_genes([14, 12, 11, 8, 7, 8, 14, 8, *MID]) == genes


def test_parse_accepts_the_originals_printout():
    space = get_space("mobilenet_v2")
    printed = "[" + " ".join(f"{v}." for v in OVERALL + MID) + "]"   # numpy float array as search.py prints it
    assert space.parse_genes(printed) == space.parse_genes(OVERALL + MID)
    assert space.to_printed(space.parse_genes(printed)) == tuple(OVERALL + MID)


@pytest.mark.parametrize("bad,match", [
    ([14] * 24, "takes 25 .compact. or 35"),
    ([14] * 36, "takes 25"),
    ([31] + [14] * 24, "gene 0 .stage0. is 31"),
    ([-1] + [14] * 24, "is -1"),
    ([14, 12, 11, 10] + OVERALL[4:] + MID, "different ids"),
    ("14,12,x", "not a number"),
    ("14,12.5", "not an integer"),
    ("14,12,nan", "not an integer"),
    ("14,12,inf", "not an integer"),
    ("14,12,1e400", "not an integer"),
])
def test_bad_gene_vectors_are_refused(bad, match):
    with pytest.raises(GeneError, match=match):
        get_space("mobilenet_v2").parse_genes(bad)


def test_mobilenet_v2_strides_residuals_and_block1_expansion():
    space = get_space("mobilenet_v2")
    spec = space.to_spec(space.uniform(30))
    blocks = [b for b in spec.blocks if b.kind == "mbconv"]
    assert len(blocks) == 17
    strides = [max(c.stride for c in b.layers) for b in blocks]
    assert [i + 1 for i, s in enumerate(strides) if s == 2] == [2, 4, 7, 14]  # 22->33, 33->44, 44->88, 132->224
    assert [i + 1 for i, b in enumerate(blocks) if b.shortcut == "identity"] == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert [c.out for c in blocks[0].layers] == [44, 44, 22]   # block 1 keeps its 1x1 expansion (mid base 44)
    assert blocks[1].layers[0].out == 6 * 22
    assert spec.blocks[0].layers[0].stride == 2 and spec.blocks[-1].layers[0].out == 1280
    small = get_space("mobilenet_v2", small_input=True, resolution=28).to_spec(space.uniform(30))
    assert small.blocks[0].layers[0].stride == 1
    assert S.analyze(small).blocks[-1].out_shape[:2] == (2, 2)


def test_search_convention_for_mid_genes():
    # Pitfall §2.8: block i uses mid gene i-1 (of 17); the first mid gene sets block 1's expansion.
    space = get_space("mobilenet_v2")
    genes = list(space.uniform(30))
    genes[8] = 0                      # first mid gene
    spec = space.to_spec(genes)
    assert spec.blocks[1].layers[0].out == scaled(44, 0) == 4
    assert spec.blocks[2].layers[0].out == 6 * 22


def test_pruned_residual_rule_can_join_stages():
    # The original's final nets add a shortcut whenever the pruned widths agree at stride 1 (block 11:
    # 88 -> 132 at stride 1): int(88 * 0.55) = 48 = int(132 * 0.37).
    space = get_space("mobilenet_v2")
    genes = list(space.uniform(15))
    genes[4], genes[5] = 15, 9        # stage of 88s at id 15 (0.55), stage of 132s at id 9 (0.37)
    assert scaled(88, 15) == scaled(132, 9) == 48
    base = space.to_spec(genes)
    pruned = space.to_spec(genes, residual_rule="pruned")
    assert base.blocks[11].shortcut is None and pruned.blocks[11].shortcut == "identity"


def test_mobilenet_v1_space_matches_the_zoo_and_original_rules():
    space = get_space("mobilenet_v1")
    assert space.num_genes == space.printed_length == 13
    full = space.to_spec(space.uniform(30))
    ref = zoo.mobilenet_v1()
    assert S.macs(full) == S.macs(ref) and S.params(full) == S.params(ref)
    strides = [b.layers[0].stride for b in full.blocks]
    assert strides == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    low = space.to_spec(space.uniform(0))
    assert low.blocks[-1].layers[-1].out == 1024     # the last layer's width is fixed


def test_resnet50_space_has_20_genes_and_fixed_last_stage():
    space = get_space("resnet50")
    assert space.num_genes == 20 and (space.random_low, space.random_high) == (12, 24)
    full = space.to_spec(space.uniform(30))
    ref = zoo.resnet50()
    assert S.macs(full) == S.macs(ref) and S.params(full) == S.params(ref)
    low = space.to_spec(space.uniform(0))
    assert low.blocks[-1].layers[-1].out == 2048
    assert low.blocks[2].layers[0].out == scaled(64, 0)              # block 1 mid from gene 4
    assert [b.kind for b in low.blocks[:2]] == ["conv", "maxpool"]
    with pytest.raises(GeneError, match="no small-input"):
        get_space("resnet50", small_input=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_macs_cost_equals_spec_macs(family):
    space = get_space(family)
    cost = CostFunction(space, "macs")
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = tuple(int(v) for v in rng.integers(0, 31, space.num_genes))
        assert cost(g) == S.macs(space.to_spec(g))


def test_resnet_original_counter_counts_relu_modules_and_maxpool():
    space = get_space("resnet50")
    spec = space.to_spec(space.uniform(30))
    macs = S.macs(spec)
    extra = flops_original(spec) - macs
    # BN + ReLU elements + maxpool + FC bias, exactly (computed by hand from the shapes).
    cost = S.analyze(spec)
    bn = relu = 0
    for b in cost.blocks:
        for lc in b.layers:
            n = int(np.prod(lc.out_shape))
            bn += n
            relu += n if not lc.name.endswith((".conv2", ".shortcut")) else 0
        if b.kind == "bottleneck":
            relu += int(np.prod(b.out_shape))
    pool = 9 * 64 * 56 * 56
    assert extra == bn + relu + pool + 1000


def test_unreachable_budgets_are_refused():
    space = get_space("mobilenet_v2")
    cost = CostFunction(space, "macs")
    lo, hi = check_reachable(space, Budget("macs", 300e6), cost)
    assert lo < 300e6 < hi
    with pytest.raises(BudgetError, match="below the narrowest"):
        check_reachable(space, Budget("macs", lo * 0.9), cost)
    with pytest.raises(BudgetError, match="above the widest"):
        check_reachable(space, Budget("macs", hi * 1.1), cost)
    with pytest.raises(BudgetError, match="window"):
        Budget("macs", 1e6, 2e6)


class _Table:
    def __init__(self, meta):
        self.meta = meta


def test_latency_table_that_does_not_cover_the_space_is_refused():
    from latency.layer_grid import grid_layers
    space = get_space("mobilenet_v2", small_input=True, resolution=28, num_classes=10, width_mult=0.25)
    check_table_covers(space, _Table({"layers": grid_layers(space.max_spec())}))
    with pytest.raises(BudgetError, match="needs"):
        check_table_covers(space, _Table({"layers": grid_layers(space.max_spec(), min_fraction=0.3)}))
    with pytest.raises(BudgetError, match="conv layers"):
        check_table_covers(space, _Table({"layers": grid_layers(zoo.mobilenet_v2())}))
    with pytest.raises(BudgetError, match="no per-layer grid"):
        check_table_covers(space, _Table({}))
