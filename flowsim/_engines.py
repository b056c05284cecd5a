"""The engines behind the numba steppers (euler, heun, rk4, and the adaptive bs32),
behind one interface.

Every engine owns the weights ``W`` (n, m) it was given and advances them in place::

    engine.run(t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out)
        steps from time t (grid index j) towards t1 on the global grid k·dt, at most
        jmax steps; out (K.OUT_SIZE,) receives time, grid index, status, ... (see
        ``_kernels``); W is current when it returns.
    engine.stats() -> dict of (n,) per-row statistics of the current W
    engine.fork()  -> an independent engine on a copy of the current W
    engine.stages  -> force evaluations per step

Which engine runs is decided by :func:`make_engine`:

* :class:`RowsEngine` -- interference off or n = 1: O(1) + deaths per step.
* :class:`DenseEngine` -- interference on: two BLAS products per force evaluation on the
  columns that still hold a nonzero; with L1 on it runs :class:`SparseEngine` on every
  step that starts with at most ``sparse_below`` of the weights nonzero.
* :class:`SparseEngine` -- packed supports; forces on them at a cost of Σ_k (column
  count)², releases certified by bound (B) of ``_kernels`` (the engine of commit f8da2ae,
  which checks every reachable zero at every step, stays reachable as
  ``DenseEngine(..., sparse_engine="legacy")`` for the benchmarks).

With an adaptive method (``forces.EMBEDDED``) the same engines take steps sized by the
controller of ``_adaptive`` (dt is not used; the controller state is in ``out``, set up by
``_adaptive.start``), stop before a step that would pass t1 < ``t_end`` and end the last
step at ``t_end``: :class:`DenseEngine` itself, and ``_adaptive_rows.AdaptiveRowsEngine``
and ``_adaptive_sparse.AdaptiveSparseEngine`` for the rows and the sparse phase.

Every choice an engine makes (which columns to compact, dense or sparse, when to
re-materialise a lazy map) depends on the current weights alone, never on where a call
or a save time falls, so a run's numbers do not depend on how it was chunked.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import _adaptive as A
from . import _kernels as K
from .forces import EMBEDDED, TABLEAUX
from .trajectory import finish_stats, row_stats


def make_engine(W, model, method, sparse_below=0.0, rtol=None, atol=None, t_end=None):
    """The engine for ``model`` and ``method`` on W (n, m): a fixed-step method
    ("euler", "heun", "rk4"), or an adaptive one (a key of ``forces.EMBEDDED``) with
    tolerances ``rtol``, ``atol`` whose steps end at ``t_end`` at the latest."""
    if not model.interference or model.n == 1:
        if method in EMBEDDED:
            from ._adaptive_rows import AdaptiveRowsEngine

            return AdaptiveRowsEngine(W, model, method, rtol, atol, t_end)
        return RowsEngine(W, model, method)
    return DenseEngine(W, model, method, sparse_below, rtol=rtol, atol=atol, t_end=t_end)


class RowsEngine:
    """Rows without interference: numba steps costing O(1) plus deaths (see _kernels)."""

    def __init__(self, W, model, method):
        self.model, self.method = model, method
        n = W.shape[0]
        self.W = W
        absW = np.abs(W)
        self.perm = np.argsort(absW, axis=1, kind="stable")[:, ::-1].copy()  # descending; zeros last
        self.u = np.take_along_axis(absW, self.perm, axis=1)
        del absW
        self.cnt = np.count_nonzero(W, axis=1).astype(np.int64)
        self.A, self.B = np.ones(n), np.zeros(n)
        self.P1, self.P2 = np.zeros(n), np.zeros(n)
        for i in range(n):
            K.rows_materialize(W, self.u, self.perm, self.cnt, self.A, self.B, self.P1, self.P2, i)
        self.a, self.b = TABLEAUX[method]
        self.fb = 1.0 if model.feature_benefit else 0.0
        self.lam = model.l1_strength
        self.flip = 1.0 if (method == "euler" or not model.l1) else 0.0
        self.stages = len(self.b)

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        K.rows_run(self.W, self.u, self.perm, self.cnt, self.A, self.B, self.P1, self.P2,
                   t, j, t1, dt, jmax, self.a, self.b, self.fb, self.model.c, self.lam, self.flip,
                   stop_nnz, conv_tol, conv_window, out)

    def stats(self):
        n = self.W.shape[0]
        l1, l2, l4 = np.empty(n), np.empty(n), np.empty(n)
        nnz = np.empty(n, dtype=np.int64)
        K.rows_stats(self.W, self.perm, self.cnt, l1, nnz, l2, l4)
        return finish_stats(l1, nnz, l2, l4, self.model)

    def fork(self):
        return RowsEngine(self.W.copy(), self.model, self.method)


class DenseEngine:
    """Rows with interference: BLAS products on the columns that still hold a nonzero
    (Euler: then one pass per row for the step and its summary, ``dense_euler_step``).

    With L1 on, every step that starts with at most ``sparse_below`` of the weights
    nonzero is taken by the sparse engine ``sparse_engine`` (a key of
    :data:`SPARSE_ENGINES`; both compute the steps of ``forces.reference_step`` and agree
    to rounding). The sparse engine keeps its state between calls while no dense step
    intervenes (it only saves work: results do not depend on it). ``"legacy"`` runs the
    engine of commit f8da2ae as a whole, with its Euler step of three elementwise passes.
    """

    def __init__(self, W, model, method, sparse_below=0.0, sparse_engine="certified", rtol=None, atol=None,
                 t_end=None):
        if sparse_engine not in SPARSE_ENGINES:
            raise ValueError(f"sparse_engine={sparse_engine!r}: must be one of {', '.join(SPARSE_ENGINES)}")
        self.model, self.method = model, method
        self.adaptive = method in EMBEDDED
        if self.adaptive:  # its sparse phase: _adaptive_sparse.AdaptiveSparseEngine
            self.rtol, self.atol, self.t_end = rtol, atol, t_end
        self.sparse_below = sparse_below if model.l1 else 0.0
        self.dense_above = int(np.floor(self.sparse_below * W.size))
        self.sparse_engine = sparse_engine
        self.sparse = None
        self._sparse_current = False  # the sparse engine's supports describe W
        self.W = W
        if self.adaptive:
            self.a, self.b, self.bhat, self.q = EMBEDDED[method]
        else:
            self.a, self.b = TABLEAUX[method]
        self.stages = len(self.b)
        self.fb = 1.0 if model.feature_benefit else 0.0
        self.lam = model.l1_strength
        self.use_sign = model.l1
        self._shape = None
        self._allocate(W.shape[1])

    def _allocate(self, mc):
        n = self.W.shape[0]
        if self._shape == (n, mc):
            return
        self._shape = (n, mc)
        self.G = np.empty((n, n))
        self.P = np.empty((n, n))
        self.norms = np.empty(n)
        self.PW = np.empty((n, mc))
        self.F = np.empty((n, mc))
        self.V = np.empty((n, mc))
        self.U = np.empty((n, mc))
        self.s = np.zeros((n, mc))
        self.Ks = np.empty((self.stages, n, mc))
        if self.adaptive:
            self.Vhat = np.empty((n, mc))

    def smooth(self, U, F):
        """Smooth force at U (n, mc) into F (n, mc): two BLAS products, fused elementwise work
        (the buffers must have been allocated for mc columns)."""
        np.matmul(U, U.T, out=self.G)
        np.copyto(self.norms, np.diagonal(self.G))
        if self.model.interference:
            K.relu_offdiag(self.G, self.P)
            np.matmul(self.P, U, out=self.PW)
            K.combine_force(U, self.norms, self.PW, self.fb, 1.0, self.model.c, F)
        else:
            K.combine_force(U, self.norms, U, self.fb, 0.0, self.model.c, F)

    def _euler_step(self, Wc, h, mask):
        """One proximal Euler step (interference on) from Wc into self.V: the two BLAS
        products, then one fused pass (``dense_euler_step``). Returns (all finite,
        nonzeros, support changed, max|ΔW|), the live columns of V in mask."""
        self._allocate(Wc.shape[1])
        np.matmul(Wc, Wc.T, out=self.G)
        np.copyto(self.norms, np.diagonal(self.G))
        K.relu_offdiag(self.G, self.P)
        np.matmul(self.P, Wc, out=self.PW)
        return K.dense_euler_step(Wc, self.PW, self.norms, self.fb, self.model.c, h, self.lam,
                                  self.use_sign, self.V, mask)

    def step(self, Wc, h):
        """One step from Wc into self.V; returns False if a value is non-finite."""
        self._allocate(Wc.shape[1])
        if self.method == "euler":
            self.smooth(Wc, self.F)
            return K.prox_euler(Wc, self.F, h, self.lam, self.use_sign, self.V)
        Ks, s = self.Ks, self.s
        self.smooth(Wc, self.F)
        if self.use_sign:
            K.sign_pattern(Wc, self.F, self.lam, s)
        K.masked_stage(self.F, s, self.lam, self.use_sign, Ks[0])
        for st in range(1, self.stages):
            K.stage_value(Wc, Ks, h * self.a[st], st, self.U)
            self.smooth(self.U, self.F)
            K.masked_stage(self.F, s, self.lam, self.use_sign, Ks[st])
        return K.finish_step(Wc, Ks, h * self.b, s, self.use_sign, self.V)

    def first_stage(self, Wc):
        """Stage 0 of a step from Wc (its sign pattern, then Ks[0]); it does not depend
        on the step size, so an adaptive method computes it once per accepted state."""
        self._allocate(Wc.shape[1])
        self.smooth(Wc, self.F)
        if self.use_sign:
            K.sign_pattern(Wc, self.F, self.lam, self.s)
        K.masked_stage(self.F, self.s, self.lam, self.use_sign, self.Ks[0])

    def trial(self, Wc, h):
        """A trial step of the embedded pair from Wc after ``first_stage``: the propagated
        solution into self.V; returns the error norm of ``_adaptive`` (inf if non-finite)."""
        Ks, s = self.Ks, self.s
        for st in range(1, self.stages):
            K.stage_value(Wc, Ks, h * self.a[st], st, self.U)
            self.smooth(self.U, self.F)
            K.masked_stage(self.F, s, self.lam, self.use_sign, Ks[st])
        if not K.finish_step(Wc, Ks, h * self.b, s, self.use_sign, self.V):
            return np.inf
        K.stage_value(Wc, Ks, h * self.b, self.stages, self.U)  # V before the projection
        K.stage_value(Wc, Ks, h * self.bhat, self.stages, self.Vhat)
        return A.dense_error(Wc, self.V, self.U, self.Vhat, s, self.use_sign, self.rtol, self.atol)

    def _use_sparse(self, nnz_total):
        return self.sparse_below > 0 and nnz_total <= self.dense_above

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        j_end = j + jmax
        status = K.STATUS_DONE
        while t < t1 and status == K.STATUS_DONE:
            if j >= j_end:
                status = K.STATUS_BUDGET
            elif self._use_sparse(np.count_nonzero(self.W)):
                if self.sparse is None:
                    self.sparse = self._sparse_engine()
                if not self._sparse_current:
                    self.sparse.sync()
                    self._sparse_current = True
                self.sparse.run(t, j, t1, dt, j_end - j, stop_nnz, conv_tol, conv_window, out)
                t, j, status = float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])
                if status == K.STATUS_DENSE:
                    status = K.STATUS_DONE
            else:
                self._sparse_current = False
                run = self._run_dense_adaptive if self.adaptive else self._run_dense
                t, j, status = run(t, j, t1, dt, j_end, stop_nnz, conv_tol, conv_window, out)
            if self.adaptive and status == K.STATUS_DONE and t < t1 and A.trial_size(t, t1, self.t_end, out) == 0:
                break  # the next step would pass t1
        out[K.OUT_T], out[K.OUT_J], out[K.OUT_STATUS] = t, j, status

    def _sparse_engine(self):
        if self.adaptive:
            from ._adaptive_sparse import AdaptiveSparseEngine

            return AdaptiveSparseEngine(self.W, self.model, self.method, self.dense_above, self.rtol, self.atol,
                                        self.t_end)
        return SPARSE_ENGINES[self.sparse_engine](self.W, self.model, self.method, self.dense_above)

    @property
    def t_end(self):
        return self._t_end

    @t_end.setter
    def t_end(self, value):
        self._t_end = value
        if getattr(self, "sparse", None) is not None:
            self.sparse.t_end = value

    def _run_dense(self, t, j, t1, dt, j_end, stop_nnz, conv_tol, conv_window, out):
        """Dense steps on the live columns until t1, step j_end, a stop, or the sparse
        threshold; returns (t, j, status) with status DONE in the last case.

        A column that is all zero feels no force and stays zero, so the live columns
        only shrink; they are re-compacted after every step that kills one.
        """
        W = self.W
        cols = np.flatnonzero(np.any(W != 0.0, axis=0))
        Wc = np.ascontiguousarray(W[:, cols])
        mask = np.empty(cols.size, dtype=np.bool_)
        fused = self.method == "euler" and self.model.interference and self.sparse_engine != "legacy"
        status = K.STATUS_DONE
        while t < t1:
            t_next = K.step_end(j, t1, dt)
            h = t_next - t
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below
                if fused:
                    ok, total, changed, diff = self._euler_step(Wc, h, mask)
                else:
                    ok = self.step(Wc, h)
                    if ok:
                        total, changed, diff = K.dense_step_summary(Wc, self.V, mask)
            if not ok:
                status = K.STATUS_NONFINITE
                break
            Wc, self.V = self.V, Wc
            j += 1
            t = t_next
            out[K.OUT_EVALS] += self.stages
            cols, Wc, mask = self._compact(cols, Wc, mask)
            status = self._after_step(changed, diff / h, t, t1, j, j_end, Wc, total, stop_nnz, conv_tol,
                                      conv_window, out)
            if status is not None:
                break
        W[:, cols] = Wc
        return t, j, K.STATUS_DONE if status is None else status

    def _compact(self, cols, Wc, mask):
        """Drop the columns a step left all zero (mask: the live ones); W gets their
        values first. Returns (cols, Wc, mask)."""
        if mask.all():
            return cols, Wc, mask
        self.W[:, cols] = Wc
        cols, Wc = cols[mask], np.ascontiguousarray(Wc[:, mask])
        self._allocate(cols.size)
        return cols, Wc, np.empty(cols.size, dtype=np.bool_)

    def _after_step(self, changed, rate, t, t1, j, j_end, Wc, total, stop_nnz, conv_tol, conv_window, out):
        """Why a dense run ends after a step ending at t: converged, every row at most
        stop_nnz nonzeros, the step budget, or STATUS_DONE to hand over to the sparse
        engine; None to go on."""
        if K.converged_after(changed, rate, t, conv_tol, conv_window, out):
            return K.STATUS_CONVERGED
        if stop_nnz >= 0 and np.count_nonzero(Wc, axis=1).max(initial=0) <= stop_nnz:
            return K.STATUS_STOP
        if t < t1 and j >= j_end:
            return K.STATUS_BUDGET
        if self._use_sparse(total):
            return K.STATUS_DONE
        return None

    def _run_dense_adaptive(self, t, j, t1, dt, j_end, stop_nnz, conv_tol, conv_window, out):
        """``_run_dense`` for an embedded pair: trial steps sized by ``_adaptive.control``
        (dt is not used); stops with status DONE also before a step that would pass t1."""
        W = self.W
        cols = np.flatnonzero(np.any(W != 0.0, axis=0))
        Wc = np.ascontiguousarray(W[:, cols])
        mask = np.empty(cols.size, dtype=np.bool_)
        status = K.STATUS_DONE
        fresh = True  # stage 0 is for the current state
        while t < t1:
            h = A.trial_size(t, t1, self.t_end, out)
            if h == 0.0:
                break
            if h < 0.0:
                status, out[K.OUT_BAD] = K.STATUS_NONFINITE, -2
                break
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite trials are rejected
                if fresh:
                    self.first_stage(Wc)
                    out[K.OUT_EVALS] += 1
                    fresh = False
                err = self.trial(Wc, h)
            out[K.OUT_EVALS] += self.stages - 1
            if not A.control(err, h, self.q, out):
                continue
            total, changed, diff = K.dense_step_summary(Wc, self.V, mask)
            Wc, self.V = self.V, Wc
            fresh = True
            j += 1
            t = A.step_time(t, h, self.t_end)
            cols, Wc, mask = self._compact(cols, Wc, mask)
            status = self._after_step(changed, diff / h, t, t1, j, j_end, Wc, total, stop_nnz, conv_tol,
                                      conv_window, out)
            if status is not None:
                break
        W[:, cols] = Wc
        return t, j, K.STATUS_DONE if status is None else status

    def stats(self):
        return row_stats(self.W, self.model)

    def fork(self):
        if self.adaptive:
            return DenseEngine(self.W.copy(), self.model, self.method, self.sparse_below, rtol=self.rtol,
                               atol=self.atol, t_end=self.t_end)
        return DenseEngine(self.W.copy(), self.model, self.method, self.sparse_below, self.sparse_engine)


class SparseEngine:
    """Rows with interference and L1 once sparse: numba steps costing Σ_k (column count)²
    for the forces on the supports, plus the release checks that bound (B) cannot rule
    out (see the notes heading the sparse phase kernels of ``_kernels``).

    The epoch state behind the bound only decides which zeros get their force
    evaluated, never a number: a run's results do not depend on it, nor on the policy
    knobs (for tests; see ``_kernels.release_phase``): ``epoch_budget`` (a new epoch
    begins when the work on failed bounds exceeds this multiple of the last epoch's),
    ``direct`` and ``scatter`` (multipliers of the cost thresholds above which all rows,
    or a row whose row bound failed, have their forces scattered; 0 never, inf always).
    """

    #: Default of ``epoch_budget``: measured best between 0.1 and 4 (n = 256, m = 1024 to 4096).
    EPOCH_BUDGET = 0.3

    def __init__(self, W, model, method, dense_above, epoch_budget=EPOCH_BUDGET, direct=1.0, scatter=1.0):
        n, m = W.shape
        nm = n * m
        self.model, self.W = model, W
        self.dense_above = dense_above
        self.a, self.b = TABLEAUX[method]
        self.euler = method == "euler"
        self.fb = 1.0 if model.feature_benefit else 0.0
        i8, i4, u1 = np.int64, np.int32, np.uint8
        self.bits = np.zeros((n, (m + 63) // 64), dtype=i8)
        # packed support (row pointers, columns, values, born since the epoch began) and
        # the step's working set (the same, with signs and forces, and the releases)
        self.sup = (np.zeros(n + 1, dtype=i8), np.zeros(nm, dtype=i4), np.zeros(nm), np.zeros(nm, dtype=u1))
        self.wk = (np.zeros(n + 1, dtype=i8), np.zeros(nm, dtype=i4), np.zeros(nm), np.zeros(nm),
                   np.zeros(nm), np.zeros(nm, dtype=u1))
        self.newv, self.Fq = np.zeros(nm), np.zeros(nm)
        self.Kc = np.zeros((1, 1) if self.euler else (len(self.b), nm))
        self.csc = (np.zeros(m, dtype=i8), np.zeros(m, dtype=i8), np.zeros(nm, dtype=i4),
                    np.zeros(nm, dtype=i8), np.zeros(m, dtype=i8), np.zeros(m, dtype=i8))
        self.colvals = np.zeros(nm)
        npairs = max(n * (n - 1) // 2, 1)
        self.gram = (np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n), dtype=i8),
                     np.zeros((npairs, 2), dtype=i8))
        self.norms, self.acc = np.zeros(n), np.zeros(n)
        nt = K.NTIER
        # the epoch: P(s0) and its pairs, the support at s0 packed, the columns with r_k > 0
        self.snap = (np.zeros((n, n)), np.zeros((npairs, 2), dtype=i8), np.zeros(n + 1, dtype=i8),
                     np.zeros(nm, dtype=i4), np.zeros(m, dtype=i8))
        # its tables: |φ(s0)|, σ (float32), tier maxima, tier lists (columns, offsets,
        # cursors, |φ(s0)|, σ) and the listing scratch
        self.tab = (np.zeros((n, m), dtype=np.float32), np.zeros((n, m), dtype=np.float32),
                    np.zeros((2, nt, n)), np.zeros(nm, dtype=i4), np.zeros((n, nt), dtype=i8),
                    np.zeros((n, nt), dtype=i8), np.zeros(2 * nm), np.zeros(2 * nm),
                    np.zeros(nm, dtype=i4), np.zeros(2 * nm, dtype=i4))
        self.scr = (np.zeros(m), np.zeros(m, dtype=np.bool_), np.zeros(m, dtype=i8),
                    np.zeros(n, dtype=i8), np.zeros(n, dtype=i8))
        self.nbr = (np.zeros(n + 1, dtype=i8), np.zeros(2 * npairs, dtype=i8))
        self.rel = (np.zeros(nm, dtype=i4), np.zeros(nm, dtype=i4), np.zeros(nm), np.zeros(nm),
                    np.zeros(nm, dtype=i4))  # releases: rows, columns, forces, signs, order
        self.istate = np.zeros(K.ES_SIZE, dtype=i8)
        self.fstate = np.zeros(K.EF_SIZE)
        self.fstate[K.EF_BUDGET], self.fstate[K.EF_WATCH] = epoch_budget, K.WATCH
        self.fstate[K.EF_DIRECT], self.fstate[K.EF_SCATTER] = direct, scatter
        self.rowv, self.colv, self.tile = np.zeros((2, n)), np.zeros((4, m)), np.zeros((2, 8, n))
        self.counters = np.zeros(K.CT_SIZE)

    def sync(self):
        """Rebuild the supports from W (each row's nonzero columns, ascending) and forget
        the epoch (W was changed by someone else)."""
        K.supports_from_dense(self.W, self.sup, self.bits)
        self.istate[K.ES_VALID] = 0

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        K.sparse_run(self.W, self.bits, self.sup, self.wk, self.newv, self.Fq, self.Kc, self.csc,
                     self.colvals, self.gram, self.norms, self.acc, self.snap, self.tab, self.scr,
                     self.nbr, self.rel, self.istate, self.fstate, self.rowv, self.colv, self.tile,
                     self.counters, t, j, t1, dt, jmax, self.a, self.b, self.euler, self.fb, self.model.c,
                     self.model.l1_strength, stop_nnz, self.dense_above, conv_tol, conv_window, out)

    def release_bounds(self):
        """Bound (B) of the current epoch at the current W (for tests).

        Returns
        -------
        entries : ndarray, shape (n, m)
            Upper bound on |φ_ik|, the interference force on W_ik, of every entry.
        tiers : ndarray, shape (NTIER, n)
            The row bound of each tier of each row (covering its entries).
        """
        n, m = self.W.shape
        ptr, cols, vals = self.sup[:3]
        acol = self.colv[K.CV_A]
        nt, ns, updates, amax = K.csc_pattern(ptr, cols, vals, self.csc, self.colvals, self.norms, acol)
        try:
            K.sparse_force(ptr, vals, self.csc, ns, 2 * updates > n * n, self.colvals, self.gram,
                           self.istate, self.norms, self.acc, self.fb, self.model.c, self.Fq)
            pmax = K.bound_inputs(self.gram[1], self.gram[3], self.istate[K.ES_PAIRS], self.snap[0],
                                  self.snap[1], self.istate[K.ES_PAIRS0], self.rowv)
            dmax, rmax = self.fstate[K.EF_DMAX], self.fstate[K.EF_RMAX]
            entries, rows = np.empty((n, m)), np.empty((K.NTIER, n))
            K.release_bounds(self.fstate, self.tab, self.rowv, self.colv, pmax, amax, dmax, rmax,
                             self.model.c, entries, rows)
        finally:
            K.csc_clear(self.csc, nt, acol)
        return entries, rows


def _legacy_engine(W, model, method, dense_above):
    from ._legacy_sparse import LegacySparseEngine

    return LegacySparseEngine(W, model, method, dense_above)


#: The sparse-phase engines DenseEngine can hand over to: "certified" (bound (B) of
#: ``_kernels``) and "legacy" (commit f8da2ae: every reachable zero checked each step;
#: the dense steps then as at f8da2ae too).
SPARSE_ENGINES = {"certified": SparseEngine, "legacy": _legacy_engine}


def smooth_force(W, model):
    """Smooth force on W (n, m) by the dense engine's kernels (for ``flowsim.force``)."""
    F = np.empty_like(W)
    DenseEngine(W, model, "euler").smooth(W, F)
    return F


def warm_up(model, method, dense=False):
    """Compile (or load from numba's cache) the kernels an engine uses, on a 2×2 problem
    (with ``dense``, those of :class:`DenseEngine` too).

    Returns the seconds it took, reported as compile time, so that run times are warm.
    """
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = model.replace(n=2, m=2, init_std=0.5)
        W = tiny.initial_weights()
        tol = dict(rtol=1e-6, atol=1e-9, t_end=1e-3) if method in EMBEDDED else {}
        engines = [make_engine(W.copy(), tiny, method, **tol)]
        if tiny.interference or dense:
            engines.append(DenseEngine(W.copy(), tiny, method, 0.0, **tol))
        if tiny.interference and tiny.l1:  # the sparse engine
            engines.append(DenseEngine(W, tiny, method, 1.0, **tol))
        for engine in engines:
            out = np.zeros(K.OUT_SIZE)
            A.start(out, 1e-3)
            engine.run(0.0, 0, 1e-3, 1e-3, 1, -1, 1e-12, 1.0, out)
            engine.stats()
    return time.perf_counter() - tick
