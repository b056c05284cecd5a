"""numba kernels. Plain scalars and arrays in, results written into caller arrays.

Switches arrive as floats (1.0 on, 0.0 off) so that every kernel compiles once and
numba's on-disk cache (``cache=True``) keeps working. ``forces.py`` is the reference.

Row kernels (interference off)
------------------------------
Without interference each row is on its own and, over one step with its sign pattern
frozen, every stage value of an alive weight is an affine function of its value at the
step start, ``|u| = α|w| - β``. A stage therefore needs only the row sums
``s2 = Σw²``, ``s1 = Σ|w|`` and the alive count ``k``:
``Σu² = α² s2 - 2αβ s1 + β² k``, and a whole step of any explicit method maps every
alive weight by the same ``|w| ← α|w| - β``. With the magnitudes kept sorted, the maps
are composed lazily and weights die from the bottom of the list, so a step costs O(1)
plus its deaths. (Exact zeros never come back: with interference off the force on a
zero weight is exactly 0.)
"""
from __future__ import annotations

import numba
import numpy as np

_opts = dict(cache=True, nogil=True, error_model="numpy")

STATUS_DONE, STATUS_BUDGET, STATUS_STOP, STATUS_NONFINITE, STATUS_CONVERGED, STATUS_DENSE = range(6)

#: Layout of the ``out`` array every run kernel reads and writes (float64, OUT_SIZE).
OUT_T, OUT_J, OUT_STATUS, OUT_BAD, OUT_RELEASES, OUT_STREAK, OUT_EVALS = range(7)
OUT_SIZE = 8


@numba.njit(**_opts)
def step_end(j, t1, dt):
    """End of the step after grid point ``j``: ``(j+1) dt`` on the global grid ``k dt``,
    or ``t1`` when that is reached (within 1e-9 dt)."""
    t_next = (j + 1) * dt
    return t1 if t_next >= t1 - 1e-9 * dt else t_next


@numba.njit(**_opts)
def converged_after(changed, rate, t_next, conv_tol, conv_window, out):
    """Update the convergence streak after a step ending at ``t_next``.

    The rule holds on a step when no support changed and max|ΔW|/Δt <= ``conv_tol``;
    ``out[OUT_STREAK]`` is the time from which it has held on every step since. Returns
    True once it has held for ``conv_window`` (``conv_tol <= 0`` disables the rule).
    """
    if conv_tol <= 0.0:
        return False
    if changed or rate > conv_tol:
        out[OUT_STREAK] = t_next
        return False
    return t_next - out[OUT_STREAK] >= conv_window * (1.0 - 1e-12)


@numba.njit(**_opts)
def affine_step(s1, s2, k, h, a, b, fb, c, lam, P, Q):
    """Coefficients (α, β) of one explicit step on a row without interference.

    Stage ``j`` has derivative ``P[j] |w| - Q[j]`` on every active weight, where
    ``g = fb c (1 - Σu²)`` at the stage value ``u``. ``a`` (S, S), ``b`` (S,) is the
    Butcher tableau; P, Q are (S,) scratch. Returns ``(α, β, N0)``.
    """
    S = b.shape[0]
    N0 = s2
    for st in range(S):
        al = 1.0
        be = 0.0
        for j in range(st):
            if a[st, j] != 0.0:
                al += h * a[st, j] * P[j]
                be += h * a[st, j] * Q[j]
        N = al * al * s2 - 2.0 * al * be * s1 + be * be * k
        g = fb * c * (1.0 - N)
        P[st] = g * al
        Q[st] = g * be + lam
    al = 1.0
    be = 0.0
    for st in range(S):
        al += h * b[st] * P[st]
        be += h * b[st] * Q[st]
    return al, be, N0


@numba.njit(**_opts)
def rows_materialize(W, u, perm, cnt, A, B, P1, P2, i):
    """Apply row i's pending map: u ← A u - B, W ← sign(W)·u, A = 1, B = 0, refresh sums."""
    a, b = A[i], B[i]
    p1 = 0.0
    p2 = 0.0
    for j in range(cnt[i]):
        v = a * u[i, j] - b
        u[i, j] = v
        col = perm[i, j]
        W[i, col] = v if W[i, col] > 0.0 else -v
        p1 += v
        p2 += v * v
    A[i] = 1.0
    B[i] = 0.0
    P1[i] = p1
    P2[i] = p2


