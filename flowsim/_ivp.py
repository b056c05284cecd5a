"""scipy's adaptive solvers on the flow, restarted at every event of the sign force.

With L1 on, the sign force is discontinuous at 0, so the flow is integrated in segments
on which the sign pattern is frozen: the *active* weights (nonzero, or zero with
|F| > λ, released with sign(F)) follow ``dw/dt = F(w) - λ s`` and the others are pinned
at exactly 0. A segment ends at the first of two events, located by Brent's method on
the solver's dense output:

* an active weight reaches 0: it is pinned (and released again at the restart if the
  force on it exceeds λ, i.e. it crosses zero);
* the force on a pinned zero reaches λ in magnitude: it is released.

scipy's ``OdeSolver`` classes are stepped directly (not through ``solve_ivp``), so that
every accepted step is seen: the events, the convergence rule of ``Stop(tol=...)`` and
the step statistics (accepted and rejected steps, smallest and largest step) are exact.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.integrate
from scipy.optimize import brentq

from . import _engines
from . import _kernels as K
from ._runtime import Interrupt, Progress, Recorder, divergence_error
from .trajectory import RunStats, row_stats

#: Methods whose step attempts each cost exactly ``n_stages`` evaluations, so that
#: rejected attempts can be counted; the implicit ones do not report them.
_RK_FAMILY = ("RK45", "RK23", "DOP853")
_EPS = np.finfo(float).eps


class _Flow:
    """The force on W with a frozen sign pattern, counting evaluations."""

    def __init__(self, model, W):
        self.model, self.lam = model, model.l1_strength
        self.engine = _engines.DenseEngine(W.copy(), model, "euler")
        self.F = np.empty_like(W)
        self.Wt = np.zeros_like(W)
        self.nfev = 0

    def smooth(self, W):
        self.engine.smooth(W, self.F)
        self.nfev += 1
        return self.F

    def freeze(self, W, stuck, forced):
        """Sign pattern at the start of a segment: (active mask, signs of active)."""
        F = self.smooth(W)
        if not self.model.l1:
            active = np.ones(W.shape, dtype=bool)
            return active, None
        s = np.zeros_like(W)
        K.sign_pattern(W, F, self.lam, s)
        s[forced] = np.where(F[forced] > 0, 1.0, -1.0)  # released by an event: |F| = λ there
        s[stuck] = 0.0
        active = s != 0.0
        return active, s[active]

    def rhs(self, active, sa):
        self.Wt[...] = 0.0  # pinned entries are exactly 0 for the whole segment

        def fun(t, y):
            self.Wt[active] = y
            F = self.smooth(self.Wt)
            return F[active] - self.lam * sa if sa is not None else F[active].copy()
        return fun

    def full(self, y, active):
        W = np.zeros_like(self.Wt)
        W[active] = y
        return W


def run_ivp(model, W, times, method, dt, stop, snapshots, progress, options):
    """Integrate with ``scipy.integrate.<method>`` between events; returns a Trajectory."""
    run = _IvpRun(model, W, times, method, dt, stop, snapshots, options)
    interrupt = Interrupt()
    bar = Progress(progress, method, run.t, run.t_max, stop, int(np.count_nonzero(W, axis=1).max()))
    comp, wall0 = 0.0, time.perf_counter()
    try:
        with interrupt.guard():  # also around the warm-up: a cold cache compiles for seconds
            comp = _engines.warm_up(model, "rk4", dense=True)
            wall0 = time.perf_counter()
            run.rec.save(run.t, row_stats(W, model), W)
            while run.status == "running":
                if interrupt.flag:
                    run.status = "interrupted"
                    break
                run.segment(interrupt, bar)
    except FloatingPointError:
        raise divergence_error(model, method, None, run.t, run.accepted, run.rec, run.W, options,
                               time.perf_counter() - wall0, comp) from None
    finally:
        bar.close(run.t, lambda: np.count_nonzero(run.W, axis=1).max())
    if run.status == "completed":
        run.t = run.t_max
    if run.rec.t[-1] != run.t:
        run.rec.save(run.t, row_stats(run.W, model), run.W)
    options = dict(options, restarts=run.restarts)
    stats = RunStats(run.status, run.t, run.accepted, run.flow.nfev, time.perf_counter() - wall0, comp,
                     f"scipy {method}, {run.restarts} restarts at events of the sign force",
                     rejected=run.rejected if method in _RK_FAMILY else -1,
                     h_min=run.h_min if run.accepted else math.nan,
                     h_max=run.h_max if run.accepted else math.nan,
                     t_converged=float(run.conv[K.OUT_STREAK]) if run.status == "converged" else math.nan)
    return run.rec.trajectory(method, dt, run.W, stats, options)


class _IvpRun:
    """State of a segmented solve: current W and time, pending save times, counters."""

    def __init__(self, model, W, times, method, dt, stop, snapshots, options):
        self.model, self.W, self.method, self.dt = model, W, method, dt
        self.rtol, self.atol = options["rtol"], options["atol"]
        self.t, self.t_max = float(times[0]), float(times[-1])
        self.pending = [float(x) for x in times[1:]]
        self.flow = _Flow(model, W)
        self.rec = Recorder(model, snapshots)
        self.stop_nnz = None if stop is None else stop.max_nnz
        self.conv_tol = -1.0 if stop is None or stop.tol is None else stop.tol
        self.conv_window = 1.0 if stop is None else stop.window
        self.conv = np.zeros(K.OUT_SIZE)
        self.conv[K.OUT_STREAK] = self.t
        self.stuck = np.zeros(W.shape, dtype=bool)
        self.forced = np.zeros(W.shape, dtype=bool)
        self.accepted = self.rejected = self.restarts = 0
        self.h_min, self.h_max = math.inf, 0.0
        self.status = "running"

    def save_until(self, t_end, y_at, active):
        """Record every pending save time <= t_end (weights from ``y_at(t)``)."""
        while self.pending and self.pending[0] <= t_end:
            ts = self.pending.pop(0)
            W = self.flow.full(y_at(ts), active)
            self.rec.save(ts, row_stats(W, self.model), W)

    def segment(self, interrupt, bar):
        """Integrate one segment of frozen signs, up to an event or the end of the run."""
        active, sa = self.flow.freeze(self.W, self.stuck, self.forced)
        self.forced[...] = False
        y0 = self.W[active]
        if y0.size == 0:  # everything pinned at zero: nothing moves again
            self.save_until(self.t_max, lambda ts: y0, active)
            self.status = "completed"
            return
        cls = getattr(scipy.integrate, self.method)
        first = None if self.dt is None else min(self.dt, (self.t_max - self.t) / 2)
        solver = cls(self.flow.rhs(active, sa), self.t, y0, self.t_max, rtol=self.rtol, atol=self.atol,
                     first_step=first)
        t_seg = self.t
        while True:
            y_old = solver.y.copy()
            nfev0 = solver.nfev
            solver.step()
            if solver.status == "failed" or not np.all(np.isfinite(solver.y)):
                self.W = self.flow.full(y_old, active)
                raise FloatingPointError
            self._count(solver, nfev0)
            event = self._event(solver, active, sa, y_old)
            t_end = solver.t if event is None else event[0]
            sol = solver.dense_output()
            self.save_until(t_end, lambda ts: solver.y if ts == solver.t else sol(ts), active)
            if event is not None:
                return self._restart(event, sol, active, sa, t_seg)
            self.W, self.t = self.flow.full(solver.y, active), solver.t
            rate = float(np.max(np.abs(solver.y - y_old), initial=0.0)) / (solver.t - solver.t_old)
            bar.update(self.t, lambda: np.count_nonzero(self.W, axis=1).max())
            if K.converged_after(False, rate, self.t, self.conv_tol, self.conv_window, self.conv):
                self.status = "converged"
            elif solver.status == "finished":
                self.status = "completed"
            elif interrupt.flag:
                self.status = "interrupted"
            if self.status != "running":
                return

    def _count(self, solver, nfev0):
        self.accepted += 1
        h = solver.t - solver.t_old
        self.h_min, self.h_max = min(self.h_min, h), max(self.h_max, h)
        if self.method in _RK_FAMILY:
            self.rejected += (solver.nfev - nfev0) // solver.n_stages - 1

    def _event(self, solver, active, sa, y_old):
        """The first event in the last step: (time, kind, index) or None.

        kind 0: the active weight at ``index`` (into the active ones) reached 0;
        kind 1: the pinned zero at ``index`` (flat into W) has |F| = λ.
        """
        if sa is None:
            return None
        t_old, t_new = solver.t_old, solver.t
        found = []
        moving = y_old * sa > 0.0
        if np.any(solver.y * sa <= 0.0):
            if np.any(~moving & (solver.y * sa <= 0.0)):  # released at the start, back at once
                found.append((t_old, 0, int(np.flatnonzero(~moving & (solver.y * sa <= 0.0))[0])))
            else:
                sol = solver.dense_output()
                g = lambda tt: float(np.min(sol(tt) * sa))  # noqa: E731
                t_ev = brentq(g, t_old, t_new, xtol=4 * _EPS, rtol=4 * _EPS) if g(t_old) > 0 else t_old
                found.append((t_ev, 0, int(np.argmin(sol(t_ev) * sa + np.where(moving, 0.0, np.inf)))))
        watch = ~active & ~self.stuck
        if self.model.interference and np.any(watch):
            sol = solver.dense_output()
            flow = self.flow

            def g(tt):
                F = flow.smooth(flow.full(sol(tt), active))
                return float(np.max(np.abs(F[watch]))) - flow.lam

            if g(t_new) > 0.0:
                t_ev = brentq(g, t_old, t_new, xtol=4 * _EPS, rtol=4 * _EPS) if g(t_old) <= 0 else t_old
                F = flow.smooth(flow.full(sol(t_ev), active))
                found.append((t_ev, 1, int(np.flatnonzero(watch)[np.argmax(np.abs(F[watch]))])))
        return min(found) if found else None

    def _restart(self, event, sol, active, sa, t_seg):
        """Apply an event at its time and set up the next segment."""
        t_ev, kind, index = event
        y = sol(t_ev)
        if kind == 0:
            y[index] = 0.0
        y[y * sa <= 0.0] = 0.0
        self.W, self.t = self.flow.full(y, active), t_ev
        self.stuck[...] = False
        if kind == 0 and t_ev <= t_seg + 1e-12 * (1.0 + abs(t_seg)):
            self.stuck[active] = y == 0.0  # no progress: hold them at 0 for one segment
        if kind == 1:
            self.forced.flat[index] = True
        self.restarts += 1
        K.converged_after(True, 0.0, t_ev, self.conv_tol, self.conv_window, self.conv)
        if self.stop_nnz is not None and np.count_nonzero(self.W, axis=1).max() <= self.stop_nnz:
            self.status = "sparse"
