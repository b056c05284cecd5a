"""``simulate``: the one entry point, and the table of methods behind it.

Methods
-------
``euler``, ``heun``, ``rk4``
    Fixed-step numba steppers (``forces.py`` defines them, including the exact
    treatment of the L1 sign force), run by the engines of ``_engines.py``. Steps lie
    on the global grid ``k·dt``: a save time between grid points is reached by an extra
    step from the grid point before it, taken on a copy, so the run itself never leaves
    the grid and its numbers do not depend on ``save_at``. Only a ``t_max`` off the grid
    shortens the last step.
``bs32``
    Adaptive numba stepper (Bogacki-Shampine 3(2) with a PI step-size controller,
    ``_adaptive.py``), run by the same engines: signs frozen over a step and exact zeros
    as for heun/rk4, the step size chosen by a local error estimate against
    ``rtol``/``atol``. Steps are not on a grid: a save time is reached by a side run
    on a copy, so the run's own steps do not depend on ``save_at`` either.
``RK45``, ``RK23``, ``DOP853``, ``Radau``, ``BDF``, ``LSODA``
    scipy's adaptive solvers on the active weights, restarted at every event of the
    sign force (``_ivp.py``): an active weight reaching 0, or a pinned zero whose force
    reaches λ in magnitude. Each restart costs a solver start-up, so a run in which all
    m weights of a row die costs O(m²): use the numba steppers or ``reduced`` at large m.
``reduced``
    Exact interference-free solution (``reduced.py``): a 2-D ODE per row.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings

import numpy as np

from . import _adaptive
from . import _engines
from . import _kernels as K
from ._runtime import Interrupt, Progress, Recorder, divergence_error
from .errors import FlowsimWarning, check_float, check_int, invalid
from .forces import EMBEDDED
from .model import Model
from .provenance import weights_digest
from .trajectory import RunStats

EXPLICIT_METHODS = ("euler", "heun", "rk4")
ADAPTIVE_METHODS = tuple(EMBEDDED)
IVP_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
METHODS = EXPLICIT_METHODS + ADAPTIVE_METHODS + IVP_METHODS + ("reduced",)
#: Default tolerances (rtol, atol) per kind of method.
TOLERANCES = {"adaptive": (1e-3, 1e-6), "ivp": (1e-8, 1e-10), "reduced": (1e-10, 1e-13)}

#: Number of log-spaced save times used when ``save_at`` is not given.
DEFAULT_SAVES = 200
#: Default density below which the sparse working-set engine takes a step: the measured
#: dense/sparse crossover at n = 256 is 0.15 at m = 4096, 0.08-0.12 at m = 1024
#: (benchmarks/bench_sparse_phase.py).
SPARSE_BELOW = 0.15
#: Largest step of the adaptive methods, times c (see ``_adaptive``: stability of the
#: converged state).
H_CAP = 1.0
#: A time within this fraction of dt from a grid point k·dt counts as that grid point.
GRID_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Stop:
    """Early-stopping rules (any that is set ends the run when met).

    Parameters
    ----------
    max_nnz : int or None
        Stop as soon as every row has at most this many nonzero weights.
    tol : float or None
        Stop once, on every step for a whole ``window`` of time, no row's support
        changed and ``max |ΔW| / Δt <= tol``; ``stats.t_converged`` is the time from
        which that held (status ``"converged"``).
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


def default_save_times(t_max, dt=None, count=DEFAULT_SAVES, t0=0.0):
    """t0, then ``count`` log-spaced times up to ``t_max`` (snapped to the dt grid).

    Returns
    -------
    ndarray, shape (T,)
    """
    span = t_max - t0
    first = min(dt if dt is not None else span * 1e-6, span)
    ts = t0 + np.geomspace(first, span, count)
    if dt is not None:
        ts = np.round(ts / dt) * dt
    return np.unique(np.concatenate([[t0], ts[(ts > t0) & (ts < t_max)], [t_max]]))


