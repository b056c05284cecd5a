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
#: The adaptive methods keep their controller state there too (``_adaptive``): the next
#: step size, the previous accepted error norm, whether the last trial was rejected, the
#: rejected trials, the smallest and largest accepted step and the largest allowed one.
OUT_T, OUT_J, OUT_STATUS, OUT_BAD, OUT_RELEASES, OUT_STREAK, OUT_EVALS = range(7)
OUT_H, OUT_ERRPREV, OUT_REJLAST, OUT_REJECTED, OUT_HMIN, OUT_HMAX, OUT_HCAP = range(8, 15)
OUT_SIZE = 15


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
def sparse_step_status(changed, rate, t, t1, j, j0, jmax, worst, total, stop_nnz, dense_above,
                       conv_tol, conv_window, out):
    """Status after a step of a sparse engine: converged (``converged_after``), every row
    at most ``stop_nnz`` nonzeros (``worst``: the largest row count), more than
    ``dense_above`` nonzeros in all (``total``: back to the dense engine), the step budget
    ``jmax`` used, else STATUS_DONE (go on)."""
    if converged_after(changed, rate, t, conv_tol, conv_window, out):
        return STATUS_CONVERGED
    if stop_nnz >= 0 and worst <= stop_nnz:
        return STATUS_STOP
    if total > dense_above:
        return STATUS_DENSE
    if t < t1 and j - j0 >= jmax:
        return STATUS_BUDGET
    return STATUS_DONE


@numba.njit(**_opts)
def finish_run(out, t, j, status, releases):
    """Write a sparse run's end into out (time, grid index, status, releases)."""
    out[OUT_T] = t
    out[OUT_J] = j
    out[OUT_STATUS] = status
    out[OUT_BAD] = -1
    out[OUT_RELEASES] += releases


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
# Once rows are sparse (L1 on), a step costs O(work). Row i's support is kept packed
# (CSR: ``cols[ptr[i]:ptr[i+1]]`` ascending, with values), and a column index of it
# (CSC: the rows holding column k, ascending, with their values) gives
#   G_ab = Σ_k W_ak W_bk        rank-one updates per column, on pairs sharing a column
#   F_ik = fb c (1-|W_i|²) W_ik - c Σ_{j∈col(k)} P_ij W_jk        on the supports
# with P = ReLU(G) off the diagonal, both at a cost of Σ_k (column count)², every sum in
# an order fixed by W (columns in first-touch order, rows ascending).
#
# Releases. A zero W_ik feels φ_ik = -c Σ_{j≠i} P_ij W_jk (the feature benefit vanishes
# there) and is released when |φ_ik| > λ, decided on the canonical value of
# ``zero_force`` (the column sum above) by ``release_sign``. Evaluating φ on every zero
# costs n²·m·d/2 scattered products per step at density d. Instead an *epoch*, begun at
# some step s0, tabulates |φ(s0)| and σ (below) on every entry (an axpy over a row of P
# per nonzero, ``epoch_scan``), and at a later step t, for every entry, in real
# arithmetic,
#   |φ_ik(t)| <= |φ_ik(s0)| + c [ΔP_i a_k + σ_ik δ_k + π_i r_k]                 (B)
#   ΔP_i = max_j |P_ij(t) - P_ij(s0)|,     a_k = Σ_j |W_jk(t)|,
#   σ_ik = Σ_{j: W_jk(s0)≠0} P_ij(s0),     δ_k = max_{j: W_jk(s0)≠0} |W_jk(t) - W_jk(s0)|,
#   π_i = max_j P_ij(s0),                  r_k = Σ_{j: W_jk(s0)=0} |W_jk(t)|
# (P(t)W(t) - P(s0)W(s0) = (P(t) - P(s0))W(t) + P(s0)(W(t) - W(s0)); split the second
# sum by whether W_jk(s0) was zero). δ_k is bounded in turn by Σ_{steps since s0} of
# max_j |ΔW_jk| over the step (triangle inequality), accumulated by ``apply_step``
# with r_k. Only where the bound, enlarged by the rounding of
# its terms, of the tables and of both sums of φ (``_rounding``, ``up32``), exceeds λ is
# the canonical force evaluated. A skipped zero therefore has |canonical φ| <= λ: the
# release decisions, hence all numbers, are those of evaluating every zero, a function
# of W alone whatever the epoch state.
#
# Work. Per row the entries are split into tiers by |φ(s0)| (``NTIER``); a tier's row
# bound (its largest |φ(s0)| and σ with the largest a_k, δ_k, r_k) covers all its
# entries, and only when it fails are they bounded one by one: the listed tiers from
# their lists, the last from a pass over the row's table or, when cheaper, from a
# scatter of the row's forces over its positive neighbours (then canonical where that
# value, enlarged for rounding, exceeds λ). A new epoch begins when the work spent on
# failed bounds since the last one exceeds ``EF_BUDGET`` times that epoch's own
# (ski rental). When so few rows share columns that a scatter over all positive pairs
# is cheaper than evaluating the bound (late in a run), every row is scattered instead
# (``direct_releases``).

#: Tiers of the entries of a row by |φ(s0)|: tier t < NTIER - 1 holds those in
#: (WATCH·λ·TIER^t, WATCH·λ·TIER^(t-1)] (tier 0: above WATCH·λ), listed per row with
#: their |φ(s0)| and σ and bounded one by one when the tier's row bound fails; the last
#: tier holds the rest.
WATCH = 0.5
TIER = 0.5 ** 0.5
NTIER = 4
#: Relative costs (≈ ns on the build machine) of the work weighed for a new epoch: per
#: entry of the φ(s0) tables, per axpy element filling them, per entry of a row's pass
#: over the columns, per element of a row scatter, per element of a canonical force.
COST_TABLE, COST_AXPY, COST_SCAN, COST_SCATTER, COST_CANONICAL = 3.0, 0.4, 0.7, 2.0, 2.0
#: ... and per entry of a tier list bounded one by one.
COST_ENTRY = 3.0
#: Slots of the sparse engine's integer and float state arrays.
ES_VALID, ES_TICK, ES_PAIRS, ES_PAIRS0, ES_RCOLS, ES_SIZE = range(6)
(EF_WORK, EF_EXTRA, EF_PI0MAX, EF_A0MAX, EF_DMAX, EF_RMAX, EF_BUDGET, EF_WATCH, EF_DIRECT, EF_SCATTER,
 EF_SIZE) = range(11)
