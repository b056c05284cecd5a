"""Plain NumPy references of the numba kernels of flowsim.reduced (used only by tests).

Each is written from the formula, not from the kernel: the kernel tests hold them equal
(bitwise where the operations are the same, else to a stated tolerance).
"""
import numpy as np


def reduced_weights(W0, A, B):
    """The affine map of the paper, ``sign(W0) · max(A |W0| - B, 0)``.

    W0 : (n, m); A, B : (n,). Returns (n, m).
    """
    W0 = np.asarray(W0, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)[:, None]
    B = np.asarray(B, dtype=np.float64)[:, None]
    return np.sign(W0) * np.maximum(A * np.abs(W0) - B, 0.0)


def materialise_reference(W0, a1, A, s):
    """Reference of ``_materialise_kernel`` (same operations, same rounding)."""
    W0 = np.asarray(W0, dtype=np.float64)
    v = s[:, None] - A[:, None] * (a1[:, None] - np.abs(W0))
    return np.where((W0 != 0) & (v > 0), np.sign(W0) * v, 0.0)


def prefix_power_sums_reference(x):
    """Reference of ``_prefix_power_sums`` (extended-precision cumsum).

    Returns 4 arrays, each (n, m + 1).
    """
    x = np.asarray(x, dtype=np.longdouble)
    out = []
    for p in range(1, 5):
        cs = np.cumsum(x**p, axis=1)
        out.append(np.concatenate([np.zeros((x.shape[0], 1)), cs.astype(np.float64)], axis=1))
    return out


def alive_reference(d_row, nz, A, s):
    """Reference of ``_alive_count`` (searchsorted, then exact fix-up)."""
    if nz == 0:
        return 0
    k = int(np.searchsorted(d_row[:nz], s / A, side="left"))
    while k > 0 and not A * d_row[k - 1] < s:
        k -= 1
    while k < nz and A * d_row[k] < s:
        k += 1
    return k


def rhs_reference(d, nz, P1, P2, y, c_fb, lam_l1):
    """Reference of ``_rhs_kernel``: derivative of y = (A_0, s_0, A_1, ...), (2 n,)."""
    A = y[0::2]
    s = y[1::2]
    k = np.array([alive_reference(d[i], nz[i], A[i], s[i]) for i in range(nz.size)])
    rows = np.arange(nz.size)
    N = k * s * s - 2.0 * s * A * P1[rows, k] + A * A * P2[rows, k]
    g = np.where(k > 0, c_fb * (1.0 - N), 0.0)
    out = np.empty_like(y)
    out[0::2] = g * A
    out[1::2] = g * s - lam_l1
    return out


def terminal_rhs_reference(ties, s, c_fb, lam_l1):
    """(u', s') of a row whose only alive weights are its ``ties`` largest, all = s.

    u = ln A: u' = c_fb (1 - N), s' = c_fb (1 - N) s - λ with N = ties·s² (s > 0);
    nothing alive (s <= 0): (0, -λ).
    """
    if s <= 0:
        return 0.0, -lam_l1
    g = c_fb * (1.0 - ties * s * s)
    return g, g * s - lam_l1


def step_rate_reference(W_old, W_new, h):
    """Convergence rule on one step: (support changed, max |ΔW| / h) per row."""
    changed = np.any((W_old != 0) != (W_new != 0), axis=1)
    return changed, np.abs(W_new - W_old).max(axis=1) / h
