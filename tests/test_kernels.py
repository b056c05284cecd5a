"""numba kernels against the plain NumPy reference in flowsim.forces."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsim
from flowsim import forces
from flowsim.integrate import force, simulate
from flowsim.trajectory import row_stats

SWITCHES = list(itertools.product([False, True], repeat=3))


def _problem(n, m, seed, zero_frac, scale):
    """Random W with some exact zeros (to exercise pinning and release)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m)) * scale / np.sqrt(m)
    W[rng.random((n, m)) < zero_frac] = 0.0
    return W


problems = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 6),
        m=st.integers(1, 40),
        seed=st.integers(0, 2**32 - 1),
        zero_frac=st.sampled_from([0.0, 0.3, 0.8]),
        scale=st.sampled_from([0.5, 1.0, 3.0]),
        lam=st.sampled_from([0.0, 1e-3, 0.05, 0.5]),
        c=st.sampled_from([0.5, 1.0, 4.0]),
    )
)


@pytest.mark.parametrize("fb,interf,l1", SWITCHES)
@settings(max_examples=25, deadline=None)
@given(p=problems)
def test_force_kernel_matches_reference(fb, interf, l1, p):
    model = flowsim.Model(n=p["n"], m=p["m"], lam=p["lam"], c=p["c"], feature_benefit=fb,
                          interference=interf, l1=l1)
    W = _problem(p["n"], p["m"], p["seed"], p["zero_frac"], p["scale"])
    ref = forces.total_force(W, model)
    # 1e-12 relative to the size of the terms that are summed
    scale = 1.0 + np.abs(W).max() * (1 + np.abs(W).sum()) ** 2
    np.testing.assert_allclose(force(W, model), ref, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("fb,interf,l1", SWITCHES)
@settings(max_examples=15, deadline=None)
@given(p=problems, h=st.sampled_from([0.01, 0.1, 0.4]))
def test_one_step_matches_reference(method, fb, interf, l1, p, h):
    """Both engines (rows without interference, dense with it) take the reference step."""
    model = flowsim.Model(n=p["n"], m=p["m"], lam=p["lam"], c=p["c"], feature_benefit=fb,
                          interference=interf, l1=l1)
    W = _problem(p["n"], p["m"], p["seed"], p["zero_frac"], p["scale"])
    ref = forces.reference_step(W, model, h, method)
    got = simulate(model, h, method=method, dt=h, W0=W).W
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    # exact zeros are exact in both
    assert np.array_equal(got == 0, ref == 0) or np.abs(ref[(got == 0) != (ref == 0)]).max() < 1e-14


def test_rows_kernel_stats_match_reference():
    from flowsim._engines import RowsEngine as _RowsEngine

    model = flowsim.Model(n=5, m=300, lam=0.01, interference=False)
    W = _problem(5, 300, 7, 0.4, 1.0)
    engine = _RowsEngine(W.copy(), model, "rk4")
    got = engine.stats()
    ref = row_stats(W, model)
    for name in ("l1", "l2sq", "l4", "relvar", "loss"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-13)
    np.testing.assert_array_equal(got["nnz"], ref["nnz"])
    np.testing.assert_allclose(engine.P1, ref["l1"], rtol=1e-13)
    np.testing.assert_allclose(engine.P2, ref["l2sq"], rtol=1e-13)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("fb", [True, False])
def test_rows_kernel_many_steps_match_reference_run(method, fb):
    """The lazily composed maps (with deaths and re-materialisations) equal the
    per-weight reference steps over a whole run, to rounding."""
    model = flowsim.Model(n=4, m=400, lam=0.02, interference=False, feature_benefit=fb, seed=9)
    W0 = model.initial_weights()
    ref = forces.reference_run(W0, model, 30.0, 0.07, method)
    got = simulate(model, 30.0, method=method, dt=0.07, W0=W0).W
    assert (ref == 0).sum() > 400  # many deaths
    np.testing.assert_array_equal(got == 0, ref == 0)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("interf", [False, True])
def test_c4_smooth_forces_are_minus_the_loss_gradient(interf):
    """With c = 4 the smooth forces equal -∇ of Σ(1-|W_i|²)² + Σ_{i≠j} ReLU(W_i·W_j)²."""
    n, m = 4, 7
    model = flowsim.Model(n=n, m=m, lam=0.0, l1=False, c=4.0, interference=interf, seed=2)
    W = model.initial_weights() * 1.3

    def loss(X):
        return forces.loss(X, model)

    eps = 1e-6
    grad = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = eps
        grad[idx] = (loss(W + E) - loss(W - E)) / (2 * eps)
    # central differences: truncation O(eps²) ~ 1e-12, rounding ~ 1e-16/eps ~ 1e-10
    np.testing.assert_allclose(force(W, model), -grad, atol=1e-8)
    np.testing.assert_allclose(forces.smooth_force(W, model), -grad, atol=1e-8)


def test_soft_threshold_is_exact_flow_of_sign_force():
    """Integrating dw/dt = -λ sign(w) exactly for time a equals S_{λa}."""
    x = np.array([-1.0, -0.3, -1e-3, 0.0, 2e-3, 0.5])
    lam, a = 0.5, 0.004  # λa = 2e-3
    expected = np.array([-1 + 2e-3, -0.3 + 2e-3, 0.0, 0.0, 0.0, 0.5 - 2e-3])
    np.testing.assert_allclose(forces.soft_threshold(x, lam * a), expected, atol=1e-15)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("l1", [True, False])
def test_row_kernel_follows_the_reference_when_alpha_is_not_positive(method, l1):
    """A step so large that the map |w| <- α|w| - β has α <= 0 (issue 7, item 4): Euler
    (and every method without L1) flips signs as the per-weight update does; heun/rk4
    with L1 freeze signs, so every weight whose sign would flip becomes exactly 0."""
    from flowsim._kernels import affine_step
    from flowsim.forces import TABLEAUX

    a, b = TABLEAUX[method]
    hits = 0
    for N, h in [(1.16, 7.07), (1.2152, 9.33), (1.5, 4.0), (3.0, 1.2), (1.1, 12.0)]:
        model = flowsim.Model(n=1, m=40, lam=0.002, l1=l1, interference=False, seed=5)
        W = model.initial_weights()
        W *= np.sqrt(N / (W * W).sum())
        k = float(np.count_nonzero(W))
        al = affine_step(np.abs(W).sum(), N, k, h, a, b, 1.0, 1.0, model.l1_strength,
                         np.empty(b.size), np.empty(b.size))[0]
        if al > 0:
            continue
        hits += 1
        ref = forces.reference_step(W, model, h, method)
        got = simulate(model, h, method=method, dt=h, W0=W, save_at=[]).W
        np.testing.assert_array_equal(got == 0, ref == 0)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(initial=1.0))
    assert hits >= 1  # the α <= 0 branch was exercised


def test_release_rule_kernel_matches_reference():
    from flowsim._kernels import release_sign

    F = np.array([-0.3, -0.1, -0.1 + 1e-12, 0.0, 0.1, 0.1 + 1e-12, 0.4])
    ref = forces.release_sign(F, 0.1)
    np.testing.assert_array_equal([release_sign(f, 0.1) for f in F], ref)
    np.testing.assert_array_equal(ref, [-1, 0, 0, 0, 0, 1, 1])


def test_loss_reference_equals_row_stats_sum():
    for interf in (True, False):
        model = flowsim.Model(n=5, m=9, lam=0.03, interference=interf, seed=1)
        W = model.initial_weights() * 2.0
        assert forces.loss(W, model) == pytest.approx(row_stats(W, model)["loss"].sum(), rel=1e-13)
