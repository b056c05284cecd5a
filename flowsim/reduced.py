"""Exact interference-free solution: one affine map per row, a 2-D ODE per row.

With interference off the rows are independent, and every nonzero weight of row i
follows the same affine map of its initial absolute value (paper, Appendix B)::

    |W_ik(t)| = max(A_i(t) |W_ik(0)| - B_i(t), 0),   sign kept, exact zeros stay zero,
    A' = fb c (1 - N) A,   B' = fb c (1 - N) B + l1 λ,   A(0) = 1, B(0) = 0,

with N_i = ‖W_i‖² and fb, l1 the force switches (0/1). Sorting each row's nonzero
|W_ik(0)| descending, a_1 ≥ a_2 ≥ ..., every statistic of the row is a polynomial in
(A, B) and prefix sums of powers of the a_l, evaluated at the alive count
m′ = #{l : A a_l > B}.

Numerical choices:

* **State (A, s) with s = A a_1 - B**, the current value of the row's largest weight
  (negative once every weight is gone). B/A tends to a_1 as the row sparsifies, so
  ``A a_l - B`` cancels catastrophically late in training; with the gaps
  d_l = a_1 - a_l (ascending) the alive weights are ``s - A d_l``, well conditioned.
* **Terminal phase (u, s), u = ln A.** Once the weights left are the row's largest
  (tied) ones, all with d_l = 0, A no longer enters the weights, but it keeps growing
  like exp(λt/w*) (w* the surviving weight) and A² overflows near λt ≈ 350. From the
  step on which the last weight with d_l > 0 dies, the row integrates
  u' = fb c (1 - N), s' = fb c (1 - N) s - l1 λ instead: the same flow, bounded for
  every t. Dead weights stay dead (at s = A d_l, (s - A d_l)' = -λ < 0), so the
  weights only need A d_l ≥ s there: A is reported saturated at 2^255 (``log_A`` is
  the true ln A).
* **Radau IIA per row** (:mod:`flowsim._radau`, a numba port of scipy's Radau): once
  ‖W_i‖ ≈ 1 the norm relaxes at rate ~2c while the row sparsifies on the time scale
  1/λ, a stiff system; each row takes its own steps (~0.5 µs each). scipy's solvers
  (``"Radau"``, ``"LSODA"``, ...) integrate all rows jointly as the reference (up to
  the terminal phase: they keep (A, s) and overflow on long runs).

N is C¹ in (A, s) (a weight leaves the sum quadratically), so the adaptive solver copes
with the kinks where m′ changes. When the L1 force is inactive (switched off or λ = 0)
nothing dies, B ≡ 0 and the weights are exactly ``A W0``; statistics and weights are
then computed from that form so that every nonzero initial weight stays nonzero.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import scipy.integrate
import scipy.sparse

from . import _radau as rd
from ._reduced_kernels import (
    ROW, _DONE, _RUNNING, _advance,
    _init_rows, _jac_kernel, _materialise_kernel, _moments_kernel,
    _prefix_power_sums, _rhs_kernel, _stretch,
)
from .errors import DivergenceError, check_float, check_int, invalid
from .model import Model
from .trajectory import RunStats, Trajectory, finish_stats

#: ODE methods of :func:`solve_reduced`: the numba Radau port, then solve_ivp methods.
ODE_METHODS = ("radau-numba", "Radau", "BDF", "LSODA", "DOP853", "RK45")
_IMPLICIT = ("Radau", "BDF", "LSODA")
#: Rows up to which the Jacobian is passed dense rather than sparse.
_DENSE_JAC_ROWS = 8


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
    ties : ndarray, shape (n,), int64
        Number of weights equal to the row's largest (d = 0; 0 for an all-zero row).
    """

    a1: np.ndarray
    nz: np.ndarray
    d: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    P3: np.ndarray
    P4: np.ndarray
    totals: np.ndarray
    ties: np.ndarray


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
    ties = np.array([np.searchsorted(d[i, :nz[i]], 0.0, side="right") for i in range(n)],
                    dtype=np.int64)
    return SortedRows(a1=a1, nz=nz, d=d, P1=P[0], P2=P[1], P3=P[2], P4=P[3], totals=totals,
                      ties=ties)


