"""The noisy-hidden-layer model (paper Section 3, Appendix C): stochastic training.

No L1 term by default; every forward pass adds noise ξ ∈ R^m to the hidden layer::

    y = ReLU(W(Wᵀx + ξ)),    L = Σ_i ‖y(e_i) - e_i‖²  (+ λ‖W‖₁, optional)

trained by full-batch gradient descent over the n basis inputs with learning rate η,
``W ← S_{ηλ}(W - η ∂L/∂W)`` (S: soft-threshold, the exact flow of the L1 sign force over
a step, as flowsim's ``euler``; without L1 a plain gradient step). The gradient is exact,
output ReLU included. The noise (bipolar ±σ, normal, uniform or Laplace, each with
standard deviation σ) is drawn once per step and shared by all inputs (as the published
code did) or drawn independently for each input (as the analysis assumes).

With σ = 0 and λ = 0 one step is one Euler step of ``simulate`` with c = 4, dt = η: the
loss is the one whose exact gradient flow flowsim simulates with c = 4.

Public API::

    NoiseModel, train, NoiseRun           numba training of many instances
    train_reference, loss_and_gradient,   the plain NumPy reference (test oracle)
    sample_noise, encoding_norms
    DISTRIBUTIONS, SHARING, EXCESS_KURTOSIS
    fourth_moment, implicit_regulariser,  the paper's Section 3.2 formulas and what
    regulariser_drift, one_step_expansion they predict per step
    drift_check, DriftCheck               the theory check: measured per-step change

``python -m flowsim.noise`` reproduces Figures 4, 5 and 7 and the kurtosis experiment
(see ``python -m flowsim.noise --help``).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import sys
import time
import warnings

import numpy as np

from . import _noise_kernels as K
from ._version import __version__
from .errors import DivergenceError, FlowsimWarning, check_float, check_int, invalid
from .trajectory import RunStats, _jsonable

DISTRIBUTIONS = ("bipolar", "normal", "uniform", "laplace")
SHARING = ("shared", "independent")
#: Excess kurtosis μ₄/σ⁴ - 3 of each noise distribution.
EXCESS_KURTOSIS = {"bipolar": -2.0, "normal": 0.0, "uniform": -1.2, "laplace": 3.0}
#: Steps per kernel call between checks for Ctrl-C, divergence elsewhere and progress,
#: scaled by the cost of a step (about 10⁷ multiply-adds per call).
_CHUNK_WORK = 10_000_000


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise invalid(name, value, "must be one of " + ", ".join(allowed))
    return value


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """Frozen parameters of a noisy training run of ``instances`` independent copies.

    Parameters
    ----------
    n, m : int
        Features (rows of W) and hidden neurons (columns), >= 1.
    sigma : float
        Standard deviation σ >= 0 of the hidden noise (0: no noise, no draws).
    distribution : str
        One of :data:`DISTRIBUTIONS`.
    sharing : str
        ``"shared"``: one ξ per step for all inputs; ``"independent"``: one per input.
    eta : float
        Learning rate η > 0.
    lam : float
        L1 strength λ >= 0 on the encodings, λ Σ_i ‖W_i‖₁ (0: no L1).
    init_std : float or None
        Standard deviation of the i.i.d. normal initial weights; None: 1/√m.
    instances : int
        Independent copies (own initial weights and noise), >= 1.
    seed : int
        Instance k uses ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(k,)))``:
        first its initial weights, then its noise. So instance k is the same whatever
        the number of instances, and runs that differ only in σ, distribution or
        sharing start from the same weights.
    """

    n: int = 8
    m: int = 16
    sigma: float = 0.0
    distribution: str = "bipolar"
    sharing: str = "shared"
    eta: float = 0.02
    lam: float = 0.0
    init_std: float | None = None
    instances: int = 1
    seed: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("n", check_int("n", self.n, 1))
        set_("m", check_int("m", self.m, 1))
        set_("sigma", check_float("sigma", self.sigma, minimum=0.0))
        set_("distribution", _choice("distribution", self.distribution, DISTRIBUTIONS))
        set_("sharing", _choice("sharing", self.sharing, SHARING))
        set_("eta", check_float("eta", self.eta, positive=True))
        set_("lam", check_float("lam", self.lam, minimum=0.0))
        set_("init_std", check_float("init_std", self.init_std, positive=True, allow_none=True))
        set_("instances", check_int("instances", self.instances, 1))
        set_("seed", check_int("seed", self.seed, 0))

    @property
    def std(self) -> float:
        """Effective initial standard deviation (``init_std`` or 1/√m)."""
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.m)

    @property
    def excess_kurtosis(self) -> float:
        """μ₄/σ⁴ - 3 of the noise distribution."""
        return EXCESS_KURTOSIS[self.distribution]

    def replace(self, **changes) -> "NoiseModel":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def generators(self) -> list:
        """Fresh generators of the instances (see ``seed``)."""
        return [np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(k,)))
                for k in range(self.instances)]

    def initial_weights(self) -> np.ndarray:
        """Default initial weights N(0, std²) of every instance.

        Returns
        -------
        ndarray, shape (instances, n, m)
        """
        return np.stack([self._draw_weights(g) for g in self.generators()])

    def _draw_weights(self, rng):
        W = rng.standard_normal((self.n, self.m))
        W *= self.std
        return W

    def check_weights(self, W0) -> np.ndarray:
        """Validate given initial weights, (n, m) for all instances or (instances, n, m).

        Returns
        -------
        ndarray, shape (instances, n, m), a float64 copy
        """
        try:
            W = np.array(W0, dtype=np.float64, copy=True)
        except (TypeError, ValueError):
            raise invalid("W0", type(W0).__name__, "must be a real array") from None
        shape = (self.n, self.m)
        if W.shape == shape:
            W = np.broadcast_to(W, (self.instances, *shape))
        if W.shape != (self.instances, *shape):
            raise invalid("W0.shape", W.shape, f"must be (n, m) = {shape} or (instances, n, m)")
        if not np.all(np.isfinite(W)):
            raise invalid("W0", f"<{np.count_nonzero(~np.isfinite(W))} non-finite entries>",
                          "every entry must be finite")
        return np.ascontiguousarray(W).copy()

    def as_dict(self) -> dict:
        """Parameters as a plain dict (for JSON), with the effective init std and κ."""
        d = dataclasses.asdict(self)
        d["std"] = self.std
        d["excess_kurtosis"] = self.excess_kurtosis
        return d


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseRun:
    """The result of :func:`train` (or :func:`train_reference`).

    Attributes
    ----------
    model : NoiseModel
    method : str
        ``"numba"`` or ``"numpy"`` (the reference).
    steps : ndarray, shape (R,), int64
        Steps at which the measurements were recorded (reached by every instance).
    l4, l2 : ndarray, shape (instances, R, n)
        ‖W_i‖₄⁴ and ‖W_i‖₂ of every encoding.
    loss : ndarray, shape (instances, R)
        Noise-free loss Σ_i ‖ReLU(W W_i) - e_i‖² + λ‖W‖₁ at the record.
    train_loss : ndarray, shape (instances, R)
        Mean of the noisy training losses of the steps since the previous record
        (NaN at step 0).
    W : ndarray, shape (instances, n, m)
        Final weights (instance k after ``options["steps_done"][k]`` steps).
    W0 : ndarray, shape (instances, n, m)
    stats : RunStats
        ``t_end`` = steps reached × η; ``force_evals`` = gradient evaluations, all
        instances; ``wall_seconds`` excludes ``compile_seconds``.
    snapshot_steps : ndarray, shape (S,), or None
    snapshots : ndarray, shape (instances, S, n, m), or None
    options : dict
        What else shaped the result (workers, where W0 came from, steps done).
    """

    model: NoiseModel
    method: str
    steps: np.ndarray
    l4: np.ndarray
    l2: np.ndarray
    loss: np.ndarray
    train_loss: np.ndarray
    W: np.ndarray
    W0: np.ndarray
    stats: RunStats
    snapshot_steps: np.ndarray | None = None
    snapshots: np.ndarray | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def mean_l4(self) -> np.ndarray:
        """Mean ‖W_i‖₄⁴ over the encodings, shape (instances, R)."""
        return self.l4.mean(axis=2)

    def metadata(self) -> dict:
        """Everything that produced this result, as JSON-ready data (no NaN: null)."""
        from .provenance import FORMAT_VERSION, environment

        return _jsonable({
            "format_version": FORMAT_VERSION,
            "flowsim_version": __version__,
            "environment": environment(),
            "model": self.model.as_dict(),
            "method": self.method,
            "eta": self.model.eta,
            "steps_requested": self.options.get("steps_requested"),
            "options": self.options,
            "stats": dataclasses.asdict(self.stats),
            "records": int(self.steps.size),
        })


# ------------------------------------------------------------------ NumPy reference


def sample_noise(rng, distribution, sigma, shape):
    """Noise of standard deviation σ, the stream the numba kernel draws (value for value).

    Parameters
    ----------
    rng : numpy.random.Generator
    distribution : str
        bipolar ±σ (a uniform draw < 0.5 gives -σ), normal, uniform on [-σ√3, σ√3],
        Laplace with scale σ/√2.
    sigma : float
    shape : tuple

    Returns
    -------
    ndarray, shape ``shape``
    """
    if distribution == "bipolar":
        return np.where(rng.random(shape) < 0.5, -sigma, sigma)
    if distribution == "normal":
        return sigma * rng.standard_normal(shape)
    if distribution == "uniform":
        a = sigma * math.sqrt(3.0)
        return rng.uniform(-a, a, shape)
    if distribution == "laplace":
        return rng.laplace(0.0, sigma / math.sqrt(2.0), shape)
    raise invalid("distribution", distribution, "must be one of " + ", ".join(DISTRIBUTIONS))


def loss_and_gradient(W, Xi):
    """Loss Σ_i ‖ReLU(W(W_i + ξ^(i))) - e_i‖² and its gradient, input by input.

    The chain rule of Appendix C without its simplifications: on input e_i the hidden
    layer is h = W_i + ξ^(i), the output z = W h, ∂L/∂z = 2 (ReLU(z) - e_i) [z > 0];
    the decoder gets ∂L/∂z hᵀ and the encoder row i gets Wᵀ ∂L/∂z.

    Parameters
    ----------
    W : ndarray, shape (..., n, m)
    Xi : ndarray, shape (..., n, m)
        Row i is the noise on input i (a shared ξ: every row equal); zeros for no noise.

    Returns
    -------
    loss : ndarray, shape (...)
    grad : ndarray, shape (..., n, m)
    """
    W = np.asarray(W, dtype=np.float64)
    Xi = np.broadcast_to(np.asarray(Xi, dtype=np.float64), np.broadcast_shapes(W.shape, np.shape(Xi)))
    n = W.shape[-2]
    W = np.broadcast_to(W, Xi.shape)
    grad = np.zeros(Xi.shape)
    loss = np.zeros(Xi.shape[:-2])
    for i in range(n):
        h = W[..., i, :] + Xi[..., i, :]
        z = np.einsum("...km,...m->...k", W, h)
        eps = np.maximum(z, 0.0)
        eps[..., i] -= 1.0
        dz = 2.0 * eps * (z > 0.0)
        grad += dz[..., :, None] * h[..., None, :]
        grad[..., i, :] += np.einsum("...km,...k->...m", W, dz)
        loss += np.sum(eps * eps, axis=-1)
    return loss, grad


def encoding_norms(W, lam=0.0):
    """‖W_i‖₄⁴, ‖W_i‖₂ and the noise-free loss (+ λ‖W‖₁) of W (..., n, m).

    Returns
    -------
    l4, l2 : ndarray, shape (..., n)
    loss : ndarray, shape (...)
    """
    W = np.asarray(W, dtype=np.float64)
    W2 = W * W
    loss, _ = loss_and_gradient(W, np.zeros_like(W))
    return (W2 * W2).sum(axis=-1), np.sqrt(W2.sum(axis=-1)), loss + lam * np.abs(W).sum(axis=(-2, -1))


def _reference_step(model, W, rng):
    n, m = W.shape
    if model.sigma > 0:
        rows = 1 if model.sharing == "shared" else n
        Xi = np.broadcast_to(sample_noise(rng, model.distribution, model.sigma, (rows, m)), (n, m))
    else:
        Xi = np.zeros((n, m))
    loss, grad = loss_and_gradient(W, Xi)
    V = W - model.eta * grad
    if model.lam > 0:
        V = np.sign(V) * np.maximum(np.abs(V) - model.eta * model.lam, 0.0)
    return V, float(loss)


def train_reference(model, steps, *, record_at=None, W0=None):
    """Plain NumPy training, the reference for :func:`train` (same noise stream).

    Parameters and result as :func:`train` (no snapshots, no parallelism, no
    divergence check); ``method == "numpy"``.
    """
    steps = check_int("steps", steps, 1)
    rec = _record_steps(record_at, steps, "record_at")
    W_all, rngs, origin = _start(model, W0)
    I, R = model.instances, rec.size
    l4, l2 = np.empty((I, R, model.n)), np.empty((I, R, model.n))
    loss, tl = np.empty((I, R)), np.full((I, R), np.nan)
    W0_copy = W_all.copy()
    wall0 = time.perf_counter()
    for k in range(I):
        W, acc, cnt, r = W_all[k], 0.0, 0, 0
        for step in range(steps + 1):
            if step == rec[r]:
                l4[k, r], l2[k, r], loss[k, r] = encoding_norms(W, model.lam)
                tl[k, r] = acc / cnt if cnt else np.nan
                acc, cnt, r = 0.0, 0, r + 1
            if step < steps:
                W, lo = _reference_step(model, W, rngs[k])
                acc, cnt = acc + lo, cnt + 1
        W_all[k] = W
    stats = RunStats("completed", steps * model.eta, steps, steps * I, time.perf_counter() - wall0, 0.0,
                     "reached the last step")
    options = dict(W0=origin, steps_requested=steps, steps_done=[steps] * I)
    return NoiseRun(model, "numpy", rec, l4, l2, loss, tl, W_all, W0_copy, stats, options=options)


# ------------------------------------------------------------------ numba training


def _record_steps(steps_at, steps, name, ends=True):
    if steps_at is None:
        from .integrate import default_save_times

        return np.round(default_save_times(float(steps), 1.0)).astype(np.int64)
    try:
        s = np.asarray(steps_at, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise invalid(name, steps_at, "must be an array of step numbers") from None
    if s.size and (not np.all(np.isfinite(s)) or np.any(s != np.round(s)) or s.min() < 0 or s.max() > steps):
        raise invalid(name, f"<{s.size} values>", f"must be integers in [0, steps={steps}]")
    return np.unique(np.concatenate([[0], s, [steps]] if ends else [s]).astype(np.int64))


def _start(model, W0):
    """Initial weights (instances, n, m), the instances' generators and W0's origin."""
    from .provenance import weights_digest

    if not isinstance(model, NoiseModel):
        raise invalid("model", type(model).__name__, "must be a flowsim.noise.NoiseModel")
    rngs = model.generators()
    if W0 is None:
        return np.stack([model._draw_weights(g) for g in rngs]), rngs, {"seed": model.seed}
    W = model.check_weights(W0)
    return W, rngs, {"given": True, "sha256": weights_digest(W)}


class _Instance:
    """Work arrays and state of one instance in the numba driver."""

    def __init__(self, W, R, S, n, m):
        self.W = W
        self.l4, self.l2 = np.full((R, n), np.nan), np.full((R, n), np.nan)
        self.loss, self.train_loss = np.full(R, np.nan), np.full(R, np.nan)
        self.snaps = np.zeros((S, n, m))
        self.Xi, self.grad = np.zeros((n, m)), np.zeros((n, m))
        self.G, self.Z, self.Gam = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        self.out = np.zeros(K.OUT_SIZE)


def _warm_up():
    """Compile (or load from numba's cache) the kernels on a 2×2 problem; seconds taken."""
    tick = time.perf_counter()
    inst = _Instance(np.full((2, 2), 0.5), 2, 1, 2, 2)
    rec = np.array([0, 1], dtype=np.int64)
    snap_of = np.array([0, -1], dtype=np.int64)
    K.run(inst.W, np.random.default_rng(0), 0, 0.1, True, 0.01, 0.0, rec, 1, inst.l4, inst.l2,
          inst.loss, inst.train_loss, snap_of, inst.snaps, inst.Xi, inst.G, inst.Z, inst.Gam,
          inst.grad, inst.out)
    return time.perf_counter() - tick


def _progress(enabled, total, model):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"flowsim.noise {model.distribution} σ={model.sigma:g}", unit="step",
                unit_scale=True, leave=False, file=sys.stderr)


