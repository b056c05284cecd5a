"""The sparse engine takes the steps of the dense engine and of ``forces.reference_step``,
whatever its epoch state and work policy, and its release bound (B) holds."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsim
from flowsim import _engines as E
from flowsim import _kernels as K
from flowsim import forces, simulate

METHODS = ["euler", "heun", "rk4"]
#: Work policies of the sparse engine (they may change the work, never a number).
POLICIES = {
    "default": {},
    "one epoch": dict(epoch_budget=np.inf, direct=0.0),
    "epoch every step": dict(epoch_budget=0.0, direct=0.0),
    "row scans": dict(epoch_budget=np.inf, direct=0.0, scatter=0.0),
    "row scatters": dict(epoch_budget=np.inf, direct=0.0, scatter=np.inf),
    "direct": dict(direct=np.inf),
}


#: Random small problems: sizes, seed, λ, fraction of exact zeros, method, c.
PROBLEMS = dict(
    n=st.integers(2, 12),
    m=st.integers(2, 48),
    seed=st.integers(0, 2**32 - 1),
    lam=st.sampled_from([1e-3, 0.01, 0.05]),
    zero_frac=st.sampled_from([0.0, 0.5, 0.9]),
    method=st.sampled_from(METHODS),
    c=st.sampled_from([1.0, 4.0]),
)


def sparse_engine(W, model, method, **policy):
    eng = E.SparseEngine(W.copy(), model, method, W.size, **policy)
    eng.sync()
    return eng


def step(eng, j, dt):
    """One step of any engine from grid point j; returns the new W (a copy)."""
    out = np.zeros(K.OUT_SIZE)
    eng.run(j * dt, j, (j + 1) * dt, dt, 1, -1, -1.0, 1.0, out)
    assert int(out[K.OUT_STATUS]) in (K.STATUS_DONE, K.STATUS_BUDGET) and int(out[K.OUT_J]) == j + 1
    return eng.W.copy()


def random_problem(n, m, seed, zero_frac, scale):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m)) * scale / np.sqrt(m)
    W[rng.random((n, m)) < zero_frac] = 0.0
    return W


def pushed_zero(a, b, w, extra_rows, seed):
    """Rows 0 and 1 overlap positively on column 0; W_11 = w grows with row 1 (feature
    benefit, |W_1| < 1) while W_01 = 0, so the force c P_01 W_11 on the zero W_01 grows
    until it passes λ, several steps in; other rows add unrelated sparse weights."""
    rng = np.random.default_rng(seed)
    W = np.zeros((2 + extra_rows, 8))
    W[0, 0], W[1, 0], W[1, 1] = a, b, w
    for r in range(2, 2 + extra_rows):
        cols = rng.choice(np.arange(2, 8), size=2, replace=False)
        W[r, cols] = rng.uniform(0.1, 0.5, size=2) * rng.choice([-1.0, 1.0], size=2)
    return W


def assert_same_step(got, ref, what):
    np.testing.assert_array_equal(got != 0, ref != 0, err_msg=f"{what}: supports differ")
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=what)


def run_step_by_step(W0, model, method, dt, steps, policy):
    """The sparse engine (one engine, its epoch state carried) against the dense engine
    and the reference step, each step taken from the sparse engine's current W.
    Returns the engine and the states after each step (steps, n, m)."""
    eng = sparse_engine(W0, model, method, **policy)
    states = []
    for j in range(steps):
        W = eng.W.copy()
        got = step(eng, j, dt)
        assert_same_step(got, forces.reference_step(W, model, dt, method), f"reference, step {j}")
        assert_same_step(got, step(E.DenseEngine(W, model, method, 0.0), j, dt), f"dense, step {j}")
        states.append(got)
    return eng, np.array(states)


@settings(max_examples=30, deadline=None)
@given(**PROBLEMS, scale=st.sampled_from([0.5, 1.0, 2.0]), policy=st.sampled_from(sorted(POLICIES)))
def test_sparse_engine_takes_the_reference_steps(n, m, seed, lam, zero_frac, scale, method, c, policy):
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    W0 = random_problem(n, m, seed, zero_frac, scale)
    run_step_by_step(W0, model, method, 0.05 / c, 40, POLICIES[policy])


@settings(max_examples=20, deadline=None)
@given(
    a=st.floats(0.2, 0.4),
    b=st.floats(0.2, 0.4),
    w=st.floats(0.2, 0.4),
    lam_factor=st.floats(1.3, 2.0),
    extra_rows=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(METHODS),
)
def test_zero_pushed_by_a_growing_neighbour_is_released_between_epochs(a, b, w, lam_factor, extra_rows,
                                                                        seed, method):
    """One epoch at the start, none after: the release several steps later is found by
    the bound path, in the step where the reference step releases it."""
    W0 = pushed_zero(a, b, w, extra_rows, seed)
    model = flowsim.Model(n=W0.shape[0], m=W0.shape[1], lam=lam_factor * a * b * w)
    eng, states = run_step_by_step(W0, model, method, 0.05, 60, POLICIES["one epoch"])
    released = np.flatnonzero(states[:, 0, 1] != 0.0)
    assert released.size and released[0] >= 3  # released, several steps in
    assert np.all(states[released, 0, 1] < 0.0)  # pushed away from W_11 > 0
    assert eng.counters[K.CT_EPOCHS] == 1 and eng.counters[K.CT_REL_BETWEEN] >= 1


def test_numbers_do_not_depend_on_epoch_state_policy_or_chunking():
    """Bitwise: one call, one step per call, a fresh engine every step, every policy."""
    model = flowsim.Model(n=24, m=96, lam=0.01, seed=3)
    W0 = model.initial_weights()
    W0[np.random.default_rng(0).random(W0.shape) < 0.8] = 0.0
    dt, steps = 0.1, 150
    results = {}
    for name, policy in POLICIES.items():
        eng = sparse_engine(W0, model, "euler", **policy)
        out = np.zeros(K.OUT_SIZE)
        eng.run(0.0, 0, steps * dt, dt, 10**9, -1, -1.0, 1.0, out)
        results[name] = eng.W.copy()
    eng = sparse_engine(W0, model, "euler")
    fresh = W0.copy()
    for j in range(steps):
        step(eng, j, dt)
        fresh = step(sparse_engine(fresh, model, "euler"), j, dt)
    results["step by step"], results["fresh engine per step"] = eng.W, fresh
    for name, W in results.items():
        np.testing.assert_array_equal(W, results["default"], err_msg=name)
    assert np.count_nonzero(W0) > np.count_nonzero(results["default"]) > 0


def bound_reference(W0, P0, states, c):
    """Bound (B) in NumPy, without rounding slack, at the last of ``states`` (the W of
    every step since the epoch began at W0): |φ(s0)| + c[ΔP_i a_k + σ_ik δ_k + π_i r_k],
    with δ_k bounded by the sum over the steps of max_j |ΔW_jk| as the engine does, and
    the exact δ_k = max_{W0_jk ≠ 0} |W_jk - W0_jk| (returns both bounds)."""
    W = states[-1]
    nz0 = W0 != 0
    phi0 = np.abs(c * (P0 @ W0))
    G = W @ W.T
    P = np.maximum(G, 0.0)
    np.fill_diagonal(P, 0.0)
    dP = np.abs(P - P0).max(axis=1)
    a = np.abs(W).sum(axis=0)
    sigma = c * (P0 @ nz0)
    delta = np.where(nz0, np.abs(W - W0), 0.0).max(axis=0)
    steps = [W0] + list(states)
    delta_sum = sum(np.abs(b - a_).max(axis=0) for a_, b in zip(steps[:-1], steps[1:]))
    r = np.where(nz0, 0.0, np.abs(W)).sum(axis=0)
    rest = phi0 + c * dP[:, None] * a + c * P0.max(axis=1)[:, None] * r
    return rest + sigma * delta_sum, rest + sigma * delta


def epoch_snapshot(eng):
    """The support and P at the epoch start, from the engine's epoch state."""
    n, m = eng.W.shape
    P0, _, e0ptr, e0col, _ = eng.snap
    pattern = np.zeros((n, m), dtype=bool)
    for i in range(n):
        pattern[i, e0col[e0ptr[i]:e0ptr[i + 1]]] = True
    return pattern, P0.copy()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 12),
    m=st.integers(4, 40),
    seed=st.integers(0, 2**32 - 1),
    zero_frac=st.sampled_from([0.3, 0.6, 0.85]),
    scale=st.sampled_from([1.0, 2.0]),
    c=st.sampled_from([1.0, 4.0]),
    method=st.sampled_from(METHODS),
)
def test_release_bound_holds_and_matches_its_reference(n, m, seed, zero_frac, scale, c, method):
    """Within one epoch, at every step: the true |φ| of every entry is at most its bound;
    the bound is the NumPy reference of (B) (above it only by the rounding slack and the
    float32 tables); each tier's row bound covers its entries."""
    lam = 0.01
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    eng = sparse_engine(random_problem(n, m, seed, zero_frac, scale), model, method, **POLICIES["one epoch"])
    dt = 0.05 / c
    W0 = eng.W.copy()
    states = [step(eng, 0, dt)]  # the epoch begins at W0
    pattern0, P0 = epoch_snapshot(eng)
    np.testing.assert_array_equal(pattern0, W0 != 0)
    for j in range(1, 25):
        W = states[-1]
        G = W @ W.T
        P = np.maximum(G, 0.0)
        np.fill_diagonal(P, 0.0)
        phi = np.abs(c * (P @ W))
        entries, tiers = eng.release_bounds()
        assert np.all(phi <= entries * (1 + 1e-12) + 1e-300)
        ref, ref_exact_delta = bound_reference(W0, P0, states, c)
        assert np.all(ref >= ref_exact_delta * (1 - 1e-12))
        assert np.all(entries >= ref * (1 - 1e-12))
        # above it only by the float32 tables (relative 2^-22, absolute 2e-38) and the
        # rounding slack: relative 4 (n + 8) u, plus 4 (n + 8) u c (max P · max_k Σ_j |W_jk|
        # at s0 and now)
        slack = 4 * (n + 8) * 2.0**-53
        margin = slack * c * (P0.max() * np.abs(W0).sum(0).max() + P.max() * np.abs(W).sum(0).max())
        assert np.all(entries <= ref * (1 + 1e-6) + margin * (1 + 1e-9) + 1e-37)
        # each tier's row bound covers the true |φ| of its entries (and their own bounds
        # but for the rounding up of the float32 tables of the last tier)
        tier_of = np.full(W.shape, K.NTIER - 1)
        tcol, toff = eng.tab[3], eng.tab[4]
        for i in range(n):
            for t in range(K.NTIER - 1):
                tier_of[i, tcol[toff[i, t]:toff[i, t + 1]]] = t
        row_bound = np.take_along_axis(tiers.T, tier_of, axis=1)
        assert np.all(phi <= row_bound * (1 + 1e-12) + 1e-300)
        assert np.all(entries <= row_bound * (1 + 1e-6) + 1e-30)
        states.append(step(eng, j, dt))
    assert eng.counters[K.CT_EPOCHS] == 1


