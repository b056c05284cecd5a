"""Discrete training of the model with SGD, SGD with momentum, Adam and AdamW.

The paper's Figure 3 was made by training with AdamW, not by integrating the gradient
flow. :func:`train` trains many instances of the same model in one call with the update
formulas of ``torch.optim`` on the loss whose gradient flow is the model's flow,
``L = (c/4) [Σ_i (1-|W_i|²)² + Σ_{i≠j} ReLU(W_i·W_j)²] + λ ‖W‖₁`` (switched-off forces
drop their term). With ``c = 4`` (the default of the experiment commands) this is the
summed squared error of ``y = ReLU(W Wᵀ e_i)`` over the n basis inputs plus ``λ‖W‖₁``,
the published loss. Its gradient is ``g = -F(W) + λ sign(W)``, exact, with the L1
subgradient ``sign(0) = 0``; F, the smooth force, is computed by the dense engine
(two BLAS products), the update by fused numba kernels (``_optim_kernels.py``).

Update formulas (step t = 1, 2, ...; ``wd`` the weight decay), as in PyTorch::

    sgd        g ← g + wd w;  w ← w - lr g
    momentum   g ← g + wd w;  b ← g (t = 1) or mu b + (1 - dampening) g;
               g ← g + mu b (nesterov) or b;  w ← w - lr g
    adam       g ← g + wd w (L2 in the gradient)
    adamw      w ← w (1 - lr wd) (decoupled decay), then as adam without the L2 term:
               m ← lerp(m, g, 1 - β1);  v ← β2 v + (1 - β2) g²
               w ← w - lr/(1 - β1^t) · m / (√v / √(1 - β2^t) + eps)

Defaults are PyTorch's: lr 1e-3; momentum 0.9 (for "momentum"), dampening 0; betas
(0.9, 0.999), eps 1e-8; weight decay 0, except 0.01 for AdamW. AMSGrad and
``maximize`` are not offered.

``Optimizer("sgd", proximal=True)`` leaves the L1 term out of the gradient and applies it
exactly after the step, ``w ← S_{lr λ}(w - lr g)`` (soft-threshold): proximal gradient
descent, whose zeros are exact zeros. At ``lr = dt`` it is the ``euler`` method of
:func:`flowsim.simulate` (with ``c = 4`` the flow of the loss above) and gives the same
numbers bit for bit when the model has interference and n > 1 (both run the dense
engine's force on the same live columns) and dt is a power of two; simulate's steps lie
on the grid k·dt, so for another dt its step sizes (k+1)·dt - k·dt differ from dt in
the last bits and the two agree to rounding.

Instances are independent: they run in lock-step chunks, split over ``workers`` threads
(each with its own engine buffers; BLAS is limited to one thread per product by
default, so the numbers do not depend on ``workers``).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import sys
import time
import warnings

import numpy as np

from . import _optim_kernels as OK
from ._engines import DenseEngine
from ._runtime import Interrupt
from ._version import __version__
from .errors import DivergenceError, FlowsimWarning, check_float, check_int, invalid
from .model import Model
from .provenance import weights_digest
from .trajectory import STAT_NAMES, RunStats, Trajectory, _jsonable, row_stats

__all__ = ["OPTIMIZERS", "Optimizer", "Training", "train", "default_save_steps",
           "reference_step", "reference_train"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
#: Number of log-spaced save steps when ``save_at`` is not given.
DEFAULT_SAVES = 100
_ADAM = ("adam", "adamw")


# --------------------------------------------------------------------------- optimizer

@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer and its hyper-parameters (PyTorch's meaning and defaults).

    Parameters
    ----------
    name : {"sgd", "momentum", "adam", "adamw"}
    lr : float
        Learning rate (> 0; default 1e-3).
    momentum : float, optional
        "momentum" only: in (0, 1), default 0.9 ("sgd" has 0).
    dampening : float, optional
        "momentum" only: in [0, 1], default 0.
    nesterov : bool, optional
        "momentum" only: Nesterov momentum (needs dampening 0), default False.
    betas : (float, float), optional
        "adam"/"adamw" only: each in [0, 1), default (0.9, 0.999).
    eps : float, optional
        "adam"/"adamw" only: >= 0, default 1e-8.
    weight_decay : float, optional
        >= 0; default 0, for "adamw" 0.01 (decoupled; L2 in the gradient otherwise).
    proximal : bool, optional
        "sgd" only: apply the L1 term by soft-thresholding after the step (default False).

    An option the optimizer does not use is an error (one line naming it).
    """

    name: str
    lr: float = 1e-3
    momentum: float | None = None
    dampening: float | None = None
    nesterov: bool | None = None
    betas: tuple | None = None
    eps: float | None = None
    weight_decay: float | None = None
    proximal: bool | None = None

    def __post_init__(self):
        name = self.name
        if name not in OPTIMIZERS:
            raise invalid("optimizer", name, "must be one of " + ", ".join(OPTIMIZERS))
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("lr", check_float("lr", self.lr, positive=True))
        uses = {"momentum": name in ("sgd", "momentum"), "dampening": name == "momentum",
                "nesterov": name == "momentum", "betas": name in _ADAM, "eps": name in _ADAM,
                "proximal": name == "sgd"}
        for field, used in uses.items():
            value = getattr(self, field)
            if not used and value is not None:
                users = {"momentum": "momentum", "dampening": "momentum", "nesterov": "momentum",
                         "betas": "adam and adamw", "eps": "adam and adamw", "proximal": "sgd"}[field]
                raise invalid(field, value, f"is used only by {users}; leave it None")
        wd = self.weight_decay if self.weight_decay is not None else (0.01 if name == "adamw" else 0.0)
        set_("weight_decay", check_float("weight_decay", wd, minimum=0.0))
        if name == "sgd":
            if self.momentum not in (None, 0, 0.0):
                raise invalid("momentum", self.momentum, 'must be 0 with "sgd" (use "momentum")')
            set_("momentum", 0.0)
            set_("proximal", _flag("proximal", self.proximal, False))
        elif name == "momentum":
            mu = check_float("momentum", 0.9 if self.momentum is None else self.momentum)
            if not 0.0 < mu < 1.0:
                raise invalid("momentum", self.momentum, "must be a finite number in (0, 1)")
            set_("momentum", mu)
            damp = check_float("dampening", 0.0 if self.dampening is None else self.dampening, minimum=0.0)
            if damp > 1.0:
                raise invalid("dampening", self.dampening, "must be a finite number in [0, 1]")
            set_("dampening", damp)
            set_("nesterov", _flag("nesterov", self.nesterov, False))
            if self.nesterov and damp != 0.0:
                raise invalid("nesterov", True, "needs dampening=0 (as in PyTorch)")
        else:
            set_("betas", _betas(self.betas))
            set_("eps", check_float("eps", 1e-8 if self.eps is None else self.eps, minimum=0.0))

    def as_dict(self) -> dict:
        """The hyper-parameters as a plain dict (None where the optimizer has none)."""
        d = dataclasses.asdict(self)
        d["betas"] = None if self.betas is None else list(self.betas)
        return d

    def replace(self, **changes) -> "Optimizer":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _flag(name, value, default):
    if value is None:
        return default
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(name, value, "must be True or False")
    return bool(value)


