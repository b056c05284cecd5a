"""Exact interference-free solution: one affine map per row, a 2-D ODE per row.

With interference off the rows are independent, and every nonzero weight of row i
follows the same affine map of its initial absolute value (paper, Appendix B)::

    |W_ik(t)| = max(A_i(t) |W_ik(0)| - B_i(t), 0),   sign kept, exact zeros stay zero,
    A' = fb c (1 - N) A,   B' = fb c (1 - N) B + l1 λ,   A(0) = 1, B(0) = 0,

with N_i = ‖W_i‖² and fb, l1 the force switches (0/1). Sorting each row's nonzero
|W_ik(0)| descending, a_1 ≥ a_2 ≥ ..., every statistic of the row is a polynomial in
(A, B) and prefix sums of powers of the a_l, evaluated at the alive count
m′ = #{l : A a_l > B}.

Two numerical choices differ from integrating (A, B) literally with an explicit method:

* **State (A, s) with s = A a_1 - B**, the current value of the row's largest weight
  (negative once every weight is gone). B/A tends to a_1 as the row sparsifies, so
  ``A a_l - B`` cancels catastrophically late in training (A grows like e^{λt}: at
  t = 10/λ, A a_1 ≈ 10^5 for a weight of 1). In terms of the gaps d_l = a_1 - a_l
  (ascending) the alive weights are ``s - A d_l``, which is well conditioned for the
  whole run. A(t) and B(t) = A a_1 - s are still reported.
* **Radau (implicit) by default.** Once ‖W_i‖ ≈ 1 the flow relaxes ‖W_i‖ at rate ~2c
  while sparsifying on the time scale 1/λ: the system is stiff, and an explicit method
  (DOP853) needs ~c t_max/3 steps (3·10^5 at λ = 1e-5, t_max = 10/λ). Radau with the
  analytic Jacobian needs a few thousand. The default ``"radau-numba"`` is a port of
  scipy's Radau IIA (order 5) into one numba kernel that integrates each row on its own
  with its own steps (~1 µs per step instead of scipy's ~300 µs of Python); scipy's
  solvers (``"Radau"``, ``"LSODA"``, ...) integrate all rows jointly and stay selectable
  as the reference.

N is C¹ in (A, s) (a weight leaves the sum quadratically), so the adaptive solver copes
with the kinks where m′ changes.

When the L1 force is inactive (switched off or λ = 0) nothing ever dies, B ≡ 0 and the
weights are exactly ``A W0``; statistics and weights are then computed from that form
so that every nonzero initial weight stays nonzero exactly.
"""
from __future__ import annotations

import dataclasses
import time

import numba
import numpy as np
import scipy.integrate
import scipy.sparse

from .errors import DivergenceError, check_int, invalid
from .model import Model
from .trajectory import RunStats, Trajectory, finish_stats

#: ODE methods of :func:`solve_reduced`: the numba Radau port, then solve_ivp methods.
ODE_METHODS = ("radau-numba", "Radau", "BDF", "LSODA", "DOP853", "RK45")
_IMPLICIT = ("Radau", "BDF", "LSODA")
#: Rows up to which the Jacobian is passed dense rather than sparse.
_DENSE_JAC_ROWS = 8


# --------------------------------------------------------------------------- kernels
@numba.njit(cache=True)
def _prefix_power_sums(x, P1, P2, P3, P4):
    """Kahan-compensated prefix sums of x, x², x³, x⁴ along each row.

    x : (n, m); P1..P4 : (n, m + 1), written: ``Pp[i, j] = Σ_{l<j} x[i, l]**p``.
    """
    n, m = x.shape
    for i in range(n):
        s1 = s2 = s3 = s4 = 0.0
        c1 = c2 = c3 = c4 = 0.0
        P1[i, 0] = 0.0
        P2[i, 0] = 0.0
        P3[i, 0] = 0.0
        P4[i, 0] = 0.0
        for j in range(m):
            v = x[i, j]
            v2 = v * v
            y = v - c1
            t = s1 + y
            c1 = (t - s1) - y
            s1 = t
            y = v2 - c2
            t = s2 + y
            c2 = (t - s2) - y
            s2 = t
            y = v2 * v - c3
            t = s3 + y
            c3 = (t - s3) - y
            s3 = t
            y = v2 * v2 - c4
            t = s4 + y
            c4 = (t - s4) - y
            s4 = t
            # s - c is the compensated estimate of the true running sum
            P1[i, j + 1] = s1 - c1
            P2[i, j + 1] = s2 - c2
            P3[i, j + 1] = s3 - c3
            P4[i, j + 1] = s4 - c4