def simulate(model, t_max, *, method="rk4", dt=None, W0=None, t0=0.0, save_at=None,
             snapshots=False, stop=None, rtol=None, atol=None, sparse_below=None, progress=False):
    """Integrate the gradient flow of ``model`` from ``t0`` to ``t_max``.

    Parameters
    ----------
    model : Model
    t_max : float
        Final time (> t0).
    method : str
        One of :data:`METHODS`.
    dt : float, optional
        Step of the fixed-step methods (default ``0.1 / c``; steps lie on the grid
        k·dt); first step of ``bs32`` (default from the force at W0) and of the
        ``solve_ivp`` methods. Not used by ``reduced``.
    W0 : array_like, shape (n, m), optional
        Weights at ``t0``; default ``model.initial_weights()``.
    t0 : float
        Start time (default 0). With ``W0`` the final weights of a run that ended at
        ``t0``, the run continues it: for the fixed-step methods on the same grid, so
        that a run split in two gives the numbers of one run.
    save_at : array_like, shape (T,), optional
        Times in [t0, t_max] at which to record per-row statistics; t0 and ``t_max``
        are always added. Default: t0 and 200 log-spaced times (on the dt grid for
        fixed-step methods).
    snapshots : bool
        Also keep a copy of W at every save time (memory T·n·m).
    stop : Stop, optional
        Early-stopping rules.
    rtol, atol : float, optional
        Tolerances (0 < rtol <= 1, atol > 0) of ``bs32`` (default 1e-3, 1e-6, those of
        MATLAB's ode23, the same pair; benchmarks/study_dt.py), of the
        ``solve_ivp`` methods (default 1e-8, 1e-10) and of ``reduced`` (default 1e-10,
        1e-13); not used by the fixed-step methods.
    sparse_below : float, optional
        Numba steppers (fixed-step and ``bs32``) with interference and L1: a step that
        starts with at most this fraction of weights nonzero is taken by the sparse engine
        (default 0.15, the measured crossover at n = 256, m = 4096; 0 keeps the dense
        engine throughout; both compute the same steps to rounding).
    progress : bool
        Show a progress bar on stderr (toward m′ = ``stop.max_nnz`` when that is set,
        else toward ``t_max``).

    Returns
    -------
    Trajectory
        On Ctrl-C the run ends cleanly with ``stats.status == "interrupted"`` and keeps
        everything computed so far.

    Raises
    ------
    FlowsimInputError
        For any invalid argument, including one the method would not use (one line
        naming it).
    DivergenceError
        When the weights become non-finite; it carries the partial trajectory.
    """
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    if method not in METHODS:
        raise invalid("method", method, "must be one of " + ", ".join(METHODS))
    t0 = check_float("t0", t0, minimum=0.0)
    t_max = check_float("t_max", t_max, positive=True)
    if not t_max > t0:
        raise invalid("t_max", t_max, f"must be > t0={t0:g}")
    if stop is not None and not isinstance(stop, Stop):
        raise invalid("stop", type(stop).__name__, "must be a flowsim.Stop or None")
    options = _method_options(model, method, dt, rtol, atol, sparse_below)
    dt = options.pop("dt")
    W = model.initial_weights() if W0 is None else model.check_weights(W0)
    options["W0"] = ({"source": "seed", "seed": model.seed} if W0 is None
                     else {"source": "given", "sha256": weights_digest(W)})
    if t0 > 0:
        options["t0"] = t0
    times = _save_times(save_at, t0, t_max, dt if method in EXPLICIT_METHODS else None)
    if stop is not None:
        options["stop"] = dataclasses.asdict(stop)
    if method == "reduced":
        return _run_reduced(model, W, times, stop, snapshots, progress, options)
    if method in IVP_METHODS:
        from ._ivp import run_ivp

        return run_ivp(model, W, times, method, dt, stop, snapshots, progress, options)
    if method in ADAPTIVE_METHODS:
        return _run_adaptive(model, W, times, method, dt, stop, snapshots, progress, options)
    return _run_explicit(model, W, times, method, dt, stop, snapshots, progress, options)


