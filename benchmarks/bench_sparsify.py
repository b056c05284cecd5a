"""Benchmark of the interference-free sparsification run (issue "Sparsification").

Usage::

    python benchmarks/bench_sparsify.py [--quick] [--json PATH] [--repeats R] [--fine-t-max T]

Problem (the paper's Figure 2): one row, m = 10^5, λ = 10^-5, initial weights
N(0, (0.9/√m)²) with seed 0, interference removed, c = 1, run until m′ = 1.

Baseline: the approach published with the paper, written out below
(:func:`paper_baseline`): NumPy explicit Euler with dt = 0.5 on the sorted |initial
weights|, ``w = w + dt*((1 - (w*w).sum())*w - lam)`` then ``w = w[w > 0]``, until one
weight is left, recording m′ and ‖w‖₁ on a log grid of steps.

Compared with it:

1. flowsim ``euler`` at the same dt (the same arithmetic, so the same m′ trajectory up to
   rounding): warm wall time and speed-up (target ≥ 10×), max |Δm′| on the save grid.
2. flowsim ``rk4`` at dt = 0.5 (same cost per step in the row kernel).
3. flowsim ``reduced`` (exact, no time step): wall time and speed-up (target ≥ 100×),
   and its agreement in ‖W‖₁ with flowsim ``euler``/``rk4`` at dt = 0.01 on a common
   save grid (target: max relative difference ≤ 1e-3).

Every method's steps, final ‖W‖₁ and time to m′ = 1 are recorded. numba compile time is
measured separately in fresh subprocesses (cold cache vs warm cache).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import flowsim  # noqa: E402
from flowsim import Model, Stop, simulate  # noqa: E402
from flowsim.integrate import default_save_times  # noqa: E402

from bench_steppers import (  # noqa: E402  (shared benchmark helpers)
    COMPILE_HEADER, compile_rows, compile_times, finish, fmt, interleaved, machine_info, print_table)

#: t_cap bounds every run (all of them stop earlier, at m′ = 1); saves are 200 log-spaced
#: times up to t_cap on the dt grid (``flowsim.integrate.default_save_times``).
FULL = dict(m=100_000, lam=1e-5, seed=0, dt=0.5, fine_dt=0.01, t_cap=4e5, saves=200)
QUICK = dict(m=2_000, lam=1e-4, seed=0, dt=0.5, fine_dt=0.01, t_cap=4e4, saves=200)


def paper_baseline(w0, lam, dt, record_steps, max_steps):
    """The published NumPy Euler on one row's sorted |weights|, pruned at 0, until m′ = 1.

    Parameters
    ----------
    w0 : ndarray, shape (m,)
        Initial weights of the row (their absolute values are used).
    lam, dt : float
    record_steps : ndarray of int
        Step counts at which m′ and ‖w‖₁ are recorded (0 is the initial state).
    max_steps : int
        Give up after this many steps.

    Returns
    -------
    dict
        ``steps`` taken, ``t_end`` = steps·dt (the time m′ reached 1 if ``reached``),
        ``reached``, ``l1_final``, ``active_updates`` (Σ over steps of m′), and the
        recorded ``record_step``, ``nnz``, ``l1``.
    """
    w = np.sort(np.abs(w0))
    rec_k, rec_n, rec_l1 = [], [], []
    targets = iter(np.unique(record_steps).tolist() + [-1])
    nxt = next(targets)
    step = active = 0
    while True:
        if step == nxt:
            rec_k.append(step)
            rec_n.append(w.size)
            rec_l1.append(float(w.sum()))
            nxt = next(targets)
        if w.size <= 1 or step >= max_steps:
            break
        active += w.size
        w = w + dt * ((1.0 - (w * w).sum()) * w - lam)
        w = w[w > 0]
        step += 1
    return dict(steps=step, t_end=step * dt, reached=bool(w.size <= 1), l1_final=float(w.sum()),
                active_updates=active,
                nnz_final=int(w.size), record_step=rec_k, nnz=rec_n, l1=rec_l1)


def _summary(traj, seconds=None, all_seconds=None):
    """JSON-ready record of one flowsim run."""
    s = traj.stats
    return dict(method=traj.method, dt=traj.dt, status=s.status, steps=s.steps,
                force_evals=s.force_evals, t_end=s.t_end,
                time_to_nnz1=s.t_end if s.status == "sparse" else None,
                l1_final=float(traj.l1[-1, 0]), nnz_final=int(traj.nnz[-1, 0]),
                seconds=seconds, all_seconds=all_seconds, stat_wall_seconds=s.wall_seconds,
                stat_compile_seconds=s.compile_seconds, message=s.message,
                saves=dict(t=traj.t, nnz=traj.nnz[:, 0], l1=traj.l1[:, 0]))


def _on_grid(t, values, grid):
    """Values at the grid times that were saved (exact time match), as a dict time→value."""
    on = np.isin(t, grid)
    return dict(zip(np.asarray(t)[on].tolist(), np.asarray(values)[on].tolist()))


def compare(a_t, a_v, b_t, b_v, grid, relative=False):
    """Compare two series on the grid times both saved.

    Returns max |Δ| (relative to |b| if ``relative``), the time where it occurs, the
    number of common times and how many of them differ.
    """
    a, b = _on_grid(a_t, a_v, grid), _on_grid(b_t, b_v, grid)
    common = sorted(set(a) & set(b))
    if not common:
        return dict(common_times=0, max_diff=None, at_time=None, differing_times=0)
    da = np.array([a[t] for t in common], dtype=float)
    db = np.array([b[t] for t in common], dtype=float)
    diff = np.abs(da - db)
    if relative:
        diff = diff / np.abs(db)
    k = int(np.argmax(diff))
    return dict(common_times=len(common), max_diff=float(diff[k]), at_time=common[k],
                differing_times=int(np.count_nonzero(diff)), t_first=common[0], t_last=common[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 60 s), e.g. for CI")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_sparsify.json"),
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--fine-t-max", type=float, default=None,
                   help="end the dt=0.01 explicit runs at this time instead of at m'=1 "
                        "(if they are too slow)")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    R = args.repeats
    t_start = time.perf_counter()
    m, lam, dt, fine_dt, t_cap = cfg["m"], cfg["lam"], cfg["dt"], cfg["fine_dt"], cfg["t_cap"]
    model = Model(n=1, m=m, lam=lam, interference=False, init_std=0.9 / math.sqrt(m), seed=cfg["seed"])
    W0 = model.initial_weights()
    grid = default_save_times(t_cap, dt, cfg["saves"])
    fine_grid = default_save_times(t_cap, fine_dt, cfg["saves"])
    stop = Stop(max_nnz=1)
    data = {"benchmark": "bench_sparsify", "quick": args.quick, "repeats": R,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__, "config": cfg,
            "model": model.as_dict(), "save_grid_dt": grid.tolist(), "save_grid_fine": fine_grid.tolist()}

    # ---- compile times (fresh subprocesses)
    small = dict(n=1, m=1000, lam=1e-4, interference=False)
    calls = [["rows-euler", small, 50.0, dict(method="euler", dt=0.5, stop_max_nnz=1)],
             ["rows-rk4", small, 50.0, dict(method="rk4", dt=0.5, stop_max_nnz=1)]]
    data["compile"] = {"rows_engine": compile_times(calls)}
    try:
        importlib.import_module("flowsim.reduced")
        have_reduced = True
    except ImportError as exc:
        have_reduced = False
        data["reduced_unavailable"] = repr(exc)
    if have_reduced:
        data["compile"]["reduced"] = compile_times(
            [["reduced", small, 50.0, dict(method="reduced", stop_max_nnz=1)]])

    # ---- timed runs, interleaved round by round: baseline, euler and rk4 at dt, reduced
    steps_grid = np.round(grid / dt).astype(np.int64)
    max_steps = int(round(t_cap / dt))
    fns = {"baseline": lambda: paper_baseline(W0[0], lam, dt, steps_grid, max_steps)}
    for method in ("euler", "rk4"):
        fns[method] = functools.partial(simulate, model, t_cap, method=method, dt=dt, save_at=grid, stop=stop)
    if have_reduced:
        fns["reduced"] = functools.partial(simulate, model, t_cap, method="reduced", save_at=fine_grid, stop=stop)
    for name, fn in fns.items():
        if name != "baseline":
            fn()  # warm-up (kernels loaded from numba's cache or compiled)
    timed = interleaved(fns, R)

    b_best, b_all, base = timed["baseline"]
    base.update(seconds=b_best, all_seconds=b_all, time_to_nnz1=base["t_end"] if base["reached"] else None)
    base_t = np.array(base["record_step"]) * dt
    data["baseline"] = base
    runs = {}
    for method in ("euler", "rk4"):
        best, alls, traj = timed[method]
        rec = _summary(traj, best, alls)
        rec["speedup_vs_baseline"] = b_best / best
        rec["nnz_vs_baseline"] = compare(traj.t, traj.nnz[:, 0], base_t, base["nnz"], grid)
        rec["l1_vs_baseline_rel"] = compare(traj.t, traj.l1[:, 0], base_t, base["l1"], grid, relative=True)
        runs[f"{method}_dt{dt:g}"] = rec

    # ---- the fine explicit runs (once each) and the reduced solver on a common grid
    fine_t_max = t_cap if args.fine_t_max is None else args.fine_t_max
    fine_grid_run = fine_grid[fine_grid <= fine_t_max]
    data["fine_capped"] = args.fine_t_max is not None
    data["fine_t_max"] = fine_t_max
    fine = {}
    for method in ("rk4", "euler"):
        t0 = time.perf_counter()
        traj = simulate(model, fine_t_max, method=method, dt=fine_dt, save_at=fine_grid_run, stop=stop)
        fine[method] = _summary(traj, time.perf_counter() - t0, None)
        runs[f"{method}_dt{fine_dt:g}"] = fine[method]
    if have_reduced:
        r_best, r_all, red = timed["reduced"]
        rec = _summary(red, r_best, r_all)
        rec["speedup_vs_baseline"] = b_best / r_best
        for method in ("rk4", "euler"):
            f = fine[method]["saves"]
            rec[f"l1_vs_{method}_dt{fine_dt:g}_rel"] = compare(f["t"], f["l1"], red.t, red.l1[:, 0],
                                                               fine_grid, relative=True)
            rec[f"nnz_vs_{method}_dt{fine_dt:g}"] = compare(f["t"], f["nnz"], red.t, red.nnz[:, 0], fine_grid)
        # how far the dt = 0.5 baseline is from the exact solution
        red_coarse = simulate(model, t_cap, method="reduced", save_at=grid, stop=stop)
        rec["coarse_grid_saves"] = dict(t=red_coarse.t, nnz=red_coarse.nnz[:, 0], l1=red_coarse.l1[:, 0])
        rec["baseline_l1_vs_reduced_rel"] = compare(base_t, base["l1"], red_coarse.t, red_coarse.l1[:, 0],
                                                    grid, relative=True)
        rec["baseline_nnz_vs_reduced"] = compare(base_t, base["nnz"], red_coarse.t, red_coarse.nnz[:, 0], grid)
        runs["reduced"] = rec
    data["runs"] = runs
    finish(data, args.json, t_start, report)


def report(data):
    mach, cfg = data["machine"], data["config"]
    print(f"flowsim {data['flowsim_version']} ({mach.get('flowsim_git_commit')}) | "
          f"{mach.get('cpu_model')} x{mach['cpu_count']} | "
          f"numpy {mach['numpy']}, numba {mach['numba']}, scipy {mach['scipy']} | {data['date_utc']}"
          f"{' | QUICK sizes' if data['quick'] else ''}")
    print(f"one row, m={cfg['m']}, lam={cfg['lam']:g}, init std 0.9/sqrt(m), seed {cfg['seed']}, "
          f"no interference, until m'=1; best of {data['repeats']} (dt={cfg['fine_dt']:g} runs: once)")
    base = data["baseline"]
    rows = [["paper NumPy Euler", fmt(cfg["dt"]), base["steps"], fmt(base["time_to_nnz1"], 7),
             f"{base['l1_final']:.9f}", fmt(base["seconds"]), "1x", "-"]]
    for name, r in data["runs"].items():
        sp = r.get("speedup_vs_baseline")
        dm = r.get("nnz_vs_baseline")
        dm = f"{dm['max_diff']:g} ({dm['differing_times']}/{dm['common_times']})" if dm else "-"
        rows.append([f"flowsim {r['method']}", fmt(r["dt"]), r["steps"], fmt(r["time_to_nnz1"], 7),
                     f"{r['l1_final']:.9f}", fmt(r["seconds"]), f"{sp:.1f}x" if sp else "-", dm])
    print_table(["run", "dt", "steps", "t(m'=1)", "final |W|_1", "wall s", "speedup",
                 "max|dm'| vs base (times differing/common)"], rows)
    e = data["runs"].get(f"euler_dt{cfg['dt']:g}")
    if e:
        print(f"sum of m' over the baseline's steps = {base['active_updates']:.4g}; wall time per unit: "
              f"{1e9 * base['seconds'] / base['active_updates']:.2f} ns baseline, "
              f"{1e9 * e['seconds'] / base['active_updates']:.2f} ns flowsim euler (same trajectory)")
    if data.get("fine_capped"):
        print(f"NOTE: dt={cfg['fine_dt']:g} runs were capped at t={data['fine_t_max']:g}")
    red = data["runs"].get("reduced")
    if red is None:
        print(f"\nreduced solver unavailable: {data.get('reduced_unavailable')}")
    else:
        print("\nagreement in |W|_1 on a common grid (relative difference, max over save times)")
        rows = []
        for key in [k for k in red if k.startswith("l1_vs_")] + ["baseline_l1_vs_reduced_rel"]:
            c = red[key]
            label = key.replace("_rel", "").replace("l1_vs_", "reduced vs ") if key.startswith("l1_vs_") \
                else "paper baseline dt=0.5 vs reduced"
            rows.append([label, c["common_times"], fmt(c["max_diff"]), fmt(c["at_time"], 7)])
        print_table(["pair", "common times", "max rel diff", "at t"], rows)
        for key in [k for k in red if k.startswith("nnz_vs_")] + ["baseline_nnz_vs_reduced"]:
            c = red[key]
            print(f"  m' {key}: max |dm'| = {fmt(c['max_diff'])} at t={fmt(c['at_time'], 7)}, "
                  f"differ at {c['differing_times']}/{c['common_times']} times")
    print("\nnumba compile time (fresh subprocess, empty NUMBA_CACHE_DIR, minus warm-cache first call)")
    print_table(COMPILE_HEADER, compile_rows(data["compile"]))


if __name__ == "__main__":
    main()
