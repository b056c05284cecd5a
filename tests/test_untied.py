"""Tests of flowsim.untied: the numba engine against the NumPy reference, the exact
correspondence with the tied flow, the gradient, the flow's invariant, the steppers'
orders, determinism, errors, and the command as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from flowsim import FlowsimInputError, FlowsimWarning, Model, Stop, simulate
from flowsim.untied import (UntiedModel, effective_weights, loss, reference_run, simulate_untied,
                            smooth_forces, summary, tie_gap, tied_equivalent)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flowsim.untied", *args], capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------- kernel = reference

@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("init,l1_decoder", [("independent", False), ("independent", True), ("tied", False)])
def test_kernel_matches_numpy_reference(method, init, l1_decoder):
    """The numba engine takes the steps of ``reference_step`` (L1 deaths, releases, the
    screen of inactive neurons, the clipped diagonal): equal to 1e-12 (measured <= 4e-15)
    over 400 steps in which weights die (and the encoder of some neurons dies while their
    decoder stays, so the screen decides)."""
    model = UntiedModel(n=6, m=20, lam=0.05, c=2.0, init=init, l1_decoder=l1_decoder, seed=1)
    E0, D0 = model.initial_weights()
    tr = simulate_untied(model, 40.0, method=method, dt=0.1, save_at=[7.05, 20.0])
    E, D = reference_run(E0, D0, model, 40.0, 0.1, method)
    assert np.abs(tr.E - E).max() < 1e-12 and np.abs(tr.D - D).max() < 1e-12
    assert np.count_nonzero(E) < E.size / 2                           # the L1 force acted
    dead_enc = ~np.any(E != 0, axis=1)
    if not l1_decoder:
        assert np.any(dead_enc & np.any(D.T != 0, axis=1))           # screened neurons exist


def test_gradient_matches_finite_differences():
    """With c = 4 the smooth forces are minus the gradient of the loss (λ = 0), checked by
    central differences (h = 1e-6) at a generic point where no G_ji is near 0 (no kink):
    relative error 1e-6 (measured 2e-9; the difference quotient's own error is ~h²)."""
    model = UntiedModel(n=4, m=5, lam=0.0, c=4.0, seed=0, init_std=0.6)
    E, D = model.initial_weights()
    assert np.abs(D @ E).min() > 1e-3 and np.any(np.diag(D @ E) < 0) and np.any(np.diag(D @ E) > 0)
    FE, FD = smooth_forces(E, D, model)
    h = 1e-6
    for A, F, name in ((E, FE, "E"), (D, FD, "D")):
        num = np.zeros_like(A)
        for idx in np.ndindex(A.shape):
            Ap, Am = A.copy(), A.copy()
            Ap[idx] += h
            Am[idx] -= h
            args_p = (Ap, D) if name == "E" else (E, Ap)
            args_m = (Am, D) if name == "E" else (E, Am)
            num[idx] = (loss(*args_p, model) - loss(*args_m, model)) / (2 * h)
        np.testing.assert_allclose(F, -num, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- the tied flow

@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_tied_start_stays_tied_and_is_the_tied_flow(method):
    """From E0 = D0ᵀ = W0 with L1 λ on both factors, the untied flow with force scale 2c is
    the tied flow (c, λ) step for step, and the one with c and λ/2 is it at twice the time
    and step: every snapshot within 1e-12 (measured <= 9e-15), E = Dᵀ within 1e-12, through
    deaths and releases of the L1 force."""
    tied = Model(n=10, m=16, lam=0.05, c=1.0, seed=3)
    ts = [1.0, 5.0, 20.0, 60.0]
    ref = simulate(tied, 60.0, method=method, dt=0.1, save_at=ts, snapshots=True)
    assert np.count_nonzero(ref.W) < ref.W.size / 3
    fast = simulate_untied(tied_equivalent(tied), 60.0, method=method, dt=0.1, save_at=ts, snapshots=True)
    slow_model = tied_equivalent(tied).replace(c=tied.c, lam=tied.lam / 2)
    slow = simulate_untied(slow_model, 120.0, method=method, dt=0.2, save_at=[2 * t for t in ts], snapshots=True)
    for tr in (fast, slow):
        np.testing.assert_array_equal(tr.snapshot_t, ref.snapshot_t * (tr.snapshot_t[-1] / ref.snapshot_t[-1]))
        assert np.abs(tr.snapshots_D - ref.snapshots).max() < 1e-12
        assert np.abs(tr.snapshots_E - tr.snapshots_D.transpose(0, 2, 1)).max() < 1e-12
        assert np.all(tr.gap < 1e-12)


def test_metrics_reduce_to_the_tied_ones():
    """With E = Dᵀ = W the effective weights are W, so the counts are the tied counts."""
    W = Model(n=12, m=20, seed=0, init_std=0.6).initial_weights()
    np.testing.assert_allclose(effective_weights(W.T, W), W, rtol=1e-15)
    s = summary(W.T, W, 0.5)
    from flowsim import metrics

    assert s["polysemantic"] == metrics.count_polysemantic(W, 0.5) and s["gap"] == 0.0
    assert s["dead"] == metrics.dead_features(W, 0.5).size and s["clipped"] == 0
    assert tie_gap(W.T, 2 * W) == pytest.approx(0.5, rel=1e-14)


# ---------------------------------------------------------------- properties of the flow

def test_smooth_flow_conserves_the_imbalance():
    """The smooth flow depends on (E, D) only through DE, so DᵀD − EEᵀ is conserved: without
    L1 it moves by 2e-6 over t = 20 at rk4 dt = 0.05, by 1.2e-7 at dt = 0.025 (the method's
    error, order 4), while DᵀD changes by O(0.1). With L1 on both factors it is not."""
    model = UntiedModel(n=6, m=8, l1=False, c=2.0, seed=4)
    E0, D0 = model.initial_weights()
    drift = []
    for dt in (0.05, 0.025):
        tr = simulate_untied(model, 20.0, method="rk4", dt=dt, save_at=[])
        inv0, inv1 = D0.T @ D0 - E0 @ E0.T, tr.D.T @ tr.D - tr.E @ tr.E.T
        drift.append(np.abs(inv1 - inv0).max())
    assert drift[0] < 5e-6 and drift[1] < drift[0] / 8
    assert np.abs(tr.D.T @ tr.D - D0.T @ D0).max() > 0.1
    l1 = simulate_untied(model.replace(l1=True, lam=0.05, l1_decoder=True), 20.0, method="rk4", dt=0.05, save_at=[])
    assert np.abs(l1.D.T @ l1.D - l1.E @ l1.E.T - inv0).max() > 0.01


def test_l1_on_encoder_only_drifts_apart_l1_on_both_ties():
    """L1 on E alone has no minimiser (E/s, sD lowers it): from E0 = D0ᵀ the gap and
    ‖D‖/‖E‖ keep growing (measured gap 0.44, 0.75, 0.82 and ratio 1.6, 3.3, 4.6 at t = 10,
    50, 100), while with L1 on
    both factors the gap of an independent start shrinks (measured 1.48 -> 0.016)."""
    base = UntiedModel(n=12, m=16, lam=0.02, c=2.0, seed=0)
    drift = simulate_untied(base.replace(init="tied"), 100.0, method="euler", dt=0.1, save_at=[10.0, 50.0])
    assert drift.gap[0] == 0 and np.all(np.diff(drift.gap) > 0) and drift.gap[-1] > 0.6
    assert np.all(np.diff(drift.norm_D / drift.norm_E) > 0) and drift.norm_D[-1] / drift.norm_E[-1] > 2.5
    tie = simulate_untied(base.replace(l1_decoder=True), 100.0, method="euler", dt=0.1, save_at=[10.0, 50.0])
    assert tie.gap[0] > 1.0 and tie.gap[-1] < 0.1


def test_independent_start_leaves_features_clipped():
    """A feature with d_i·e_i <= 0 gets no feature benefit through the output ReLU: with
    independent starts some features are never learned (measured, seeds 0-2 of n = 16,
    m = 32: 4, 4, 6 clipped of 16 at t = 200), with a tied start none is."""
    clipped = []
    for seed in range(3):
        m = UntiedModel(n=16, m=32, lam=0.02, c=2.0, seed=seed, l1_decoder=True)
        tr = simulate_untied(m, 200.0, method="euler", dt=0.1, save_at=[])
        clipped.append(int(tr.clipped[-1]))
        assert tr.clipped[0] > 0 and tr.dead[-1] >= tr.clipped[-1]
        tied = simulate_untied(m.replace(init="tied"), 200.0, method="euler", dt=0.1, save_at=[])
        assert tied.clipped[-1] == 0
    assert min(clipped) >= 2


# ---------------------------------------------------------------- steppers

def test_convergence_orders_of_the_untied_steppers():
    """Slope of log error against log dt (0.2 ... 0.025) at t = 2, against rk4 at dt = 1/512,
    on a smooth problem (interference and L1 off, every d_i·e_i > 0): measured 0.99 (euler),
    2.12 (heun), 4.19 (rk4)."""
    model = UntiedModel(n=5, m=7, l1=False, interference=False, c=2.0, init="tied", seed=2)
    E, D = model.initial_weights()
    E = E + 0.1 * np.random.default_rng(0).standard_normal(E.shape)
    assert np.all(np.einsum("ik,ki->i", D, E) > 0.3)
    Er, Dr = reference_run(E, D, model, 2.0, 1 / 512, "rk4")
    dts = [0.2, 0.1, 0.05, 0.025]
    for method, lo, hi in (("euler", 0.9, 1.1), ("heun", 1.9, 2.3), ("rk4", 3.8, 4.4)):
        errs = []
        for dt in dts:
            tr = simulate_untied(model, 2.0, method=method, dt=dt, E0=E, D0=D, save_at=[])
            errs.append(max(np.abs(tr.E - Er).max(), np.abs(tr.D - Dr).max()))
        slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
        assert lo < slope < hi, (method, slope)


def test_results_do_not_depend_on_save_times():
    """The run stays on the grid k·dt: saving at off-grid times does not change the final
    state (bitwise)."""
    model = UntiedModel(n=8, m=12, lam=0.03, c=2.0, seed=5)
    a = simulate_untied(model, 30.0, method="rk4", dt=0.1, save_at=[])
    b = simulate_untied(model, 30.0, method="rk4", dt=0.1, save_at=np.linspace(0.03, 29.97, 37))
    np.testing.assert_array_equal(a.E, b.E)
    np.testing.assert_array_equal(a.D, b.D)


def test_same_numbers_in_two_fresh_interpreters():
    code = ("import hashlib; from flowsim.untied import *; "
            "tr = simulate_untied(UntiedModel(n=16, m=24, lam=0.02, c=2.0, seed=7), 50.0, method='heun', dt=0.1); "
            "print(hashlib.sha256(tr.E.tobytes() + tr.D.tobytes()).hexdigest())")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
           for _ in range(2)]
    assert out[0].returncode == 0, out[0].stderr
    assert out[0].stdout == out[1].stdout and len(out[0].stdout.strip()) == 64


def test_stability_warning_and_convergence_stop():
    """A step beyond the stability margin is reported (dt·stiffness in the options); the
    convergence rule stops a run with L1 on both factors."""
    model = UntiedModel(n=4, m=6, lam=0.01, c=2.0, init="tied", seed=0, init_std=0.5)
    with pytest.warns(FlowsimWarning, match="stability limit"):
        tr = simulate_untied(model, 5.0, method="euler", dt=0.9, save_at=[])
    assert tr.options["max_dt_stiffness"] > 1.6
    tr = simulate_untied(model.replace(l1_decoder=True), 5000.0, method="euler", dt=0.1,
                         stop=Stop(tol=1e-6, window=20.0))
    assert tr.stats.status == "converged" and tr.stats.t_end < 5000.0
    meta = tr.metadata()
    assert meta["model"]["l1_decoder"] is True and meta["method"] == "euler" and meta["dt"] == 0.1
    assert meta["flowsim_version"] and meta["options"]["W0"] == {"source": "seed", "seed": 0, "init": "tied"}


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,name", [
    (dict(init="transposed"), "init"), (dict(lam=-1.0), "lam"), (dict(c=0.0), "c"),
    (dict(l1_decoder=1), "l1_decoder"), (dict(m=0), "m")])