#: Rows of the per-row (2, n) and per-column (4, m) inputs of bound (B) (the last a
#: scratch row).
RV_PI, RV_DP = range(2)
CV_A, CV_D, CV_R, CV_STEP = range(4)
#: Slots of the diagnostic counters (``SparseEngine.counters``).
(CT_EPOCHS, CT_STEPS, CT_CANONICAL, CT_ROWSCANS, CT_ROWSCATTERS, CT_DIRECT, CT_REL_EPOCH,
 CT_REL_BETWEEN, CT_SIZE) = range(9)


@numba.njit(**_opts)
def is_nonzero(bits, i, k):
    """Whether W_ik is in the support, from the bitmap bits (n, ⌈m/64⌉) int64."""
    return (bits[i, k >> 6] >> (k & 63)) & 1 != 0


@numba.njit(**_opts)
def set_nonzero(bits, i, k, on):
    """Mark W_ik in (on) or out of the support in the bitmap."""
    bit = np.int64(1) << (k & 63)
    if on:
        bits[i, k >> 6] |= bit
    else:
        bits[i, k >> 6] &= ~bit


@numba.njit(**_opts)
def supports_from_dense(W, sup, bits):
    """Each row's nonzero columns of W (n, m), ascending, with their values, into the
    packed support ``sup`` = (ptr (n+1,), cols, vals, born) and the bitmap ``bits``
    (see ``sparse_run``)."""
    ptr, cols, vals, born = sup
    n, m = W.shape
    bits[:] = 0
    q = 0
    for i in range(n):
        ptr[i] = q
        for k in range(m):
            if W[i, k] != 0.0:
                cols[q] = k
                vals[q] = W[i, k]
                born[q] = 0
                set_nonzero(bits, i, k, True)
                q += 1
    ptr[n] = q


@numba.njit(**_opts)
def write_back(W, sup):
    """W[i, k] = the support's value, for every support entry."""
    ptr, cols, vals = sup[0], sup[1], sup[2]
    for i in range(W.shape[0]):
        for q in range(ptr[i], ptr[i + 1]):
            W[i, cols[q]] = vals[q]


@numba.njit(**_opts)
def csc_pattern(ptr, cols, vals, csc, colvals, norms, acol):
    """Column index of a packed set of entries (ptr, cols, vals), with its values, the
    row norms Σ_q vals² (norms (n,)) and column sums Σ|vals| (acol (m,)).

    csc = (colcnt, colstart, colrows, colpos, touched, shared): column k holds rows
    ``colrows[colstart[k]:colstart[k]+colcnt[k]]`` (ascending), entry x being entry
    ``colpos[x]`` of the packed set; ``touched`` lists the columns with an entry, in
    first-touch order, ``shared`` those of them with two or more. colcnt and acol must
    be zero on every column on entry (``csc_clear``). Returns (number touched, number
    shared, Σ_k colcnt_k (colcnt_k - 1) / 2 (the pair updates of a Gram matrix), the
    largest column sum).
    """
    colcnt, colstart, colrows, colpos, touched, shared = csc
    n = ptr.shape[0] - 1
    nt = 0
    for q in range(ptr[n]):
        k = cols[q]
        if colcnt[k] == 0:
            touched[nt] = k
            nt += 1
        colcnt[k] += 1
    pos = 0
    ns = 0
    updates = 0
    for t in range(nt):
        k = touched[t]
        colstart[k] = pos
        pos += colcnt[k]
        if colcnt[k] > 1:
            shared[ns] = k
            ns += 1
            updates += colcnt[k] * (colcnt[k] - 1) // 2
        colcnt[k] = 0
    for i in range(n):
        s = 0.0
        for q in range(ptr[i], ptr[i + 1]):
            k = cols[q]
            v = vals[q]
            x = colstart[k] + colcnt[k]
            colrows[x] = i
            colpos[x] = q
            colvals[x] = v
            colcnt[k] += 1
            acol[k] += abs(v)
            s += v * v
        norms[i] = s
    amax = 0.0
    for t in range(nt):
        amax = max(amax, acol[touched[t]])
    return nt, ns, updates, amax


@numba.njit(**_opts)
def csc_values(ptr, V, csc, ns, colvals, norms):
    """New values V (aligned with the packed set) into the index's shared columns and
    the row norms."""
    colcnt, colstart, colpos, shared = csc[0], csc[1], csc[3], csc[5]
    for t in range(ns):
        k = shared[t]
        for x in range(colstart[k], colstart[k] + colcnt[k]):
            colvals[x] = V[colpos[x]]
    for i in range(ptr.shape[0] - 1):
        s = 0.0
        for q in range(ptr[i], ptr[i + 1]):
            s += V[q] * V[q]
        norms[i] = s


@numba.njit(**_opts)
def csc_clear(csc, nt, acol):
    """Zero the column counts and sums of the ``nt`` touched columns."""
    for t in range(nt):
        k = csc[4][t]
        csc[0][k] = 0
        acol[k] = 0.0


@numba.njit(**_opts)
def _gram_accumulate(csc, ns, colvals, G, stamp, tick, pairs, dense):
    """G_ab = Σ_k V_ak V_bk (a < b) over the shared columns: in all of G, cleared first
    (``dense``), or on the pairs sharing a column only, listed in pairs and marked
    ``stamp == tick`` (returns their number)."""
    colcnt, colstart, colrows = csc[0], csc[1], csc[2]
    n = G.shape[0]
    if dense:
        for a in range(n):
            for b in range(a + 1, n):
                G[a, b] = 0.0
    npairs = 0
    for t in range(ns):
        k = csc[5][t]
        s, e = colstart[k], colstart[k] + colcnt[k]
        for x in range(s, e):
            a = colrows[x]
            va = colvals[x]
            for y in range(x + 1, e):
                b = colrows[y]
                if dense or stamp[a, b] == tick:
                    G[a, b] += va * colvals[y]
                else:
                    stamp[a, b] = tick
                    G[a, b] = va * colvals[y]
                    pairs[npairs, 0] = a
                    pairs[npairs, 1] = b
                    npairs += 1
    return npairs


