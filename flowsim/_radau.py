"""Radau IIA (order 5) for many independent 2-D systems, in numba, by reverse communication.

A port of scipy.integrate._ivp.radau (scipy 1.17) specialised to a 2-D state: the same
constants, simplified Newton iterations on the collocation system through the real and
complex transformed 2×2 systems, the embedded error estimate, the Gustafsson step-size
controller with the same safety factors and the same rule for reusing the Jacobian.
Differences from scipy:

* a step ends exactly on ``target`` if it would pass it (save times, phase ends); after
  such a clipped step the controller's unclipped proposal is kept if it is larger;
* the 2×2 systems are solved afresh from (J, h) whenever needed (scipy keeps a
  factorisation made for another h after a step clipped to t_bound);
* optional terminal event, a linear functional ``g(y) = a·y`` reaching 0: a step that
  crosses it is redone with the length that puts the event on its end point (Illinois
  iterations on that length).

The port knows nothing of the equations. It never calls the right-hand side: it returns
a *request* and the caller (a model's own numba driver) answers it in the work record
and calls :func:`resume`. This keeps every kernel cacheable (numba cannot cache a
function that takes, or closes over, another jitted function) and lets one port serve
any 2-D model. A driver's loop::

    req = start(st, ws, t0, y0a, y0b, t_bound)   # or step(st, ws, target, a0, a1)
    while req > 0:
        answer req: REQ_F3 -> ws.F[r] = f(st.y + ws.Z[r]), r = 0, 1, 2
                    REQ_F  -> ws.fp = f(ws.p)
                    REQ_JAC -> ws.jac = ∂f/∂y at st.y
        req = resume(st, ws)
    req == DONE: step accepted (ws.event_hit: it ends on the event); req < 0: failure

Per-row state :data:`STATE` (one record per system, kept between steps) and per-step
work record :data:`WORK` (one per driver call: a step runs to its end before the next).
Step counts, rejections, f and Jacobian evaluations are counted in the state.
"""
from __future__ import annotations

import os

import numba
import numpy as np

_S6 = 6.0 ** 0.5
_C = np.array([(4.0 - _S6) / 10.0, (4.0 + _S6) / 10.0, 1.0])
_E = np.array([-13.0 - 7.0 * _S6, -13.0 + 7.0 * _S6, -1.0]) / 3.0
_MU_REAL = 3.0 + 3.0 ** (2.0 / 3.0) - 3.0 ** (1.0 / 3.0)
_MU_COMPLEX = (3.0 + 0.5 * (3.0 ** (1.0 / 3.0) - 3.0 ** (2.0 / 3.0))
               - 0.5j * (3.0 ** (5.0 / 6.0) + 3.0 ** (7.0 / 6.0)))
_T = np.array([
    [0.09443876248897524, -0.14125529502095421, 0.03002919410514742],
    [0.25021312296533332, 0.20412935229379994, -0.38294211275726192],
    [1.0, 1.0, 0.0]])
_TI = np.array([
    [4.17871859155190428, 0.32768282076106237, 0.52337644549944951],
    [-4.17871859155190428, -0.32768282076106237, 0.47662355450055044],
    [0.50287263494578682, -2.57192694985560522, 0.59603920482822492]])
_TI_COMPLEX = _TI[1] + 1j * _TI[2]
_P = np.array([
    [13.0 / 3.0 + 7.0 * _S6 / 3.0, -23.0 / 3.0 - 22.0 * _S6 / 3.0, 10.0 / 3.0 + 5.0 * _S6],
    [13.0 / 3.0 - 7.0 * _S6 / 3.0, -23.0 / 3.0 + 22.0 * _S6 / 3.0, 10.0 / 3.0 - 5.0 * _S6],
    [1.0 / 3.0, -8.0 / 3.0, 10.0 / 3.0]])
NEWTON_MAXITER = 6
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
#: Relative width in t of the bracket that locates an event.
EVENT_RTOL = 1e-14
EVENT_MAXITER = 100

# Requests returned by start / step / resume (> 0: answer and resume), DONE, failures.
DONE, REQ_F3, REQ_F, REQ_JAC = 0, 1, 2, 3
FAIL_STEP, FAIL_NONFINITE, FAIL_EVENT = -1, -2, -3
FAILURES = {
    FAIL_STEP: "step size underflow",
    FAIL_NONFINITE: "non-finite right-hand side (step size underflow)",
    FAIL_EVENT: "Newton iterations failed while locating the event",
}

