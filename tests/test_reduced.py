"""Tests of flowsim.reduced: kernels vs NumPy references, exact solutions, stopping."""
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize

import _reduced_reference as ref
import flowsim._reduced_kernels as RK
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
    RK._prefix_power_sums(x, *P)
    for got, want in zip(P, ref.prefix_power_sums_reference(x)):
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
        RK._rhs_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, 1.3, 2e-3, out)
        want = ref.rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y, 1.3, 2e-3)
        assert np.array_equal(out, want)
        for i in range(n):
            k = RK._alive_count(rows.d[i], rows.nz[i], A[i], s[i])
            assert k == np.count_nonzero(A[i] * rows.d[i, : rows.nz[i]] < s[i])


def test_jacobian_kernel_matches_finite_differences():
    W0 = _W0_with_zeros(n=3, m=400)
    rows = R.sort_rows(W0)
    y = np.array([3.0, 0.6 * 3.0 * rows.a1[0], 1.5, 0.9 * 1.5 * rows.a1[1], 2.0, -0.1])
    J = np.empty(12)
    RK._jac_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, 1.0, J)
    h = 1e-7 * np.maximum(np.abs(y), 1e-3)
    for col in range(6):
        e = np.zeros(6)
        e[col] = h[col]
        fd = (ref.rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y + e, 1.0, 1e-3)
              - ref.rhs_reference(rows.d, rows.nz, rows.P1, rows.P2, y - e, 1.0, 1e-3)
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
    RK._materialise_kernel(W0, rows.a1, A, s, out)
    assert np.array_equal(out, ref.materialise_reference(W0, rows.a1, A, s))
    # and it is the affine map of the brief, B = A a1 - s (up to rounding)
    np.testing.assert_allclose(out, ref.reduced_weights(W0, A, A * rows.a1 - s), atol=1e-15)


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
    want = row_stats(W, model)
    assert np.array_equal(st["nnz"][0], want["nnz"])
    assert np.count_nonzero(W[W0 == 0]) == 0
    for name in ("l1", "l2sq", "l4", "loss"):
        # prefix-sum formulas vs direct sums; cancellation factor <= (a1/mean a)^4 here
        np.testing.assert_allclose(st[name][0], want[name], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(st["relvar"][0], want["relvar"], rtol=1e-10, atol=1e-12)
    assert np.isnan(st["relvar"][0, -1])  # the all-zero row


def test_stats_without_l1_are_scaled_initial_stats():
    model = _model(n=4, m=300, lam=0.0)
    W0 = _W0_with_zeros(n=4, m=300)
    W0[2, 3] = 1e-30  # a tiny weight is still a nonzero weight
    rows = R.sort_rows(W0)
    A = np.array([[1.0, 2.0, 3.0, 4.0]])
    st = R.reduced_stats(rows, A, A * rows.a1, model)
    want = row_stats(A.T * W0, model)
    assert np.array_equal(st["nnz"][0], want["nnz"])
    for name in ("l1", "l2sq", "l4", "loss"):
        np.testing.assert_allclose(st[name][0], want[name], rtol=1e-12)


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
    direct, deaths = _brute_force(np.abs(W0[0]), c, lam, save)
    assert direct.shape[0] == save.size and deaths.size == m - 1
    # reduced at its default rtol 1e-10 vs the direct flow at 1e-13: measured 1e-10
    np.testing.assert_allclose(tr.l1[:, 0], direct[:, 1], rtol=1e-9)
    np.testing.assert_allclose(tr.l2sq[:, 0], direct[:, 2], rtol=1e-9)
    assert np.array_equal(tr.nnz[:, 0], direct[:, 3].astype(int))
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
        want = row_stats(tr.snapshots[j], model)
        assert np.array_equal(tr.nnz[j], want["nnz"])
        np.testing.assert_allclose(tr.l2sq[j], want["l2sq"], rtol=1e-12)
        np.testing.assert_allclose(tr.l1[j], want["l1"], rtol=1e-12)
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
    base = R.solve_reduced(model, W0, save)
    tr = R.solve_reduced(model, W0, save, ode_method=method, rtol=1e-12, atol=1e-15)
    # both within ~1e-8 of the exact flow (see test_matches_direct_integration...)
    np.testing.assert_allclose(tr.l2sq, base.l2sq, rtol=1e-7)


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
        want = RK._alive_count(rows.d[i], rows.nz[i], A, s)
        assert RK._alive_count_near(rows.d[i], rows.nz[i], A, s, hint) == want
        assert want == ref.alive_reference(rows.d[i], rows.nz[i], A, s)


def _one_row_problem(m=300, lam=2e-3, c=1.3, seed=3):
    model = Model(n=1, m=m, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(m),
                  seed=seed)
    return model, R.sort_rows(model.initial_weights())


def _row_run(rows, c_fb, lam_l1, rtol, atol, save, ev=None):
    ev = np.full(rows.nz.size, np.nan) if ev is None else ev
    return R._RowRun(rows, save, c_fb, lam_l1, rtol, atol, ev, 0.0, 0.0)


def test_radau_steps_follow_scipy_radau_step_by_step():
    """The port takes scipy's steps: same Newton/Jacobian decisions, same step sizes."""
    model, rows = _one_row_problem()
    c, lam, rtol, atol, t_max = model.c, model.lam, 1e-10, 1e-13, 10 / model.lam

    def fun(t, y):
        out = np.empty(2)
        RK._rhs_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, c, lam, out)
        return out

    def jac(t, y):
        out = np.empty(4)
        RK._jac_kernel(rows.d, rows.nz, rows.P1, rows.P2, y, c, out)
        return out.reshape(2, 2).T.copy()

    scipy_radau = scipy.integrate.Radau(fun, 0.0, np.array([1.0, rows.a1[0]]), t_max,
                                        rtol=rtol, atol=atol, jac=jac)
    run = _row_run(rows, c, lam, rtol, atol, np.array([0.0, t_max]))
    st = run.st
    assert st["h"][0] == scipy_radau.h_abs
    for _ in range(40):
        scipy_radau.step()
        run.advance(1)
        assert st["nfev"][0] == scipy_radau.nfev and st["njev"][0] == scipy_radau.njev
        # the error estimate of the first steps is at rounding level (~1e-15 absolute),
        # so the step sizes pick up relative differences ~1e-6 (measured 1.5e-6)
        assert abs(st["t"][0] - scipy_radau.t) <= 1e-5 * scipy_radau.t
        # same point of the same solution: scipy's dense output at our t (measured 1e-13)
        np.testing.assert_allclose(st["y"][0], scipy_radau.dense_output()(st["t"][0]),
                                   rtol=1e-11)