@numba.njit(**_opts)
def gram_relu(csc, ns, colvals, gram, tick, npairs_prev, dense):
    """P ← ReLU(V Vᵀ) off the diagonal over the shared columns of the index.

    gram = (G, P, stamp, pairs): P (n, n) is symmetric and zero outside the pairs
    (a < b) with P_ab > 0, listed in pairs (returned count; the ``npairs_prev`` pairs of
    the previous call are cleared first). G (n, n) and stamp are scratch. ``dense``
    accumulates into all of G (cheaper when many pairs share columns) instead of the
    stamped pairs; both give the same P.
    """
    G, P, stamp, pairs = gram
    n = G.shape[0]
    npairs = 0
    if dense:
        _gram_accumulate(csc, ns, colvals, G, stamp, tick, pairs, True)
        for a in range(n):
            for b in range(a + 1, n):
                g = G[a, b]
                g = g if g > 0.0 else 0.0
                P[a, b] = g
                P[b, a] = g
                if g > 0.0:
                    pairs[npairs, 0] = a
                    pairs[npairs, 1] = b
                    npairs += 1
        return npairs
    for q in range(npairs_prev):
        P[pairs[q, 0], pairs[q, 1]] = 0.0
        P[pairs[q, 1], pairs[q, 0]] = 0.0
    touched = _gram_accumulate(csc, ns, colvals, G, stamp, tick, pairs, False)
    for q in range(touched):
        a, b = pairs[q, 0], pairs[q, 1]
        g = G[a, b]
        if g > 0.0:
            P[a, b] = g
            P[b, a] = g
            pairs[npairs, 0] = a
            pairs[npairs, 1] = b
            npairs += 1
    return npairs


@numba.njit(**_opts)
def csc_force(ptr, V, csc, ns, colvals, P, norms, fb, c, F, acc):
    """Smooth force at the packed values V into F (aligned with V): entry q of row a in
    column k gets ``fb c (1 - norms_a) V_q - c Σ_{j∈col(k)} P_aj V_jk``, the sum in
    ascending j over the shared columns (each P_ab read once for both a and b). acc
    (n,) is scratch."""
    colcnt, colstart, colrows, colpos, shared = csc[0], csc[1], csc[2], csc[3], csc[5]
    for a in range(ptr.shape[0] - 1):
        g = fb * c * (1.0 - norms[a])
        for q in range(ptr[a], ptr[a + 1]):
            F[q] = g * V[q]
    for t in range(ns):
        k = shared[t]
        s, e = colstart[k], colstart[k] + colcnt[k]
        for x in range(e - s):
            acc[x] = 0.0
        for x in range(s, e):
            a = colrows[x]
            va = colvals[x]
            ax = acc[x - s]  # terms of the rows before a, in ascending order
            for y in range(x + 1, e):
                p = P[a, colrows[y]]
                ax += p * colvals[y]
                acc[y - s] += p * va
            F[colpos[x]] -= c * ax


@numba.njit(**_opts)
def sparse_force(ptr, V, csc, ns, dense, colvals, gram, istate, norms, acc, fb, c, F):
    """Gram matrix (P) and smooth force at the packed values V (index values and norms
    already filled from them) into F."""
    istate[ES_TICK] += 1
    istate[ES_PAIRS] = gram_relu(csc, ns, colvals, gram, istate[ES_TICK], istate[ES_PAIRS], dense)
    csc_force(ptr, V, csc, ns, colvals, gram[1], norms, fb, c, F, acc)


@numba.njit(**_opts)
def zero_force(i, k, csc, colvals, P, c):
    """The canonical force on a zero W_ik: ``-c Σ_{j∈col(k)} P_ij W_jk`` (j ascending;
    the release decision is taken on this value and on nothing else)."""
    colcnt, colstart, colrows = csc[0], csc[1], csc[2]
    acc = 0.0
    for x in range(colstart[k], colstart[k] + colcnt[k]):
        acc += P[i, colrows[x]] * colvals[x]
    return -c * acc


@numba.njit(**_opts)
def _rounding(n):
    """Relative slack covering the rounding of sums of up to n products: 4 (n + 8) u."""
    return 4.0 * (n + 8) * 2.0 ** -53


@numba.njit(**_opts)
def up32(x):
    """An upper bound in float64 on the value a float32 table entry was rounded from
    (a non-negative float64 stored by ``np.float32``: relative error <= 2^-24 above the
    float32 normal range, absolute <= 2^-149 below)."""
    return np.float64(x) * (1.0 + 2.0 ** -22) + 2e-38


@numba.njit(**_opts)
def entry_bound(phi0, sig, a, d, r, gP, gpi, slack, margin):
    """Bound (B) on |φ| of one entry, ``|φ(s0)| + c ΔP_i a_k + σ_ik δ_k + c π_i r_k``
    (gP = c ΔP_i, gpi = c π_i, σ scaled by c), enlarged for rounding."""
    return (phi0 + gP * a + sig * d + gpi * r) * (1.0 + slack) + margin


@numba.njit(**_opts)
def bound_inputs(P, pairs, npairs, P0, pairs0, npairs0, rowv):
    """ΔP_i = max_j |P_ij - P_ij(s0)| of bound (B) into rowv[RV_DP] (over the pairs with
    P > 0 now or at s0). Returns max_ij P_ij."""
    dP = rowv[RV_DP]
    dP[:] = 0.0
    pmax = 0.0
    for q in range(npairs):
        a, b = pairs[q, 0], pairs[q, 1]
        p = P[a, b]
        pmax = max(pmax, p)
        d = abs(p - P0[a, b])
        dP[a] = max(dP[a], d)
        dP[b] = max(dP[b], d)
    for q in range(npairs0):
        a, b = pairs0[q, 0], pairs0[q, 1]
        d = abs(P[a, b] - P0[a, b])
        dP[a] = max(dP[a], d)
        dP[b] = max(dP[b], d)
    return pmax


@numba.njit(**_opts)
def _tier(f, thr0):
    """The tier of an entry with |φ(s0)| = f (thr0 = WATCH·λ)."""
    t = 0
    thr = thr0
    while t < NTIER - 1 and not f > thr:
        thr *= TIER
        t += 1
    return t