# --------------------------------------------------------------- weights and stats
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
        Stretch factor A_i(t) that materialises the weights: the true A, except in a
        row's terminal phase (only its tied largest weights alive), where any A with
        A d ≥ s gives the same weights and A is saturated at 2^255.
    log_A : ndarray, shape (T, n)
        ln A_i(t), the true value (finite for every t).
    top : ndarray, shape (T, n)
        s_i(t) = A_i a_1 - B_i, the current value of each row's largest weight
        (negative once every weight of the row is zero).
    a1 : ndarray, shape (n,)
        Largest initial |W0_ik| of each row.
    status : str
        ``"completed"``, ``"sparse"`` (stopped at the time every row had at most
        ``max_nnz`` nonzeros; that time is ``t[-1]``) or ``"converged"`` (stopped a
        ``window`` after ``t_converged``).
    steps, rejected, nfev, njev : int
        Accepted and rejected steps, right-hand-side and Jacobian evaluations (for
        ``"radau-numba"`` summed over the rows, each of which takes its own steps;
        rejected = -1: not reported by the scipy solver).
    h_min, h_max : float
        Smallest and largest accepted step over all rows (NaN: no step).
    t_converged : float
        First time from which the convergence rule held for a whole window (NaN).
    compile_seconds, wall_seconds : float
    """

    t: np.ndarray
    A: np.ndarray
    log_A: np.ndarray
    top: np.ndarray
    a1: np.ndarray
    status: str
    steps: int
    rejected: int
    nfev: int
    njev: int
    h_min: float
    h_max: float
    t_converged: float
    compile_seconds: float
    wall_seconds: float

    @property
    def B(self) -> np.ndarray:
        """Shift B_i(t) = A_i a_1 - s_i, shape (T, n) (ill-conditioned late in a run)."""
        return self.A * self.a1 - self.top


def _check_model(model: Model):
    if model.interference:
        raise invalid("method", "reduced",
                      "needs interference=False (the reduced solver is exact only without "
                      "interference)")


_WARM = set()


def _warm_up(part="radau-numba") -> float:
    """Compile (or load from cache) the kernels of ``part`` once per process.

    part : ``"stats"`` (sorting, statistics, weights), ``"radau-numba"`` (those and the
    per-row integrator) or a scipy method (those and the joint right-hand side and
    Jacobian). Returns seconds.
    """
    need = {"stats", part if part in ("stats", "radau-numba") else "scipy"}
    todo = need - _WARM
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    x = np.array([[0.0, 0.5]])
    P = [np.empty((1, 3)) for _ in range(4)]
    nz = np.array([2], dtype=np.int64)
    if "stats" in todo:
        _prefix_power_sums(x, *P)
        A = np.ones((1, 1))
        k = np.empty((1, 1), dtype=np.int64)
        _moments_kernel(x, nz, *P, A, A, k, *(np.empty((1, 1)) for _ in range(3)))
        _materialise_kernel(x, np.ones(1), np.ones(1), np.ones(1), np.empty((1, 2)))
    if "scipy" in todo:
        y = np.array([1.0, 1.0])
        _rhs_kernel(x, nz, P[0], P[1], y, 1.0, 0.1, np.empty(2))
        _jac_kernel(x, nz, P[0], P[1], y, 1.0, np.empty(4))
    if "radau-numba" in todo:
        rows = SortedRows(np.ones(1), nz, x, *P, None, nz)
        _RowRun(rows, np.array([0.0, 1.0]), 1.0, 0.1, 1e-6, 1e-9, np.full(1, 0.5), 1e-3,
                1.0).advance(1)
    _WARM.update(todo)
    return time.perf_counter() - t0


#: Target wall time of one call of the numba integrator (between progress reports).
_CALL_SECONDS = 0.02


class _RowRun:
    """Every row's Radau state and model state, advanced by :func:`_advance`."""

    def __init__(self, rows, save_at, c_fb, lam_l1, rtol, atol, ev, conv_tol, window):
        n = rows.nz.size
        self.rows, self.save_at = rows, save_at
        self.args = (c_fb, lam_l1, conv_tol, window)
        self.st = rd.new_states(n)
        self.row = np.zeros(n, dtype=(np.record, ROW))
        self.ws = rd.new_work(rtol, atol)
        self.out = [np.full((save_at.size, n), np.nan) for _ in range(3)]
        _init_rows(rows.d, rows.nz, rows.P1, rows.P2, rows.ties, rows.a1, c_fb, lam_l1,
                   ev, float(save_at[-1]), self.st, self.row, self.ws)
        self.clock = [time.perf_counter(), 0.0]

    def advance(self, budget):
        r = self.rows
        return _advance(r.d, r.nz, r.P1, r.P2, r.ties, *self.args, self.save_at, budget,
                        self.st, self.row, self.ws, *self.out)

    def run(self, progress):
        """Call :meth:`advance` until no row runs, reporting progress between calls.

        The step budget per call adapts so that a call takes about ``_CALL_SECONDS``;
        progress gets the time every running row has reached (only increasing).
        """
        budget = 64
        status = self.row["status"]
        while status.min() >= 0 and np.any(status == _RUNNING):
            t0 = time.perf_counter()
            self.advance(budget)
            elapsed = time.perf_counter() - t0
            grow = _CALL_SECONDS / elapsed if elapsed > 0 else 8.0
            budget = int(min(max(budget * min(grow, 8.0), 1), 1 << 24))
            running = status == _RUNNING
            if progress is not None and running.any():
                now = time.perf_counter()
                t_now = float(self.st["t"][running].min())
                if now - self.clock[0] >= 0.2 and t_now > self.clock[1]:
                    self.clock[:] = [now, t_now]
                    progress(t_now)
        bad = np.flatnonzero(status < 0)
        if bad.size:
            i = int(bad[0])
            t = float(self.st["t"][i])
            raise DivergenceError(
                f"reduced solver (radau-numba) failed on row {i} at t={t:.6g}: "
                f"{rd.FAILURES[int(status[i])]}", t=t, step=int(self.st["steps"].sum()))

    def restart_to(self, t_end, cap, clear_event):
        """Rows below ``t_end`` run on to it (their convergence end limited to cap)."""
        row = self.row
        row["ev"][clear_event] = np.nan
        row["t_end"] = t_end
        row["cap"] = cap
        row["status"] = np.where(self.st["t"] >= t_end, _DONE, _RUNNING)


