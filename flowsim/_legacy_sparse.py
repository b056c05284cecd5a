"""Today's sparse working-set engine (commit f8da2ae), kept verbatim for comparison.

``DenseEngine(..., sparse_engine="legacy")`` runs it; ``benchmarks/bench_sparse_phase.py``
times it beside the certified engine of ``_kernels``. Every zero that a positive-Gram
neighbour reaches has its force computed on every step (about n²·m·d/2 scattered
multiply-adds at density d).
"""
from __future__ import annotations

import numba
import numpy as np

from ._kernels import (OUT_EVALS, STATUS_DONE, STATUS_NONFINITE, _opts, finish_run, release_sign,
                       sparse_step_status, step_end)


# --------------------------------------------------------------- sparse phase kernels
# Once rows are sparse (L1 on), a step costs O(work) where "work" is each row's support
# plus the zeros released this step. The Gram entries G_ij are accumulated only over
# columns shared by rows i and j (a column index built from the working sets), so pairs
# of rows with disjoint supports cost nothing. A zero weight feels only the interference
# of rows j with G_ij > 0 on their own supports, so those columns are the only
# candidates for release, and each is released exactly when |F| > λ (as in the dense
# engine, which checks every zero).


@numba.njit(**_opts)
def csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched):
    """Column index of the working sets: col(k) = colrows[colstart[k]:colstart[k]+colcnt[k]].

    colcnt must be all zero on entry (``csc_clear`` restores that). Returns the number
    of touched columns listed in ``touched``.
    """
    n = widx.shape[0]
    nt = 0
    for i in range(n):
        for p in range(wcnt[i]):
            k = widx[i, p]
            if colcnt[k] == 0:
                touched[nt] = k
                nt += 1
            colcnt[k] += 1
    pos = 0
    for q in range(nt):
        k = touched[q]
        colstart[k] = pos
        colfill[k] = pos
        pos += colcnt[k]
    for i in range(n):
        for p in range(wcnt[i]):
            k = widx[i, p]
            colrows[colfill[k]] = i
            colfill[k] += 1
    return nt


@numba.njit(**_opts)
def csc_clear(colcnt, touched, nt):
    """Zero the column counts of the ``nt`` touched columns."""
    for q in range(nt):
        colcnt[touched[q]] = 0


@numba.njit(**_opts)
def sparse_force(U, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, release, ws, F,
                 acc, nbr, inlist, pos, cand, candmark, candlist):
    """Smooth force on every working entry, F[i, p] for entry ``widx[i, p]``.

    U : (n, m) values (read only on working entries). With ``release``, zero entries
    outside the working sets whose force exceeds λ are appended to their row's working
    set with their force in F and sign in ``ws``. Scratch: acc, nbr (n,) float/int,
    inlist (n,) bool, pos (m,) int (all -1), cand (m,) float (all 0), candmark (m,)
    bool, candlist (m,) int. Returns the number of released entries.
    """
    n = U.shape[0]
    nrel = 0
    for i in range(n):
        wi = wcnt[i]
        if wi == 0:
            continue
        nn = 0
        gii = 0.0
        for p in range(wi):
            k = widx[i, p]
            pos[k] = p
            u = U[i, k]
            if u == 0.0:
                continue
            gii += u * u
            for q in range(colstart[k], colstart[k] + colcnt[k]):
                j = colrows[q]
                if j == i:
                    continue
                uj = U[j, k]
                if uj == 0.0:
                    continue
                if not inlist[j]:
                    inlist[j] = True
                    nbr[nn] = j
                    nn += 1
                acc[j] += u * uj
        g = fb * c * (1.0 - gii)
        for p in range(wi):
            F[i, p] = g * U[i, widx[i, p]]
        ncand = 0
        for t in range(nn):
            j = nbr[t]
            gij = acc[j]
            acc[j] = 0.0
            inlist[j] = False
            if gij <= 0.0:
                continue
            cg = c * gij
            for q in range(wcnt[j]):
                k2 = widx[j, q]
                uj = U[j, k2]
                if uj == 0.0:
                    continue
                pp = pos[k2]
                if pp >= 0:
                    F[i, pp] -= cg * uj
                elif release:
                    if not candmark[k2]:
                        candmark[k2] = True
                        candlist[ncand] = k2
                        ncand += 1
                    cand[k2] -= cg * uj
        for p in range(wi):
            pos[widx[i, p]] = -1
        for t in range(ncand):
            k2 = candlist[t]
            f = cand[k2]
            cand[k2] = 0.0
            candmark[k2] = False
            sg = release_sign(f, lam)
            if sg != 0.0:
                p = wcnt[i]
                widx[i, p] = k2
                wcnt[i] = p + 1
                F[i, p] = f
                ws[i, p] = sg
                nrel += 1
    return nrel


