"""Adaptive steps (embedded pairs, ``forces.EMBEDDED``) in the sparse phase.

The kernel is ``_kernels.sparse_run`` with the error control of ``_adaptive``: each
step starts, as there, with the forces on the support, the releases (decided from the
state alone, whatever the step size) and the working set; then trial steps of the
pair's tableau on that working set until ``_adaptive.control`` accepts one. A rejected
trial redoes only the stages 1.. (stage 0, the force at the step start, is kept), the
new values and the error; the support, W and the epoch state are changed only by the
accepted trial (``apply_step``). The epoch bound accumulates |ΔW| of accepted steps, not
step sizes, so it holds with variable h.

Force evaluations (``out[OUT_EVALS]``) are counted as done: one per step start (the
force that lists the releases is stage 0 of every trial from there) and S - 1 per trial,
so a step accepted at its first trial counts S, as a fixed step does.
"""
from __future__ import annotations

import numba
import numpy as np

from . import _kernels as K
from ._adaptive import control, entry_error, step_time, trial_size
from ._engines import SparseEngine
from ._kernels import _opts, _sign
from .forces import EMBEDDED


@numba.njit(**_opts)
def trial_error(wk, Kc, newv, h, b, bhat, rtol, atol, finite):
    """Error norm (``_adaptive``) of a trial on the working set wk = (ptr, cols, vals,
    release signs, forces, born): newv (n·m,) propagated values, Kc (S, n·m) stages;
    the values before the projection are ``w + h Σ_j b_j Kc[j]`` (summed as
    ``sparse_update`` does), the embedded ones ``w + h Σ_j bhat_j Kc[j]``. Entries outside the working set are pinned zeros (error
    0). Returns inf if ``finite`` is False or a value is non-finite."""
    if not finite:
        return np.inf
    wptr, wval, wsgn = wk[0], wk[2], wk[3]
    S = bhat.shape[0]
    err = 0.0
    for x in range(wptr[wptr.shape[0] - 1]):
        w = wval[x]
        vraw = w
        vhat = w
        for jj in range(S):
            vraw += h * b[jj] * Kc[jj, x]
            vhat += h * bhat[jj] * Kc[jj, x]
        e = entry_error(w, newv[x], vraw, vhat, _sign(w, wsgn[x]), rtol, atol)
        if not (e <= err):
            if not np.isfinite(e):
                return np.inf
            err = e
    return err


@numba.njit(**_opts)
def trial(wk, Kc, newv, Fq, csc, ns, dense, colvals, gram, istate, norms, acc, h, a, b, bhat, fb,
          c, lam, rtol, atol):
    """One trial step of size h on the working set (stage 0 in Kc[0], the column index
    built on wk): stages 1.. into Kc, the propagated values into newv (frozen signs, a
    crossing weight set to 0, ``_kernels.sparse_update``); returns its error norm."""
    K.rk_stages(wk, Kc, newv, Fq, csc, ns, dense, colvals, gram, istate, norms, acc, h, a, fb, c, lam)
    finite = K.sparse_update(wk, Kc, newv, h, b, False, lam)
    return trial_error(wk, Kc, newv, h, b, bhat, rtol, atol, finite)


