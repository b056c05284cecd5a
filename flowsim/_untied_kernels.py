"""numba kernels of the untied model (``flowsim.untied`` holds the NumPy reference).

Plain scalars and arrays in, results written into caller arrays; switches as floats or
bools, so that every kernel compiles once and numba's on-disk cache keeps working.

Layout is neuron-major: the state is one array ``X`` of shape (2m, n) whose first m rows
are the encoder ``E`` (``E[k, i]``: weight from input feature i into neuron k) and whose
last m rows are the transposed decoder ``Dt = Dᵀ`` (``Dt[k, j] = D[j, k]``: weight from
neuron k to output j). Row k of each is neuron k. With ``Gt[i, j] = e_i·d_j`` (the output
j for input i) and ``P[i, j] = ReLU(Gt[i, j])`` off the diagonal, the smooth forces are::

    FE[k, i] = c2 (g_i Dt[k, i] - Σ_j P[i, j] Dt[k, j])
    FD[k, j] = c2 (g_j E[k, j]  - Σ_i P[i, j] E[k, i]),     g_i = 1[Gt_ii > 0] (1 - Gt_ii)

with ``c2 = c/2``. The work of a step is a loop over the neurons that can move:

* a neuron whose encoder row is nonzero ("active"): it enters the Gram matrix;
* a neuron with E[k] = 0 feels FD[k] = 0 exactly, so its decoder row moves only under
  its own L1 force (processed while nonzero, when the decoder has L1), and its encoder
  row leaves 0 only where |FE[k, i]| > λ. Since ``|FE[k, i]| <= r_i max_j |Dt[k, j]|``
  with ``r_i = c2 (|g_i| + Σ_j P[i, j])``, a neuron with ``max_i r_i · dmax_k <= λ`` is
  skipped (a safe screen: it cannot be released this step); the others get their exact
  force and the release rule of ``_kernels.release_sign``.

P is kept as compressed rows and columns of its positive entries, so that once the
interference has resolved (P nearly empty) and the encoder is sparse, a step costs
about (active neurons) × n. Every choice depends on the state alone, so results do not
depend on how a run is chunked.
"""
from __future__ import annotations

import numba
import numpy as np

from ._kernels import (OUT_BAD, OUT_EVALS, OUT_J, OUT_STATUS, OUT_T, STATUS_CONVERGED,
                       STATUS_BUDGET, STATUS_DONE, STATUS_NONFINITE, converged_after,
                       release_sign, step_end)

_opts = dict(cache=True, nogil=True, error_model="numpy")
#: A neuron is skipped only when ``R · dmax_k · (1 + SCREEN_MARGIN) < λ`` (a rounding margin).
SCREEN_MARGIN = 1e-9
#: A step that would leave a weight this large (or non-finite) is not taken: the run
#: stops as diverged. (A clipped feature feels no force, so an overflowing run can
#: otherwise freeze at huge finite values; ``_kernels.rows_run`` uses the same bound.)
HUGE = 1e150


@numba.njit(**_opts)
def gram(UE, UD, proc, nproc, Gt):
    """``Gt[i, j] = Σ_k UE[k, i] UD[k, j]`` over the neurons ``proc[:nproc]`` (in that
    order; every other neuron must have a zero encoder row). UE, UD (m, n), Gt (n, n)."""
    n = Gt.shape[0]
    for i in range(n):
        for j in range(n):
            Gt[i, j] = 0.0
    for p in range(nproc):
        k = proc[p]
        for i in range(n):
            e = UE[k, i]
            if e != 0.0:
                for j in range(n):
                    Gt[i, j] += e * UD[k, j]


@numba.njit(**_opts)
def interference_lists(Gt, fb, itf, g, rowsum, rptr, ridx, rval, cptr, cidx, cval):
    """Gains ``g_i = fb 1[Gt_ii > 0] (1 - Gt_ii)`` and the positive off-diagonal entries
    of Gt as compressed rows (rptr (n+1), ridx, rval: for input i, the outputs j with
    their value) and compressed columns (cptr, cidx, cval: for output j, the inputs i).
    ``rowsum[i] = Σ_j P[i, j]``. With ``itf == 0`` the lists are empty."""
    n = Gt.shape[0]
    for i in range(n):
        a = Gt[i, i]
        g[i] = fb * (1.0 - a) if a > 0.0 else 0.0
    for j in range(n + 1):
        cptr[j] = 0
    q = 0
    for i in range(n):
        rptr[i] = q
        s = 0.0
        if itf != 0.0:
            for j in range(n):
                v = Gt[i, j]
                if v > 0.0 and i != j:
                    ridx[q] = j
                    rval[q] = v
                    q += 1
                    s += v
                    cptr[j + 1] += 1
        rowsum[i] = s
    rptr[n] = q
    for j in range(n):
        cptr[j + 1] += cptr[j]
    fill = cptr[:n].copy()
    for i in range(n):
        for p in range(rptr[i], rptr[i + 1]):
            j = ridx[p]
            cidx[fill[j]] = i
            cval[fill[j]] = rval[p]
            fill[j] += 1
    return q