def _numba_path(rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, conv, progress):
    """Integrate every row with the Radau port; stop rules as in :func:`solve_reduced`.

    Rows never run past a lower bound of the stop time: candidate rows of the max_nnz
    event (``cand``) run first, each to its event; t* is the latest event. With the
    convergence rule ``conv = (tol, window)`` a row runs until its own rule has held
    for a window since its last violation (a lower bound of the converged time, since
    the rule must hold for every row), and rows that stopped earlier catch up to the
    latest such end; this repeats until every row sits at the same end.

    Returns
    -------
    ts, A, log_A, top, status, t_converged, run
    """
    n = rows.nz.size
    t_max = float(save_at[-1])
    ev = np.full(n, np.nan)
    is_cand = np.zeros(n, dtype=bool)
    if cand is not None:
        ev[cand] = d_next
        is_cand[cand] = True
    tol, window = conv if conv is not None else (0.0, 0.0)
    run = _RowRun(rows, save_at, c_fb, lam_l1, rtol, atol, ev, tol, window)
    row, st = run.row, run.st
    while True:
        # the stop time is min(τ, t*); run no row past a lower bound of either
        tau = min(row["t_quiet"].max() + window, t_max) if conv is not None else t_max
        evented = np.isfinite(row["t_event"])
        t_star, lb = math.inf, t_max
        if cand is not None:
            # t* is the latest event; a candidate still running has its event ahead
            lb = float(np.where(evented, row["t_event"], st["t"])[cand].max())
            t_star = lb if evented[cand].all() else math.inf
        t_end = min(tau, t_star)
        if np.all(st["t"] >= t_end):
            break
        run.restart_to(min(tau, lb), min(lb, t_max), evented)
        seeking = is_cand & ~evented
        row["t_end"][seeking] = tau
        row["cap"][seeking] = t_max
        row["status"][seeking & (st["t"] < tau)] = _RUNNING
        run.run(progress)
    status = "sparse" if t_star <= tau else "converged" if t_end < t_max else "completed"
    t_conv = float(t_end - window) if status == "converged" else math.nan
    if status == "completed":
        ts = save_at.copy()
        A, top, log_A = run.out
        return ts, A, log_A, top, status, t_conv, run
    keep = save_at < t_end
    A_star = np.array([_stretch(p, y) for p, y in zip(row["phase"], st["y"][:, 0])])
    log_A_star = np.where(row["phase"] == 0, np.log(st["y"][:, 0]), st["y"][:, 0])
    s_star = st["y"][:, 1].copy()
    if status == "sparse":
        # the slowest row sits on its event (to ~1e-14 in t) with the weight just dead
        # (s <= A d); make that weight, and every candidate's, exactly dead at t*
        s_star[cand] = np.minimum(s_star[cand], A_star[cand] * d_next)
    ts = np.append(save_at[keep], t_end)
    out = [np.concatenate([o[keep], x[None]]) for o, x in zip(run.out, (A_star, s_star,
                                                                         log_A_star))]
    return ts, out[0], out[2], out[1], status, t_conv, run


