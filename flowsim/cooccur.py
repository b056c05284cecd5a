r"""Co-occurring features: the expected-loss flow (deterministic) and minibatch SGD.

A reader of the post asked for "a hyperparameter for the frequency of co-occurrence of
features"; the commenter predicted that polysemanticity falls as co-occurrence rises.

Deterministic mode: the expected-loss gradient flow
---------------------------------------------------
Inputs: ``x = e_i`` with probability (1-q)/n for each i, ``x = e_i + e_j`` with
probability q / C(n,2) for each pair i < j. Per input, the model is ``a = W Wᵀ x``,
``y = ReLU(a)``, hidden activations ``h = Wᵀ x`` (m), and

    ℓ(x) = (c/4) |ReLU(W Wᵀ x) - x|²  +  λ |Wᵀ x|₁ ,        L(W) = n · E_x[ℓ(x)].

Normalisation: at q = 0, ``n E_x`` is the sum over the n basis inputs, and L is flowsim's
loss ``(c/4)[Σ_i (1-|W_i|²)² + Σ_{i≠j} ReLU(W_i·W_j)²] + λ‖W‖₁`` whose flow
``dW/dt = -∇L`` is flowsim's model with its c and λ conventions (c = 4: the exact flow of
the summed squared error; c = 1: the paper's).

Gradient of one input. With ``g = 2 (ReLU(a) - x) ⊙ 1[a > 0]`` (n) and
``∂a_k/∂W_l = δ_kl h + x_l W_k``, the squared error has ``∇_W |y - x|² = (g xᵀ + x gᵀ) W``.
Single input e_i: G = W Wᵀ, g_k = 2 ReLU(G_ki) for k ≠ i and 2(G_ii - 1) for k = i (0
for a zero row, where the term multiplies W_i = 0 anyway), so Σ_i g⁽ⁱ⁾ e_iᵀ = 2A with
``A = ReLU_offdiag(G) + diag(|W_i|² - 1)`` (symmetric). Pair input e_i + e_j:
``S_k = G_ki + G_kj``, g_k = 2 (S_k - u_k) 1[S_k > 0], u_k = [k=i] + [k=j]; summing
over the pairs, ``Σ_{i<j} g⁽ⁱʲ⁾ (e_i + e_j)ᵀ = B`` with ``B_ki = Σ_{j≠i} g⁽ⁱʲ⁾_k``
(``_cooccur_kernels.pair_matrix``, O(n³)). Weighting by n(1-q)/n and n q/C(n,2)
= 2q/(n-1):

    F_smooth = -[ c(1-q) A + c q/(2(n-1)) (B + Bᵀ) ] W                          (1)

At q = 0 this is ``c(1-|W_i|²)W_i - c Σ_{j≠i} ReLU(W_i·W_j) W_j``, flowsim's force.

L1 term: ``λ n E|Wᵀx|₁ = λ(1-q) Σ_i |W_i|₁ + λ_p Σ_{i<j} |W_i + W_j|₁`` with
``λ_p = 2qλ/(n-1)``. The pair term couples rows. For entry (i, k) and partner j:

* partner nonzero (W_jk ≠ 0): |W_ik + W_jk| is smooth in W_ik near W_ik = 0 (it is
  |W_jk| + sign(W_jk) W_ik there); its force ``-λ_p sign(W_ik + W_jk)`` goes into the
  smooth force (sign(0) = 0 at the measure-zero kink W_ik = -W_jk ≠ 0, as the ReLU kinks
  of the interference are treated);
* partner zero (W_jk = 0): |W_ik + W_jk| = |W_ik| on that partner's axis: it adds λ_p to
  the separable L1 weight of entry (i, k).

So every entry gets its own L1 weight ``L_ik = λ(1-q) + λ_p #{j≠i : W_jk = 0}``, frozen at
the start of a step (like flowsim's sign pattern), and flowsim's exact treatment of the
sign force carries over entrywise: Euler is ``W ← S_{hL}(W + h F)`` (soft-threshold by
h L_ik), heun/rk4 freeze signs with the release rule |F_ik| > L_ik. Zeros stay exact
zeros. Why this split: it gives the exact gradient wherever W_ik ≠ 0 (then the weights
sum to ``λ(1-q) sign(W_ik) + λ_p Σ_j sign(W_ik + W_jk)``), and the exact (Filippov)
condition for a lone zero in a column. Its one approximation: two zeros W_ik = W_jk = 0
of the same column are released one at a time (the coordinate-wise rule flowsim uses
everywhere), so a joint move W_ik = -W_jk, which leaves |W_ik + W_jk| at 0, is not seen;
it would lower that pair's share λ_p of the threshold, a 1/(n-1) fraction of it.

q = 0 dispatches to :func:`flowsim.simulate`: the plain model bit for bit. For q > 0 the
engine is :class:`CoEngine`, a :class:`flowsim._engines.DenseEngine` whose ``smooth`` adds
the pair terms and whose steps use L_ik (dense engine only; no sparse hand-over).

Stochastic mode: minibatch SGD
------------------------------
``data="bernoulli"``: each feature present independently with probability p; with
``q > 0`` the fixed pairs (0,1), (2,3), ... are correlated: the second copies the first
with probability q, else is drawn independently (marginals stay p; P(both) = p(q+(1-q)p)).
The loss is ``E[ℓ(x)] / p`` (each feature weighs about as much as in the flow).
``data="mixture"``: samples the deterministic mode's distribution, loss ``n E[ℓ(x)]``;
its expected gradient is minus the force of the flow above (tested). SGD:
``W ← W - lr · (scale / B) Σ_b ∇ℓ(x_b)``, L1 subgradient sign(0) = 0 (as PyTorch),
minibatches from ``numpy.random.default_rng([seed, 1])``.

Command
-------
``python -m flowsim.cooccur``: the flow against q (default n = 64, m = 64, 256, 1024,
q = 0 ... 0.75, 8 seeds, λ = 0.01, c = 1, euler dt = 0.1 to convergence, t_max 2000) into
``figures/cooccur.{png,csv,json}``; ``--stochastic``: SGD against p (bernoulli, p = 0.01,
0.03, 0.1; lr 0.15, batch 32, 3000 steps) into ``figures/cooccur_sgd.*``;
``--stochastic --data mixture``: SGD on the flow's distribution against q (a control),
``figures/cooccur_sgd_mixture.*``. Runs are stored and resumed by ``flowsim.sweep``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings

import numpy as np

from . import _cooccur_kernels as CK
from . import _engines
from . import _kernels as K
from .errors import FlowsimWarning, check_float, check_int, invalid
from .model import Model

__all__ = ["CoEngine", "simulate_cooccur", "reference_smooth", "reference_step", "expected_loss",
           "inputs_and_weights", "weighted_gradient", "sample_batch", "SGDResult", "train_stochastic",
           "collision_fate", "check_probability", "main"]

DATA = ("bernoulli", "mixture")


def check_probability(name, value):
    """``value`` as a float in [0, 1], or the one-line FlowsimInputError naming ``name``."""
    allowed = "must be a number in [0, 1]"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, allowed) from None
    if isinstance(value, bool) or not (0.0 <= x <= 1.0):
        raise invalid(name, value, allowed)
    return x


def _coefficients(model, q):
    n = model.n
    lam = model.l1_strength
    return dict(a1=model.c * (1.0 - q), a2=model.c * q / (2.0 * (n - 1)),
                lam_single=lam * (1.0 - q), lam_pair=2.0 * q * lam / (n - 1))


# --------------------------------------------------------------------------- engine

class CoEngine(_engines.DenseEngine):
    """Dense engine of the expected-loss flow at co-occurrence q > 0 (see module doc).

    Same interface and fixed-step semantics as DenseEngine (euler = proximal step,
    heun/rk4 = frozen signs), with the force (1) and the entrywise L1 weights L_ik.
    """

    def __init__(self, W, model, method, q):
        self.q = float(q)
        self.coef = _coefficients(model, self.q)
        super().__init__(W, model, method, 0.0)

    def _allocate(self, mc):
        fresh = self._shape != (self.W.shape[0], mc)
        super()._allocate(mc)
        if fresh:
            n = self.W.shape[0]
            self.L = np.empty((n, mc))
            self.B = np.empty((n, n))
            self.M = np.empty((n, n))
            self.rows = np.empty(n)
            self.Wsup = None

    def smooth(self, U, F):
        """Force (1) plus the pair L1 force of partners on the support of ``self.Wsup``
        (the step's start; U itself when None) at U (n, mc) into F."""
        np.matmul(U, U.T, out=self.G)
        K.relu_offdiag(self.G, self.P)
        np.fill_diagonal(self.P, np.diagonal(self.G) - 1.0)
        CK.pair_matrix(self.G, self.B)
        c = self.coef
        np.multiply(self.P, c["a1"], out=self.M)
        self.M += c["a2"] * (self.B + self.B.T)
        np.matmul(self.M, U, out=F)
        np.negative(F, out=F)
        if c["lam_pair"] > 0.0:
            CK.pair_sign_force(U, U if self.Wsup is None else self.Wsup, c["lam_pair"], F, self.rows)

    def step(self, Wc, h):
        self._allocate(Wc.shape[1])
        c = self.coef
        self.Wsup = Wc
        try:
            self.smooth(Wc, self.F)
            CK.thresholds(Wc, c["lam_single"], c["lam_pair"], self.L)
            if self.method == "euler":
                return CK.prox_euler_var(Wc, self.F, h, self.L, self.use_sign, self.V)
            Ks, s = self.Ks, self.s
            if self.use_sign:
                CK.sign_pattern_var(Wc, self.F, self.L, s)
            CK.masked_stage_var(self.F, s, self.L, self.use_sign, Ks[0])
            for st in range(1, self.stages):
                K.stage_value(Wc, Ks, h * self.a[st], st, self.U)
                self.smooth(self.U, self.F)
                CK.masked_stage_var(self.F, s, self.L, self.use_sign, Ks[st])
            return K.finish_step(Wc, Ks, h * self.b, s, self.use_sign, self.V)
        finally:
            self.Wsup = None

    def _euler_step(self, Wc, h, mask):
        if not self.step(Wc, h):
            return False, 0, False, 0.0
        total, changed, diff = K.dense_step_summary(Wc, self.V, mask)
        return True, total, changed, diff

    def fork(self):
        return CoEngine(self.W.copy(), self.model, self.method, self.q)


def _warm_up(model, method, q):
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = model.replace(n=3, m=3, init_std=0.5)
        engine = CoEngine(tiny.initial_weights(), tiny, method, q)
        engine.run(0.0, 0, 2e-3, 1e-3, 2, -1, 1e-12, 1.0, np.zeros(K.OUT_SIZE))
    return time.perf_counter() - tick


def simulate_cooccur(model, q, t_max, *, method="euler", dt=None, W0=None, save_at=None,
                     snapshots=False, stop=None, sparse_below=None, progress=False):
    """Integrate the expected-loss flow at co-occurrence probability q.

    Parameters
    ----------
    model : Model
        n >= 2; with q > 0 feature benefit and interference must be on.
    q : float
        Probability that an input is a pair e_i + e_j, in [0, 1].
    t_max, method, dt, W0, save_at, snapshots, stop, progress :
        As :func:`flowsim.simulate` (fixed-step methods euler, heun, rk4; t0 = 0).
    sparse_below : float, optional
        Only at q = 0 (passed to simulate); the q > 0 engine is dense throughout.

    Returns
    -------
    Trajectory
        ``options["q"]`` records q. At q = 0: exactly ``simulate``'s trajectory.
    """
    from . import integrate as I
    from ._runtime import Interrupt, Progress, Recorder, divergence_error
    from .provenance import weights_digest
    from .trajectory import RunStats

    q = check_probability("q", q)
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    if method not in I.EXPLICIT_METHODS:
        raise invalid("method", method, "must be one of " + ", ".join(I.EXPLICIT_METHODS))
    if q == 0.0:
        return I.simulate(model, t_max, method=method, dt=dt, W0=W0, save_at=save_at,
                          snapshots=snapshots, stop=stop, sparse_below=sparse_below, progress=progress)
    if sparse_below is not None:
        raise invalid("sparse_below", sparse_below, "is used only at q = 0; leave it None")
    if model.n < 2 or not (model.feature_benefit and model.interference):
        raise invalid("model", model, "needs n >= 2 and feature benefit and interference on when q > 0")
    t_max = check_float("t_max", t_max, positive=True)
    if stop is not None and not isinstance(stop, I.Stop):
        raise invalid("stop", type(stop).__name__, "must be a flowsim.Stop or None")
    dt = check_float("dt", 0.1 / model.c if dt is None else dt, positive=True)
    W = model.initial_weights() if W0 is None else model.check_weights(W0)
    options = {"q": q, "W0": ({"source": "seed", "seed": model.seed} if W0 is None
                              else {"source": "given", "sha256": weights_digest(W)})}
    if stop is not None:
        options["stop"] = dataclasses.asdict(stop)
    times = I._save_times(save_at, 0.0, t_max, dt)
    engine = CoEngine(W, model, method, q)
    rec = Recorder(model, snapshots)
    interrupt = Interrupt()
    bar = Progress(progress, method, 0.0, t_max, stop, int(np.count_nonzero(W, axis=1).max()))
    run = I._Stepper(engine, dt, 0.0, stop, bar, interrupt)
    comp = wall0 = 0.0
    try:
        with interrupt.guard():
            comp = _warm_up(model, method, q)
            wall0 = time.perf_counter()
            rec.save(0.0, engine.stats(), engine.W)
            if interrupt.flag:
                run.status = "interrupted"
            else:
                I._march(run, times, rec, t_max)
    except FloatingPointError:
        raise divergence_error(model, method, dt, run.t, run.steps, rec, engine.W, options,
                               time.perf_counter() - wall0, comp) from None
    finally:
        bar.close(run.t, lambda: I._nnz_max(engine))
    if run.status == "completed":
        run.t = t_max
    elif rec.t[-1] != run.t:
        rec.save(run.t, engine.stats(), engine.W)
    wall = time.perf_counter() - wall0
    if run.status == "interrupted":
        warnings.warn(f"interrupted at t={run.t:.6g}; returning the trajectory up to there",
                      FlowsimWarning, stacklevel=2)
    t_conv = float(run.out[K.OUT_STREAK]) if run.status == "converged" else math.nan
    stats = RunStats(run.status, run.t, run.steps, int(run.out[K.OUT_EVALS]), wall, comp,
                     I._MESSAGES[run.status].format(max_nnz=run.stop_nnz), rejected=0,
                     h_min=dt if run.steps else math.nan, h_max=dt if run.steps else math.nan,
                     t_converged=t_conv)
    return rec.trajectory(method, dt, engine.W, stats, options)


# --------------------------------------------------------------------------- NumPy reference

def reference_smooth(U, model, q, Wsup=None):
    """NumPy reference of :meth:`CoEngine.smooth`: force (1) by broadcasting over all
    (k, i, j), plus ``-λ_p Σ_{j≠i, Wsup_jk≠0} sign(U_ik + U_jk)``. U : (n, m) -> (n, m)."""
    from . import forces

    U = np.asarray(U, dtype=np.float64)
    Wsup = U if Wsup is None else Wsup
    n = U.shape[0]
    co = _coefficients(model, q)
    F = (1.0 - q) * (forces.feature_benefit(U, model.c) + forces.interference(U, model.c))
    G = U @ U.T
    S = G[:, :, None] + G[:, None, :]                          # (k, i, j)
    eye = np.eye(n)
    u = eye[:, :, None] + eye[:, None, :]
    g = np.where(S > 0, 2.0 * (S - u), 0.0)
    g[:, np.arange(n), np.arange(n)] = 0.0                      # j ≠ i
    B = g.sum(axis=2)
    F -= co["a2"] * (B + B.T) @ U
    sg = np.sign(U[:, None, :] + U[None, :, :])                 # (i, j, k)
    sg *= (Wsup[None, :, :] != 0)
    sg[np.arange(n), np.arange(n), :] = 0.0
    return F - co["lam_pair"] * sg.sum(axis=1)


def reference_thresholds(W, model, q):
    """L_ik = λ(1-q) + λ_p #{j≠i: W_jk = 0}. W : (n, m) -> (n, m)."""
    co = _coefficients(model, q)
    Z = (W == 0)
    zeros = Z.sum(axis=0)[None, :] - Z
    return co["lam_single"] + co["lam_pair"] * zeros


def reference_step(W, model, q, h, method):
    """One step of the q > 0 engine in NumPy (the definition ``CoEngine.step`` matches);
    :func:`flowsim.forces.reference_step` with entrywise L1 weights."""
    from . import forces

    W = np.asarray(W, dtype=np.float64)
    use = model.l1 and model.lam > 0
    L = reference_thresholds(W, model, q) if use else np.zeros_like(W)
    if method == "euler":
        V = W + h * reference_smooth(W, model, q)
        return np.sign(V) * np.maximum(np.abs(V) - h * L, 0.0) if use else V
    a, b = forces.TABLEAUX[method]
    F0 = reference_smooth(W, model, q)
    s = np.where(W != 0, np.sign(W), np.where(np.abs(F0) > L, np.sign(F0), 0.0)) if use else None
    Ks = []
    for i in range(len(b)):
        U = W + h * sum(a[i, j] * Ks[j] for j in range(i) if a[i, j] != 0.0)
        F = reference_smooth(U, model, q, Wsup=W)
        Ks.append(F if s is None else np.where(s != 0, F - L * s, 0.0))
    V = W + h * sum(b[i] * Ks[i] for i in range(len(b)))
    return V if s is None else np.where(V * s > 0, V, 0.0)


def inputs_and_weights(n, q):
    """Every input of the deterministic mode with its weight in L = n E[ℓ]: singles
    (1-q each) then pairs i < j (2q/(n-1) each). Returns X (N, n), w (N,)."""
    q = check_probability("q", q)
    pairs = list(itertools.combinations(range(n), 2))
    X = np.zeros((n + len(pairs), n))
    X[np.arange(n), np.arange(n)] = 1.0
    for r, (i, j) in enumerate(pairs):
        X[n + r, [i, j]] = 1.0
    w = np.r_[np.full(n, 1.0 - q), np.full(len(pairs), 2.0 * q / (n - 1) if n > 1 else 0.0)]
    return X, w


def expected_loss(W, model, q):
    """L(W) = Σ_x w_x ℓ(x) over every input (:func:`inputs_and_weights`): the oracle of
    the finite-difference test."""
    X, w = inputs_and_weights(model.n, q)
    H = X @ W
    A = H @ W.T
    sq = np.sum((np.maximum(A, 0.0) - X) ** 2, axis=1)
    return float(np.sum(w * (model.c / 4.0 * sq + model.l1_strength * np.abs(H).sum(axis=1))))


def weighted_gradient(W, X, weights, c, lam):
    """Σ_b weights_b ∇_W ℓ(x_b), with ``∇ℓ = (c/4)(g xᵀ + x gᵀ) W + λ x sign(Wᵀx)ᵀ``.

    Parameters
    ----------
    W : ndarray, shape (n, m)
    X : ndarray, shape (B, n)
    weights : ndarray, shape (B,) or float
    c, lam : float

    Returns
    -------
    ndarray, shape (n, m)
    """
    H = X @ W                                   # (B, m)
    A = H @ W.T                                 # (B, n)
    g = np.where(A > 0, 2.0 * (A - X), 0.0) * np.reshape(weights, (-1, 1))
    Xw = X * np.reshape(weights, (-1, 1))
    M = g.T @ X
    return (c / 4.0) * ((M + M.T) @ W) + lam * (Xw.T @ np.sign(H))


# --------------------------------------------------------------------------- stochastic

def _pair_joint(p, q):
    """P(x_a, x_b) of a correlated pair: x_b copies x_a w.p. q, else independent."""
    p11 = p * (q + (1 - q) * p)
    p10 = p * (1 - q) * (1 - p)
    return {(1, 1): p11, (1, 0): p10, (0, 1): p10, (0, 0): 1.0 - p11 - 2 * p10}


def sample_batch(rng, batch, n, data, p=None, q=0.0):
    """A minibatch X (batch, n) of 0/1 inputs (see the module doc for ``data``)."""
    X = np.zeros((batch, n))
    if data == "mixture":
        pair = rng.random(batch) < q
        i = rng.integers(n, size=batch)
        j = rng.integers(n - 1, size=batch)
        j += j >= i
        X[np.arange(batch), i] = 1.0
        X[np.flatnonzero(pair), j[pair]] = 1.0
        return X
    X[:] = rng.random((batch, n)) < p
    if q > 0.0:
        a = np.arange(0, n - 1, 2)
        copy = rng.random((batch, a.size)) < q
        X[:, a + 1] = np.where(copy, X[:, a], X[:, a + 1])
    return X


def bernoulli_inputs(n, p, q):
    """All 2^n inputs of the bernoulli mode with their probabilities (small n)."""
    X = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
    prob = np.ones(len(X))
    joint = _pair_joint(p, q)
    for a in range(0, n - 1, 2):
        prob *= np.array([joint[(int(x[a]), int(x[a + 1]))] for x in X])
    if n % 2:
        prob *= np.where(X[:, -1] > 0, p, 1 - p)
    return X, prob


@dataclasses.dataclass(frozen=True, eq=False)
class SGDResult:
    """A stochastic training run.

    Attributes
    ----------
    W0, W : ndarray, shape (n, m)
        Initial and final weights.
    status : str
        "completed", or "interrupted" (W is the state when Ctrl-C came).
    steps : int
        Steps taken.
    wall_seconds : float
    params : dict
        data, p, q, lr, batch, steps asked, seed, n, m, λ, c.
    """

    W0: np.ndarray
    W: np.ndarray
    status: str
    steps: int
    wall_seconds: float
    params: dict


def _check_sgd(model, steps, lr, batch, data, p, q):
    if data not in DATA:
        raise invalid("data", data, "must be one of " + ", ".join(DATA))
    q = check_probability("q", q)
    if data == "bernoulli":
        p = check_probability("p", p)
        if p == 0.0:
            raise invalid("p", p, "must be > 0 in the bernoulli mode (no feature would ever be present)")
    elif p is not None:
        raise invalid("p", p, "is used only with data='bernoulli'; leave it None")
    if model.n < 2:
        raise invalid("model.n", model.n, "must be >= 2")
    return (check_int("steps", steps, 1), check_float("lr", lr, positive=True),
            check_int("batch", batch, 1), p, q)


def train_stochastic(model, steps, lr, batch, *, data="bernoulli", p=None, q=0.0, seed=0,
                     W0=None, progress=False):
    """Minibatch SGD on the co-occurrence data (see the module doc).

    Parameters
    ----------
    model : Model
        n, m, λ (``model.l1_strength``), c; ``model.seed`` gives W0 when not given.
    steps : int
    lr : float
        Learning rate (one step advances the flow's time by lr).
    batch : int
    data : {"bernoulli", "mixture"}
    p : float in (0, 1]
        Bernoulli mode: probability that a feature is present.
    q : float in [0, 1]
        Bernoulli: copy probability of the correlated pairs; mixture: pair probability.
    seed : int
        Seed of the minibatches: ``numpy.random.default_rng([seed, 1])`` (a stream
        independent of the initial weights' ``default_rng(model.seed)``).
    W0 : array_like, shape (n, m), optional
    progress : bool
        tqdm bar on stderr.

    Returns
    -------
    SGDResult

    Raises
    ------
    FlowsimInputError
        Bad p, q, data, steps, lr, batch (one line).
    DivergenceError
        Non-finite weights (with the step).
    """
    from tqdm import tqdm

    from .errors import DivergenceError

    steps, lr, batch, p, q = _check_sgd(model, steps, lr, batch, data, p, q)
    seed = check_int("seed", seed, 0)
    W0 = model.initial_weights() if W0 is None else model.check_weights(W0)
    W = W0.copy()
    n, lam, c = model.n, model.l1_strength, model.c
    scale = (n if data == "mixture" else 1.0 / p) / batch
    rng = np.random.default_rng([seed, 1])  # a stream apart from W0's default_rng(seed)
    status, done = "completed", 0
    tick = time.perf_counter()
    with tqdm(total=steps, disable=not progress, unit="step", desc=f"sgd {data}") as bar:
        try:
            for done in range(1, steps + 1):
                X = sample_batch(rng, batch, n, data, p, q)
                W -= lr * weighted_gradient(W, X, scale, c, lam)
                if done % 256 == 0 or done == steps:
                    bar.update(done - bar.n)
                    if not np.isfinite(W).all():
                        raise DivergenceError(f"weights became non-finite by step {done} (t = {done * lr:g}); "
                                              "lower lr", t=(done - 256) * lr, step=done)
        except KeyboardInterrupt:
            status, done = "interrupted", done - 1
    params = dict(data=data, p=p, q=q, lr=lr, batch=batch, steps=steps, seed=seed, n=n, m=model.m,
                  lam=lam, c=c)
    return SGDResult(W0, W, status, done, time.perf_counter() - tick, params)


# --------------------------------------------------------------------------- metrics

def collision_fate(W0, W, threshold=0.5):
    """Benign and malign collisions, at the start and at the end, counted apart.

    Returns
    -------
    dict
        ``benign_initial``, ``malign_initial`` (pairs, :func:`flowsim.metrics.initial_collisions`);
        ``benign_survived``, ``malign_survived``: of those, pairs whose two features both
        end represented by their shared initial neuron; ``final_benign``,
        ``final_malign``: final polysemantic neurons whose features' weights on it have
        mixed signs / one sign.
    """
    from . import metrics

    col = metrics.initial_collisions(W0)
    R = metrics.represented(W, threshold)
    lead0 = metrics.leading_neuron(W0)
    surv = np.array([bool(R[i, lead0[i]] and R[j, lead0[j]]) for i, j in col.pairs], dtype=bool)
    fb = fm = 0
    for k, feats in enumerate(metrics.neuron_features(W, threshold)):
        if feats.size >= 2:
            signs = np.sign(W[feats, k])
            if (signs > 0).any() and (signs < 0).any():
                fb += 1
            else:
                fm += 1
    return dict(benign_initial=col.benign, malign_initial=col.malign,
                benign_survived=int(np.count_nonzero(surv & col.pair_benign)),
                malign_survived=int(np.count_nonzero(surv & ~col.pair_benign)),
                final_benign=fb, final_malign=fm)


def main(argv=None):
    """``python -m flowsim.cooccur`` (argument parsing and files live in
    ``flowsim._cooccur_cli``); returns the exit status."""
    from ._cooccur_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    import sys

    from . import _cli
    from ._cooccur_cli import PROG

    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
