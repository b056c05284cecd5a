"""numba kernels of the co-occurrence model (``flowsim.cooccur``; its NumPy reference is
``cooccur.reference_force`` / ``cooccur.reference_step``). Preallocated outputs, scalar
switches, cache=True."""
from __future__ import annotations

import numba
import numpy as np

_opts = dict(cache=True, nogil=True, error_model="numpy")
#: pair_sign_force sorts a column's partner values when it has more than this many.
SORT_ABOVE = 12


@numba.njit(**_opts)
def pair_matrix(G, B):
    """B_ki = Σ_{j≠i} 2·1[S>0]·(S - u_k), S = G_ki + G_kj, u_k = [k = i] + [k = j].

    Column i of B is the sum over the pair inputs e_i + e_j (j ≠ i) of the output-error
    derivative g = 2 (ReLU(a) - x) ⊙ 1[a > 0], a = G (e_i + e_j). G, B : (n, n).
    Computed as 2[Σ_j (G_ki + G_kj)⁺ - (2G_ki)⁺] minus the target terms (for k = i,
    2 #{j≠i : S > 0}; for k ≠ i, 2·1[G_ki + G_kk > 0], the pair j = k), the sum over j
    from row k sorted once and suffix sums (S > 0 ⇔ G_kj > -G_ki): O(n² log n).
    """
    n = G.shape[0]
    suffix = np.empty(n + 1)
    for k in range(n):
        row = np.sort(G[k])
        suffix[n] = 0.0
        for r in range(n - 1, -1, -1):
            suffix[r] = suffix[r + 1] + row[r]
        for i in range(n):
            a = G[k, i]
            idx = np.searchsorted(row, -a, side="right")
            cnt = n - idx
            acc = cnt * a + suffix[idx]
            self_pos = 2.0 * a > 0.0
            if self_pos:
                acc -= 2.0 * a
            if k == i:
                B[k, i] = 2.0 * (acc - (cnt - (1 if self_pos else 0)))
            else:
                B[k, i] = 2.0 * (acc - (1.0 if a + G[k, k] > 0.0 else 0.0))


@numba.njit(**_opts)
def pair_sign_force(U, Wsup, lam_pair, F, vals):
    """F_ik -= lam_pair Σ_{j≠i, Wsup_jk≠0} sign(U_ik + U_jk) (sign(0) = 0).

    The L1 term of the pair inputs with a partner on the support of ``Wsup`` (the weights
    at the start of the step). U, Wsup, F : (n, m); vals : (n,) float scratch. Per column
    the partners' values are sorted: Σ_j sign(u + v_j) = #{v_j > -u} - #{v_j < -u}.
    """
    n, m = U.shape
    for k in range(m):
        cnt = 0
        for j in range(n):
            if Wsup[j, k] != 0.0:
                vals[cnt] = U[j, k]
                cnt += 1
        if cnt == 0:
            continue
        if cnt > SORT_ABOVE:
            v = np.sort(vals[:cnt])
        for i in range(n):
            u = U[i, k]
            if cnt > SORT_ABOVE:
                acc = float(cnt - np.searchsorted(v, -u, side="right") - np.searchsorted(v, -u, side="left"))
            else:
                acc = 0.0
                for r in range(cnt):
                    x = u + vals[r]
                    acc += (1.0 if x > 0.0 else 0.0) - (1.0 if x < 0.0 else 0.0)
            if Wsup[i, k] != 0.0:  # the partner j = i is not a pair
                acc -= (1.0 if u > 0.0 else 0.0) - (1.0 if u < 0.0 else 0.0)
            F[i, k] -= lam_pair * acc


@numba.njit(**_opts)
def thresholds(W, lam_single, lam_pair, L):
    """L_ik = lam_single + lam_pair · #{j ≠ i : W_jk = 0}: the separable L1 weight of entry
    (i, k) (its own single input and every pair whose partner is at 0). W, L : (n, m)."""
    n, m = W.shape
    for k in range(m):
        nz = 0
        for j in range(n):
            if W[j, k] != 0.0:
                nz += 1
        for i in range(n):
            zeros = n - 1 - (nz - (1 if W[i, k] != 0.0 else 0))
            L[i, k] = lam_single + lam_pair * zeros


@numba.njit(**_opts)
def prox_euler_var(W, F, h, L, use_sign, V):
    """V = S_{h L}(W + h F) entrywise (plain Euler when not ``use_sign``). Returns all-finite."""
    n, m = W.shape
    ok = True
    for i in range(n):
        for k in range(m):
            x = W[i, k] + h * F[i, k]
            if use_sign:
                r = abs(x) - h * L[i, k]
                x = (r if x > 0.0 else -r) if r > 0.0 else 0.0
            if not np.isfinite(x):
                ok = False
            V[i, k] = x
    return ok


@numba.njit(**_opts)
def sign_pattern_var(W, F0, L, s):
    """Frozen signs: sign(w), or for a zero sign(F) where |F| > L_ik, else 0."""
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
                s[i, k] = (1.0 if f > 0.0 else -1.0) if abs(f) > L[i, k] else 0.0


@numba.njit(**_opts)
def masked_stage_var(F, s, L, use_sign, K):
    """K = F - L s on active weights, 0 on pinned ones (``use_sign``); else K = F."""
    n, m = F.shape
    for i in range(n):
        for k in range(m):
            if use_sign:
                sk = s[i, k]
                K[i, k] = F[i, k] - L[i, k] * sk if sk != 0.0 else 0.0
            else:
                K[i, k] = F[i, k]