@numba.njit(**_opts)
def _list_tiers(tab, nl, thr0):
    """Sort the nl entries above the last tier, listed by ``epoch_scan`` in column order
    (rows tmp_i, columns tmp_k, |φ(s0)| and σ in the heads of tphi, tsig), into each
    row's tier lists and the tiers' maxima (see ``epoch_scan``)."""
    tierv, tcol, toff, tcur, tphi, tsig, tmp_i, tmp_k = tab[2:]
    n = toff.shape[0]
    last = NTIER - 1
    for x in range(nl):
        i = tmp_i[x]
        t = _tier(tphi[x], thr0)
        tcur[i, t] += 1
        tierv[0, t, i] = max(tierv[0, t, i], tphi[x])
        tierv[1, t, i] = max(tierv[1, t, i], tsig[x])
    pos = 0
    for i in range(n):
        for t in range(last):
            cnt = tcur[i, t]
            toff[i, t] = pos
            tcur[i, t] = pos
            pos += cnt
        toff[i, last] = pos
    for x in range(nl):  # from listing order to tier order, through the lists' tails
        tmp_k[nl + x] = tmp_k[x]
        tphi[nl + x], tsig[nl + x] = tphi[x], tsig[x]
    for x in range(nl, 2 * nl):
        i, k = tmp_i[x - nl], tmp_k[x]
        t = _tier(tphi[x], thr0)
        y = tcur[i, t]
        tcol[y], tphi[y], tsig[y] = k, tphi[x], tsig[x]
        tcur[i, t] = y + 1


@numba.njit(**_opts)
def epoch_scan(csc, colvals, P, c, lam, tab, fstate, rowv, tile):
    """|φ(s0)| and σ of every entry, computed by columns (``Σ_j P_ij W_jk`` and
    ``Σ_j P_ij`` over the rows j of column k, as axpys over rows of P) in blocks of 8
    (tile (2, 8, n)), into the tables tab = (φ, σ, tierv, tcol, toff, tcur, tphi, tsig,
    tmp_i, tmp_k): each row's entries of tiers 0 .. NTIER-2 listed in tcol with their
    |φ(s0)| and σ (tphi, tsig), tier t of row i at ``tcol[toff[i, t]:toff[i, t+1]]``
    (ascending columns), the others' in the float32 tables φ, σ (n, m) (read through
    ``up32``; φ = -1 marks a listed entry), and the largest |φ(s0)| and σ of each tier
    of each row in tierv (2, NTIER, n); tcur, tmp_i, tmp_k are scratch. Returns its
    cost."""
    phi, sig, tierv, tcur, tphi, tsig, tmp_i, tmp_k = tab[0], tab[1], tab[2], tab[5], tab[6], tab[7], tab[8], tab[9]
    colcnt, colstart, colrows = csc[0], csc[1], csc[2]
    n, m = phi.shape
    thr0 = fstate[EF_WATCH] * lam
    low = thr0
    for t in range(NTIER - 2):  # the threshold of the last tier, as ``_tier`` computes it
        low *= TIER
    last = NTIER - 1
    axpys = 0
    blocks = 0
    nl = 0
    tierv[:] = 0.0
    tcur[:] = 0
    for k0 in range(0, m, 8):
        k1 = min(k0 + 8, m)
        live = 0
        for k in range(k0, k1):
            for x in range(colstart[k], colstart[k] + colcnt[k]):
                if rowv[RV_PI, colrows[x]] > 0.0:
                    live += 1
                    break
        if live == 0:
            phi[:, k0:k1] = 0.0
            sig[:, k0:k1] = 0.0
            continue
        blocks += 1
        tile[:, : k1 - k0] = 0.0
        for k in range(k0, k1):
            for x in range(colstart[k], colstart[k] + colcnt[k]):
                j = colrows[x]
                if rowv[RV_PI, j] > 0.0:
                    w = colvals[x]
                    axpys += n
                    for i in range(n):
                        p = P[j, i]
                        tile[0, k - k0, i] += p * w
                        tile[1, k - k0, i] += p
        for i in range(n):
            fmax = tierv[0, last, i]
            gmax = tierv[1, last, i]
            for k in range(k0, k1):
                f = c * abs(tile[0, k - k0, i])
                g = c * tile[1, k - k0, i]
                if f <= low:
                    phi[i, k] = f
                    sig[i, k] = g
                    fmax = max(fmax, f)
                    gmax = max(gmax, g)
                else:
                    phi[i, k] = -1.0
                    tmp_i[nl] = i
                    tmp_k[nl] = k
                    tphi[nl] = f  # in listing order for now
                    tsig[nl] = g
                    nl += 1
            tierv[0, last, i] = fmax
            tierv[1, last, i] = gmax
    _list_tiers(tab, nl, thr0)
    return m + COST_TABLE * n * 8 * blocks + COST_AXPY * axpys + 4 * nl


@numba.njit(**_opts)
def epoch_begin(sup, csc, colvals, P, pairs, npairs, snap, tab, istate, fstate, rowv, colv, tile,
                pmax, amax, c, lam):
    """Begin an epoch at the current step: snapshot P and the support's pattern (snap),
    mark no entry as born since, set the growth inputs of bound (B) to 0 and tabulate
    |φ(s0)|, σ (tab)."""
    ptr, cols, vals, born = sup
    P0, pairs0, e0ptr, e0col, rcols = snap
    n = ptr.shape[0] - 1
    colv[CV_D] = 0.0
    colv[CV_R] = 0.0
    for q in range(istate[ES_PAIRS0]):
        P0[pairs0[q, 0], pairs0[q, 1]] = 0.0
        P0[pairs0[q, 1], pairs0[q, 0]] = 0.0
    rowv[RV_PI] = 0.0
    for q in range(npairs):
        a, b = pairs[q, 0], pairs[q, 1]
        pairs0[q, 0] = a
        pairs0[q, 1] = b
        p = P[a, b]
        P0[a, b] = p
        P0[b, a] = p
        rowv[RV_PI, a] = max(rowv[RV_PI, a], p)
        rowv[RV_PI, b] = max(rowv[RV_PI, b], p)
    e0ptr[:] = ptr
    for q in range(ptr[n]):
        e0col[q] = cols[q]
        born[q] = 0
    rowv[RV_DP] = 0.0
    istate[ES_RCOLS], istate[ES_PAIRS0], istate[ES_VALID] = 0, npairs, 1
    fstate[EF_PI0MAX], fstate[EF_A0MAX], fstate[EF_EXTRA] = pmax, amax, 0.0
    fstate[EF_DMAX], fstate[EF_RMAX] = 0.0, 0.0
    fstate[EF_WORK] = epoch_scan(csc, colvals, P, c, lam, tab, fstate, rowv, tile)


