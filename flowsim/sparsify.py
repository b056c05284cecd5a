"""``python -m flowsim.sparsify``: sparsification without interference (Figures 2 and 6).

Runs the flow with feature benefit and L1 only (interference removed, as in the paper's
Figure 2), then writes into ``--out``: ``figure2_sparsify.png``, ``figure6_relvar.png``,
``sparsify.csv`` (per-time, per-row statistics with the theory columns),
``sparsify.json`` (everything that produced them) and ``sparsify_W.npz`` (final weights).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from . import _cli, theory
from .errors import DivergenceError, check_float, invalid
from .integrate import METHODS, Stop, default_save_times, simulate
from .model import Model

PROG = "python -m flowsim.sparsify"
#: Without --t-max the run stops when every row has one nonzero weight, or at
#: CAP_FACTOR / λ (the theory puts m' = 1 at t = Θ(1/λ)).
CAP_FACTOR = 1000.0


def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--m", type=int, default=100_000, help="hidden neurons (weights per row), default 100000")
    a("--lam", type=float, default=1e-5, help="L1 strength λ (> 0), default 1e-5")
    a("--method", default="rk4", help=f"one of {', '.join(METHODS)} (default rk4)")
    a("--dt", type=float, default=0.5, help="step of explicit methods (default 0.5)")
    a("--t-max", type=float, default=None,
      help=f"final time (default: until every row has one nonzero weight, capped at {CAP_FACTOR:g}/λ)")
    a("--rows", type=int, default=1, help="independent rows W_i to simulate (default 1)")
    a("--init-std", type=float, default=None, help="initial weight std (default 0.9/√m, as in the paper)")
    a("--c", type=float, default=1.0, help="force scale c (1 = paper, 4 = exact gradient flow)")
    a("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    a("--saves", type=int, default=400, help="number of log-spaced save times before snapping to the dt grid (default 400)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--compare", action="store_true", help="overlay the exact reduced solution")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.saves < 2:
        raise invalid("--saves", args.saves, "must be an integer >= 2")
    if args.method not in METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(METHODS))
    if args.m < 1:
        raise invalid("--m", args.m, "must be an integer >= 1")
    init_std = args.init_std if args.init_std is not None else 0.9 / math.sqrt(args.m)
    model = Model(n=args.rows, m=args.m, lam=args.lam, interference=False, c=args.c,
                  init_std=init_std, seed=args.seed)
    if args.t_max is None:
        if not args.lam > 0:
            raise invalid("--lam", args.lam, "must be > 0 unless --t-max is given (nothing sparsifies without L1)")
        t_max, stop = CAP_FACTOR / args.lam, Stop(max_nnz=1)
    else:
        t_max, stop = args.t_max, None
    dt = check_float("dt", args.dt, positive=True) if args.method in ("euler", "heun", "rk4") else None
    t_max = check_float("t_max", t_max, positive=True)
    _cli.check_out_dir(args.out)
    save_at = default_save_times(t_max, dt, count=args.saves)
    wall0 = time.perf_counter()
    status, message = 0, None
    try:
        traj = simulate(model, t_max, method=args.method, dt=dt, save_at=save_at, stop=stop,
                        progress=not args.quiet)
    except DivergenceError as err:
        if err.trajectory is None:  # nothing was saved before the failure
            _cli.fail(PROG, err, _cli.EXIT_DIVERGED)
        traj, status, message = err.trajectory, _cli.EXIT_DIVERGED, str(err)
    if traj.stats.status == "interrupted":
        status = _cli.EXIT_INTERRUPTED
    compare = None
    if args.compare and status == 0:
        compare = simulate(model, traj.stats.t_end, method="reduced",
                           save_at=traj.t)
    wall = time.perf_counter() - wall0
    summary = _summary(traj, compare, wall)
    write(traj, compare, args, summary)
    if message:
        sys.stderr.write(f"{PROG}: error: {message}\n")
    if not args.quiet:
        _print_summary(summary, traj, args.out, args.no_plot)
    return status


def _summary(traj, compare, wall):
    t1 = traj.time_to_nnz(1)
    s = {
        "status": traj.stats.status,
        "t_end": traj.stats.t_end,
        "time_to_nnz_1": t1.tolist(),
        "final_l1": traj.l1[-1].tolist(),
        "final_nnz": traj.nnz[-1].tolist(),
        "steps": traj.stats.steps,
        "run_seconds": traj.stats.wall_seconds,
        "compile_seconds": traj.stats.compile_seconds,
        "total_seconds": wall,
        "peak_rss_mib": _cli.peak_rss_mb(),
        "argv": sys.argv,
    }
    if compare is not None:
        rel = np.abs(traj.l1 - compare.l1) / np.maximum(compare.l1, 1e-300)
        s["compare_max_rel_diff_l1"] = float(np.nanmax(rel))
        s["compare_time_to_nnz_1"] = compare.time_to_nnz(1).tolist()
    return s


def write(traj, compare, args, summary):
    """Write CSV, JSON, weights and (unless --no-plot) the two figures into args.out."""
    from .io import save_trajectory

    m, lam = traj.model.m, traj.model.lam
    shape = traj.l1.shape
    l1_th = np.broadcast_to(theory.l1_smooth(traj.t, m, lam)[:, None], shape) if lam > 0 else None
    extra = {}
    if l1_th is not None:
        extra = {"l1_theory": l1_th, "nnz_theory": theory.nnz_from_l1(l1_th),
                 "l1_theory_piecewise": np.broadcast_to(theory.l1_piecewise(traj.t, m, lam)[:, None], shape)}
    if compare is not None and compare.t.size == traj.t.size:
        extra["l1_reduced"] = compare.l1
        extra["nnz_reduced"] = compare.nnz
    files = {}
    if not args.no_plot:
        from .plotting import figure2, figure6, save_figure

        files["figure2"] = save_figure(figure2(traj, compare), args.out / "figure2_sparsify.png").name
        W0_row = traj.model.initial_weights()[0]
        files["figure6"] = save_figure(figure6(traj, W0_row), args.out / "figure6_relvar.png").name
    save_trajectory(traj, args.out, "sparsify", extra_columns=extra,
                    extra_metadata={"summary": summary, "figures": files, "command": PROG})


def _print_summary(s, traj, out, no_plot):
    t1 = np.array(s["time_to_nnz_1"], dtype=float)
    reached = np.isfinite(t1)
    line = (f"time to m'=1: {np.nanmean(t1):.6g}" + (f" (mean over {reached.sum()} rows)" if t1.size > 1 else "")
            if reached.any() else f"m'=1 not reached by t={s['t_end']:.6g} (final m'={max(s['final_nnz'])})")
    print(f"{line}; final ||W||_1 = {np.mean(s['final_l1']):.6g}; "
          f"run {s['run_seconds']:.2f} s + compile {s['compile_seconds']:.2f} s "
          f"({traj.stats.steps} steps, {traj.method}); peak memory {s['peak_rss_mib']:.0f} MiB")
    if "compare_max_rel_diff_l1" in s:
        print(f"max relative difference in ||W||_1 vs exact reduced solution: {s['compare_max_rel_diff_l1']:.3g}")
    figs = "" if no_plot else "figure2_sparsify.png, figure6_relvar.png, "
    print(f"wrote {out}/ ({figs}sparsify.csv, sparsify.json, sparsify_W.npz)")


if __name__ == "__main__":
    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