#: State of one system between steps: time, state, its derivative, proposed step, the
#: previous proposal and error norm (NaN: none), Jacobian, dense output of the last step
#: (cubic ``q`` from ``t_old``, ``y_old`` over ``h_prev``; h_prev = 0: none), counters
#: and the smallest and largest accepted step.
STATE = np.dtype([
    ("t", np.float64), ("y", np.float64, (2,)), ("f", np.float64, (2,)),
    ("h", np.float64), ("h_old", np.float64), ("err_old", np.float64),
    ("J", np.float64, (2, 2)), ("cur_jac", np.int64),
    ("q", np.float64, (2, 3)), ("t_old", np.float64), ("y_old", np.float64, (2,)),
    ("h_prev", np.float64),
    ("steps", np.int64), ("rejected", np.int64), ("nfev", np.int64), ("njev", np.int64),
    ("h_min", np.float64), ("h_max", np.float64),
])

#: Work record of the step in progress: tolerances, the continuation ``pc``, the trial
#: step, Newton iterates, error estimate, event and its bracket, and the request's
#: point and answer (``p`` -> ``fp``; stage points st.y + Z[r] -> F[r]; st.y -> ``jac``).
WORK = np.dtype([
    ("rtol", np.float64), ("atol", np.float64), ("newton_tol", np.float64),
    ("pc", np.int64), ("target", np.float64), ("has_event", np.int64),
    ("min_step", np.float64), ("h_abs", np.float64), ("h_abs_old", np.float64),
    ("err_old", np.float64), ("h_pre", np.float64), ("h", np.float64),
    ("t_new", np.float64), ("clipped", np.int64), ("rejected", np.int64),
    ("nonfinite", np.int64), ("sc", np.float64, (2,)),
    ("caller", np.int64), ("newton_h", np.float64), ("k", np.int64), ("n_iter", np.int64),
    ("converged", np.int64), ("dw_norm_old", np.float64), ("rate", np.float64),
    ("Z0", np.float64, (3, 2)), ("Z", np.float64, (3, 2)), ("W", np.float64, (3, 2)),
    ("Zs", np.float64, (3, 2)), ("F", np.float64, (3, 2)),
    ("y_new", np.float64, (2,)), ("ze", np.float64, (2,)), ("sce", np.float64, (2,)),
    ("err", np.float64), ("safety", np.float64), ("h_next", np.float64),
    ("recompute_jac", np.int64),
    ("lo", np.float64), ("hi", np.float64), ("g_lo", np.float64), ("g_hi", np.float64),
    ("side", np.int64), ("it", np.int64), ("event_hit", np.int64),
    ("ev_a0", np.float64), ("ev_a1", np.float64),
    ("p", np.float64, (2,)), ("fp", np.float64, (2,)), ("jac", np.float64, (2, 2)),
])

# continuations (ws.pc): which answer resume() consumes
(_PC_INIT_F, _PC_INIT_J, _PC_INIT_H, _PC_RESTART_F, _PC_RESTART_J, _PC_NEWTON,
 _PC_NEWTON_JAC, _PC_ERROR_F, _PC_ACCEPT_F, _PC_ACCEPT_J) = range(10)
_FOR_ATTEMPT, _FOR_EVENT = 0, 1


def tie_cache(*kernels):
    """Make numba's disk cache of other modules' kernels that call this port follow it.

    numba checks a cached kernel against its own source file only, so a model's driver
    compiled with an older copy of this file would be loaded unchanged after an edit of
    this file alone. This adds this file's (mtime, size) to each kernel's stamp.
    """
    st = os.stat(__file__)
    for kernel in kernels:
        # numba internals (tests/test_radau.py checks them); absent without a disk cache
        # (NUMBA_DISABLE_JIT=1 makes kernels plain functions)
        index = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        if index is not None:
            index._source_stamp = (index._source_stamp, (st.st_mtime, st.st_size))


def new_states(n):
    """Zeroed :data:`STATE` records, shape (n,) (np.record: fields as attributes also
    without numba, NUMBA_DISABLE_JIT=1)."""
    return np.zeros(n, dtype=(np.record, STATE))