@numba.njit(**_opts)
def try_release(i, k, csc, colvals, P, c, lam, rel, nrel):
    """Append the zero W_ik to the release list rel = (rows, cols, forces, signs, ·) if
    its canonical force exceeds λ. Returns the new length of the list."""
    f = zero_force(i, k, csc, colvals, P, c)
    sg = release_sign(f, lam)
    if sg == 0.0:
        return nrel
    rel[0][nrel] = i
    rel[1][nrel] = k
    rel[2][nrel] = f
    rel[3][nrel] = sg
    return nrel + 1


@numba.njit(**_opts)
def row_scatter(i, sup, P, scr):
    """Σ_j P_ij W_jk for every column k reached by a row j with P_ij > 0, by a scatter
    over those rows' supports, into scr = (acc, mark, klist) (m,): the reached columns
    are klist[:returned count]; the caller clears acc and mark."""
    ptr, cols, vals = sup[0], sup[1], sup[2]
    acc, mark, klist = scr[0], scr[1], scr[2]
    nk = 0
    for j in range(P.shape[0]):
        p = P[i, j]
        if p > 0.0:
            for q in range(ptr[j], ptr[j + 1]):
                k = cols[q]
                if not mark[k]:
                    mark[k] = True
                    klist[nk] = k
                    nk += 1
                acc[k] += p * vals[q]
    return nk


@numba.njit(**_opts)
def release_checks(bits, sup, csc, colvals, P, tab, scr, rel, fstate, rowv, colv, pmax, amax, dmax,
                   rmax, c, lam, counters):
    """List in rel every zero whose canonical force exceeds λ, evaluating it only where
    bound (B) exceeds λ: the entries of a listed tier of a row one by one when the tier's
    row bound fails; those of the last tier likewise in a pass over the columns or, when
    cheaper, through a scatter of the row's forces over its neighbours (which replaces
    the bound for that row). Returns the length of the list; the work of failed bounds
    goes to fstate[EF_EXTRA]."""
    ptr = sup[0]
    phi, sig, tierv, tcol, toff, tphi, tsig = tab[0], tab[1], tab[2], tab[3], tab[4], tab[6], tab[7]
    acc, mark, klist, frows, rmode = scr
    n, m = phi.shape
    colcnt = csc[0]
    acol, dcol, rcol = colv[CV_A], colv[CV_D], colv[CV_R]
    slack = _rounding(n)
    margin = slack * c * (fstate[EF_PI0MAX] * fstate[EF_A0MAX] + pmax * amax)
    direct = 2.0 * slack * c * pmax * amax  # rounding of a scattered and a canonical sum
    last = NTIER - 1
    nrel = 0
    extra = 0.0
    nscan = 0
    for i in range(n):
        gP = c * rowv[RV_DP, i]
        gpi = c * rowv[RV_PI, i]
        rmode[i] = 0
        if entry_bound(tierv[0, last, i], tierv[1, last, i], amax, dmax, rmax, gP, gpi, slack,
                       margin) > lam:
            reach = 0
            for j in range(n):
                if P[i, j] > 0.0:
                    reach += ptr[j + 1] - ptr[j]
            extra += n
            if COST_SCATTER * reach >= fstate[EF_SCATTER] * COST_SCAN * m:
                rmode[i] = 1
                frows[nscan] = i
                nscan += 1
            else:
                extra += COST_SCATTER * reach
                counters[CT_ROWSCATTERS] += 1
                for t in range(row_scatter(i, sup, P, scr)):
                    k = klist[t]
                    f = c * abs(acc[k])
                    acc[k] = 0.0
                    mark[k] = False
                    if f * (1.0 + slack) + direct > lam and not is_nonzero(bits, i, k):
                        extra += COST_CANONICAL * (colcnt[k] + 1)
                        counters[CT_CANONICAL] += 1
                        nrel = try_release(i, k, csc, colvals, P, c, lam, rel, nrel)
                continue
        for t in range(last):
            if entry_bound(tierv[0, t, i], tierv[1, t, i], amax, dmax, rmax, gP, gpi, slack,
                           margin) <= lam:
                continue
            extra += COST_ENTRY * (toff[i, t + 1] - toff[i, t])
            for x in range(toff[i, t], toff[i, t + 1]):
                k = tcol[x]
                if entry_bound(tphi[x], tsig[x], acol[k], dcol[k], rcol[k], gP, gpi, slack,
                               margin) > lam and not is_nonzero(bits, i, k):
                    extra += COST_CANONICAL * (colcnt[k] + 1)
                    counters[CT_CANONICAL] += 1
                    nrel = try_release(i, k, csc, colvals, P, c, lam, rel, nrel)
    extra += COST_SCAN * nscan * m
    counters[CT_ROWSCANS] += nscan
    for t in range(nscan):
        i = frows[t]
        gP = c * rowv[RV_DP, i]
        gpi = c * rowv[RV_PI, i]
        phir, sigr = phi[i], sig[i]
        for k in range(m):
            if phir[k] >= 0.0 and entry_bound(up32(phir[k]), up32(sigr[k]), acol[k], dcol[k], rcol[k],
                                              gP, gpi, slack, margin) > lam and not is_nonzero(bits, i, k):
                extra += COST_CANONICAL * (colcnt[k] + 1)
                counters[CT_CANONICAL] += 1
                nrel = try_release(i, k, csc, colvals, P, c, lam, rel, nrel)
    fstate[EF_EXTRA] += extra
    return nrel