def train(model, steps, *, record_at=None, snapshot_at=None, W0=None, workers=None, progress=False):
    """Train ``model.instances`` independent instances for ``steps`` gradient steps.

    Parameters
    ----------
    model : NoiseModel
    steps : int
        Gradient steps (>= 1).
    record_at : array_like of int, optional
        Steps at which to measure ‖W_i‖₄⁴, ‖W_i‖₂ and the loss; 0 and ``steps`` are
        always added. Default: 0 and 200 log-spaced steps.
    snapshot_at : array_like of int, optional
        Steps at which to keep a copy of W (also recorded). Default: none.
    W0 : array_like, shape (n, m) or (instances, n, m), optional
        Initial weights; default N(0, std²) from each instance's generator.
    workers : int, optional
        Threads over instances (the kernels release the GIL); default
        min(instances, usable CPUs). Results do not depend on it.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    NoiseRun
        Bit-identical for the same model, steps, records and W0. On Ctrl-C the run ends
        with ``stats.status == "interrupted"`` and keeps every record all instances
        reached.

    Raises
    ------
    FlowsimInputError
        For any invalid argument (one line naming it).
    DivergenceError
        When the weights of an instance become non-finite; it carries the partial
        result (``trajectory``), whose ``W`` is the last finite state.
    """
    steps = check_int("steps", steps, 1)
    snap_steps = None if snapshot_at is None else _record_steps(snapshot_at, steps, "snapshot_at", ends=False)
    rec = _record_steps(record_at, steps, "record_at")
    if snap_steps is not None:
        rec = np.union1d(rec, snap_steps)
    W_all, rngs, origin = _start(model, W0)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(model.instances, cpus)
    workers = check_int("workers", workers, 1)
    snap_of = np.full(rec.size, -1, dtype=np.int64)
    if snap_steps is not None:
        snap_of[np.searchsorted(rec, snap_steps)] = np.arange(snap_steps.size)
    S = 0 if snap_steps is None else snap_steps.size
    n, m = model.n, model.m
    insts = [_Instance(W_all[k].copy(), rec.size, S, n, m) for k in range(model.instances)]
    comp = _warm_up()
    chunk = max(1, _CHUNK_WORK // (3 * n * n * m))
    code = DISTRIBUTIONS.index(model.distribution)
    shared = model.sharing == "shared"
    from ._runtime import Interrupt

    interrupt = Interrupt()
    halt = []  # an instance that diverged stops the others at their next chunk

    def drive(group, report=None):
        """Advance the instances of ``group`` in lock step, ``chunk`` steps a round, so that
        a Ctrl-C leaves them all within one chunk of each other."""
        target = 0  # the first round only records step 0
        while True:
            for k in group:
                inst = insts[k]
                K.run(inst.W, rngs[k], code, model.sigma, shared, model.eta, model.lam, rec, target,
                      inst.l4, inst.l2, inst.loss, inst.train_loss, snap_of, inst.snaps, inst.Xi,
                      inst.G, inst.Z, inst.Gam, inst.grad, inst.out)
                if inst.out[K.OUT_STATUS] == K.STATUS_NONFINITE:
                    halt.append(k)
            if report is not None:
                report()
            if target >= steps or interrupt.flag or halt:
                break
            target = min(target + chunk, steps)

    bar = _progress(progress, steps * model.instances, model)
    wall0 = time.perf_counter()
    try:
        with interrupt.guard():
            _drive_all(drive, model.instances, workers, insts, bar)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - wall0
    return _collect(model, rec, snap_steps, insts, W_all, origin, steps, halt, interrupt.flag, wall, comp, workers)


def _drive_all(drive, count, workers, insts, bar):
    """Run ``drive(group)`` on ``workers`` threads (instance k in group k mod workers),
    updating ``bar`` from the main thread."""
    done = lambda: int(sum(inst.out[K.OUT_STEP] for inst in insts))  # noqa: E731
    update = None if bar is None else (lambda: bar.update(done() - bar.n))
    if workers == 1:
        drive(range(count), update)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(drive, range(w, count, workers)) for w in range(min(workers, count))]
        pending = set(futures)
        while pending:
            _, pending = concurrent.futures.wait(pending, timeout=0.1)
            if update is not None:
                update()
        for f in futures:
            f.result()


