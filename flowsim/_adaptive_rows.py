"""Adaptive steps (an embedded pair of ``forces.EMBEDDED``) on rows without interference.

Without interference a trial step maps every alive weight of row i by one affine map of
its magnitude, ``|v| = α|w| - β`` for the propagated solution and ``|v̂| = α̂|w| - β̂``
for the embedded one (``_kernels`` notes), so the step, applied, is that of
``_kernels.rows_run``: lazily composed maps on the sorted magnitudes, deaths from the
bottom of the list. What is new is the error norm of ``_adaptive`` over the row's alive
entries, which costs O(1) per row plus a binary search:

Extreme magnitudes. Let x = |w| > 0 range over the row's alive magnitudes, sorted,
and let ``v(x) = αx - β`` (α > 0). The survivors (v > 0) are the largest x, the dead the
smallest. Every entry's error is ``|δα x - δβ| / (atol + rtol max(x, v(x)))``
(δα = α - α̂, δβ = β - β̂; V_raw - V̂ before the projection to 0), and for a dead entry
max(x, v) = x. On
an interval where the denominator is one positive affine function d(x), ``ℓ(x)/d(x)``
with ℓ affine is a linear-fractional function, monotone there (its derivative is
``(ℓ'd - ℓd')/d²`` with a constant numerator); hence ``|ℓ|/d`` (decreasing then
increasing) attains their maximum over any finite set of
points of the interval at its smallest or largest point. The dead entries have one
denominator: their maximum is at the first or last dead entry. For the survivors
``max(x, v)`` is affine on each side of the crossing x* = β/(α-1) (there is one at
x > 0 only when β/(α-1) > 0): the maximum is at the largest or smallest survivor or at
the two survivors on either side of x* (found by binary search). It is attained,
not bounded: the norm equals the per-entry maximum up to rounding (tested).
"""
from __future__ import annotations

import numba
import numpy as np

from . import _adaptive
from . import _kernels as K
from ._engines import RowsEngine
from ._kernels import _opts
from .forces import EMBEDDED


@numba.njit(inline="always", **_opts)
def affine_pair(s1, s2, k, h, a, b, bhat, fb, c, lam, P, Q):
    """Maps of one trial step of an embedded pair on a row without interference.

    Stage ``st`` has value ``s(α_st|w| - β_st)`` and derivative ``P[st]|w| - Q[st]`` on
    every alive weight (as in ``_kernels.affine_step``); s1 = Σ|w|, s2 = Σw², k the
    alive count. ``a`` (S, S), ``b``, ``bhat`` (S,); P, Q (S,) scratch.

    Returns ``(α, β, δα, δβ)``: the propagated map and its difference from the embedded
    one (α - α̂, β - β̂, summed directly).
    """
    S = b.shape[0]
    for st in range(S):
        al = 1.0
        be = 0.0
        for j in range(st):
            if a[st, j] != 0.0:
                al += h * a[st, j] * P[j]
                be += h * a[st, j] * Q[j]
        N = al * al * s2 - 2.0 * al * be * s1 + be * be * k
        g = fb * c * (1.0 - N)
        P[st] = g * al
        Q[st] = g * be + lam
    al = 1.0
    be = 0.0
    dal = 0.0
    dbe = 0.0
    for st in range(S):
        al += h * b[st] * P[st]
        be += h * b[st] * Q[st]
        dal += h * (b[st] - bhat[st]) * P[st]
        dbe += h * (b[st] - bhat[st]) * Q[st]
    return al, be, dal, dbe


@numba.njit(inline="always", **_opts)
def alive_error(x, v, dal, dbe, rtol, atol):
    """Error of a surviving entry of magnitude x -> v."""
    return abs(dal * x - dbe) / (atol + rtol * max(x, v))


@numba.njit(inline="always", **_opts)
def survivors(u, i, k, an, bn):
    """Number of the k sorted (descending) u[i, :k] with ``an u - bn > 0`` (they form a
    prefix, an > 0): a galloping search up from the bottom, O(1 + log(k - result))."""
    hi = k
    step = 1
    while hi > 0 and an * u[i, hi - 1] - bn <= 0.0:  # u[i, hi:] all fail
        nxt = max(hi - step, 0)
        if an * u[i, nxt] - bn <= 0.0:
            hi = nxt
            step *= 2
        else:
            break
    lo = max(hi - step, 0)  # u[i, :lo] pass (or lo = 0); binary search in [lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if an * u[i, mid] - bn > 0.0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(inline="always", **_opts)