def _betas(betas):
    allowed = "must be two finite numbers, each in [0, 1)"
    if betas is None:
        return (0.9, 0.999)
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise invalid("betas", betas, allowed) from None
    if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in (b1, b2)):
        raise invalid("betas", tuple(betas), allowed)
    return (b1, b2)


# --------------------------------------------------------------------------- result

@dataclasses.dataclass(frozen=True, eq=False)
class Training:
    """The result of :func:`train`: I instances of one model trained by one optimizer.

    Attributes
    ----------
    model : Model
        Parameters shared by the instances (its ``seed`` is that of instance 0 when
        the instances come from seeds).
    optimizer : Optimizer
    seeds : tuple of int or None
        Seed of each instance's initial weights; None when W0 was given.
    step : ndarray, shape (T,), int64
        Steps at which statistics were saved (0 = the initial weights).
    l1, l2sq, l4, relvar, loss : ndarray, shape (T, I, n), float64
        Per-row statistics of each instance at each saved step (see
        :func:`flowsim.row_stats`; ``loss`` is the row's share of the loss above).
    nnz : ndarray, shape (T, I, n), int64
    W : ndarray, shape (I, n, m)
        Final weights.
    stats : RunStats
        ``t_end`` = steps taken × lr, ``steps`` = steps taken (each instance),
        ``force_evals`` = steps × I; wall and compile seconds.
    snapshots : ndarray, shape (T, I, n, m), or None
    options : dict
        Where W0 came from, workers, BLAS threads.
    """

    model: Model
    optimizer: Optimizer
    seeds: tuple | None
    step: np.ndarray
    l1: np.ndarray
    nnz: np.ndarray
    l2sq: np.ndarray
    l4: np.ndarray
    relvar: np.ndarray
    loss: np.ndarray
    W: np.ndarray
    stats: RunStats
    snapshots: np.ndarray | None = None
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def t(self) -> np.ndarray:
        """Training time ``step × lr`` (the paper's t), shape (T,)."""
        return self.step * self.optimizer.lr

    @property
    def instances(self) -> int:
        return self.W.shape[0]

    def trajectory(self, i: int) -> Trajectory:
        """Instance ``i`` as a :class:`flowsim.Trajectory` (t = step × lr, method = the
        optimizer's name, dt = lr), for the metrics, plots and io made for simulate."""
        i = check_int("i", i, 0)
        if i >= self.instances:
            raise invalid("i", i, f"must be < the number of instances {self.instances}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlowsimWarning)
            model = self.model if self.seeds is None else self.model.replace(seed=self.seeds[i])
        cols = {name: self.stat(name)[:, i] for name in STAT_NAMES}
        snaps = None if self.snapshots is None else self.snapshots[:, i]
        options = {**self.options, "optimizer": self.optimizer.as_dict(), "instance": i}
        return Trajectory(model=model, method=self.optimizer.name, dt=self.optimizer.lr, t=self.t,
                          W=self.W[i], stats=self.stats, snapshot_t=None if snaps is None else self.t,
                          snapshots=snaps, options=options, **cols)

    def stat(self, name: str) -> np.ndarray:
        """Per-row statistic ``name`` (one of ``STAT_NAMES``), shape (T, I, n)."""
        return getattr(self, name)

    def metadata(self) -> dict:
        """Everything that produced this result, JSON-ready (NaN as None)."""
        from .provenance import FORMAT_VERSION, environment

        return _jsonable({
            "format_version": FORMAT_VERSION, "flowsim_version": __version__,
            "environment": environment(), "model": self.model.as_dict(),
            "optimizer": self.optimizer.as_dict(), "seeds": self.seeds,
            "steps": int(self.stats.steps), "saved_steps": int(self.step.size),
            "options": self.options, "stats": dataclasses.asdict(self.stats),
        })


# --------------------------------------------------------------------------- training

def default_save_steps(steps, count=DEFAULT_SAVES):
    """0, about ``count`` log-spaced steps, and ``steps``. Returns int64 (T,)."""
    ks = np.round(np.geomspace(1, steps, count)).astype(np.int64)
    return np.unique(np.concatenate([[0], ks, [steps]]))


def train(model, optimizer, steps, *, seeds=None, W0=None, save_at=None, snapshots=False,
          workers=1, blas_threads=1, progress=False):
    """Train instances of ``model`` with ``optimizer`` for ``steps`` steps.

    Parameters
    ----------
    model : Model
        n, m, λ (``lam``: the L1 strength), c, force switches, init std. The gradient
        is that of the loss in the module docstring (use ``c = 4`` for the published one).
    optimizer : Optimizer or str
        A name means the optimizer with PyTorch's defaults.
    steps : int
        Number of steps (>= 1).
    seeds : sequence of int, optional
        One instance per seed, with initial weights ``model.replace(seed=s).initial_weights()``
        (the W0 of :func:`flowsim.simulate` for that seed). Default: ``[model.seed]``.
    W0 : array_like, shape (I, n, m) or (n, m), optional
        Initial weights instead of seeds.
    save_at : sequence of int, optional
        Steps in [0, steps] at which to record statistics (0 and ``steps`` are always
        added); default :func:`default_save_steps`.
    snapshots : bool
        Also keep the weights at every saved step (memory T·I·n·m).
    workers : int
        Threads over instances (>= 1; at most I are used).
    blas_threads : int or None
        BLAS threads per product during the call (default 1; None leaves the setting as
        it is, and then the numbers may depend on ``workers``).
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    Training
        On Ctrl-C the run ends at a chunk boundary with ``stats.status ==
        "interrupted"``, keeping every instance at the same step.

    Raises
    ------
    FlowsimInputError
        For any invalid argument (one line naming it).
    DivergenceError
        When an instance's weights become non-finite; its ``trajectory`` is the
        Training up to the last saved step (with every instance's last finite weights).
    """
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    opt = Optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    if not isinstance(opt, Optimizer):
        raise invalid("optimizer", type(optimizer).__name__, "must be a flowsim.optim.Optimizer or a name")
    steps = check_int("steps", steps, 1)
    workers = check_int("workers", workers, 1)
    if blas_threads is not None:
        blas_threads = check_int("blas_threads", blas_threads, 1)
    W0s, seeds, source = _initial_weights(model, seeds, W0)
    save = _save_steps(save_at, steps)
    from threadpoolctl import threadpool_limits

    limit = threadpool_limits(blas_threads, user_api="blas") if blas_threads else contextlib.nullcontext()
    with limit:
        run = _Run(model, opt, W0s, save, snapshots, min(workers, len(W0s)), progress)
        stats = run.go()
    options = {"W0": source, "workers": run.workers, "blas_threads": blas_threads}
    result = run.result(model if seeds is None else _with_seed(model, seeds[0]), opt, seeds, stats, options)
    if run.bad is not None:
        i, k = run.bad
        who = f"instance {i}" + ("" if seeds is None else f" (seed {seeds[i]})")
        raise DivergenceError(
            f"weights became non-finite at step {k} (t={k * opt.lr:.6g}) of {who} with "
            f"optimizer={opt.name}, lr={opt.lr:g}; the last finite state is kept. Try a smaller "
            f"learning rate, e.g. lr={opt.lr / 10:g}.", t=(k - 1) * opt.lr, step=k, trajectory=result)
    if stats.status == "interrupted":
        warnings.warn(f"interrupted at step {stats.steps}; returning the training up to there",
                      FlowsimWarning, stacklevel=2)
    return result


def _with_seed(model, seed):
    if model.seed == seed:
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowsimWarning)
        return model.replace(seed=seed)


