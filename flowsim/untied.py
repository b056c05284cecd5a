"""Untied encoder and decoder (issue 14, part 1): does Appendix A's "tied weights are
without loss of generality" hold?

Model
-----
An encoder E (m × n) and a decoder D (n × m), ``y = ReLU(D E x)``, trained on the n basis
vectors. Write ``e_i = E[:, i]`` (the hidden code of feature i), ``d_j = D[j, :]`` and
``G = D E`` (``G_ji = d_j·e_i``, output j for input i). The loss is::

    L(E, D) = Σ_i (ReLU(G_ii) - 1)²  +  Σ_{i≠j} ReLU(G_ji)²  +  λ ‖E‖₁  [+ λ ‖D‖₁]
              feature benefit          interference            L1 on the hidden activations
                                                               (on E for basis inputs);
                                                               optionally on D as well

The tied model is ``E = Wᵀ, D = W``: then ``G_ii = |W_i|² >= 0`` and L is flowsim's tied
loss. The flow, with flowsim's force scale c (``c = 4``: the exact gradient flow of L, as
for the tied model), is ``dE/dt = -(c/4) ∂L_s/∂E - λ sign(E)``,
``dD/dt = -(c/4) ∂L_s/∂D - λ_D sign(D)`` (L_s: the smooth part), i.e. with ``c2 = c/2``::

    de_i/dt = c2 [ g_i d_i - Σ_{j≠i} ReLU(d_j·e_i) d_j ]  -  λ sign(e_i)
    dd_j/dt = c2 [ g_j e_j - Σ_{i≠j} ReLU(d_j·e_i) e_i ]  -  λ_D sign(d_j)
    g_i = 1[G_ii > 0] (1 - G_ii)

(λ_D = λ with ``l1_decoder=True``, else 0). ``g_i`` carries the derivative of the output
ReLU, taken as 0 at 0 (the autograd convention): a feature whose ``d_i·e_i <= 0`` gets
no feature benefit at all, and once its code is exactly 0 it stays there (the other
one-sided derivative would release it; the Filippov flow allows both).

Correspondence with the tied flow
---------------------------------
In the tied model W is both factors, so ``∇_W L = ∇_D L + (∇_E L)ᵀ``, and on E = Dᵀ the
two terms are equal: the tied flow moves W by *both* parts, the untied flow moves each
factor by *one*. With L1 λ on both factors (``l1_decoder=True``) E = Dᵀ is invariant and

    tied flow (c, λ) at time t  ==  untied flow (2c, λ, l1_decoder) from E0 = D0ᵀ = W0 at t
                                ==  untied flow (c, λ/2, l1_decoder) at time 2t,

step for step with the same dt (resp. 2 dt): every stage of every explicit method
computes the same numbers (:func:`tied_equivalent` builds the first model;
tests/test_untied.py holds both to 1e-12). With L1 on E only, E and Dᵀ separate at once.

Two properties of the flow decide Appendix A's claim. (1) The smooth flow conserves
``DᵀD - EEᵀ`` (it depends on E, D only through DE), so E and Dᵀ can become equal only
as far as the L1 forces remove the initial imbalance: d/dt of the diagonal entry k is
``2(λ‖E_k,:‖₁ - λ_D‖D_:,k‖₁)``. (2) With L1 on E only, L has no minimiser: scaling
``e → e/s, d → s d`` keeps DE and lowers λ‖E‖₁, so the flow drifts (E → 0, D → ∞).

Public API::

    UntiedModel, tied_equivalent, simulate_untied, UntiedTrajectory   the engine
    smooth_forces, total_forces, loss, reference_step, reference_run  NumPy reference
    tie_gap, effective_weights, summary                               metrics

``python -m flowsim.untied`` runs the experiment (see :func:`main`).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from argparse import BooleanOptionalAction
from pathlib import Path

import numpy as np

from . import _kernels as K
from . import _untied_kernels as UK
from . import metrics
from ._version import __version__
from .errors import FlowsimWarning, check_float, check_int, invalid
from .forces import TABLEAUX, release_sign, soft_threshold
from .model import Model
from .provenance import weights_digest
from .trajectory import RunStats, _jsonable

INITS = ("independent", "tied")
#: Per-save statistics of an untied run (fields of :class:`UntiedTrajectory`, shape (T,)).
SERIES = ("gap", "loss", "recon", "norm_E", "norm_D", "nnz_E", "nnz_D", "clipped",
          "polysemantic", "dead", "stiffness")
#: Largest |h ρ| on the negative real axis for which each method is stable.
STABILITY = {"euler": 2.0, "heun": 2.0, "rk4": 2.785}
#: ``simulate_untied`` warns when dt·stiffness exceeds this fraction of the limit: the
#: estimate leaves out the interference, which added ~10 % to the measured spectral radius
#: (n = 64, m = 128, L1 on E only, t = 1600).
STABILITY_MARGIN = 0.8


# --------------------------------------------------------------------------- the model

@dataclasses.dataclass(frozen=True)
class UntiedModel:
    """Frozen parameters of an untied simulation.

    Parameters
    ----------
    n, m : int
        Features and hidden neurons, >= 1.
    lam : float
        L1 strength λ >= 0 on the hidden activations (on E).
    l1_decoder : bool
        Put the same λ on D as well (as the published code did for its tied W).
    feature_benefit, interference, l1 : bool
        Switch each force on or off (``l1`` switches both L1 terms).
    c : float
        Force scale (> 0): the smooth forces are ``-(c/4)`` times the gradient of the
        loss (c = 4: exact gradient flow). See the module docstring for the tied model.
    init : {"independent", "tied"}
        ``"tied"``: E0 = D0ᵀ; ``"independent"``: E0 drawn independently.
    init_std : float or None
        Standard deviation of the i.i.d. normal initial weights (both factors); None: 1/√m.
    seed : int
        D0 is ``Model(n, m, seed=seed, init_std=init_std).initial_weights()`` (the tied
        model's W0 of that seed); an independent E0ᵀ is the next (n, m) block of the same
        generator.
    """

    n: int
    m: int
    lam: float = 0.0
    l1_decoder: bool = False
    feature_benefit: bool = True
    interference: bool = True
    l1: bool = True
    c: float = 1.0
    init: str = "independent"
    init_std: float | None = None
    seed: int = 0

    def __post_init__(self):
        # the fields shared with the tied model are validated (and warned about) by it
        base = Model(n=self.n, m=self.m, lam=self.lam, feature_benefit=self.feature_benefit,
                     interference=self.interference, l1=self.l1, c=self.c, init_std=self.init_std,
                     seed=self.seed)
        for name in ("n", "m", "lam", "feature_benefit", "interference", "l1", "c", "init_std", "seed"):
            object.__setattr__(self, name, getattr(base, name))
        if not isinstance(self.init, str) or self.init not in INITS:
            raise invalid("init", self.init, "must be one of " + ", ".join(INITS))
        if not isinstance(self.l1_decoder, (bool, np.bool_)):
            raise invalid("l1_decoder", self.l1_decoder, "must be True or False")
        object.__setattr__(self, "l1_decoder", bool(self.l1_decoder))

    @property
    def std(self) -> float:
        """Effective initial standard deviation (``init_std`` or 1/√m)."""
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.m)

    @property
    def lam_encoder(self) -> float:
        """λ on E (0 if the L1 force is off)."""
        return self.lam if self.l1 else 0.0

    @property
    def lam_decoder(self) -> float:
        """λ on D (0 unless ``l1`` and ``l1_decoder``)."""
        return self.lam if (self.l1 and self.l1_decoder) else 0.0

    def replace(self, **changes) -> "UntiedModel":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def initial_weights(self):
        """Initial factors from ``seed`` (see the class docstring).

        Returns
        -------
        E0 : ndarray, shape (m, n)
        D0 : ndarray, shape (n, m)
        """
        rng = np.random.default_rng(self.seed)
        D = rng.standard_normal((self.n, self.m))
        D *= self.std
        if self.init == "tied":
            return D.T.copy(), D
        Et = rng.standard_normal((self.n, self.m))
        Et *= self.std
        return Et.T.copy(), D

    def check_weights(self, E0, D0):
        """Validate given initial factors; returns float64 copies (E0 (m, n), D0 (n, m))."""
        out = []
        for name, A, shape in (("E0", E0, (self.m, self.n)), ("D0", D0, (self.n, self.m))):
            try:
                A = np.array(A, dtype=np.float64, order="C", copy=True)
            except (TypeError, ValueError):
                raise invalid(name, type(A).__name__, "must be a real array") from None
            if A.shape != shape:
                raise invalid(f"{name}.shape", A.shape, f"must be {shape}")
            if not np.all(np.isfinite(A)):
                bad = int(np.count_nonzero(~np.isfinite(A)))
                raise invalid(name, f"<{bad} non-finite entries>", "every entry must be finite")
            out.append(A)
        return tuple(out)

    def as_dict(self) -> dict:
        """Parameters as a plain dict (for JSON), with the effective init std."""
        d = dataclasses.asdict(self)
        d["std"] = self.std
        return d


def tied_equivalent(model: Model) -> UntiedModel:
    """The untied model whose flow from E0 = D0ᵀ = W0 is the tied flow of ``model``:
    force scale 2c, the same λ on both factors, ``init="tied"``, the same seed and std."""
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    return UntiedModel(n=model.n, m=model.m, lam=model.lam, l1_decoder=True,
                       feature_benefit=model.feature_benefit, interference=model.interference,
                       l1=model.l1, c=2.0 * model.c, init="tied", init_std=model.init_std,
                       seed=model.seed)


# --------------------------------------------------------------------------- NumPy reference

def smooth_forces(E, D, model):
    """The switched-on smooth forces (NumPy reference of the kernels).

    Parameters
    ----------
    E : ndarray, shape (m, n)
    D : ndarray, shape (n, m)
    model : UntiedModel

    Returns
    -------
    FE : ndarray, shape (m, n)
    FD : ndarray, shape (n, m)
        With c = 4, minus the gradient of the smooth part of :func:`loss`.
    """
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    G = D @ E
    a = np.diag(G)
    g = np.where(a > 0, 1.0 - a, 0.0) if model.feature_benefit else np.zeros(model.n)
    c2 = model.c / 2.0
    FE = c2 * g[None, :] * D.T
    FD = c2 * g[:, None] * E.T
    if model.interference:
        P = np.maximum(G, 0.0)
        np.fill_diagonal(P, 0.0)            # P[j, i] = ReLU(d_j·e_i), j ≠ i
        FE -= c2 * (D.T @ P)
        FD -= c2 * (P @ E.T)
    return FE, FD


def total_forces(E, D, model):
    """Smooth forces plus the L1 sign forces (``sign(0) = 0``). Returns (FE, FD)."""
    FE, FD = smooth_forces(E, D, model)
    FE -= model.lam_encoder * np.sign(E)
    FD -= model.lam_decoder * np.sign(D)
    return FE, FD


def loss(E, D, model):
    """The loss of the simulated model (terms of switched-off forces dropped)::

        [fb] Σ_i (ReLU(G_ii) - 1)² + [interf] Σ_{i≠j} ReLU(G_ji)² + λ‖E‖₁ + λ_D‖D‖₁
    """
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return _recon(D @ E, model) + model.lam_encoder * float(np.abs(E).sum()) + model.lam_decoder * float(np.abs(D).sum())


def _recon(G, model):
    """Reconstruction part of the loss from G = DE (n, n)."""
    total = 0.0
    if model.feature_benefit:
        total += float(np.sum((np.maximum(np.diag(G), 0.0) - 1.0) ** 2))
    if model.interference:
        P = np.maximum(G, 0.0)
        np.fill_diagonal(P, 0.0)
        total += float(np.sum(P * P))
    return total


def _stack(E, D):
    return np.vstack([np.asarray(E, dtype=np.float64), np.asarray(D, dtype=np.float64).T])


def _unstack(X, m):
    return X[:m].copy(), X[m:].T.copy()


def _stacked_force(X, model):
    m = model.m
    FE, FD = smooth_forces(X[:m], X[m:].T, model)
    return np.vstack([FE, FD.T])


def reference_step(E, D, model, h, method):
    """One step of an explicit method on the pair (the definition the kernel matches).

    ``euler`` is proximal (soft-threshold of each factor that has an L1 force); ``heun``
    and ``rk4`` freeze the signs at the step start (a zero is released where the force
    on it exceeds λ, :func:`flowsim.forces.release_sign`) and a weight whose sign would
    flip becomes 0: the rules of :func:`flowsim.forces.reference_step`, factor by factor.

    Returns
    -------
    E : ndarray, shape (m, n)
    D : ndarray, shape (n, m)
    """
    m = model.m
    X = _stack(E, D)
    lam = np.r_[np.full(m, model.lam_encoder), np.full(m, model.lam_decoder)][:, None]
    use = np.r_[np.full(m, model.l1), np.full(m, model.l1 and model.l1_decoder)][:, None]
    if method == "euler":
        V = X + h * _stacked_force(X, model)
        return _unstack(np.where(use, soft_threshold(V, h * lam), V), m)
    a, b = TABLEAUX[method]
    F0 = _stacked_force(X, model)
    s = np.where(use, np.where(X != 0, np.sign(X), release_sign(F0, lam)), 0.0)
    Ks = []
    for i in range(len(b)):
        U = X + h * sum(a[i, j] * Ks[j] for j in range(i) if a[i, j] != 0.0)
        F = F0 if i == 0 else _stacked_force(U, model)
        Ks.append(np.where(use, np.where(s != 0, F - lam * s, 0.0), F))
    V = X + h * sum(b[i] * Ks[i] for i in range(len(b)))
    return _unstack(np.where(use, np.where(V * s > 0, V, 0.0), V), m)


def reference_run(E0, D0, model, t_max, dt, method):
    """Fixed steps ``dt`` on the grid k·dt up to ``t_max`` (last step shortened).

    Returns
    -------
    E : ndarray, shape (m, n)
    D : ndarray, shape (n, m)
    """
    E, D = np.array(E0, dtype=np.float64), np.array(D0, dtype=np.float64)
    t, k = 0.0, 0
    while t < t_max:
        t_next = min((k + 1) * dt, t_max)
        E, D = reference_step(E, D, model, t_next - t, method)
        t, k = t_next, k + 1
    return E, D


# --------------------------------------------------------------------------- metrics

def tie_gap(E, D) -> float:
    """``‖E - Dᵀ‖_F / ‖D‖_F`` (NaN when D = 0). E (m, n), D (n, m)."""
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    nd = float(np.linalg.norm(D))
    return float(np.linalg.norm(E - D.T)) / nd if nd > 0 else math.nan


def effective_weights(E, D) -> np.ndarray:
    """``V_ik = sign(E_ki) √|D_ik E_ki|`` (n, m): a per-(feature, neuron) weight invariant
    under the rescaling ``E_k → E_k/s, D_:k → s D_:k``, equal to W when E = Dᵀ = W (so the
    tied metrics apply unchanged). Neuron k carries ``V_ik²`` of feature i's output."""
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return np.sign(E.T) * np.sqrt(np.abs(D)) * np.sqrt(np.abs(E.T))   # no overflow for finite E, D


def summary(E, D, threshold=0.5) -> dict:
    """Polysemanticity of an untied state, JSON-ready.

    Returns
    -------
    dict
        ``polysemantic``, ``dead`` (rule ``|V_ik| > threshold`` on
        :func:`effective_weights`: the tied rule when E = Dᵀ), ``polysemantic_encoder``,
        ``dead_encoder`` (the same rule on the encoder alone, ``|E_ki| > threshold``),
        ``clipped`` (features with ``d_i·e_i <= 0``: the output ReLU gives them no
        gradient), ``gap`` (:func:`tie_gap`), ``norm_E``, ``norm_D``.
    """
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    V = effective_weights(E, D)
    diag = np.einsum("ik,ki->i", D, E)
    return dict(polysemantic=metrics.count_polysemantic(V, threshold),
                dead=int(metrics.dead_features(V, threshold).size),
                polysemantic_encoder=metrics.count_polysemantic(E.T, threshold),
                dead_encoder=int(metrics.dead_features(E.T, threshold).size),
                clipped=int(np.count_nonzero(diag <= 0.0)), gap=tie_gap(E, D),
                norm_E=float(np.linalg.norm(E)), norm_D=float(np.linalg.norm(D)))


def stiffness(E, D, c2, pinned=True):
    """``ρ = c2 max_i (|d_i|_A² + |e_i|²)``: the fastest decay rate of the flow near a
    learned feature, where ``|d_i|_A²`` sums D_ik² over the neurons k with E_ki ≠ 0 when
    the zeros of E are pinned by L1 (``pinned``), over all k otherwise. Near
    ``d_i·e_i = 1`` the feature benefit's Jacobian on (e_i, d_i) is the rank-one
    ``-c2 [d; e][d; e]ᵀ`` (restricted to the moving weights), with eigenvalue ``-ρ_i``.
    A fixed step h is stable only while ``h ρ`` stays below :data:`STABILITY`; with L1 on
    E only, ρ grows like ‖D‖² as the factors drift. For the tied model (E = Dᵀ = W,
    c2 = c) it is ``2c max_i |W_i|²``."""
    E = np.asarray(E, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    DA = np.where(E.T != 0.0, D, 0.0) if pinned else D
    return float(c2 * np.max(np.einsum("ik,ik->i", DA, DA) + np.einsum("ki,ki->i", E, E), initial=0.0))


def _series_stats(X, model, threshold):
    """The per-save statistics (:data:`SERIES`) of the stacked state X (2m, n) (inf where
    a near-divergent state overflows, never an error)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _series_stats_raw(X, model, threshold)


def _series_stats_raw(X, model, threshold):
    m = model.m
    E, Dt = X[:m], X[m:]
    D = Dt.T
    s = summary(E, D, threshold)
    recon = _recon(D @ E, model)
    l1 = model.lam_encoder * float(np.abs(E).sum()) + model.lam_decoder * float(np.abs(Dt).sum())
    return dict(gap=s["gap"], loss=recon + l1, recon=recon, norm_E=s["norm_E"], norm_D=s["norm_D"],
                nnz_E=int(np.count_nonzero(E)), nnz_D=int(np.count_nonzero(Dt)),
                clipped=s["clipped"], polysemantic=s["polysemantic"], dead=s["dead"],
                stiffness=stiffness(E, D, model.c / 2.0, model.l1))


# --------------------------------------------------------------------------- results

@dataclasses.dataclass(frozen=True, eq=False)
class UntiedTrajectory:
    """The result of :func:`simulate_untied`.

    Attributes
    ----------
    model : UntiedModel
    method : str
    dt : float
    threshold : float
        Rule of the polysemantic and dead counts (see :func:`summary`).
    t : ndarray, shape (T,)
        Save times reached.
    gap, loss, recon, norm_E, norm_D : ndarray, shape (T,), float64
        ‖E - Dᵀ‖/‖D‖, the loss, its reconstruction part, ‖E‖_F, ‖D‖_F.
    nnz_E, nnz_D, clipped, polysemantic, dead : ndarray, shape (T,), int64
        Nonzeros of each factor; features with d_i·e_i <= 0; counts of :func:`summary`.
    stiffness : ndarray, shape (T,), float64
        :func:`stiffness`; ``simulate_untied`` warns when ``dt · stiffness`` exceeds
        ``STABILITY_MARGIN`` times the stability limit of the method.
    E : ndarray, shape (m, n)
    D : ndarray, shape (n, m)
        Final factors (at ``stats.t_end``).
    stats : RunStats
    snapshot_t : ndarray, shape (S,), or None
    snapshots_E : ndarray, shape (S, m, n), or None
    snapshots_D : ndarray, shape (S, n, m), or None
    options : dict
    """

    model: UntiedModel
    method: str
    dt: float
    threshold: float
    t: np.ndarray
    gap: np.ndarray
    loss: np.ndarray
    stiffness: np.ndarray
    recon: np.ndarray
    norm_E: np.ndarray
    norm_D: np.ndarray
    nnz_E: np.ndarray
    nnz_D: np.ndarray
    clipped: np.ndarray
    polysemantic: np.ndarray
    dead: np.ndarray
    E: np.ndarray
    D: np.ndarray
    stats: RunStats
    snapshot_t: np.ndarray | None = None
    snapshots_E: np.ndarray | None = None
    snapshots_D: np.ndarray | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def metadata(self) -> dict:
        """Everything that produced this result, JSON-ready (NaN as null): model, where
        E0, D0 came from, method, dt, options, run stats, flowsim version, environment."""
        from .provenance import FORMAT_VERSION, environment

        return _jsonable({
            "format_version": FORMAT_VERSION, "flowsim_version": __version__,
            "environment": environment(), "model": self.model.as_dict(), "method": self.method,
            "dt": self.dt, "threshold": self.threshold, "options": self.options,
            "stats": dataclasses.asdict(self.stats), "saved_times": int(self.t.size)})


class _Recorder:
    """Collects the per-save statistics (and snapshots) of an untied run."""

    def __init__(self, model, threshold, snapshots):
        self.model, self.threshold = model, threshold
        self.t, self.rows = [], []
        self.snaps = [] if snapshots else None

    def save(self, t, stats, X=None):
        self.t.append(float(t))
        self.rows.append(stats)
        if self.snaps is not None:
            self.snaps.append(np.array(X, copy=True))

    def trajectory(self, method, dt, X, stats, options):
        m = self.model.m
        cols = {name: np.array([r[name] for r in self.rows],
                               dtype=np.int64 if name in ("nnz_E", "nnz_D", "clipped", "polysemantic", "dead")
                               else np.float64) for name in SERIES}
        snap_t = sE = sD = None
        if self.snaps:
            S = np.array(self.snaps)
            snap_t, sE, sD = np.array(self.t), S[:, :m].copy(), S[:, m:].transpose(0, 2, 1).copy()
        E, D = _unstack(X, m)
        return UntiedTrajectory(model=self.model, method=method, dt=dt, threshold=self.threshold,
                                t=np.array(self.t), E=E, D=D, stats=stats, snapshot_t=snap_t,
                                snapshots_E=sE, snapshots_D=sD, options=options, **cols)


# --------------------------------------------------------------------------- the engine

class UntiedEngine:
    """Owns the stacked state ``W = [E; Dᵀ]`` (2m, n) and advances it with
    :func:`flowsim._untied_kernels.untied_run`; the interface of ``flowsim._engines``
    (run, stats, fork, stages), so that ``flowsim.integrate``'s grid stepper drives it."""

    def __init__(self, X, model, method, threshold=0.5):
        self.model, self.method, self.threshold = model, method, threshold
        m, n = model.m, model.n
        self.W = X
        self.a, self.b = TABLEAUX[method]
        self.stages = S = len(self.b)
        self.U, self.F, self.V, self.S = (np.zeros((2 * m, n)) for _ in range(4))
        self.K = np.zeros((S, 2 * m, n)) if method != "euler" else np.zeros((1, 1, 1))
        self.Gt, self.g, self.rowsum = np.zeros((n, n)), np.zeros(n), np.zeros(n)
        self.rptr, self.cptr = np.zeros(n + 1, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)
        self.ridx, self.cidx = np.zeros(n * n, dtype=np.int64), np.zeros(n * n, dtype=np.int64)
        self.rval, self.cval = np.zeros(n * n), np.zeros(n * n)
        self.proc = np.zeros(m, dtype=np.int64)
        self.nz = np.count_nonzero(X, axis=1).astype(np.int64)
        self.dmax = np.abs(X[m:]).max(axis=1) if n else np.zeros(m)
        self.scal = (1.0 if model.feature_benefit else 0.0, 1.0 if model.interference else 0.0,
                     model.c / 2.0, model.lam_encoder, model.lam_decoder, bool(model.l1),
                     bool(model.l1 and model.l1_decoder))

    def run(self, t, j, t1, dt, jmax, stop_nnz, conv_tol, conv_window, out):
        fb, itf, c2, lamE, lamD, l1E, l1D = self.scal
        UK.untied_run(self.W, self.U, self.K, self.S, self.F, self.V, self.Gt, self.g, self.rowsum,
                      self.rptr, self.ridx, self.rval, self.cptr, self.cidx, self.cval, self.nz,
                      self.dmax, self.proc, t, j, t1, dt, jmax, self.a, self.b,
                      self.method == "euler", fb, itf, c2, lamE, lamD, l1E, l1D, conv_tol,
                      conv_window, out)

    def stats(self):
        return _series_stats(self.W, self.model, self.threshold)

    def fork(self):
        return UntiedEngine(self.W.copy(), self.model, self.method, self.threshold)


def warm_up(method="euler"):
    """Compile (or load from numba's cache) the untied kernels on a 2 × 2 problem.
    Returns the seconds it took (reported as compile time)."""
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = UntiedModel(n=2, m=2, lam=0.01, init_std=0.5)
        E, D = tiny.initial_weights()
        engine = UntiedEngine(_stack(E, D), tiny, method)
        engine.run(0.0, 0, 1e-3, 1e-3, 1, -1, 1e-12, 1.0, np.zeros(K.OUT_SIZE))
    return time.perf_counter() - tick


def simulate_untied(model, t_max, *, method="rk4", dt=None, E0=None, D0=None, t0=0.0,
                    save_at=None, snapshots=False, stop=None, threshold=0.5, progress=False):
    """Integrate the untied flow of ``model`` from ``t0`` to ``t_max``.

    Parameters
    ----------
    model : UntiedModel
    t_max : float
        Final time (> t0).
    method : {"euler", "heun", "rk4"}
        Fixed-step method (steps on the global grid k·dt, as :func:`flowsim.simulate`).
    dt : float, optional
        Step (default ``0.1 / c``).
    E0 : array_like, shape (m, n), optional
    D0 : array_like, shape (n, m), optional
        Factors at ``t0`` (both or neither); default ``model.initial_weights()``.
    t0 : float
        Start time; with the final factors of a run that ended at t0, continues it.
    save_at : array_like, optional
        Times in [t0, t_max] at which to record the statistics of :data:`SERIES`
        (t0 and t_max always added; default: 200 log-spaced times on the dt grid).
    snapshots : bool
        Also keep E and D at every save time (memory 2·T·n·m).
    stop : Stop, optional
        Only the convergence rule (``tol``, ``window``) applies to the untied flow.
    threshold : float
        Rule of the polysemantic and dead counts (:func:`summary`).
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    UntiedTrajectory
        On Ctrl-C the run ends with ``stats.status == "interrupted"`` and keeps what was
        computed.

    Raises
    ------
    FlowsimInputError
        For an invalid argument (one line naming it).
    DivergenceError
        When the weights become non-finite (it carries the partial trajectory).
    """
    from . import integrate as I
    from ._runtime import Interrupt, Progress, divergence_error

    if not isinstance(model, UntiedModel):
        raise invalid("model", type(model).__name__, "must be a flowsim.untied.UntiedModel")
    if method not in I.EXPLICIT_METHODS:
        raise invalid("method", method, "must be one of " + ", ".join(I.EXPLICIT_METHODS))
    t0 = check_float("t0", t0, minimum=0.0)
    t_max = check_float("t_max", t_max, positive=True)
    if not t_max > t0:
        raise invalid("t_max", t_max, f"must be > t0={t0:g}")
    dt = check_float("dt", 0.1 / model.c if dt is None else dt, positive=True)
    threshold = check_float("threshold", threshold, positive=True)
    if stop is not None and (not isinstance(stop, I.Stop) or stop.max_nnz is not None):
        raise invalid("stop", stop, "must be None or a flowsim.Stop with only tol and window set")
    if (E0 is None) != (D0 is None):
        raise invalid("E0" if E0 is None else "D0", None, "give both E0 and D0, or neither")
    if E0 is None:
        E, D = model.initial_weights()
        source = {"source": "seed", "seed": model.seed, "init": model.init}
    else:
        E, D = model.check_weights(E0, D0)
        source = {"source": "given", "sha256_E": weights_digest(E), "sha256_D": weights_digest(D)}
    options = {"dt": dt, "W0": source}
    if t0 > 0:
        options["t0"] = t0
    if stop is not None:
        options["stop"] = dataclasses.asdict(stop)
    times = I._save_times(save_at, t0, t_max, dt)
    engine = UntiedEngine(_stack(E, D), model, method, threshold)
    rec = _Recorder(model, threshold, snapshots)
    interrupt = Interrupt()
    bar = Progress(progress, f"untied {method}", float(times[0]), float(times[-1]), None, 0)
    run = I._Stepper(engine, dt, float(times[0]), stop, bar, interrupt)
    comp = wall0 = 0.0
    try:
        with interrupt.guard():
            comp = warm_up(method)
            wall0 = time.perf_counter()
            rec.save(times[0], engine.stats(), engine.W)
            if interrupt.flag:
                run.status = "interrupted"
            else:
                I._march(run, times, rec, float(times[-1]))
    except FloatingPointError:
        wall = time.perf_counter() - wall0
        raise divergence_error(model, method, dt, run.t, run.steps, rec, engine.W, options, wall, comp) from None
    finally:
        bar.close(run.t)
    t_last = float(times[-1])
    if run.status == "completed":
        run.t = t_last
    elif rec.t[-1] != run.t:
        rec.save(run.t, engine.stats(), engine.W)
    wall = time.perf_counter() - wall0
    if run.status == "interrupted":
        warnings.warn(f"interrupted at t={run.t:.6g}; returning the trajectory up to there",
                      FlowsimWarning, stacklevel=2)
    t_conv = float(run.out[K.OUT_STREAK]) if run.status == "converged" else math.nan
    traj_rho = max(r["stiffness"] for r in rec.rows)
    limit = STABILITY_MARGIN * STABILITY[method]
    if dt * traj_rho > limit:
        warnings.warn(f"dt={dt:g} is at or beyond the stability limit of {method} at some save time "
                      f"(dt·stiffness = {dt * traj_rho:.3g} > {limit:.3g}): the state from there on may be "
                      f"a numerical artefact; use dt < {limit / traj_rho:.3g}", FlowsimWarning, stacklevel=2)
    options["max_dt_stiffness"] = dt * traj_rho
    stats = RunStats(run.status, run.t, run.steps, int(run.out[K.OUT_EVALS]), wall, comp,
                     I._MESSAGES[run.status].format(max_nnz=-1), rejected=0,
                     h_min=dt if run.steps else math.nan, h_max=dt if run.steps else math.nan,
                     t_converged=t_conv)
    return rec.trajectory(method, dt, engine.W, stats, options)


# --------------------------------------------------------------------------- the experiment

PROG = "python -m flowsim.untied"
#: Version of the layout of ``untied.json``.
JSON_FORMAT_VERSION = 1
#: The compared models: the tied one (``flowsim.simulate``) and three untied ones, all
#: with the same per-factor force (untied c = 2 × tied c, so that the untied run from
#: E0 = D0ᵀ with L1 on both factors would be the tied run itself).
VARIANTS = {
    "tied": None,
    "untied-tiedinit-E": dict(init="tied", l1_decoder=False),
    "untied-E": dict(init="independent", l1_decoder=False),
    "untied-ED": dict(init="independent", l1_decoder=True),
}
VARIANT_LABELS = {
    "tied": "tied (W, L1 on W)",
    "untied-tiedinit-E": "untied, E0 = D0ᵀ, L1 on E",
    "untied-E": "untied, independent init, L1 on E",
    "untied-ED": "untied, independent init, L1 on E and D",
}
#: Result fields copied from :func:`summary` at the end of a run.
FINAL_FIELDS = ("polysemantic", "dead", "polysemantic_encoder", "dead_encoder", "clipped", "gap",
                "norm_E", "norm_D")


def experiment_model(params):
    """The model of one run of the experiment: a tied ``Model`` for ``variant="tied"``,
    else the ``UntiedModel`` with force scale 2c."""
    variant = params["variant"]
    if variant not in VARIANTS:
        raise invalid("variant", variant, "must be one of " + ", ".join(VARIANTS))
    if VARIANTS[variant] is None:
        return Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    return UntiedModel(n=params["n"], m=params["m"], lam=params["lam"], c=2.0 * params["c"],
                       seed=params["seed"], **VARIANTS[variant])


def run_one(params):
    """One run of the experiment (for ``flowsim.sweep.run_sweep``).

    Parameters
    ----------
    params : dict
        n, m, seed, variant (a key of :data:`VARIANTS`), lam, c (of the tied model),
        method, dt, t_max, threshold, saves.

    Returns
    -------
    dict
        The final :func:`summary` fields, loss and reconstruction loss, the series
        (save times ``t`` and gap, polysemantic, dead, clipped, norm_E, norm_D, loss,
        stiffness at each), ``max_dt_stiffness`` with the method's ``stability_limit``,
        run statistics and the digests of E0 and D0.
    """
    model = experiment_model(params)
    times = _default_times(params["t_max"], params["dt"], params["saves"])
    kw = dict(method=params["method"], dt=params["dt"], save_at=times)
    if isinstance(model, Model):
        from .integrate import simulate

        tr = simulate(model, params["t_max"], snapshots=True, **kw)
        W0 = model.initial_weights()
        E0, D0 = W0.T, W0
        rows = [summary(W.T, W, params["threshold"]) for W in tr.snapshots]
        series = {name: [r[name] for r in rows] for name in ("gap", "polysemantic", "dead", "clipped", "norm_E", "norm_D")}
        series["loss"] = tr.loss.sum(axis=1).tolist()
        series["stiffness"] = [stiffness(W.T, W, model.c, model.l1) for W in tr.snapshots]
        E, D, loss_end = tr.W.T, tr.W, float(tr.loss[-1].sum())
        recon_end = loss_end - model.l1_strength * float(np.abs(tr.W).sum())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlowsimWarning)   # recorded below instead
            tr = simulate_untied(model, params["t_max"], threshold=params["threshold"], **kw)
        E0, D0 = model.initial_weights()
        series = {name: getattr(tr, name).tolist() for name in
                  ("gap", "polysemantic", "dead", "clipped", "norm_E", "norm_D", "loss", "stiffness")}
        E, D, loss_end, recon_end = tr.E, tr.D, float(tr.loss[-1]), float(tr.recon[-1])
    if tr.stats.status == "interrupted":
        raise KeyboardInterrupt
    out = {k: v for k, v in summary(E, D, params["threshold"]).items() if k in FINAL_FIELDS}
    rho = max(series["stiffness"])
    out.update(loss=loss_end, recon=recon_end, t=tr.t.tolist(), series=series, status=tr.stats.status,
               t_end=tr.stats.t_end, steps=tr.stats.steps, run_seconds=tr.stats.wall_seconds,
               compile_seconds=tr.stats.compile_seconds, model=model.as_dict(),
               max_dt_stiffness=params["dt"] * rho,
               stability_limit=STABILITY_MARGIN * STABILITY[params["method"]],
               stable=bool(params["dt"] * rho <= STABILITY_MARGIN * STABILITY[params["method"]]),
               e0_sha256=weights_digest(E0), d0_sha256=weights_digest(D0))
    return out


def _default_times(t_max, dt, count):
    from .integrate import default_save_times

    return default_save_times(t_max, dt, count)


def per_size_table(rows):
    """Per (n, m, variant): means over seeds of the final counts and the gap, with the
    paired difference of the polysemantic count from the tied run of the same seed.

    Returns
    -------
    list of dict
        n, m, variant, runs, polysemantic (mean, std), polysemantic_encoder, dead,
        clipped (means), gap (mean), norm_ratio (mean ‖D‖/‖E‖), diff_vs_tied (mean
        untied − tied on the same seeds) with its standard error, stable (all runs).
    """
    tied = {(r["n"], r["m"], r["seed"], r["dt"]): r for r in rows if r["variant"] == "tied"}
    table = []
    keys = sorted({(r["n"], r["m"], r["dt"]) for r in rows})
    for n, m, dt in keys:
        for variant in VARIANTS:
            rs = [r for r in rows if (r["n"], r["m"], r["dt"], r["variant"]) == (n, m, dt, variant)]
            if not rs:
                continue
            arr = lambda f: np.array([r[f] for r in rs], dtype=float)  # noqa: E731
            diffs = np.array([r["polysemantic"] - tied[(n, m, r["seed"], dt)]["polysemantic"] for r in rs
                              if (n, m, r["seed"], dt) in tied], dtype=float)
            k = len(rs)
            table.append(dict(
                n=n, m=m, dt=dt, variant=variant, runs=k, polysemantic=float(arr("polysemantic").mean()),
                polysemantic_std=float(arr("polysemantic").std(ddof=1)) if k > 1 else 0.0,
                polysemantic_encoder=float(arr("polysemantic_encoder").mean()),
                dead=float(arr("dead").mean()), clipped=float(arr("clipped").mean()),
                clipped_fraction=float(arr("clipped").mean()) / n, gap=float(arr("gap").mean()),
                norm_ratio=float(np.mean(arr("norm_D") / np.maximum(arr("norm_E"), 1e-300))),
                diff_vs_tied=float(diffs.mean()) if diffs.size else math.nan,
                diff_vs_tied_se=float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else math.nan,
                stable=all(r["stable"] for r in rs), t_max=rs[0]["t_max"]))
    return table


def dt_check(rows):
    """Runs made at dt and at dt/2 on the same (n, m, seed, variant): the largest
    differences of the final counts and of the gap (the check that they are properties
    of the flow)."""
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["m"], r["seed"], r["variant"]), []).append(r)
    pairs = []
    for key, rs in sorted(by.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: -r["dt"])
        a, b = rs[0], rs[-1]
        pairs.append(dict(n=key[0], m=key[1], seed=key[2], variant=key[3], dt=a["dt"], dt_half=b["dt"],
                          **{f"diff_{f}": abs(a[f] - b[f]) for f in ("polysemantic", "dead", "clipped", "gap")}))
    return pairs


