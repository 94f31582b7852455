"""POP's partial order on specs and its pruning rule on hand-made boundaries."""
import itertools

import pytest

from jaxnas import zoo
from jaxnas.methods.pop.boundary import Boundary, dominated_at, pareto_boundary
from jaxnas.methods.pop.order import comparable, order_key, precedes
from jaxnas.methods.pop.space import load_space

SMALL = load_space("pop-small")


def net(res2, res3, res4):
    return SMALL.build((tuple(res2), tuple(res3), tuple(res4)))


@pytest.mark.parametrize("a, b, a_le_b, b_le_a", [
    # adding a block
    (((16,), (32,), (64,)), ((16, 16), (32,), (64,)), True, False),
    # widening a block
    (((16,), (32,), (64,)), ((32,), (32,), (64,)), True, False),
    # widening and adding together, in different stages
    (((16,), (32,), (64,)), ((32,), (32, 64), (64, 64, 128)), True, False),
    # wider in res2 vs deeper in res2: incomparable
    (((32,), (32,), (64,)), ((16, 16), (32,), (64,)), False, False),
    # a narrower extra block: (16, 16) is below (16, 32)
    (((16, 32), (32,), (64,)), ((16, 16), (32,), (64,)), False, True),
    # more but narrower blocks vs fewer wider ones: incomparable
    (((16,), (32, 32), (64,)), ((16,), (64,), (64,)), False, False),
    # a block added in the middle of a stage: (32, 64) embeds into (32, 32, 64)
    (((16,), (32, 64), (64,)), ((16,), (32, 32, 64), (64,)), True, False),
    # the stage's first (stride-2) block maps to the other's first block: (64,) is not under (32, 64)
    (((16,), (64,), (64,)), ((16,), (32, 64), (64,)), False, False),
    # identical
    (((16,), (32, 64), (128,)), ((16,), (32, 64), (128,)), True, True),
])
def test_partial_order_on_hand_made_pairs(a, b, a_le_b, b_le_a):
    sa, sb = net(*a), net(*b)
    assert precedes(sa, sb) is a_le_b
    assert precedes(sb, sa) is b_le_a
    assert comparable(sa, sb) is (a_le_b or b_le_a)


def test_dongfeng_nets_df1_below_df2_and_df2a_incomparable():
    df1, df2, df2a = zoo.df1(), zoo.df2(), zoo.df2a()
    assert precedes(df1, df2) and not precedes(df2, df1)
    assert not comparable(df1, df2a) and not comparable(df2, df2a)   # basic vs bottleneck blocks
    assert not precedes(df1, df1.with_input(160))                     # another input size: not comparable


def test_mbconv_order_kernels_and_expansions():
    space = load_space("mbv2-small")
    base = space.smallest()
    w, stages = base

    def with_block(stage, choice):
        st = list(stages)
        st[stage] = (choice,) + st[stage][1:]
        return space.build((w, tuple(st)))

    k3e3, k5e3, k3e6, k5e6 = (3, 3.0, False), (5, 3.0, False), (3, 6.0, False), (5, 6.0, False)
    a, b, c, d = (with_block(2, x) for x in (k3e3, k5e3, k3e6, k5e6))
    assert precedes(a, b) and precedes(a, c) and precedes(b, d) and precedes(c, d)
    assert not comparable(b, c)                       # larger kernel vs larger expansion
    deeper = list(stages)
    deeper[3] = deeper[3] + (k3e3,)
    assert precedes(space.build(base), space.build((w, tuple(deeper))))
    # Stage 5 has stride 1, so its first block differs from the others only by its input width; still
    # it maps to the other's first block: a block inserted *before* it is not "adding a block".
    s5a, s5b = list(stages), list(stages)
    s5a[4] = (k5e6, k3e3)
    s5b[4] = (k3e3, k5e6, k3e3)
    assert not precedes(space.build((w, tuple(s5a))), space.build((w, tuple(s5b))))
    s5b[4] = (k5e6, k3e3, k3e3)
    assert precedes(space.build((w, tuple(s5a))), space.build((w, tuple(s5b))))


