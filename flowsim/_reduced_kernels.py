"""numba kernels of the exact reduced solver: prefix sums, the per-row 2-D flow and its
Jacobian, statistics from the state, and the per-row driver that serves the Radau IIA
port (``_radau.py``) by reverse communication. ``reduced.py`` is the Python face;
``tests/_reduced_reference.py`` holds the NumPy references the tests compare with.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import _radau as rd

#: A reported in the terminal phase once the true A exceeds it (A⁴ is finite), its ln.
_A_SAT = 2.0 ** 255
_LOG_A_SAT = 255.0 * math.log(2.0)


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


# ------------------------------------------------------------ per-row driver (numba)
# Row status, ROW["status"]; negative: the port's failure codes (rd.FAIL_*).
_RUNNING, _DONE, _EVENT = 0, 1, 2
#: Model state of a row beside the port's rd.STATE: status, next save index, alive
#: count hint, phase (0: state (A, s); 1: terminal, (ln A, s)), event gap d (NaN: no
#: event; the event is s - A d reaching 0), end of the current run and the limit
#: ``cap`` up to which the convergence rule may extend it, start of the current quiet
#: stretch (convergence rule), alive count at the last step, time of the event.
ROW = np.dtype([
    ("status", np.int64), ("save", np.int64), ("hint", np.int64), ("phase", np.int64),
    ("ev", np.float64), ("t_end", np.float64), ("cap", np.float64),
    ("t_quiet", np.float64), ("k_last", np.int64), ("t_event", np.float64),
])


@numba.njit(cache=True, error_model="numpy")
def _stretch(phase, y0):
    """A of the row's state component y0 (saturated in the terminal phase)."""
    if phase == 0:
        return y0
    return np.exp(y0) if y0 < _LOG_A_SAT else _A_SAT


# inlined into _serve: passing the row arrays to a call would count references
@numba.njit(cache=True, error_model="numpy", inline="always")
def _model_f(d_row, nz, p1, p2, ties, c_fb, lam_l1, r, y0, y1):
    """(y0', y1') of one row; (A', s') or, in the terminal phase, (u', s')."""
    if r.phase == 0:
        k = _alive_count_near(d_row, nz, y0, y1, r.hint)
        r.hint = k
        return _row_force(k, p1[k], p2[k], y0, y1, c_fb, lam_l1)
    k = ties if y1 > 0.0 else 0  # alive: the tied largest weights (d = 0, p1 = p2 = 0)
    r.hint = k
    return _row_force(k, p1[k], p2[k], 1.0, y1, c_fb, lam_l1)


# inlined into _serve: passing the row arrays to a call would count references
@numba.njit(cache=True, error_model="numpy", inline="always")
def _model_jac(d_row, nz, p1, p2, ties, c_fb, r, y0, y1, J):
    """Jacobian of :func:`_model_f` into J (2, 2)."""
    if r.phase == 0:
        k = _alive_count_near(d_row, nz, y0, y1, r.hint)
        a = y0
    else:
        k = ties if y1 > 0.0 else 0
        a = 1.0
    r.hint = k
    jaa, jas, jsa, jss = _row_jac(k, p1[k], p2[k], a, y1, c_fb)
    J[0, 0] = jaa if r.phase == 0 else 0.0  # u' does not depend on u
    J[0, 1] = jas
    J[1, 0] = jsa
    J[1, 1] = jss


@numba.njit(cache=True, error_model="numpy")
def _serve(req, st, ws, d_row, nz, p1, p2, ties, c_fb, lam_l1, r):
    """Answer the Radau port's requests (:mod:`flowsim._radau`) until it is done.

    Returns rd.DONE or a failure code.
    """
    while req > 0:
        if req == rd.REQ_F3:
            for q in range(3):
                fa, fs = _model_f(d_row, nz, p1, p2, ties, c_fb, lam_l1, r,
                                  st.y[0] + ws.Z[q, 0], st.y[1] + ws.Z[q, 1])
                ws.F[q, 0] = fa
                ws.F[q, 1] = fs
        elif req == rd.REQ_F:
            fa, fs = _model_f(d_row, nz, p1, p2, ties, c_fb, lam_l1, r, ws.p[0], ws.p[1])
            ws.fp[0] = fa
            ws.fp[1] = fs
        else:
            _model_jac(d_row, nz, p1, p2, ties, c_fb, r, st.y[0], st.y[1], ws.jac)
        req = rd.resume(st, ws)
    return req


