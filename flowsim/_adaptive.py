"""Error control shared by the adaptive methods of every engine (numba).

A trial step of an embedded pair (``forces.EMBEDDED``) from W gives the propagated
solution V (signs frozen over the step, a weight that would cross 0 set to exactly 0,
as for heun/rk4), the same sum before that projection, V_raw, and the embedded solution
V̂ = W + h Σ b̂_j K_j. Its error norm is the largest, over the active entries (nonzero or
released at the step start), of

    |V_raw - V̂| / (atol + rtol·max(|W|, |V|)),

and 0 for a pinned zero. Over a step the active entries follow a smooth ODE (frozen
signs), so V_raw - V̂ is the ordinary local error estimate of that ODE, whether or not
the entry reaches 0 in the step. The events of the sign force do not enter it:

* a weight that reaches 0 is at 0 in the true flow too, and is not charged for it. If
  the other forces carry it on through 0 with more than λ, the step rule leaves that to
  the release at the next step, losing at most one step's motion. Charging for it (say
  h·max(0, |F| - λ)) shrinks the global step to ~atol/|F| at every such death, thousands
  of times in a Figure 3 run; left uncharged, the loss shrinks with the step sizes the
  smooth error imposes, so a tighter tolerance still reduces it;
* a pinned zero's release is decided at the start of the next step, a delay of less
  than a step while the force on it grows from λ: O(h²) once per release.

A step too large for the flow, one that kills weights it should not, is caught: their
V_raw is far from V̂. With L1 off every entry is active. The norm is a maximum, not an
RMS over the n·m entries, so that it does not shrink as the weights become sparse.

The step size follows a PI controller (Gustafsson; Hairer & Wanner, II.4):
``h_new = h · clip(0.9 · err^(-0.7/q) · err_prev^(0.4/q), 0.2, 5)`` after an accepted
step (no growth right after a rejection), ``h · max(0.2, 0.9 · err^(-1/q))`` after a
rejected one, where q is the order of the embedded solution plus one; never above a
cap (``start``). ``simulate`` caps the steps at 1/c: at a converged state the stiffest
mode is the radial feature benefit at |W_i| = 1, eigenvalue -2c, and BS32 is stable for
h·2c <= 2.51. Without the cap the controller settles at that limit, where the step's
own parasitic oscillation is what the error estimate sees, and max|ΔW|/Δt stays at the
tolerance level instead of decaying (measured: 1.1e-3 for 1000 time units at rtol 1e-3,
n = 64, m = 256, so the convergence rule never held); at h = 1/c that mode shrinks by
a factor 3 a step.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import _kernels as K
from ._kernels import _opts

SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 5.0
#: Floor of the previous error in the PI term (as in Hairer's DOPRI5).
ERR_FLOOR = 1e-4
#: A step below this fraction of max(1, t) ends the run as a step-size underflow.
H_UNDERFLOW = 1e-13
OUT_H, OUT_ERRPREV, OUT_REJLAST, OUT_REJECTED = K.OUT_H, K.OUT_ERRPREV, K.OUT_REJLAST, K.OUT_REJECTED
OUT_HMIN, OUT_HMAX, OUT_HCAP = K.OUT_HMIN, K.OUT_HMAX, K.OUT_HCAP


def start(out, h0, h_cap=math.inf):
    """Initial controller state in ``out`` (see ``_kernels.OUT_*``): first step h0, no
    step larger than h_cap."""
    out[OUT_HCAP] = h_cap
    out[OUT_H] = min(h0, h_cap)
    out[OUT_ERRPREV] = 1.0  # neutral: the first step's size follows its own error alone
    out[OUT_REJLAST] = 0.0
    out[OUT_REJECTED] = 0.0
    out[OUT_HMIN] = math.inf
    out[OUT_HMAX] = 0.0


@numba.njit(**_opts)
def control(err, h, q, out):
    """Accept or reject a trial step of size h with error norm err (NaN counts as
    infinite); sets the next step size out[OUT_H] and the controller state. Returns
    True if the step is accepted."""
    if err <= 1.0:
        if err == 0.0:
            fac = FAC_MAX
        else:
            fac = SAFETY * err ** (-0.7 / q) * out[OUT_ERRPREV] ** (0.4 / q)
            fac = min(FAC_MAX, max(FAC_MIN, fac))
        if out[OUT_REJLAST] != 0.0:
            fac = min(fac, 1.0)
        out[OUT_ERRPREV] = max(err, ERR_FLOOR)
        out[OUT_REJLAST] = 0.0
        out[OUT_HMIN] = min(out[OUT_HMIN], h)
        out[OUT_HMAX] = max(out[OUT_HMAX], h)
        out[OUT_H] = min(h * fac, out[OUT_HCAP])
        return True
    fac = FAC_MIN
    if np.isfinite(err):
        fac = max(FAC_MIN, SAFETY * err ** (-1.0 / q))
    out[OUT_H] = h * fac
    out[OUT_REJLAST] = 1.0
    out[OUT_REJECTED] += 1.0
    return False


@numba.njit(**_opts)
def trial_size(t, t1, t_end, out):
    """The size of the next trial step from t: out[OUT_H], shortened to end at t_end.
    Returns 0.0 when that step would pass t1 < t_end (the caller stops before it: a save
    time is reached by a side run, so it never shortens a step of the run), and -1.0
    on step-size underflow."""
    h = out[OUT_H]
    if h < H_UNDERFLOW * max(1.0, abs(t)):
        return -1.0
    if t + h >= t_end - 1e-12 * max(1.0, abs(t_end)):
        return t_end - t if t1 >= t_end else 0.0
    if t + h > t1:
        return 0.0
    return h


@numba.njit(**_opts)
def step_time(t, h, t_end):
    """Time after an accepted step of size h from t (exactly t_end for the last one)."""
    return t_end if t + h >= t_end - 1e-12 * max(1.0, abs(t_end)) else t + h


@numba.njit(**_opts)
def entry_error(w, v, vraw, vhat, s, rtol, atol):
    """Error of one entry (module notes): w at the step start, v propagated, vraw the
    same before the projection to 0, vhat embedded, s its frozen sign (0: pinned; pass
    1 with L1 off)."""
    if s == 0.0:
        return 0.0
    return abs(vraw - vhat) / (atol + rtol * max(abs(w), abs(v)))


@numba.njit(**_opts)
def dense_error(W, V, Vraw, Vhat, s, use_sign, rtol, atol):
    """Error norm of a trial step on dense arrays (n, m): W start, V propagated, Vraw
    before the projection, Vhat embedded, s frozen signs (read only with ``use_sign``).
    Returns inf if any value is non-finite."""
    n, m = W.shape
    err = 0.0
    for i in range(n):
        for k in range(m):
            sk = s[i, k] if use_sign else 1.0
            e = entry_error(W[i, k], V[i, k], Vraw[i, k], Vhat[i, k], sk, rtol, atol)
            if not (e <= err):
                if not np.isfinite(e) or not np.isfinite(V[i, k]):
                    return np.inf
                err = e
    return err
