"""simulate(): convergence orders, method agreement, exact zeros, stop rules, errors."""
import os
import signal
import threading

import numpy as np
import pytest

import flowsim
from flowsim import FlowsimInputError, Stop, simulate
from flowsim.forces import ORDER
from flowsim.integrate import IVP_METHODS, default_save_times


def _slope(dts, errs):
    return np.polyfit(np.log(dts), np.log(errs), 1)[0]


@pytest.mark.parametrize("interference", [True, False])
@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_convergence_order_l1_off(method, interference):
    """Fitted slope of log error vs log dt is within 0.3 of the method's order."""
    model = flowsim.Model(n=4, m=20, l1=False, interference=interference, seed=1, init_std=0.3)
    exact = simulate(model, 2.0, method="DOP853", rtol=1e-13, atol=1e-14).W
    dts = [0.1, 0.05, 0.025, 0.0125]
    errs = [np.abs(simulate(model, 2.0, method=method, dt=d).W - exact).max() for d in dts]
    assert abs(_slope(dts, errs) - ORDER[method]) < 0.3, errs


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_convergence_with_l1_against_exact_reduced_solution(method, record_property):
    """L1 on, interference off: every stepper converges to the exact reduced solution.

    Weights die inside steps, so the order may fall below the smooth order; the measured
    slope is reported (record_property / -rA output) and must be at least 0.8.
    """
    model = flowsim.Model(n=3, m=200, lam=0.02, interference=False, seed=1)
    exact = simulate(model, 20.0, method="reduced", rtol=1e-12, atol=1e-14).W
    dts = [0.2, 0.1, 0.05, 0.025]
    errs = [np.abs(simulate(model, 20.0, method=method, dt=d).W - exact).max() for d in dts]
    slope = _slope(dts, errs)
    record_property(f"order_{method}_l1", slope)
    print(f"measured order with L1 on ({method}): {slope:.2f}, errors {errs}")
    assert np.all(np.diff(errs) < 0)
    assert slope > 0.8
    assert errs[-1] < 1e-3


@pytest.mark.parametrize("method", IVP_METHODS)
def test_solve_ivp_agrees_with_numba_steppers_all_forces_on(method):
    model = flowsim.Model(n=4, m=30, lam=0.05, seed=3)
    ref = simulate(model, 3.0, method="rk4", dt=1e-3, save_at=[1.0, 2.0])
    got = simulate(model, 3.0, method=method, save_at=[1.0, 2.0], rtol=1e-10, atol=1e-12)
    # rk4 at dt=1e-3 is accurate to ~1e-9 here (its L1-on order is ~3)
    np.testing.assert_allclose(got.W, ref.W, atol=1e-7)
    np.testing.assert_array_equal(got.nnz, ref.nnz)
    np.testing.assert_array_equal(got.t, ref.t)
    assert got.options["restarts"] > 0


@pytest.mark.parametrize("method", ["euler", "rk4", "DOP853"])
def test_zeros_stay_exactly_zero_and_nnz_never_grows_without_interference(method):
    model = flowsim.Model(n=3, m=100, lam=0.03, interference=False, seed=5)
    tr = simulate(model, 30.0, method=method, dt=0.05, snapshots=True,
                  save_at=np.linspace(0, 30, 61))
    zero = tr.snapshots == 0.0
    assert zero[-1].sum() > 100  # plenty of weights died
    # once exactly zero, exactly zero at every later save time
    assert np.all(zero[1:] >= zero[:-1])
    assert np.all(np.diff(tr.nnz, axis=0) <= 0)
    np.testing.assert_array_equal(tr.nnz[-1], np.count_nonzero(tr.W, axis=1))


def test_zero_weight_is_released_only_when_force_exceeds_lambda():
    """Row 1 shares column 0 with row 0; its zero at column 1 feels -c ReLU(G01) W_01."""
    W0 = np.array([[0.6, 0.5, 0.0], [0.6, 0.0, 0.0]])
    F01 = -0.6 * 0.6 * 0.5  # -c ReLU(W_0·W_1) W_01 with c = 1
    for lam, released in [(abs(F01) * 1.01, False), (abs(F01) * 0.99, True)]:
        model = flowsim.Model(n=2, m=3, lam=lam, feature_benefit=True, interference=True)
        for method in ("euler", "heun", "rk4"):
            W = simulate(model, 1e-3, method=method, dt=1e-3, W0=W0).W
            assert (W[1, 1] != 0.0) == released, (method, lam)
            assert W[0, 2] == 0.0 and W[1, 2] == 0.0  # untouched column stays exactly 0


@pytest.mark.parametrize("method", ["euler", "rk4", "RK45", "reduced"])
def test_same_seed_gives_bit_identical_results(method):
    model = flowsim.Model(n=3, m=60, lam=0.02, interference=method == "rk4", seed=11)
    a = simulate(model, 5.0, method=method, dt=0.05)
    b = simulate(model, 5.0, method=method, dt=0.05)
    assert np.array_equal(a.W, b.W)
    assert np.array_equal(a.l1, b.l1)
    c = simulate(model.replace(seed=12), 5.0, method=method, dt=0.05)
    assert not np.array_equal(a.W, c.W)


