"""The adaptive sparse engine (bs32) takes the steps of ``forces.reference_adaptive``:
the same trial steps (``forces.embedded_step``), accepted or rejected alike, whatever
its epoch state, work policy or the chunking of its calls."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsim
from flowsim import _adaptive as A
from flowsim import _kernels as K
from flowsim import forces
from flowsim._adaptive_sparse import AdaptiveSparseEngine

METHOD = "bs32"
Q = forces.EMBEDDED[METHOD][3]
#: Work policies of the sparse engine (they may change the work, never a number).
POLICIES = {
    "default": {},
    "one epoch": dict(epoch_budget=np.inf, direct=0.0),
    "epoch every step": dict(epoch_budget=0.0, direct=0.0),
    "row scatters": dict(epoch_budget=np.inf, direct=0.0, scatter=np.inf),
    "direct": dict(direct=np.inf),
}
#: (rtol, atol) pairs: loose ones reject often, tight ones take many small steps.
TOLERANCES = [(1e-2, 1e-4), (1e-4, 1e-7), (1e-6, 1e-9)]


def engine(W0, model, rtol, atol, t_end, policy=None):
    eng = AdaptiveSparseEngine(W0.copy(), model, METHOD, W0.size, rtol, atol, t_end, **(policy or {}))
    eng.sync()
    return eng


def started(h0):
    out = np.zeros(K.OUT_SIZE)
    A.start(out, h0)
    return out


def run(eng, out, t, j, t1, jmax=10**9):
    eng.run(t, j, t1, 0.0, jmax, -1, -1.0, 1.0, out)
    return float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])


def random_problem(n, m, seed, zero_frac, scale):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m)) * scale / np.sqrt(m)
    W[rng.random((n, m)) < zero_frac] = 0.0
    return W


def pushed_zero(a, b, w, extra_rows, seed):
    """As in tests/test_sparse.py: the zero W_01 is pushed by the growing W_11 through
    the positive overlap of rows 0 and 1 on column 0, until released several steps in."""
    rng = np.random.default_rng(seed)
    W = np.zeros((2 + extra_rows, 8))
    W[0, 0], W[1, 0], W[1, 1] = a, b, w
    for r in range(2, 2 + extra_rows):
        cols = rng.choice(np.arange(2, 8), size=2, replace=False)
        W[r, cols] = rng.uniform(0.1, 0.5, size=2) * rng.choice([-1.0, 1.0], size=2)
    return W


def reference_step(W, model, t, t_end, rtol, atol, out):
    """The next accepted step of ``forces.reference_adaptive`` from W at t, its
    controller state in out (updated); returns (V, h)."""
    while True:
        h = A.trial_size(t, t_end, t_end, out)
        assert h > 0
        V, err = forces.embedded_step(W, model, h, METHOD, rtol, atol)
        if A.control(err, h, Q, out):
            return V, h


def step_by_step(W0, model, t_end, rtol, atol, h0, policy=None):
    """One engine, one accepted step per call (jmax=1) from 0 to t_end, each step
    checked against the controller replayed in Python on ``embedded_step`` from the
    engine's current W and controller state: the same rejections, the same h (to the
    rounding of the error norm, below), and the engine's new W the V of
    ``embedded_step`` with the engine's h (its end minus its start), a trial the error
    norm accepts. A second engine in one call gives the same bits. Returns the engine,
    its out and the states after each step (steps, n, m).

    The error norm is a difference of nearby values, |v - v̂| ~ err·rtol·|w|, and the
    forces are summed in other orders here, so the norms agree only to about
    ulp(w)/|v - v̂| relative (up to ~1e-6 at rtol = 1e-6), and so do the step sizes
    chosen after a rejection."""
    eng = engine(W0, model, rtol, atol, t_end, policy)
    out = started(h0)
    t, j, states = 0.0, 0, []
    while t < t_end:
        W, ref = eng.W.copy(), out.copy()
        _, h_ref = reference_step(W, model, t, t_end, rtol, atol, ref)
        t_new, j_new, status = run(eng, out, t, j, t_end, jmax=1)
        assert j_new == j + 1 and status in (K.STATUS_DONE, K.STATUS_BUDGET)
        h = t_new - t
        assert h == pytest.approx(h_ref, rel=1e-5) and out[K.OUT_REJECTED] == ref[K.OUT_REJECTED]
        V, err = forces.embedded_step(W, model, h, METHOD, rtol, atol)
        assert err <= 1.0
        np.testing.assert_array_equal(eng.W != 0, V != 0, err_msg=f"supports differ, step {j}")
        np.testing.assert_allclose(eng.W, V, rtol=0, atol=1e-13, err_msg=f"step {j}")
        t, j = t_new, j_new
        states.append(eng.W.copy())
    assert t == t_end
    # one force per step start, S - 1 = 3 more per trial (accepted or rejected)
    assert out[K.OUT_EVALS] == j + 3 * (j + out[K.OUT_REJECTED])
    whole = engine(W0, model, rtol, atol, t_end, policy)
    out_whole = started(h0)
    assert run(whole, out_whole, 0.0, 0, t_end) == (t_end, j, K.STATUS_DONE)
    np.testing.assert_array_equal(whole.W, eng.W)
    np.testing.assert_array_equal(out_whole, out)
    return eng, out, np.array(states)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 6),
    m=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    lam=st.sampled_from([1e-3, 0.01, 0.05]),
    zero_frac=st.sampled_from([0.0, 0.5, 0.8]),
    scale=st.sampled_from([0.5, 1.0, 2.0]),
    c=st.sampled_from([1.0, 4.0]),
    tol=st.sampled_from(TOLERANCES),
    h0=st.sampled_from([1e-3, 0.1, 2.0]),
    policy=st.sampled_from(sorted(POLICIES)),
)
def test_each_step_is_that_of_the_reference(n, m, seed, lam, zero_frac, scale, c, tol, h0, policy):
    W0 = random_problem(n, m, seed, zero_frac, scale)
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    step_by_step(W0, model, 2.0 / c, *tol, h0, POLICIES[policy])


#: Whole runs compared with ``forces.reference_adaptive``: (n, m, seed, zero fraction, λ, c, tolerances, h0).
WHOLE_RUNS = [
    (5, 10, 0, 0.4, 0.01, 1.0, TOLERANCES[1], 0.01),
    (6, 12, 1, 0.5, 0.05, 4.0, TOLERANCES[0], 2.0),
    (6, 12, 2, 0.0, 1e-3, 1.0, TOLERANCES[2], 0.1),
    (4, 8, 3, 0.8, 0.01, 4.0, TOLERANCES[1], 1e-3),
    (3, 12, 4, 0.5, 0.05, 1.0, TOLERANCES[2], 2.0),
]


@pytest.mark.parametrize("n, m, seed, zero_frac, lam, c, tol, h0", WHOLE_RUNS)
def test_whole_run_matches_reference_adaptive(n, m, seed, zero_frac, lam, c, tol, h0):
    """The same accepted steps and rejections as ``forces.reference_adaptive`` over a
    whole run, the same supports, W at t_end within 1e-9. The rounding differences of
    the error norms (``step_by_step``) make the step sizes drift apart (up to 1e-6
    relative at rtol = 1e-6), which moves W at t_end by up to 8.5e-10 (measured over 300
    random problems of these sizes: 1.6e-12, 1.9e-10, 8.5e-10 at rtol = 1e-2, 1e-4,
    1e-6), and 1 in those 300 took one accepted step more in the reference, near a death
    resolved differently at the 1e-9 level, so these cases are fixed, not drawn."""
    W0 = random_problem(n, m, seed, zero_frac, 1.0)
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    t_end = 2.0 / c
    eng = engine(W0, model, *tol, t_end)
    out = started(h0)
    t, j, status = run(eng, out, 0.0, 0, t_end)
    W_ref, steps, rejected = forces.reference_adaptive(W0, model, t_end, METHOD, *tol, h0)
    assert status == K.STATUS_DONE and t == t_end
    assert j == len(steps) and int(out[K.OUT_REJECTED]) == rejected
    np.testing.assert_array_equal(eng.W != 0, W_ref != 0, err_msg="supports differ")
    np.testing.assert_allclose(eng.W, W_ref, rtol=0, atol=1e-9)
    assert out[K.OUT_HMIN] == pytest.approx(min(steps), rel=1e-5)
    assert out[K.OUT_HMAX] == pytest.approx(max(steps), rel=1e-5)


def test_whole_runs_are_not_vacuous():
    """Between them the cases above reject trials mid-run (not only the first steps),
    release zeros and kill weights."""
    rejected_late, releases, deaths = 0, 0, 0
    for n, m, seed, zero_frac, lam, c, tol, h0 in WHOLE_RUNS:
        W0 = random_problem(n, m, seed, zero_frac, 1.0)
        model = flowsim.Model(n=n, m=m, lam=lam, c=c)
        eng = engine(W0, model, *tol, 2.0 / c)
        out = started(h0)
        run(eng, out, 0.0, 0, 0.2 / c)  # the first tenth of the run
        early = out[K.OUT_REJECTED]
        run(eng, out, float(out[K.OUT_T]), int(out[K.OUT_J]), 2.0 / c)
        rejected_late += out[K.OUT_REJECTED] - early
        releases += out[K.OUT_RELEASES]
        deaths += np.count_nonzero((W0 != 0) & (eng.W == 0))
    assert rejected_late >= 3 and releases >= 10 and deaths >= 3  # measured: 6, ≥ 10, ≥ 3


@settings(max_examples=10, deadline=None)
@given(
    a=st.floats(0.2, 0.4),
    b=st.floats(0.2, 0.4),
    w=st.floats(0.2, 0.4),
    lam_factor=st.floats(1.3, 2.0),
    extra_rows=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    tol=st.sampled_from(TOLERANCES[:2]),
)
def test_zero_released_mid_run_between_epochs(a, b, w, lam_factor, extra_rows, seed, tol):
    """One epoch at the start, none after: the zero W_01 is released by the bound path
    several accepted steps in, in the step where the reference releases it."""
    W0 = pushed_zero(a, b, w, extra_rows, seed)
    model = flowsim.Model(n=W0.shape[0], m=W0.shape[1], lam=lam_factor * a * b * w)
    eng, out, states = step_by_step(W0, model, 2.0, *tol, 0.05, POLICIES["one epoch"])
    released = np.flatnonzero(states[:, 0, 1] != 0.0)
    assert released.size and released[0] >= 2  # not in the first steps
    assert np.all(states[released, 0, 1] < 0.0)  # pushed away from W_11 > 0
    assert eng.counters[K.CT_EPOCHS] == 1 and eng.counters[K.CT_REL_BETWEEN] >= 1


def test_chunked_calls_give_the_bits_of_one_call():
    """Calls ending at save times t1 < t_end (the engine stops before a step that would
    pass t1, never shortening one), on one engine or a fresh one per call (as after a
    hand-over), give the numbers of one call from 0 to t_end, bit for bit."""
    model = flowsim.Model(n=6, m=12, lam=0.01, c=4.0)
    W0 = random_problem(6, 12, 3, 0.5, 1.0)
    t_end, rtol, atol, h0 = 1.0, 1e-4, 1e-7, 0.3
    whole = engine(W0, model, rtol, atol, t_end)
    out_whole = started(h0)
    run(whole, out_whole, 0.0, 0, t_end)
    for fresh in (False, True):
        eng = engine(W0, model, rtol, atol, t_end)
        out = started(h0)
        t, j = 0.0, 0
        for t1 in list(np.linspace(0.013, 0.99, 37)) + [t_end]:
            if fresh:
                eng = engine(eng.W, model, rtol, atol, t_end)
            t, j, status = run(eng, out, t, j, t1)
            assert status == K.STATUS_DONE and t <= t1
        assert t == t_end
        np.testing.assert_array_equal(eng.W, whole.W)
        for slot in (K.OUT_J, K.OUT_H, K.OUT_ERRPREV, K.OUT_REJECTED, K.OUT_HMIN, K.OUT_HMAX, K.OUT_RELEASES):
            assert out[slot] == out_whole[slot]


def test_rejected_trials_leave_the_state_untouched():
    """With rtol = atol = 1e-40 the rounding of V_raw - V̂ soon rejects every trial, down
    to the step-size underflow. The run stops there with the state of its last accepted
    step (that of a run given just that many steps); the same engine, given usable
    tolerances, then runs as a fresh engine on that state (W_01 = 1e-30 is pushed
    through 0 with more than λ on the way)."""
    W0 = np.zeros((3, 6))
    W0[0, 0], W0[0, 1], W0[1, 0], W0[1, 1], W0[2, 3] = 0.5, 1e-30, 0.5, 0.5, -0.3
    model = flowsim.Model(n=3, m=6, lam=0.01)
    eng = engine(W0, model, 1e-40, 1e-40, 1.0)
    out = started(0.1)
    t, j, status = run(eng, out, 0.0, 0, 1.0)
    assert status == K.STATUS_NONFINITE and out[K.OUT_BAD] == -2 and t < 1e-6
    assert out[K.OUT_REJECTED] >= 10 and out[K.OUT_H] < A.H_UNDERFLOW
    budget = engine(W0, model, 1e-40, 1e-40, 1.0)
    assert run(budget, started(0.1), 0.0, 0, 1.0, jmax=j)[:2] == (t, j)
    np.testing.assert_array_equal(eng.W, budget.W)
    W_stop = eng.W.copy()
    eng.rtol, eng.atol = 1e-6, 1e-9
    out = started(0.1)
    run(eng, out, t, j, 1.0)
    fresh = engine(W_stop, model, 1e-6, 1e-9, 1.0)
    out_fresh = started(0.1)
    run(fresh, out_fresh, t, j, 1.0)
    np.testing.assert_array_equal(eng.W, fresh.W)
    np.testing.assert_array_equal(out, out_fresh)
    assert eng.W[0, 1] < 0.0  # carried through 0 and released on the other side


def test_underflow_before_any_trial():
    W0 = random_problem(3, 4, 1, 0.0, 1.0)
    eng = engine(W0, flowsim.Model(n=3, m=4, lam=0.01), 1e-4, 1e-7, 1.0)
    out = started(1e-20)
    assert run(eng, out, 0.5, 4, 1.0) == (0.5, 4, K.STATUS_NONFINITE) and out[K.OUT_BAD] == -2
    assert out[K.OUT_EVALS] == 0
    np.testing.assert_array_equal(eng.W, W0)


def test_hands_back_to_dense_after_an_accepted_step():
    """More than dense_above nonzeros after a step: STATUS_DENSE, that step taken."""
    model = flowsim.Model(n=4, m=8, lam=1e-3)
    W0 = random_problem(4, 8, 2, 0.5, 1.0)
    eng = AdaptiveSparseEngine(W0.copy(), model, METHOD, np.count_nonzero(W0), 1e-4, 1e-7, 1.0)
    eng.sync()
    out = started(0.05)
    t, j, status = run(eng, out, 0.0, 0, 1.0)
    assert status == K.STATUS_DENSE and j >= 1 and np.count_nonzero(eng.W) > np.count_nonzero(W0)
    W, t_ref, ref = W0, 0.0, started(0.05)
    for _ in range(j):
        W, h = reference_step(W, model, t_ref, 1.0, 1e-4, 1e-7, ref)
        t_ref += h
    assert t == pytest.approx(t_ref, rel=1e-15)
    np.testing.assert_array_equal(eng.W != 0, W != 0)
    np.testing.assert_allclose(eng.W, W, rtol=0, atol=1e-12)


def test_unknown_method_is_refused():
    W0 = np.ones((2, 2))
    with pytest.raises(ValueError, match="method='rk4'"):
        AdaptiveSparseEngine(W0, flowsim.Model(n=2, m=2, lam=0.01), "rk4", 4, 1e-4, 1e-7, 1.0)