def _collect(model, rec, snap_steps, insts, W0, origin, steps, halt, interrupted, wall, comp, workers):
    reached = min(int(inst.out[K.OUT_RECORD]) for inst in insts)
    done = [int(inst.out[K.OUT_STEP]) for inst in insts]
    stack = lambda name: np.stack([getattr(i, name)[:reached] for i in insts])  # noqa: E731
    status = "diverged" if halt else ("interrupted" if interrupted else "completed")
    step_end = int(rec[reached - 1])
    stats = RunStats(status, step_end * model.eta, step_end, sum(done), wall, comp,
                     {"completed": "reached the last step", "interrupted": "stopped by Ctrl-C",
                      "diverged": "non-finite weights"}[status])
    snaps = snap_t = None
    if snap_steps is not None:
        keep = snap_steps <= step_end
        snap_t = snap_steps[keep]
        snaps = np.stack([inst.snaps[:keep.sum()] for inst in insts])
    options = dict(workers=workers, W0=origin, steps_requested=steps, steps_done=done)
    result = NoiseRun(model, "numba", rec[:reached].copy(), stack("l4"), stack("l2"), stack("loss"),
                      stack("train_loss"), np.stack([inst.W for inst in insts]), W0, stats,
                      snap_t, snaps, options)
    if halt:
        k = halt[0]
        bad = done[k] + 1
        raise DivergenceError(
            f"weights of instance {k} became non-finite at step {bad} (t={bad * model.eta:.6g}) with "
            f"eta={model.eta:g}, sigma={model.sigma:g}, distribution={model.distribution}; the last finite "
            f"state is kept. Try a smaller step, e.g. eta={model.eta / 4:g}, or a smaller sigma.",
            t=done[k] * model.eta, step=done[k], trajectory=result)
    if interrupted:
        warnings.warn(f"interrupted at step {step_end}; returning the records up to there",
                      FlowsimWarning, stacklevel=3)
    return result


