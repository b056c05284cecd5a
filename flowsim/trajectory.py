"""Results of a simulation: per-row statistics at save times, final weights, run stats."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._version import __version__
from .model import Model

#: Names of the per-row statistics, in the order of CSV columns.
STAT_NAMES = ("l1", "nnz", "l2sq", "l4", "relvar", "loss")


def row_stats(W, model: Model) -> dict:
    """Per-row statistics of W (plain NumPy; the reference for the kernels).

    Parameters
    ----------
    W : ndarray, shape (n, m)
    model : Model
        Supplies λ and the force switches for the loss.

    Returns
    -------
    dict of ndarray, each shape (n,)
        ``l1`` = ‖W_i‖₁, ``nnz`` = m′_i (exact nonzeros), ``l2sq`` = ‖W_i‖²,
        ``l4`` = ‖W_i‖₄⁴, ``relvar`` = Var/E² of the nonzero |W_ik| (NaN if m′_i = 0),
        ``loss`` = the row's share of the loss of the simulated model,
        ``[fb] (1-‖W_i‖²)² + [interf] Σ_{j≠i} ReLU(W_i·W_j)² + [l1] λ‖W_i‖₁``
        (terms of switched-off forces dropped; with c = 4 the flow is minus its gradient).
    """
    W = np.asarray(W, dtype=np.float64)
    interference_sq = None
    with np.errstate(over="ignore", invalid="ignore"):  # inf is the answer near divergence
        l1 = np.abs(W).sum(axis=1)
        nnz = np.count_nonzero(W, axis=1).astype(np.int64)
        l2sq = np.einsum("ij,ij->i", W, W)
        W2 = W * W
        l4 = np.einsum("ij,ij->i", W2, W2)
        if model.interference and W.shape[0] > 1:
            G = np.maximum(W @ W.T, 0.0)
            np.fill_diagonal(G, 0.0)
            interference_sq = (G * G).sum(axis=1)
    return finish_stats(l1, nnz, l2sq, l4, model, interference_sq)


def finish_stats(l1, nnz, l2sq, l4, model, interference_sq=None):
    """Complete the per-row statistics from the four basic sums.

    Parameters
    ----------
    l1, l2sq, l4 : ndarray, shape (n,)
        ‖W_i‖₁, ‖W_i‖², ‖W_i‖₄⁴.
    nnz : ndarray, shape (n,)
        m′_i.
    model : Model
    interference_sq : ndarray, shape (n,), optional
        ``Σ_{j≠i} ReLU(W_i·W_j)²`` (added to the loss when interference is on).

    Returns
    -------
    dict of ndarray, each shape (n,)
        As :func:`row_stats`.
    """
    nnz = np.asarray(nnz, dtype=np.int64)
    loss = np.zeros(np.shape(l1))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # near divergence
        relvar = np.where(nnz > 0, np.maximum(l2sq * nnz / l1**2 - 1.0, 0.0), np.nan)
        if model.feature_benefit:
            loss += (1.0 - l2sq) ** 2
    if interference_sq is not None and model.interference:
        loss += interference_sq
    if model.l1:
        loss += model.lam * l1
    return dict(l1=l1, nnz=nnz, l2sq=l2sq, l4=l4, relvar=relvar, loss=loss)


@dataclasses.dataclass(frozen=True)
class RunStats:
    """How a run went.

    Attributes
    ----------
    status : str
        ``"completed"`` (reached t_max), ``"converged"`` (early stop: supports fixed and
        weights still), ``"sparse"`` (early stop: every row has at most ``max_nnz``
        nonzeros), ``"interrupted"`` (Ctrl-C; everything up to ``t_end`` is kept) or
        ``"diverged"``.
    t_end : float
        Time of the final state.
    steps : int
        Accepted steps (for the fixed-step methods: steps on the grid, not counting the
        extra steps that reach save times between grid points).
    force_evals : int
        Evaluations of the force (right-hand side), all included.
    wall_seconds : float
        Wall time of the run, compile time excluded.
    compile_seconds : float
        Time spent compiling numba kernels in this run (0 when cached).
    message : str
        Human-readable detail.
    rejected : int
        Rejected step attempts of adaptive methods (0 for fixed steps; -1 where the
        solver does not report them: scipy's Radau, BDF and LSODA).
    h_min, h_max : float
        Smallest and largest accepted step (NaN if no step was taken).
    t_converged : float
        With ``Stop(tol=...)``: the first time from which the convergence rule held on
        every step for a whole window (the run ends a window later); NaN otherwise.
    """

    status: str
    t_end: float
    steps: int
    force_evals: int
    wall_seconds: float
    compile_seconds: float = 0.0
    message: str = ""
    rejected: int = 0
    h_min: float = math.nan
    h_max: float = math.nan
    t_converged: float = math.nan


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """The result of :func:`flowsim.simulate`.

    Attributes
    ----------
    model : Model
    method : str
    dt : float or None
        Step size of explicit methods; ``None`` for adaptive ones.
    t : ndarray, shape (T,)
        Save times that were reached.
    l1, l2sq, l4, relvar, loss : ndarray, shape (T, n), float64
        Per-row statistics at each save time (see :func:`row_stats`).
    nnz : ndarray, shape (T, n), int64
        Nonzero count m′ of each row at each save time.
    W : ndarray, shape (n, m)
        Final weights (at ``stats.t_end``).
    stats : RunStats
    snapshot_t : ndarray, shape (S,), or None
    snapshots : ndarray, shape (S, n, m), or None
        Copies of W at ``snapshot_t`` when requested.
    options : dict
        Solver options that shaped the result (rtol, atol, stop rule, ...).
    """

    model: Model
    method: str
    dt: float | None
    t: np.ndarray
    l1: np.ndarray
    nnz: np.ndarray
    l2sq: np.ndarray
    l4: np.ndarray
    relvar: np.ndarray
    loss: np.ndarray
    W: np.ndarray
    stats: RunStats
    snapshot_t: np.ndarray | None = None
    snapshots: np.ndarray | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def stat(self, name: str) -> np.ndarray:
        """Per-row statistic ``name`` (one of :data:`STAT_NAMES`), shape (T, n)."""
        return getattr(self, name)

    def time_to_nnz(self, k: int = 1) -> np.ndarray:
        """First save time at which each row has at most ``k`` nonzeros (NaN if never).

        Returns
        -------
        ndarray, shape (n,)
        """
        hit = self.nnz <= k
        first = np.argmax(hit, axis=0)
        return np.where(hit.any(axis=0), self.t[first], np.nan)

    def metadata(self) -> dict:
        """Everything that produced this result, as JSON-ready data (no NaN: null).

        Includes the model, where W0 came from (``options["W0"]``: the seed, or "given"
        with the SHA-256 of its bytes), method, dt, options, run stats and the
        environment (:func:`flowsim.provenance.environment`).
        """
        from .provenance import FORMAT_VERSION, environment

        return _jsonable({
            "format_version": FORMAT_VERSION,
            "flowsim_version": __version__,
            "environment": environment(),
            "model": self.model.as_dict(),
            "method": self.method,
            "dt": self.dt,
            "options": self.options,
            "stats": dataclasses.asdict(self.stats),
            "saved_times": int(self.t.size),
        })


def _jsonable(obj):
    """``obj`` with NumPy types converted and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