def _method_options(model, method, dt, rtol, atol, sparse_below):
    """Validated options of ``method``; an option the method would not use is an error."""
    if method == "reduced" and dt is not None:
        raise invalid("dt", dt, "is not used by method='reduced' (exact solver without steps); leave it None")
    if method in EXPLICIT_METHODS:
        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None:
                raise invalid(name, value, f"is not used by the fixed-step method {method!r}; leave it None")
    numba = method in EXPLICIT_METHODS + ADAPTIVE_METHODS
    uses_sparse = numba and model.interference and model.n > 1 and model.l1
    if sparse_below is not None and not uses_sparse:
        raise invalid("sparse_below", sparse_below, f"is used only by {'/'.join(EXPLICIT_METHODS + ADAPTIVE_METHODS)} "
                      "with interference and L1 on and n > 1; leave it None")
    options = {}
    if method in EXPLICIT_METHODS:
        options["dt"] = check_float("dt", 0.1 / model.c if dt is None else dt, positive=True)
    else:
        options["dt"] = None if dt is None else check_float("dt", dt, positive=True)
    if method not in EXPLICIT_METHODS:
        kind = "reduced" if method == "reduced" else ("adaptive" if method in ADAPTIVE_METHODS else "ivp")
        rtol0, atol0 = TOLERANCES[kind]
        options["rtol"] = check_float("rtol", rtol0 if rtol is None else rtol, positive=True)
        if options["rtol"] > 1.0:
            raise invalid("rtol", rtol, "must be a finite number in (0, 1]")
        options["atol"] = check_float("atol", atol0 if atol is None else atol, positive=True)
    if uses_sparse:
        options["sparse_below"] = check_float(
            "sparse_below", SPARSE_BELOW if sparse_below is None else sparse_below, minimum=0.0)
    return options


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
    F = _engines.smooth_force(W, model)
    if model.l1:
        K.add_sign_force(W, model.lam, F)
    return F


def _save_times(save_at, t0, t_max, dt):
    if save_at is None:
        return default_save_times(t_max, dt, t0=t0)
    try:
        ts = np.asarray(save_at, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise invalid("save_at", save_at, "must be an array of times") from None
    if ts.size and (not np.all(np.isfinite(ts)) or ts.min() < t0 or ts.max() > t_max):
        raise invalid("save_at", f"<{ts.size} times in [{ts.min():g}, {ts.max():g}]>",
                      f"times must be finite and within [t0={t0:g}, t_max={t_max:g}]")
    return np.unique(np.concatenate([[t0], ts, [t_max]]))


def grid_index(t, dt):
    """Index k of the last grid point k·dt at or before t (within GRID_TOL·dt)."""
    return int(math.floor(t / dt + GRID_TOL))


# ------------------------------------------------------------------ reduced


def _run_reduced(model, W, times, stop, snapshots, progress, options):
    if model.interference and model.n > 1:
        raise invalid("method", "reduced", "needs interference=False (the reduced solver is exact only without interference)")
    if options.get("t0"):
        raise invalid("t0", options["t0"], "must be 0 with method='reduced' (it solves from the initial weights)")
    from .reduced import solve_reduced

    reduced_model = model.replace(interference=False) if model.interference else model
    bar = Progress(progress, "reduced", times[0], times[-1], stop, int(np.count_nonzero(W, axis=1).max()))
    try:
        traj = solve_reduced(reduced_model, W, times, rtol=options["rtol"], atol=options["atol"],
                             max_nnz=None if stop is None else stop.max_nnz,
                             tol=None if stop is None else stop.tol,
                             window=10.0 if stop is None else stop.window,
                             snapshots=snapshots, progress=lambda t: bar.update(t))
    finally:
        bar.close()
    extra = {k: v for k, v in options.items() if k not in traj.options}
    traj = dataclasses.replace(traj, options={**traj.options, **extra})
    return dataclasses.replace(traj, model=model) if reduced_model is not model else traj


# ------------------------------------------------------------------ fixed-step methods


_STATUS = {K.STATUS_STOP: "sparse", K.STATUS_CONVERGED: "converged"}
_MESSAGES = {"completed": "reached t_max", "sparse": "every row has <= {max_nnz} nonzeros",
             "converged": "supports fixed and max|dW|/dt <= tol on every step for a window",
             "interrupted": "stopped by Ctrl-C"}


class _Stepper:
    """Advances an engine along the global grid k·dt in chunks, between save times."""

    stops_before_saves = False

    def __init__(self, engine, dt, t, stop, bar, interrupt):
        self.engine, self.dt, self.bar, self.interrupt = engine, dt, bar, interrupt
        self.j = grid_index(t, dt)
        self.t = self.j * dt if abs(t - self.j * dt) <= GRID_TOL * dt else t  # on the grid exactly
        self.stop_nnz = -1 if stop is None or stop.max_nnz is None else stop.max_nnz
        self.conv_tol = -1.0 if stop is None or stop.tol is None else stop.tol
        self.conv_window = 1.0 if stop is None else stop.window
        self.out = np.zeros(K.OUT_SIZE)
        self.out[K.OUT_STREAK] = t
        self.steps, self.jmax = 0, 64
        self.status = "completed"

    def advance(self, t1):
        """Step to t1; returns False when the run must end (stop, Ctrl-C); raises on
        non-finite weights (with the state at the last finite step)."""
        out, engine = self.out, self.engine
        while self.t < t1:
            tick = time.perf_counter()
            j_prev = self.j
            engine.run(self.t, self.j, t1, self.dt, self.jmax, self.stop_nnz, self.conv_tol, self.conv_window, out)
            took = time.perf_counter() - tick
            self.t, self.j, code = float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])
            self.steps += self.j - j_prev
            self.jmax = int(min(max(self.jmax * min(0.2 / max(took, 1e-4), 4.0), 1), 1 << 40))
            self.bar.update(self.t, lambda: _nnz_max(engine))
            if code == K.STATUS_NONFINITE:
                raise FloatingPointError
            if code in _STATUS:
                self.status = _STATUS[code]
                return False
            if self.interrupt.flag:
                self.status = "interrupted"
                return False
            if code == K.STATUS_DONE and self.t < t1 and self.stops_before_saves:
                break  # an adaptive engine stops before a step that would pass t1
        return True

    def side_stats(self, t_save):
        """Statistics and weights at t_save (between grid points), from one extra step
        on a copy: the run itself stays on the grid."""
        side = self.engine.fork()
        out = np.zeros(K.OUT_SIZE)
        side.run(self.t, self.j, t_save, self.dt, 1, -1, -1.0, 1.0, out)
        if int(out[K.OUT_STATUS]) == K.STATUS_NONFINITE:
            raise FloatingPointError
        self.out[K.OUT_EVALS] += out[K.OUT_EVALS]
        return side.stats(), side.W