# ------------------------------------------------------------------ Section 3.2 formulas


def _kurtosis(distribution):
    return EXCESS_KURTOSIS[_choice("distribution", distribution, DISTRIBUTIONS)]


def _sigma_eta(sigma, eta):
    return check_float("sigma", sigma, minimum=0.0), check_float("eta", eta, positive=True)


def _rows(W):
    W = np.asarray(W, dtype=np.float64)
    W2 = W * W
    return W2.sum(axis=-1), (W2 * W2).sum(axis=-1), (W2 * W2 * W2).sum(axis=-1)


def fourth_moment(W, sigma, distribution):
    """The paper's E[(W_i·ξ)⁴] = 3σ⁴‖W_i‖₂⁴ + ‖W_i‖₄⁴ (μ₄ - 3σ⁴), with μ₄ - 3σ⁴ = κσ⁴.

    Parameters
    ----------
    W : array_like, shape (..., m)
    sigma : float
    distribution : str

    Returns
    -------
    ndarray, shape (...)
    """
    l2sq, l4, _ = _rows(W)
    s4 = check_float("sigma", sigma, minimum=0.0) ** 4
    return 3.0 * s4 * l2sq**2 + l4 * _kurtosis(distribution) * s4


def implicit_regulariser(W, sigma, eta, distribution):
    """The implicit regulariser 16 η² σ⁴ ‖W_i‖₄⁴ (μ₄/σ⁴ - 3) of each encoding.

    Parameters
    ----------
    W : array_like, shape (..., m)

    Returns
    -------
    ndarray, shape (...)
    """
    _, l4, _ = _rows(W)
    sigma, eta = _sigma_eta(sigma, eta)
    return 16.0 * eta**2 * sigma**4 * _kurtosis(distribution) * l4