@numba.njit(**_opts)
def rows_writeback(W, u, perm, cnt, A, B, i):
    """Write row i's current weights ``sign(W)·(A u - B)`` into W, keeping the lazy state."""
    a, b = A[i], B[i]
    for j in range(cnt[i]):
        v = a * u[i, j] - b
        col = perm[i, j]
        W[i, col] = v if W[i, col] > 0.0 else -v


@numba.njit(**_opts)
def rows_reverse_map(W, u, perm, cnt, A, B, P1, P2, i, al, be):
    """Apply ``|w| <- al|w| - be`` with ``al <= 0`` and frozen signs to row i.

    The map reverses the order of the magnitudes, so the sorted list is rebuilt: the
    weights with ``al|w| - be > 0`` survive (the smallest ones), the others become 0.
    """
    rows_materialize(W, u, perm, cnt, A, B, P1, P2, i)
    k = cnt[i]
    uu = u[i, :k].copy()
    pp = perm[i, :k].copy()
    q = 0
    for p in range(k - 1, -1, -1):  # ascending |w| = descending new value
        v = al * uu[p] - be
        col = pp[p]
        if v > 0.0:
            u[i, q] = v
            perm[i, q] = col
            W[i, col] = v if W[i, col] > 0.0 else -v
            q += 1
        else:
            W[i, col] = 0.0
    qq = q  # keep perm a permutation: the dead columns after the alive ones
    for p in range(k):
        if W[i, pp[p]] == 0.0:
            perm[i, qq] = pp[p]
            qq += 1
    cnt[i] = q
    rows_materialize(W, u, perm, cnt, A, B, P1, P2, i)


@numba.njit(**_opts)
def rows_run(W, u, perm, cnt, A, B, P1, P2, t, j, t1, dt, jmax, a, b, fb, c, lam, flip,
             stop_nnz, conv_tol, conv_window, out):
    """Take explicit steps on all rows from time ``t`` (grid index ``j``) towards ``t1``.

    Row i keeps its alive magnitudes sorted descending in ``u[i, :cnt[i]]`` (columns
    ``perm``), as they were when last materialised, and the composition of every step's
    map since then, ``|w| = A u - B``; ``P1``, ``P2`` are Σu, Σu² over the alive ones.
    A step is the scalar update of (A, B) plus the deaths at the bottom of the sorted
    list, O(1 + deaths); the map is materialised only when it drifts (A outside
    [1/2, 2] or B beyond a tenth of the largest weight), a rule that depends on the state
    alone, so results do not depend on where calls or save times fall. W is written
    (without resetting the map) when the call returns. Every weight gets the value of
    the per-weight update of ``forces.reference_step`` up to rounding.

    Steps end on the global grid ``k dt`` (the last one shortened to ``t1``). When
    ``α <= 0`` (h c |1 - N| >= 1, a step far too large) the map reverses the order of
    the magnitudes: with ``flip`` (Euler, or L1 off) signs flip as ``S_β(α w)`` does;
    otherwise signs are frozen and every weight with ``α|w| - β <= 0`` becomes 0.

    Stops at ``t1`` (status 0), after ``jmax`` steps (1), when every row has at most
    ``stop_nnz`` alive weights (2; ``stop_nnz < 0`` disables), before a step that would
    produce a non-finite value (3; the state is left at the last finite step), or when
    the convergence rule of :func:`converged_after` has held for ``conv_window`` (4).

    out : (OUT_SIZE,) float64 (see OUT_*); OUT_STREAK is read and written.
    """
    n = W.shape[0]
    S = b.shape[0]
    Pw = np.empty(S)
    Qw = np.empty(S)
    j0 = j
    status = STATUS_DONE
    bad = -1
    while t < t1:
        t_next = step_end(j, t1, dt)
        h = t_next - t
        changed = False
        rate = 0.0
        for i in range(n):
            k = cnt[i]
            if k == 0:
                continue
            ai, bi = A[i], B[i]
            s1 = ai * P1[i] - bi * k
            s2 = ai * ai * P2[i] - 2.0 * ai * bi * P1[i] + bi * bi * k
            al, be, N0 = affine_step(s1, s2, k, h, a, b, fb, c, lam, Pw, Qw)
            if not (np.isfinite(al) and np.isfinite(be) and abs(al) < 1e150):
                bad = i
                break
            if conv_tol > 0.0:
                wmax = ai * u[i, 0] - bi
                wmin = ai * u[i, k - 1] - bi
                d = max(abs((al - 1.0) * wmax - be), abs((al - 1.0) * wmin - be))
                rate = max(rate, d / h)
            # the map update is inlined by hand: a function called per row and step
            # costs reference counting on its array arguments, 1.3-2x the whole step
            if al <= 0.0:
                changed = True
                if flip == 0.0:
                    rows_reverse_map(W, u, perm, cnt, A, B, P1, P2, i, al, be)
                    continue
                rows_materialize(W, u, perm, cnt, A, B, P1, P2, i)  # S_β(α w) flips signs
                for jj in range(k):
                    W[i, perm[i, jj]] = -W[i, perm[i, jj]]
                al = -al
                ai, bi = 1.0, 0.0
            ai = al * ai
            bi = al * bi + be
            A[i] = ai
            B[i] = bi
            while k > 0 and ai * u[i, k - 1] - bi <= 0.0:
                k -= 1
                W[i, perm[i, k]] = 0.0
                P1[i] -= u[i, k]
                P2[i] -= u[i, k] * u[i, k]
                changed = True
            cnt[i] = k
            if k == 0:
                P1[i] = 0.0
                P2[i] = 0.0
            elif ai > 2.0 or ai < 0.5 or bi > 0.1 * ai * u[i, 0]:
                rows_materialize(W, u, perm, cnt, A, B, P1, P2, i)
        if bad >= 0:
            status = STATUS_NONFINITE
            break
        j += 1
        t = t_next
        out[OUT_EVALS] += S
        if converged_after(changed, rate, t, conv_tol, conv_window, out):
            status = STATUS_CONVERGED
            break
        if stop_nnz >= 0:
            done = True
            for i in range(n):
                if cnt[i] > stop_nnz:
                    done = False
                    break
            if done:
                status = STATUS_STOP
                break
        if t < t1 and j - j0 >= jmax:
            status = STATUS_BUDGET
            break
    for i in range(n):
        rows_writeback(W, u, perm, cnt, A, B, i)
    out[OUT_T] = t
    out[OUT_J] = j
    out[OUT_STATUS] = status
    out[OUT_BAD] = bad