def _run_explicit(model, W, times, method, dt, stop, snapshots, progress, options):
    engine = _engines.make_engine(W, model, method, options.get("sparse_below", 0.0))
    rec = Recorder(model, snapshots)
    t_start, t_max = float(times[0]), float(times[-1])
    interrupt = Interrupt()
    bar = Progress(progress, method, t_start, t_max, stop, int(np.count_nonzero(W, axis=1).max()))
    run = _Stepper(engine, dt, t_start, stop, bar, interrupt)
    comp = wall0 = 0.0
    try:
        with interrupt.guard():  # also around the warm-up: a cold cache compiles for seconds
            comp = _engines.warm_up(model, method)
            wall0 = time.perf_counter()
            rec.save(t_start, engine.stats(), engine.W)
            if interrupt.flag:
                run.status = "interrupted"
            else:
                _march(run, times, rec, t_max)
    except FloatingPointError:
        wall = time.perf_counter() - wall0
        raise divergence_error(model, method, dt, run.t, run.steps, rec, engine.W, options, wall, comp) from None
    finally:
        bar.close(run.t, lambda: _nnz_max(engine))
    if run.status == "completed":
        run.t = t_max
    elif rec.t[-1] != run.t:
        rec.save(run.t, engine.stats(), engine.W)
    wall = time.perf_counter() - wall0
    if run.status == "interrupted":
        warnings.warn(f"interrupted at t={run.t:.6g}; returning the trajectory up to there", FlowsimWarning, stacklevel=3)
    message = _MESSAGES[run.status].format(max_nnz=run.stop_nnz)
    t_conv = float(run.out[K.OUT_STREAK]) if run.status == "converged" else math.nan
    partial = [(grid_index(t_start, dt) + 1) * dt - t_start, t_max - grid_index(t_max, dt) * dt]
    h_min = min([dt] + [h for h in partial if h > GRID_TOL * dt]) if run.steps else math.nan
    stats = RunStats(run.status, run.t, run.steps, int(run.out[K.OUT_EVALS]), wall, comp, message,
                     rejected=0, h_min=h_min, h_max=dt if run.steps else math.nan, t_converged=t_conv)
    return rec.trajectory(method, dt, engine.W, stats, options)


class _AdaptiveStepper(_Stepper):
    """Advances an adaptive engine, whose steps end where its controller puts them (the
    run's last step shortened to end at t_max): ``advance(t1)`` goes as far as it can
    without passing t1, and a save time between two steps is reached by a side run."""

    stops_before_saves = True

    def __init__(self, engine, h0, h_cap, t, stop, bar, interrupt):
        super().__init__(engine, 1.0, t, stop, bar, interrupt)
        self.dt, self.j, self.t = 0.0, 0, t
        _adaptive.start(self.out, h0, h_cap)

    def side_stats(self, t_save):
        side = self.engine.fork()
        side.t_end = t_save
        out = self.out.copy()
        side.run(self.t, self.j, t_save, 0.0, 1 << 40, -1, -1.0, 1.0, out)
        if int(out[K.OUT_STATUS]) == K.STATUS_NONFINITE:
            self.out[K.OUT_BAD] = out[K.OUT_BAD]
            raise FloatingPointError
        self.out[K.OUT_EVALS] = out[K.OUT_EVALS]  # work done; its steps are not the run's
        return side.stats(), side.W