def new_work(rtol, atol):
    """One :data:`WORK` record (shape (1,)) with the tolerances set."""
    ws = np.zeros(1, dtype=(np.record, WORK))
    ws[0]["rtol"] = rtol
    ws[0]["atol"] = atol
    ws[0]["newton_tol"] = max(10.0 * np.finfo(float).eps / rtol, min(0.03, rtol ** 0.5))
    return ws


# ----------------------------------------------------------------------- helpers
@numba.njit(cache=True, error_model="numpy")
def solve2(a, b, c, d, r0, r1):
    """Solve [[a, b], [c, d]] x = (r0, r1) by Gaussian elimination with pivoting."""
    if abs(c) > abs(a):
        a, b, c, d = c, d, a, b
        r0, r1 = r1, r0
    m = c / a
    x1 = (r1 - m * r0) / (d - m * b)
    return (r0 - b * x1) / a, x1


@numba.njit(cache=True, error_model="numpy")
def predict_factor(h_abs, h_abs_old, error_norm, error_norm_old):
    """scipy's predict_factor; NaN stands for None."""
    if error_norm_old != error_norm_old or h_abs_old != h_abs_old or error_norm == 0.0:
        multiplier = 1.0
    else:
        multiplier = h_abs / h_abs_old * (error_norm_old / error_norm) ** 0.25
    if error_norm == 0.0:
        return np.inf
    return min(1.0, multiplier) * error_norm ** -0.25


@numba.njit(cache=True, error_model="numpy")
def _norm2(e0, e1, s0, s1):
    return np.sqrt(((e0 / s0) ** 2 + (e1 / s1) ** 2) / 2.0)


@numba.njit(cache=True, error_model="numpy")
def _dense_guess(st, ws, t, h):
    """ws.Z0[r] = (dense output of the last step at t + h C_r) - y; zeros without one."""
    Z0 = ws.Z0
    hp = st.h_prev
    for r in range(3):
        if hp > 0.0:
            x = (t + h * _C[r] - st.t_old) / hp
            x2 = x * x
            x3 = x2 * x
            for j in range(2):
                Z0[r, j] = (st.y_old[j] + st.q[j, 0] * x + st.q[j, 1] * x2
                            + st.q[j, 2] * x3 - st.y[j])
        else:
            Z0[r, 0] = 0.0
            Z0[r, 1] = 0.0


@numba.njit(cache=True)
def _save_dense(st, ws, h):
    """Store the collocation polynomial (ws.Zs) of the step of length h from st.t."""
    Z = ws.Zs
    for j in range(2):
        for c in range(3):
            st.q[j, c] = Z[0, j] * _P[0, c] + Z[1, j] * _P[1, c] + Z[2, j] * _P[2, c]
        st.y_old[j] = st.y[j]
    st.t_old = st.t
    st.h_prev = h


@numba.njit(cache=True)
def _keep_iterate(ws):
    """ws.Zs = ws.Z: the Newton result the step (or the event search) keeps."""
    for r in range(3):
        ws.Zs[r, 0] = ws.Z[r, 0]
        ws.Zs[r, 1] = ws.Z[r, 1]


# The requests below leave ws.pc to the caller: a constant argument would make numba
# compile one specialisation of the function per value.
@numba.njit(cache=True)
def _request_f(st, ws, p0, p1):
    ws.p[0] = p0
    ws.p[1] = p1
    st.nfev += 1
    return np.int64(REQ_F)  # typed int64, not a literal: callers compile once


@numba.njit(cache=True)
def _request_jac(st):
    st.njev += 1
    return np.int64(REQ_JAC)


@numba.njit(cache=True)
def _take_jac(st, ws):
    for a in range(2):
        for b in range(2):
            st.J[a, b] = ws.jac[a, b]
    st.cur_jac = 1


# ------------------------------------------------------------------------- start
@numba.njit(cache=True, error_model="numpy")
def start(st, ws, t0, y0a, y0b, t_bound):
    """Set a system at (t0, y0) and choose its first step on (t0, t_bound).

    The first step is scipy's select_initial_step (error order 3). Requests f(y0),
    the Jacobian at y0 and one more f.
    """
    st.t = t0
    st.steps = st.rejected = st.nfev = st.njev = 0
    st.h_min = np.inf
    st.h_max = 0.0
    ws.target = t_bound
    ws.pc = _PC_INIT_F
    return _reset(st, ws, y0a, y0b)