@numba.njit(cache=True)
def _bisect(d_row, lo, hi, A, s):
    """First l in [lo, hi) with ``A * d_row[l] >= s`` (hi if none; d_row ascending)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if A * d_row[mid] < s:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def _alive_count(d_row, nz, A, s):
    """Number of l < nz with ``A * d_row[l] < s`` (d_row ascending, A > 0)."""
    return _bisect(d_row, 0, nz, A, s)


@numba.njit(cache=True)
def _row_force(k, p1, p2, A, s, c_fb, lam_l1):
    """(A', s') of one row with k alive weights; p1, p2 = P1[i, k], P2[i, k]."""
    g = 0.0
    if k > 0:
        N = k * s * s - 2.0 * s * A * p1 + A * A * p2
        g = c_fb * (1.0 - N)
    return g * A, g * s - lam_l1


@numba.njit(cache=True)
def _row_jac(k, p1, p2, A, s, c_fb):
    """(J_AA, J_As, J_sA, J_ss) of one row with k alive weights."""
    jaa = jsa = jas = jss = 0.0
    if k > 0:
        N = k * s * s - 2.0 * s * A * p1 + A * A * p2
        g = c_fb * (1.0 - N)
        NA = 2.0 * (A * p2 - s * p1)
        Ns = 2.0 * (k * s - A * p1)
        jaa = g - c_fb * A * NA
        jas = -c_fb * A * Ns
        jsa = -c_fb * s * NA
        jss = g - c_fb * s * Ns
    return jaa, jas, jsa, jss


@numba.njit(cache=True)
def _rhs_kernel(d, nz, P1, P2, y, c_fb, lam_l1, out):
    """Right-hand side of the interleaved state y = (A_0, s_0, A_1, s_1, ...).

    c_fb = c if feature benefit is on else 0; lam_l1 = λ if L1 is on else 0.
    A row with no alive weight is frozen in A (its weights are zero for good).
    """
    for i in range(nz.size):
        A = y[2 * i]
        s = y[2 * i + 1]
        k = _alive_count(d[i], nz[i], A, s)
        fa, fs = _row_force(k, P1[i, k], P2[i, k], A, s, c_fb, lam_l1)
        out[2 * i] = fa
        out[2 * i + 1] = fs


@numba.njit(cache=True)
def _jac_kernel(d, nz, P1, P2, y, c_fb, out):
    """Jacobian blocks, written in CSC order of the interleaved state.

    out : (4 n,) — for row i: J[A,A], J[s,A], J[A,s], J[s,s].
    """
    for i in range(nz.size):
        A = y[2 * i]
        s = y[2 * i + 1]
        k = _alive_count(d[i], nz[i], A, s)
        jaa, jas, jsa, jss = _row_jac(k, P1[i, k], P2[i, k], A, s, c_fb)
        out[4 * i] = jaa
        out[4 * i + 1] = jsa
        out[4 * i + 2] = jas
        out[4 * i + 3] = jss


@numba.njit(cache=True)
def _moments_kernel(d, nz, P1, P2, P3, P4, A, s, k_out, l1_out, l2_out, l4_out):
    """m′, ‖W‖₁, ‖W‖², ‖W‖₄⁴ of each row at states (A, s) of shape (T, n)."""
    T, n = A.shape
    for t in range(T):
        for i in range(n):
            a = A[t, i]
            u = s[t, i]
            k = _alive_count(d[i], nz[i], a, u)
            k_out[t, i] = k
            p1 = P1[i, k]
            p2 = P2[i, k]
            p3 = P3[i, k]
            p4 = P4[i, k]
            # Σ (u - a d_l)^p over the k alive weights, expanded
            l1_out[t, i] = k * u - a * p1
            l2_out[t, i] = k * u * u - 2.0 * u * a * p1 + a * a * p2
            u2 = u * u
            a2 = a * a
            l4_out[t, i] = (k * u2 * u2 - 4.0 * u2 * u * a * p1 + 6.0 * u2 * a2 * p2
                            - 4.0 * u * a2 * a * p3 + a2 * a2 * p4)


@numba.njit(cache=True)
def _materialise_kernel(W0, a1, A, s, out):
    """out[i, k] = sign(W0) · max(s_i - A_i (a1_i - |W0_ik|), 0), zeros stay zero."""
    n, m = W0.shape
    for i in range(n):
        for k in range(m):
            w = W0[i, k]
            v = 0.0
            if w != 0.0:
                v = s[i] - A[i] * (a1[i] - abs(w))
                if v > 0.0:
                    if w < 0.0:
                        v = -v
                else:
                    v = 0.0
            out[i, k] = v


# ------------------------------------------------------ Radau IIA (order 5) in numba
# A port of scipy.integrate._ivp.radau (scipy 1.17) specialised to one row's 2-D state
# y = (A, s): the same constants, simplified Newton iterations on the collocation
# system through the real and complex transformed 2×2 systems, the embedded error
# estimate, the Gustafsson step-size controller with the same safety factors, and the
# same rule for reusing the Jacobian. Differences from scipy:
# * steps are clipped to end exactly on every save time; after a clipped step the
#   controller's unclipped proposal is kept if it is larger than its new one;
# * the 2×2 systems are solved afresh from (J, h) whenever they are needed (scipy keeps
#   a factorisation made for another h after a step clipped to t_bound);
# * a step that crosses the max_nnz event is redone with the step length that puts the
#   event on its end point (Illinois iterations on that length).
_S6 = 6.0 ** 0.5
_RC = np.array([(4.0 - _S6) / 10.0, (4.0 + _S6) / 10.0, 1.0])
_RE = np.array([-13.0 - 7.0 * _S6, -13.0 + 7.0 * _S6, -1.0]) / 3.0
_MU_REAL = 3.0 + 3.0 ** (2.0 / 3.0) - 3.0 ** (1.0 / 3.0)
_MU_COMPLEX = (3.0 + 0.5 * (3.0 ** (1.0 / 3.0) - 3.0 ** (2.0 / 3.0))
               - 0.5j * (3.0 ** (5.0 / 6.0) + 3.0 ** (7.0 / 6.0)))
_RT = np.array([
    [0.09443876248897524, -0.14125529502095421, 0.03002919410514742],
    [0.25021312296533332, 0.20412935229379994, -0.38294211275726192],
    [1.0, 1.0, 0.0]])
_RTI = np.array([
    [4.17871859155190428, 0.32768282076106237, 0.52337644549944951],
    [-4.17871859155190428, -0.32768282076106237, 0.47662355450055044],
    [0.50287263494578682, -2.57192694985560522, 0.59603920482822492]])
_RTI_COMPLEX = _RTI[1] + 1j * _RTI[2]
_RP = np.array([
    [13.0 / 3.0 + 7.0 * _S6 / 3.0, -23.0 / 3.0 - 22.0 * _S6 / 3.0, 10.0 / 3.0 + 5.0 * _S6],
    [13.0 / 3.0 - 7.0 * _S6 / 3.0, -23.0 / 3.0 + 22.0 * _S6 / 3.0, 10.0 / 3.0 - 5.0 * _S6],
    [1.0 / 3.0, -8.0 / 3.0, 10.0 / 3.0]])
_NEWTON_MAXITER = 6
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
#: Relative width in t of the bracket that locates the max_nnz event.
_EVENT_RTOL = 1e-14
_EVENT_MAXITER = 100

# Row status codes, ist[:, _I_STATUS].
_RUNNING, _DONE, _EVENT, _WAITING = 0, 1, 2, 3
_FAIL_STEP, _FAIL_NONFINITE, _FAIL_EVENT = -1, -2, -3
_FAILURES = {
    _FAIL_STEP: "step size underflow",
    _FAIL_NONFINITE: "non-finite right-hand side (step size underflow)",
    _FAIL_EVENT: "Newton iterations failed while locating the max_nnz event",
}
# Float state of a row, fs[i, :]: time, state, its derivative, proposed step, previous
# proposal and error norm (NaN: none), Jacobian (J_AA, J_As, J_sA, J_ss), dense output
# of the last step (Q: 2×3, its start t_old, y_old, length h_prev; h_prev = 0: none),
# end time of the current phase, event gap d (NaN: no event).
_F_T, _F_A, _F_S, _F_FA, _F_FS, _F_H, _F_HOLD, _F_EOLD = range(8)
_F_J = 8
_F_Q = 12
_F_TOLD, _F_YOLD_A, _F_YOLD_S, _F_HPREV, _F_TEND, _F_EVD = range(18, 24)
_NF = 24
# Integer state of a row, ist[i, :]: status, next save index, accepted steps, rhs and
# Jacobian evaluations, Jacobian-is-current flag, alive-count hint.
_I_STATUS, _I_SAVE, _I_STEPS, _I_NFEV, _I_NJEV, _I_CURJAC, _I_HINT = range(7)
_NI = 7


@numba.njit(cache=True, error_model="numpy")
def _alive_count_near(d_row, nz, A, s, hint):
    """:func:`_alive_count`, searched by galloping from ``hint`` (same result)."""
    if hint > nz:
        hint = nz
    if hint < 0:
        hint = 0
    # invariant: alive for l < lo, dead for l >= hi
    if hint < nz and A * d_row[hint] < s:
        lo = hint + 1
        step = 1
        while True:
            probe = lo + step - 1
            if probe >= nz:
                hi = nz
                break
            if A * d_row[probe] < s:
                lo = probe + 1
                step *= 2
            else:
                hi = probe
                break
    else:
        hi = hint
        step = 1
        while True:
            probe = hi - step
            if probe < 0:
                lo = 0
                break
            if A * d_row[probe] < s:
                lo = probe + 1
                break
            hi = probe
            step *= 2
    return _bisect(d_row, lo, hi, A, s)


@numba.njit(cache=True, error_model="numpy")
def _solve2(a, b, c, d, r0, r1):
    """Solve [[a, b], [c, d]] x = (r0, r1) by Gaussian elimination with pivoting."""
    if abs(c) > abs(a):
        a, b, c, d = c, d, a, b
        r0, r1 = r1, r0
    m = c / a
    x1 = (r1 - m * r0) / (d - m * b)
    return (r0 - b * x1) / a, x1


@numba.njit(cache=True, error_model="numpy")
def _eval_f(d_row, nz, p1, p2, c_fb, lam_l1, A, s, ist_row):
    k = _alive_count_near(d_row, nz, A, s, ist_row[_I_HINT])
    ist_row[_I_HINT] = k
    ist_row[_I_NFEV] += 1
    return _row_force(k, p1[k], p2[k], A, s, c_fb, lam_l1)


@numba.njit(cache=True, error_model="numpy")
def _eval_jac(d_row, nz, p1, p2, c_fb, A, s, ist_row, fs_row):
    k = _alive_count_near(d_row, nz, A, s, ist_row[_I_HINT])
    ist_row[_I_HINT] = k
    ist_row[_I_NJEV] += 1
    jaa, jas, jsa, jss = _row_jac(k, p1[k], p2[k], A, s, c_fb)
    fs_row[_F_J] = jaa
    fs_row[_F_J + 1] = jas
    fs_row[_F_J + 2] = jsa
    fs_row[_F_J + 3] = jss


@numba.njit(cache=True, error_model="numpy")
def _collocation(d_row, nz, p1, p2, c_fb, lam_l1, fs_row, ist_row, h, Z0, scA, scS,
                 newton_tol, Z, W, F, dW):
    """scipy's solve_collocation_system for one row: Z (3, 2) written.

    Returns (converged, n_iter, rate, nonfinite); rate is NaN after one iteration.
    """
    yA = fs_row[_F_A]
    yS = fs_row[_F_S]
    jaa = fs_row[_F_J]
    jas = fs_row[_F_J + 1]
    jsa = fs_row[_F_J + 2]
    jss = fs_row[_F_J + 3]
    m_real = _MU_REAL / h
    m_cplx = _MU_COMPLEX / h
    for r in range(3):
        for j in range(2):
            W[r, j] = _RTI[r, 0] * Z0[0, j] + _RTI[r, 1] * Z0[1, j] + _RTI[r, 2] * Z0[2, j]
            Z[r, j] = Z0[r, j]
    dw_norm_old = -1.0
    rate = np.nan
    converged = False
    nonfinite = False
    k = 0
    for k in range(_NEWTON_MAXITER):
        for r in range(3):
            fa, fsv = _eval_f(d_row, nz, p1, p2, c_fb, lam_l1, yA + Z[r, 0], yS + Z[r, 1],
                              ist_row)
            F[r, 0] = fa
            F[r, 1] = fsv
        if not (np.isfinite(F[0, 0]) and np.isfinite(F[0, 1]) and np.isfinite(F[1, 0])
                and np.isfinite(F[1, 1]) and np.isfinite(F[2, 0]) and np.isfinite(F[2, 1])):
            nonfinite = True
            break
        fr0 = F[0, 0] * _RTI[0, 0] + F[1, 0] * _RTI[0, 1] + F[2, 0] * _RTI[0, 2] - m_real * W[0, 0]
        fr1 = F[0, 1] * _RTI[0, 0] + F[1, 1] * _RTI[0, 1] + F[2, 1] * _RTI[0, 2] - m_real * W[0, 1]
        fc0 = (F[0, 0] * _RTI_COMPLEX[0] + F[1, 0] * _RTI_COMPLEX[1] + F[2, 0] * _RTI_COMPLEX[2]
               - m_cplx * (W[1, 0] + 1j * W[2, 0]))
        fc1 = (F[0, 1] * _RTI_COMPLEX[0] + F[1, 1] * _RTI_COMPLEX[1] + F[2, 1] * _RTI_COMPLEX[2]
               - m_cplx * (W[1, 1] + 1j * W[2, 1]))
        xr0, xr1 = _solve2(m_real - jaa, -jas, -jsa, m_real - jss, fr0, fr1)
        xc0, xc1 = _solve2(m_cplx - jaa, -jas + 0j, -jsa + 0j, m_cplx - jss, fc0, fc1)
        dW[0, 0] = xr0
        dW[0, 1] = xr1
        dW[1, 0] = xc0.real
        dW[1, 1] = xc1.real
        dW[2, 0] = xc0.imag
        dW[2, 1] = xc1.imag
        acc = 0.0
        for r in range(3):
            acc += (dW[r, 0] / scA) ** 2 + (dW[r, 1] / scS) ** 2
        dw_norm = np.sqrt(acc / 6.0)
        if dw_norm_old >= 0.0:
            rate = dw_norm / dw_norm_old
        if rate == rate and (rate >= 1.0 or rate ** (_NEWTON_MAXITER - k) / (1.0 - rate)
                             * dw_norm > newton_tol):
            break
        for r in range(3):
            for j in range(2):
                W[r, j] += dW[r, j]
        for r in range(3):
            for j in range(2):
                Z[r, j] = _RT[r, 0] * W[0, j] + _RT[r, 1] * W[1, j] + _RT[r, 2] * W[2, j]
        if dw_norm == 0.0 or (rate == rate and rate / (1.0 - rate) * dw_norm < newton_tol):
            converged = True
            break
        dw_norm_old = dw_norm
    return converged, k + 1, rate, nonfinite


@numba.njit(cache=True, error_model="numpy")
def _predict_factor(h_abs, h_abs_old, error_norm, error_norm_old):
    """scipy's predict_factor; NaN stands for None."""
    if error_norm_old != error_norm_old or h_abs_old != h_abs_old or error_norm == 0.0:
        multiplier = 1.0
    else:
        multiplier = h_abs / h_abs_old * (error_norm_old / error_norm) ** 0.25
    if error_norm == 0.0:
        return np.inf
    return min(1.0, multiplier) * error_norm ** -0.25