@numba.njit(**_opts)
def neuron_forces(UE, UD, proc, nproc, c2, itf, g, rowsum, dmax, lamE, l1E, stage0, SE,
                  rptr, ridx, rval, cptr, cidx, cval, FE, FD):
    """Smooth forces FE[k], FD[k] (rows of (m, n) arrays) of the neurons ``proc[:nproc]``.

    FD[k] is computed in full (from the support of UE[k]). FE[k] in full when the
    encoder has no L1 (``not l1E``); with L1 only where it can matter: at the step start
    (``stage0``) on the nonzeros of UE[k] and on the zeros that the per-entry screen
    ``c2 (|g_i Dt[k, i]| + rowsum_i dmax_k) < λ`` does not rule out of a release; at later
    stages where the frozen sign ``SE[k, i]`` is nonzero. Elsewhere FE[k, i] = 0, which
    the steps treat exactly as a force of at most λ on a zero weight: it stays 0.
    """
    n = UE.shape[1]
    ci = c2 * itf
    for p in range(nproc):
        k = proc[p]
        for j in range(n):
            FD[k, j] = c2 * g[j] * UE[k, j]
        if ci != 0.0:
            for i in range(n):
                e = UE[k, i]
                if e != 0.0:
                    for q in range(rptr[i], rptr[i + 1]):
                        FD[k, ridx[q]] -= ci * rval[q] * e
        if not l1E:
            for i in range(n):
                FE[k, i] = c2 * g[i] * UD[k, i]
            if ci != 0.0:
                for j in range(n):
                    d = UD[k, j]
                    if d != 0.0:
                        for q in range(cptr[j], cptr[j + 1]):
                            FE[k, cidx[q]] -= ci * cval[q] * d
            continue
        dk = dmax[k]
        for i in range(n):
            if stage0:
                need = UE[k, i] != 0.0 or (
                    c2 * (abs(g[i] * UD[k, i]) + itf * rowsum[i] * dk) * (1.0 + SCREEN_MARGIN) >= lamE)
            else:
                need = SE[k, i] != 0.0
            f = 0.0
            if need:
                f = c2 * g[i] * UD[k, i]
                if ci != 0.0:
                    for q in range(rptr[i], rptr[i + 1]):
                        f -= ci * rval[q] * UD[k, ridx[q]]
            FE[k, i] = f


@numba.njit(**_opts)
def _row_max_abs(A, k):
    best = 0.0
    for i in range(A.shape[1]):
        v = abs(A[k, i])
        if v > best:
            best = v
    return best


@numba.njit(**_opts)
def _row_nnz(A, k):
    c = 0
    for i in range(A.shape[1]):
        if A[k, i] != 0.0:
            c += 1
    return c


@numba.njit(**_opts)
def active_neurons(nzE, proc):
    """Write the neurons with a nonzero encoder row into ``proc`` (ascending); returns
    their count."""
    q = 0
    for k in range(nzE.shape[0]):
        if nzE[k] > 0:
            proc[q] = k
            q += 1
    return q


@numba.njit(**_opts)
def screened_neurons(nzE, nzD, dmax, R, lamE, l1E, l1D, proc, nact):
    """Append to the active neurons ``proc[:nact]`` the others a step must compute
    (ascending): a zero encoder row with a nonzero decoder row that has an L1 force, or
    that may release an encoder weight (no L1 on E, or the screen ``R dmax_k`` does not
    rule it out). Returns the new count."""
    q = nact
    for k in range(nzE.shape[0]):
        if nzE[k] == 0 and nzD[k] > 0:
            if l1D or (not l1E) or R * dmax[k] * (1.0 + SCREEN_MARGIN) >= lamE:
                proc[q] = k
                q += 1
    return q