def test_bad_model_parameters_are_one_line_errors(kwargs, name):
    with pytest.raises(FlowsimInputError, match=f"invalid {name}=") as err:
        UntiedModel(**{**dict(n=3, m=4), **kwargs})
    assert "\n" not in str(err.value)


def test_bad_simulate_arguments_are_one_line_errors():
    model = UntiedModel(n=3, m=4)
    E, D = model.initial_weights()
    for kwargs, name in ((dict(method="RK45"), "method"), (dict(dt=0.0), "dt"), (dict(E0=E), "D0"),
                         (dict(E0=D, D0=D), "E0.shape"), (dict(stop=Stop(max_nnz=1)), "stop"),
                         (dict(threshold=-1), "threshold")):
        with pytest.raises(FlowsimInputError, match=f"invalid {name}=") as err:
            simulate_untied(model, 1.0, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(FlowsimInputError, match="invalid model="):
        simulate_untied(Model(n=3, m=4), 1.0)


@pytest.mark.parametrize("args,name", [
    (["--sizes", "0x4"], "--sizes"), (["--sizes", "8by4"], "--sizes"), (["--t-max", "-1"], "--t-max"),
    (["--seeds", "1", "2", "3"], "--seeds"), (["--method", "RK45"], "--method"), (["--lam", "0"], "--lam"),
    (["--dt", "nan"], "--dt"), (["--variants", "both"], "--variants")])
def test_cli_bad_arguments_exit_2_with_one_line(args, name, tmp_path, capsys):
    from flowsim import _cli
    from flowsim.untied import PROG, main

    with pytest.raises(SystemExit) as exit_:
        _cli.run_main(PROG, main, [*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0]
    assert not (tmp_path / "out").exists()                      # nothing computed, nothing written


def test_cli_bad_argument_as_a_user_sees_it(tmp_path):
    r = run_cli("--sizes", "0x4", "--out", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--sizes" in r.stderr


# ---------------------------------------------------------------- the command

def test_cli_small_run_writes_consistent_files(tmp_path):
    r = run_cli("--sizes", "8x12", "--t-max", "60", "--seeds", "2", "--executor", "serial",
                "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"untied.png", "untied.csv", "untied.json", "untied_runs"} <= names
    text = (tmp_path / "untied.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert meta["runs"] == meta["finished"] == 2 * 4 + 2 * 4          # + the dt/2 check
    assert meta["flowsim_version"] and meta["parameters"]["c_untied"] == 2.0
    assert {r["variant"] for r in meta["table"]} == {"tied", "untied-tiedinit-E", "untied-E", "untied-ED"}
    tied = [r for r in meta["table"] if r["variant"] == "tied"][0]
    assert tied["gap"] == 0.0 and tied["diff_vs_tied"] == 0.0
    assert len(meta["dt_check"]) == 8 and not meta["unstable_runs"]
    lines = (tmp_path / "untied.csv").read_text().splitlines()
    assert len(lines) == 1 + meta["runs"] and "e0_sha256" in lines[0]


def test_divergence_stops_with_time_step_and_advice():
    """Too large a step: the run stops before the weights overflow (a clipped feature feels
    no force, so the state would otherwise freeze at huge finite values) and the error
    names the time, the step and a smaller dt; the partial trajectory is kept."""
    from flowsim import DivergenceError

    model = UntiedModel(n=4, m=6, l1=False, c=2.0, seed=0)
    with pytest.raises(DivergenceError, match=r"after t=\S+ \(step \d+\).*dt=0.15") as err:
        simulate_untied(model, 100.0, method="euler", dt=1.5)
    assert err.value.step > 0 and err.value.trajectory.stats.status == "diverged"
    assert np.all(np.isfinite(err.value.trajectory.E))


def test_ctrl_c_keeps_what_was_computed():
    import os
    import signal
    import threading

    model = UntiedModel(n=32, m=64, lam=0.01, c=2.0, seed=0)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.warns(FlowsimWarning, match="interrupted"):
            tr = simulate_untied(model, 1e7, method="euler", dt=0.1)
    finally:
        timer.cancel()
    assert tr.stats.status == "interrupted" and 0 < tr.stats.t_end < 1e7
    assert tr.t[-1] == tr.stats.t_end and np.all(np.isfinite(tr.E))