@numba.njit(cache=True, error_model="numpy")
def _dense_guess(fs_row, t, h, Z0):
    """Z0[r] = (dense output of the last step at t + h C_r) - y; zeros without one."""
    hp = fs_row[_F_HPREV]
    for r in range(3):
        if hp > 0.0:
            x = (t + h * _RC[r] - fs_row[_F_TOLD]) / hp
            x2 = x * x
            x3 = x2 * x
            for j in range(2):
                q = fs_row[_F_Q + 3 * j: _F_Q + 3 * j + 3]
                y_old = fs_row[_F_YOLD_A + j]
                Z0[r, j] = y_old + q[0] * x + q[1] * x2 + q[2] * x3 - fs_row[_F_A + j]
        else:
            Z0[r, 0] = 0.0
            Z0[r, 1] = 0.0


@numba.njit(cache=True, error_model="numpy")
def _radau_init(d, nz, P1, P2, c_fb, lam_l1, rtol, atol, a1, t_bound, ev_d, fs, ist):
    """Initial state of every row at t = 0: derivative, Jacobian, first step.

    fs : (n, _NF), ist : (n, _NI), written. The first step is scipy's
    select_initial_step (error order 3) on the interval (0, t_bound).
    """
    for i in range(nz.size):
        fr = fs[i]
        ir = ist[i]
        for j in range(_NF):
            fr[j] = 0.0
        for j in range(_NI):
            ir[j] = 0
        fr[_F_A] = 1.0
        fr[_F_S] = a1[i]
        fr[_F_HOLD] = np.nan
        fr[_F_EOLD] = np.nan
        fr[_F_TEND] = t_bound
        fr[_F_EVD] = ev_d[i]
        ir[_I_HINT] = nz[i]
        d_row, p1, p2 = d[i], P1[i], P2[i]
        y0A, y0S = 1.0, a1[i]
        f0A, f0S = _eval_f(d_row, nz[i], p1, p2, c_fb, lam_l1, y0A, y0S, ir)
        fr[_F_FA] = f0A
        fr[_F_FS] = f0S
        _eval_jac(d_row, nz[i], p1, p2, c_fb, y0A, y0S, ir, fr)
        ir[_I_CURJAC] = 1
        if t_bound == 0.0:
            fr[_F_H] = 0.0
            continue
        scA = atol + abs(y0A) * rtol
        scS = atol + abs(y0S) * rtol
        d0 = np.sqrt(((y0A / scA) ** 2 + (y0S / scS) ** 2) / 2.0)
        d1 = np.sqrt(((f0A / scA) ** 2 + (f0S / scS) ** 2) / 2.0)
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = 1e-6
        else:
            h0 = 0.01 * d0 / d1
        h0 = min(h0, t_bound)
        f1A, f1S = _eval_f(d_row, nz[i], p1, p2, c_fb, lam_l1, y0A + h0 * f0A,
                           y0S + h0 * f0S, ir)
        d2 = np.sqrt((((f1A - f0A) / scA) ** 2 + ((f1S - f0S) / scS) ** 2) / 2.0) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / 4.0)
        fr[_F_H] = min(100.0 * h0, h1, t_bound)