def _initial_weights(model, seeds, W0):
    """(I, n, m) float64 initial weights, the seeds (or None) and their provenance."""
    if seeds is not None and W0 is not None:
        raise invalid("seeds", seeds, "must be None when W0 is given")
    if W0 is None:
        seeds = [model.seed] if seeds is None else seeds
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__") or len(seeds) == 0:
            raise invalid("seeds", seeds, "must be a non-empty sequence of integers >= 0")
        seeds = tuple(check_int("seeds", s, 0) for s in seeds)
        W = np.stack([_with_seed(model, s).initial_weights() for s in seeds])
        return W, seeds, {"source": "seeds", "seeds": list(seeds)}
    try:
        A = np.array(W0, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise invalid("W0", type(W0).__name__, "must be a real array") from None
    shape = A.shape
    if A.ndim == 2:
        A = A[None]
    if A.ndim != 3 or A.shape[1:] != (model.n, model.m) or A.shape[0] < 1:
        raise invalid("W0.shape", shape, f"must be (I, n, m) or (n, m) with (n, m) = ({model.n}, {model.m})")
    W = np.stack([model.check_weights(a) for a in A])
    return W, None, {"source": "given", "sha256": [weights_digest(a) for a in W]}


def _save_steps(save_at, steps):
    if save_at is None:
        return default_save_steps(steps)
    try:
        ks = np.asarray(save_at, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise invalid("save_at", save_at, "must be a sequence of steps") from None
    if ks.size and (not np.all(np.isfinite(ks)) or np.any(ks != np.round(ks)) or ks.min() < 0 or ks.max() > steps):
        raise invalid("save_at", f"<{ks.size} values in [{ks.min():g}, {ks.max():g}]>",
                      f"must be integer steps within [0, steps={steps}]")
    return np.unique(np.concatenate([[0], ks.astype(np.int64), [steps]]))


class _Instance:
    """One instance: weights (on their live columns when those can only shrink), state."""

    def __init__(self, W0, opt, model):
        self.W = W0
        # plain SGD keeps an all-zero column at zero (the force there is 0), so it runs
        # on the live columns only, exactly as the dense engine does
        self.compact = opt.name == "sgd"
        self.cols = np.flatnonzero(np.any(W0 != 0.0, axis=0)) if self.compact else None
        self.Wc = np.ascontiguousarray(W0[:, self.cols]) if self.compact else W0.copy()
        self.Vc = np.empty_like(self.Wc)
        self.F = np.empty_like(self.Wc)
        self.B = np.zeros_like(W0) if opt.name == "momentum" else None
        self.M = np.zeros_like(W0) if opt.name in _ADAM else None
        self.S = np.zeros_like(W0) if opt.name in _ADAM else None
        self.lam = model.l1_strength
        self.bad = None  # step at which a value became non-finite

    def sync(self):
        """Write the current weights into ``W`` (n, m)."""
        if self.compact:
            self.W[:, self.cols] = self.Wc
        else:
            self.W[...] = self.Wc
        return self.W

    def advance(self, engine, opt, k0, k1):
        """Steps k0+1 .. k1 (1-based). Stops before a step that gives a non-finite value."""
        for k in range(k0 + 1, k1 + 1):
            engine._allocate(self.Wc.shape[1])  # no-op unless the live columns changed
            with np.errstate(over="ignore", invalid="ignore"):  # divergence: reported by the flag
                engine.smooth(self.Wc, self.F)
                ok = self._update(opt, k)
            if not ok:
                self.bad = k
                return
            self.Wc, self.Vc = self.Vc, self.Wc
            if self.compact and OK.dead_columns(self.Wc):
                mask = np.any(self.Wc != 0.0, axis=0)
                self.W[:, self.cols] = self.Wc
                self.cols = self.cols[mask]
                self.Wc = np.ascontiguousarray(self.Wc[:, mask])
                self.Vc, self.F = np.empty_like(self.Wc), np.empty_like(self.Wc)

    def _update(self, opt, k):
        if opt.name in _ADAM:
            b1, b2 = opt.betas
            return OK.adam_update(self.Wc, self.F, self.lam, opt.lr, b1, b2, opt.eps, opt.weight_decay,
                                  opt.name == "adamw", opt.lr / (1.0 - b1**k), math.sqrt(1.0 - b2**k),
                                  self.M, self.S, self.Vc)
        B = self.B if self.B is not None else self.Vc  # unused without momentum
        return OK.sgd_update(self.Wc, self.F, self.lam, opt.lr, opt.weight_decay, opt.momentum,
                             opt.dampening or 0.0, bool(opt.nesterov), k == 1, bool(opt.proximal), B, self.Vc)


class _Run:
    """Lock-step chunks of steps over all instances, statistics at the save steps."""

    def __init__(self, model, opt, W0s, save, snapshots, workers, progress):
        self.model, self.opt, self.save = model, opt, save
        self.instances = [_Instance(W0, opt, model) for W0 in W0s]
        self.workers = workers
        self.groups = [self.instances[w::workers] for w in range(workers)]
        self.snapshots = [] if snapshots else None
        self.rows = {name: [] for name in STAT_NAMES}
        self.saved = []
        self.progress = progress
        self.bad = None
        self.k = 0

    def go(self):
        interrupt = Interrupt()
        status, comp, wall0 = "completed", 0.0, time.perf_counter()
        bar = _bar(self.progress, self.opt.name, int(self.save[-1]))
        pool = cf.ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            with interrupt.guard():
                comp = warm_up(self.model, self.opt)
                wall0 = time.perf_counter()
                self._record()
                status = self._march(pool, interrupt, bar)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            if bar is not None:
                bar.close()
        if status == "interrupted" and self.saved[-1] != self.k:
            self._record()
        wall = time.perf_counter() - wall0
        message = {"completed": f"{self.k} steps", "interrupted": "stopped by Ctrl-C",
                   "diverged": "non-finite weights"}[status]
        return RunStats(status, self.k * self.opt.lr, self.k, self.k * len(self.instances), wall, comp,
                        message, h_min=self.opt.lr if self.k else math.nan,
                        h_max=self.opt.lr if self.k else math.nan)

    def _march(self, pool, interrupt, bar):
        engines = [DenseEngine(np.empty((self.model.n, self.model.m)), self.model, "euler")
                   for _ in self.groups]
        chunk, targets = 1, iter(self.save[1:])
        target = next(targets)
        while True:
            k1 = min(int(target), self.k + chunk)
            tick = time.perf_counter()
            jobs = [(g, e) for g, e in zip(self.groups, engines)]
            if pool is None:
                for g, e in jobs:
                    self._advance(g, e, self.k, k1)
            else:
                for f in [pool.submit(self._advance, g, e, self.k, k1) for g, e in jobs]:
                    f.result()
            took = time.perf_counter() - tick
            chunk = int(min(max(chunk * min(0.2 / max(took, 1e-4), 4.0), 1), 1 << 30))
            bad = [(i, inst.bad) for i, inst in enumerate(self.instances) if inst.bad is not None]
            if bad:
                self.bad = min(bad, key=lambda b: (b[1], b[0]))
                self.k = self.bad[1] - 1
                return "diverged"
            self.k = k1
            if bar is not None:
                bar.update(k1 - bar.n)
            if k1 == target:
                self._record()
                target = next(targets, None)
                if target is None:
                    return "completed"
            if interrupt.flag:
                return "interrupted"

    def _advance(self, group, engine, k0, k1):
        for inst in group:
            inst.advance(engine, self.opt, k0, k1)

    def _record(self):
        self.saved.append(self.k)
        per = [row_stats(inst.sync(), self.model) for inst in self.instances]
        for name in STAT_NAMES:
            self.rows[name].append(np.stack([p[name] for p in per]))
        if self.snapshots is not None:
            self.snapshots.append(np.stack([inst.W.copy() for inst in self.instances]))

    def result(self, model, opt, seeds, stats, options):
        cols = {name: np.array(v, dtype=np.int64 if name == "nnz" else np.float64)
                for name, v in self.rows.items()}
        W = np.stack([inst.sync().copy() for inst in self.instances])
        snaps = np.array(self.snapshots) if self.snapshots is not None else None
        return Training(model=model, optimizer=opt, seeds=seeds, step=np.array(self.saved, dtype=np.int64),
                        W=W, stats=stats, snapshots=snaps, options=options, **cols)


def _bar(enabled, name, total):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"flowsim {name}", unit="step", file=sys.stderr, leave=True)


def warm_up(model, opt):
    """Compile (or load from numba's cache) the kernels :func:`train` uses, on a 2×2
    problem. Returns the seconds it took (reported as compile time)."""
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = model.replace(n=2, m=2, init_std=0.5)
        W = tiny.initial_weights()
        F, V, S = np.empty_like(W), np.empty_like(W), np.zeros_like(W)
        DenseEngine(W, tiny, "euler").smooth(W, F)
        if opt.name in _ADAM:
            OK.adam_update(W, F, 0.1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, 1e-2, 0.03, S, S.copy(), V)
        else:
            OK.sgd_update(W, F, 0.1, 1e-3, 0.0, 0.5, 0.0, False, True, False, S, V)
        OK.dead_columns(V)
    return time.perf_counter() - tick


# --------------------------------------------------------------------------- reference

def reference_step(W, state, model, opt, k):
    """One optimizer step in plain NumPy: the definition the kernels must match.

    Parameters
    ----------
    W : ndarray, shape (n, m)
    state : dict
        Optimizer state, updated in place (empty before the first step): ``"b"``
        (momentum buffer) or ``"m"``, ``"v"`` (Adam moments).
    model : Model
    opt : Optimizer
    k : int
        Step number, 1-based.

    Returns
    -------
    ndarray, shape (n, m)
        The new weights.
    """
    from .forces import smooth_force, soft_threshold

    W = np.asarray(W, dtype=np.float64)
    lam = model.l1_strength
    g = -smooth_force(W, model)
    if not opt.proximal:
        g = g + lam * np.sign(W)
    wd = opt.weight_decay
    if opt.name in _ADAM:
        b1, b2 = opt.betas
        if opt.name == "adamw":
            W = W * (1.0 - opt.lr * wd)
        elif wd:
            g = g + wd * np.asarray(W)
        m = state.get("m", np.zeros_like(W))
        v = state.get("v", np.zeros_like(W))
        state["m"] = m = b1 * m + (1.0 - b1) * g
        state["v"] = v = b2 * v + (1.0 - b2) * g * g
        m_hat = m / (1.0 - b1**k)
        v_hat = v / (1.0 - b2**k)
        return W - opt.lr * m_hat / (np.sqrt(v_hat) + opt.eps)
    if wd:
        g = g + wd * W
    if opt.momentum:
        b = g if k == 1 else opt.momentum * state["b"] + (1.0 - opt.dampening) * g
        state["b"] = b
        g = g + opt.momentum * b if opt.nesterov else b
    V = W - opt.lr * g
    return soft_threshold(V, opt.lr * lam) if opt.proximal else V


def reference_train(model, opt, steps, W0):
    """``steps`` steps of :func:`reference_step` from W0 (n, m). Returns ndarray (n, m)."""
    W = np.array(W0, dtype=np.float64)
    state = {}
    for k in range(1, steps + 1):
        W = reference_step(W, state, model, opt, k)
    return W