@numba.njit(**_opts)
def sparse_run_adaptive(W, bits, sup, wk, newv, Fq, Kc, csc, colvals, gram, norms, acc, snap, tab, scr,
                        nbr, rel, istate, fstate, rowv, colv, tile, counters, t, j, t1, t_end, jmax, a, b,
                        bhat, q, rtol, atol, fb, c, lam, stop_nnz, dense_above, conv_tol, conv_window, out):
    """Adaptive steps with L1 on, on packed supports (``_kernels.sparse_run``, whose
    arrays these are, with the controller of ``_adaptive``, its state in out).

    Steps from t towards t1 <= t_end with sizes ``_adaptive.trial_size``: stops with
    STATUS_DONE before a step that would pass t1 < t_end (t < t1 then), with
    STATUS_NONFINITE and out[OUT_BAD] = -2 on step-size underflow (the state that of
    the last accepted step), else as ``sparse_run`` (converged, stop_nnz, back to dense, jmax accepted
    steps). (a, b, bhat, q): the pair (``forces.EMBEDDED``), Kc (S, n·m).
    """
    ptr, cols, vals, born = sup
    acol = colv[K.CV_A]
    n = W.shape[0]
    S = b.shape[0]
    j0 = j
    status = K.STATUS_DONE
    releases = 0
    underflow = False
    while t < t1:
        h = trial_size(t, t1, t_end, out)
        if h <= 0.0:
            underflow = h < 0.0
            status = K.STATUS_NONFINITE if underflow else K.STATUS_DONE
            break
        nt, ns, updates, amax = K.csc_pattern(ptr, cols, vals, csc, colvals, norms, acol)
        dense = 2 * updates > n * n
        K.sparse_force(ptr, vals, csc, ns, dense, colvals, gram, istate, norms, acc, fb, c, Fq)
        out[K.OUT_EVALS] += 1
        nrel = K.release_phase(bits, sup, csc, colvals, gram, snap, tab, scr, nbr, rel, istate, fstate,
                               rowv, colv, tile, amax, c, lam, counters)
        work = (ptr, cols, vals, wk[3], Fq, born)
        if nrel > 0:
            K.merge_releases(sup, Fq, rel, nrel, snap[2], snap[3], wk)
            work = wk
        wptr, wval, wsgn, wF = work[0], work[2], work[3], work[4]
        for x in range(wptr[n]):
            Kc[0, x] = wF[x] - lam * _sign(wval[x], wsgn[x])
        if nrel > 0:  # the stages run on the working set with the released entries
            K.csc_clear(csc, nt, acol)
            nt, ns, updates, amax = K.csc_pattern(wptr, work[1], wval, csc, colvals, norms, acol)
            dense = 2 * updates > n * n
        accepted = False
        while True:
            err = trial(work, Kc, newv, Fq, csc, ns, dense, colvals, gram, istate, norms, acc, h, a, b,
                        bhat, fb, c, lam, rtol, atol)
            out[K.OUT_EVALS] += S - 1
            if control(err, h, q, out):
                accepted = True
                break
            h = trial_size(t, t1, t_end, out)
            if h <= 0.0:  # nothing of this step is kept; the next call starts it again
                underflow = h < 0.0
                status = K.STATUS_NONFINITE if underflow else K.STATUS_DONE
                break
        K.csc_clear(csc, nt, acol)
        if not accepted:
            break
        releases += nrel
        total, worst, changed, rate = K.apply_step(W, bits, work, newv, sup, h, conv_tol, colv, snap[4],
                                                   scr[2], istate, fstate)
        counters[K.CT_STEPS] += 1
        j += 1
        t = step_time(t, h, t_end)
        status = K.sparse_step_status(changed, rate, t, t1, j, j0, jmax, worst, total, stop_nnz,
                                      dense_above, conv_tol, conv_window, out)
        if status != K.STATUS_DONE:
            break
    K.write_back(W, sup)
    K.finish_run(out, t, j, status, releases)
    if underflow:
        out[K.OUT_BAD] = -2


class AdaptiveSparseEngine(SparseEngine):
    """:class:`~flowsim._engines.SparseEngine` with adaptive steps of an embedded pair
    (``method`` a key of ``forces.EMBEDDED``) to tolerances ``rtol``, ``atol``; the last
    step ends at ``t_end`` (settable). The controller state travels in ``out``
    (``_adaptive.start`` initialises it), so a dense engine can hand over to this one
    and back. ``run`` has the signature of ``SparseEngine.run``; dt is ignored and
    jmax counts accepted steps."""

    def __init__(self, W, model, method, dense_above, rtol, atol, t_end, **policy):
        if method not in EMBEDDED:
            raise ValueError(f"method={method!r}: must be one of {', '.join(EMBEDDED)}")
        a, b, bhat, q = EMBEDDED[method]
        super().__init__(W, model, "euler", dense_above, **policy)  # Kc allocated below
        self.a, self.b = np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64)
        self.bhat, self.q = np.ascontiguousarray(bhat, dtype=np.float64), float(q)
        self.euler = False
        self.Kc = np.zeros((b.shape[0], W.size))
        self.method, self.rtol, self.atol, self.t_end = method, float(rtol), float(atol), float(t_end)
        self.stages = b.shape[0]

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        sparse_run_adaptive(self.W, self.bits, self.sup, self.wk, self.newv, self.Fq, self.Kc, self.csc,
                            self.colvals, self.gram, self.norms, self.acc, self.snap, self.tab, self.scr,
                            self.nbr, self.rel, self.istate, self.fstate, self.rowv, self.colv, self.tile,
                            self.counters, t, j, t1, self.t_end, jmax, self.a, self.b, self.bhat, self.q,
                            self.rtol, self.atol, self.fb, self.model.c, self.model.l1_strength, stop_nnz,
                            self.dense_above, conv_tol, conv_window, out)