def _counting(cls, counter):
    """Subclass of a scipy OdeSolver counting accepted steps and their extreme lengths.

    counter : [steps, smallest step, largest step], updated in place.
    """

    class Counting(cls):
        def _step_impl(self):
            t_old = self.t
            ok, message = super()._step_impl()
            if ok:
                h = abs(self.t - t_old)
                counter[0] += 1
                counter[1] = min(counter[1], h)
                counter[2] = max(counter[2], h)
            return ok, message

    Counting.__name__ = "Counting" + cls.__name__
    return Counting


def _scipy_jacobian(arrays, n, c_fb, ode_method):
    """solve_ivp options passing the analytic Jacobian of the joint system (implicit
    methods): dense up to _DENSE_JAC_ROWS rows, else sparse CSC; banded for LSODA."""
    if ode_method not in _IMPLICIT:
        return {}
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

    return dict(jac=jac, lband=1, uband=1) if ode_method == "LSODA" else dict(jac=jac)


def _scipy_path(rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, ode_method,
                progress):
    """Integrate all rows jointly with scipy.integrate.solve_ivp (the reference).

    Returns
    -------
    ts, A, log_A, top, status, t_converged (NaN), counts (dict)
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

    options = _scipy_jacobian(arrays, n, c_fb, ode_method)
    events = None
    if cand is not None:
        def sparse_event(t, y):
            # the (max_nnz+1)-th largest weight of the slowest row (negative: dead)
            return float(np.max(y[2 * cand + 1] - y[2 * cand] * d_next))

        sparse_event.terminal = True
        sparse_event.direction = -1.0
        events = [sparse_event]

    counter = [0, math.inf, 0.0]
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
    A = ys[0::2].T
    with np.errstate(divide="ignore", invalid="ignore"):
        log_A = np.log(A)
    counts = dict(steps=counter[0], rejected=-1, nfev=int(sol.nfev), njev=int(sol.njev),
                  h_min=counter[1] if counter[0] else math.nan,
                  h_max=counter[2] if counter[0] else math.nan)
    return (np.asarray(ts, dtype=np.float64), A, log_A, ys[1::2].T, status, math.nan, counts)


def reduced_path(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                 tol=None, window=10.0, ode_method="radau-numba", progress=None,
                 rows: SortedRows | None = None) -> ReducedPath:
    """Integrate the per-row (A, s) system and return it at the save times.

    Parameters are those of :func:`solve_reduced`; ``rows`` may pass precomputed
    :func:`sort_rows` of W0.

    Returns
    -------
    ReducedPath
    """
    _check_model(model)
    if ode_method not in ODE_METHODS:
        raise invalid("ode_method", ode_method, f"must be one of {', '.join(ODE_METHODS)}")
    if max_nnz is not None:
        max_nnz = check_int("max_nnz", max_nnz, 0)
    conv = None
    if tol is not None:
        conv = (check_float("tol", tol, positive=True),
                check_float("window", window, positive=True))
        if ode_method != "radau-numba":
            raise invalid("tol", tol, "the convergence stop needs ode_method='radau-numba'")
    compile_seconds = _warm_up(ode_method)
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

    counts = dict(steps=0, rejected=0, nfev=0, njev=0, h_min=math.nan, h_max=math.nan)
    if stop_now or save_at[-1] == 0.0:
        ts = save_at[:1]
        A, log_A, top = np.ones((1, n)), np.zeros((1, n)), rows.a1[None].copy()
        status, t_conv = ("sparse" if stop_now else "completed"), math.nan
    elif ode_method == "radau-numba":
        ts, A, log_A, top, status, t_conv, run = _numba_path(
            rows, save_at, c_fb, lam_l1, float(rtol), float(atol), cand, d_next, conv,
            progress)
        st = run.st
        counts = {k: int(st[k].sum()) for k in ("steps", "rejected", "nfev", "njev")}
        took = st["steps"] > 0
        counts["h_min"] = float(st["h_min"][took].min()) if took.any() else math.nan
        counts["h_max"] = float(st["h_max"][took].max()) if took.any() else math.nan
    else:
        ts, A, log_A, top, status, t_conv, counts = _scipy_path(
            rows, save_at, c_fb, lam_l1, rtol, atol, cand, d_next, ode_method, progress)
    return ReducedPath(
        t=np.asarray(ts, dtype=np.float64), A=np.ascontiguousarray(A),
        log_A=np.ascontiguousarray(log_A), top=np.ascontiguousarray(top), a1=rows.a1,
        status=status, t_converged=t_conv, compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - t_start, **counts)


def solve_reduced(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                  tol=None, window=10.0, snapshots=False, ode_method="radau-numba",
                  progress=None) -> Trajectory:
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
    tol, window : float, optional
        Convergence stop (``"radau-numba"`` only): stop once, for a whole ``window`` of
        time, on every step of every row no weight died and max|ΔW|/Δt <= ``tol``
        (status ``"converged"``; ``stats.t_converged`` is the first time from which
        that held, the run ends a window later, at the last saved time).
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
    _check_model(model)
    compile_seconds = _warm_up("stats")  # before sort_rows, which calls a kernel
    rows = sort_rows(W0)
    path = reduced_path(model, W0, save_at, rtol=rtol, atol=atol, max_nnz=max_nnz, tol=tol,
                        window=window, ode_method=ode_method, progress=progress, rows=rows)
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
        message=f"{label}: {path.steps} steps ({path.rejected} rejected), {path.nfev} rhs, "
                f"{path.njev} jacobian evaluations",
        rejected=path.rejected, h_min=path.h_min, h_max=path.h_max,
        t_converged=path.t_converged)
    return Trajectory(
        model=model, method="reduced", dt=None, t=path.t, l1=st["l1"], nnz=st["nnz"],
        l2sq=st["l2sq"], l4=st["l4"], relvar=st["relvar"], loss=st["loss"], W=W,
        stats=stats, snapshot_t=snap_t, snapshots=snaps,
        options=dict(rtol=rtol, atol=atol, ode_method=ode_method, max_nnz=max_nnz,
                     tol=tol, window=window if tol is not None else None))