@numba.njit(cache=True, error_model="numpy")
def restart(st, ws, y0a, y0b):
    """Put a system at a new state (e.g. in other coordinates) at the same time.

    The proposed step is kept; the controller's memory and the dense output are
    dropped. Requests f and the Jacobian there.
    """
    ws.pc = _PC_RESTART_F
    return _reset(st, ws, y0a, y0b)


@numba.njit(cache=True, error_model="numpy")
def _reset(st, ws, y0a, y0b):
    """State y0 without history (controller memory, dense output, Jacobian); asks f."""
    st.y[0] = y0a
    st.y[1] = y0b
    st.h_old = np.nan
    st.err_old = np.nan
    st.h_prev = 0.0
    st.cur_jac = 0
    return _request_f(st, ws, y0a, y0b)


@numba.njit(cache=True, error_model="numpy")
def _init_answered(st, ws):
    """Continuations of :func:`start` and :func:`restart`."""
    if ws.pc == _PC_INIT_F or ws.pc == _PC_RESTART_F:
        st.f[0] = ws.fp[0]
        st.f[1] = ws.fp[1]
        ws.pc = _PC_INIT_J if ws.pc == _PC_INIT_F else _PC_RESTART_J
        return _request_jac(st)
    if ws.pc == _PC_RESTART_J:
        _take_jac(st, ws)
        return DONE
    span = ws.target - st.t
    rtol = ws.rtol
    atol = ws.atol
    s0 = atol + abs(st.y[0]) * rtol
    s1 = atol + abs(st.y[1]) * rtol
    if ws.pc == _PC_INIT_J:
        _take_jac(st, ws)
        if span == 0.0:
            st.h = 0.0
            return DONE
        d0 = _norm2(st.y[0], st.y[1], s0, s1)
        d1 = _norm2(st.f[0], st.f[1], s0, s1)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        ws.h = h0
        ws.pc = _PC_INIT_H
        return _request_f(st, ws, st.y[0] + h0 * st.f[0], st.y[1] + h0 * st.f[1])
    h0 = ws.h
    d1 = _norm2(st.f[0], st.f[1], s0, s1)
    d2 = _norm2(ws.fp[0] - st.f[0], ws.fp[1] - st.f[1], s0, s1) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 4.0)
    st.h = min(100.0 * h0, h1, span)
    return DONE


# ---------------------------------------------------------- Newton on the collocation
@numba.njit(cache=True, error_model="numpy")
def _newton_begin(st, ws, h):
    """Start simplified Newton iterations for a step of length h from ws.Z0 (for
    ws.caller: the step attempt or the event search)."""
    ws.newton_h = h
    for r in range(3):
        for j in range(2):
            ws.W[r, j] = _TI[r, 0] * ws.Z0[0, j] + _TI[r, 1] * ws.Z0[1, j] + _TI[r, 2] * ws.Z0[2, j]
            ws.Z[r, j] = ws.Z0[r, j]
    ws.dw_norm_old = -1.0
    ws.rate = np.nan
    ws.k = 0
    ws.pc = _PC_NEWTON
    st.nfev += 3
    return REQ_F3


