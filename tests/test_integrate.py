"""simulate(): convergence orders, method agreement, exact zeros, stop rules, errors."""
import os
import signal
import threading

import numpy as np
import pytest

import flowsim
from flowsim import FlowsimInputError, Stop, simulate
from flowsim import forces
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


#: Orders measured with L1 on against the exact reduced solution (0.99, 2.04, 3.04):
#: only the steps in which a weight dies lose accuracy, so rk4 drops to 3, not 4.
L1_ORDER = {"euler": 1.0, "heun": 2.0, "rk4": 3.0}


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_convergence_with_l1_against_exact_reduced_solution(method, record_property):
    """L1 on, interference off: the fitted order is the measured one within 0.25."""
    model = flowsim.Model(n=3, m=200, lam=0.02, interference=False, seed=1)
    exact = simulate(model, 20.0, method="reduced", rtol=1e-12, atol=1e-14).W
    dts = [0.2, 0.1, 0.05, 0.025]
    errs = [np.abs(simulate(model, 20.0, method=method, dt=d).W - exact).max() for d in dts]
    slope = _slope(dts, errs)
    record_property(f"order_{method}_l1", slope)
    print(f"measured order with L1 on ({method}): {slope:.2f}, errors {errs}")
    assert np.all(np.diff(errs) < 0)
    assert abs(slope - L1_ORDER[method]) < 0.25
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


