"""The engines behind the explicit steppers (euler, heun, rk4), behind one interface.

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

Every choice an engine makes (which columns to compact, dense or sparse, when to
re-materialise a lazy map) depends on the current weights alone, never on where a call
or a save time falls, so a run's numbers do not depend on how it was chunked.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import _kernels as K
from .forces import TABLEAUX
from .trajectory import finish_stats, row_stats


def make_engine(W, model, method, sparse_below=0.0):
    """The engine for ``model`` and ``method`` ("euler", "heun" or "rk4") on W (n, m)."""
    if not model.interference or model.n == 1:
        return RowsEngine(W, model, method)
    return DenseEngine(W, model, method, sparse_below)


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
    """Rows with interference: BLAS products on the columns that still hold a nonzero.

    With L1 on, every step that starts with at most ``sparse_below`` of the weights
    nonzero is taken by :class:`SparseEngine` (both compute the steps of
    ``forces.reference_step``; they agree to rounding).
    """

    def __init__(self, W, model, method, sparse_below=0.0):
        self.model, self.method = model, method
        self.sparse_below = sparse_below if model.l1 else 0.0
        self.dense_above = int(np.floor(self.sparse_below * W.size))
        self.sparse = None
        self.W = W
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
                    self.sparse = SparseEngine(self.W, self.model, self.method, self.dense_above)
                self.sparse.sync()
                self.sparse.run(t, j, t1, dt, j_end - j, stop_nnz, conv_tol, conv_window, out)
                t, j, status = float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])
                if status == K.STATUS_DENSE:
                    status = K.STATUS_DONE
            else:
                t, j, status = self._run_dense(t, j, t1, dt, j_end, stop_nnz, conv_tol, conv_window, out)
        out[K.OUT_T], out[K.OUT_J], out[K.OUT_STATUS] = t, j, status

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
        status = K.STATUS_DONE
        while t < t1:
            t_next = K.step_end(j, t1, dt)
            h = t_next - t
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below
                ok = self.step(Wc, h)
            if not ok:
                status = K.STATUS_NONFINITE
                break
            total, changed, diff = K.dense_step_summary(Wc, self.V, mask)
            Wc, self.V = self.V, Wc
            j += 1
            t = t_next
            out[K.OUT_EVALS] += self.stages
            if not mask.all():
                W[:, cols] = Wc
                cols, Wc = cols[mask], np.ascontiguousarray(Wc[:, mask])
                mask = np.empty(cols.size, dtype=np.bool_)
                self._allocate(cols.size)
            if K.converged_after(changed, diff / h, t, conv_tol, conv_window, out):
                status = K.STATUS_CONVERGED
                break
            if stop_nnz >= 0 and np.count_nonzero(Wc, axis=1).max(initial=0) <= stop_nnz:
                status = K.STATUS_STOP
                break
            if t < t1 and j >= j_end:
                status = K.STATUS_BUDGET
                break
            if self._use_sparse(total):
                break
        W[:, cols] = Wc
        return t, j, status

    def stats(self):
        return row_stats(self.W, self.model)

    def fork(self):
        return DenseEngine(self.W.copy(), self.model, self.method, self.sparse_below)


class SparseEngine:
    """Rows with interference and L1 once sparse: O(working set) numba steps."""

    def __init__(self, W, model, method, dense_above):
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
        K.sparse_run(self.W, self.U, self.widx, self.wcnt, self.ws, self.Kc, self.Fc, self.newv,
                     self.colrows, self.colstart, self.colcnt, self.colfill, self.touched,
                     self.acc, self.nbr, self.inlist, self.pos, self.cand, self.candmark, self.candlist,
                     t, j, t1, dt, jmax, self.a, self.b, self.euler, self.fb, self.model.c,
                     self.model.l1_strength, stop_nnz, self.dense_above, conv_tol, conv_window, out)


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
        engines = [make_engine(W.copy(), tiny, method)]
        if tiny.interference or dense:
            engines.append(DenseEngine(W.copy(), tiny, method, 0.0))
        if tiny.interference and tiny.l1:  # the sparse engine
            engines.append(DenseEngine(W, tiny, method, 1.0))
        out = np.zeros(K.OUT_SIZE)
        for engine in engines:
            engine.run(0.0, 0, 1e-3, 1e-3, 1, -1, 1e-12, 1.0, out)
            engine.stats()
    return time.perf_counter() - tick