@numba.njit(cache=True)
def _save_dense(fr, Z, t, yA, yS, h):
    """Store the collocation polynomial of the step from t (length h) for dense output."""
    for j in range(2):
        for c in range(3):
            fr[_F_Q + 3 * j + c] = (Z[0, j] * _RP[0, c] + Z[1, j] * _RP[1, c]
                                    + Z[2, j] * _RP[2, c])
    fr[_F_TOLD] = t
    fr[_F_YOLD_A] = yA
    fr[_F_YOLD_S] = yS
    fr[_F_HPREV] = h


@numba.njit(cache=True, error_model="numpy")
def _radau_advance(d, nz, P1, P2, c_fb, lam_l1, rtol, atol, save_t, max_steps, fs, ist,
                   out_A, out_s):
    """Advance every running row by at most ``max_steps`` accepted steps.

    A row runs until its phase end fs[i, _F_TEND] (status _DONE), its event (the
    weight ``s - A * fs[i, _F_EVD]`` reaching 0; status _EVENT, the row then sits
    exactly at the event time) or a failure (negative status). Each row writes its
    state at every save time it reaches into out_A, out_s (T, n).

    Returns
    -------
    int
        Accepted steps taken in this call.
    """
    newton_tol = max(10.0 * 2.220446049250313e-16 / rtol, min(0.03, rtol ** 0.5))
    n_save = save_t.size
    Z0 = np.empty((3, 2))
    Z = np.empty((3, 2))
    Zt = np.empty((3, 2))
    W = np.empty((3, 2))
    F = np.empty((3, 2))
    dW = np.empty((3, 2))
    taken = 0
    for i in range(nz.size):
        fr = fs[i]
        ir = ist[i]
        if ir[_I_STATUS] != _RUNNING:
            continue
        d_row, nzi, p1, p2 = d[i], nz[i], P1[i], P2[i]
        t_end = fr[_F_TEND]
        ev = fr[_F_EVD]
        for _ in range(max_steps):
            t = fr[_F_T]
            if t >= t_end:
                ir[_I_STATUS] = _DONE
                break
            yA = fr[_F_A]
            yS = fr[_F_S]
            fA = fr[_F_FA]
            fS = fr[_F_FS]
            min_step = 10.0 * abs(np.nextafter(t, np.inf) - t)
            h_abs = fr[_F_H]
            h_abs_old = fr[_F_HOLD]
            error_norm_old = fr[_F_EOLD]
            if h_abs < min_step:
                h_abs = min_step
                h_abs_old = np.nan
                error_norm_old = np.nan
            j_save = ir[_I_SAVE]
            while j_save < n_save and save_t[j_save] <= t:
                out_A[j_save, i] = yA
                out_s[j_save, i] = yS
                j_save += 1
            ir[_I_SAVE] = j_save
            target = t_end
            if j_save < n_save and save_t[j_save] < target:
                target = save_t[j_save]
            current_jac = ir[_I_CURJAC] == 1
            rejected = False
            failed = 0
            nonfinite = False
            h = 0.0
            h_pre = 0.0
            clipped = False
            t_new = t
            n_iter = 0
            rate = np.nan
            error_norm = 0.0
            safety = 0.0
            while True:
                if not h_abs >= min_step:  # also catches NaN
                    failed = _FAIL_NONFINITE if nonfinite else _FAIL_STEP
                    break
                h_pre = h_abs
                t_new = t + h_abs
                clipped = t_new > target
                if clipped:
                    t_new = target
                h = t_new - t
                h_abs = h
                _dense_guess(fr, t, h, Z0)
                scA = atol + abs(yA) * rtol
                scS = atol + abs(yS) * rtol
                converged = False
                while not converged:
                    converged, n_iter, rate, nonfinite = _collocation(
                        d_row, nzi, p1, p2, c_fb, lam_l1, fr, ir, h, Z0, scA, scS,
                        newton_tol, Z, W, F, dW)
                    if not converged:
                        if current_jac:
                            break
                        _eval_jac(d_row, nzi, p1, p2, c_fb, yA, yS, ir, fr)
                        current_jac = True
                if not converged:
                    h_abs *= 0.5
                    continue
                nA = yA + Z[2, 0]
                nS = yS + Z[2, 1]
                zeA = (Z[0, 0] * _RE[0] + Z[1, 0] * _RE[1] + Z[2, 0] * _RE[2]) / h
                zeS = (Z[0, 1] * _RE[0] + Z[1, 1] * _RE[1] + Z[2, 1] * _RE[2]) / h
                m_real = _MU_REAL / h
                jaa, jas, jsa, jss = fr[_F_J], fr[_F_J + 1], fr[_F_J + 2], fr[_F_J + 3]
                eA, eS = _solve2(m_real - jaa, -jas, -jsa, m_real - jss, fA + zeA, fS + zeS)
                scA = atol + max(abs(yA), abs(nA)) * rtol
                scS = atol + max(abs(yS), abs(nS)) * rtol
                error_norm = np.sqrt(((eA / scA) ** 2 + (eS / scS) ** 2) / 2.0)
                safety = 0.9 * (2 * _NEWTON_MAXITER + 1) / (2 * _NEWTON_MAXITER + n_iter)
                if rejected and error_norm > 1.0:
                    gA, gS = _eval_f(d_row, nzi, p1, p2, c_fb, lam_l1, yA + eA, yS + eS, ir)
                    eA, eS = _solve2(m_real - jaa, -jas, -jsa, m_real - jss,
                                     gA + zeA, gS + zeS)
                    error_norm = np.sqrt(((eA / scA) ** 2 + (eS / scS) ** 2) / 2.0)
                if not error_norm <= 1.0:  # NaN too: reject
                    nonfinite = error_norm != error_norm
                    factor = _predict_factor(h_abs, h_abs_old, error_norm, error_norm_old)
                    h_abs *= max(_MIN_FACTOR, safety * factor)
                    rejected = True
                else:
                    break
            if failed != 0:
                ir[_I_STATUS] = failed
                break
            recompute_jac = n_iter > 2 and rate > 1e-3
            factor = _predict_factor(h_abs, h_abs_old, error_norm, error_norm_old)
            factor = min(_MAX_FACTOR, safety * factor)
            if not recompute_jac and factor < 1.2:
                factor = 1.0
            h_next = h_abs * factor
            if clipped and h_pre > h_next:
                h_next = h_pre
            event = ev == ev and nS - nA * ev <= 0.0
            if event:
                # redo the step with the length that ends it on the event
                _save_dense(fr, Z, t, yA, yS, h)
                lo = 0.0
                g_lo = yS - yA * ev
                hi = h
                g_hi = nS - nA * ev
                side = 0
                scA = atol + abs(yA) * rtol
                scS = atol + abs(yS) * rtol
                for _it in range(_EVENT_MAXITER):
                    if g_hi == 0.0 or hi - lo <= _EVENT_RTOL * abs(t + hi):
                        break
                    ht = hi - g_hi * (hi - lo) / (g_hi - g_lo)
                    if not (lo < ht < hi) or t + ht == t + lo or t + ht == t + hi:
                        ht = 0.5 * (lo + hi)
                    if not (t + lo < t + ht < t + hi):
                        break
                    _dense_guess(fr, t, ht, Z0)
                    ok, _n, _r, _nf = _collocation(d_row, nzi, p1, p2, c_fb, lam_l1, fr,
                                                   ir, ht, Z0, scA, scS, newton_tol, Zt, W,
                                                   F, dW)
                    if not ok and not current_jac:
                        _eval_jac(d_row, nzi, p1, p2, c_fb, yA, yS, ir, fr)
                        current_jac = True
                        ok, _n, _r, _nf = _collocation(d_row, nzi, p1, p2, c_fb, lam_l1,
                                                       fr, ir, ht, Z0, scA, scS,
                                                       newton_tol, Zt, W, F, dW)
                    if not ok:
                        failed = _FAIL_EVENT
                        break
                    g_t = (yS + Zt[2, 1]) - (yA + Zt[2, 0]) * ev
                    if g_t > 0.0:
                        lo = ht
                        g_lo = g_t
                        if side == 1:
                            g_hi *= 0.5
                        side = 1
                    else:
                        hi = ht
                        g_hi = g_t
                        for r in range(3):
                            Z[r, 0] = Zt[r, 0]
                            Z[r, 1] = Zt[r, 1]
                        if side == -1:
                            g_lo *= 0.5
                        side = -1
                if failed != 0:
                    ir[_I_STATUS] = failed
                    break
                h = hi
                t_new = t + hi
                nA = yA + Z[2, 0]
                nS = yS + Z[2, 1]
            fnA, fnS = _eval_f(d_row, nzi, p1, p2, c_fb, lam_l1, nA, nS, ir)
            if recompute_jac:
                _eval_jac(d_row, nzi, p1, p2, c_fb, nA, nS, ir, fr)
                current_jac = True
            else:
                current_jac = False
            # dense output of the accepted step
            _save_dense(fr, Z, t, yA, yS, h)
            fr[_F_HOLD] = fr[_F_H]
            fr[_F_EOLD] = error_norm
            fr[_F_H] = h_next
            fr[_F_T] = t_new
            fr[_F_A] = nA
            fr[_F_S] = nS
            fr[_F_FA] = fnA
            fr[_F_FS] = fnS
            ir[_I_CURJAC] = 1 if current_jac else 0
            ir[_I_STEPS] += 1
            taken += 1
            while j_save < n_save and save_t[j_save] <= t_new:
                out_A[j_save, i] = nA
                out_s[j_save, i] = nS
                j_save += 1
            ir[_I_SAVE] = j_save
            if event:
                ir[_I_STATUS] = _EVENT
                break
            if t_new >= t_end:
                ir[_I_STATUS] = _DONE
                break
    return taken