_DETERMINISM_CHILD = """
import hashlib, sys, flowsim
method, interference, sparse = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
model = flowsim.Model(n=6, m=60, lam=0.02, interference=interference, seed=11)
kw = dict(dt=0.05) if method in ("euler", "heun", "rk4") else {}
if sparse >= 0:
    kw["sparse_below"] = sparse
tr = flowsim.simulate(model, 20.0, method=method, **kw)
print(hashlib.sha256(tr.W.tobytes()).hexdigest(), hashlib.sha256(tr.l1.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("method, interference, sparse", [
    ("euler", True, 0.0), ("euler", True, 1.0), ("rk4", True, -1), ("rk4", False, -1),
    ("RK45", True, -1), ("reduced", False, -1)])
def test_same_seed_gives_bit_identical_results_in_two_interpreters(method, interference, sparse):
    """Two fresh interpreters, same seed and parameters: the same bytes of W and of the
    statistics; another seed differs."""
    import subprocess
    import sys

    def run():
        r = subprocess.run([sys.executable, "-c", _DETERMINISM_CHILD, method, str(int(interference)),
                            str(sparse)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    first, second = run(), run()
    assert first == second
    model = flowsim.Model(n=6, m=60, lam=0.02, interference=interference, seed=11)
    kw = dict(dt=0.05) if method in ("euler", "rk4") else {}
    here = simulate(model.replace(seed=12), 20.0, method=method, **kw)
    import hashlib
    assert hashlib.sha256(here.W.tobytes()).hexdigest() != first[0]


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


_ENGINES = {
    "dense": (dict(n=6, m=40, lam=0.02, seed=1), dict(sparse_below=0.0)),
    "sparse": (dict(n=6, m=40, lam=0.02, seed=1), dict(sparse_below=1.0)),
    "dense+sparse": (dict(n=6, m=40, lam=0.02, seed=1), {}),
    "rows": (dict(n=3, m=200, lam=0.02, interference=False, seed=1), {}),
}


@pytest.mark.parametrize("engine", list(_ENGINES))
@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_results_do_not_depend_on_save_times(engine, method):
    """Steps lie on the global grid k·dt; save times between grid points are reached by
    an extra step on a copy: the final W is bit-identical for any save_at."""
    model_kw, kw = _ENGINES[engine]
    model = flowsim.Model(**model_kw)
    base = simulate(model, 20.0, method=method, dt=0.1, save_at=[], **kw)
    for save_at in ([0.25], np.linspace(0.03, 19.97, 57), default_save_times(20.0, 0.1)):
        other = simulate(model, 20.0, method=method, dt=0.1, save_at=save_at, **kw)
        assert np.array_equal(other.W, base.W)
        assert other.stats.steps == base.stats.steps == 200
    # a save between grid points equals one step of the reference from the grid point
    tr = simulate(model, 20.0, method=method, dt=0.1, save_at=[5.03], snapshots=True, **kw)
    at5 = simulate(model, 5.0, method=method, dt=0.1, save_at=[], **kw).W
    ref = forces.reference_step(at5, model, 5.03 - 5.0, method)
    k = list(tr.t).index(5.03)
    np.testing.assert_allclose(tr.snapshots[k], ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(tr.nnz[k], np.count_nonzero(ref, axis=1))


@pytest.mark.parametrize("engine", list(_ENGINES))
@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_a_run_split_in_two_equals_one_run(engine, method, tmp_path):
    """Continue from the saved state (load_trajectory, t0): bit for bit on the dense and
    sparse engines; on the rows engine to rounding (its lazily composed affine maps are
    rebuilt from the saved weights, which rounds once)."""
    model_kw, kw = _ENGINES[engine]
    model = flowsim.Model(**model_kw)
    one = simulate(model, 20.0, method=method, dt=0.1, **kw)
    first = simulate(model, 7.3, method=method, dt=0.1, **kw)
    flowsim.save_trajectory(first, tmp_path, "first")
    back = flowsim.load_trajectory(tmp_path / "first.json")
    second = simulate(model, 20.0, method=method, dt=0.1, W0=back.W, t0=back.stats.t_end, **kw)
    assert first.stats.steps + second.stats.steps == one.stats.steps
    if engine == "rows":
        np.testing.assert_array_equal(second.W != 0, one.W != 0)
        np.testing.assert_allclose(second.W, one.W, rtol=1e-13, atol=1e-15)  # measured 4e-16
    else:
        assert np.array_equal(second.W, one.W)
    assert second.t[0] == 7.3 and second.options["t0"] == 7.3


def test_convergence_time_is_where_the_rule_starts_to_hold():
    """Stop(tol, window): t_converged is the end of the last step that changed a support
    or moved a weight faster than tol; the run ends one window later. Checked against
    the same run recorded at every step."""
    model = flowsim.Model(n=8, m=24, lam=0.02, seed=2)
    dt, tol, window = 0.1, 1e-4, 5.0
    tr = simulate(model, 2000.0, method="euler", dt=dt, stop=Stop(tol=tol, window=window))
    assert tr.stats.status == "converged"
    t_conv = tr.stats.t_converged
    assert tr.stats.t_end == pytest.approx(t_conv + window, abs=dt)
    grid = np.arange(0, int(round(tr.stats.t_end / dt)) + 1) * dt
    full = simulate(model, grid[-1], method="euler", dt=dt, save_at=grid, snapshots=True)
    S = full.snapshots
    bad = [(S[k] != 0).tolist() != (S[k + 1] != 0).tolist() or np.abs(S[k + 1] - S[k]).max() / dt > tol
           for k in range(len(grid) - 1)]
    last_bad = max(k for k, b in enumerate(bad) if b)
    assert t_conv == pytest.approx(grid[last_bad + 1], abs=1e-9)
    assert not any(bad[last_bad + 1:])
    # not a multiple of the window, as the old end-to-end check made it
    assert abs(t_conv / window - round(t_conv / window)) > 1e-6


def test_a_death_and_re_entry_inside_a_window_is_noticed():
    """W[0, 1] dies at t = 0.81 and is back at 0.91 (seed 38): both ends of the window
    [0, 1] see it nonzero, so a check of the window's ends misses it; the per-step
    rule does not. With tol so large that only supports matter, t_converged is the
    last support change before the first quiet gap of a whole window."""
    model = flowsim.Model(n=4, m=6, lam=0.05, seed=38, init_std=0.5)
    dt, window = 0.01, 1.0
    grid = np.arange(0, 3001) * dt
    full = simulate(model, 30.0, method="euler", dt=dt, save_at=grid, snapshots=True)
    nz = full.snapshots != 0
    w01 = nz[:, 0, 1]
    assert w01[0] and w01[100] and not w01[85]  # dead inside [0, 1], alive at both ends
    changes = grid[1:][np.any(nz[1:] != nz[:-1], axis=(1, 2))]
    gaps = np.diff(np.append(changes, np.inf))
    expected = changes[np.argmax(gaps >= window * (1 - 1e-9))]
    tr = simulate(model, 30.0, method="euler", dt=dt, stop=Stop(tol=1e3, window=window))
    assert tr.stats.status == "converged"
    assert tr.stats.t_converged == pytest.approx(expected, abs=1e-9)
    assert tr.stats.t_converged > 0.91


def test_metadata_records_the_source_of_w0_and_the_environment():
    import hashlib
    import json

    model = flowsim.Model(n=2, m=8, lam=0.01, seed=4)
    seeded = simulate(model, 1.0, method="heun", dt=0.1).metadata()
    assert seeded["options"]["W0"] == {"source": "seed", "seed": 4}
    W0 = np.full((2, 8), 0.25)
    given = simulate(model, 1.0, method="heun", dt=0.1, W0=W0).metadata()
    assert given["options"]["W0"] == {"source": "given", "sha256": hashlib.sha256(W0.tobytes()).hexdigest()}
    env = given["environment"]
    for key in ("numpy", "scipy", "numba", "python", "platform", "blas", "flowsim_version"):
        assert env[key] is not None or key == "blas"
    assert given["format_version"] >= 2
    dead = simulate(model, 1.0, method="euler", dt=0.1, W0=np.zeros((2, 8)))
    assert np.isnan(dead.relvar).all()
    json.dumps(dead.metadata(), allow_nan=False)  # NaN statistics become null
    assert dead.metadata()["stats"]["t_converged"] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="reduced", dt=0.1), "invalid dt=0.1: is not used by method='reduced'"),
    (dict(method="rk4", rtol=1e-6), "invalid rtol=1e-06: is not used by the fixed-step"),
    (dict(method="RK45", sparse_below=0.2), "invalid sparse_below=0.2"),
    (dict(method="rk4", t0=2.0), "invalid t_max=1.0: must be > t0=2"),
])
def test_options_a_method_would_not_use_are_errors(kwargs, match):
    model = flowsim.Model(n=2, m=5, lam=0.01, interference=False)
    with pytest.raises(FlowsimInputError, match=match):
        simulate(model, 1.0, **kwargs)


_CTRL_C_CHILD = """
import sys, warnings, flowsim
warnings.simplefilter("ignore")
print("ready", flush=True)
tr = flowsim.simulate(flowsim.Model(n=16, m=64, lam=1e-3, seed=0), 1e6, method="rk4", dt=0.01)
print(tr.stats.status, tr.stats.t_end, len(tr.t), flush=True)
"""


def test_ctrl_c_during_the_first_compile_returns_cleanly(tmp_path):
    """With a cold numba cache the warm-up compiles for seconds; a Ctrl-C then still
    ends the run cleanly (status "interrupted", the initial state kept), no traceback."""
    import subprocess
    import sys
    import time

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cold-cache"))
    child = subprocess.Popen([sys.executable, "-c", _CTRL_C_CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # inside the warm-up: compiling the kernels takes several seconds cold
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    status, t_end, saved = out.split()
    assert status == "interrupted" and "Traceback" not in err
    assert float(t_end) == 0.0 and int(saved) == 1  # stopped inside the warm-up (measured)


def test_stop_tol_with_reduced_agrees_with_rk4():
    """Stop(tol) is honoured by the exact solver through simulate (not silently ignored)."""
    model = flowsim.Model(n=2, m=60, lam=0.02, interference=False, seed=3)
    stop = Stop(tol=1e-6, window=20.0)
    red = simulate(model, 1e4, method="reduced", stop=stop)
    rk4 = simulate(model, 1e4, method="rk4", dt=0.01, stop=stop)
    assert red.stats.status == rk4.stats.status == "converged"
    assert red.stats.t_end == pytest.approx(red.stats.t_converged + 20.0)
    np.testing.assert_array_equal(red.W != 0, rk4.W != 0)
    assert abs(red.stats.t_converged - rk4.stats.t_converged) < 0.5  # rk4's grid and error
