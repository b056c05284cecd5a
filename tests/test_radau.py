"""Tests of flowsim._radau (the numba Radau IIA port) on its own problems, not the model."""
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from scipy.integrate._ivp.radau import predict_factor

from flowsim import _radau as rd


class Driver:
    """Answers the port's requests with Python functions (one 2-D system)."""

    def __init__(self, fun, jac, rtol, atol):
        self.fun, self.jac = fun, jac
        self.st = rd.new_states(1)
        self.ws = rd.new_work(rtol, atol)

    def serve(self, req):
        st, ws = self.st, self.ws
        while req > 0:
            if req == rd.REQ_F3:
                for r in range(3):
                    ws["F"][0, r] = self.fun(st["y"][0] + ws["Z"][0, r])
            elif req == rd.REQ_F:
                ws["fp"][0] = self.fun(ws["p"][0].copy())
            else:
                assert req == rd.REQ_JAC
                ws["jac"][0] = self.jac(st["y"][0].copy())
            req = rd.resume(st[0], ws[0])
        return req

    def start(self, t0, y0, t_bound):
        return self.serve(rd.start(self.st[0], self.ws[0], t0, y0[0], y0[1], t_bound))

    def step(self, target, event=(np.nan, np.nan)):
        """One step; ``event`` (a0, a1): stop where a0 y0 + a1 y1 reaches 0."""
        return self.serve(rd.step(self.st[0], self.ws[0], target, *event))

    @property
    def t(self):
        return float(self.st["t"][0])

    @property
    def y(self):
        return self.st["y"][0].copy()

    def count(self, name):
        return int(self.st[name][0])


def _linear(M):
    M = np.asarray(M, dtype=float)
    return (lambda y: M @ y), (lambda y: M.copy())


def _van_der_pol(mu):
    def fun(y):
        return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def jac(y):
        return np.array([[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1.0, mu * (1 - y[0] ** 2)]])

    return fun, jac


def _run(drv, t_bound, y0):
    assert drv.start(0.0, y0, t_bound) == rd.DONE
    while drv.t < t_bound:
        assert drv.step(t_bound) == rd.DONE
    return drv.y


# --------------------------------------------------------------------- helpers
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
            x = rd.solve2(M[0, 0], M[0, 1], M[1, 0], M[1, 1], r[0], r[1])
            # Gaussian elimination with pivoting vs LAPACK: backward stable, cond <~ 1e3
            np.testing.assert_allclose(x, np.linalg.solve(M, r), rtol=1e-11, atol=1e-12)


def test_predict_factor_matches_scipy():
    rng = np.random.default_rng(7)
    for _ in range(50):
        h, h_old, e, e_old = rng.uniform(0.01, 10.0, 4)
        assert rd.predict_factor(h, h_old, e, e_old) == predict_factor(h, h_old, e, e_old)
        assert rd.predict_factor(h, np.nan, e, np.nan) == predict_factor(h, None, e, None)
    assert rd.predict_factor(1.0, 2.0, 0.0, 0.5) == np.inf


# ----------------------------------------------------------- against scipy's Radau
@pytest.mark.parametrize("problem", ["stiff-linear", "van-der-pol"])
def test_steps_follow_scipy_radau_step_by_step(problem):
    """Same Newton/Jacobian decisions (f and J counts) and the same steps as scipy."""
    if problem == "stiff-linear":
        fun, jac = _linear([[-1.0, 1.0], [0.0, -1000.0]])
        y0, t_bound, n_steps = np.array([1.0, 1.0]), 10.0, 60
    else:
        fun, jac = _van_der_pol(100.0)
        y0, t_bound, n_steps = np.array([2.0, 0.0]), 300.0, 150
    rtol, atol = 1e-6, 1e-9
    ref = scipy.integrate.Radau(lambda t, y: fun(y), 0.0, y0, t_bound, rtol=rtol,
                                atol=atol, jac=lambda t, y: jac(y))
    drv = Driver(fun, jac, rtol, atol)
    drv.start(0.0, y0, t_bound)
    # scipy's norm is ‖x‖/√n, ours √(Σx²/n): a rounding apart
    assert drv.st["h"][0] == pytest.approx(ref.h_abs, rel=1e-15)
    for _ in range(n_steps):
        ref.step()
        assert drv.step(t_bound) == rd.DONE
        assert drv.count("nfev") == ref.nfev and drv.count("njev") == ref.njev
        # same operations but the 2×2 solves (LU vs elimination) and norms; where the
        # error estimate is at rounding level the step sizes drift apart (measured
        # 1.5e-13 linear, 7.6e-7 Van der Pol)
        assert abs(drv.t - ref.t) <= 1e-5 * ref.t
        # the same solution: scipy's dense output at our t (measured 6e-16, 5e-12)
        np.testing.assert_allclose(drv.y, ref.dense_output()(drv.t), rtol=1e-10, atol=1e-12)


def test_stiff_linear_system_against_exact_solution():
    M = np.array([[-1.0, 1.0], [0.0, -1000.0]])
    fun, jac = _linear(M)
    y0 = np.array([1.0, 1.0])
    errs, steps = [], []
    for rtol in (1e-4, 1e-6, 1e-8):
        drv = Driver(fun, jac, rtol, 1e-3 * rtol)
        y = _run(drv, 5.0, y0)
        want = scipy.linalg.expm(5.0 * M) @ y0
        errs.append(np.abs(y - want).max() / np.abs(want).max())
        steps.append(drv.count("steps"))
    # stiff: explicit RK4 is stable only for h < 2.8e-3 (~1800 steps); measured 45 steps
    assert steps[0] < 100
    # global error below rtol, decreasing with it (measured 3.6e-6, 1.1e-8, 3.7e-11)
    assert errs[0] < 1e-4 and errs[1] < 1e-6 and errs[2] < 1e-8
    assert errs[0] > errs[1] > errs[2]