@numba.njit(cache=True, error_model="numpy")
def _newton_iterate(st, ws):
    """One iteration of scipy's solve_collocation_system with ws.F = f(y + Z)."""
    F = ws.F
    for r in range(3):
        if not (np.isfinite(F[r, 0]) and np.isfinite(F[r, 1])):
            ws.converged, ws.nonfinite = 0, 1
            return _newton_end(st, ws)
    h = ws.newton_h
    m_real = _MU_REAL / h
    m_cplx = _MU_COMPLEX / h
    J = st.J
    W = ws.W
    x0 = F[0, 0] * _TI[0, 0] + F[1, 0] * _TI[0, 1] + F[2, 0] * _TI[0, 2] - m_real * W[0, 0]
    x1 = F[0, 1] * _TI[0, 0] + F[1, 1] * _TI[0, 1] + F[2, 1] * _TI[0, 2] - m_real * W[0, 1]
    c0 = (F[0, 0] * _TI_COMPLEX[0] + F[1, 0] * _TI_COMPLEX[1] + F[2, 0] * _TI_COMPLEX[2]
          - m_cplx * (W[1, 0] + 1j * W[2, 0]))
    c1 = (F[0, 1] * _TI_COMPLEX[0] + F[1, 1] * _TI_COMPLEX[1] + F[2, 1] * _TI_COMPLEX[2]
          - m_cplx * (W[1, 1] + 1j * W[2, 1]))
    r0, r1 = solve2(m_real - J[0, 0], -J[0, 1], -J[1, 0], m_real - J[1, 1], x0, x1)
    z0, z1 = solve2(m_cplx - J[0, 0], -J[0, 1] + 0j, -J[1, 0] + 0j, m_cplx - J[1, 1], c0, c1)
    # dW rows: real system, then real and imaginary parts of the complex one
    d00, d01, d10, d11, d20, d21 = r0, r1, z0.real, z1.real, z0.imag, z1.imag
    s0 = ws.sc[0]
    s1 = ws.sc[1]
    acc = (d00 / s0) ** 2 + (d01 / s1) ** 2  # summed row by row, as scipy's norm
    acc += (d10 / s0) ** 2 + (d11 / s1) ** 2
    acc += (d20 / s0) ** 2 + (d21 / s1) ** 2
    dw_norm = np.sqrt(acc / 6.0)
    rate = ws.rate
    if ws.dw_norm_old >= 0.0:
        rate = dw_norm / ws.dw_norm_old
        ws.rate = rate
    tol = ws.newton_tol
    if rate == rate and (rate >= 1.0 or rate ** (NEWTON_MAXITER - ws.k) / (1.0 - rate)
                         * dw_norm > tol):
        ws.converged, ws.nonfinite = 0, 0
        return _newton_end(st, ws)
    W[0, 0] += d00
    W[0, 1] += d01
    W[1, 0] += d10
    W[1, 1] += d11
    W[2, 0] += d20
    W[2, 1] += d21
    for r in range(3):
        for j in range(2):
            ws.Z[r, j] = _T[r, 0] * W[0, j] + _T[r, 1] * W[1, j] + _T[r, 2] * W[2, j]
    if dw_norm == 0.0 or (rate == rate and rate / (1.0 - rate) * dw_norm < tol):
        ws.converged, ws.nonfinite = 1, 0
        return _newton_end(st, ws)
    ws.dw_norm_old = dw_norm
    if ws.k + 1 == NEWTON_MAXITER:
        ws.converged, ws.nonfinite = 0, 0
        return _newton_end(st, ws)
    ws.k += 1
    st.nfev += 3
    return REQ_F3


@numba.njit(cache=True, error_model="numpy")
def _newton_end(st, ws):
    """Newton has stopped: without convergence on an old Jacobian, refresh it at y and
    iterate again; else go on with the caller's step attempt or event search."""
    ws.n_iter = ws.k + 1
    if not ws.converged and not st.cur_jac:
        ws.pc = _PC_NEWTON_JAC
        return _request_jac(st)
    if ws.caller == _FOR_ATTEMPT:
        return _attempt_newton_done(st, ws)
    return _event_newton_done(st, ws)


# ------------------------------------------------------- step attempt, error control
@numba.njit(cache=True, error_model="numpy")
def step(st, ws, target, ev_a0, ev_a1):
    """Begin one step of at most ``target - st.t``.

    Terminal event (ev_a0 NaN: none): g(y) = ev_a0 y0 + ev_a1 y1 reaching 0 from above;
    a step that crosses it is redone to end on it (ws.event_hit = 1).
    """
    ws.target = target
    ws.has_event = 1 if ev_a0 == ev_a0 else 0
    ws.ev_a0 = ev_a0
    ws.ev_a1 = ev_a1
    ws.event_hit = 0
    t = st.t
    ws.min_step = 10.0 * abs(np.nextafter(t, np.inf) - t)
    ws.h_abs = st.h
    ws.h_abs_old = st.h_old
    ws.err_old = st.err_old
    if ws.h_abs < ws.min_step:
        ws.h_abs = ws.min_step
        ws.h_abs_old = np.nan
        ws.err_old = np.nan
    ws.rejected = 0
    ws.nonfinite = 0
    return _attempt(st, ws)