@numba.njit(**_opts)
def _stage_forces(UE, UD, proc, nproc, fb, itf, c2, lamE, l1E, SE, dmax, Gt, g, rowsum, rptr,
                  ridx, rval, cptr, cidx, cval, FE, FD):
    gram(UE, UD, proc, nproc, Gt)
    interference_lists(Gt, fb, itf, g, rowsum, rptr, ridx, rval, cptr, cidx, cval)
    neuron_forces(UE, UD, proc, nproc, c2, itf, g, rowsum, dmax, lamE, l1E, False, SE,
                  rptr, ridx, rval, cptr, cidx, cval, FE, FD)


@numba.njit(**_opts)
def _screen_bound(g, rowsum, c2, itf):
    R = 0.0
    for i in range(g.shape[0]):
        r = c2 * (abs(g[i]) + itf * rowsum[i])
        if r > R:
            R = r
    return R


@numba.njit(**_opts)
def _euler_update(X, F, proc, nproc, h, lamE, lamD, l1E, l1D, V):
    """V = S_{hλ}(X + h F) on the rows of the processed neurons (plain Euler for a factor
    without L1). Returns whether every value is finite and below HUGE in magnitude."""
    m = X.shape[0] // 2
    ok = True
    for p in range(nproc):
        for half in range(2):
            r = proc[p] + half * m
            use = l1E if half == 0 else l1D
            thr = h * (lamE if half == 0 else lamD)
            for i in range(X.shape[1]):
                x = X[r, i] + h * F[r, i]
                if use:
                    y = abs(x) - thr
                    x = (y if x > 0.0 else -y) if y > 0.0 else 0.0
                if not abs(x) < HUGE:
                    ok = False
                V[r, i] = x
    return ok


@numba.njit(**_opts)
def _stage_derivative(F, S_, proc, nproc, lamE, lamD, l1E, l1D, Kst):
    """Kst = F - λ s on active weights, 0 on pinned ones (for a factor with L1); else F."""
    m = F.shape[0] // 2
    for p in range(nproc):
        for half in range(2):
            r = proc[p] + half * m
            use = l1E if half == 0 else l1D
            lam = lamE if half == 0 else lamD
            for i in range(F.shape[1]):
                s = S_[r, i]
                if use:
                    Kst[r, i] = F[r, i] - lam * s if s != 0.0 else 0.0
                else:
                    Kst[r, i] = F[r, i]


@numba.njit(**_opts)
def _frozen_signs(X, F, proc, nproc, lamE, lamD, l1E, l1D, S_):
    """Sign pattern of the step: sign(w), or for a zero the release rule on the force F
    at the step start; 0 for a factor without L1."""
    m = X.shape[0] // 2
    for p in range(nproc):
        for half in range(2):
            r = proc[p] + half * m
            use = l1E if half == 0 else l1D
            lam = lamE if half == 0 else lamD
            for i in range(X.shape[1]):
                w = X[r, i]
                if not use:
                    S_[r, i] = 0.0
                elif w != 0.0:
                    S_[r, i] = 1.0 if w > 0.0 else -1.0
                else:
                    S_[r, i] = release_sign(F[r, i], lam)


@numba.njit(**_opts)
def _combine(X, K, coef, nk, proc, nproc, U):
    """U = X + Σ_{j<nk} coef_j K_j on the rows of the processed neurons."""
    m = X.shape[0] // 2
    for p in range(nproc):
        for half in range(2):
            r = proc[p] + half * m
            for i in range(X.shape[1]):
                acc = X[r, i]
                for jj in range(nk):
                    if coef[jj] != 0.0:
                        acc += coef[jj] * K[jj, r, i]
                U[r, i] = acc


@numba.njit(**_opts)
def _finish(X, K, coef, S_, proc, nproc, l1E, l1D, V):
    """V = X + Σ_j coef_j K_j; a weight of a factor with L1 whose sign would flip becomes 0.
    Returns whether every value is finite and below HUGE in magnitude."""
    m = X.shape[0] // 2
    ok = True
    for p in range(nproc):
        for half in range(2):
            r = proc[p] + half * m
            use = l1E if half == 0 else l1D
            for i in range(X.shape[1]):
                acc = X[r, i]
                for jj in range(coef.shape[0]):
                    acc += coef[jj] * K[jj, r, i]
                if use and not acc * S_[r, i] > 0.0:
                    acc = 0.0
                if not abs(acc) < HUGE:
                    ok = False
                V[r, i] = acc
    return ok