@numba.njit(**_opts)
def rows_stats(W, idx, cnt, l1, nnz, l2sq, l4):
    """Per-row ‖W_i‖₁, m′_i, ‖W_i‖², ‖W_i‖₄⁴ from the active lists (outputs (n,))."""
    n = W.shape[0]
    for i in range(n):
        a1 = 0.0
        a2 = 0.0
        a4 = 0.0
        for p in range(cnt[i]):
            w = W[i, idx[i, p]]
            w2 = w * w
            a1 += abs(w)
            a2 += w2
            a4 += w2 * w2
        l1[i] = a1
        nnz[i] = cnt[i]
        l2sq[i] = a2
        l4[i] = a4


# ---------------------------------------------------------------- dense phase kernels
# The two matrix products per force evaluation (G = W Wᵀ by syrk, P W by gemm) are
# done by BLAS through NumPy; these kernels fuse the elementwise work around them.


@numba.njit(**_opts)
def relu_offdiag(G, P):
    """P = ReLU(G) with a zero diagonal. G, P : (n, n)."""
    n = G.shape[0]
    for i in range(n):
        for j in range(n):
            g = G[i, j]
            P[i, j] = g if (g > 0.0 and i != j) else 0.0


@numba.njit(**_opts)
def combine_force(W, norms, PW, fb, interf, c, F):
    """F = fb c (1 - norms_i) W_i - interf c (PW)_i. All (n, m) but norms (n,)."""
    n, m = W.shape
    for i in range(n):
        g = fb * c * (1.0 - norms[i])
        ci = interf * c
        for k in range(m):
            F[i, k] = g * W[i, k] - ci * PW[i, k]


@numba.njit(**_opts)
def row_sumsq(W, out):
    """out_i = Σ_k W_ik². W : (n, m), out : (n,)."""
    n, m = W.shape
    for i in range(n):
        acc = 0.0
        for k in range(m):
            acc += W[i, k] * W[i, k]
        out[i] = acc