# ----------------------------------------------------------------- NumPy references
# _jac_kernel is checked against central differences of _rhs_reference, and
# _moments_kernel against flowsim.trajectory.row_stats of the materialised weights.
def _materialise_reference(W0, a1, A, s):
    """NumPy reference of :func:`_materialise_kernel` (same operations, same rounding)."""
    W0 = np.asarray(W0, dtype=np.float64)
    v = s[:, None] - A[:, None] * (a1[:, None] - np.abs(W0))
    return np.where((W0 != 0) & (v > 0), np.sign(W0) * v, 0.0)


def _prefix_power_sums_reference(x):
    """NumPy reference of :func:`_prefix_power_sums` (extended-precision cumsum).

    Returns
    -------
    list of 4 ndarrays, each shape (n, m + 1)
    """
    x = np.asarray(x, dtype=np.longdouble)
    out = []
    for p in range(1, 5):
        cs = np.cumsum(x**p, axis=1)
        out.append(np.concatenate([np.zeros((x.shape[0], 1)), cs.astype(np.float64)], axis=1))
    return out


def _alive_reference(d_row, nz, A, s):
    """NumPy reference of :func:`_alive_count` (searchsorted, then exact fix-up)."""
    if nz == 0:
        return 0
    k = int(np.searchsorted(d_row[:nz], s / A, side="left"))
    while k > 0 and not A * d_row[k - 1] < s:
        k -= 1
    while k < nz and A * d_row[k] < s:
        k += 1
    return k


def _rhs_reference(d, nz, P1, P2, y, c_fb, lam_l1):
    """NumPy reference of :func:`_rhs_kernel`; returns the derivative, shape (2 n,)."""
    A = y[0::2]
    s = y[1::2]
    k = np.array([_alive_reference(d[i], nz[i], A[i], s[i]) for i in range(nz.size)])
    rows = np.arange(nz.size)
    N = k * s * s - 2.0 * s * A * P1[rows, k] + A * A * P2[rows, k]
    g = np.where(k > 0, c_fb * (1.0 - N), 0.0)
    out = np.empty_like(y)
    out[0::2] = g * A
    out[1::2] = g * s - lam_l1
    return out


# ------------------------------------------------------------------- sorted rows
@dataclasses.dataclass(frozen=True)
class SortedRows:
    """Each row's nonzero |W0| sorted, as gaps below the row maximum, with prefix sums.

    Attributes
    ----------
    a1 : ndarray, shape (n,)
        Largest |W0_ik| of each row (0 for an all-zero row).
    nz : ndarray, shape (n,), int64
        Nonzero count of each row of W0.
    d : ndarray, shape (n, m)
        ``a1_i - (|W0_i| sorted descending)``, ascending; entries past ``nz`` belong to
        zeros of W0 and are never alive.
    P1, P2, P3, P4 : ndarray, shape (n, m + 1)
        Compensated prefix sums of d, d², d³, d⁴ (``Pp[:, 0] = 0``).
    totals : ndarray, shape (n, 4)
        Σ a^p, p = 1..4, over each row (from the prefix sums).
    """

    a1: np.ndarray
    nz: np.ndarray
    d: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    P3: np.ndarray
    P4: np.ndarray
    totals: np.ndarray


