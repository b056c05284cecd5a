"""Tests of flowsim.metrics: hand-built matrices with hand-derived counts, brute-force
references, invariances, and the collision statistics of i.i.d. normal initial weights."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowsim.errors import FlowsimInputError
from flowsim.metrics import (
    count_polysemantic,
    dead_features,
    initial_collisions,
    leading_neuron,
    lineage,
    neuron_features,
    polysemantic_neurons,
    represented,
    summary,
)
from flowsim.model import Model

# ---------------------------------------------------------------- references (slow, obvious)


def ref_leading(W):
    W = np.asarray(W, dtype=float)
    A = np.abs(W)
    return np.where(A.max(axis=1) > 0, A.argmax(axis=1), -1)


def ref_collisions(W0):
    """Every pair i < j compared directly: (sorted pairs, benign flags)."""
    lead = ref_leading(W0)
    pairs, benign = [], []
    for i, j in itertools.combinations(range(W0.shape[0]), 2):
        if lead[i] >= 0 and lead[i] == lead[j]:
            pairs.append((i, j))
            benign.append(W0[i, lead[i]] * W0[j, lead[j]] < 0)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(benign, dtype=bool)


def ref_neuron_features(W, threshold=0.5, window=None):
    n, m = W.shape
    out = []
    for k in range(m):
        feats = []
        for i in range(n):
            a = abs(W[i, k])
            ok = a > threshold if window is None else window[0] <= a <= window[1]
            if ok:
                feats.append(i)
        out.append(feats)
    return out


# ------------------------------------------------------------------- hand-built matrices


def test_benign_pair():
    # Features 0 and 1 both lead on neuron 0 with opposite signs; feature 2 leads on 2.
    W0 = np.array([[1.0, 0.1, 0.0], [-0.9, 0.2, 0.0], [0.0, 0.3, 1.1]])
    c = initial_collisions(W0)
    assert (c.total, c.benign, c.malign) == (1, 1, 0)
    np.testing.assert_array_equal(c.pairs, [[0, 1]])
    np.testing.assert_array_equal(c.pair_benign, [True])
    # As a final state: neuron 0 carries features 0 and 1 (both |w| in the window too).
    np.testing.assert_array_equal(polysemantic_neurons(W0), [0])
    np.testing.assert_array_equal(polysemantic_neurons(W0, window=(0.8, 1.2)), [0])
    assert dead_features(W0).size == 0


def test_malign_pair():
    W0 = np.array([[1.0, 0.0, 0.0], [0.9, 0.2, 0.0], [0.0, 0.0, 1.0]])
    c = initial_collisions(W0)
    assert (c.total, c.benign, c.malign) == (1, 0, 1)
    np.testing.assert_array_equal(c.pairs, [[0, 1]])
    np.testing.assert_array_equal(c.pair_benign, [False])


def test_three_way_collision_counts_three_pairs():
    # Features 0, 1, 2 lead on neuron 1 with signs +, +, -; feature 3 leads on neuron 0.
    # Pairs: (0,1) same sign -> malign; (0,2), (1,2) opposite -> benign.
    W0 = np.array(
        [[0.1, 0.9, 0.0], [0.0, 0.7, 0.2], [0.3, -1.2, 0.0], [1.0, 0.0, 0.5]]
    )
    c = initial_collisions(W0)
    assert (c.total, c.benign, c.malign) == (3, 2, 1)
    np.testing.assert_array_equal(c.pairs, [[0, 1], [0, 2], [1, 2]])
    np.testing.assert_array_equal(c.pair_benign, [False, True, True])


def test_groups_of_different_sizes_are_sorted():
    # Neuron 0 leads features 4 and 1; neuron 2 leads 5, 0, 3 (signs -, +, +); 2 is alone.
    W0 = np.zeros((6, 4))
    W0[4, 0], W0[1, 0] = 1.0, 0.5
    W0[5, 2], W0[0, 2], W0[3, 2] = -1.0, 0.8, 0.6
    W0[2, 3] = 1.0
    c = initial_collisions(W0)
    np.testing.assert_array_equal(c.pairs, [[0, 3], [0, 5], [1, 4], [3, 5]])
    np.testing.assert_array_equal(c.pair_benign, [False, True, False, True])
    assert (c.total, c.benign, c.malign) == (4, 2, 2)


def test_dead_feature():
    W = np.array([[1.0, 0.0], [0.3, -0.2], [0.0, -0.7]])
    np.testing.assert_array_equal(dead_features(W), [1])
    assert count_polysemantic(W) == 0


def test_threshold_and_window_disagree():
    # 0.6 passes the threshold 0.5 but not the window [0.8, 1.2]; 1.3 likewise.
    W = np.array(
        [[1.0, 0.0, 0.0], [-0.6, 0.0, 0.0], [0.0, 1.3, 0.0], [0.0, 0.0, 0.9]]
    )
    win = (0.8, 1.2)
    np.testing.assert_array_equal(polysemantic_neurons(W), [0])
    assert count_polysemantic(W, window=win) == 0
    assert dead_features(W).size == 0
    np.testing.assert_array_equal(dead_features(W, window=win), [1, 2])
    assert [f.tolist() for f in neuron_features(W)] == [[0, 1], [2], [3]]
    assert [f.tolist() for f in neuron_features(W, window=win)] == [[0], [], [3]]
    # A higher threshold drops the 0.6 weight too.
    assert count_polysemantic(W, threshold=0.7) == 0


def test_rule_boundaries():
    # Threshold is strict (0.5 is not represented); window ends are inclusive.
    W = np.array([[0.5, -0.8, 1.2, -1.2000001, 0.7999999]])
    np.testing.assert_array_equal(represented(W), [[False, True, True, True, True]])
    np.testing.assert_array_equal(
        represented(W, window=(0.8, 1.2)), [[False, True, True, False, False]]
    )


def test_leading_neuron_ties_and_zero_rows():
    W = np.array(
        [
            [0.5, -0.5, 0.2],  # |.| tie between 0 and 1 -> 0
            [0.2, -0.7, 0.7],  # tie between 1 and 2 -> 1
            [-0.7, 0.2, 0.7],  # tie between 0 and 2, argmin first -> 0
            [0.0, 0.0, 0.0],  # all zero -> -1
            [-0.0, 0.0, -0.0],  # negative zeros are zeros -> -1
            [0.0, 0.0, -3.0],
        ]
    )
    np.testing.assert_array_equal(leading_neuron(W), [0, 1, 0, -1, -1, 2])


def test_zero_rows_never_collide_and_lose_lineage():
    W0 = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.2], [0.0, 0.3]])
    c = initial_collisions(W0)
    assert c.total == 0 and c.pairs.shape == (0, 2)
    W = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Row 0 starts at zero (no leading neuron), row 3 ends at zero.
    np.testing.assert_array_equal(lineage(W0, W), [False, False, True, False])
    assert initial_collisions(np.zeros((3, 2))).total == 0


def test_lineage():
    W0 = np.array([[1.0, 0.5], [0.2, 0.9], [0.3, 0.1]])
    W = np.array([[0.9, 0.0], [1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_array_equal(lineage(W0, W), [True, False, False])


def test_summary():
    W0 = np.array(
        [[1.0, 0.1, 0.0], [-0.9, 0.0, 0.2], [0.2, 1.0, 0.1], [0.1, 0.8, 0.3]]
    )
    # Final: neuron 0 holds 0 and 1 (|w| 1.0, 0.6), neuron 1 holds 2 (1.3); 3 died.
    W = np.array(
        [[1.0, 0.0, 0.0], [-0.6, 0.0, 0.0], [0.0, 1.3, 0.0], [0.0, 0.0, 0.1]]
    )
    s = summary(W0, W)
    assert s == {
        "polysemantic": 1,
        "polysemantic_window": 0,
        "dead": 1,
        "dead_window": 3,
        "initial_collisions": 2,  # (0,1) on neuron 0 benign, (2,3) on neuron 1 malign
        "benign": 1,
        "malign": 1,
        "lineage_kept": 3,
        "n": 4,
        "m": 3,
    }
    assert all(type(v) is int for v in s.values())
    s = summary(W0, W, window=None)
    assert s["polysemantic_window"] is None and s["dead_window"] is None


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: represented(np.ones(3)), "W.ndim"),
        (lambda: represented(np.ones((2, 0))), "W.shape"),
        (lambda: represented(np.ones((2, 2)), threshold=0.0), "threshold"),
        (lambda: represented(np.ones((2, 2)), threshold=float("nan")), "threshold"),
        (lambda: represented(np.ones((2, 2)), threshold=-1), "threshold"),
        (lambda: represented(np.ones((2, 2)), window=(1.2, 0.8)), "window"),
        (lambda: represented(np.ones((2, 2)), window=(0.0, 1.0)), "window"),
        (lambda: represented(np.ones((2, 2)), window=(0.8,)), "window"),
        (lambda: represented(np.ones((2, 2)), window=(0.8, math.inf)), "window"),
        (lambda: dead_features([["a", "b"]]), "W"),
        (lambda: leading_neuron([[1.0, np.nan]]), "W"),
        (lambda: initial_collisions(np.ones((2, 2, 2))), "W0.ndim"),
        (lambda: lineage(np.ones((2, 3)), np.ones((3, 2))), "W.shape"),
        (lambda: summary(np.ones((2, 3)), np.ones((2, 2))), "W.shape"),
        (lambda: summary(np.ones((2, 2)), np.ones((2, 2)), threshold=0), "threshold"),
        (lambda: summary(np.ones((2, 2)), np.ones((2, 2)), window=(2, 1)), "window"),
    ],
)
def test_bad_input(call, name):
    with pytest.raises(FlowsimInputError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(f"invalid {name}=") and "\n" not in msg


# ---------------------------------------------------------- property tests vs references

small_ints = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=st.integers(-3, 3).map(float),  # small integers: many ties and zero rows
)


@settings(max_examples=150, deadline=None)
@given(small_ints)
def test_leading_neuron_matches_abs_argmax(W):
    np.testing.assert_array_equal(leading_neuron(W), ref_leading(W))


@settings(max_examples=150, deadline=None)
@given(small_ints)
def test_collisions_match_brute_force(W0):
    c = initial_collisions(W0)
    pairs, benign = ref_collisions(W0)
    np.testing.assert_array_equal(c.pairs, pairs)
    np.testing.assert_array_equal(c.pair_benign, benign)
    assert c.total == len(pairs) and c.benign == int(benign.sum())
    assert c.malign == c.total - c.benign


@settings(max_examples=100, deadline=None)
@given(small_ints, st.sampled_from([None, (0.8, 1.2), (1.5, 2.5)]))
def test_represented_views_match_loops(W, window):
    ref = ref_neuron_features(W, 0.5 if window is None else 1.5, window)
    got = neuron_features(W, 0.5 if window is None else 1.5, window)
    assert [g.tolist() for g in got] == ref
    poly = [k for k, f in enumerate(ref) if len(f) >= 2]
    np.testing.assert_array_equal(polysemantic_neurons(W, 0.5, window), poly)
    covered = {i for f in ref for i in f}
    dead = [i for i in range(W.shape[0]) if i not in covered]
    np.testing.assert_array_equal(dead_features(W, 0.5, window), dead)


@st.composite
def distinct_magnitudes(draw):
    """W with all |W_ik| distinct (no argmax ties), plus a column permutation and a row."""
    n = draw(st.integers(1, 10))
    m = draw(st.integers(1, 6))
    mag = draw(
        hnp.arrays(np.float64, (n, m), elements=st.floats(0.01, 10.0), unique=True)
    )
    neg = draw(hnp.arrays(np.bool_, (n, m)))
    perm = draw(st.permutations(range(m)))
    row = draw(st.integers(0, n - 1))
    return np.where(neg, -mag, mag), np.array(perm), row


@settings(max_examples=150, deadline=None)
@given(distinct_magnitudes())
def test_collisions_permutation_and_sign_flip(case):
    W0, perm, r = case
    c = initial_collisions(W0)
    # Relabelling neurons changes nothing about which features collide, or how.
    p = initial_collisions(W0[:, perm])
    assert (p.total, p.benign, p.malign) == (c.total, c.benign, c.malign)
    np.testing.assert_array_equal(p.pairs, c.pairs)
    np.testing.assert_array_equal(p.pair_benign, c.pair_benign)
    np.testing.assert_array_equal(lineage(W0[:, perm], W0[:, perm]), np.ones(len(W0), bool))
    # Flipping row r flips benign <-> malign for pairs containing r, and only those.
    F = W0.copy()
    F[r] *= -1
    f = initial_collisions(F)
    np.testing.assert_array_equal(f.pairs, c.pairs)
    touched = (c.pairs == r).any(axis=1)
    np.testing.assert_array_equal(f.pair_benign, c.pair_benign ^ touched)
    assert f.total == c.total
    assert f.benign - c.benign == int((~c.pair_benign & touched).sum()) - int(
        (c.pair_benign & touched).sum()
    )


# -------------------------------------------------------------------- statistics at init


def test_collision_statistics_at_initialisation():
    """Mean count of collisions = n(n-1)/(2m); benign fraction = 1/2.

    By symmetry each row's leading neuron is uniform on the m neurons and independent of
    the other rows, so each of the C(n,2) pairs collides with probability exactly 1/m; and
    the sign of each row is symmetric and independent of |W0|, so each colliding pair is
    benign with probability exactly 1/2.

    Bound: over S = 400 independent seeds the sample mean of the per-seed counts is close
    to normal (CLT; the counts are bounded), so |mean - expected| > 4 standard errors
    (SE = sample std / sqrt(S)) has probability ~6e-5 for a correct implementation; the
    seeds are fixed, so the test is deterministic. The SE here is ~0.14 on a mean of 7.75,
    so counting ordered pairs (x2) or counting a three-way group as 1 instead of 3
    (~1.2 triples per seed, a shift of ~2.4) would miss by > 15 SE. The benign fraction is
    the ratio sum(benign)/sum(total) with its delta-method SE from the per-seed pairs.
    """
    n, m, S = 32, 64, 400
    total = np.empty(S)
    benign = np.empty(S)
    for s in range(S):
        c = initial_collisions(Model(n, m, seed=s).initial_weights())
        total[s], benign[s] = c.total, c.benign
    expected = n * (n - 1) / (2 * m)
    se = total.std(ddof=1) / math.sqrt(S)
    assert abs(total.mean() - expected) < 4 * se, (total.mean(), expected, se)

    ratio = benign.sum() / total.sum()
    resid = benign - ratio * total
    se_ratio = resid.std(ddof=1) / math.sqrt(S) / total.mean()
    assert abs(ratio - 0.5) < 4 * se_ratio, (ratio, se_ratio)