@numba.njit(**_opts)
def add_sign_force(W, lam, F):
    """F -= λ sign(W) (nothing at exact zeros). W, F : (n, m)."""
    n, m = W.shape
    for i in range(n):
        for k in range(m):
            w = W[i, k]
            if w > 0.0:
                F[i, k] -= lam
            elif w < 0.0:
                F[i, k] += lam


@numba.njit(**_opts)
def release_sign(f, lam):
    """The release rule, the one place it is written for the kernels: a zero weight on
    which the other forces sum to ``f`` leaves 0 with sign(f) when ``|f| > λ`` and
    stays pinned (0 returned) otherwise, the exact (Filippov) flow of the sign force.
    NumPy reference: :func:`flowsim.forces.release_sign`."""
    if abs(f) > lam:
        return 1.0 if f > 0.0 else -1.0
    return 0.0


@numba.njit(**_opts)
def sign_pattern(W, F0, lam, s):
    """Frozen signs for a step: sign(w), or sign(F) for a released zero, else 0."""
    n, m = W.shape
    for i in range(n):
        for k in range(m):
            w = W[i, k]
            if w > 0.0:
                s[i, k] = 1.0
            elif w < 0.0:
                s[i, k] = -1.0
            else:
                f = F0[i, k]
                s[i, k] = release_sign(F0[i, k], lam)


@numba.njit(**_opts)
def masked_stage(F, s, lam, use_sign, K):
    """K = F - λ s on active weights and 0 on pinned ones (``use_sign``); else K = F."""
    n, m = F.shape
    for i in range(n):
        for k in range(m):
            if use_sign:
                sk = s[i, k]
                K[i, k] = F[i, k] - lam * sk if sk != 0.0 else 0.0
            else:
                K[i, k] = F[i, k]


@numba.njit(**_opts)
def stage_value(W, K, coef, nk, U):
    """U = W + Σ_{j<nk} coef_j K_j. K : (S, n, m), coef : (S,)."""
    n, m = W.shape
    for i in range(n):
        for k in range(m):
            acc = W[i, k]
            for j in range(nk):
                if coef[j] != 0.0:
                    acc += coef[j] * K[j, i, k]
            U[i, k] = acc


@numba.njit(**_opts)
def finish_step(W, K, coef, s, use_sign, V):
    """V = W + Σ_j coef_j K_j; with ``use_sign`` weights whose sign flips become 0.

    Returns False (V untrusted) if any value is non-finite.
    """
    n, m = W.shape
    S = coef.shape[0]
    ok = True
    for i in range(n):
        for k in range(m):
            acc = W[i, k]
            for j in range(S):
                acc += coef[j] * K[j, i, k]
            if use_sign and not acc * s[i, k] > 0.0:
                acc = 0.0
            if not np.isfinite(acc):
                ok = False
            V[i, k] = acc
    return ok


@numba.njit(**_opts)
def prox_euler(W, F, h, lam, use_sign, V):
    """V = S_{hλ}(W + h F) (plain Euler when not ``use_sign``). Returns all-finite."""
    n, m = W.shape
    thr = h * lam
    ok = True
    for i in range(n):
        for k in range(m):
            x = W[i, k] + h * F[i, k]
            if use_sign:
                r = abs(x) - thr
                x = (r if x > 0.0 else -r) if r > 0.0 else 0.0
            if not np.isfinite(x):
                ok = False
            V[i, k] = x
    return ok


# --------------------------------------------------------------- sparse phase kernels
# Once rows are sparse (L1 on), a step costs O(work) where "work" is each row's support
# plus the zeros released this step. The Gram entries G_ij are accumulated only over
# columns shared by rows i and j (a column index built from the working sets), so pairs
# of rows with disjoint supports cost nothing. A zero weight feels only the interference
# of rows j with G_ij > 0 on their own supports, so those columns are the only
# candidates for release, and each is released exactly when |F| > λ (as in the dense
# engine, which checks every zero).


@numba.njit(**_opts)
def csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched):
    """Column index of the working sets: col(k) = colrows[colstart[k]:colstart[k]+colcnt[k]].

    colcnt must be all zero on entry (``csc_clear`` restores that). Returns the number
    of touched columns listed in ``touched``.
    """
    n = widx.shape[0]
    nt = 0
    for i in range(n):
        for p in range(wcnt[i]):
            k = widx[i, p]
            if colcnt[k] == 0:
                touched[nt] = k
                nt += 1
            colcnt[k] += 1
    pos = 0
    for q in range(nt):
        k = touched[q]
        colstart[k] = pos
        colfill[k] = pos
        pos += colcnt[k]
    for i in range(n):
        for p in range(wcnt[i]):
            k = widx[i, p]
            colrows[colfill[k]] = i
            colfill[k] += 1
    return nt


