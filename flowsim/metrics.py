"""Which neurons represent which features: polysemanticity, dead features, collisions.

Every function is a pure function of the weights ``W`` (shape (n, m): rows are features,
columns are neurons) and, where the initial state matters, of ``W0``.

Feature i is *represented* by neuron k when ``|W_ik| > threshold`` (default 0.5), or,
with ``window=(lo, hi)``, when ``lo <= |W_ik| <= hi`` (the published window is
(0.8, 1.2)). A neuron is *polysemantic* when it represents two or more features; a
feature is *dead* when no neuron represents it.

The *leading neuron* of feature i is ``argmax_k |W_ik|``. Two features *collide* at
initialisation when their leading neurons in ``W0`` coincide (paper, Section 1.1); the
collision is *benign* when their weights on that neuron have opposite signs (the ReLU
clips the interference, so both can keep the neuron) and *malign* when the signs agree
(Section 2.5). A three-way collision counts as three pairs (footnote 3).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import check_float, invalid

__all__ = [
    "CollisionCounts",
    "count_polysemantic",
    "dead_features",
    "initial_collisions",
    "leading_neuron",
    "lineage",
    "neuron_features",
    "polysemantic_neurons",
    "represented",
    "summary",
]


def _weights(name, W):
    """Return ``W`` as a finite float64 array of shape (n, m), n, m >= 1 (no copy if possible)."""
    try:
        A = np.asarray(W)
    except (TypeError, ValueError):
        raise invalid(name, type(W).__name__, "must be a real array") from None
    if A.dtype.kind not in "biuf":
        raise invalid(name, type(W).__name__, "must be a real array")
    if A.ndim != 2:
        raise invalid(f"{name}.ndim", A.ndim, "must be 2 (rows = features, columns = neurons)")
    if A.shape[0] < 1 or A.shape[1] < 1:
        raise invalid(f"{name}.shape", A.shape, "must be (n, m) with n, m >= 1")
    A = A.astype(np.float64, copy=False)
    if not np.isfinite(A).all():
        bad = int(np.count_nonzero(~np.isfinite(A)))
        raise invalid(name, f"<{bad} non-finite entries>", "every entry must be finite")
    return A


def _pair(W0, W):
    W0 = _weights("W0", W0)
    W = _weights("W", W)
    if W.shape != W0.shape:
        raise invalid("W.shape", W.shape, f"must equal W0.shape = {W0.shape}")
    return W0, W


def _window(window):
    allowed = "must be None or (lo, hi) with finite 0 < lo < hi"
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise invalid("window", window, allowed) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise invalid("window", window, allowed)
    return lo, hi


def represented(W, threshold=0.5, window=None) -> np.ndarray:
    """Which neurons represent which features.

    Parameters
    ----------
    W : array_like, shape (n, m)
    threshold : float
        Feature i is represented by neuron k when ``|W_ik| > threshold`` (finite, > 0).
        Ignored when ``window`` is given (but still validated).
    window : (float, float) or None
        ``(lo, hi)`` with ``0 < lo < hi``: represented when ``lo <= |W_ik| <= hi``.

    Returns
    -------
    R : ndarray, shape (n, m), bool
    """
    W = _weights("W", W)
    t = check_float("threshold", threshold, positive=True)
    win = _window(window)
    # Comparisons on W and -W avoid a full-size float |W| temporary (m can be ~10^5).
    if win is None:
        return (W > t) | (W < -t)
    lo, hi = win
    return ((W >= lo) & (W <= hi)) | ((W <= -lo) & (W >= -hi))


def polysemantic_neurons(W, threshold=0.5, window=None) -> np.ndarray:
    """Indices of the neurons that represent two or more features.

    Parameters
    ----------
    W, threshold, window : see :func:`represented`.

    Returns
    -------
    ndarray, shape (p,), int64, increasing
    """
    counts = np.count_nonzero(represented(W, threshold, window), axis=0)
    return np.flatnonzero(counts >= 2).astype(np.int64)


def count_polysemantic(W, threshold=0.5, window=None) -> int:
    """Number of neurons that represent two or more features (see :func:`represented`)."""
    return int(polysemantic_neurons(W, threshold, window).size)


def neuron_features(W, threshold=0.5, window=None) -> list:
    """For each neuron, the features it represents.

    Parameters
    ----------
    W, threshold, window : see :func:`represented`.

    Returns
    -------
    list of m ndarrays, each shape (r_k,), int64
        Entry k holds the increasing indices of the features neuron k represents (views
        into one shared array; one ``nonzero`` pass, no Python loop over rows).
    """
    R = represented(W, threshold, window)
    k, i = np.nonzero(R.T)  # row-major over R.T: sorted by neuron, then by feature
    bounds = np.cumsum(np.bincount(k, minlength=R.shape[1]))[:-1]
    return np.split(i.astype(np.int64), bounds)


def dead_features(W, threshold=0.5, window=None) -> np.ndarray:
    """Indices of the features that no neuron represents.

    Parameters
    ----------
    W, threshold, window : see :func:`represented`.

    Returns
    -------
    ndarray, shape (d,), int64, increasing
    """
    return np.flatnonzero(~represented(W, threshold, window).any(axis=1)).astype(np.int64)


def leading_neuron(W) -> np.ndarray:
    """The neuron with the largest |weight| for each feature.

    Parameters
    ----------
    W : array_like, shape (n, m)

    Returns
    -------
    ndarray, shape (n,), int64
        ``argmax_k |W_ik|``; ties go to the lowest index; -1 for an all-zero row.
    """
    W = _weights("W", W)
    rows = np.arange(W.shape[0])
    # argmax |W| = whichever of argmax W, argmin W has the larger magnitude; each is the
    # lowest index attaining its extreme, so on a tie |max| = |min| the smaller of the two
    # is the lowest index attaining max |W|. Avoids a float |W| temporary.
    hi = np.argmax(W, axis=1)
    lo = np.argmin(W, axis=1)
    top = W[rows, hi]
    bottom = -W[rows, lo]
    lead = np.where(top > bottom, hi, np.where(top < bottom, lo, np.minimum(hi, lo)))
    return np.where(np.maximum(top, bottom) > 0.0, lead, -1).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class CollisionCounts:
    """Collisions between features at initialisation.

    Attributes
    ----------
    total : int
        Pairs of features i < j with the same leading neuron.
    benign : int
        Those whose weights on the shared neuron have opposite signs.
    malign : int
        Those whose weights on the shared neuron have the same sign.
    pairs : ndarray, shape (P, 2), int64
        The colliding pairs (i, j), i < j, sorted lexicographically; P = total.
    pair_benign : ndarray, shape (P,), bool
        Whether each pair of ``pairs`` is a benign collision.
    """

    total: int
    benign: int
    malign: int
    pairs: np.ndarray
    pair_benign: np.ndarray


def initial_collisions(W0) -> CollisionCounts:
    """Pairs of features whose leading neurons coincide in ``W0``.

    Features with an all-zero row have no leading neuron and collide with nothing.
    Cost: one argmax pass, a sort of n leading neurons, and O(P) for the pairs.

    Parameters
    ----------
    W0 : array_like, shape (n, m)
        Initial weights.

    Returns
    -------
    CollisionCounts
    """
    W0 = _weights("W0", W0)
    lead = leading_neuron(W0)
    live = np.flatnonzero(lead >= 0)
    # Stable sort: features grouped by leading neuron, increasing within each group.
    order = live[np.argsort(lead[live], kind="stable")]
    keys = lead[order]
    positive = W0[order, keys] > 0.0  # never zero: a leading weight has |w| > 0
    empty = np.zeros((0, 2), dtype=np.int64)
    if order.size == 0:
        return CollisionCounts(0, 0, 0, empty, np.zeros(0, dtype=bool))
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, keys.size])
    n_pos = np.add.reduceat(positive.astype(np.int64), starts)
    n_neg = sizes - n_pos
    total = int((sizes * (sizes - 1) // 2).sum())
    benign = int((n_pos * n_neg).sum())
    # All pairs within each group, one vectorised block per distinct group size.
    blocks_i, blocks_j = [empty[:, 0]], [empty[:, 0]]
    for g in np.unique(sizes[sizes >= 2]):
        a, b = np.triu_indices(int(g), 1)
        s = starts[sizes == g][:, None]
        blocks_i.append((s + a).ravel())
        blocks_j.append((s + b).ravel())
    pi = np.concatenate(blocks_i)
    pj = np.concatenate(blocks_j)
    pair_benign = positive[pi] != positive[pj]
    pairs = np.stack([order[pi], order[pj]], axis=1).astype(np.int64)
    sort = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return CollisionCounts(total, benign, total - benign, pairs[sort], pair_benign[sort])


def lineage(W0, W) -> np.ndarray:
    """Whether each feature ends on the neuron that led it at initialisation.

    Parameters
    ----------
    W0 : array_like, shape (n, m)
        Initial weights.
    W : array_like, shape (n, m)
        Final weights.

    Returns
    -------
    ndarray, shape (n,), bool
        ``leading_neuron(W) == leading_neuron(W0)``; False where the final row is all zero.
    """
    W0, W = _pair(W0, W)
    final = leading_neuron(W)
    return (final >= 0) & (final == leading_neuron(W0))


def summary(W0, W, threshold=0.5, window=(0.8, 1.2)) -> dict:
    """JSON-ready counts describing the final weights and the initial collisions.

    Parameters
    ----------
    W0 : array_like, shape (n, m)
        Initial weights.
    W : array_like, shape (n, m)
        Final weights.
    threshold : float
        Threshold rule of :func:`represented`.
    window : (float, float) or None
        Window rule of :func:`represented`; ``None`` reports the window counts as None.

    Returns
    -------
    dict
        ``polysemantic`` and ``dead`` (threshold rule), ``polysemantic_window`` and
        ``dead_window`` (window rule), ``initial_collisions``, ``benign``, ``malign``,
        ``lineage_kept`` (features whose leading neuron is unchanged), ``n``, ``m``;
        all plain ints (or None).
    """
    W0, W = _pair(W0, W)
    check_float("threshold", threshold, positive=True)
    win = _window(window)
    R = represented(W, threshold)
    if win is None:
        poly_w = dead_w = None
    else:
        Rw = represented(W, threshold, win)
        poly_w = int(np.count_nonzero(np.count_nonzero(Rw, axis=0) >= 2))
        dead_w = int(np.count_nonzero(~Rw.any(axis=1)))
    col = initial_collisions(W0)
    return {
        "polysemantic": int(np.count_nonzero(np.count_nonzero(R, axis=0) >= 2)),
        "polysemantic_window": poly_w,
        "dead": int(np.count_nonzero(~R.any(axis=1))),
        "dead_window": dead_w,
        "initial_collisions": col.total,
        "benign": col.benign,
        "malign": col.malign,
        "lineage_kept": int(np.count_nonzero(lineage(W0, W))),
        "n": int(W.shape[0]),
        "m": int(W.shape[1]),
    }