def regulariser_drift(W, sigma, eta, distribution):
    """Per-step change of ‖W_i‖₄⁴ if gradient descent (rate η) minimised the regulariser.

    One step ``ΔW_i = -η ∇R_i`` with R_i = 16η²σ⁴κ‖W_i‖₄⁴, projected on the tangent of the
    sphere ‖W_i‖₂ = const (the norm is held by the feature benefit), changes ‖W_i‖₄⁴ by
    ``-256 η³ σ⁴ κ (‖W_i‖₆⁶ - ‖W_i‖₄⁸/‖W_i‖₂²)``: up for κ < 0 (toward sparsity), down
    for κ > 0.

    Returns
    -------
    ndarray, shape (...)
    """
    l2sq, l4, l6 = _rows(W)
    sigma, eta = _sigma_eta(sigma, eta)
    with np.errstate(invalid="ignore", divide="ignore"):
        tangent = np.where(l2sq > 0, l6 - l4**2 / l2sq, 0.0)
    return -256.0 * eta**3 * sigma**4 * _kurtosis(distribution) * tangent


def one_step_expansion(W, sigma, eta, distribution):
    """E[Δ‖W_i‖₄⁴] over one step to O(η²) under the paper's assumptions.

    With ‖W_i‖₂ = 1 and no interference the step is ΔW_i = -2η(W_i·ξ)(2W_i + ξ)
    (Appendix C); expanding ‖W_i + ΔW_i‖₄⁴ and averaging over ξ::

        E[Δf] = -8ησ²f + 24η² (4σ²f + σ⁴ + σ⁴(κ + 2) f) + O(η³),   f = ‖W_i‖₄⁴.

    The κ-dependent part, 24η²σ⁴κf, has the sign of κ: one step from a given point raises
    the fourth norm more under Laplace noise than under normal noise, and less under
    bipolar noise (the opposite of what the regulariser alone would do).

    Returns
    -------
    ndarray, shape (...)
    """
    _, f, _ = _rows(W)
    sigma, eta = _sigma_eta(sigma, eta)
    s2 = sigma**2
    kappa = _kurtosis(distribution)
    return -8.0 * eta * s2 * f + 24.0 * eta**2 * (4.0 * s2 * f + s2 * s2 + s2 * s2 * (kappa + 2.0) * f)