@numba.njit(**_opts)
def csc_clear(colcnt, touched, nt):
    """Zero the column counts of the ``nt`` touched columns."""
    for q in range(nt):
        colcnt[touched[q]] = 0


@numba.njit(**_opts)
def sparse_force(U, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, release, ws, F,
                 acc, nbr, inlist, pos, cand, candmark, candlist):
    """Smooth force on every working entry, F[i, p] for entry ``widx[i, p]``.

    U : (n, m) values (read only on working entries). With ``release``, zero entries
    outside the working sets whose force exceeds λ are appended to their row's working
    set with their force in F and sign in ``ws``. Scratch: acc, nbr (n,) float/int,
    inlist (n,) bool, pos (m,) int (all -1), cand (m,) float (all 0), candmark (m,)
    bool, candlist (m,) int. Returns the number of released entries.
    """
    n = U.shape[0]
    nrel = 0
    for i in range(n):
        wi = wcnt[i]
        if wi == 0:
            continue
        nn = 0
        gii = 0.0
        for p in range(wi):
            k = widx[i, p]
            pos[k] = p
            u = U[i, k]
            if u == 0.0:
                continue
            gii += u * u
            for q in range(colstart[k], colstart[k] + colcnt[k]):
                j = colrows[q]
                if j == i:
                    continue
                uj = U[j, k]
                if uj == 0.0:
                    continue
                if not inlist[j]:
                    inlist[j] = True
                    nbr[nn] = j
                    nn += 1
                acc[j] += u * uj
        g = fb * c * (1.0 - gii)
        for p in range(wi):
            F[i, p] = g * U[i, widx[i, p]]
        ncand = 0
        for t in range(nn):
            j = nbr[t]
            gij = acc[j]
            acc[j] = 0.0
            inlist[j] = False
            if gij <= 0.0:
                continue
            cg = c * gij
            for q in range(wcnt[j]):
                k2 = widx[j, q]
                uj = U[j, k2]
                if uj == 0.0:
                    continue
                pp = pos[k2]
                if pp >= 0:
                    F[i, pp] -= cg * uj
                elif release:
                    if not candmark[k2]:
                        candmark[k2] = True
                        candlist[ncand] = k2
                        ncand += 1
                    cand[k2] -= cg * uj
        for p in range(wi):
            pos[widx[i, p]] = -1
        for t in range(ncand):
            k2 = candlist[t]
            f = cand[k2]
            cand[k2] = 0.0
            candmark[k2] = False
            sg = release_sign(f, lam)
            if sg != 0.0:
                p = wcnt[i]
                widx[i, p] = k2
                wcnt[i] = p + 1
                F[i, p] = f
                ws[i, p] = sg
                nrel += 1
    return nrel


