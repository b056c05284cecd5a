"""Tests of flowsim.reduced: kernels vs NumPy references, exact solutions, stopping."""
import numpy as np
import pytest
import scipy.integrate

import flowsim.reduced as R
from flowsim import DivergenceError, FlowsimInputError, Model, row_stats


def _model(n=3, m=200, lam=1e-3, **kw):
    kw.setdefault("init_std", 0.9 / np.sqrt(m))
    return Model(n=n, m=m, lam=lam, interference=False, **kw)


def _W0_with_zeros(n=4, m=300, seed=1):
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((n, m)) / np.sqrt(m)
    W0[0, ::7] = 0.0  # exact zeros must stay zero
    W0[-1] = 0.0  # an all-zero row
    W0[1, :5] = W0[1, 5]  # ties
    return W0


def _save(t_max, k=40):
    return np.concatenate([[0.0], np.geomspace(t_max * 1e-4, t_max, k - 1)])


# ----------------------------------------------------------------------------- kernels
def test_prefix_sums_kernel_matches_reference():
    rng = np.random.default_rng(0)
    x = np.sort(np.abs(rng.standard_normal((3, 1000))) * 1e-2, axis=1)
    P = [np.empty((3, 1001)) for _ in range(4)]
    R._prefix_power_sums(x, *P)
    ref = R._prefix_power_sums_reference(x)
    for got, want in zip(P, ref):
        assert got[:, 0].tolist() == [0.0, 0.0, 0.0]
        # both are within ~1 ulp of the exact sums (Kahan vs 80-bit cumsum)
        np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)


def test_rhs_and_alive_kernels_match_reference():
    W0 = _W0_with_zeros()
    rows = R.sort_rows(W0)
    rng = np.random.default_rng(2)
    n = W0.shape[0]
    for _ in range(20):
        A = rng.uniform(0.5, 50.0, n)
        s = A * rows.a1 * rng.uniform(-0.1, 1.0, n)
        # one state exactly on a weight (A d_l == s): the tie must count as dead
        s[1] = A[1] * rows.d[1, 37]
        y = np.empty(2 * n)
        y[0::2], y[1::2] = A, s
        out = np.empty(2 * n)
        R._rhs_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, 1.3, 2e-3, out)
        want = R._rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y, 1.3, 2e-3)
        assert np.array_equal(out, want)
        for i in range(n):
            k = R._alive_count(rows.d[i], rows.nz[i], A[i], s[i])
            assert k == np.count_nonzero(A[i] * rows.d[i, : rows.nz[i]] < s[i])


def test_jacobian_kernel_matches_finite_differences():
    W0 = _W0_with_zeros(n=3, m=400)
    rows = R.sort_rows(W0)
    y = np.array([3.0, 0.6 * 3.0 * rows.a1[0], 1.5, 0.9 * 1.5 * rows.a1[1], 2.0, -0.1])
    J = np.empty(12)
    R._jac_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, 1.0, J)
    h = 1e-7 * np.maximum(np.abs(y), 1e-3)
    for col in range(6):
        e = np.zeros(6)
        e[col] = h[col]
        fd = (R._rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y + e, 1.0, 1e-3)
              - R._rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y - e, 1.0, 1e-3)
              ) / (2 * h[col])
        i = col // 2
        want = fd[2 * i: 2 * i + 2]
        got = J[4 * i + 2 * (col % 2): 4 * i + 2 * (col % 2) + 2]
        # central differences of a C¹ function away from kinks: error ~ h² f''' + eps/h
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
        others = np.delete(fd, [2 * i, 2 * i + 1])
        assert np.all(others == 0)  # rows are independent


def test_materialise_kernel_matches_numpy_formula():
    W0 = _W0_with_zeros()
    rows = R.sort_rows(W0)
    A = np.array([2.0, 5.0, 1.0, 3.0])
    s = A * rows.a1 * np.array([0.7, 0.2, -0.5, 0.3])
    out = np.empty_like(W0)
    R._materialise_kernel(W0, rows.a1, A, s, out)
    assert np.array_equal(out, R._materialise_reference(W0, rows.a1, A, s))
    # and it is the affine map of the brief, B = A a1 - s (up to rounding)
    np.testing.assert_allclose(out, R.reduced_weights(W0, A, A * rows.a1 - s), atol=1e-15)


