"""``simulate``: the one entry point, and the table of methods behind it.

Methods
-------
``euler``, ``heun``, ``rk4``
    Fixed-step numba steppers (see ``forces.py`` for their exact definition, including
    the exact treatment of the L1 sign force). Without interference (or with n = 1)
    each row runs in O(nonzeros) per step; with interference the dense phase costs two
    BLAS products per force evaluation, restricted to columns that still hold a nonzero
    weight (an all-zero column feels no force, so it stays zero exactly).
``RK45``, ``RK23``, ``DOP853``, ``Radau``, ``BDF``, ``LSODA``
    ``scipy.integrate.solve_ivp`` on the flattened active weights. With L1 on, the sign
    pattern is frozen over a segment and a terminal event stops the solver when an
    active weight reaches 0; that weight is pinned at exactly 0, zeros whose force
    exceeds λ are released, and the solver restarts. Each restart costs a solver
    start-up plus O(n·m) work, so a run in which all m weights of a row die costs
    O(m²): use the numba steppers or ``reduced`` at large m. The implicit methods
    (Radau, BDF, LSODA) also build a finite-difference Jacobian of size (n·m)².
``reduced``
    Exact interference-free solution (``reduced.py``): a 2-D ODE per row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
import warnings

import numpy as np

from . import _kernels as K
from .errors import DivergenceError, FlowsimWarning, check_float, check_int, invalid
from .forces import TABLEAUX
from .model import Model
from .trajectory import RunStats, Trajectory, finish_stats, row_stats

EXPLICIT_METHODS = ("euler", "heun", "rk4")
IVP_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
METHODS = EXPLICIT_METHODS + IVP_METHODS + ("reduced",)

#: Number of log-spaced save times used when ``save_at`` is not given.
DEFAULT_SAVES = 200


@dataclasses.dataclass(frozen=True)
class Stop:
    """Early-stopping rules (any that is set ends the run when met).

    Parameters
    ----------
    max_nnz : int or None
        Stop as soon as every row has at most this many nonzero weights.
    tol : float or None
        Stop when, over the last ``window`` of time, no row's support changed and
        ``max |ΔW| <= tol * window`` (weights move slower than ``tol`` per unit time).
    window : float
        Length of the convergence window (time units).
    """

    max_nnz: int | None = None
    tol: float | None = None
    window: float = 10.0

    def __post_init__(self):
        if self.max_nnz is not None:
            object.__setattr__(self, "max_nnz", check_int("stop.max_nnz", self.max_nnz, 0))
        object.__setattr__(self, "tol", check_float("stop.tol", self.tol, positive=True, allow_none=True))
        object.__setattr__(self, "window", check_float("stop.window", self.window, positive=True))


def default_save_times(t_max, dt=None, count=DEFAULT_SAVES):
    """0, then ``count`` log-spaced times up to ``t_max`` (snapped to the dt grid).

    Returns
    -------
    ndarray, shape (T,)
    """
    first = dt if dt is not None else t_max * 1e-6
    first = min(first, t_max)
    ts = np.geomspace(first, t_max, count)
    if dt is not None:
        ts = np.round(ts / dt) * dt
    ts = np.unique(np.concatenate([[0.0], ts[(ts > 0) & (ts < t_max)], [t_max]]))
    return ts


def simulate(
    model,
    t_max,
    *,
    method="rk4",
    dt=None,
    W0=None,
    save_at=None,
    snapshots=False,
    stop=None,
    rtol=None,
    atol=None,
    sparse_below=0.15,
    progress=False,
):
    """Integrate the gradient flow of ``model`` from t = 0 to ``t_max``.

    Parameters
    ----------
    model : Model
    t_max : float
        Final time (> 0).
    method : str
        One of :data:`METHODS`.
    dt : float, optional
        Step of the explicit methods (default ``0.1 / c``); first step of the
        ``solve_ivp`` methods; ignored by ``reduced``.
    W0 : array_like, shape (n, m), optional
        Initial weights; default ``model.initial_weights()``.
    save_at : array_like, shape (T,), optional
        Times at which to record per-row statistics; 0 and ``t_max`` are always added.
        Default: 0 and 200 log-spaced times (on the dt grid for explicit methods).
        Explicit methods shorten the step that straddles a save time off the grid.
    snapshots : bool
        Also keep a copy of W at every save time (memory T·n·m).
    stop : Stop, optional
        Early-stopping rules.
    rtol, atol : float, optional
        Tolerances of the ``solve_ivp`` methods (default 1e-8, 1e-10) and of
        ``reduced`` (default 1e-10, 1e-13).
    sparse_below : float
        Explicit methods with interference and L1: switch to the sparse working-set
        engine once at most this fraction of weights is nonzero (0 keeps the dense
        engine throughout; both compute the same steps). The sparse engine's cost
        relative to the dense one scales like the density squared; 0.15 is the
        measured crossover at n = 256, m = 2048.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Trajectory
        On Ctrl-C the run ends cleanly with ``stats.status == "interrupted"`` and keeps
        everything computed so far.

    Raises
    ------
    FlowsimInputError
        For any invalid argument (one-line message naming it).
    DivergenceError
        When the weights become non-finite; it carries the partial trajectory.
    """
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    t_max = check_float("t_max", t_max, positive=True)
    if method not in METHODS:
        raise invalid("method", method, "must be one of " + ", ".join(METHODS))
    if dt is not None or method in EXPLICIT_METHODS:
        dt = check_float("dt", 0.1 / model.c if dt is None else dt, positive=True)
    if method == "reduced":
        dt = None
    if stop is not None and not isinstance(stop, Stop):
        raise invalid("stop", type(stop).__name__, "must be a flowsim.Stop or None")
    exact = method == "reduced"
    rtol = check_float("rtol", (1e-10 if exact else 1e-8) if rtol is None else rtol, positive=True)
    atol = check_float("atol", (1e-13 if exact else 1e-10) if atol is None else atol, positive=True)
    W = model.initial_weights() if W0 is None else model.check_weights(W0)
    times = _save_times(save_at, t_max, dt if method in EXPLICIT_METHODS else None)
    if method == "reduced":
        if model.interference and model.n > 1:
            raise invalid("method", method, "needs interference=False (the reduced solver is exact only without interference)")
        from .reduced import solve_reduced

        reduced_model = model.replace(interference=False) if model.interference else model
        bar = _progress_bar(progress, t_max, method)
        try:
            traj = solve_reduced(
                reduced_model, W, times, rtol=rtol, atol=atol,
                max_nnz=None if stop is None else stop.max_nnz, snapshots=snapshots,
                progress=None if bar is None else (lambda t: bar.update(min(t, t_max) - bar.n)),
            )
        finally:
            if bar is not None:
                bar.close()
        return dataclasses.replace(traj, model=model) if reduced_model is not model else traj
    run = _run_explicit if method in EXPLICIT_METHODS else _run_ivp
    options = dict(rtol=rtol, atol=atol) if method in IVP_METHODS else {}
    if method in EXPLICIT_METHODS and model.interference and model.n > 1:
        options["sparse_below"] = check_float("sparse_below", sparse_below, minimum=0.0)
    if stop is not None:
        options["stop"] = dataclasses.asdict(stop)
    return run(model, W, times, method, dt, stop, snapshots, progress, options)


def force(W, model):
    """Total force on W computed by the numba/BLAS kernels (``sign(0) = 0``).

    The fast counterpart of :func:`flowsim.forces.total_force`.

    Parameters
    ----------
    W : array_like, shape (n, m)
    model : Model

    Returns
    -------
    ndarray, shape (n, m)
    """
    W = model.check_weights(W)
    engine = _DenseEngine(W, model, "euler")
    engine._buffers(W)
    F = np.empty_like(W)
    engine.smooth(W, F)
    if model.l1:
        K.add_sign_force(W, model.lam, F)
    return F


def _save_times(save_at, t_max, dt):
    if save_at is None:
        return default_save_times(t_max, dt)
    try:
        ts = np.asarray(save_at, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise invalid("save_at", save_at, "must be an array of times") from None
    if ts.size and (not np.all(np.isfinite(ts)) or ts.min() < 0 or ts.max() > t_max):
        raise invalid("save_at", f"<{ts.size} times in [{ts.min():g}, {ts.max():g}]>", f"times must be finite and within [0, t_max={t_max:g}]")
    return np.unique(np.concatenate([[0.0], ts, [t_max]]))


# ------------------------------------------------------------------ bookkeeping


class _Recorder:
    """Collects per-row statistics (and snapshots) at save times."""

    def __init__(self, model, snapshots):
        self.model = model
        self.t = []
        self.rows = []
        self.snapshots = [] if snapshots else None

    def save(self, t, stats, W=None):
        self.t.append(float(t))
        self.rows.append(stats)
        if self.snapshots is not None:
            self.snapshots.append(np.array(W, copy=True))

    def trajectory(self, method, dt, W, stats, options):
        n = self.model.n
        cols = {}
        for name in ("l1", "nnz", "l2sq", "l4", "relvar", "loss"):
            dtype = np.int64 if name == "nnz" else np.float64
            cols[name] = (np.array([r[name] for r in self.rows], dtype=dtype).reshape(len(self.rows), n))
        snaps = np.array(self.snapshots) if self.snapshots else None
        return Trajectory(
            model=self.model, method=method, dt=dt, t=np.array(self.t), W=W, stats=stats,
            snapshot_t=np.array(self.t) if snaps is not None else None, snapshots=snaps,
            options=options, **cols,
        )


class _Interrupt:
    """Turns the first Ctrl-C into a flag the run loop checks between chunks."""

    def __init__(self):
        self.flag = False

    @contextlib.contextmanager
    def guard(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.flag:  # second Ctrl-C: the user insists
                raise KeyboardInterrupt
            self.flag = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _progress_bar(enabled, t_max, method):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=t_max, desc=f"flowsim {method}", unit="t", leave=False,
                bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}]")


def _warm_up(engine_type, model, method, **changes):
    """Compile (or load from numba's cache) an engine's kernels on a 2×2 problem.

    Returns the seconds it took, reported as compile time, so that run times are warm.
    """
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = model.replace(n=2, m=2, init_std=0.5, **changes)
        W = tiny.initial_weights()
        if engine_type is _DenseEngine:  # dense phase, then the sparse hand-over
            engines = [_DenseEngine(W.copy(), tiny, method), _DenseEngine(W, tiny, method, 1.0)]
        else:
            engines = [engine_type(W, tiny, method)]
        out = np.zeros(5)
        for engine in engines:
            engine.run(0.0, 1e-3, 1e-3, 0, 1, -1, out)
    return time.perf_counter() - tick


def _divergence(model, method, dt, t, step, recorder, W, options, wall, comp):
    stats = RunStats("diverged", t, step, 0, wall, comp, "non-finite weights")
    traj = recorder.trajectory(method, dt, W, stats, options)
    hint = f"dt={dt / 10:g}" if dt else "tighter rtol/atol"
    return DivergenceError(
        f"weights became non-finite after t={t:.6g} (step {step}) with method={method}"
        f"{'' if dt is None else f', dt={dt:g}'}; the last finite state is kept. "
        f"Try a smaller step, e.g. {hint}, or check lam/c/init_std.",
        t=t, step=step, trajectory=traj,
    )


# ------------------------------------------------------------------ explicit engines


class _RowsEngine:
    """Rows without interference: numba steps costing O(1) plus deaths (see _kernels)."""

    def __init__(self, W, model, method):
        self.model = model
        n = W.shape[0]
        self.W = W
        absW = np.abs(W)
        self.perm = np.argsort(absW, axis=1)[:, ::-1].copy()  # descending; zeros last
        self.u = np.take_along_axis(absW, self.perm, axis=1)
        del absW
        self.cnt = np.count_nonzero(W, axis=1).astype(np.int64)
        self.A, self.B = np.ones(n), np.zeros(n)
        self.P1, self.P2 = np.zeros(n), np.zeros(n)
        for i in range(n):
            K.rows_materialize(W, self.u, self.perm, self.cnt, self.A, self.B, self.P1, self.P2, i)
        self.a, self.b = TABLEAUX[method]
        self.fb = 1.0 if model.feature_benefit else 0.0
        self.lam = model.l1_strength
        self.stages = len(self.b)

    def run(self, t0, t1, dt, j0, jmax, stop_nnz, out):
        K.rows_run(self.W, self.u, self.perm, self.cnt, self.A, self.B, self.P1, self.P2,
                   t0, t1, dt, j0, jmax, self.a, self.b, self.fb, self.model.c, self.lam, stop_nnz, out)

    def stats(self):
        n = self.W.shape[0]
        l1, l2, l4 = np.empty(n), np.empty(n), np.empty(n)
        nnz = np.empty(n, dtype=np.int64)
        K.rows_stats(self.W, self.perm, self.cnt, l1, nnz, l2, l4)
        return finish_stats(l1, nnz, l2, l4, self.model)


class _DenseEngine:
    """Rows with interference: BLAS products on the columns that still hold a nonzero.

    With L1 on, hands over to :class:`_SparseEngine` once the fraction of nonzero
    weights falls to ``sparse_below`` (and keeps it from then on).
    """

    def __init__(self, W, model, method, sparse_below=0.0):
        self.model = model
        self.sparse_below = sparse_below if model.l1 else 0.0
        self.sparse = None
        self.W = W
        self.method = method
        self.a, self.b = TABLEAUX[method]
        self.stages = len(self.b)
        self.fb = 1.0 if model.feature_benefit else 0.0
        self.lam = model.l1_strength
        self.use_sign = model.l1
        self.cols = None

    def _buffers(self, Wc):
        n, mc = Wc.shape
        if self.cols is None or self._shape != (n, mc):
            self._shape = (n, mc)
            self.G = np.empty((n, n))
            self.P = np.empty((n, n))
            self.norms = np.empty(n)
            self.PW = np.empty((n, mc))
            self.F = np.empty((n, mc))
            self.V = np.empty((n, mc))
            self.U = np.empty((n, mc))
            self.s = np.zeros((n, mc))
            self.Ks = np.empty((self.stages, n, mc))

    def smooth(self, U, F):
        """Smooth force at U into F (two BLAS products, fused elementwise work)."""
        np.matmul(U, U.T, out=self.G)
        np.copyto(self.norms, np.diagonal(self.G))
        if self.model.interference:
            K.relu_offdiag(self.G, self.P)
            np.matmul(self.P, U, out=self.PW)
            K.combine_force(U, self.norms, self.PW, self.fb, 1.0, self.model.c, F)
        else:
            K.combine_force(U, self.norms, U, self.fb, 0.0, self.model.c, F)

    def step(self, Wc, h):
        """One step from Wc into self.V; returns False if a value is non-finite."""
        if self.method == "euler":
            self.smooth(Wc, self.F)
            return K.prox_euler(Wc, self.F, h, self.lam, self.use_sign, self.V)
        Ks, s = self.Ks, self.s
        self.smooth(Wc, self.F)
        if self.use_sign:
            K.sign_pattern(Wc, self.F, self.lam, s)
        K.masked_stage(self.F, s, self.lam, self.use_sign, Ks[0])
        for st in range(1, self.stages):
            K.stage_value(Wc, Ks, h * self.a[st], st, self.U)
            self.smooth(self.U, self.F)
            K.masked_stage(self.F, s, self.lam, self.use_sign, Ks[st])
        return K.finish_step(Wc, Ks, h * self.b, s, self.use_sign, self.V)

    def run(self, t0, t1, dt, j0, jmax, stop_nnz, out):
        if self.sparse is None and self.sparse_below > 0:
            if np.count_nonzero(self.W) <= self.sparse_below * self.W.size:
                self.sparse = _SparseEngine(self.W, self.model, self.method)
                self.sparse.sync()
        if self.sparse is not None:
            return self.sparse.run(t0, t1, dt, j0, jmax, stop_nnz, out)
        live = np.flatnonzero(np.any(self.W != 0.0, axis=0))
        full = live.size == self.W.shape[1]
        Wc = self.W if full else np.ascontiguousarray(self.W[:, live])
        self._buffers(Wc)
        self.cols = live
        j = j0
        t = K.start_time(t0, t1, dt, j0)
        status, steps = K.STATUS_DONE, 0
        while t < t1:
            t_next = K.step_end(t0, t1, dt, j)
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below
                ok = self.step(Wc, t_next - t)
            if not ok:
                status = K.STATUS_NONFINITE
                break
            Wc, self.V = self.V, Wc
            j += 1
            steps += 1
            t = t_next
            if stop_nnz >= 0 and np.count_nonzero(Wc, axis=1).max() <= stop_nnz:
                status = K.STATUS_STOP
                break
            if t < t1 and steps >= jmax:
                status = K.STATUS_BUDGET
                break
        if full:
            if Wc is not self.W:
                self.W[...] = Wc
                self.V = Wc
        else:
            self.W[:, live] = Wc
        out[:4] = (t, j, status, -1)

    def nnz(self):
        return np.count_nonzero(self.W, axis=1)

    def stats(self):
        return row_stats(self.W, self.model)


class _SparseEngine:
    """Rows with interference and L1 once sparse: O(working set) numba steps."""

    def __init__(self, W, model, method):
        n, m = W.shape
        self.model, self.W = model, W
        self.a, self.b = TABLEAUX[method]
        self.euler = method == "euler"
        self.U = np.zeros_like(W)
        self.widx = np.empty((n, m), dtype=np.int64)
        self.wcnt = np.empty(n, dtype=np.int64)
        self.ws, self.Fc, self.newv = np.empty((n, m)), np.empty((n, m)), np.empty((n, m))
        self.Kc = np.empty((len(self.b), n, m))
        self.colrows = np.empty(n * m, dtype=np.int64)
        self.colstart, self.colfill, self.touched = (np.empty(m, dtype=np.int64) for _ in range(3))
        self.colcnt = np.zeros(m, dtype=np.int64)
        self.acc, self.nbr, self.inlist = np.zeros(n), np.empty(n, dtype=np.int64), np.zeros(n, dtype=bool)
        self.pos = np.full(m, -1, dtype=np.int64)
        self.cand, self.candmark, self.candlist = np.zeros(m), np.zeros(m, dtype=bool), np.empty(m, dtype=np.int64)
        self.fb = 1.0 if model.feature_benefit else 0.0

    def sync(self):
        """Rebuild the supports from W (after dense steps changed it): nonzeros first."""
        self.widx[...] = np.argsort(self.W == 0.0, axis=1, kind="stable")
        self.wcnt[...] = np.count_nonzero(self.W, axis=1)

    def run(self, t0, t1, dt, j0, jmax, stop_nnz, out):
        K.sparse_run(self.W, self.U, self.widx, self.wcnt, self.ws, self.Kc, self.Fc, self.newv,
                     self.colrows, self.colstart, self.colcnt, self.colfill, self.touched,
                     self.acc, self.nbr, self.inlist, self.pos, self.cand, self.candmark, self.candlist,
                     t0, t1, dt, j0, jmax, self.a, self.b, self.euler, self.fb, self.model.c,
                     self.model.l1_strength, stop_nnz, out)


def _run_explicit(model, W, times, method, dt, stop, snapshots, progress, options):
    if not model.interference or model.n == 1:
        engine = _RowsEngine(W, model, method)
    else:
        engine = _DenseEngine(W, model, method, options.get("sparse_below", 0.0))
    rec = _Recorder(model, snapshots)
    comp = _warm_up(type(engine), model, method)
    wall0 = time.perf_counter()
    rec.save(0.0, engine.stats(), engine.W)
    stop_nnz = -1 if stop is None or stop.max_nnz is None else stop.max_nnz
    window = None
    if stop is not None and stop.tol is not None:
        window = max(round(stop.window / dt), 1) * dt
        W_check, t_check = engine.W.copy(), 0.0
    bounds = np.asarray(times)
    if window is not None:
        checks = np.arange(1, int(times[-1] // window) + 1) * window
        bounds = np.unique(np.concatenate([bounds, checks]))
    save_set = set(times.tolist())
    out = np.zeros(5)
    steps, status, t = 0, "completed", 0.0
    jmax = 64
    bar = _progress_bar(progress, times[-1], method)
    interrupt = _Interrupt()
    try:
        with interrupt.guard():
            for t1 in bounds[1:]:
                t0, j = t, 0
                while t < t1:
                    tick = time.perf_counter()
                    engine.run(t0, t1, dt, j, jmax, stop_nnz, out)
                    took = time.perf_counter() - tick
                    steps += int(out[1]) - j
                    t, j, code = float(out[0]), int(out[1]), int(out[2])
                    jmax = int(min(max(jmax * min(0.2 / max(took, 1e-4), 4.0), 1), 1 << 40))
                    if bar is not None:
                        bar.update(t - bar.n)
                    if code == K.STATUS_NONFINITE:
                        wall = time.perf_counter() - wall0
                        raise _divergence(model, method, dt, t, steps, rec, engine.W, options, wall, comp)
                    if code == K.STATUS_STOP:
                        status = "sparse"
                        break
                    if interrupt.flag:
                        status = "interrupted"
                        break
                if status != "completed":
                    break
                if t in save_set or t == times[-1]:
                    rec.save(t, engine.stats(), engine.W)
                if window is not None and t >= t_check + window * (1 - 1e-9):
                    same = np.array_equal(engine.W != 0, W_check != 0)
                    if same and np.max(np.abs(engine.W - W_check), initial=0.0) <= stop.tol * (t - t_check):
                        status = "converged"
                        break
                    W_check, t_check = engine.W.copy(), t
    finally:
        if bar is not None:
            bar.close()
    if not rec.t or rec.t[-1] != t:
        rec.save(t, engine.stats(), engine.W)
    wall = time.perf_counter() - wall0
    if status == "interrupted":
        warnings.warn(f"interrupted at t={t:.6g}; returning the trajectory up to there", FlowsimWarning, stacklevel=3)
    stats = RunStats(status, t, steps, steps * engine.stages, wall, comp,
                     {"completed": "reached t_max", "sparse": f"every row has <= {stop_nnz} nonzeros",
                      "converged": "supports fixed and weights still over the window",
                      "interrupted": "stopped by Ctrl-C"}[status])
    return rec.trajectory(method, dt, engine.W, stats, options)


# ------------------------------------------------------------------ solve_ivp path


def _run_ivp(model, W, times, method, dt, stop, snapshots, progress, options):
    from scipy.integrate import solve_ivp

    n, m = W.shape
    engine = _DenseEngine(W, model, "euler")
    engine._buffers(W)
    F = np.empty_like(W)
    lam = model.l1_strength
    use_sign = model.l1
    s = np.zeros_like(W)
    rec = _Recorder(model, snapshots)
    rec.save(0.0, row_stats(W, model), W)
    t, t_max = 0.0, float(times[-1])
    nfev = steps = restarts = 0
    status = "completed"
    stop_nnz = None if stop is None else stop.max_nnz
    bar = _progress_bar(progress, t_max, method)
    interrupt = _Interrupt()
    comp = _warm_up(_DenseEngine, model, "rk4", l1=True)
    wall0 = time.perf_counter()
    last_t = [0.0, time.perf_counter()]
    stuck = np.zeros(W.shape, dtype=bool)

    class _Stop(Exception):
        pass

    try:
        with interrupt.guard():
            while t < t_max:
                engine.smooth(W, F)
                nfev += 1
                if use_sign:
                    K.sign_pattern(W, F, lam, s)
                    s[stuck] = 0.0
                    active = s != 0.0
                else:
                    active = np.ones(W.shape, dtype=bool)
                sa = s[active]
                y0 = W[active]
                Wt = np.zeros_like(W)

                def rhs(tt, y):
                    if interrupt.flag:
                        raise _Stop
                    Wt[active] = y
                    engine.smooth(Wt, F)
                    if bar is not None and time.perf_counter() - last_t[1] > 0.2:
                        bar.update(tt - bar.n)
                        last_t[1] = time.perf_counter()
                    return F[active] - lam * sa if use_sign else F[active]

                events = []
                if use_sign and y0.size:
                    def hits_zero(tt, y):
                        return float(np.min(y * sa))
                    hits_zero.terminal, hits_zero.direction = True, -1
                    events.append(hits_zero)
                if y0.size == 0:  # everything pinned at zero: nothing moves again
                    for ts in times[times > t]:
                        rec.save(ts, row_stats(W, model), W)
                    t = t_max
                    break
                t_eval = times[(times > t) & (times <= t_max)]
                sol = solve_ivp(rhs, (t, t_max), y0, method=method, t_eval=t_eval,
                                events=events or None, rtol=options["rtol"], atol=options["atol"],
                                first_step=None if dt is None else min(dt, (t_max - t) / 2))
                nfev += sol.nfev
                steps += max(len(sol.t), 1)
                for k, ts in enumerate(sol.t):
                    Wt[active] = sol.y[:, k]
                    Wt[~active] = 0.0
                    rec.save(ts, row_stats(Wt, model), Wt)
                if sol.status == -1:
                    raise _divergence(model, method, None, t, steps, rec, W, options,
                                      time.perf_counter() - wall0, 0.0)
                if sol.status == 1 and sol.t_events[0].size:
                    t_ev = float(sol.t_events[0][0])
                    y = sol.y_events[0][0].copy()
                    y[np.argmin(y * sa)] = 0.0
                    y[y * sa <= 0.0] = 0.0
                    stuck[...] = False
                    if t_ev <= t + 1e-12 * (1.0 + t):  # no progress: hold those at 0 one segment
                        stuck[active] = y == 0.0
                    W[active] = y
                    W[~active] = 0.0
                    t = t_ev
                    restarts += 1
                    if stop_nnz is not None and np.count_nonzero(W, axis=1).max() <= stop_nnz:
                        status = "sparse"
                        break
                    continue
                W[active] = sol.y[:, -1] if sol.t.size else y0
                W[~active] = 0.0
                t = t_max
    except _Stop:
        status = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    if not np.all(np.isfinite(W)):
        raise _divergence(model, method, None, t, steps, rec, W, options, time.perf_counter() - wall0, 0.0)
    if rec.t[-1] != t:
        rec.save(t, row_stats(W, model), W)
    options = dict(options, restarts=restarts)
    stats = RunStats(status, t, steps, nfev, time.perf_counter() - wall0, comp,
                     f"solve_ivp {method}, {restarts} zero-crossing restarts")
    return rec.trajectory(method, dt, W, stats, options)