def row_error(u, i, k, ai, bi, al, be, dal, dbe, rtol, atol):
    """Error norm of a trial step over row i's k alive entries (magnitudes
    ``ai u[i, :k] - bi``, descending) by the extreme-magnitude rule (module notes);
    (al, be, dal, dbe) from :func:`affine_pair`, al > 0.

    Returns ``(err, knew)``, knew the number of survivors.
    """
    an = al * ai
    bn = al * bi + be
    knew = survivors(u, i, k, an, bn)
    err = 0.0
    if knew > 0:
        cand = (0, knew - 1, 0, 0)
        ncand = 2
        xs = be / (al - 1.0) if al != 1.0 else -1.0  # max(x, v) changes branch at x* if > 0
        if ai * u[i, knew - 1] - bi < xs < ai * u[i, 0] - bi:
            p = survivors(u, i, knew, ai, bi + xs)  # survivors with x > x*
            cand = (0, knew - 1, max(p - 1, 0), min(p, knew - 1))
            ncand = 4
        for r in range(ncand):
            p = cand[r]
            x = ai * u[i, p] - bi
            err = max(err, alive_error(x, an * u[i, p] - bn, dal, dbe, rtol, atol))
    if knew < k:  # dead: v <= 0, so the scale is atol + rtol x on all of them
        for p in (knew, k - 1):
            x = ai * u[i, p] - bi
            err = max(err, alive_error(x, an * u[i, p] - bn, dal, dbe, rtol, atol))
    return err, knew


@numba.njit(inline="always", **_opts)
def trial_error(u, cnt, A, B, P1, P2, h, a, b, bhat, fb, c, lam, rtol, atol, Pw, Qw, AL, BE):
    """Error norm of a trial step of size h over all rows (inf if a value is
    non-finite or a row's α <= 0); the rows' (α, β) go into AL, BE (n,)."""
    n = cnt.shape[0]
    err = 0.0
    for i in range(n):
        k = cnt[i]
        if k == 0:
            continue
        ai, bi = A[i], B[i]
        s1 = ai * P1[i] - bi * k
        s2 = ai * ai * P2[i] - 2.0 * ai * bi * P1[i] + bi * bi * k
        al, be, dal, dbe = affine_pair(s1, s2, k, h, a, b, bhat, fb, c, lam, Pw, Qw)
        ok = abs(al) < 1e150 and abs(be) < 1e150 and abs(dal) < 1e150 and abs(dbe) < 1e150
        if not (ok and al > 0.0):
            return np.inf  # NaN fails every comparison above
        e, _ = row_error(u, i, k, ai, bi, al, be, dal, dbe, rtol, atol)
        if not (e <= err):
            if not np.isfinite(e):
                return np.inf
            err = e
        AL[i] = al
        BE[i] = be
    return err


@numba.njit(inline="always", **_opts)
def apply_maps(W, u, perm, cnt, A, B, P1, P2, AL, BE, h, conv_tol):
    """Apply an accepted step's maps (α > 0) as ``_kernels.rows_run`` does: compose,
    kill from the bottom, materialise when the map drifts. Returns (changed, rate)."""
    n = W.shape[0]
    changed = False
    rate = 0.0
    for i in range(n):
        k = cnt[i]
        if k == 0:
            continue
        ai, bi = A[i], B[i]
        al, be = AL[i], BE[i]
        if conv_tol > 0.0:
            wmax = ai * u[i, 0] - bi
            wmin = ai * u[i, k - 1] - bi
            d = max(abs((al - 1.0) * wmax - be), abs((al - 1.0) * wmin - be))
            rate = max(rate, d / h)
        ai = al * ai
        bi = al * bi + be
        A[i] = ai
        B[i] = bi
        while k > 0 and ai * u[i, k - 1] - bi <= 0.0:
            k -= 1
            W[i, perm[i, k]] = 0.0
            P1[i] -= u[i, k]
            P2[i] -= u[i, k] * u[i, k]
            changed = True
        cnt[i] = k
        if k == 0:
            P1[i] = 0.0
            P2[i] = 0.0
        elif ai > 2.0 or ai < 0.5 or bi > 0.1 * ai * u[i, 0]:
            K.rows_materialize(W, u, perm, cnt, A, B, P1, P2, i)
    return changed, rate