def initial_step(W, model, rtol, atol):
    """First step of an adaptive method when ``dt`` is not given: 1 % of the time over
    which the force at W changes W by its own size, in the error norm's scale
    (Hairer & Wanner, II.4, first estimate), between 1e-6 and 1."""
    sc = atol + rtol * np.abs(W)
    d0 = float(np.max(np.abs(W) / sc, initial=0.0))
    d1 = float(np.max(np.abs(force(W, model)) / sc, initial=0.0))
    h0 = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
    return float(min(max(h0, 1e-6), 1.0))


def _run_adaptive(model, W, times, method, dt, stop, snapshots, progress, options):
    t_start, t_max = float(times[0]), float(times[-1])
    h0 = dt if dt is not None else initial_step(W, model, options["rtol"], options["atol"])
    options["h0"] = h0
    engine = _engines.make_engine(W, model, method, options.get("sparse_below", 0.0), options["rtol"],
                                  options["atol"], t_max)
    rec = Recorder(model, snapshots)
    interrupt = Interrupt()
    bar = Progress(progress, method, t_start, t_max, stop, int(np.count_nonzero(W, axis=1).max()))
    run = _AdaptiveStepper(engine, h0, H_CAP / model.c, t_start, stop, bar, interrupt)
    comp = wall0 = 0.0
    try:
        with interrupt.guard():
            comp = _engines.warm_up(model, method)
            wall0 = time.perf_counter()
            rec.save(t_start, engine.stats(), engine.W)
            if interrupt.flag:
                run.status = "interrupted"
            else:
                for s in times[1:]:
                    if not run.advance(float(s)):
                        break
                    if run.t == s:
                        rec.save(float(s), engine.stats(), engine.W)
                    else:
                        stats, W_side = run.side_stats(float(s))
                        rec.save(float(s), stats, W_side)
    except FloatingPointError:
        wall = time.perf_counter() - wall0
        raise divergence_error(model, method, None, run.t, run.steps, rec, engine.W, options, wall, comp,
                               underflow=run.out[K.OUT_BAD] == -2) from None
    finally:
        bar.close(run.t, lambda: _nnz_max(engine))
    if run.status != "completed" and rec.t[-1] != run.t:
        rec.save(run.t, engine.stats(), engine.W)
    wall = time.perf_counter() - wall0
    if run.status == "interrupted":
        warnings.warn(f"interrupted at t={run.t:.6g}; returning the trajectory up to there", FlowsimWarning, stacklevel=3)
    out = run.out
    stats = RunStats(run.status, run.t, run.steps, int(out[K.OUT_EVALS]), wall, comp,
                     _MESSAGES[run.status].format(max_nnz=run.stop_nnz), rejected=int(out[K.OUT_REJECTED]),
                     h_min=float(out[K.OUT_HMIN]) if run.steps else math.nan,
                     h_max=float(out[K.OUT_HMAX]) if run.steps else math.nan,
                     t_converged=float(out[K.OUT_STREAK]) if run.status == "converged" else math.nan)
    return rec.trajectory(method, None, engine.W, stats, options)


def _nnz_max(engine):
    """Largest m′ of a row (O(n) on the rows engine, which keeps the counts)."""
    cnt = getattr(engine, "cnt", None)
    return int(cnt.max(initial=0)) if cnt is not None else int(np.count_nonzero(engine.W, axis=1).max(initial=0))


def _march(run, times, rec, t_max):
    """Advance ``run`` through the save times, recording each one."""
    dt = run.dt
    for s in times[1:]:
        k = grid_index(s, dt)
        on_grid = abs(s - k * dt) <= GRID_TOL * dt
        target = s if (s == t_max and not on_grid) else k * dt
        if target > run.t and not run.advance(target):
            return
        if on_grid or s == t_max:
            rec.save(float(s), run.engine.stats(), run.engine.W)
        else:
            stats, W_side = run.side_stats(float(s))
            rec.save(float(s), stats, W_side)