def test_van_der_pol_against_tight_reference():
    mu = 1000.0
    fun, jac = _van_der_pol(mu)
    y0 = np.array([2.0, 0.0])
    t_bound = 2000.0  # past the first relaxation jump (period ~ 1614)
    # reference: another method (LSODA) at a tight tolerance; it agrees with scipy's
    # Radau at rtol 1e-12 to 2e-10
    ref = scipy.integrate.solve_ivp(lambda t, y: fun(y), (0.0, t_bound), y0, method="LSODA",
                                    rtol=1e-12, atol=1e-14, jac=lambda t, y: jac(y))
    drv = Driver(fun, jac, 1e-7, 1e-9)
    y = _run(drv, t_bound, y0)
    # measured 1.4e-10 and 8e-11 relative (y1 = -8.9e-4 here; O(μ) near the jumps)
    np.testing.assert_allclose(y, ref.y[:, -1], rtol=1e-8, atol=1e-12)
    assert drv.count("rejected") > 0  # the jumps make the controller reject steps


def test_order_five_on_a_fixed_grid():
    """Radau IIA is of order 2s - 1 = 5: clip every step to a grid and fit the slope."""
    M = np.array([[-1.0, 2.0], [-2.0, -1.0]])
    fun, jac = _linear(M)
    y0 = np.array([1.0, 0.5])
    T = 4.0
    want = scipy.linalg.expm(T * M) @ y0
    hs, errs = [], []
    for N in (8, 16, 32, 64):
        # loose tolerances so that every grid step is accepted at once; the problem is
        # linear, so one Newton iteration with the exact Jacobian solves each step
        drv = Driver(fun, jac, 1.0, 1.0)
        drv.start(0.0, y0, T)
        drv.st["h"][0] = T
        for k in range(1, N + 1):
            assert drv.step(T * k / N) == rd.DONE
        assert drv.count("steps") == N and drv.count("rejected") == 0
        hs.append(T / N)
        errs.append(np.abs(drv.y - want).max())
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert 4.7 < slope < 5.3, (slope, errs)  # measured 4.98


# ------------------------------------------------------------------- events etc.
def test_event_is_located_on_a_step_end():
    fun, jac = _linear([[0.0, 1.0], [-1.0, 0.0]])  # y0 = cos t
    drv = Driver(fun, jac, 1e-10, 1e-12)
    drv.start(0.0, np.array([1.0, 0.0]), 10.0)
    while True:
        assert drv.step(10.0, event=(1.0, 0.0)) == rd.DONE
        if drv.ws["event_hit"][0]:
            break
    # bracket 1e-14 relative in t, plus the solution's error at rtol 1e-10 (measured 0:
    # the Illinois iterations ended on g = 0 exactly)
    assert abs(drv.t - np.pi / 2) <= 1e-10
    assert drv.y[0] <= 0.0 and abs(drv.y[0]) <= 1e-10  # on the g <= 0 side


def test_restart_continues_the_same_solution():
    fun, jac = _van_der_pol(5.0)
    y0 = np.array([2.0, 0.0])
    plain = Driver(fun, jac, 1e-9, 1e-12)
    y_plain = _run(plain, 12.0, y0)
    drv = Driver(fun, jac, 1e-9, 1e-12)
    drv.start(0.0, y0, 12.0)
    while drv.t < 6.0:
        drv.step(12.0)
    nfev, njev = drv.count("nfev"), drv.count("njev")
    assert drv.serve(rd.restart(drv.st[0], drv.ws[0], *drv.y)) == rd.DONE
    assert drv.count("nfev") == nfev + 1 and drv.count("njev") == njev + 1
    assert drv.st["h_prev"][0] == 0.0 and np.isnan(drv.st["h_old"][0])
    while drv.t < 12.0:
        assert drv.step(12.0) == rd.DONE
    # two runs with different steps after t = 6 (measured 5e-13 relative)
    np.testing.assert_allclose(drv.y, y_plain, rtol=1e-10)


def test_blow_up_fails_with_step_underflow():
    def fun(y):
        return np.array([y[0] ** 2, 0.0])

    def jac(y):
        return np.array([[2 * y[0], 0.0], [0.0, 0.0]])

    drv = Driver(fun, jac, 1e-8, 1e-10)
    drv.start(0.0, np.array([1.0, 0.0]), 2.0)  # y0 = 1/(1 - t): infinite at t = 1
    for _ in range(10_000):
        req = drv.step(2.0)
        if req != rd.DONE:
            break
    assert req in (rd.FAIL_STEP, rd.FAIL_NONFINITE)
    assert abs(drv.t - 1.0) < 1e-6  # stuck at the pole (the last step may cross it)
    assert drv.st["h_min"][0] > 0


def test_model_driver_cache_follows_this_file():
    """numba checks a cached kernel against its own file only: the reduced model's
    driver, which compiles this port in, also carries this file's stamp."""
    import os

    import flowsim._reduced_kernels as RK

    st = os.stat(rd.__file__)
    for kernel in (RK._serve, RK._init_rows, RK._advance):
        stamp = kernel._cache._cache_file._source_stamp
        assert stamp == (kernel._cache._impl.locator.get_source_stamp(),
                         (st.st_mtime, st.st_size))