def _stage_closure(universe, widths):
    """Reflexive-transitive closure of the elementary moves on one stage: widen one block by one
    step of the width list, or insert a block (any width) anywhere after the first."""
    idx = {u: i for i, u in enumerate(universe)}
    succ = {u: set() for u in universe}
    for u in universe:
        for j, x in enumerate(u):
            k = widths.index(x)
            if k + 1 < len(widths):
                v = u[:j] + (widths[k + 1],) + u[j + 1:]
                if v in idx:
                    succ[u].add(v)
        for pos in range(1, len(u) + 1):
            for x in widths:
                v = u[:pos] + (x,) + u[pos:]
                if v in idx:
                    succ[u].add(v)
    reach = {}
    for u in universe:
        seen, todo = {u}, [u]
        while todo:
            for v in succ[todo.pop()]:
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        reach[u] = seen
    return reach


def test_order_on_specs_equals_the_closure_of_widen_and_add_moves():
    """On res3 sequences (any order of widths, depth 1-3; res2/res4 fixed) the spec-level relation is
    exactly 'reachable by widening one block one step or inserting one block'."""
    widths = [32, 48, 64]
    universe = [seq for d in (1, 2, 3) for seq in itertools.product(widths, repeat=d)]
    reach = _stage_closure(universe, widths)
    keys = {u: order_key(zoo.dfnet("x", widths=((16,), u, (128,)), resolution=28, num_classes=10,
                                   in_channels=1, stem=((8, 1), (16, 1)))) for u in universe}
    for u, v in itertools.product(universe, repeat=2):
        assert precedes(keys[u], keys[v]) == (v in reach[u]), (u, v)


def test_order_is_a_partial_order_on_the_small_space():
    keys = [order_key(SMALL.build(a)) for a in SMALL.archs()]
    le = [[precedes(a, b) for b in keys] for a in keys]
    n = len(keys)
    assert all(le[i][i] for i in range(n))
    assert all(not (le[i][j] and le[j][i]) for i in range(n) for j in range(n) if i != j)      # antisymmetric
    for i in range(0, n, 7):                                                                   # transitive
        for j in range(n):
            if le[i][j]:
                assert all(le[i][k] for k in range(n) if le[j][k])


def test_pareto_boundary_with_ties_and_dominated_points():
    pts = [("a", 1.0, 0.70), ("b", 2.0, 0.80), ("c", 3.0, 0.75), ("d", 2.0, 0.80), ("e", 2.0, 0.60),
           ("f", 0.5, 0.50), ("g", 4.0, 0.80)]
    assert pareto_boundary(pts) == ["f", "a", "b", "d"]
    bd = Boundary(pts)
    assert bd.best_at(0.4) == float("-inf") and bd.best_at(1.5) == 0.70 and bd.best_at(9) == 0.80
    assert bd.threshold(0.75) == 2.0 and bd.threshold(0.70) == 1.0 and bd.threshold(0.81) == float("inf")


def test_pruning_rule_on_a_hand_made_boundary():
    # D: b1 (1.0 ms, 0.70) and b2 (2.0 ms, 0.80) on the boundary; a' (3.0 ms, 0.75) dominated by b2.
    bd = Boundary([("b1", 1.0, 0.70), ("b2", 2.0, 0.80), ("a'", 3.0, 0.75)])
    assert bd.keys == ["b1", "b2"]
    # A <= a' at 2.5 ms: b2 is faster than A and as accurate as a' -> A cannot lift the boundary.
    assert dominated_at(2.5, 0.75, bd)
    # A <= a' at 1.5 ms: the only faster boundary net (b1, 0.70) is below a' (0.75) -> keep A.
    assert not dominated_at(1.5, 0.75, bd)
    # The paper's figure: A narrower/shallower than boundary net b1 but not faster (1.2 ms >= 1.0 ms).
    assert dominated_at(1.2, 0.70, bd)
    assert dominated_at(1.0, 0.70, bd)            # as fast: at best a tie
    assert not dominated_at(0.9, 0.70, bd)        # faster than b1: it may extend the boundary
    assert not dominated_at(1.9, 0.80, bd)        # under b2 and faster than it