@numba.njit(**_opts)
def _commit(X, V, proc, nproc, nz, dmax):
    """X ← V on the processed rows; returns (support changed, max |ΔX|) and refreshes the
    row counts nz and the decoder maxima dmax."""
    m = X.shape[0] // 2
    changed = False
    diff = 0.0
    for p in range(nproc):
        k = proc[p]
        for half in range(2):
            r = k + half * m
            for i in range(X.shape[1]):
                v = V[r, i]
                w = X[r, i]
                if (v == 0.0) != (w == 0.0):
                    changed = True
                d = abs(v - w)
                if d > diff:
                    diff = d
                X[r, i] = v
            nz[r] = _row_nnz(X, r)
        dmax[k] = _row_max_abs(X, k + m)
    return changed, diff


@numba.njit(**_opts)
def untied_run(X, U, K, S_, F, V, Gt, g, rowsum, rptr, ridx, rval, cptr, cidx, cval,
               nz, dmax, proc, t, j, t1, dt, jmax, a, b, euler, fb, itf, c2, lamE, lamD,
               l1E, l1D, conv_tol, conv_window, out):
    """Explicit steps of the untied flow from time ``t`` (grid index ``j``) towards ``t1``.

    X (2m, n) is the state [E; Dᵀ], advanced in place. Step semantics are those of
    ``flowsim.untied.reference_step``: ``euler`` is proximal (soft-threshold of each
    factor that has an L1 force), the Runge-Kutta methods (tableau a (S, S), b (S,))
    freeze the sign pattern at the step start (a zero is released where the force on it
    exceeds λ in magnitude) and set to 0 a weight whose sign would flip.

    Scratch: U, F, V, S_ (2m, n); K (S, 2m, n) (unused by euler); Gt (n, n); g, rowsum
    (n,); rptr, cptr (n+1,) int; ridx, cidx (n·n,) int; rval, cval (n·n,); proc (m,) int.
    nz (2m,) int and dmax (m,) are read and kept current: nonzeros of every row of X, and
    max_j |Dt[k, j]|.

    Stops at ``t1`` (status 0), after ``jmax`` steps (1), before a step that would produce
    a non-finite value or one beyond HUGE (3, state left at the last step) or when the convergence
    rule of ``_kernels.converged_after`` has held for ``conv_window`` (4).
    out : (OUT_SIZE,) float64 (see ``_kernels.OUT_*``).
    """
    m = X.shape[0] // 2
    S = b.shape[0]
    E, Dt, FE, FD = X[:m], X[m:], F[:m], F[m:]
    nzE, nzD = nz[:m], nz[m:]
    j0 = j
    status = STATUS_DONE
    while t < t1:
        t_next = step_end(j, t1, dt)
        h = t_next - t
        # stage 0 at the step start: Gram matrix of the active neurons, then the screen
        nact = active_neurons(nzE, proc)
        gram(E, Dt, proc, nact, Gt)
        interference_lists(Gt, fb, itf, g, rowsum, rptr, ridx, rval, cptr, cidx, cval)
        R = _screen_bound(g, rowsum, c2, itf)
        nproc = screened_neurons(nzE, nzD, dmax, R, lamE, l1E, l1D, proc, nact)
        neuron_forces(E, Dt, proc, nproc, c2, itf, g, rowsum, dmax, lamE, l1E, True, S_,
                      rptr, ridx, rval, cptr, cidx, cval, FE, FD)
        if euler:
            ok = _euler_update(X, F, proc, nproc, h, lamE, lamD, l1E, l1D, V)
        else:
            _frozen_signs(X, F, proc, nproc, lamE, lamD, l1E, l1D, S_)
            _stage_derivative(F, S_, proc, nproc, lamE, lamD, l1E, l1D, K[0])
            for st in range(1, S):
                _combine(X, K, h * a[st], st, proc, nproc, U)
                _stage_forces(U[:m], U[m:], proc, nproc, fb, itf, c2, lamE, l1E, S_, dmax, Gt, g,
                              rowsum, rptr, ridx, rval, cptr, cidx, cval, FE, FD)
                _stage_derivative(F, S_, proc, nproc, lamE, lamD, l1E, l1D, K[st])
            ok = _finish(X, K, h * b, S_, proc, nproc, l1E, l1D, V)
        if not ok:
            status = STATUS_NONFINITE
            break
        changed, diff = _commit(X, V, proc, nproc, nz, dmax)
        j += 1
        t = t_next
        out[OUT_EVALS] += S
        if converged_after(changed, diff / h, t, conv_tol, conv_window, out):
            status = STATUS_CONVERGED
            break
        if t < t1 and j - j0 >= jmax:
            status = STATUS_BUDGET
            break
    out[OUT_T] = t
    out[OUT_J] = j
    out[OUT_STATUS] = status
    out[OUT_BAD] = -1
