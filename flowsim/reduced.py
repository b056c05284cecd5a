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
  analytic (block-diagonal, sparse) Jacobian needs a few thousand.

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
from .trajectory import RunStats, Trajectory

#: ODE methods of scipy.integrate.solve_ivp accepted by :func:`solve_reduced`.
ODE_METHODS = ("Radau", "BDF", "LSODA", "DOP853", "RK45")
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
def _alive_count(d_row, nz, A, s):
    """Number of l < nz with ``A * d_row[l] < s`` (d_row ascending, A > 0)."""
    lo = 0
    hi = nz
    while lo < hi:
        mid = (lo + hi) >> 1
        if A * d_row[mid] < s:
            lo = mid + 1
        else:
            hi = mid
    return lo


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
        g = 0.0
        if k > 0:
            N = k * s * s - 2.0 * s * A * P1[i, k] + A * A * P2[i, k]
            g = c_fb * (1.0 - N)
        out[2 * i] = g * A
        out[2 * i + 1] = g * s - lam_l1


@numba.njit(cache=True)
def _jac_kernel(d, nz, P1, P2, y, c_fb, out):
    """Jacobian blocks, written in CSC order of the interleaved state.

    out : (4 n,) — for row i: J[A,A], J[s,A], J[A,s], J[s,s].
    """
    for i in range(nz.size):
        A = y[2 * i]
        s = y[2 * i + 1]
        k = _alive_count(d[i], nz[i], A, s)
        jaa = jsa = jas = jss = 0.0
        if k > 0:
            p1 = P1[i, k]
            p2 = P2[i, k]
            N = k * s * s - 2.0 * s * A * p1 + A * A * p2
            g = c_fb * (1.0 - N)
            NA = 2.0 * (A * p2 - s * p1)
            Ns = 2.0 * (k * s - A * p1)
            jaa = g - c_fb * A * NA
            jas = -c_fb * A * Ns
            jsa = -c_fb * s * NA
            jss = g - c_fb * s * Ns
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
    relvar = np.full((T, n), np.nan)
    ok = (k > 0) & (l1 > 0)
    relvar[ok] = np.maximum(l2sq[ok] * k[ok] / l1[ok] ** 2 - 1.0, 0.0)
    relvar[k == 1] = 0.0
    loss = np.zeros((T, n))
    if model.feature_benefit:
        loss += (1.0 - l2sq) ** 2
    if model.l1:
        loss += model.lam * l1
    return dict(l1=l1, nnz=k, l2sq=l2sq, l4=l4, relvar=relvar, loss=loss)


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
        Accepted solver steps, right-hand-side and Jacobian evaluations.
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
    return time.perf_counter() - t0


def reduced_path(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                 ode_method="Radau", progress=None, rows: SortedRows | None = None
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
    save_at = np.asarray(save_at, dtype=np.float64)
    if rows is None:
        rows = sort_rows(W0)
    n = rows.nz.size
    c_fb = model.c if model.feature_benefit else 0.0
    lam_l1 = model.l1_strength
    d, nz, P1, P2 = rows.d, rows.nz, rows.P1, rows.P2
    y0 = np.empty(2 * n)
    y0[0::2] = 1.0
    y0[1::2] = rows.a1

    last_report = [time.perf_counter()]

    def fun(t, y):
        out = np.empty_like(y)  # solvers keep references: a new array every call
        _rhs_kernel(d, nz, P1, P2, y, c_fb, lam_l1, out)
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
            _jac_kernel(d, nz, P1, P2, y, c_fb, data)
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
    stop_now = False
    if max_nnz is not None:
        cand = np.flatnonzero(nz > max_nnz)
        if cand.size == 0:
            stop_now = True
        else:
            d_next = d[cand, max_nnz]

            def sparse_event(t, y):
                # the (max_nnz+1)-th largest weight of the slowest row (negative: dead)
                return float(np.max(y[2 * cand + 1] - y[2 * cand] * d_next))

            sparse_event.terminal = True
            sparse_event.direction = -1.0
            events = [sparse_event]

    counter = [0]
    t_max = float(save_at[-1])
    if stop_now or t_max == 0.0:
        ts, ys, status, nfev, njev = save_at[:1], y0[:, None], (
            "sparse" if stop_now else "completed"), 0, 0
    else:
        sol = scipy.integrate.solve_ivp(
            fun, (0.0, t_max), y0, method=_counting(getattr(scipy.integrate, ode_method),
                                                    counter),
            t_eval=save_at, events=events, rtol=rtol, atol=atol, **options)
        if sol.status < 0:
            raise DivergenceError(f"reduced solver ({ode_method}) failed: {sol.message}",
                                  t=float(sol.t[-1]) if len(sol.t) else 0.0, step=counter[0])
        ts, ys, nfev, njev = sol.t, sol.y, int(sol.nfev), int(sol.njev)
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
    return ReducedPath(
        t=np.asarray(ts, dtype=np.float64), A=np.ascontiguousarray(ys[0::2].T),
        top=np.ascontiguousarray(ys[1::2].T), a1=rows.a1, status=status, steps=counter[0],
        nfev=nfev, njev=njev, compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - t_start)


def solve_reduced(model: Model, W0, save_at, *, rtol=1e-10, atol=1e-13, max_nnz=None,
                  snapshots=False, ode_method="Radau", progress=None) -> Trajectory:
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
        One of :data:`ODE_METHODS`; implicit ones get the analytic Jacobian.
    progress : callable(t) or None
        Called from the right-hand side at most every 0.2 s of wall time.

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
    wall = time.perf_counter() - t0 - path.compile_seconds
    stats = RunStats(
        status=path.status, t_end=float(path.t[-1]), steps=path.steps,
        force_evals=path.nfev, wall_seconds=wall, compile_seconds=path.compile_seconds,
        message=f"scipy {ode_method}: {path.steps} steps, {path.nfev} rhs, "
                f"{path.njev} jacobian evaluations")
    return Trajectory(
        model=model, method="reduced", dt=None, t=path.t, l1=st["l1"], nnz=st["nnz"],
        l2sq=st["l2sq"], l4=st["l4"], relvar=st["relvar"], loss=st["loss"], W=W,
        stats=stats, snapshot_t=snap_t, snapshots=snaps,
        options=dict(rtol=rtol, atol=atol, ode_method=ode_method, max_nnz=max_nnz))