@numba.njit(cache=True, error_model="numpy")
def _attempt(st, ws):
    """Try a step of length ws.h_abs (clipped to the target)."""
    if not ws.h_abs >= ws.min_step:  # also catches NaN
        return FAIL_NONFINITE if ws.nonfinite else FAIL_STEP
    t = st.t
    ws.h_pre = ws.h_abs
    t_new = t + ws.h_abs
    ws.clipped = 1 if t_new > ws.target else 0
    if ws.clipped:
        t_new = ws.target
    ws.t_new = t_new
    ws.h = t_new - t
    ws.h_abs = ws.h
    _dense_guess(st, ws, t, ws.h)
    for j in range(2):
        ws.sc[j] = ws.atol + abs(st.y[j]) * ws.rtol
    ws.caller = _FOR_ATTEMPT
    return _newton_begin(st, ws, ws.h)


@numba.njit(cache=True, error_model="numpy")
def _attempt_newton_done(st, ws):
    """After Newton in a step attempt: halve the step, or estimate the error."""
    if not ws.converged:
        ws.h_abs *= 0.5
        st.rejected += 1
        return _attempt(st, ws)
    h = ws.h
    Z = ws.Z
    J = st.J
    m_real = _MU_REAL / h
    for j in range(2):
        ws.y_new[j] = st.y[j] + Z[2, j]
        ws.ze[j] = (Z[0, j] * _E[0] + Z[1, j] * _E[1] + Z[2, j] * _E[2]) / h
        ws.sce[j] = ws.atol + max(abs(st.y[j]), abs(ws.y_new[j])) * ws.rtol
    e0, e1 = solve2(m_real - J[0, 0], -J[0, 1], -J[1, 0], m_real - J[1, 1],
                    st.f[0] + ws.ze[0], st.f[1] + ws.ze[1])
    ws.err = _norm2(e0, e1, ws.sce[0], ws.sce[1])
    ws.safety = 0.9 * (2 * NEWTON_MAXITER + 1) / (2 * NEWTON_MAXITER + ws.n_iter)
    if ws.rejected and ws.err > 1.0:
        ws.pc = _PC_ERROR_F
        return _request_f(st, ws, st.y[0] + e0, st.y[1] + e1)
    return _error_control(st, ws)


@numba.njit(cache=True, error_model="numpy")
def _refined_error(st, ws):
    """The error estimate again from f(y + e) (scipy, after a rejection)."""
    m_real = _MU_REAL / ws.h
    J = st.J
    e0, e1 = solve2(m_real - J[0, 0], -J[0, 1], -J[1, 0], m_real - J[1, 1],
                    ws.fp[0] + ws.ze[0], ws.fp[1] + ws.ze[1])
    ws.err = _norm2(e0, e1, ws.sce[0], ws.sce[1])
    return _error_control(st, ws)


@numba.njit(cache=True, error_model="numpy")
def _error_control(st, ws):
    """Reject (shrink, retry) or accept the attempt and propose the next step."""
    if not ws.err <= 1.0:  # NaN too: reject
        ws.nonfinite = 1 if ws.err != ws.err else 0
        factor = predict_factor(ws.h_abs, ws.h_abs_old, ws.err, ws.err_old)
        ws.h_abs *= max(MIN_FACTOR, ws.safety * factor)
        ws.rejected = 1
        st.rejected += 1
        return _attempt(st, ws)
    ws.recompute_jac = 1 if ws.n_iter > 2 and ws.rate > 1e-3 else 0
    factor = predict_factor(ws.h_abs, ws.h_abs_old, ws.err, ws.err_old)
    factor = min(MAX_FACTOR, ws.safety * factor)
    if not ws.recompute_jac and factor < 1.2:
        factor = 1.0
    ws.h_next = ws.h_abs * factor
    if ws.clipped and ws.h_pre > ws.h_next:
        ws.h_next = ws.h_pre
    _keep_iterate(ws)
    if ws.has_event:
        g_new = _event_g(ws, ws.y_new[0], ws.y_new[1])
        if g_new <= 0.0:
            return _event_begin(st, ws, g_new)
    return _accept(st, ws)


# ----------------------------------------------------------------- event location
@numba.njit(cache=True, error_model="numpy")
def _event_g(ws, y0, y1):
    """The event function, a linear functional g(y) = a0 y0 + a1 y1."""
    return ws.ev_a1 * y1 + ws.ev_a0 * y0