# --------------------------------------------------------------------------- command

def parser():
    from . import _cli

    p = _cli.ArgumentParser(prog=PROG, description="Untied encoder and decoder against the tied "
                            "model (issue 14, part 1).")
    a = p.add_argument
    a("--sizes", nargs="+", default=["64x64", "64x128", "64x256", "256x256", "256x512"],
      help="problem sizes NxM (default 64x64 64x128 64x256 256x256 256x512)")
    a("--t-max", type=float, nargs="+", default=[500.0, 300.0],
      help="training time, one per distinct n in order of first appearance, or one for all "
           "(default 500 for n=64, 300 for n=256)")
    a("--seeds", type=int, nargs="+", default=[4, 2],
      help="seeds per size, one per distinct n or one for all (default 4 for n=64, 2 for n=256)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
      help="models to run (default all; tied is needed for the paired differences)")
    a("--lam", type=float, default=0.01, help="L1 strength (default 0.01)")
    a("--c", type=float, default=1.0, help="force scale of the tied model; untied runs use 2c (default 1)")
    a("--method", default="euler", help="euler, heun or rk4 (default euler)")
    a("--dt", type=float, default=0.1, help="step (default 0.1)")
    a("--check-dt", action=BooleanOptionalAction, default=True,
      help="rerun the first size's first two seeds at dt/2 (default on)")
    a("--threshold", type=float, default=0.5, help="rule of the polysemantic counts (default 0.5)")
    a("--saves", type=int, default=24, help="log-spaced save times per run (default 24)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--executor", choices=("local", "dask", "serial"), default="local", help="where runs execute (default local)")
    a("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    a("--resume", action=BooleanOptionalAction, default=True,
      help="reuse runs stored in OUT/untied_runs/ with the same parameters and flowsim version")
    a("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _sizes(values):
    sizes = []
    for v in values:
        try:
            n, m = (int(x) for x in str(v).lower().split("x"))
        except ValueError:
            raise invalid("--sizes", v, "each size must be NxM with integers N, M >= 1 (e.g. 64x128)") from None
        if n < 1 or m < 1:
            raise invalid("--sizes", v, "each size must be NxM with integers N, M >= 1 (e.g. 64x128)")
        sizes.append((n, m))
    return list(dict.fromkeys(sizes))


def _per_n(name, values, ns):
    if len(values) == 1:
        return {n: values[0] for n in ns}
    if len(values) != len(ns):
        raise invalid(name, values, f"give one value, or one per distinct n ({len(ns)}: {', '.join(map(str, ns))})")
    return dict(zip(ns, values))


def specs_from_args(args):
    """The RunSpecs of the experiment (every value validated with a one-line error)."""
    from .integrate import EXPLICIT_METHODS
    from .sweep import RunSpec

    sizes = _sizes(args.sizes)
    ns = list(dict.fromkeys(n for n, _ in sizes))
    t_max = _per_n("--t-max", args.t_max, ns)
    seeds = _per_n("--seeds", args.seeds, ns)
    for n in ns:
        check_float("--t-max", t_max[n], positive=True)
        check_int("--seeds", seeds[n], 1)
    check_int("--seed0", args.seed0, 0)
    check_int("--saves", args.saves, 2)
    check_int("--retries", args.retries, 0)
    if args.workers is not None:
        check_int("--workers", args.workers, 1)
    if args.method not in EXPLICIT_METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    for name in ("dt", "c", "threshold"):
        check_float("--" + name, getattr(args, name), positive=True)
    if not (math.isfinite(args.lam) and args.lam > 0):
        raise invalid("--lam", args.lam, "must be a finite number > 0")
    variants = list(dict.fromkeys(args.variants))
    specs = []

    def add(n, m, seed, variant, dt):
        params = dict(n=n, m=m, seed=seed, variant=variant, lam=args.lam, c=args.c, method=args.method,
                      dt=dt, t_max=t_max[n], threshold=args.threshold, saves=args.saves)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlowsimWarning)
            experiment_model(params)                                   # validates
        specs.append(RunSpec(key=f"n{n}_m{m}_seed{seed}_{variant}_dt{dt:g}", params=params))

    for n, m in sizes:
        for seed in range(args.seed0, args.seed0 + seeds[n]):
            for variant in variants:
                add(n, m, seed, variant, args.dt)
    if args.check_dt:
        n, m = sizes[0]
        for seed in range(args.seed0, args.seed0 + min(2, seeds[n])):
            for variant in variants:
                add(n, m, seed, variant, args.dt / 2)
    return specs