@numba.njit(**_opts)
def direct_releases(bits, sup, csc, colvals, P, pairs, npairs, scr, nbr, rel, pmax, amax, c, lam,
                    counters):
    """List in rel every zero whose canonical force exceeds λ, from a scatter of every
    row's forces over its positive neighbours' supports (canonical check where that
    value, enlarged for rounding, exceeds λ): the cheaper way when few rows share
    columns. nbr = (ptr (n+1,), rows (2·npairs,)) is scratch. Returns the list's length."""
    ptr = sup[0]
    nptr, nrow = nbr
    acc, mark, klist = scr[0], scr[1], scr[2]
    n = ptr.shape[0] - 1
    slack = _rounding(n)
    direct = 2.0 * slack * c * pmax * amax  # rounding of a scattered and a canonical sum
    nptr[:] = 0
    for q in range(npairs):
        nptr[pairs[q, 0] + 1] += 1
        nptr[pairs[q, 1] + 1] += 1
    for i in range(n):
        nptr[i + 1] += nptr[i]
    for q in range(npairs):  # nptr[i] runs to the end of row i's list
        a, b = pairs[q, 0], pairs[q, 1]
        nrow[nptr[a]] = b
        nptr[a] += 1
        nrow[nptr[b]] = a
        nptr[b] += 1
    nrel = 0
    lo = 0
    for i in range(n):
        nk = 0
        for t in range(lo, nptr[i]):
            j = nrow[t]
            p = P[i, j]
            for q in range(ptr[j], ptr[j + 1]):
                k = sup[1][q]
                if not mark[k]:
                    mark[k] = True
                    klist[nk] = k
                    nk += 1
                acc[k] += p * sup[2][q]
        lo = nptr[i]
        for t in range(nk):
            k = klist[t]
            f = c * abs(acc[k])
            acc[k] = 0.0
            mark[k] = False
            if f * (1.0 + slack) + direct > lam and not is_nonzero(bits, i, k):
                counters[CT_CANONICAL] += 1
                nrel = try_release(i, k, csc, colvals, P, c, lam, rel, nrel)
    return nrel


@numba.njit(**_opts)
def release_phase(bits, sup, csc, colvals, gram, snap, tab, scr, nbr, rel, istate, fstate, rowv, colv,
                  tile, amax, c, lam, counters):
    """List in rel every zero whose canonical force exceeds λ at the step start
    (amax: the largest column sum of |W|). Directly (``direct_releases``) when a
    scatter over the positive pairs costs less than ``fstate[EF_DIRECT]`` times
    evaluating bound (B); else by the bound, beginning an epoch when there is none or
    when the work on failed bounds since the last one exceeds ``fstate[EF_BUDGET]``
    times its own. Returns the number listed. (The policy knobs EF_BUDGET, EF_DIRECT,
    EF_SCATTER, EF_WATCH change the work done, never a result.)"""
    ptr = sup[0]
    P, pairs = gram[1], gram[3]
    npairs = istate[ES_PAIRS]
    n = ptr.shape[0] - 1
    reach = 0
    pmax = 0.0
    for q in range(npairs):
        a, b = pairs[q, 0], pairs[q, 1]
        reach += ptr[a + 1] - ptr[a] + ptr[b + 1] - ptr[b]
        pmax = max(pmax, P[a, b])
    if COST_SCATTER * reach < fstate[EF_DIRECT] * (n + npairs + istate[ES_PAIRS0]):
        counters[CT_DIRECT] += 1
        nrel = direct_releases(bits, sup, csc, colvals, P, pairs, npairs, scr, nbr, rel, pmax, amax,
                               c, lam, counters)
        counters[CT_REL_BETWEEN] += nrel
        return nrel
    pmax = bound_inputs(P, pairs, npairs, snap[0], snap[1], istate[ES_PAIRS0], rowv)
    dmax, rmax = fstate[EF_DMAX], fstate[EF_RMAX]
    epoch = istate[ES_VALID] == 0 or fstate[EF_EXTRA] > fstate[EF_BUDGET] * fstate[EF_WORK]
    if epoch:
        epoch_begin(sup, csc, colvals, P, pairs, npairs, snap, tab, istate, fstate, rowv, colv, tile,
                    pmax, amax, c, lam)
        dmax = 0.0
        rmax = 0.0
        counters[CT_EPOCHS] += 1
    nrel = release_checks(bits, sup, csc, colvals, P, tab, scr, rel, fstate, rowv, colv, pmax, amax,
                          dmax, rmax, c, lam, counters)
    counters[CT_REL_EPOCH if epoch else CT_REL_BETWEEN] += nrel
    return nrel


@numba.njit(**_opts)
def merge_releases(sup, F, rel, nrel, e0ptr, e0col, wk):
    """The step's working set wk = (ptr, cols, vals, signs, forces, born): each row's
    support (values, signs, the forces F at the step start) with its released zeros
    (value 0, the sign and force of their release), sorted by column; an entry is born
    since the epoch began if it was or is a released zero not in the epoch's support.
    rel = (rows, columns, forces, signs, scratch) lists the nrel releases."""
    ptr, cols, vals, born = sup
    ri, rk, rf, rs, order = rel
    wptr, wcol, wval, wsgn, wF, wborn = wk
    n = ptr.shape[0] - 1
    wptr[:] = 0  # the releases by row (a counting sort), then by column within each row
    for r in range(nrel):
        wptr[ri[r] + 1] += 1
    for i in range(n):
        wptr[i + 1] += wptr[i]
    for r in range(nrel):
        y = wptr[ri[r]]
        order[y] = r
        wptr[ri[r]] = y + 1
    lo = 0
    for i in range(n):  # wptr[i] is now the end of row i's releases in order
        for y in range(lo + 1, wptr[i]):
            o = order[y]
            z = y
            while z > lo and rk[order[z - 1]] > rk[o]:
                order[z] = order[z - 1]
                z -= 1
            order[z] = o
        lo = wptr[i]
    r = 0
    x = 0
    for i in range(n):
        end = wptr[i]
        wptr[i] = x
        q, e = ptr[i], ptr[i + 1]
        while q < e or r < end:
            if r < end and (q >= e or rk[order[r]] < cols[q]):
                o = order[r]
                k = rk[o]
                wcol[x], wval[x], wsgn[x], wF[x] = k, 0.0, rs[o], rf[o]
                lo, hi = e0ptr[i], e0ptr[i + 1]
                while lo < hi:
                    mid = (lo + hi) // 2
                    if e0col[mid] < k:
                        lo = mid + 1
                    else:
                        hi = mid
                wborn[x] = 0 if (lo < e0ptr[i + 1] and e0col[lo] == k) else 1
                r += 1
            else:
                wcol[x], wval[x], wF[x], wborn[x] = cols[q], vals[q], F[q], born[q]
                wsgn[x] = 1.0 if vals[q] > 0.0 else -1.0
                q += 1
            x += 1
    wptr[n] = x