@numba.njit(cache=True, error_model="numpy")
def _event_begin(st, ws, g_new):
    """The accepted attempt crosses the event: bracket its time in (0, h]."""
    ws.g_hi = g_new
    ws.g_lo = _event_g(ws, st.y[0], st.y[1])
    ws.lo = 0.0
    ws.hi = ws.h
    ws.side = 0
    ws.it = 0
    _save_dense(st, ws, ws.h)  # guesses come from this step's own polynomial
    return _event_trial(st, ws)


@numba.njit(cache=True, error_model="numpy")
def _event_bracket(st, ws, g_t):
    """Illinois update of the bracket with g at the end of trial length ws.newton_h."""
    if g_t > 0.0:
        ws.lo = ws.newton_h
        ws.g_lo = g_t
        if ws.side == 1:
            ws.g_hi *= 0.5
        ws.side = 1
    else:
        ws.hi = ws.newton_h
        ws.g_hi = g_t
        _keep_iterate(ws)
        if ws.side == -1:
            ws.g_lo *= 0.5
        ws.side = -1
    return _event_trial(st, ws)


@numba.njit(cache=True, error_model="numpy")
def _event_trial(st, ws):
    """Next Illinois (regula falsi) trial length in (lo, hi), or finish on hi."""
    t = st.t
    lo = ws.lo
    hi = ws.hi
    if ws.it >= EVENT_MAXITER or ws.g_hi == 0.0 or hi - lo <= EVENT_RTOL * abs(t + hi):
        return _event_finish(st, ws)
    ht = hi - ws.g_hi * (hi - lo) / (ws.g_hi - ws.g_lo)
    if not (lo < ht < hi) or t + ht == t + lo or t + ht == t + hi:
        ht = 0.5 * (lo + hi)
    if not (t + lo < t + ht < t + hi):
        return _event_finish(st, ws)
    ws.it += 1
    _dense_guess(st, ws, t, ht)
    ws.caller = _FOR_EVENT
    return _newton_begin(st, ws, ht)


@numba.njit(cache=True, error_model="numpy")
def _event_newton_done(st, ws):
    """After Newton on a trial length: update the bracket with g at its end."""
    if not ws.converged:
        return FAIL_EVENT
    return _event_bracket(st, ws, _event_g(ws, st.y[0] + ws.Z[2, 0], st.y[1] + ws.Z[2, 1]))


@numba.njit(cache=True, error_model="numpy")
def _event_finish(st, ws):
    """The step ends on the (g <= 0 side of the) event: length hi."""
    ws.h = ws.hi
    ws.t_new = st.t + ws.hi
    for j in range(2):
        ws.y_new[j] = st.y[j] + ws.Zs[2, j]
    ws.event_hit = 1
    return _accept(st, ws)


# -------------------------------------------------------------------- acceptance
@numba.njit(cache=True, error_model="numpy")
def _accept(st, ws):
    ws.pc = _PC_ACCEPT_F
    return _request_f(st, ws, ws.y_new[0], ws.y_new[1])


@numba.njit(cache=True, error_model="numpy")
def _commit(st, ws):
    """Move the system to the accepted step's end (ws.fp = f there)."""
    _save_dense(st, ws, ws.h)
    st.h_old = st.h
    st.err_old = ws.err
    st.h = ws.h_next
    st.t = ws.t_new
    for j in range(2):
        st.y[j] = ws.y_new[j]
        st.f[j] = ws.fp[j]
    st.steps += 1
    st.h_min = min(st.h_min, ws.h)
    st.h_max = max(st.h_max, ws.h)
    if ws.recompute_jac:
        ws.pc = _PC_ACCEPT_J
        return _request_jac(st)
    st.cur_jac = 0
    return DONE


@numba.njit(cache=True, error_model="numpy")
def resume(st, ws):
    """Continue after the caller answered the last request; returns the next one."""
    pc = ws.pc
    if pc == _PC_NEWTON:
        return _newton_iterate(st, ws)
    if pc == _PC_ACCEPT_F:
        return _commit(st, ws)
    if pc == _PC_NEWTON_JAC:
        _take_jac(st, ws)
        return _newton_begin(st, ws, ws.newton_h)
    if pc == _PC_ACCEPT_J:
        _take_jac(st, ws)
        return DONE
    if pc == _PC_ERROR_F:
        return _refined_error(st, ws)
    return _init_answered(st, ws)  # pc < _PC_NEWTON
