"""numba kernels of the discrete optimizers (``optim.py`` is their Python face).

Each kernel takes one instance's weights ``W`` (n, m) and the smooth force ``F`` at W
(the dense engine's :meth:`~flowsim._engines.DenseEngine.smooth`, so that ``-F`` is the
gradient of the smooth part of the loss), applies one optimizer step elementwise, writes
the new weights into ``V`` and updates the optimizer state in place. The gradient of the
whole loss is ``g = -F + λ sign(W)`` with ``sign(0) = 0``. The update formulas are those
of ``torch.optim`` (SGD, Adam, AdamW; see ``optim.py``). Switches arrive as plain
scalars so that every kernel compiles once and numba's cache keeps working. The NumPy
reference is :func:`flowsim.optim.reference_update`.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_opts = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_opts)
def sgd_update(W, F, lam, lr, wd, mu, damp, nesterov, first, prox, B, V):
    """One step of SGD (with momentum when ``mu != 0``), as ``torch.optim.SGD``.

    ``g = -F + λ sign(W) + wd W``; with momentum ``b = g`` on the ``first`` step, else
    ``b = mu b + (1 - damp) g`` (B (n, m) holds b), and ``g = g + mu b`` (``nesterov``)
    or ``g = b``; then ``V = W - lr g``. With ``prox`` the L1 term is left out of g and
    applied exactly afterwards: ``V = S_{lr λ}(W - lr g)`` (soft-threshold; with
    ``wd = mu = 0`` this is the arithmetic of ``_kernels.prox_euler`` at h = lr).
    Returns False if a value of V is non-finite.
    """
    n, m = W.shape
    thr = lr * lam
    ok = True
    for i in range(n):
        for k in range(m):
            w = W[i, k]
            g = -F[i, k]
            if lam != 0.0 and not prox:
                if w > 0.0:
                    g += lam
                elif w < 0.0:
                    g -= lam
            if wd != 0.0:
                g += wd * w
            if mu != 0.0:
                b = g if first else mu * B[i, k] + (1.0 - damp) * g
                B[i, k] = b
                g = g + mu * b if nesterov else b
            x = w - lr * g
            if prox:
                r = abs(x) - thr
                x = (r if x > 0.0 else -r) if r > 0.0 else 0.0
            if not np.isfinite(x):
                ok = False
            V[i, k] = x
    return ok


@numba.njit(**_opts)
def adam_update(W, F, lam, lr, b1, b2, eps, wd, decoupled, step_size, bc2_sqrt, M, S, V):
    """One step of Adam (``decoupled`` False) or AdamW (True), as ``torch.optim``.

    ``g = -F + λ sign(W)`` (+ ``wd W`` for Adam); AdamW first decays ``w ← w (1 - lr wd)``;
    ``M ← lerp(M, g, 1 - b1)``, ``S ← b2 S + (1 - b2) g²``,
    ``V = w - step_size M / (√S / bc2_sqrt + eps)`` with ``step_size = lr / (1 - b1^t)``
    and ``bc2_sqrt = √(1 - b2^t)`` at step t (1-based). M, S: (n, m) state, updated in
    place. Returns False if a value of V is non-finite.
    """
    n, m = W.shape
    decay = 1.0 - lr * wd
    a = 1.0 - b1
    ok = True
    for i in range(n):
        for k in range(m):
            w = W[i, k]
            g = -F[i, k]
            if lam != 0.0:
                if w > 0.0:
                    g += lam
                elif w < 0.0:
                    g -= lam
            if wd != 0.0:
                if decoupled:
                    w = w * decay
                else:
                    g += wd * w
            mk = M[i, k]
            if a < 0.5:  # torch's lerp, both branches
                mk = mk + a * (g - mk)
            else:
                mk = g - (g - mk) * (1.0 - a)
            sk = S[i, k] * b2 + (1.0 - b2) * g * g
            M[i, k] = mk
            S[i, k] = sk
            x = w - step_size * (mk / (math.sqrt(sk) / bc2_sqrt + eps))
            if not np.isfinite(x):
                ok = False
            V[i, k] = x
    return ok


@numba.njit(**_opts)
def dead_columns(V):
    """Whether some column of V (n, m) is all zero."""
    n, m = V.shape
    for k in range(m):
        dead = True
        for i in range(n):
            if V[i, k] != 0.0:
                dead = False
                break
        if dead:
            return True
    return False