def sort_rows(W0) -> SortedRows:
    """Sort each row's |W0| and build the prefix sums (memory: 5 arrays of size n·m).

    Parameters
    ----------
    W0 : ndarray, shape (n, m), float64
    """
    W0 = np.asarray(W0, dtype=np.float64)
    n, m = W0.shape
    d = np.abs(W0)
    np.negative(d, out=d)
    d.sort(axis=1)  # in place: ascending -|w|, i.e. |w| descending; zeros last
    nz = np.array([np.searchsorted(d[i], 0.0, side="left") for i in range(n)], dtype=np.int64)
    a1 = -d[:, 0].copy() if m else np.zeros(n)
    a1 += 0.0  # -0.0 -> 0.0 for all-zero rows
    d += a1[:, None]  # d_l = a1 - a_l, ascending
    P = [np.empty((n, m + 1)) for _ in range(4)]
    _prefix_power_sums(d, *P)
    rows = np.arange(n)
    S = np.stack([P[p][rows, nz] for p in range(4)], axis=1)  # Σ d^p over the nonzeros
    M = nz.astype(np.float64)
    # Σ (a1 - d)^p expanded; cancellation only of order (a1 / mean a)^p
    x = a1
    totals = np.stack([
        M * x - S[:, 0],
        M * x**2 - 2 * x * S[:, 0] + S[:, 1],
        M * x**3 - 3 * x**2 * S[:, 0] + 3 * x * S[:, 1] - S[:, 2],
        M * x**4 - 4 * x**3 * S[:, 0] + 6 * x**2 * S[:, 1] - 4 * x * S[:, 2] + S[:, 3],
    ], axis=1)
    return SortedRows(a1=a1, nz=nz, d=d, P1=P[0], P2=P[1], P3=P[2], P4=P[3], totals=totals)


# --------------------------------------------------------------- weights and stats
def reduced_weights(W0, A, B) -> np.ndarray:
    """Materialise the affine map ``sign(W0) · max(A |W0| - B, 0)``.

    Parameters
    ----------
    W0 : ndarray, shape (n, m)
    A, B : array_like, shape (n,)

    Returns
    -------
    ndarray, shape (n, m)
    """
    W0 = np.asarray(W0, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)[:, None]
    B = np.asarray(B, dtype=np.float64)[:, None]
    return np.sign(W0) * np.maximum(A * np.abs(W0) - B, 0.0)


def _shifted(model: Model) -> bool:
    """True when the L1 force acts (weights can die); else B ≡ 0."""
    return model.l1 and model.lam > 0.0


def materialise(rows: SortedRows, W0, A, s, model: Model, out=None) -> np.ndarray:
    """Weights at state (A, s), consistent with the alive counts of :func:`reduced_stats`.

    Parameters
    ----------
    rows : SortedRows
    W0 : ndarray, shape (n, m)
    A, s : ndarray, shape (n,)
        Stretch factor and current largest weight of each row.
    model : Model
    out : ndarray, shape (n, m), optional

    Returns
    -------
    ndarray, shape (n, m)
    """
    if out is None:
        out = np.empty_like(W0)
    if _shifted(model):
        _materialise_kernel(W0, rows.a1, np.ascontiguousarray(A, dtype=np.float64),
                            np.ascontiguousarray(s, dtype=np.float64), out)
    else:
        np.multiply(W0, np.asarray(A)[:, None], out=out)
    return out