@numba.njit(**_opts)
def sparse_run(W, U, widx, wcnt, ws, Kc, Fc, newv, colrows, colstart, colcnt, colfill, touched,
               acc, nbr, inlist, pos, cand, candmark, candlist,
               t, j, t1, dt, jmax, a, b, euler, fb, c, lam, stop_nnz, dense_above,
               conv_tol, conv_window, out):
    """Explicit steps with L1 on, on working sets; same contract as :func:`rows_run`.

    ``widx``/``wcnt`` hold each row's support (nonzero entries) between steps, sorted
    by column, so that the state (and the order of every sum) is a function of W alone;
    the step semantics are those of ``forces.reference_step`` (Lie splitting for
    ``euler``, frozen signs with release for the Runge-Kutta methods). Also stops
    (status 5) after a step that leaves more than ``dense_above`` nonzeros in all, for
    the caller to go on with the dense engine.
    out : (OUT_SIZE,) float64 (see OUT_*); OUT_RELEASES counts released zeros.
    """
    n = W.shape[0]
    S = b.shape[0]
    j0 = j
    status = STATUS_DONE
    releases = 0
    while t < t1:
        t_next = step_end(j, t1, dt)
        h = t_next - t
        for i in range(n):
            for p in range(wcnt[i]):
                ws[i, p] = 1.0 if W[i, widx[i, p]] > 0.0 else -1.0
        nt = csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched)
        nrel = sparse_force(W, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, True, ws, Fc,
                            acc, nbr, inlist, pos, cand, candmark, candlist)
        releases += nrel
        csc_clear(colcnt, touched, nt)
        if euler:
            thr = h * lam
            for i in range(n):
                for p in range(wcnt[i]):
                    x = W[i, widx[i, p]] + h * Fc[i, p]
                    r = abs(x) - thr
                    newv[i, p] = (r if x > 0.0 else -r) if r > 0.0 else 0.0
        else:
            for i in range(n):
                for p in range(wcnt[i]):
                    Kc[0, i, p] = Fc[i, p] - lam * ws[i, p]
            nt = csc_build(widx, wcnt, colcnt, colstart, colfill, colrows, touched)
            for st in range(1, S):
                for i in range(n):
                    for p in range(wcnt[i]):
                        k = widx[i, p]
                        v = W[i, k]
                        for jj in range(st):
                            if a[st, jj] != 0.0:
                                v += h * a[st, jj] * Kc[jj, i, p]
                        U[i, k] = v
                sparse_force(U, widx, wcnt, colrows, colstart, colcnt, fb, c, lam, False, ws, Fc,
                             acc, nbr, inlist, pos, cand, candmark, candlist)
                for i in range(n):
                    for p in range(wcnt[i]):
                        Kc[st, i, p] = Fc[i, p] - lam * ws[i, p]
            csc_clear(colcnt, touched, nt)
            for i in range(n):
                for p in range(wcnt[i]):
                    v = W[i, widx[i, p]]
                    for jj in range(S):
                        v += h * b[jj] * Kc[jj, i, p]
                    newv[i, p] = v if v * ws[i, p] > 0.0 else 0.0
        finite = True
        for i in range(n):
            for p in range(wcnt[i]):
                if not np.isfinite(newv[i, p]):
                    finite = False
        if not finite:
            # drop this step's releases (their W entries are still 0): supports are intact
            for i in range(n):
                q = 0
                for p in range(wcnt[i]):
                    if W[i, widx[i, p]] != 0.0:
                        widx[i, q] = widx[i, p]
                        q += 1
                wcnt[i] = q
            status = STATUS_NONFINITE
            break
        worst = 0
        total = 0
        changed = nrel > 0
        rate = 0.0
        for i in range(n):
            q = 0
            grew = False
            for p in range(wcnt[i]):
                k = widx[i, p]
                v = newv[i, p]
                if conv_tol > 0.0:
                    rate = max(rate, abs(v - W[i, k]) / h)
                W[i, k] = v
                if v != 0.0:
                    if q > 0 and k < widx[i, q - 1]:
                        grew = True
                    widx[i, q] = k
                    q += 1
                else:
                    changed = True
            wcnt[i] = q
            if grew:  # released entries were appended: restore column order
                widx[i, :q] = np.sort(widx[i, :q])
            total += q
            if q > worst:
                worst = q
        j += 1
        t = t_next
        out[OUT_EVALS] += S
        if converged_after(changed, rate, t, conv_tol, conv_window, out):
            status = STATUS_CONVERGED
            break
        if stop_nnz >= 0 and worst <= stop_nnz:
            status = STATUS_STOP
            break
        if total > dense_above:
            status = STATUS_DENSE
            break
        if t < t1 and j - j0 >= jmax:
            status = STATUS_BUDGET
            break
    out[OUT_T] = t
    out[OUT_J] = j
    out[OUT_STATUS] = status
    out[OUT_BAD] = -1
    out[OUT_RELEASES] += releases


@numba.njit(**_opts)
def dense_step_summary(W, V, colmask):
    """Compare a step's start W and end V (both (n, m)).

    Writes ``colmask[k]`` = column k of V holds a nonzero, and returns
    ``(nonzeros of V, whether the support changed, max |V - W|)``.
    """
    n, m = W.shape
    for k in range(m):
        colmask[k] = False
    total = 0
    changed = False
    diff = 0.0
    for i in range(n):
        for k in range(m):
            v = V[i, k]
            w = W[i, k]
            if v != 0.0:
                total += 1
                colmask[k] = True
                if w == 0.0:
                    changed = True
            elif w != 0.0:
                changed = True
            d = abs(v - w)
            if d > diff:
                diff = d
    return total, changed, diff
