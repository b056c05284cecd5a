"""Run-time plumbing shared by the drivers: recording, Ctrl-C, progress, divergence."""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time

import numpy as np

from .errors import DivergenceError
from .trajectory import STAT_NAMES, RunStats, Trajectory


class Recorder:
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
        for name in STAT_NAMES:
            dtype = np.int64 if name == "nnz" else np.float64
            cols[name] = np.array([r[name] for r in self.rows], dtype=dtype).reshape(len(self.rows), n)
        snaps = np.array(self.snapshots) if self.snapshots else None
        return Trajectory(
            model=self.model, method=method, dt=dt, t=np.array(self.t), W=W, stats=stats,
            snapshot_t=np.array(self.t) if snaps is not None else None, snapshots=snaps,
            options=options, **cols,
        )


class Interrupt:
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


class Progress:
    """A progress bar on stderr toward what ends the run.

    With ``stop.max_nnz`` set: the largest m′ of a row on a log scale from its start
    value to the target; otherwise time toward ``t_max``. The bar is left on its own
    line when it closes. Disabled: every method is a no-op.
    """

    def __init__(self, enabled, method, t0, t_max, stop, nnz0):
        self.bar = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.t0, self.t_max = t0, t_max
        target = None if stop is None else stop.max_nnz
        self.log_span = None
        if target is not None and nnz0 > max(target, 1):
            self.nnz0, self.log_span = nnz0, math.log(nnz0 / max(target, 1))
        self.head = f"flowsim {method} to " + (f"m'<={target}" if self.log_span else f"t={t_max:.4g}")
        self.bar = tqdm(total=1000, desc=self.head, leave=True, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self._last = 0.0

    def update(self, t, nnz=None, force=False):
        """Show the state at time t (``nnz()``, the largest m′ of a row, is called only
        when the m′ scale needs it); at most 10 refreshes a second."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and not force:
            return
        self._last = now
        info = f"t={t:.6g}"
        if self.log_span and nnz is not None:
            now_nnz = max(int(nnz()), 1)
            frac = math.log(self.nnz0 / now_nnz) / self.log_span
            info += f", max m'={now_nnz}"
        else:
            frac = (t - self.t0) / (self.t_max - self.t0)
        self.bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        self.bar.set_description_str(f"{self.head} ({info})", refresh=False)
        self.bar.refresh()

    def close(self, t=None, nnz=None):
        """Show the final state (when given) and leave the bar on its own line."""
        if self.bar is not None:
            if t is not None:
                self.update(t, nnz, force=True)
            self.bar.close()


def divergence_error(model, method, dt, t, step, recorder, W, options, wall, comp, underflow=False):
    """The DivergenceError of a run whose weights became non-finite after time t (or,
    ``underflow``, whose adaptive step size fell below the floor of ``_adaptive``)."""
    stats = RunStats("diverged", t, step, 0, wall, comp, "step size underflow" if underflow else "non-finite weights")
    traj = recorder.trajectory(method, dt, W, stats, options)
    if underflow:
        return DivergenceError(
            f"step size underflow after t={t:.6g} (step {step}) with method={method}, rtol={options.get('rtol')}, "
            f"atol={options.get('atol')}: no step passed the error test (non-finite trial values, or a "
            "tolerance below rounding); the last accepted state is kept. Try a looser rtol/atol, "
            "or check lam/c/init_std.", t=t, step=step, trajectory=traj)
    hint = f"dt={dt / 10:g}" if dt else "tighter rtol/atol"
    return DivergenceError(
        f"weights became non-finite after t={t:.6g} (step {step}) with method={method}"
        f"{'' if dt is None else f', dt={dt:g}'}; the last finite state is kept. "
        f"Try a smaller step, e.g. {hint}, or check lam/c/init_std.",
        t=t, step=step, trajectory=traj,
    )