def test_radau_result_independent_of_call_chunks():
    model, rows = _one_row_problem(m=200, seed=4)
    t_max = 8 / model.lam
    save = np.linspace(0.0, t_max, 13)
    ev = np.array([rows.d[0, 3]])
    results = []
    for budget in (1, 7, 10**9):
        run = _row_run(rows, model.c, model.lam, 1e-10, 1e-13, save, ev)
        calls = 0
        while run.row["status"][0] == RK._RUNNING:
            run.advance(budget)
            calls += 1
        assert run.row["status"][0] == RK._EVENT
        assert calls == -(-run.st["steps"][0] // budget)  # the budget was honoured
        results.append((run.st.copy(), run.row.copy(), *run.out))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert a.tobytes() == b.tobytes()  # bitwise, NaN included


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
    # ‖W‖² overflows at once: the port fails with a step size underflow
    model = _model(n=1, m=2, lam=1e-2)
    with pytest.warns(RuntimeWarning), \
            pytest.raises(DivergenceError, match=r"radau-numba\) failed on row 0 at t="):
        R.solve_reduced(model, np.array([[1e200, 0.5]]), _save(10.0, 5))


# ------------------------------------------------------ long runs: terminal phase
def _stable_root(c, lam):
    """The stable fixed point of c(1 - w²) w = λ (the larger root, in (1/√3, 1))."""
    return scipy.optimize.brentq(lambda w: c * (1 - w * w) * w - lam, 1 / np.sqrt(3), 1.0,
                                 xtol=1e-300, rtol=8.9e-16)


def _long_save(lam, k=60):
    return np.concatenate([[0.0], np.geomspace(1e-3, 1e4 / lam, k - 1)])


@pytest.mark.parametrize("m, lam, c", [(50, 1e-2, 1.0), (200, 1e-3, 4.0), (30, 5e-2, 0.5),
                                       (100, 0.1, 1.0)])
def test_long_run_ends_at_the_fixed_point(m, lam, c):
    model = Model(n=3, m=m, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(m),
                  seed=3)
    W0 = model.initial_weights()
    save = _long_save(lam)  # t = 10⁴/λ: A ~ e^{10⁴} would overflow
    tr = R.solve_reduced(model, W0, save)
    assert tr.stats.status == "completed" and tr.t[-1] == 1e4 / lam
    for name in ("l1", "l2sq", "l4", "loss"):
        assert np.all(np.isfinite(tr.stat(name)))
    assert np.all(tr.nnz[-1] == 1) and np.all(np.count_nonzero(tr.W, axis=1) == 1)
    w_star = _stable_root(c, lam)
    # the surviving weight is the root to rounding (measured <= 1 ulp, 1.1e-16)
    np.testing.assert_allclose(np.abs(tr.W[tr.W != 0]), w_star, rtol=4e-16, atol=0)
    np.testing.assert_allclose(tr.l2sq[-1], w_star**2, rtol=1e-15)
    # ln A grows at the rate λ/w* of A' = c(1 - w*²) A (measured 1e-6 over the last
    # decade of t: the approach to w* is done)
    path = R.reduced_path(model, W0, save)
    rate = (path.log_A[-1] - path.log_A[-2]) / (save[-1] - save[-2])
    np.testing.assert_allclose(rate, lam / w_star, rtol=1e-6)
    assert np.all(np.isfinite(path.A)) and np.all(path.A[-1] == 2.0**255)
    # the stop at one weight per row still works on the long horizon
    sp = R.solve_reduced(model, W0, save, max_nnz=1)
    assert sp.stats.status == "sparse" and sp.nnz[-1].max() == 1
    assert sp.nnz[-2].max() > 1 and sp.t[-1] < 1e4 / lam


@pytest.mark.parametrize("m, lam, c", [(50, 1e-2, 1.0), (200, 1e-3, 4.0)])
def test_long_run_unchanged_by_tighter_rtol(m, lam, c):
    """The long-run statistics are a property of the flow, not of the tolerance."""
    model = Model(n=3, m=m, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(m),
                  seed=7)
    W0 = model.initial_weights()
    save = _long_save(lam)
    a = R.solve_reduced(model, W0, save)
    b = R.solve_reduced(model, W0, save, rtol=1e-12, atol=1e-15)
    assert np.array_equal(a.nnz, b.nnz)
    # measured <= 1.1e-10 (l4), 5.5e-11 (l2sq) relative over all save times
    for name in ("l1", "l2sq", "l4", "loss"):
        np.testing.assert_allclose(a.stat(name), b.stat(name), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(a.W, b.W, rtol=1e-14, atol=0)  # both at the root


def _long_run(lam, **switches):
    model = Model(n=3, m=50, lam=lam, interference=False, init_std=0.9 / np.sqrt(50),
                  seed=5, **switches)
    W0 = model.initial_weights()
    save = _long_save(lam)
    return model, W0, save, R.solve_reduced(model, W0, save)


def test_long_run_without_feature_benefit_kills_every_weight():
    lam = 1e-2
    model, W0, save, tr = _long_run(lam, feature_benefit=False)
    for name in ("l1", "l2sq", "l4", "loss"):
        assert np.all(np.isfinite(tr.stat(name)))
    assert np.all(np.isfinite(tr.W)) and np.all(tr.W == 0)
    # a pure shift: every weight dies at |W0|/λ exactly, the last at max|W0|/λ
    t_death = np.abs(W0).max(axis=1) / lam
    alive = tr.nnz > 0
    assert np.array_equal(alive, save[:, None] < t_death[None, :])


def test_long_run_without_l1_keeps_every_weight():
    model, W0, save, tr = _long_run(1e-2, l1=False)
    assert np.all(tr.nnz == 50)
    # A tends to its fixed point ‖A W0‖ = 1 (measured 5e-15)
    path = R.reduced_path(model, W0, save)
    np.testing.assert_allclose(path.A[-1], 1 / np.sqrt((W0**2).sum(axis=1)), rtol=1e-13)
    np.testing.assert_allclose(tr.l2sq[-1], 1.0, rtol=1e-13)


def test_long_run_with_tied_largest_weights_and_a_single_weight():
    lam, c = 1e-2, 1.0
    model = Model(n=3, m=40, lam=lam, c=c, interference=False, init_std=0.9 / np.sqrt(40),
                  seed=2)
    W0 = model.initial_weights()
    W0[0, :3] = 1.01 * np.abs(W0[0]).max() * np.array([1.0, -1.0, 1.0])  # 3 tied largest
    W0[1] = 0.0
    W0[1, 5] = -0.3  # one nonzero weight: terminal phase from t = 0
    save = _long_save(lam)
    tr = R.solve_reduced(model, W0, save)
    assert tr.nnz[-1].tolist() == [3, 1, 1]
    # z tied survivors sit at the stable root of c(1 - z w²) w = λ (measured <= 1 ulp)
    w3 = scipy.optimize.brentq(lambda w: c * (1 - 3 * w * w) * w - lam, 1 / 3, 1 / np.sqrt(3),
                               xtol=1e-300, rtol=8.9e-16)
    np.testing.assert_allclose(tr.W[0, :3], w3 * np.array([1.0, -1.0, 1.0]), rtol=4e-16)
    np.testing.assert_allclose(tr.W[1, 5], -_stable_root(c, lam), rtol=4e-16)
    # the single weight follows w' = c(1 - w²) w - λ from the start (measured 9.4e-13
    # against LSODA at rtol 1e-13)
    sol = scipy.integrate.solve_ivp(lambda t, w: c * (1 - w * w) * w - lam, (0, save[-1]),
                                    [0.3], t_eval=save, rtol=1e-13, atol=1e-16,
                                    method="LSODA")
    np.testing.assert_allclose(tr.l1[:, 1], sol.y[0], rtol=1e-10)


def _row_record(phase, hint=0):
    row = np.zeros(1, dtype=(np.record, RK.ROW))
    row["phase"], row["hint"] = phase, hint
    return row


def test_terminal_phase_kernels_match_reference():
    W0 = _W0_with_zeros(n=4, m=300)
    W0[2, :3] = 1.01 * np.abs(W0[2]).max()  # three tied largest weights
    rows = R.sort_rows(W0)
    assert rows.ties.tolist() == [1, 1, 3, 0]
    rng = np.random.default_rng(8)
    for i in range(3):
        args = (rows.d[i], rows.nz[i], rows.P1[i], rows.P2[i], rows.ties[i])
        for s in list(rng.uniform(-0.5, 1.5, 20)) + [0.0]:
            u = rng.uniform(0.0, 2000.0)  # any ln A: the weights do not depend on it
            row = _row_record(1)
            got = RK._model_f(*args, 1.7, 3e-3, row[0], u, s)
            assert got == ref.terminal_rhs_reference(rows.ties[i], s, 1.7, 3e-3)
            assert row["hint"][0] == (rows.ties[i] if s > 0 else 0)
            # the same flow as (A, s) with only the ties alive: u' = A'/A
            A = 1e6 * s / rows.d[i, rows.ties[i]] if s > 0 else 1.0
            fa, fs = RK._model_f(*args, 1.7, 3e-3, _row_record(0, 5)[0], A, s)
            assert fs == got[1] and fa == pytest.approx(got[0] * A, rel=1e-15, abs=0)
            J = np.empty((2, 2))
            RK._model_jac(*args, 1.7, _row_record(1)[0], u, s, J)
            h = 1e-7
            fd = (np.array(ref.terminal_rhs_reference(rows.ties[i], s + h, 1.7, 3e-3))
                  - np.array(ref.terminal_rhs_reference(rows.ties[i], s - h, 1.7, 3e-3))) / (2 * h)
            assert J[0, 0] == 0.0 and J[1, 0] == 0.0
            if abs(s) > 1e-6:  # away from the kink at s = 0; measured 1e-9
                np.testing.assert_allclose(J[:, 1], fd, rtol=1e-7, atol=1e-9)


def test_convergence_rule_kernel_matches_materialised_weights():
    model = _model(n=4, m=300, lam=2e-3)
    W0 = _W0_with_zeros(n=4, m=300)
    rows = R.sort_rows(W0)
    rng = np.random.default_rng(9)
    for _ in range(40):
        i = int(rng.integers(3))
        A0 = rng.uniform(1.0, 5.0)
        s0 = A0 * rows.a1[i] * rng.uniform(0.05, 1.0)
        A1 = A0 * (1 + rng.uniform(-1e-3, 1e-3))
        s1 = s0 + rng.uniform(-1e-4, 1e-4) * s0
        h = rng.uniform(0.1, 10.0)
        W_old = R.materialise(rows, W0, np.full(4, A0), np.full(4, s0), model)[i:i + 1]
        W_new = R.materialise(rows, W0, np.full(4, A1), np.full(4, s1), model)[i:i + 1]
        changed, rate = ref.step_rate_reference(W_old, W_new, h)
        k0 = RK._alive_count(rows.d[i], rows.nz[i], A0, s0)
        k1 = RK._alive_count(rows.d[i], rows.nz[i], A1, s1)
        assert bool(changed[0]) == (k0 != k1)
        for tol, window in ((rate[0] * (1 - 1e-9), 7.0), (rate[0] * (1 + 1e-9), 7.0)):
            st = R.rd.new_states(1)
            st["t_old"], st["t"], st["y"] = 50.0, 50.0 + h, [(A1, s1)]
            row = _row_record(0, k1)
            row["k_last"], row["t_quiet"], row["t_end"], row["cap"] = k0, 3.0, 60.0, 1e9
            RK._track(st[0], row[0], rows.d[i], A0, s0, tol, window)
            violated = changed[0] or rate[0] > tol  # rounding: ΔW from (A, s) vs from W
            assert (row["t_quiet"][0] == 50.0 + h) == violated
            assert row["t_end"][0] == (max(60.0, 50.0 + h + window) if violated else 60.0)
            assert row["k_last"][0] == k1


# ------------------------------------------------------------- convergence stop
@pytest.mark.parametrize("n, m, lam, tol, window", [(3, 50, 1e-2, 1e-3, 10.0),
                                                     (4, 30, 2e-2, 1e-3, 20.0),
                                                     (2, 60, 1e-2, 1e-4, 30.0)])
def test_convergence_stop(n, m, lam, tol, window):
    model = Model(n=n, m=m, lam=lam, interference=False, init_std=0.9 / np.sqrt(m), seed=11)
    W0 = model.initial_weights()
    save = _long_save(lam, 200)
    tr = R.solve_reduced(model, W0, save, tol=tol, window=window)
    s = tr.stats
    assert s.status == "converged" and tr.t[-1] == s.t_end
    assert s.t_end == pytest.approx(s.t_converged + window, rel=1e-15)
    assert tr.options["tol"] == tol and tr.options["window"] == window
    # at this tol the weights settle before the last death: the rule starts to hold at
    # the end of the step on which the last weight died (measured 0.002 to 0.056 after)
    t_last_death = R.solve_reduced(model, W0, save, max_nnz=1).stats.t_end
    assert 0.0 < s.t_converged - t_last_death < 0.1
    # before t_end the run is the unstopped one (steps clipped at the stop differ)
    full = R.solve_reduced(model, W0, save)
    k = tr.t.size - 1
    assert np.array_equal(tr.t[:-1], full.t[:k]) and np.array_equal(tr.nnz[:-1], full.nnz[:k])
    np.testing.assert_allclose(tr.l2sq[:-1], full.l2sq[:k], rtol=1e-12)
    # the rule over the window, from the weights: support fixed, |ΔW| <= tol Δt
    # (measured ratio <= 0.08)
    grid = np.unique(np.concatenate([save[save < s.t_converged],
                                     np.linspace(s.t_converged, s.t_end, 11)]))
    dense = R.solve_reduced(model, W0, grid, snapshots=True)
    j = np.searchsorted(grid, s.t_converged)
    assert np.all(dense.nnz[j:] == dense.nnz[j])
    dW = np.abs(dense.snapshots[j + 1:] - dense.snapshots[j]).max(axis=(1, 2))
    assert np.all(dW <= tol * (grid[j + 1:] - grid[j]))
    np.testing.assert_array_equal(dense.nnz[-1], tr.nnz[-1])


def test_convergence_and_sparse_stops_together():
    lam = 1e-2
    model = Model(n=3, m=50, lam=lam, interference=False, init_std=0.9 / np.sqrt(50), seed=11)
    W0 = model.initial_weights()
    save = _long_save(lam, 100)
    conv = R.solve_reduced(model, W0, save, tol=1e-3, window=10.0)
    # max_nnz = 5 is reached first
    sp = R.solve_reduced(model, W0, save, max_nnz=5)
    both = R.solve_reduced(model, W0, save, max_nnz=5, tol=1e-3, window=10.0)
    assert both.stats.status == "sparse" and both.stats.t_end == sp.stats.t_end
    assert np.isnan(both.stats.t_converged) and np.array_equal(both.nnz, sp.nnz)
    np.testing.assert_allclose(both.l1, sp.l1, rtol=1e-12)
    # the converged state has 1 weight per row: max_nnz = 0 is never reached
    both = R.solve_reduced(model, W0, save, max_nnz=0, tol=1e-3, window=10.0)
    assert both.stats.status == "converged" and both.stats.t_end == conv.stats.t_end
    np.testing.assert_array_equal(both.W, conv.W)
    # without L1 nothing dies; the rows settle at ‖W‖ = 1
    model = model.replace(l1=False)
    tr = R.solve_reduced(model, W0, save, max_nnz=1, tol=1e-5, window=5.0)
    assert tr.stats.status == "converged" and np.all(tr.nnz[-1] == 50)
    np.testing.assert_allclose(tr.l2sq[-1], 1.0, rtol=1e-4)


def test_convergence_stop_rejected_where_unsupported():
    model = _model(n=1, m=10)
    W0 = model.initial_weights()
    with pytest.raises(FlowsimInputError, match="invalid tol=.*radau-numba"):
        R.solve_reduced(model, W0, _save(1.0, 3), tol=1e-3, ode_method="Radau")
    with pytest.raises(FlowsimInputError, match="tol"):
        R.solve_reduced(model, W0, _save(1.0, 3), tol=-1.0)
    with pytest.raises(FlowsimInputError, match="window"):
        R.solve_reduced(model, W0, _save(1.0, 3), tol=1e-3, window=0.0)


def test_run_stats_report_steps_rejections_and_step_sizes():
    model = _model(n=3, m=100, lam=2e-3)
    W0 = model.initial_weights()
    save = _save(5 / model.lam, 20)
    tr = R.solve_reduced(model, W0, save)
    path = R.reduced_path(model, W0, save)
    s = tr.stats
    assert (s.steps, s.rejected, s.force_evals) == (path.steps, path.rejected, path.nfev)
    assert s.steps > 0 and s.rejected > 0 and s.force_evals > 3 * s.steps
    assert 0 < s.h_min <= s.h_max < save[-1] and np.isnan(s.t_converged)
    assert f"{s.steps} steps ({s.rejected} rejected)" in s.message
    sc = R.solve_reduced(model, W0, save[:8], ode_method="Radau").stats
    assert sc.rejected == -1 and 0 < sc.h_min <= sc.h_max and sc.steps > 0