@pytest.mark.parametrize("frac", [0.0, 0.05, 0.3, 0.6, 0.95, 1.0, 1.2])
def test_stats_from_state_equal_row_stats_of_materialised_W(frac):
    m = 500
    model = _model(n=4, m=m, lam=2e-3, c=2.0)
    W0 = _W0_with_zeros(n=4, m=m)
    rows = R.sort_rows(W0)
    A = np.array([1.0, 7.0, 40.0, 3.0])
    # threshold B/A at a fraction of each row's largest weight
    s = A * rows.a1 * (1.0 - frac)
    st = R.reduced_stats(rows, A[None], s[None], model)
    W = R.materialise(rows, W0, A, s, model)
    ref = row_stats(W, model)
    assert np.array_equal(st["nnz"][0], ref["nnz"])
    assert np.count_nonzero(W[W0 == 0]) == 0
    for name in ("l1", "l2sq", "l4", "loss"):
        # prefix-sum formulas vs direct sums; cancellation factor <= (a1/mean a)^4 here
        np.testing.assert_allclose(st[name][0], ref[name], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(st["relvar"][0], ref["relvar"], rtol=1e-10, atol=1e-12)
    assert np.isnan(st["relvar"][0, -1])  # the all-zero row


def test_stats_without_l1_are_scaled_initial_stats():
    model = _model(n=4, m=300, lam=0.0)
    W0 = _W0_with_zeros(n=4, m=300)
    W0[2, 3] = 1e-30  # a tiny weight is still a nonzero weight
    rows = R.sort_rows(W0)
    A = np.array([[1.0, 2.0, 3.0, 4.0]])
    st = R.reduced_stats(rows, A, A * rows.a1, model)
    ref = row_stats(A.T * W0, model)
    assert np.array_equal(st["nnz"][0], ref["nnz"])
    for name in ("l1", "l2sq", "l4", "loss"):
        np.testing.assert_allclose(st[name][0], ref[name], rtol=1e-12)


# ------------------------------------------------------------------------ solutions
@pytest.mark.parametrize("c", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("switch", ["lam0", "l1off"])
def test_no_l1_closed_form(c, switch):
    kw = dict(lam=0.0) if switch == "lam0" else dict(lam=1e-3, l1=False)
    model = _model(n=3, m=100, c=c, init_std=0.5 / np.sqrt(100), **kw)
    W0 = model.initial_weights()
    save = np.linspace(0.0, 6.0 / c, 25)
    tr = R.solve_reduced(model, W0, save)
    N0 = (W0**2).sum(axis=1)
    e = np.exp(2 * c * save)[:, None]
    want = N0 * e / (1 - N0 + N0 * e)
    # global error of Radau at rtol 1e-10
    np.testing.assert_allclose(tr.l2sq, want, rtol=1e-8)
    assert np.all(tr.nnz == np.count_nonzero(W0, axis=1))
    assert tr.stats.status == "completed"


def test_feature_benefit_off_is_a_pure_shift():
    lam = 1e-3
    model = _model(n=3, m=200, lam=lam, feature_benefit=False)
    W0 = model.initial_weights()
    save = np.linspace(0.0, 0.5 * np.abs(W0).max() / lam, 30)
    path = R.reduced_path(model, W0, save)
    assert np.all(path.A == 1.0)
    # B = λt up to rounding of the solver's sums (a few ulps of a1)
    np.testing.assert_allclose(path.B, np.broadcast_to(lam * save[:, None], path.B.shape),
                               rtol=0, atol=1e-15)
    tr = R.solve_reduced(model, W0, save)
    want = np.sign(W0) * np.maximum(np.abs(W0) - lam * save[-1], 0.0)
    np.testing.assert_allclose(tr.W, want, rtol=0, atol=1e-15)
    assert np.array_equal(tr.nnz[-1], np.count_nonzero(want, axis=1))


def _brute_force(a, c, lam, t_eval):
    """Integrate |w|' = c(1-‖w‖²)|w| - λ for every alive weight, dropping each at death."""
    y = np.sort(a)[::-1].astype(float)
    t0, out = 0.0, []
    t_eval = np.asarray(t_eval)
    deaths = []
    while True:
        def f(t, y):
            return c * (1 - y @ y) * y - lam

        def dies(t, y):
            return y[-1]

        dies.terminal, dies.direction = True, -1
        todo = t_eval[t_eval >= t0]
        sol = scipy.integrate.solve_ivp(f, (t0, t_eval[-1]), y, method="Radau",
                                        t_eval=todo, events=dies, rtol=1e-13, atol=1e-16,
                                        jac=lambda t, y: c * ((1 - y @ y) * np.eye(y.size)
                                                              - 2 * np.outer(y, y)))
        ts = np.asarray(sol.t, dtype=float)  # scipy returns [] if no t_eval was reached
        if ts.size:
            out += [(t, yy[yy > 0].sum(), (yy[yy > 0] ** 2).sum(), int((yy > 0).sum()))
                    for t, yy in zip(ts, np.reshape(sol.y, (y.size, -1)).T)]
        if sol.status != 1:
            return np.array(out), np.array(deaths)
        t0 = sol.t_events[0][0]
        deaths.append(t0)
        y = sol.y_events[0][0][:-1]
        t_eval = t_eval[t_eval > t0]
        if y.size == 0 or t_eval.size == 0:
            return np.array(out), np.array(deaths)


def test_matches_direct_integration_of_the_weights():
    m, lam, c = 30, 5e-3, 1.5
    model = Model(n=1, m=m, lam=lam, interference=False, c=c, init_std=0.9 / np.sqrt(m))
    W0 = model.initial_weights()
    save = _save(5.0 / lam, 60)
    tr = R.solve_reduced(model, W0, save)
    ref, deaths = _brute_force(np.abs(W0[0]), c, lam, save)
    assert ref.shape[0] == save.size and deaths.size == m - 1
    # reduced at its default rtol 1e-10 vs the direct flow at 1e-13: measured 1e-10
    np.testing.assert_allclose(tr.l1[:, 0], ref[:, 1], rtol=1e-9)
    np.testing.assert_allclose(tr.l2sq[:, 0], ref[:, 2], rtol=1e-9)
    assert np.array_equal(tr.nnz[:, 0], ref[:, 3].astype(int))
    # max_nnz stops at a death time of the direct integration
    k = 5
    tr2 = R.solve_reduced(model, W0, save, max_nnz=k)
    assert tr2.stats.status == "sparse"
    t_star = deaths[m - k - 1]  # the (k+1)-th largest weight's death
    assert abs(tr2.stats.t_end - t_star) <= 1e-10 * t_star  # measured 2e-12


def test_nnz_monotone_and_reaches_one():
    lam = 1e-3
    model = _model(n=5, m=400, lam=lam)
    tr = R.solve_reduced(model, model.initial_weights(), _save(10 / lam, 60))
    assert np.all(np.diff(tr.nnz, axis=0) <= 0)
    assert np.all(tr.nnz[0] == 400) and np.all(tr.nnz[-1] == 1)
    assert tr.nnz.dtype == np.int64 and tr.l1.shape == (60, 5)
    # the surviving weight sits at the fixed point (1 - w²) w = λ/c
    w = np.sqrt(tr.l2sq[-1])
    np.testing.assert_allclose((1 - w**2) * w, lam / model.c, rtol=1e-6)


def test_max_nnz_stop():
    lam, k = 1e-3, 3
    model = _model(n=4, m=300, lam=lam)
    W0 = model.initial_weights()
    save = _save(10 / lam, 80)
    tr = R.solve_reduced(model, W0, save, max_nnz=k, snapshots=True)
    assert tr.stats.status == "sparse"
    assert np.all(tr.nnz[-1] <= k)
    assert tr.nnz[-2].max() > k  # one save before, some row still had more
    assert tr.t[-1] == tr.stats.t_end and np.all(tr.t[:-1] == save[: tr.t.size - 1])
    assert tr.t[-2] < tr.t[-1] < save[tr.t.size - 1]
    # at t* the slowest row has exactly k weights: its (k+1)-th just died
    assert tr.nnz[-1].max() == k
    assert np.array_equal(np.count_nonzero(tr.W, axis=1), tr.nnz[-1])
    np.testing.assert_array_equal(tr.snapshots[-1], tr.W)
    assert tr.snapshots.shape == (tr.t.size,) + W0.shape


def test_max_nnz_already_met_stops_at_zero():
    model = _model(n=2, m=10, lam=1e-3)
    W0 = np.zeros((2, 10))
    W0[0, 0], W0[1, :2] = 0.5, [0.3, -0.2]
    tr = R.solve_reduced(model, W0, _save(100.0, 5), max_nnz=2)
    assert tr.stats.status == "sparse" and tr.t.tolist() == [0.0]
    assert np.array_equal(tr.W, W0)


def test_snapshots_and_zeros_match_row_stats():
    lam = 2e-3
    model = _model(n=4, m=300, lam=lam, c=2.0)
    W0 = _W0_with_zeros(n=4, m=300)
    tr = R.solve_reduced(model, W0, _save(3 / lam, 12), snapshots=True)
    assert tr.snapshots.shape == (12, 4, 300)
    assert np.all(tr.snapshots[:, W0 == 0] == 0)
    assert np.all(np.sign(tr.snapshots) * np.sign(W0) >= 0)  # signs kept
    for j in range(12):
        ref = row_stats(tr.snapshots[j], model)
        assert np.array_equal(tr.nnz[j], ref["nnz"])
        np.testing.assert_allclose(tr.l2sq[j], ref["l2sq"], rtol=1e-12)
        np.testing.assert_allclose(tr.l1[j], ref["l1"], rtol=1e-12)
    assert np.all(tr.nnz[:, -1] == 0) and np.all(np.isnan(tr.relvar[:, -1]))


def test_trajectory_fields():
    model = _model(n=2, m=50, lam=1e-3)
    save = _save(100.0, 7)
    tr = R.solve_reduced(model, model.initial_weights(), save, rtol=1e-9, atol=1e-12)
    assert tr.method == "reduced" and tr.dt is None
    assert tr.options["rtol"] == 1e-9 and tr.options["atol"] == 1e-12
    assert np.array_equal(tr.t, save) and tr.stats.t_end == save[-1]
    assert tr.stats.steps > 0 and tr.stats.force_evals >= tr.stats.steps
    assert tr.snapshots is None and tr.snapshot_t is None
    for name in ("l1", "l2sq", "l4", "relvar", "loss"):
        assert tr.stat(name).shape == (7, 2) and tr.stat(name).dtype == np.float64


@pytest.mark.parametrize("ode_method", ["radau-numba", "Radau"])
def test_progress_callback(monkeypatch, ode_method):
    class Clock:
        now = 0.0

        def perf_counter(self):
            # every call looks 1 s later: the callback fires at every rhs (scipy) or
            # kernel call (radau-numba, whose step budget per call then drops to 1)
            self.now += 1.0
            return self.now

    monkeypatch.setattr(R, "time", Clock())
    seen = []
    model = _model(n=1, m=50, lam=1e-3)
    R.solve_reduced(model, model.initial_weights(), _save(50.0, 5), progress=seen.append,
                    ode_method=ode_method)
    assert len(seen) > 10 and all(0.0 <= t <= 50.0 for t in seen)
    if ode_method == "radau-numba":
        assert np.all(np.diff(seen) > 0)
        # with a stop, candidate rows run first, then the rest: still reported increasing
        seen.clear()
        model = _model(n=3, m=50, lam=1e-2)
        tr = R.solve_reduced(model, model.initial_weights(), _save(1e3, 5), max_nnz=1,
                             progress=seen.append)
        assert tr.stats.status == "sparse" and len(seen) > 10
        assert np.all(np.diff(seen) > 0) and seen[-1] <= tr.stats.t_end


def test_interference_rejected():
    model = Model(n=2, m=10, lam=1e-3, interference=True)
    with pytest.raises(FlowsimInputError, match="invalid method='reduced': needs interference"):
        R.solve_reduced(model, model.initial_weights(), _save(1.0, 3))


def test_bad_options_rejected():
    model = _model(n=1, m=10)
    with pytest.raises(FlowsimInputError, match="max_nnz"):
        R.solve_reduced(model, model.initial_weights(), _save(1.0, 3), max_nnz=-1)
    with pytest.raises(FlowsimInputError, match="ode_method"):
        R.solve_reduced(model, model.initial_weights(), _save(1.0, 3), ode_method="Euler")


@pytest.mark.parametrize("method", ["LSODA", "BDF"])
def test_other_implicit_methods_agree(method):
    lam = 1e-3
    model = _model(n=3, m=200, lam=lam)
    W0 = model.initial_weights()
    save = _save(10 / lam, 30)
    ref = R.solve_reduced(model, W0, save)
    tr = R.solve_reduced(model, W0, save, ode_method=method, rtol=1e-12, atol=1e-15)
    # both within ~1e-8 of the exact flow (see test_matches_direct_integration...)
    np.testing.assert_allclose(tr.l2sq, ref.l2sq, rtol=1e-7)


# ------------------------------------------------------------- numba Radau integrator
def test_alive_count_near_matches_alive_count():
    W0 = _W0_with_zeros(n=4, m=300)
    rows = R.sort_rows(W0)
    rng = np.random.default_rng(5)
    for _ in range(400):
        i = int(rng.integers(4))
        A = rng.uniform(0.5, 50.0)
        s = A * rows.a1[i] * rng.uniform(-0.2, 1.1)
        if rng.random() < 0.2 and rows.nz[i] > 0:  # exactly on a weight: dead
            s = A * rows.d[i, int(rng.integers(rows.nz[i]))]
        hint = int(rng.integers(-3, rows.nz[i] + 4))
        want = R._alive_count(rows.d[i], rows.nz[i], A, s)
        assert R._alive_count_near(rows.d[i], rows.nz[i], A, s, hint) == want
        assert want == R._alive_reference(rows.d[i], rows.nz[i], A, s)


def test_solve2_matches_numpy():
    rng = np.random.default_rng(6)
    for dtype in (np.float64, np.complex128):
        for _ in range(50):
            M = rng.standard_normal((2, 2)).astype(dtype)
            r = rng.standard_normal(2).astype(dtype)
            if dtype is np.complex128:
                M += 1j * rng.standard_normal((2, 2))
                r += 1j * rng.standard_normal(2)
            if rng.random() < 0.3:
                M[0, 0] = 0.0  # needs the row swap
            x = R._solve2(M[0, 0], M[0, 1], M[1, 0], M[1, 1], r[0], r[1])
            # Gaussian elimination with pivoting vs LAPACK: backward stable, cond <~ 1e3
            np.testing.assert_allclose(x, np.linalg.solve(M, r), rtol=1e-11, atol=1e-12)


def test_predict_factor_matches_scipy():
    from scipy.integrate._ivp.radau import predict_factor

    rng = np.random.default_rng(7)
    for _ in range(50):
        h, h_old, e, e_old = rng.uniform(0.01, 10.0, 4)
        assert R._predict_factor(h, h_old, e, e_old) == predict_factor(h, h_old, e, e_old)
        assert R._predict_factor(h, np.nan, e, np.nan) == predict_factor(h, None, e, None)
    assert R._predict_factor(1.0, 2.0, 0.0, 0.5) == np.inf


def _one_row_problem(m=300, lam=2e-3, c=1.3, seed=3):
    model = Model(n=1, m=m, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(m),
                  seed=seed)
    return model, R.sort_rows(model.initial_weights())


def _init_state(rows, c_fb, lam_l1, rtol, atol, t_max, ev=None):
    n = rows.nz.size
    fs = np.empty((n, R._NF))
    ist = np.empty((n, R._NI), dtype=np.int64)
    ev = np.full(n, np.nan) if ev is None else ev
    R._radau_init(rows.d, rows.nz, rows.P1, rows.P2, c_fb, lam_l1, rtol, atol, rows.a1,
                  t_max, ev, fs, ist)
    return fs, ist


def test_radau_steps_follow_scipy_radau_step_by_step():
    """The port takes scipy's steps: same Newton/Jacobian decisions, same step sizes."""
    model, rows = _one_row_problem()
    c, lam, rtol, atol, t_max = model.c, model.lam, 1e-10, 1e-13, 10 / model.lam

    def fun(t, y):
        out = np.empty(2)
        R._rhs_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, c, lam, out)
        return out

    def jac(t, y):
        out = np.empty(4)
        R._jac_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, c, out)
        return out.reshape(2, 2).T.copy()

    ref = scipy.integrate.Radau(fun, 0.0, np.array([1.0, rows.a1[0]]), t_max, rtol=rtol,
                                atol=atol, jac=jac)
    fs, ist = _init_state(rows, c, lam, rtol, atol, t_max)
    assert fs[0, R._F_H] == ref.h_abs
    save = np.array([0.0, t_max])
    out = np.empty((2, 1))
    for _ in range(40):
        ref.step()
        R._radau_advance(rows.d, rows.nz, rows.P1, rows.P2, c, lam, rtol, atol, save, 1,
                         fs, ist, out, out.copy())
        assert ist[0, R._I_NFEV] == ref.nfev and ist[0, R._I_NJEV] == ref.njev
        # the error estimate of the first steps is at rounding level (~1e-15 absolute),
        # so the step sizes pick up relative differences ~1e-6 (measured 1.5e-6)
        assert abs(fs[0, R._F_T] - ref.t) <= 1e-5 * ref.t
        # same point of the same solution: scipy's dense output at our t (measured 1e-13)
        np.testing.assert_allclose(fs[0, [R._F_A, R._F_S]], ref.dense_output()(fs[0, R._F_T]),
                                   rtol=1e-11)