def test_save_times_are_honoured_exactly():
    model = flowsim.Model(n=2, m=10, lam=0.01)
    tr = simulate(model, 1.0, method="heun", dt=0.3, save_at=[0.25, 0.5])
    np.testing.assert_array_equal(tr.t, [0.0, 0.25, 0.5, 1.0])
    assert tr.l1.shape == (4, 2) and tr.nnz.dtype == np.int64
    np.testing.assert_allclose(tr.l1[-1], np.abs(tr.W).sum(axis=1), rtol=1e-12)
    ts = default_save_times(100.0, 0.5)
    assert ts[0] == 0.0 and ts[-1] == 100.0 and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(ts[1:-1] / 0.5, np.round(ts[1:-1] / 0.5), atol=1e-9)


def test_stop_when_sparse_and_when_converged():
    model = flowsim.Model(n=2, m=50, lam=0.05, interference=False, seed=0)
    tr = simulate(model, 1e4, method="rk4", dt=0.1, stop=Stop(max_nnz=1))
    assert tr.stats.status == "sparse"
    assert tr.nnz[-1].max() <= 1 and tr.nnz[-2].max() > 1
    assert tr.t[-1] == tr.stats.t_end < 1e4
    conv = simulate(model, 1e4, method="rk4", dt=0.1, stop=Stop(tol=1e-8, window=20.0))
    assert conv.stats.status == "converged"
    assert conv.stats.t_end < 1e4
    assert "stop" in conv.options


def test_ctrl_c_returns_what_was_computed():
    model = flowsim.Model(n=32, m=256, lam=1e-3, seed=0)
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.warns(flowsim.FlowsimWarning, match="interrupted"):
        tr = simulate(model, 1e7, method="rk4", dt=0.01)
    timer.cancel()
    assert tr.stats.status == "interrupted"
    assert 0 < tr.stats.t_end < 1e7
    assert tr.t[-1] == tr.stats.t_end
    assert np.all(np.isfinite(tr.W))


def test_divergence_stops_with_time_step_and_hint():
    model = flowsim.Model(n=3, m=20, lam=0.0, seed=0, init_std=3.0)
    with pytest.raises(flowsim.DivergenceError, match=r"t=.*step \d+.*dt=") as info:
        simulate(model, 100.0, method="euler", dt=1.0)
    err = info.value
    assert err.step >= 0 and err.trajectory is not None
    assert np.all(np.isfinite(err.trajectory.W))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0, m=5), "invalid n=0"),
        (dict(n=2, m=0), "invalid m=0"),
        (dict(n=2, m=5, lam=-1.0), "invalid lam=-1.0"),
        (dict(n=2, m=5, lam=float("nan")), "invalid lam=nan"),
        (dict(n=2, m=5, c=float("inf")), "invalid c=inf"),
        (dict(n=2, m=5, init_std=0.0), "invalid init_std=0.0"),
        (dict(n=2.5, m=5), "invalid n=2.5"),
        (dict(n=2, m=5, interference="yes"), "invalid interference='yes'"),
        (dict(n=2, m=5, seed=-1), "invalid seed=-1"),
    ],
)
def test_bad_model_parameters(kwargs, match):
    with pytest.raises(FlowsimInputError, match=match):
        flowsim.Model(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_max=0.0), "invalid t_max=0.0"),
        (dict(t_max=-1.0), "invalid t_max=-1.0"),
        (dict(t_max=float("inf")), "invalid t_max=inf"),
        (dict(dt=0.0), "invalid dt=0.0"),
        (dict(dt=-0.1), "invalid dt=-0.1"),
        (dict(method="rk5"), "invalid method='rk5': must be one of euler"),
        (dict(W0=np.zeros((3, 4))), r"invalid W0.shape=\(3, 4\): must be \(n, m\) = \(2, 5\)"),
        (dict(W0=np.full((2, 5), np.nan)), "invalid W0=.*non-finite"),
        (dict(save_at=[-1.0]), "invalid save_at"),
        (dict(method="reduced"), "invalid method='reduced': needs interference=False"),
    ],
)
def test_bad_simulate_arguments(kwargs, match):
    model = flowsim.Model(n=2, m=5, lam=0.01)
    args = dict(t_max=1.0)
    args.update(kwargs)
    with pytest.raises(FlowsimInputError, match=match) as info:
        simulate(model, args.pop("t_max"), **args)
    assert "\n" not in str(info.value)


def test_warnings_outside_paper_assumptions():
    with pytest.warns(flowsim.FlowsimWarning, match="lam=0.5 > 1/sqrt"):
        flowsim.Model(n=1, m=100, lam=0.5)
    with pytest.warns(flowsim.FlowsimWarning, match="m=3 < n=5"):
        flowsim.Model(n=5, m=3)


def test_trajectory_records_what_produced_it():
    model = flowsim.Model(n=2, m=8, lam=0.01, seed=4)
    tr = simulate(model, 1.0, method="heun", dt=0.1)
    meta = tr.metadata()
    assert meta["flowsim_version"] == flowsim.__version__
    assert meta["model"]["seed"] == 4 and meta["method"] == "heun" and meta["dt"] == 0.1
    assert meta["stats"]["steps"] == 10 and meta["stats"]["force_evals"] == 20
