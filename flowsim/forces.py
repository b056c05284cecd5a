"""Plain NumPy reference of every force and every explicit stepper.

This module is the readable truth and the test oracle: the numba kernels in
``_kernels.py`` must agree with it. Nothing here is optimised.

Forces on W (shape (n, m)), row by row::

    feature benefit   c (1 - |W_i|²) W_i
    interference     -c Σ_{j≠i} ReLU(W_i·W_j) W_j
    L1 sign force    -λ sign(W_i)

The sign force is discontinuous at 0. Its exact (Filippov) flow keeps a weight at 0
while the other forces on it are at most λ in magnitude. The steppers treat it exactly:

* ``euler`` is Lie splitting, i.e. proximal gradient: ``W ← S_{hλ}(W + h F(W))`` with
  the soft-threshold ``S_a(w) = sign(w) max(|w| - a, 0)`` (the exact flow of the sign
  force over a step).
* ``heun`` and ``rk4`` freeze the sign pattern over the step: at the step start a
  weight is *active* if it is nonzero (sign s = sign(w)) or if it is zero and the smooth
  force on it exceeds λ (released, s = sign(F)); other zeros are pinned at exactly 0.
  The Runge-Kutta method then integrates ``dw/dt = F(w) - λ s`` on active weights
  (smooth within the step), and an active weight whose sign would flip is set to 0
  (it reached 0 inside the step; it is released again next step only if the force on it
  exceeds λ). Between deaths the flow of every alive weight is smooth, so the method
  keeps its order there; only the steps in which a weight dies lose some. Measured
  against the exact reduced solution (L1 on, interference off; tests/test_integrate.py):
  order 0.99 (euler), 2.04 (heun), 3.04 (rk4), where Strang splitting of the sign force
  is second order at best.
"""
from __future__ import annotations

import numpy as np

#: Butcher tableaux (a, b) of the explicit methods; c nodes are implied by a.
TABLEAUX = {
    "euler": (np.zeros((1, 1)), np.array([1.0])),
    "heun": (np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([0.5, 0.5])),
    "rk4": (
        np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]], dtype=float),
        np.array([1, 2, 2, 1], dtype=float) / 6.0,
    ),
}
#: Order of each explicit method for smooth problems.
ORDER = {"euler": 1, "heun": 2, "rk4": 4}
#: Embedded pairs of the adaptive methods: (a, b, b̂, q) with b the propagated solution,
#: b̂ the embedded one and q the order of the local error estimate (order of b̂ + 1).
#: ``bs32``: Bogacki & Shampine (1989), order 3 with an order-2 estimate; its last stage
#: is the new point (first same as last).
EMBEDDED = {
    "bs32": (
        np.array([[0, 0, 0, 0], [1 / 2, 0, 0, 0], [0, 3 / 4, 0, 0], [2 / 9, 1 / 3, 4 / 9, 0]]),
        np.array([2 / 9, 1 / 3, 4 / 9, 0.0]),
        np.array([7 / 24, 1 / 4, 1 / 3, 1 / 8]),
        3,
    ),
}
ORDER["bs32"] = 3


def feature_benefit(W, c=1.0):
    """``c (1 - |W_i|²) W_i`` for every row. W: (n, m) -> (n, m)."""
    W = np.asarray(W, dtype=np.float64)
    return c * (1.0 - np.sum(W * W, axis=1))[:, None] * W


def interference(W, c=1.0):
    """``-c Σ_{j≠i} ReLU(W_i·W_j) W_j`` for every row. W: (n, m) -> (n, m)."""
    W = np.asarray(W, dtype=np.float64)
    P = np.maximum(W @ W.T, 0.0)
    np.fill_diagonal(P, 0.0)
    return -c * (P @ W)


def l1_force(W, lam):
    """``-λ sign(W)`` (0 at exact zeros). W: (n, m) -> (n, m)."""
    return -lam * np.sign(np.asarray(W, dtype=np.float64))


def smooth_force(W, model):
    """Sum of the switched-on smooth forces (feature benefit, interference)."""
    W = np.asarray(W, dtype=np.float64)
    F = np.zeros_like(W)
    if model.feature_benefit:
        F += feature_benefit(W, model.c)
    if model.interference:
        F += interference(W, model.c)
    return F


def total_force(W, model):
    """Sum of all switched-on forces, with ``sign(0) = 0``. W: (n, m) -> (n, m)."""
    F = smooth_force(W, model)
    if model.l1:
        F += l1_force(W, model.lam)
    return F


def loss(W, model):
    """Total loss of the simulated model, terms of switched-off forces dropped::

        [fb] Σ_i (1 - |W_i|²)²  +  [interf] Σ_{i≠j} ReLU(W_i·W_j)²  +  [l1] λ |W|₁

    With ``c = 4`` the smooth forces are minus its gradient.
    """
    W = np.asarray(W, dtype=np.float64)
    total = 0.0
    if model.feature_benefit:
        total += float(np.sum((1.0 - np.sum(W * W, axis=1)) ** 2))
    if model.interference:
        P = np.maximum(W @ W.T, 0.0)
        np.fill_diagonal(P, 0.0)
        total += float(np.sum(P * P))
    if model.l1:
        total += model.lam * float(np.abs(W).sum())
    return total