@numba.njit(**_opts)
def sparse_run(W, U, widx, wcnt, ws, Kc, Fc, newv, colrows, colstart, colcnt, colfill, touched,
               acc, nbr, inlist, pos, cand, candmark, candlist,
               t, j, t1, dt, jmax, a, b, euler, fb, c, lam, stop_nnz, dense_above,
               conv_tol, conv_window, out):
    """Explicit steps with L1 on, on working sets; same contract as :func:`rows_run`.

    ``widx``/``wcnt`` hold each row's support (nonzero entries) between steps, sorted
    by column, so that the state (and the order of every sum) is a function of W alone;
    the step semantics are those of ``forces.reference_step`` (Lie splitting for
    ``euler``, frozen signs with release for the Runge-Kutta methods). Also stops
    (status 5) after a step that leaves more than ``dense_above`` nonzeros in all, for
    the caller to go on with the dense engine.
    out : (OUT_SIZE,) float64 (see OUT_*); OUT_RELEASES counts released zeros.
    """
    n = W.shape[0]
    S = b.shape[0]
    j0 = j
    status = STATUS_DONE
    releases = 0
    while t < t1:
        t_next = step_end(j, t1, dt)
        h = t_next - t
        for i in range(n):
            for p in range(wcnt[i]):
                ws[i, p] = 1.0 if W[i, widx[i, p]] > 0.0 else -1.0
        nt = csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched)
        nrel = sparse_force(W, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, True, ws, Fc,
                            acc, nbr, inlist, pos, cand, candmark, candlist)
        releases += nrel
        csc_clear(colcnt, touched, nt)
        if euler:
            thr = h * lam
            for i in range(n):
                for p in range(wcnt[i]):
                    x = W[i, widx[i, p]] + h * Fc[i, p]
                    r = abs(x) - thr
                    newv[i, p] = (r if x > 0.0 else -r) if r > 0.0 else 0.0
        else:
            for i in range(n):
                for p in range(wcnt[i]):
                    Kc[0, i, p] = Fc[i, p] - lam * ws[i, p]
            nt = csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched)
            for st in range(1, S):
                for i in range(n):
                    for p in range(wcnt[i]):
                        k = widx[i, p]
                        v = W[i, k]
                        for jj in range(st):
                            if a[st, jj] != 0.0:
                                v += h * a[st, jj] * Kc[jj, i, p]
                        U[i, k] = v
                sparse_force(U, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, False, ws, Fc,
                             acc, nbr, inlist, pos, cand, candmark, candlist)
                for i in range(n):
                    for p in range(wcnt[i]):
                        Kc[st, i, p] = Fc[i, p] - lam * ws[i, p]
            csc_clear(colcnt, touched, nt)
            for i in range(n):
                for p in range(wcnt[i]):
                    v = W[i, widx[i, p]]
                    for jj in range(S):
                        v += h * b[jj] * Kc[jj, i, p]
                    newv[i, p] = v if v * ws[i, p] > 0.0 else 0.0
        finite = True
        for i in range(n):
            for p in range(wcnt[i]):
                if not np.isfinite(newv[i, p]):
                    finite = False
        if not finite:
            # drop this step's releases (their W entries are still 0): supports are intact
            for i in range(n):
                q = 0
                for p in range(wcnt[i]):
                    if W[i, widx[i, p]] != 0.0:
                        widx[i, q] = widx[i, p]
                        q += 1
                wcnt[i] = q
            status = STATUS_NONFINITE
            break
        worst = 0
        total = 0
        changed = nrel > 0
        rate = 0.0
        for i in range(n):
            q = 0
            grew = False
            for p in range(wcnt[i]):
                k = widx[i, p]
                v = newv[i, p]
                if conv_tol > 0.0:
                    rate = max(rate, abs(v - W[i, k]) / h)
                W[i, k] = v
                if v != 0.0:
                    if q > 0 and k < widx[i, q - 1]:
                        grew = True
                    widx[i, q] = k
                    q += 1
                else:
                    changed = True
            wcnt[i] = q
            if grew:  # released entries were appended: restore column order
                widx[i, :q] = np.sort(widx[i, :q])
            total += q
            if q > worst:
                worst = q
        j += 1
        t = t_next
        out[OUT_EVALS] += S
        status = sparse_step_status(changed, rate, t, t1, j, j0, jmax, worst, total, stop_nnz,
                                    dense_above, conv_tol, conv_window, out)
        if status != STATUS_DONE:
            break
    finish_run(out, t, j, status, releases)


class LegacySparseEngine:
    """The sparse engine of commit f8da2ae (``DenseEngine(..., sparse_engine="legacy")``)."""

    def __init__(self, W, model, method, dense_above):
        from .forces import TABLEAUX

        n, m = W.shape
        self.model, self.W = model, W
        self.dense_above = dense_above
        self.a, self.b = TABLEAUX[method]
        self.euler = method == "euler"
        self.U = np.zeros_like(W)
        self.widx = np.empty((n, m), dtype=np.int64)
        self.wcnt = np.empty(n, dtype=np.int64)
        self.ws, self.Fc, self.newv = np.empty((n, m)), np.empty((n, m)), np.empty((n, m))
        self.Kc = np.empty((len(self.b), n, m))
        self.colrows = np.empty(n * m, dtype=np.int64)
        self.colstart, self.colfill, self.touched = (np.empty(m, dtype=np.int64) for _ in range(3))
        self.colcnt = np.zeros(m, dtype=np.int64)
        self.acc, self.nbr, self.inlist = np.zeros(n), np.empty(n, dtype=np.int64), np.zeros(n, dtype=bool)
        self.pos = np.full(m, -1, dtype=np.int64)
        self.cand, self.candmark, self.candlist = np.zeros(m), np.zeros(m, dtype=bool), np.empty(m, dtype=np.int64)
        self.fb = 1.0 if model.feature_benefit else 0.0

    def sync(self):
        """Rebuild the supports from W: each row's nonzero columns, ascending."""
        self.widx[...] = np.argsort(self.W == 0.0, axis=1, kind="stable")
        self.wcnt[...] = np.count_nonzero(self.W, axis=1)

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        self.sync()  # as at f8da2ae: DenseEngine re-synced before every call
        sparse_run(self.W, self.U, self.widx, self.wcnt, self.ws, self.Kc, self.Fc, self.newv,
                   self.colrows, self.colstart, self.colcnt, self.colfill, self.touched,
                   self.acc, self.nbr, self.inlist, self.pos, self.cand, self.candmark, self.candlist,
                   t, j, t1, dt, jmax, self.a, self.b, self.euler, self.fb, self.model.c,
                   self.model.l1_strength, stop_nnz, self.dense_above, conv_tol, conv_window, out)