def test_radau_result_independent_of_call_chunks():
    model, rows = _one_row_problem(m=200, seed=4)
    t_max = 8 / model.lam
    save = np.linspace(0.0, t_max, 13)
    ev = np.array([rows.d[0, 3]])
    results = []
    for budget in (1, 7, 10**9):
        fs, ist = _init_state(rows, model.c, model.lam, 1e-10, 1e-13, t_max, ev)
        out_A, out_s = np.full((13, 1), np.nan), np.full((13, 1), np.nan)
        calls = 0
        while ist[0, R._I_STATUS] == R._RUNNING:
            R._radau_advance(rows.d, rows.nz, rows.P1, rows.P2, model.c, model.lam, 1e-10,
                             1e-13, save, budget, fs, ist, out_A, out_s)
            calls += 1
        assert ist[0, R._I_STATUS] == R._EVENT
        assert calls == -(-ist[0, R._I_STEPS] // budget)  # the budget was honoured
        results.append((fs.copy(), ist.copy(), out_A, out_s))
    for fs, ist, out_A, out_s in results[1:]:
        assert np.array_equal(fs, results[0][0]) and np.array_equal(ist, results[0][1])
        assert np.array_equal(out_A, results[0][2], equal_nan=True)
        assert np.array_equal(out_s, results[0][3], equal_nan=True)


def test_rows_are_integrated_independently():
    model = _model(n=3, m=150, lam=2e-3)
    W0 = model.initial_weights()
    save = _save(8 / model.lam, 20)
    together = R.reduced_path(model, W0, save)
    for i in range(3):
        alone = R.reduced_path(model.replace(n=1), W0[i:i + 1], save)
        assert np.array_equal(alone.A[:, 0], together.A[:, i])
        assert np.array_equal(alone.top[:, 0], together.top[:, i])


# (m, lam, c, switches, n, max_nnz): all at rtol 1e-12, atol 1e-15 for both solvers
_AGREE_CASES = [
    (40, 5e-3, 1.0, {}, 5, 1),
    (300, 2e-3, 2.5, {}, 2, 3),
    (600, 3e-4, 0.7, {}, 1, 2),
    (200, 1e-3, 1.0, dict(feature_benefit=False), 4, 3),
    (200, 1e-3, 1.5, dict(l1=False), 2, None),
    (120, 0.0, 1.0, {}, 2, None),
]


@pytest.mark.parametrize("m, lam, c, switches, n, max_nnz", _AGREE_CASES)
def test_radau_numba_agrees_with_scipy_radau(m, lam, c, switches, n, max_nnz):
    model = Model(n=n, m=m, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(m),
                  seed=m + n, **switches)
    W0 = model.initial_weights()
    if not model.feature_benefit:
        t_max = 0.8 * np.abs(W0).max() / lam
    else:
        t_max = 8.0 / lam if lam > 0 else 20.0 / c
    save = _save(t_max, 30)
    kw = dict(rtol=1e-12, atol=1e-15, max_nnz=max_nnz)
    got = R.solve_reduced(model, W0, save, ode_method="radau-numba", **kw)
    ref = R.solve_reduced(model, W0, save, ode_method="Radau", **kw)
    assert got.stats.status == ref.stats.status
    assert got.t.size == ref.t.size and np.array_equal(got.t[:-1], ref.t[:-1])
    # t*: measured <= 1e-13 relative (ours located to 1e-14 in t on the step's end point,
    # scipy's by brentq on its dense output); without a stop both end at t_max exactly
    assert abs(got.t[-1] - ref.t[-1]) <= 1e-9 * ref.t[-1]
    assert np.array_equal(got.nnz, ref.nnz)
    # both solvers' global errors at rtol 1e-12: measured <= 6e-12 relative
    for name in ("l1", "l2sq", "l4"):
        np.testing.assert_allclose(got.stat(name), ref.stat(name), rtol=1e-9, atol=1e-300)
    # the loss (1 - ‖W‖²)² + λ‖W‖₁ can vanish: compared on the scale of its terms
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.relvar, ref.relvar, rtol=1e-9, atol=1e-10)


def test_numba_failure_raises_divergence_error():
    # once one weight is left, A grows like exp(λ t / w): A² overflows near λ t ≈ 350
    model = _model(n=1, m=10, lam=1e-2)
    with pytest.raises(DivergenceError, match=r"radau-numba\) failed on row 0 at t="):
        R.solve_reduced(model, model.initial_weights(), _save(1e5, 5))
