"""Tests of flowsim.theory: hand-computed values, continuity, brute-force bounds."""
import numpy as np
import pytest
import scipy.stats

from flowsim import FlowsimInputError
from flowsim import theory as T


def test_l1_piecewise_values_and_continuity():
    m, lam = 10_000, 1e-5  # breaks at 1/(λ√m) = 1000 and 1/λ = 1e5
    t = np.array([0.0, 500.0, 1000.0, 4000.0, 1e5, 3e5])
    np.testing.assert_allclose(T.l1_piecewise(t, m, lam), [100, 100, 100, 25, 1, 1], rtol=1e-14)
    for tb in (1000.0, 1e5):  # no jump at either break
        left, right = T.l1_piecewise([tb * (1 - 1e-9), tb * (1 + 1e-9)], m, lam)
        assert abs(left - right) <= 1e-8 * left
    tt = np.geomspace(1.0, 1e7, 400)
    assert np.all(np.diff(T.l1_piecewise(tt, m, lam)) <= 0)


def test_l1_smooth_values_and_bounds():
    m, lam = 10_000, 1e-5
    t = np.array([0.0, 1000.0, 9000.0, 1e6])
    # 1/(0.01 + λt): 100, 1/0.02 = 50, 1/0.1 = 10, max(1/10.01, 1) = 1
    np.testing.assert_allclose(T.l1_smooth(t, m, lam), [100, 50, 10, 1], rtol=1e-14)
    tt = np.geomspace(1.0, 1e7, 400)
    smooth, piece = T.l1_smooth(tt, m, lam), T.l1_piecewise(tt, m, lam)
    # 1/(1/√m + λt) is within a factor 2 of min(√m, 1/(λt)) and never above it
    assert np.all(smooth <= piece * (1 + 1e-12)) and np.all(smooth >= piece / 2)
    assert T.l1_smooth(0.0, 7, 0.0) == pytest.approx(np.sqrt(7))


def test_nnz_threshold_and_counts():
    np.testing.assert_allclose(T.nnz_from_l1([1.0, 3.0, 10.0]), [1.0, 9.0, 100.0])
    th = T.threshold([0.5, 0.9, 1.0, 1.2], 1e-3, c=2.0)
    np.testing.assert_allclose(th[:2], [1e-3 / 1.0, 1e-3 / 0.2], rtol=1e-14)
    assert np.all(np.isinf(th[2:]))
    assert T.collisions_expected(256, 1024) == 256 * 255 / 2048
    assert T.polysemantic_expected(256, 1024) == 16.0
    assert T.collisions_expected(1, 5) == 0.0
    mm = np.array([256, 512, 1024])
    np.testing.assert_allclose(T.polysemantic_expected(256, mm), [64.0, 32.0, 16.0])
    np.testing.assert_allclose(T.collisions_expected(mm, 512), mm * (mm - 1) / 1024)
    with pytest.raises(FlowsimInputError, match="invalid m"):
        T.polysemantic_expected(4, [8, 0])


def _relvar(x):
    x = np.asarray(x, dtype=float)
    mean = x.mean()
    return 0.0 if mean == 0 else x.var() / mean**2


def _bounds_brute_force(row):
    a = np.sort(np.abs(row[row != 0]))[::-1]
    a_ext = np.append(a, 0.0)
    lower = [_relvar(a[:k] - a_ext[k]) for k in range(1, a.size + 1)]
    upper = [_relvar(a[:k] - a[k - 1]) for k in range(1, a.size + 1)]
    return np.array(lower), np.array(upper)


@pytest.mark.parametrize("seed", range(6))
def test_relvar_bounds_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 200))
    row = rng.standard_normal(size) * rng.uniform(1e-3, 10)
    row[rng.random(size) < 0.1] = 0.0
    if seed == 5 and size > 3:
        row[:3] = row[3]  # ties
    k, lower, upper = T.relvar_bounds(row)
    lo_ref, up_ref = _bounds_brute_force(row)
    assert np.array_equal(k, np.arange(1, np.count_nonzero(row) + 1))
    # prefix sums (cumsum, gap form) vs direct two-pass variance on <= 200 values
    np.testing.assert_allclose(lower, lo_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(upper, up_ref, rtol=1e-9, atol=1e-12)
    assert np.all(lower <= upper * (1 + 1e-12) + 1e-15)
    if upper.size:
        assert upper[0] == 0.0


def test_relvar_bounds_hand_values():
    # row (3, 1): m'=1: lower = relvar(3-1) = 0, upper 0; m'=2: lower = relvar(3, 1) =
    # Var 1 / mean² 4 = 1/4, upper = relvar(2, 0) = 1 / 1 = 1
    k, lower, upper = T.relvar_bounds([-1.0, 0.0, 3.0])
    assert k.tolist() == [1, 2]
    np.testing.assert_allclose(lower, [0.0, 0.25], atol=1e-15)
    np.testing.assert_allclose(upper, [0.0, 1.0], atol=1e-15)


def test_halfnormal_row():
    m = 1000
    a = T.halfnormal_row(m)
    assert a.shape == (m,) and np.all(np.diff(a) < 0) and a[-1] > 0
    k = np.arange(1, m + 1)
    np.testing.assert_allclose(a, scipy.stats.halfnorm.ppf(1 - (k - 0.5) / m), rtol=1e-12)
    _, lower, upper = T.relvar_bounds(a)
    assert np.all(lower <= upper + 1e-15)
    # the half-normal's own relative variance, (π/2 - 1) ≈ 0.571, at m' = m
    assert abs(lower[-1] - (np.pi / 2 - 1)) < 0.01


def test_bad_inputs():
    with pytest.raises(FlowsimInputError, match="invalid lam"):
        T.l1_piecewise(1.0, 10, 0.0)
    with pytest.raises(FlowsimInputError, match="invalid t"):
        T.l1_smooth([-1.0], 10, 1e-3)
    with pytest.raises(FlowsimInputError, match="invalid m"):
        T.l1_smooth(1.0, 0, 1e-3)
    with pytest.raises(FlowsimInputError, match="invalid row"):
        T.relvar_bounds(np.ones((2, 2)))
