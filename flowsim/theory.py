"""The paper's predictions, each a small pure function (vectorised over t).

Section 2.4 and Appendix B predict, for one row without interference, starting from
i.i.d. normal weights with ‖W_i‖ ≈ 1,

    ‖W_i(t)‖₁ = Θ(√m)        for t ≤ 1/(λ√m),
                Θ(1/(λt))    for 1/(λ√m) ≤ t ≤ 1/λ,
                Θ(1)         for t ≥ 1/λ,

or in one expression ‖W_i(t)‖₁ = 1/Θ(1/√m + λt), and m′ ≈ ‖W_i‖₁². The functions below
take the constants hidden in Θ(·) to be 1, as the paper's figures do.

Force scale c: the substitution τ = c t, λ′ = λ/c maps the flow with force scale c onto
the c = 1 flow (dW/dτ = (1-‖W‖²)W - λ′ sign W) with λ′τ = λt, so the ‖W‖₁ predictions,
functions of λt, do not depend on c. The threshold below does.
"""
from __future__ import annotations

import numpy as np
import scipy.special

from .errors import check_float, check_int, invalid


def _times(t) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise invalid("t", "<array>" if t.ndim else float(t), "every time must be finite and >= 0")
    return t


def l1_piecewise(t, m, lam) -> np.ndarray:
    """The paper's three-regime ‖W_i(t)‖₁ with unit constants.

    Parameters
    ----------
    t : array_like, shape (...)
        Times >= 0.
    m : int
        Neurons (initial nonzeros per row).
    lam : float
        L1 strength λ > 0.

    Returns
    -------
    ndarray, shape (...)
        √m for t ≤ 1/(λ√m); 1/(λt) up to t = 1/λ; 1 after (continuous at both breaks).
    """
    t = _times(t)
    m = check_int("m", m, 1)
    lam = check_float("lam", lam, positive=True)
    mid = np.divide(1.0, lam * t, out=np.full_like(t, np.inf), where=t > 0)
    return np.clip(mid, 1.0, np.sqrt(m))


def l1_smooth(t, m, lam) -> np.ndarray:
    """‖W_i(t)‖₁ = max(1/(1/√m + λt), 1) (Appendix B with unit constants).

    Parameters
    ----------
    t : array_like, shape (...)
    m : int
    lam : float
        λ >= 0.

    Returns
    -------
    ndarray, shape (...)
    """
    t = _times(t)
    m = check_int("m", m, 1)
    lam = check_float("lam", lam, minimum=0.0)
    return np.maximum(1.0 / (1.0 / np.sqrt(m) + lam * t), 1.0)


def nnz_from_l1(l1) -> np.ndarray:
    """The paper's estimate m′ ≈ ‖W_i‖₁² (nonzeros of magnitude ~1/√m′ on a unit row).

    Parameters
    ----------
    l1 : array_like, shape (...)

    Returns
    -------
    ndarray, shape (...)
    """
    return np.asarray(l1, dtype=np.float64) ** 2


def threshold(l2sq, lam, c=1.0) -> np.ndarray:
    """Sparsity threshold θ = λ / (c (1 - ‖W_i‖²)): weights above it grow, below shrink.

    Parameters
    ----------
    l2sq : array_like, shape (...)
        ‖W_i‖².
    lam : float
        λ >= 0.
    c : float
        Force scale (> 0).

    Returns
    -------
    ndarray, shape (...)
        θ, ``inf`` where ‖W_i‖² >= 1 (then every nonzero weight shrinks).
    """
    l2sq = np.asarray(l2sq, dtype=np.float64)
    lam = check_float("lam", lam, minimum=0.0)
    c = check_float("c", c, positive=True)
    gap = c * (1.0 - l2sq)
    return np.divide(lam, gap, out=np.full_like(l2sq, np.inf), where=gap > 0)


def relvar_bounds(row):
    """Lower and upper bounds of the relative variance of a row once m′ weights are left.

    Appendix B: the nonzero weights move by one affine map, so when m′ are left their
    relative variance Var/E² (population variance) lies between that of
    ``(a_1 - a_{m′+1}, ..., a_{m′} - a_{m′+1})`` (lower) and of
    ``(a_1 - a_{m′}, ..., a_{m′} - a_{m′})`` (upper), a_1 ≥ a_2 ≥ ... the sorted nonzero
    |row| and a_{M+1} := 0. O(M) via prefix sums.

    Parameters
    ----------
    row : array_like, shape (m,)
        One initial row (any signs; zeros are dropped).

    Returns
    -------
    mprime : ndarray, shape (M,), int64
        1 .. M (M = nonzeros of ``row``).
    lower, upper : ndarray, shape (M,)
        Bounds at each m′. A vector of equal values (0/0) counts as relative variance 0,
        so ``upper[0] = 0``.
    """
    row = np.asarray(row, dtype=np.float64)
    if row.ndim != 1 or not np.all(np.isfinite(row)):
        raise invalid("row", f"<array of shape {row.shape}>", "must be one finite 1-D row")
    a = np.sort(np.abs(row[row != 0]))[::-1]
    M = a.size
    k = np.arange(1, M + 1)
    if M == 0:
        return k, np.zeros(0), np.zeros(0)
    # gaps below the top weight keep the sums well conditioned (the variance is
    # shift-invariant; only the means depend on the shift)
    d = a[0] - a
    mean_d = np.cumsum(d) / k
    var = np.maximum(np.cumsum(d * d) / k - mean_d**2, 0.0)
    d_next = np.append(d[1:], a[0])  # a_1 - a_{m'+1}, with a_{M+1} = 0
    return k, _relvar(var, d_next - mean_d), _relvar(var, d - mean_d)


def _relvar(var, mean):
    mean2 = mean * mean
    return np.divide(var, mean2, out=np.zeros_like(var), where=mean2 > 0)


def halfnormal_row(m) -> np.ndarray:
    """Idealised row hitting regular percentiles of the half-normal distribution.

    ``a_k = Φ⁻¹(1 - (k - ½)/(2m))``, k = 1..m, descending (unit standard deviation;
    relative variances are scale-free). ``relvar_bounds(halfnormal_row(m))`` gives the
    paper's pink dashed curves (Figure 6).

    Parameters
    ----------
    m : int

    Returns
    -------
    ndarray, shape (m,)
    """
    m = check_int("m", m, 1)
    k = np.arange(1, m + 1)
    return scipy.special.ndtri(1.0 - (k - 0.5) / (2.0 * m))


def _counts(n, m):
    n = np.asarray(n, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    for name, v in (("n", n), ("m", m)):
        if not np.all(np.isfinite(v)) or np.any(v < 1) or np.any(v != np.round(v)):
            raise invalid(name, v.tolist() if v.size < 5 else "<array>", "must be integers >= 1")
    return n, m


def collisions_expected(n, m):
    """Expected pairs of features whose largest weights fall on one neuron, n(n-1)/(2m).

    Parameters
    ----------
    n, m : int or array_like of int (broadcast together)

    Returns
    -------
    float or ndarray
    """
    n, m = _counts(n, m)
    out = n * (n - 1) / (2.0 * m)
    return float(out) if out.ndim == 0 else out


def polysemantic_expected(n, m):
    """Expected polysemantic neurons at the end of training, n²/(4m) (Section 2.5).

    Parameters
    ----------
    n, m : int or array_like of int (broadcast together)

    Returns
    -------
    float or ndarray
    """
    n, m = _counts(n, m)
    out = n * n / (4.0 * m)
    return float(out) if out.ndim == 0 else out