@numba.njit(**_opts)
def _sign(w, stored):
    """The frozen sign of a working entry: sign(w), or ``stored`` (a release's) at 0."""
    return 1.0 if w > 0.0 else (-1.0 if w < 0.0 else stored)


@numba.njit(**_opts)
def sparse_update(wk, Kc, newv, h, b, euler, lam):
    """New values of the working entries wk = (ptr, cols, vals, release signs, forces,
    born) into newv: proximal Euler, or the Runge-Kutta sum with frozen signs (a weight
    whose sign would flip becomes 0). Returns all-finite."""
    wptr, wval, wsgn, wF = wk[0], wk[2], wk[3], wk[4]
    S = b.shape[0]
    finite = True
    for x in range(wptr[wptr.shape[0] - 1]):
        w = wval[x]
        if euler:
            y = w + h * wF[x]
            r = abs(y) - h * lam
            v = (r if y > 0.0 else -r) if r > 0.0 else 0.0
        else:
            v = w
            for jj in range(S):
                v += h * b[jj] * Kc[jj, x]
            v = v if v * _sign(w, wsgn[x]) > 0.0 else 0.0
        if not np.isfinite(v):
            finite = False
        newv[x] = v
    return finite


@numba.njit(**_opts)
def apply_step(W, bits, wk, newv, sup, h, conv_tol, colv, rcols, klist, istate, fstate):
    """The new support from the working set wk and its new values newv: the nonzero
    entries (in column order) into sup, which may be wk itself (compacted in place);
    births and deaths into W and the bitmap (the values of W are written by
    ``write_back``). Adds the step's max_j |ΔW_jk| to the bound on δ_k (colv[CV_D];
    colv[CV_STEP] and klist (m,) scratch) and puts r_k, Σ |W_jk| over the entries born
    since the epoch began, into colv[CV_R] (its columns in rcols), with their maxima in
    fstate.

    Returns (nonzeros, largest row count, whether a support changed, max|ΔW|/h)."""
    wptr, wcol, wval, wborn = wk[0], wk[1], wk[2], wk[5]
    ptr, cols, vals, born = sup
    dcol, rcol, dstep = colv[CV_D], colv[CV_R], colv[CV_STEP]
    n = ptr.shape[0] - 1
    for t in range(istate[ES_RCOLS]):
        rcol[rcols[t]] = 0.0
    nr = 0
    nk = 0
    worst = 0
    changed = False
    rate = 0.0
    q = 0
    hi = wptr[0]
    for i in range(n):
        lo, hi = hi, wptr[i + 1]  # read before ptr[i] is written (wk may be sup)
        ptr[i] = q
        for x in range(lo, hi):
            k = wcol[x]
            v = newv[x]
            w = wval[x]
            bx = wborn[x]
            d = abs(v - w)
            rate = max(rate, d)
            if d > dstep[k]:
                if dstep[k] == 0.0:
                    klist[nk] = k
                    nk += 1
                dstep[k] = d
            if v != 0.0:
                cols[q] = k
                vals[q] = v
                born[q] = bx
                q += 1
                if bx != 0:
                    if rcol[k] == 0.0:
                        rcols[nr] = k
                        nr += 1
                    rcol[k] += abs(v)
            if (v != 0.0) != (w != 0.0):
                changed = True
                W[i, k] = v
                set_nonzero(bits, i, k, v != 0.0)
        worst = max(worst, q - ptr[i])
    ptr[n] = q
    dmax = fstate[EF_DMAX]
    for t in range(nk):  # the columns that moved (wk may have been compacted over)
        k = klist[t]
        dcol[k] += dstep[k]
        dstep[k] = 0.0
        dmax = max(dmax, dcol[k])
    rmax = 0.0
    for t in range(nr):
        rmax = max(rmax, rcol[rcols[t]])
    istate[ES_RCOLS] = nr
    fstate[EF_DMAX], fstate[EF_RMAX] = dmax, rmax
    return q, worst, changed, rate / h if conv_tol > 0.0 else 0.0


@numba.njit(**_opts)
def rk_stages(wk, Kc, U, F, csc, ns, dense, colvals, gram, istate, norms, acc, h, a, fb, c, lam):
    """Stages 1.. of a Runge-Kutta step on the working set wk (stage 0 in Kc[0]; the
    column index built on wk): ``Kc[st] = F(U) - λ s`` at ``U = W + h Σ_j a[st, j] Kc[j]``,
    frozen signs s. U and F (n·m,) are scratch."""
    wptr, wval, wsgn = wk[0], wk[2], wk[3]
    nw = wptr[wptr.shape[0] - 1]
    for st in range(1, Kc.shape[0]):
        for x in range(nw):
            v = wval[x]
            for jj in range(st):
                if a[st, jj] != 0.0:
                    v += h * a[st, jj] * Kc[jj, x]
            U[x] = v
        csc_values(wptr, U, csc, ns, colvals, norms)
        sparse_force(wptr, U, csc, ns, dense, colvals, gram, istate, norms, acc, fb, c, F)
        for x in range(nw):
            Kc[st, x] = F[x] - lam * _sign(wval[x], wsgn[x])