def main(argv=None):
    """``python -m flowsim.untied``: untied encoder and decoder against the tied model.

    For every size NxM, seed and variant (:data:`VARIANTS`) trains for ``--t-max`` and
    writes into ``--out``: ``untied.png`` (gap ‖E − Dᵀ‖/‖D‖ and ‖D‖/‖E‖ against time;
    polysemantic neurons and clipped features against m, each variant against the tied
    model on the same seeds), ``untied.csv`` (one row per run, final values) and
    ``untied.json`` (parameters, seeds, per-size table, the dt/2 check, the mean series,
    timing, flowsim version and environment). Each finished run is stored at once in
    ``<out>/untied_runs/`` and reused by the same command.
    """
    from . import _cli

    args = parser().parse_args(argv)
    specs = specs_from_args(args)
    out = _cli.check_out_dir(args.out)
    from .io import write_csv, write_json
    from .provenance import environment
    from .sweep import results_table, strict_json
    from flowsim.untied import run_one as fn   # importable by the workers (not __main__)

    store = out / "untied_runs"
    done = _cli.sweep_command(PROG, fn, specs, store, args)
    if done is None:
        return _cli.EXIT_INTERRUPTED
    sweep, wall = done
    rows = results_table(specs, sweep.results)
    flat = [{k: v for k, v in r.items() if k not in ("series", "t", "model")} for r in rows]
    main_rows = [r for r in rows if r["dt"] == args.dt]
    table = per_size_table(main_rows)
    check = dt_check(rows)
    write_csv(out / "untied.csv", flat)
    meta = dict(format_version=JSON_FORMAT_VERSION, flowsim_version=__version__, command=PROG,
                argv=sys.argv, environment=environment(),
                parameters=dict(lam=args.lam, c_tied=args.c, c_untied=2.0 * args.c, method=args.method,
                                dt=args.dt, threshold=args.threshold, saves=args.saves,
                                sizes=args.sizes, t_max=args.t_max, seeds=args.seeds, seed0=args.seed0,
                                variants={v: VARIANTS[v] for v in dict.fromkeys(args.variants)}),
                executor=args.executor, workers=args.workers, wall_seconds=wall, runs=len(specs),
                finished=len(sweep.results), skipped=len(sweep.skipped), rerun=sweep.rerun,
                failed=sweep.failed, table=table, dt_check=check,
                unstable_runs=[r["key"] for r in rows if not r["stable"]],
                series=[dict(key=r["key"], n=r["n"], m=r["m"], seed=r["seed"], variant=r["variant"],
                             dt=r["dt"], t=r["t"], **r["series"]) for r in rows])
    if main_rows and not args.no_plot:
        from .plotting import figure_untied, save_figure

        save_figure(figure_untied(main_rows, table, VARIANT_LABELS), out / "untied.png")
    write_json(out / "untied.json", strict_json(meta))
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
    if meta["unstable_runs"]:
        sys.stderr.write(f"{PROG}: warning: {len(meta['unstable_runs'])} runs left the stability "
                         f"margin of {args.method} (e.g. {meta['unstable_runs'][0]}); lower --dt\n")
    if not args.quiet:
        _print_summary(table, check, sweep, wall, out)
    return 1 if sweep.failed else 0


def _print_summary(table, check, sweep, wall, out):
    print(f"{len(sweep.results)} runs finished in {wall:.1f} s ({len(sweep.skipped)} stored runs reused)")
    print(f"{'n':>4} {'m':>5} {'variant':>18} {'runs':>4} {'poly':>6} {'±std':>5} {'vs tied':>8} "
          f"{'clipped':>7} {'dead':>6} {'gap':>6} {'|D|/|E|':>7}")
    for r in table:
        print(f"{r['n']:>4} {r['m']:>5} {r['variant']:>18} {r['runs']:>4} {r['polysemantic']:>6.1f} "
              f"{r['polysemantic_std']:>5.1f} {r['diff_vs_tied']:>8.1f} {r['clipped']:>7.1f} {r['dead']:>6.1f} "
              f"{r['gap']:>6.3f} {r['norm_ratio']:>7.2f}")
    if check:
        worst = {f: max(c[f"diff_{f}"] for c in check) for f in ("polysemantic", "dead", "clipped", "gap")}
        print("dt/2 check, largest differences: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    print(f"wrote {out}/ (untied.png, untied.csv, untied.json)")


if __name__ == "__main__":
    from . import _cli

    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