def noise_moments(distribution, sigma, order=8):
    """Raw moments E[ξ^p], p = 0 … order, of the noise (odd ones are 0).

    Returns
    -------
    ndarray, shape (order + 1,)
    """
    sigma = check_float("sigma", sigma, minimum=0.0)
    _kurtosis(distribution)
    mu = np.zeros(order + 1)
    for p in range(0, order + 1, 2):
        mu[p] = {"bipolar": sigma**p,
                 "normal": sigma**p * math.prod(range(p - 1, 0, -2)),
                 "uniform": (sigma * math.sqrt(3.0)) ** p / (p + 1),
                 "laplace": math.factorial(p) * (sigma / math.sqrt(2.0)) ** p}[distribution]
    return mu


def _sum_moments(weights, mu):
    """Raw moments of Σ_k w_k ξ_k (independent ξ_k with raw moments mu), via cumulants."""
    order = mu.size - 1
    kap = np.zeros(order + 1)
    for q in range(1, order + 1):
        kap[q] = mu[q] - sum(math.comb(q - 1, k - 1) * kap[k] * mu[q - k] for k in range(1, q))
    kap_sum = np.array([kap[q] * np.sum(weights**q) for q in range(order + 1)])
    M = np.zeros(order + 1)
    M[0] = 1.0
    for q in range(1, order + 1):
        M[q] = sum(math.comb(q - 1, k - 1) * kap_sum[k] * M[q - k] for k in range(1, q + 1))
    return M