@numba.njit(cache=True, error_model="numpy")
def _init_rows(d, nz, P1, P2, ties, a1, c_fb, lam_l1, ev, t_max, st, rows, work):
    """Every row at t = 0: (A, s) = (1, a1), or (u, s) = (0, a1) if only ties are alive."""
    ws = work[0]
    for i in range(nz.size):
        r = rows[i]
        r.status = _RUNNING
        r.save = 0
        r.hint = nz[i]
        terminal = lam_l1 > 0.0 and c_fb > 0.0 and nz[i] > 0 and nz[i] == ties[i]
        r.phase = 1 if terminal else 0
        r.ev = ev[i]
        r.t_end = t_max
        r.cap = t_max
        r.t_quiet = 0.0
        r.k_last = nz[i]
        r.t_event = np.nan
        req = rd.start(st[i], ws, 0.0, 0.0 if terminal else 1.0, a1[i], t_max)
        _serve(req, st[i], ws, d[i], nz[i], P1[i], P2[i], ties[i], c_fb, lam_l1, r)


@numba.njit(cache=True, error_model="numpy")
def _write_saves(st, r, i, save_t, out_A, out_s, out_u):
    """Record the row's state at every save time it has reached (A, s and ln A)."""
    j = r.save
    while j < save_t.size and save_t[j] <= st.t:
        out_A[j, i] = _stretch(r.phase, st.y[0])
        out_s[j, i] = st.y[1]
        out_u[j, i] = st.y[0] if r.phase == 1 else np.log(st.y[0])
        j += 1
    r.save = j


@numba.njit(cache=True, error_model="numpy")
def _track(st, r, d_row, y0, y1, conv_tol, conv_window):
    """Convergence rule on the step just taken from state (y0, y1).

    It holds when no weight died and max|ΔW|/Δt <= conv_tol; the alive weights are
    s - A d_l, so max|ΔW| = max(|Δs|, |Δs - ΔA d_{k-1}|). Else the quiet stretch
    restarts and the row's end moves to a window later (at most to ``cap``).
    """
    k = r.hint  # the last evaluation was at the step's end point
    h = st.t - st.t_old
    ds = st.y[1] - y1
    rate = 0.0
    if k > 0:
        rate = abs(ds)
        if r.phase == 0:
            rate = max(rate, abs(ds - (st.y[0] - y0) * d_row[k - 1]))
        rate /= h
    if k != r.k_last or rate > conv_tol:
        r.t_quiet = st.t
        r.t_end = min(max(r.t_end, st.t + conv_window), r.cap)
    r.k_last = k


@numba.njit(cache=True, error_model="numpy")
def _advance(d, nz, P1, P2, ties, c_fb, lam_l1, conv_tol, conv_window, save_t, max_steps,
             st, rows, work, out_A, out_s, out_u):
    """Advance every running row by at most ``max_steps`` accepted steps.

    A row runs to rows[i].t_end (status _DONE), to its event (status _EVENT; it then
    sits exactly on it) or a failure (negative status); it writes its state at every
    save time it reaches into out_A, out_s, out_u (T, n). conv_tol > 0 tracks the
    convergence rule (:func:`_track`). Returns the accepted steps taken.
    """
    ws = work[0]
    taken = 0
    for i in range(nz.size):
        r = rows[i]
        if r.status != _RUNNING:
            continue
        s = st[i]
        d_row, nzi, p1, p2, z = d[i], nz[i], P1[i], P2[i], ties[i]
        for _ in range(max_steps):
            if r.save < save_t.size and save_t[r.save] <= s.t:
                _write_saves(s, r, i, save_t, out_A, out_s, out_u)
            if s.t >= r.t_end:
                r.status = _DONE
                break
            target = r.t_end
            if r.save < save_t.size and save_t[r.save] < target:
                target = save_t[r.save]
            y0 = s.y[0]
            y1 = s.y[1]
            # event s - A d = 0; a row with an event reaches the terminal phase only on
            # it or with d = 0, where the event is s = 0
            req = rd.step(s, ws, target, -r.ev if r.phase == 0 else 0.0 * r.ev, 1.0)
            req = _serve(req, s, ws, d_row, nzi, p1, p2, z, c_fb, lam_l1, r)
            if req < 0:
                r.status = req
                break
            taken += 1
            if r.save < save_t.size and save_t[r.save] <= s.t:
                _write_saves(s, r, i, save_t, out_A, out_s, out_u)
            if conv_tol > 0.0:
                _track(s, r, d_row, y0, y1, conv_tol, conv_window)
            if r.phase == 0 and lam_l1 > 0.0 and c_fb > 0.0 and r.hint <= z:
                r.phase = 1  # only tied largest weights are left: to (ln A, s)
                req = rd.restart(s, ws, np.log(s.y[0]), s.y[1])
                _serve(req, s, ws, d_row, nzi, p1, p2, z, c_fb, lam_l1, r)
            if ws.event_hit:
                r.status = _EVENT
                r.t_event = s.t
                break
            if s.t >= r.t_end:
                r.status = _DONE
                break
    return taken


rd.tie_cache(_serve, _init_rows, _advance)