@numba.njit(**_opts)
def sparse_run(W, bits, sup, wk, newv, Fq, Kc, csc, colvals, gram, norms, acc, snap, tab, scr, nbr, rel,
               istate, fstate, rowv, colv, tile, counters, t, j, t1, dt, jmax, a, b, euler, fb, c,
               lam, stop_nnz, dense_above, conv_tol, conv_window, out):
    """Explicit steps with L1 on, on packed supports; same contract as :func:`rows_run`.

    sup = (ptr (n+1,), cols, vals, born): row i's support (nonzero entries) is
    ``cols[ptr[i]:ptr[i+1]]``, ascending, with its values, so that the state (and the
    order of every sum) is a function of W alone; born marks the entries born since the
    epoch began. W holds the support's pattern during the run (bits: the same as a
    bitmap) and its values when the run returns. Each step evaluates the forces on the
    support, lists the releases (``release_phase``), merges them into the working set
    wk (``merge_releases``; the support itself when there are none) and takes the step
    of ``forces.reference_step`` on it (Lie splitting for ``euler``, frozen signs for
    the Runge-Kutta methods; Kc (S, n·m) stages, newv and Fq (n·m,) scratch). Also
    stops (status 5) after a step that leaves more than ``dense_above`` nonzeros in all,
    for the caller to go on with the dense engine.
    out : (OUT_SIZE,) float64 (see OUT_*); OUT_RELEASES counts released zeros.
    """
    ptr, cols, vals, born = sup
    acol = colv[CV_A]
    n = W.shape[0]
    S = b.shape[0]
    j0 = j
    status = STATUS_DONE
    releases = 0
    while t < t1:
        t_next = step_end(j, t1, dt)
        h = t_next - t
        nt, ns, updates, amax = csc_pattern(ptr, cols, vals, csc, colvals, norms, acol)
        dense = 2 * updates > n * n
        sparse_force(ptr, vals, csc, ns, dense, colvals, gram, istate, norms, acc, fb, c, Fq)
        nrel = release_phase(bits, sup, csc, colvals, gram, snap, tab, scr, nbr, rel, istate, fstate, rowv,
                             colv, tile, amax, c, lam, counters)
        releases += nrel
        work = (ptr, cols, vals, wk[3], Fq, born)
        if nrel > 0:
            merge_releases(sup, Fq, rel, nrel, snap[2], snap[3], wk)
            work = wk
        wptr, wval, wsgn, wF = work[0], work[2], work[3], work[4]
        if not euler:
            for x in range(wptr[n]):
                Kc[0, x] = wF[x] - lam * _sign(wval[x], wsgn[x])
            if nrel > 0:  # the stages run on the working set with the released entries
                csc_clear(csc, nt, acol)
                nt, ns, updates, amax = csc_pattern(wptr, work[1], wval, csc, colvals, norms, acol)
                dense = 2 * updates > n * n
            rk_stages(work, Kc, newv, Fq, csc, ns, dense, colvals, gram, istate, norms, acc, h, a,
                      fb, c, lam)
        csc_clear(csc, nt, acol)
        if not sparse_update(work, Kc, newv, h, b, euler, lam):
            status = STATUS_NONFINITE  # the support still holds the last finite step
            break
        total, worst, changed, rate = apply_step(W, bits, work, newv, sup, h, conv_tol, colv, snap[4],
                                                 scr[2], istate, fstate)
        counters[CT_STEPS] += 1
        j += 1
        t = t_next
        out[OUT_EVALS] += S
        status = sparse_step_status(changed, rate, t, t1, j, j0, jmax, worst, total, stop_nnz,
                                    dense_above, conv_tol, conv_window, out)
        if status != STATUS_DONE:
            break
    write_back(W, sup)
    finish_run(out, t, j, status, releases)


@numba.njit(**_opts)
def release_bounds(fstate, tab, rowv, colv, pmax, amax, dmax, rmax, c, Bent, Btier):
    """The bounds of the current epoch as ``release_checks`` evaluates them (rounding
    slack included): bound (B) on every entry into Bent (n, m); each tier's row bound
    into Btier (NTIER, n). After ``bound_inputs`` at the current W (for tests)."""
    phi, sig, tierv, tcol, toff, tphi, tsig = tab[0], tab[1], tab[2], tab[3], tab[4], tab[6], tab[7]
    n, m = phi.shape
    slack = _rounding(n)
    margin = slack * c * (fstate[EF_PI0MAX] * fstate[EF_A0MAX] + pmax * amax)
    for i in range(n):
        gP = c * rowv[RV_DP, i]
        gpi = c * rowv[RV_PI, i]
        for k in range(m):
            Bent[i, k] = entry_bound(up32(phi[i, k]), up32(sig[i, k]), colv[CV_A, k], colv[CV_D, k],
                                     colv[CV_R, k], gP, gpi, slack, margin)
        for y in range(toff[i, 0], toff[i, NTIER - 1]):
            k = tcol[y]
            Bent[i, k] = entry_bound(tphi[y], tsig[y], colv[CV_A, k], colv[CV_D, k],
                                     colv[CV_R, k], gP, gpi, slack, margin)
        for t in range(NTIER):
            Btier[t, i] = entry_bound(tierv[0, t, i], tierv[1, t, i], amax, dmax, rmax, gP, gpi,
                                      slack, margin)


@numba.njit(**_opts)
def dense_euler_step(W, PW, norms, fb, c, h, lam, use_sign, V, colmask):
    """One Euler step of the dense engine, row by row: ``V = S_{hλ}(W + h F)`` with
    ``F = fb c (1 - norms_i) W_i - c PW_i`` (no soft-threshold unless ``use_sign``; the
    arithmetic of ``combine_force`` then ``prox_euler``), then the summary of
    ``dense_step_summary`` on the row (two tight loops per row, while it is in cache).
    W, PW, V (n, m), norms (n,), colmask (m,).

    Returns ``(all finite, nonzeros of V, whether the support changed, max |V - W|)``.
    """
    n, m = W.shape
    thr = h * lam
    for k in range(m):
        colmask[k] = False
    finite = True
    total = 0
    flips = 0
    diff = 0.0
    for i in range(n):
        g = fb * c * (1.0 - norms[i])
        for k in range(m):
            w = W[i, k]
            x = w + h * (g * w - c * PW[i, k])
            if use_sign:
                r = abs(x) - thr
                x = (r if x > 0.0 else -r) if r > 0.0 else 0.0
            V[i, k] = x
        for k in range(m):
            x = V[i, k]
            w = W[i, k]
            if not np.isfinite(x):
                finite = False
            nz = x != 0.0
            total += nz
            flips += nz != (w != 0.0)
            colmask[k] |= nz
            d = abs(x - w)
            if d > diff:
                diff = d
    return finite, total, flips > 0, diff


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
