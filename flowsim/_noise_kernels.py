"""numba kernels of the noisy-hidden-layer model (``flowsim.noise`` is the Python face).

One instance, one full-batch step over the n basis inputs e_i, with hidden noise
ξ^(i) ∈ R^m (shared: the same ξ for every input; independent: one per input)::

    H = W + Ξ            (row i: the hidden layer on input e_i; Ξ's rows are ξ^(i))
    Z = W Hᵀ             (column i: the pre-ReLU output on input e_i)
    L = Σ_ki (ReLU(Z_ki) - δ_ki)²
    Γ = 2 [Z > 0] ⊙ (Z - I)                    (∂L/∂Z)
    ∂L/∂W = Γ H + Γᵀ W                         (decoder path + encoder path)

computed as Z = G + V with G = W Wᵀ (symmetric) and V_ki = W_k·ξ^(i), and
∂L/∂W_k = Σ_i (Γ_ki + Γ_ik) W_i + Σ_i Γ_ki ξ^(i) (with a shared ξ the last sum is
(Σ_i Γ_ki) ξ). The step is ``W ← S_{ηλ}(W - η ∂L/∂W)`` with the soft-threshold S
(the exact flow of the L1 sign force over the step, as flowsim's ``euler``).

Noise is drawn from a ``numpy.random.Generator`` passed in (numba runs NumPy's own
algorithms on its bit generator, so the stream is the one NumPy would give: the NumPy
reference in ``noise.py`` reproduces it value for value). Switches are plain scalars so
that the on-disk cache (``cache=True``) keeps working.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_opts = dict(cache=True, nogil=True, error_model="numpy")

#: Distribution codes (the order of ``noise.DISTRIBUTIONS``).
BIPOLAR, NORMAL, UNIFORM, LAPLACE = range(4)
STATUS_DONE, STATUS_NONFINITE = 0, 1
#: Layout of the ``out`` array of :func:`run` (float64, OUT_SIZE).
OUT_STEP, OUT_RECORD, OUT_STATUS, OUT_LOSS_SUM, OUT_LOSS_COUNT = range(5)
OUT_SIZE = 5


@numba.njit(**_opts)
def draw_noise(rng, dist, sigma, rows, Xi):
    """Fill the first ``rows`` rows of Xi (row-major) with noise of standard deviation σ.

    bipolar ±σ (``random() < 0.5`` gives -σ), normal σ·N(0, 1), uniform on
    [-σ√3, σ√3], Laplace with scale σ/√2. Xi : (n, m).
    """
    m = Xi.shape[1]
    if dist == BIPOLAR:
        for i in range(rows):
            for j in range(m):
                Xi[i, j] = -sigma if rng.random() < 0.5 else sigma
    elif dist == NORMAL:
        for i in range(rows):
            for j in range(m):
                Xi[i, j] = sigma * rng.standard_normal()
    elif dist == UNIFORM:
        a = sigma * math.sqrt(3.0)
        for i in range(rows):
            for j in range(m):
                Xi[i, j] = rng.uniform(-a, a)
    else:
        b = sigma / math.sqrt(2.0)
        for i in range(rows):
            for j in range(m):
                Xi[i, j] = rng.laplace(0.0, b)


@numba.njit(**_opts)
def gram(W, G):
    """G = W Wᵀ (symmetric, each entry summed once). W : (n, m), G : (n, n)."""
    n, m = W.shape
    for k in range(n):
        for i in range(k, n):
            acc = 0.0
            for j in range(m):
                acc += W[k, j] * W[i, j]
            G[k, i] = acc
            G[i, k] = acc


@numba.njit(**_opts)
def gradient(W, Xi, noisy, shared, G, Z, Gam, grad):
    """Loss Σ_i ‖ReLU(W(W_i + ξ^(i))) - e_i‖² and its gradient (into ``grad``).

    Parameters
    ----------
    W : (n, m)
    Xi : (n, m)
        Noise: row 0 when ``shared``, row i for input i otherwise; unused if not ``noisy``.
    noisy, shared : bool
    G, Z, Gam : (n, n) work arrays; grad : (n, m) output.

    Returns
    -------
    float
        The loss.
    """
    n, m = W.shape
    gram(W, G)
    for k in range(n):
        if noisy and shared:
            u = 0.0
            for j in range(m):
                u += W[k, j] * Xi[0, j]
            for i in range(n):
                Z[k, i] = G[k, i] + u
        elif noisy:
            for i in range(n):
                v = 0.0
                for j in range(m):
                    v += W[k, j] * Xi[i, j]
                Z[k, i] = G[k, i] + v
        else:
            for i in range(n):
                Z[k, i] = G[k, i]
    loss = 0.0
    for k in range(n):
        for i in range(n):
            d = 1.0 if k == i else 0.0
            z = Z[k, i]
            if z > 0.0:
                Gam[k, i] = 2.0 * (z - d)
                loss += (z - d) * (z - d)
            else:
                Gam[k, i] = 0.0
                loss += d
    for k in range(n):
        for j in range(m):
            grad[k, j] = 0.0
        for i in range(n):
            c = Gam[k, i] + Gam[i, k]
            for j in range(m):
                grad[k, j] += c * W[i, j]
        if noisy and shared:
            s = 0.0
            for i in range(n):
                s += Gam[k, i]
            for j in range(m):
                grad[k, j] += s * Xi[0, j]
        elif noisy:
            for i in range(n):
                c = Gam[k, i]
                for j in range(m):
                    grad[k, j] += c * Xi[i, j]
    return loss


@numba.njit(**_opts)
def apply_step(W, grad, eta, lam):
    """W ← S_{ηλ}(W - η grad) if every new value is finite; returns whether it was."""
    n, m = W.shape
    thr = eta * lam
    for k in range(n):
        for j in range(m):
            if not np.isfinite(W[k, j] - eta * grad[k, j]):
                return False
    for k in range(n):
        for j in range(m):
            x = W[k, j] - eta * grad[k, j]
            if lam > 0.0:
                r = abs(x) - thr
                x = (r if x > 0.0 else -r) if r > 0.0 else 0.0
            W[k, j] = x
    return True


@numba.njit(**_opts)
def encoding_stats(W, lam, G, l4, l2):
    """‖W_i‖₄⁴ and ‖W_i‖₂ into l4, l2 (n,); returns the noise-free loss (+ λ‖W‖₁)."""
    n, m = W.shape
    l1 = 0.0
    for k in range(n):
        s2 = 0.0
        s4 = 0.0
        for j in range(m):
            w2 = W[k, j] * W[k, j]
            s2 += w2
            s4 += w2 * w2
            l1 += abs(W[k, j])
        l2[k] = math.sqrt(s2)
        l4[k] = s4
    gram(W, G)
    loss = 0.0
    for k in range(n):
        for i in range(n):
            z = G[k, i] if G[k, i] > 0.0 else 0.0
            d = z - 1.0 if k == i else z
            loss += d * d
    return loss + lam * l1


@numba.njit(**_opts)
def run(W, rng, dist, sigma, shared, eta, lam, rec_steps, stop_step, l4, l2, loss, train_loss,
        snap_of, snaps, Xi, G, Z, Gam, grad, out):
    """Advance one instance from step ``out[OUT_STEP]`` to ``stop_step``, recording.

    Parameters
    ----------
    W : (n, m), updated in place.
    rng : numpy.random.Generator
    dist : int
        Distribution code; sigma : float, σ >= 0 (0: no draws at all).
    shared : bool
    eta, lam : float
    rec_steps : (R,) int64, increasing
        Steps at which to record; record r is written when the run is at rec_steps[r].
    stop_step : int
    l4, l2 : (R, n); loss, train_loss : (R,)
        Outputs: ‖W_i‖₄⁴, ‖W_i‖₂, noise-free loss, and the mean noisy training loss
        over the steps since the previous record (NaN for a record with none).
    snap_of : (R,) int64
        Index into ``snaps`` of record r, or -1.
    snaps : (S, n, m)
    Xi : (n, m); G, Z, Gam : (n, n); grad : (n, m)
        Work arrays.
    out : (OUT_SIZE,) float64
        Reads and writes the current step, the next record, the status and the running
        sum and count of noisy losses since the last record (carried across calls).
    """
    n, m = W.shape
    step = np.int64(out[OUT_STEP])
    r = np.int64(out[OUT_RECORD])
    R = rec_steps.shape[0]
    noisy = sigma > 0.0
    rows = 1 if shared else n
    out[OUT_STATUS] = STATUS_DONE
    while True:
        while r < R and rec_steps[r] == step:
            loss[r] = encoding_stats(W, lam, G, l4[r], l2[r])
            cnt = out[OUT_LOSS_COUNT]
            train_loss[r] = out[OUT_LOSS_SUM] / cnt if cnt > 0 else np.nan
            out[OUT_LOSS_SUM] = 0.0
            out[OUT_LOSS_COUNT] = 0.0
            if snap_of[r] >= 0:
                snaps[snap_of[r], :, :] = W
            r += 1
        if step >= stop_step:
            break
        if noisy:
            draw_noise(rng, dist, sigma, rows, Xi)
        lo = gradient(W, Xi, noisy, shared, G, Z, Gam, grad)
        if not apply_step(W, grad, eta, lam):
            out[OUT_STATUS] = STATUS_NONFINITE
            break
        out[OUT_LOSS_SUM] += lo
        out[OUT_LOSS_COUNT] += 1.0
        step += 1
    out[OUT_STEP] = step
    out[OUT_RECORD] = r