def one_step_exact(w, sigma, eta, distribution):
    """Exact E[Δ‖w‖₄⁴] over one step of an isolated encoding (n = 1).

    With one input the step is ``Δw = -2η(e + a)(2w + ξ)``, e = ‖w‖² - 1, a = w·ξ, as
    long as the output ReLU is on (``‖w‖² + a > 0``; always for bounded noise with
    σ√3 ‖w‖₁ < ‖w‖², and with probability 1 - O(10⁻⁹) at the σ of Figure 4 for normal
    and Laplace noise). Expanding ``Σ_j (w_j p + q ξ_j)⁴`` with p = 1 - 4η(e + a),
    q = -2η(e + a), polynomials in a, the expectation needs only the moments of ξ_j
    (up to 8) and of the rest of the sum a (up to 4): no truncation in η.

    Parameters
    ----------
    w : array_like, shape (m,)

    Returns
    -------
    float
    """
    w = np.asarray(w, dtype=np.float64).ravel()
    eta = check_float("eta", eta, positive=True)
    mu = noise_moments(distribution, sigma, 8)
    e = float(w @ w) - 1.0
    P = np.polynomial.Polynomial
    p, q = P([1.0 - 4.0 * eta * e, -4.0 * eta]), P([-2.0 * eta * e, -2.0 * eta])
    total = 0.0
    for j in range(w.size):
        M = _sum_moments(np.delete(w, j), mu[:5])
        for r in range(5):
            coef = (p ** (4 - r) * q**r).coef  # in powers of a
            for t, c in enumerate(coef):
                # E[ξ_j^r a^t] with a = w_j ξ_j + (the rest)
                mom = sum(math.comb(t, u) * w[j] ** u * mu[r + u] * M[t - u] for u in range(t + 1))
                total += math.comb(4, r) * w[j] ** (4 - r) * c * mom
    return total - float(np.sum(w**4))


# ------------------------------------------------------------------ the theory check


def noise_from_uniform(u, distribution, sigma):
    """Noise by the inverse CDF of uniforms u ∈ (0, 1) (common random numbers).

    ``1 - u`` gives ``-ξ`` for every distribution (antithetic pairs).

    Returns
    -------
    ndarray, shape of u
    """
    from scipy.special import ndtri

    u = np.asarray(u, dtype=np.float64)
    if distribution == "bipolar":
        return np.where(u < 0.5, -sigma, sigma)
    if distribution == "normal":
        return sigma * ndtri(u)
    if distribution == "uniform":
        return sigma * math.sqrt(3.0) * (2.0 * u - 1.0)
    if distribution == "laplace":
        c = u - 0.5
        return -sigma / math.sqrt(2.0) * np.sign(c) * np.log1p(-2.0 * np.abs(c))
    raise invalid("distribution", distribution, "must be one of " + ", ".join(DISTRIBUTIONS))