def release_sign(F, lam):
    """The release rule: a zero weight on which the other forces sum to F leaves 0 with
    sign(F) where ``|F| > λ`` and stays pinned (0) otherwise. Elementwise; the kernels'
    ``_kernels.release_sign`` is its numba twin."""
    F = np.asarray(F, dtype=np.float64)
    return np.where(np.abs(F) > lam, np.sign(F), 0.0)


def soft_threshold(x, a):
    """``sign(x) max(|x| - a, 0)``: the exact flow of ``-sign`` over time ``a``."""
    return np.sign(x) * np.maximum(np.abs(x) - a, 0.0)


def reference_step(W, model, h, method):
    """One step of an explicit method (the definition the kernels must match).

    Parameters
    ----------
    W : ndarray, shape (n, m)
    model : Model
    h : float
        Step size.
    method : {"euler", "heun", "rk4"}

    Returns
    -------
    ndarray, shape (n, m)
        The new weights (exact zeros where the step ends at 0).
    """
    W = np.asarray(W, dtype=np.float64)
    lam = model.l1_strength
    if method == "euler":
        V = W + h * smooth_force(W, model)
        return soft_threshold(V, h * lam) if model.l1 else V
    a, b = TABLEAUX[method]
    if model.l1:
        F0 = smooth_force(W, model)
        s = np.where(W != 0, np.sign(W), release_sign(F0, lam))
    else:
        s = None
    K = []
    for i in range(len(b)):
        U = W + h * sum(a[i, j] * K[j] for j in range(i) if a[i, j] != 0.0)
        if s is None:
            K.append(smooth_force(U, model))
        else:
            K.append(np.where(s != 0, smooth_force(U, model) - lam * s, 0.0))
    V = W + h * sum(b[i] * K[i] for i in range(len(b)))
    if s is not None:
        V = np.where(V * s > 0, V, 0.0)
    return V


def embedded_step(W, model, h, method, rtol, atol):
    """One trial step of an embedded pair (the definition the adaptive kernels match).

    The propagated solution is that of :func:`reference_step` with the pair's tableau
    (frozen signs, crossing weights set to 0); the error norm is defined in
    ``flowsim._adaptive``.

    Parameters
    ----------
    W : ndarray, shape (n, m)
    model : Model
    h : float
    method : {"bs32"}
    rtol, atol : float

    Returns
    -------
    V : ndarray, shape (n, m)
    err : float
        Error norm (accept the step when <= 1; inf if a value is non-finite).
    """
    W = np.asarray(W, dtype=np.float64)
    lam = model.l1_strength
    a, b, bhat, _ = EMBEDDED[method]
    if model.l1:
        s = np.where(W != 0, np.sign(W), release_sign(smooth_force(W, model), lam))
    else:
        s = np.ones_like(W)
    K = []
    for i in range(len(b)):
        U = W + h * sum(a[i, j] * K[j] for j in range(i) if a[i, j] != 0.0)
        F = smooth_force(U, model)
        K.append(np.where(s != 0, F - lam * s, 0.0) if model.l1 else F)
    Vraw = W + h * sum(b[i] * K[i] for i in range(len(b)))
    Vhat = W + h * sum(bhat[i] * K[i] for i in range(len(b)))
    V = np.where(Vraw * s > 0, Vraw, 0.0) if model.l1 else Vraw
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e = np.abs(Vraw - Vhat) / (atol + rtol * np.maximum(np.abs(W), np.abs(V)))
        e = np.where(s == 0, 0.0, e)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(V))):
        return V, np.inf
    return V, float(e.max(initial=0.0))


def reference_adaptive(W0, model, t_end, method, rtol, atol, h0, h_cap=np.inf):
    """Integrate from t = 0 to ``t_end`` with error control (the step sequence the
    adaptive kernels must take): trial steps of :func:`embedded_step`, accepted or
    rejected and the next size chosen by ``_adaptive.control`` (steps at most ``h_cap``),
    the last step shortened to end at ``t_end``.

    Returns
    -------
    W : ndarray, shape (n, m)
    steps : list of float
        The accepted step sizes.
    rejected : int
    """
    from . import _adaptive, _kernels

    q = EMBEDDED[method][3]
    out = np.zeros(_kernels.OUT_SIZE)
    _adaptive.start(out, h0, h_cap)
    W = np.array(W0, dtype=np.float64)
    t, steps = 0.0, []
    while t < t_end:
        h = _adaptive.trial_size(t, t_end, t_end, out)
        if h < 0:
            raise FloatingPointError(f"step size underflow at t={t}")
        V, err = embedded_step(W, model, h, method, rtol, atol)
        if _adaptive.control(err, h, q, out):
            W, t = V, _adaptive.step_time(t, h, t_end)
            steps.append(h)
    return W, steps, int(out[_kernels.OUT_REJECTED])


def reference_run(W0, model, t_max, dt, method):
    """Integrate with fixed steps ``dt`` (last one shortened) up to ``t_max``.

    Returns
    -------
    ndarray, shape (n, m)
    """
    W = np.array(W0, dtype=np.float64)
    t = 0.0
    k = 0
    while t < t_max:
        t_next = min((k + 1) * dt, t_max)
        W = reference_step(W, model, t_next - t, method)
        t = t_next
        k += 1
    return W