def reduced_stats(rows: SortedRows, A, s, model: Model) -> dict:
    """Per-row statistics at states (A, s), as :func:`flowsim.trajectory.row_stats`.

    Parameters
    ----------
    rows : SortedRows
    A, s : ndarray, shape (T, n)
    model : Model (interference must be off)

    Returns
    -------
    dict of ndarray, each shape (T, n): l1, nnz (int64), l2sq, l4, relvar, loss
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    s = np.ascontiguousarray(s, dtype=np.float64)
    T, n = A.shape
    if _shifted(model):
        k = np.empty((T, n), dtype=np.int64)
        l1, l2sq, l4 = (np.empty((T, n)) for _ in range(3))
        _moments_kernel(rows.d, rows.nz, rows.P1, rows.P2, rows.P3, rows.P4, A, s,
                        k, l1, l2sq, l4)
    else:
        k = np.broadcast_to(rows.nz, (T, n)).astype(np.int64)
        tot = rows.totals
        l1, l2sq, l4 = A * tot[:, 0], A**2 * tot[:, 1], A**4 * tot[:, 3]
    # each is a sum of nonnegative terms; the expanded forms can round below 0
    l1, l2sq, l4 = (np.maximum(x, 0.0) for x in (l1, l2sq, l4))
    out = finish_stats(l1, k, l2sq, l4, model)
    out["relvar"][k == 1] = 0.0  # exactly, where the expanded sums leave rounding
    return out


# ------------------------------------------------------------------ integration
@dataclasses.dataclass(frozen=True)
class ReducedPath:
    """The affine coefficients of every row at the reached save times.

    Attributes
    ----------
    t : ndarray, shape (T,)
    A : ndarray, shape (T, n)
        Stretch factor A_i(t).
    top : ndarray, shape (T, n)
        s_i(t) = A_i a_1 - B_i, the current value of each row's largest weight
        (negative once every weight of the row is zero).
    a1 : ndarray, shape (n,)
        Largest initial |W0_ik| of each row.
    status : str
        ``"completed"`` or ``"sparse"`` (stopped at the time every row had at most
        ``max_nnz`` nonzeros; that time is ``t[-1]``).
    steps, nfev, njev : int
        Accepted solver steps, right-hand-side and Jacobian evaluations (for
        ``"radau-numba"`` summed over the rows, each of which takes its own steps).
    compile_seconds, wall_seconds : float
    """

    t: np.ndarray
    A: np.ndarray
    top: np.ndarray
    a1: np.ndarray
    status: str
    steps: int
    nfev: int
    njev: int
    compile_seconds: float
    wall_seconds: float

    @property
    def B(self) -> np.ndarray:
        """Shift B_i(t) = A_i a_1 - s_i, shape (T, n) (ill-conditioned late in a run)."""
        return self.A * self.a1 - self.top


def _counting(cls, counter):
    """Subclass of a scipy OdeSolver that counts accepted steps in ``counter[0]``."""

    class Counting(cls):
        def _step_impl(self):
            ok, message = super()._step_impl()
            if ok:
                counter[0] += 1
            return ok, message

    Counting.__name__ = "Counting" + cls.__name__
    return Counting


def _warm_up() -> float:
    """Compile (or load from cache) every kernel on a tiny input; returns seconds."""
    t0 = time.perf_counter()
    x = np.array([[0.0, 0.5]])
    P = [np.empty((1, 3)) for _ in range(4)]
    _prefix_power_sums(x, *P)
    nz = np.array([2], dtype=np.int64)
    y = np.array([1.0, 1.0])
    _rhs_kernel(x, nz, P[0], P[1], y, 1.0, 0.1, np.empty(2))
    _jac_kernel(x, nz, P[0], P[1], y, 1.0, np.empty(4))
    A = np.ones((1, 1))
    k = np.empty((1, 1), dtype=np.int64)
    _moments_kernel(x, nz, *P, A, A, k, np.empty((1, 1)), np.empty((1, 1)), np.empty((1, 1)))
    _materialise_kernel(x, np.ones(1), np.ones(1), np.ones(1), np.empty((1, 2)))
    fs = np.empty((1, _NF))
    ist = np.empty((1, _NI), dtype=np.int64)
    save = np.array([0.0, 1.0])
    _radau_init(x, nz, P[0], P[1], 1.0, 0.1, 1e-6, 1e-9, np.ones(1), 1.0, np.full(1, 0.5),
                fs, ist)
    _radau_advance(x, nz, P[0], P[1], 1.0, 0.1, 1e-6, 1e-9, save, 1, fs, ist,
                   np.empty((2, 1)), np.empty((2, 1)))
    return time.perf_counter() - t0


#: Target wall time of one call of the numba integrator (between progress reports).
_CALL_SECONDS = 0.02


def _run_rows(rows, save_at, fs, ist, out_A, out_s, c_fb, lam_l1, rtol, atol, progress,
              clock):
    """Call :func:`_radau_advance` until no row runs; report progress between calls.

    The step budget per call adapts so that a call takes about ``_CALL_SECONDS``.
    ``clock`` is ``[wall time, t]`` of the last progress report (t only increases).
    """
    budget = 64
    while True:
        status = ist[:, _I_STATUS]
        if status.min() < 0 or not np.any(status == _RUNNING):
            return
        t0 = time.perf_counter()
        _radau_advance(rows.d, rows.nz, rows.P1, rows.P2, c_fb, lam_l1, rtol, atol,
                       save_at, budget, fs, ist, out_A, out_s)
        elapsed = time.perf_counter() - t0
        grow = _CALL_SECONDS / elapsed if elapsed > 0 else 8.0
        budget = int(min(max(budget * min(grow, 8.0), 1), 1 << 24))
        if progress is not None:
            now = time.perf_counter()
            running = ist[:, _I_STATUS] == _RUNNING
            if now - clock[0] >= 0.2 and running.any():
                t_now = float(fs[running, _F_T].min())
                if t_now > clock[1]:
                    clock[0] = now
                    clock[1] = t_now
                    progress(t_now)


def _numba_path(rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, progress):
    """Integrate every row with :func:`_radau_advance`.

    With ``cand`` (rows that can reach the max_nnz event) given, the candidate rows run
    first, each up to its own event; t* is the latest of those, and then every row runs
    (on from where it stopped) to t*.

    Returns
    -------
    ts, A, top, status, steps, nfev, njev
    """
    n = rows.nz.size
    t_max = float(save_at[-1])
    fs = np.empty((n, _NF))
    ist = np.empty((n, _NI), dtype=np.int64)
    ev = np.full(n, np.nan)
    if cand is not None:
        ev[cand] = d_next
    _radau_init(rows.d, rows.nz, rows.P1, rows.P2, c_fb, lam_l1, rtol, atol, rows.a1,
                t_max, ev, fs, ist)
    out_A = np.full((save_at.size, n), np.nan)
    out_s = np.full((save_at.size, n), np.nan)
    clock = [time.perf_counter(), 0.0]
    args = (c_fb, lam_l1, rtol, atol, progress, clock)
    status = "completed"
    t_end = t_max
    if cand is not None:
        ist[:, _I_STATUS] = _WAITING
        ist[cand, _I_STATUS] = _RUNNING
        _run_rows(rows, save_at, fs, ist, out_A, out_s, *args)
        _check_rows(fs, ist)
        if np.all(ist[cand, _I_STATUS] == _EVENT):
            t_end = float(fs[cand, _F_T].max())
            status = "sparse"
        fs[:, _F_TEND] = t_end
        fs[:, _F_EVD] = np.nan
        ist[:, _I_STATUS] = np.where(fs[:, _F_T] >= t_end, _DONE, _RUNNING)
    _run_rows(rows, save_at, fs, ist, out_A, out_s, *args)
    _check_rows(fs, ist)
    steps, nfev, njev = (int(ist[:, j].sum()) for j in (_I_STEPS, _I_NFEV, _I_NJEV))
    if status == "completed":
        return save_at.copy(), out_A, out_s, status, steps, nfev, njev
    keep = save_at < t_end
    A_star = fs[:, _F_A]
    s_star = fs[:, _F_S].copy()
    # the slowest row sits on its event (to ~1e-14 in t) with the weight just dead
    # (s <= A d); make that weight, and every candidate's, exactly dead at t*
    s_star[cand] = np.minimum(s_star[cand], A_star[cand] * d_next)
    ts = np.append(save_at[keep], t_end)
    A = np.concatenate([out_A[keep], A_star[None]])
    top = np.concatenate([out_s[keep], s_star[None]])
    return ts, A, top, status, steps, nfev, njev


def _check_rows(fs, ist):
    """Raise DivergenceError if a row of the numba integrator failed."""
    bad = np.flatnonzero(ist[:, _I_STATUS] < 0)
    if bad.size:
        i = int(bad[0])
        t = float(fs[i, _F_T])
        raise DivergenceError(
            f"reduced solver (radau-numba) failed on row {i} at t={t:.6g}: "
            f"{_FAILURES[int(ist[i, _I_STATUS])]}",
            t=t, step=int(ist[:, _I_STEPS].sum()))


def _scipy_path(rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, ode_method,
                progress):
    """Integrate all rows jointly with scipy.integrate.solve_ivp (the reference).

    Returns
    -------
    ts, A, top, status, steps, nfev, njev
    """
    n = rows.nz.size
    # scipy's solver object sits in a reference cycle that holds these closures until
    # the garbage collector runs; the big arrays are reached through this list, which is
    # emptied after the solve so that they are freed with the caller's references
    arrays = [rows.d, rows.nz, rows.P1, rows.P2]
    y0 = np.empty(2 * n)
    y0[0::2] = 1.0
    y0[1::2] = rows.a1

    last_report = [time.perf_counter()]

    def fun(t, y):
        out = np.empty_like(y)  # solvers keep references: a new array every call
        _rhs_kernel(*arrays, y, c_fb, lam_l1, out)
        if progress is not None:
            now = time.perf_counter()
            if now - last_report[0] >= 0.2:
                last_report[0] = now
                progress(t)
        return out

    options = {}
    if ode_method in _IMPLICIT:
        indptr = np.arange(0, 4 * n + 1, 2)
        indices = np.empty(4 * n, dtype=np.int64)
        indices[0::2] = np.repeat(np.arange(0, 2 * n, 2), 2)
        indices[1::2] = indices[0::2] + 1

        def jac(t, y):
            data = np.empty(4 * n)
            _jac_kernel(*arrays, y, c_fb, data)
            if ode_method == "LSODA":  # banded storage: packed[1 + i - j, j] = J[i, j]
                packed = np.zeros((3, 2 * n))
                packed[1, 0::2] = data[0::4]
                packed[2, 0::2] = data[1::4]
                packed[0, 1::2] = data[2::4]
                packed[1, 1::2] = data[3::4]
                return packed
            J = scipy.sparse.csc_matrix((data, indices, indptr), shape=(2 * n, 2 * n))
            return J.toarray() if n <= _DENSE_JAC_ROWS else J

        if ode_method == "LSODA":
            options.update(lband=1, uband=1)
        options["jac"] = jac

    events = None
    if cand is not None:
        def sparse_event(t, y):
            # the (max_nnz+1)-th largest weight of the slowest row (negative: dead)
            return float(np.max(y[2 * cand + 1] - y[2 * cand] * d_next))

        sparse_event.terminal = True
        sparse_event.direction = -1.0
        events = [sparse_event]

    counter = [0]
    try:
        sol = scipy.integrate.solve_ivp(
            fun, (0.0, float(save_at[-1])), y0,
            method=_counting(getattr(scipy.integrate, ode_method), counter),
            t_eval=save_at, events=events, rtol=rtol, atol=atol, **options)
    finally:
        arrays.clear()
    if sol.status < 0:
        raise DivergenceError(f"reduced solver ({ode_method}) failed: {sol.message}",
                              t=float(sol.t[-1]) if len(sol.t) else 0.0, step=counter[0])
    ts, ys = sol.t, sol.y
    status = "completed"
    if sol.status == 1:
        t_star = float(sol.t_events[0][0])
        y_star = np.array(sol.y_events[0][0], dtype=np.float64)
        # snap: the root is located to solver precision; make the (max_nnz+1)-th
        # weight of every candidate row exactly dead at t*
        A_c = y_star[2 * cand]
        y_star[2 * cand + 1] = np.minimum(y_star[2 * cand + 1], A_c * d_next)
        keep = ts < t_star
        ts = np.append(ts[keep], t_star)
        ys = np.concatenate([ys[:, keep], y_star[:, None]], axis=1)
        status = "sparse"
    return (np.asarray(ts, dtype=np.float64), ys[0::2].T, ys[1::2].T, status, counter[0],
            int(sol.nfev), int(sol.njev))


def reduced_path(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                 ode_method="radau-numba", progress=None, rows: SortedRows | None = None
                 ) -> ReducedPath:
    """Integrate the per-row (A, s) system and return it at the save times.

    Parameters are those of :func:`solve_reduced`; ``rows`` may pass precomputed
    :func:`sort_rows` of W0.

    Returns
    -------
    ReducedPath
    """
    if model.interference:
        raise invalid("method", "reduced",
                      "needs interference=False (the reduced solver is exact only without "
                      "interference)")
    if ode_method not in ODE_METHODS:
        raise invalid("ode_method", ode_method, f"must be one of {', '.join(ODE_METHODS)}")
    if max_nnz is not None:
        max_nnz = check_int("max_nnz", max_nnz, 0)
    compile_seconds = _warm_up()
    t_start = time.perf_counter()
    save_at = np.ascontiguousarray(save_at, dtype=np.float64)
    if rows is None:
        rows = sort_rows(W0)
    n = rows.nz.size
    c_fb = model.c if model.feature_benefit else 0.0
    lam_l1 = model.l1_strength
    cand = d_next = None
    stop_now = False
    if max_nnz is not None:
        cand = np.flatnonzero(rows.nz > max_nnz)
        stop_now = cand.size == 0
        d_next = rows.d[cand, max_nnz] if not stop_now else None

    if stop_now or save_at[-1] == 0.0:
        ts = save_at[:1]
        A = np.ones((1, n))
        top = rows.a1[None].copy()
        status, steps, nfev, njev = ("sparse" if stop_now else "completed"), 0, 0, 0
    elif ode_method == "radau-numba":
        ts, A, top, status, steps, nfev, njev = _numba_path(
            rows, save_at, c_fb, lam_l1, float(rtol), float(atol), cand, d_next, progress)
    else:
        ts, A, top, status, steps, nfev, njev = _scipy_path(
            rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, ode_method,
            progress)
    return ReducedPath(
        t=np.asarray(ts, dtype=np.float64), A=np.ascontiguousarray(A),
        top=np.ascontiguousarray(top), a1=rows.a1, status=status, steps=steps,
        nfev=nfev, njev=njev, compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - t_start)


def solve_reduced(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                  snapshots=False, ode_method="radau-numba", progress=None) -> Trajectory:
    """Exact interference-free trajectory from the per-row affine map.

    Parameters
    ----------
    model : Model
        Must have ``interference=False``.
    W0 : ndarray, shape (n, m), float64
        Validated initial weights.
    save_at : ndarray, shape (T,)
        Sorted save times, ``save_at[0] = 0``, ``save_at[-1] = t_max``.
    rtol, atol : float
        Tolerances of the ODE solver on the state (A_i, s_i); s_i is in weight units.
    max_nnz : int, optional
        Stop at the time t* at which every row has at most this many nonzeros
        (status ``"sparse"``; t* is the last saved time).
    snapshots : bool
        Also keep W at every saved time (memory T·n·m).
    ode_method : str
        One of :data:`ODE_METHODS`: ``"radau-numba"`` (default; per row, numba) or a
        ``scipy.integrate.solve_ivp`` method (all rows jointly; implicit ones get the
        analytic Jacobian).
    progress : callable(t) or None
        Called at most every 0.2 s of wall time with the time every row has reached
        (``"radau-numba"``: between kernel calls of ~20 ms; scipy: from the right-hand
        side).

    Returns
    -------
    Trajectory
        ``method="reduced"``; statistics shape (T, n); ``W`` at ``stats.t_end``.
    """
    t0 = time.perf_counter()
    W0 = np.asarray(W0, dtype=np.float64)
    if model.interference:
        raise invalid("method", "reduced",
                      "needs interference=False (the reduced solver is exact only without "
                      "interference)")
    compile_seconds = _warm_up()  # before sort_rows, which calls a kernel
    rows = sort_rows(W0)
    path = reduced_path(model, W0, save_at, rtol=rtol, atol=atol, max_nnz=max_nnz,
                        ode_method=ode_method, progress=progress, rows=rows)
    st = reduced_stats(rows, path.A, path.top, model)
    W = materialise(rows, W0, path.A[-1], path.top[-1], model)
    snaps = snap_t = None
    if snapshots:
        snap_t = path.t.copy()
        snaps = np.empty((path.t.size,) + W0.shape)
        for j in range(path.t.size):
            materialise(rows, W0, path.A[j], path.top[j], model, out=snaps[j])
    compile_seconds += path.compile_seconds
    wall = time.perf_counter() - t0 - compile_seconds
    label = ode_method if ode_method == "radau-numba" else f"scipy {ode_method}"
    stats = RunStats(
        status=path.status, t_end=float(path.t[-1]), steps=path.steps,
        force_evals=path.nfev, wall_seconds=wall, compile_seconds=compile_seconds,
        message=f"{label}: {path.steps} steps, {path.nfev} rhs, "
                f"{path.njev} jacobian evaluations")
    return Trajectory(
        model=model, method="reduced", dt=None, t=path.t, l1=st["l1"], nnz=st["nnz"],
        l2sq=st["l2sq"], l4=st["l4"], relvar=st["relvar"], loss=st["loss"], W=W,
        stats=stats, snapshot_t=snap_t, snapshots=snaps,
        options=dict(rtol=rtol, atol=atol, ode_method=ode_method, max_nnz=max_nnz))