@dataclasses.dataclass(frozen=True, eq=False)
class DriftCheck:
    """Measured per-step change of the mean fourth norm from one starting point.

    Attributes
    ----------
    W0 : ndarray, shape (n, m)
    sigma, eta, lam : float
    sharing : str
    distributions : tuple of str
    kurtosis : ndarray, shape (D,)
    f0 : float
        Mean ‖W_i‖₄⁴ of W0.
    windows : ndarray, shape (K,), int64
        Window lengths in steps. Window 1 is measured over ``pairs`` antithetic pairs of
        noise draws (ξ, -ξ) from common uniforms (the same uniforms for every
        distribution, by inverse CDF); longer windows over ``draws`` independent
        instances trained from W0 by :func:`train`.
    change, se : ndarray, shape (D, K)
        E[f̄(K) - f̄(0)] / K and its standard error.
    excess, excess_se : ndarray, shape (D, K)
        ``change`` minus normal noise's (the part that depends on the distribution at
        equal σ) and its standard error (paired for window 1, independent otherwise).
    regulariser, regulariser_drift, expansion : ndarray, shape (D,)
        Mean over encodings of :func:`implicit_regulariser`, :func:`regulariser_drift`
        and :func:`one_step_expansion` at W0.
    exact : ndarray, shape (D,)
        :func:`one_step_exact` (window 1, no truncation) when n = 1; NaN otherwise.
    pairs, draws, seed : int
    seconds : float
    """

    W0: np.ndarray
    sigma: float
    eta: float
    lam: float
    sharing: str
    distributions: tuple
    kurtosis: np.ndarray
    f0: float
    windows: np.ndarray
    change: np.ndarray
    se: np.ndarray
    excess: np.ndarray
    excess_se: np.ndarray
    regulariser: np.ndarray
    regulariser_drift: np.ndarray
    expansion: np.ndarray
    exact: np.ndarray
    pairs: int
    draws: int
    seed: int
    seconds: float

    def metadata(self) -> dict:
        """Everything that produced this result and the measured numbers, JSON-ready."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["flowsim_version"] = __version__
        d["n"], d["m"] = self.W0.shape
        return _jsonable(d)


def _one_step(W0, sigma, eta, lam, sharing, distributions, pairs, seed, chunk=20_000):
    """Window 1 by antithetic common-random-number pairs: samples (D, pairs)."""
    n, m = W0.shape
    rows = 1 if sharing == "shared" else n
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 << 20,)))
    f0 = np.mean(_rows(W0)[1])
    out = np.empty((len(distributions), pairs))
    for start in range(0, pairs, chunk):
        c = min(chunk, pairs - start)
        u = rng.random((c, rows, m))
        for d, dist in enumerate(distributions):
            Xi = np.broadcast_to(noise_from_uniform(u, dist, sigma), (c, n, m))
            both = []
            for sign in (1.0, -1.0):
                _, grad = loss_and_gradient(W0, sign * Xi)
                V = W0 - eta * grad
                if lam > 0:
                    V = np.sign(V) * np.maximum(np.abs(V) - eta * lam, 0.0)
                both.append(np.mean(_rows(V)[1], axis=-1))
            out[d, start:start + c] = 0.5 * (both[0] + both[1]) - f0
    return out


def drift_check(W0, sigma, eta=0.02, *, windows=(1, 10, 100, 1000, 10000), sharing="shared",
                lam=0.0, distributions=DISTRIBUTIONS, pairs=100_000, draws=200, seed=0, workers=None,
                progress=False):
    """Measure the expected per-step change of mean ‖W_i‖₄⁴ from W0 for each distribution.

    The measurement behind the paper's claim: the implicit regulariser
    16η²σ⁴κ‖W_i‖₄⁴ should make ‖W_i‖₄⁴ grow for κ < 0 and shrink for κ > 0. At equal σ
    the rotationally symmetric parts of the change are the same for every distribution,
    so the difference from normal noise (κ = 0), ``excess``, is the part to compare with
    :func:`regulariser_drift` (sign and size) and, for one step, with the κ-part of
    :func:`one_step_expansion`.

    Parameters
    ----------
    W0 : array_like, shape (n, m)
        The shared starting point.
    sigma, eta : float
    windows : sequence of int
        Window lengths (>= 1); 1 is measured by antithetic pairs, the others by
        ``draws`` independent instances.
    sharing : str
    lam : float
    distributions : sequence of str
        Must include ``"normal"`` (the reference of ``excess``).
    pairs, draws : int
    seed : int
    workers : int, optional
        Threads of :func:`train`.
    progress : bool

    Returns
    -------
    DriftCheck
    """
    tick = time.perf_counter()
    W0 = np.array(W0, dtype=np.float64)
    if W0.ndim != 2:
        raise invalid("W0.shape", W0.shape, "must be (n, m)")
    sigma = check_float("sigma", sigma, positive=True)
    distributions = tuple(_choice("distribution", d, DISTRIBUTIONS) for d in distributions)
    if "normal" not in distributions:
        raise invalid("distributions", distributions, "must include 'normal' (the reference)")
    wins = np.unique([check_int("window", w, 1) for w in windows]).astype(np.int64)
    pairs, draws = check_int("pairs", pairs, 2), check_int("draws", draws, 2)
    base = NoiseModel(W0.shape[0], W0.shape[1], sigma, sharing=sharing, eta=eta, lam=lam,
                      instances=draws, seed=seed)
    D, Kw = len(distributions), wins.size
    f0 = float(np.mean(_rows(W0)[1]))
    change, se = np.full((D, Kw), np.nan), np.full((D, Kw), np.nan)
    samples = {}
    if wins[0] == 1:
        one = _one_step(W0, sigma, eta, lam, sharing, distributions, pairs, seed)
        change[:, 0], se[:, 0] = one.mean(axis=1), one.std(axis=1, ddof=1) / math.sqrt(pairs)
        samples[1] = one
    long = wins[wins > 1]
    for d, dist in enumerate(distributions):
        if long.size:
            run = train(base.replace(distribution=dist), int(long[-1]), record_at=long, W0=W0,
                        workers=workers, progress=progress)
            fbar = run.mean_l4()[:, np.searchsorted(run.steps, long)]  # (draws, len(long))
            change[d, wins > 1] = (fbar.mean(axis=0) - f0) / long
            se[d, wins > 1] = fbar.std(axis=0, ddof=1) / math.sqrt(draws) / long
    ref = distributions.index("normal")
    excess = change - change[ref]
    excess_se = np.sqrt(se**2 + se[ref] ** 2)
    excess_se[ref] = 0.0
    if 1 in samples:
        diff = samples[1] - samples[1][ref]
        excess_se[:, 0] = diff.std(axis=1, ddof=1) / math.sqrt(pairs)
    exact = np.full(D, np.nan)
    if W0.shape[0] == 1 and lam == 0:
        exact = np.array([one_step_exact(W0[0], sigma, eta, d) for d in distributions])
    per = lambda fn: np.array([float(np.mean(fn(W0, sigma, eta, d))) for d in distributions])  # noqa: E731
    return DriftCheck(W0, sigma, float(eta), float(lam), sharing, distributions,
                      np.array([EXCESS_KURTOSIS[d] for d in distributions]), f0, wins, change, se,
                      excess, excess_se, per(implicit_regulariser), per(regulariser_drift),
                      per(one_step_expansion), exact, pairs, draws, seed, time.perf_counter() - tick)


def main(argv=None):
    """``python -m flowsim.noise``: Figures 4, 5, 7 and the kurtosis experiment.

    Argument parsing and files live in ``flowsim._noise_cli``; returns the exit status.
    """
    from ._noise_cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