def test_release_bound_spares_most_zeros_in_the_mid_phase():
    """From a state of the mid phase (density 0.1), for 15 steps of one epoch the bound
    rules out release for most zeros, and canonical forces are evaluated for few."""
    model = flowsim.Model(n=32, m=256, lam=0.01, seed=1)
    W = model.initial_weights()
    while np.count_nonzero(W) > 0.1 * W.size:
        W = forces.reference_step(W, model, 0.1, "euler")
    eng = sparse_engine(W, model, "euler", **POLICIES["one epoch"])
    zeros_seen = 0
    for j in range(15):
        step(eng, j, 0.1)
        entries, _ = eng.release_bounds()
        zero = eng.W == 0
        zeros_seen += int(zero.sum())
        assert np.mean(entries[zero] <= model.lam) > 0.8
    assert eng.counters[K.CT_CANONICAL] < 0.1 * zeros_seen


def test_kernels_match_numpy():
    """Column index, Gram matrix (both modes), forces on the supports and the canonical
    force on a zero against NumPy."""
    model = flowsim.Model(n=9, m=30, lam=0.01, c=4.0)
    W = random_problem(9, 30, 5, 0.6, 2.0)
    eng = sparse_engine(W, model, "euler")
    ptr, cols, vals = eng.sup[:3]
    acol = eng.colv[K.CV_A]
    G = W @ W.T
    P = np.maximum(G, 0.0)
    np.fill_diagonal(P, 0.0)
    F = forces.smooth_force(W, model)
    for dense in (False, True):
        nt, ns, updates, amax = K.csc_pattern(ptr, cols, vals, eng.csc, eng.colvals, eng.norms, acol)
        assert nt == np.count_nonzero(np.any(W != 0, axis=0)) and amax == pytest.approx(np.abs(W).sum(0).max())
        assert updates == sum(c * (c - 1) // 2 for c in np.count_nonzero(W, axis=0))
        K.sparse_force(ptr, vals, eng.csc, ns, dense, eng.colvals, eng.gram, eng.istate, eng.norms, eng.acc,
                       1.0, model.c, eng.Fq)
        np.testing.assert_allclose(eng.gram[1], P, rtol=0, atol=1e-15)
        np.testing.assert_allclose(eng.norms, np.diag(G), rtol=1e-15)
        rows, cols_ = np.nonzero(W)
        np.testing.assert_allclose(eng.Fq[:ptr[-1]], F[rows, cols_], rtol=0, atol=1e-14)
        for i, k in zip(*np.nonzero(W == 0)):
            assert K.zero_force(i, k, eng.csc, eng.colvals, eng.gram[1], model.c) == pytest.approx(
                F[i, k], abs=1e-15)
        K.csc_clear(eng.csc, nt, acol)


@settings(max_examples=20, deadline=None)
@given(**PROBLEMS)
def test_simulate_sparse_equals_dense_over_a_run(n, m, seed, lam, zero_frac, method, c):
    W0 = random_problem(n, m, seed, zero_frac, 1.0)
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    dt = 0.05 / c
    dense = simulate(model, 20.0, method=method, dt=dt, W0=W0, sparse_below=0.0)
    sparse = simulate(model, 20.0, method=method, dt=dt, W0=W0, sparse_below=1.0)
    # the same steps up to summation order (BLAS vs column sums), over 400 steps
    np.testing.assert_allclose(sparse.W, dense.W, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(sparse.nnz, dense.nnz)


@pytest.mark.parametrize("method", METHODS)
def test_zero_weight_re_enters_in_both_engines(method):
    """Rows 0 and 1 overlap on column 0 (same sign, malign), and row 1 is zero at
    column 1 where row 0 is large: interference pushes W_11 beyond λ, so it must
    re-enter (with the sign opposite to W_01) — identically in both engines."""
    W0 = np.zeros((3, 6))
    W0[0, :2] = [0.5, 0.7]
    W0[1, 0] = 0.6
    W0[2, 3] = 0.9
    model = flowsim.Model(n=3, m=6, lam=0.01)
    kw = dict(method=method, dt=0.01, W0=W0, snapshots=True, save_at=[0.01, 0.1, 1.0])
    dense = simulate(model, 5.0, sparse_below=0.0, **kw)
    sparse = simulate(model, 5.0, sparse_below=1.0, **kw)
    assert dense.snapshots[1][1, 1] < 0.0  # re-entered after one step, opposite sign to W_01
    np.testing.assert_allclose(sparse.snapshots, dense.snapshots, atol=1e-12)
    assert np.all(sparse.W[:, 4:] == 0.0)  # columns nobody uses stay exactly zero


@pytest.mark.parametrize("method", METHODS)
def test_legacy_engine_takes_the_same_steps(method):
    """The engine of commit f8da2ae, kept for the benchmarks, agrees with the new one."""
    model = flowsim.Model(n=16, m=64, lam=0.01, seed=2)
    W0 = model.initial_weights()
    runs = {}
    for name in E.SPARSE_ENGINES:
        eng = E.DenseEngine(W0.copy(), model, method, 0.3, name)
        out = np.zeros(K.OUT_SIZE)
        eng.run(0.0, 0, 30.0, 0.05, 10**9, -1, -1.0, 1.0, out)
        runs[name] = eng.W
    assert_same_step(runs["certified"], runs["legacy"], "legacy vs certified")
    with pytest.raises(ValueError, match="sparse_engine"):
        E.DenseEngine(W0, model, method, 0.3, "other")