@numba.njit(**_opts)
def rows_run_adaptive(W, u, perm, cnt, A, B, P1, P2, AL, BE, t, j, t1, t_end, jmax, a, b, bhat, q,
                      fb, c, lam, rtol, atol, stop_nnz, conv_tol, conv_window, out):
    """Take adaptive steps on all rows from time ``t`` (step count ``j``) towards ``t1``.

    The state and its contract are those of ``_kernels.rows_run``; the steps are the
    trial steps of ``forces.embedded_step`` (tableau a, b, b̂ with error order q),
    accepted or rejected and sized by ``_adaptive.control`` from the controller state in
    ``out``, the last one shortened to end at ``t_end`` (``_adaptive.trial_size``). A
    rejected trial changes only the controller state. AL, BE (n,) are scratch.

    Stops (out[OUT_STATUS]) at t1 or before a step that would pass t1 < t_end (0; the
    caller reaches t1 by a side run), after ``jmax`` accepted steps (1), when every row
    has at most ``stop_nnz`` alive weights (2), on step-size underflow (3, with
    out[OUT_BAD] = -2), or by the convergence rule of ``_kernels.converged_after`` (4).
    out[OUT_EVALS] counts S force evaluations per trial.
    """
    n = W.shape[0]
    S = b.shape[0]
    Pw = np.empty(S)
    Qw = np.empty(S)
    j0 = j
    status = K.STATUS_DONE
    bad = -1
    while t < t1:
        h = _adaptive.trial_size(t, t1, t_end, out)
        if h == 0.0:
            break
        if h < 0.0:
            status = K.STATUS_NONFINITE
            bad = -2
            break
        err = trial_error(u, cnt, A, B, P1, P2, h, a, b, bhat, fb, c, lam, rtol, atol, Pw, Qw, AL, BE)
        out[K.OUT_EVALS] += S
        if not _adaptive.control(err, h, q, out):
            continue
        changed, rate = apply_maps(W, u, perm, cnt, A, B, P1, P2, AL, BE, h, conv_tol)
        t = t_end if t + h >= t_end - 1e-12 * max(1.0, abs(t_end)) else t + h
        j += 1
        if K.converged_after(changed, rate, t, conv_tol, conv_window, out):
            status = K.STATUS_CONVERGED
            break
        if stop_nnz >= 0:
            done = True
            for i in range(n):
                if cnt[i] > stop_nnz:
                    done = False
                    break
            if done:
                status = K.STATUS_STOP
                break
        if t < t1 and j - j0 >= jmax:
            status = K.STATUS_BUDGET
            break
    for i in range(n):
        K.rows_writeback(W, u, perm, cnt, A, B, i)
    out[K.OUT_T] = t
    out[K.OUT_J] = j
    out[K.OUT_STATUS] = status
    out[K.OUT_BAD] = bad


class AdaptiveRowsEngine(RowsEngine):
    """Rows without interference, adaptive steps of an embedded pair (``forces.EMBEDDED``)
    with tolerances rtol, atol, the last step ending at ``t_end`` (settable). ``run``
    has the engines' signature (``dt`` is not used); the controller state lives in
    ``out`` (``_adaptive.start``)."""

    def __init__(self, W, model, method, rtol, atol, t_end):
        # RowsEngine's set-up of the row state depends on the method only through the
        # tableau, the flip switch (unused here: α > 0 on every accepted step) and stages
        super().__init__(W, model, "euler")
        self.method = method
        self.a, self.b, self.bhat, self.q = EMBEDDED[method]
        self.stages = len(self.b)
        self.rtol, self.atol, self.t_end = float(rtol), float(atol), float(t_end)
        self.AL, self.BE = np.zeros(W.shape[0]), np.zeros(W.shape[0])

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        rows_run_adaptive(self.W, self.u, self.perm, self.cnt, self.A, self.B, self.P1, self.P2, self.AL,
                          self.BE, t, j, t1, self.t_end, jmax, self.a, self.b, self.bhat, float(self.q),
                          self.fb, self.model.c, self.lam, self.rtol, self.atol, stop_nnz, conv_tol,
                          conv_window, out)

    def fork(self):
        return AdaptiveRowsEngine(self.W.copy(), self.model, self.method, self.rtol, self.atol, self.t_end)
