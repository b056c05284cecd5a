"""Sparsification without interference: reduced solver vs steppers vs the paper's theory."""
import numpy as np
import pytest

import flowsim
from flowsim import Stop, simulate, theory


@pytest.mark.parametrize("m, lam, c", [(200, 1e-2, 1.0), (2000, 1e-3, 4.0), (2000, 1e-2, 1.0), (500, 3e-3, 0.5)])
def test_reduced_solver_agrees_with_tiny_dt_stepper(m, lam, c):
    """rk4 at dt = 0.01 (L1-on order ≈ 3) is within ~1e-7 of the exact flow here;
    the reduced solver (rtol 1e-10) must agree to 1e-6 relative in ‖W‖₁ and ‖W‖² and
    exactly in m′ at every save time (the runs are on 3 random rows each)."""
    model = flowsim.Model(n=3, m=m, lam=lam, c=c, interference=False, seed=7)
    red = simulate(model, 3.0 / lam, method="reduced")
    ex = simulate(model, 3.0 / lam, method="rk4", dt=0.01, save_at=red.t)
    np.testing.assert_array_equal(ex.t, red.t)
    np.testing.assert_allclose(ex.l1, red.l1, rtol=1e-6)
    np.testing.assert_allclose(ex.l2sq, red.l2sq, rtol=1e-6)
    np.testing.assert_array_equal(ex.nnz, red.nnz)
    assert red.nnz[-1].max() < red.nnz[0].min() / 10  # it did sparsify


def _paper_row(m, lam, seed=0):
    model = flowsim.Model(n=1, m=m, lam=lam, interference=False, init_std=0.9 / np.sqrt(m), seed=seed)
    return model, simulate(model, 1e3 / lam, method="reduced", stop=Stop(max_nnz=1))


@pytest.mark.parametrize("m, lam", [(20_000, 1e-4), (100_000, 1e-5)])
def test_relative_variance_stays_within_appendix_b_bounds(m, lam):
    """Appendix B: with m′ weights left, the relative variance lies between the two
    translated-and-truncated extremes of the initial row. It touches the lower one at
    each death, so the tolerance is rounding only (1e-9 absolute)."""
    model, tr = _paper_row(m, lam)
    mp, lo, hi = theory.relvar_bounds(model.initial_weights()[0])
    k = tr.nnz[:, 0]
    ok = k >= 2
    rv = tr.relvar[ok, 0]
    assert np.all(rv >= lo[k[ok] - 1] - 1e-9)
    assert np.all(rv <= hi[k[ok] - 1] + 1e-9)
    assert ok.sum() > 100


@pytest.mark.parametrize("m, lam", [(20_000, 1e-4), (100_000, 1e-5)])
def test_l1_norm_follows_smooth_theory_within_a_constant_factor(m, lam):
    """For t in [1/(λ√m), 1/λ] the paper predicts ‖W_i‖₁ = Θ(1/(1/√m + λt)) with the
    Θ constants taken as 1. Measured ratios are 0.93–1.99 at these sizes; the test
    allows a factor 2.5 either way."""
    _, tr = _paper_row(m, lam)
    t = tr.t
    window = (t >= 1 / (lam * np.sqrt(m))) & (t <= 1 / lam)
    ratio = tr.l1[window, 0] / theory.l1_smooth(t[window], m, lam)
    assert window.sum() > 20
    assert np.all((ratio > 1 / 2.5) & (ratio < 2.5)), (ratio.min(), ratio.max())
    # and m′ ≈ ‖W‖₁² within the square of that factor
    nnz_ratio = tr.nnz[window, 0] / theory.nnz_from_l1(theory.l1_smooth(t[window], m, lam))
    assert np.all((nnz_ratio > 1 / 2.5**2) & (nnz_ratio < 2.5**2))
    # time to m′ = 1 is Θ(1/λ)
    assert 0.3 / lam < tr.stats.t_end < 10 / lam


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_paper_scale_explicit_run_reaches_one_weight(method):
    """The paper's Figure 2 run: m = 10^5, λ = 10^-5, dt = 0.5, until m′ = 1."""
    model, red = _paper_row(100_000, 1e-5)
    ex = simulate(model, 1e8, method=method, dt=0.5, stop=Stop(max_nnz=1))
    assert ex.stats.status == "sparse"
    assert abs(ex.stats.t_end - red.stats.t_end) / red.stats.t_end < 1e-2
