"""Benchmark of flowsim's explicit steppers against plain NumPy (issue "Foundation").

Usage::

    python benchmarks/bench_steppers.py [--quick] [--json PATH] [--repeats R]

Cases
-----
dense   n=256, m=4096, every force on, λ=0.01, dt=0.1, t in [0, 2] (20 steps, the dense
        phase). Baselines: plain NumPy proximal Euler ``W ← S_{hλ}(W + h F(W))`` with F
        from two matrix products, and ``flowsim.forces.reference_step`` for heun/rk4.
row     one row, m=10^5, interference off, λ=1e-5, init std 0.9/√m, dt=0.5, over
        t in [0, 20] (still dense) and over a late interval (few weights left).
        Baseline: vectorised NumPy Euler on the row (the paper's published approach:
        ``w += dt*((1 - Σw²) w - λ)`` on |w|, then ``w = w[w > 0]``).

Rates are coordinate-updates per second (n·m·steps / seconds); for the row case also
active-coordinate-updates per second (Σ over steps of the nonzeros at the step start).
Timings are the best of ``--repeats`` in-process runs after a warm-up; numba compile time
is measured separately in fresh subprocesses (cold cache vs warm cache).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import flowsim
from flowsim import Model, simulate
from flowsim.forces import reference_step
from flowsim.io import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("euler", "heun", "rk4")

FULL = dict(dense_n=256, dense_m=4096, dense_lam=0.01, dense_dt=0.1, dense_tmax=2.0,
            row_m=100_000, row_lam=1e-5, row_dt=0.5, row_early=(0.0, 20.0),
            row_late=(1000.0, 11000.0))
QUICK = dict(dense_n=64, dense_m=512, dense_lam=0.01, dense_dt=0.1, dense_tmax=2.0,
             row_m=10_000, row_lam=1e-5, row_dt=0.5, row_early=(0.0, 20.0),
             row_late=(1000.0, 3000.0))


# ---------------------------------------------------------------- shared helpers


def machine_info():
    """Platform, CPU count and library versions, as JSON-ready data."""
    import numba
    import scipy

    info = dict(platform=platform.platform(), machine=platform.machine(),
                processor=platform.processor() or None, python=platform.python_version(),
                cpu_count=os.cpu_count(), numpy=np.__version__, numba=numba.__version__,
                scipy=scipy.__version__, flowsim=flowsim.__version__)
    info["thread_env"] = {k: os.environ.get(k) for k in
                          ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = list(os.getloadavg())
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    try:  # read-only: the commit the flowsim source tree is at (uncommitted edits not shown)
        src = os.path.dirname(os.path.abspath(flowsim.__file__))
        info["flowsim_git_commit"] = subprocess.run(
            ["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["flowsim_git_commit"] = None
    try:
        info["blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older NumPy: no dict mode
        pass
    return info


def write_json_atomic(path, data):
    """Write JSON to ``path`` atomically (``flowsim.io.write_json``: temp file + os.replace)."""
    write_json(path, data)


def best_of(fn, repeats):
    """Run ``fn()`` ``repeats`` times; return (best seconds, all seconds, last result)."""
    return interleaved({"fn": fn}, repeats)["fn"]


def interleaved(fns, repeats):
    """Time several callables in turn, round after round, so that a change in machine
    load during the benchmark hits all of them alike.

    Parameters
    ----------
    fns : dict of str -> callable
    repeats : int

    Returns
    -------
    dict of str -> (best seconds, all seconds, last result)
    """
    times = {k: [] for k in fns}
    results = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (min(times[k]), times[k], results[k]) for k in fns}


_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import flowsim
from flowsim import Model, Stop, simulate
out = {"import_seconds": time.perf_counter() - t0, "calls": {}}
for label, kwargs, t_max, call in json.loads(sys.argv[1]):
    kwargs = dict(kwargs)
    model = Model(**kwargs)
    call = dict(call)
    if "stop_max_nnz" in call:
        call["stop"] = Stop(max_nnz=call.pop("stop_max_nnz"))
    a = time.perf_counter()
    tr = simulate(model, t_max, **call)
    b = time.perf_counter()
    simulate(model, t_max, **call)
    c = time.perf_counter()
    out["calls"][label] = {"first_call_seconds": b - a, "second_call_seconds": c - b,
                           "flowsim_compile_seconds": tr.stats.compile_seconds}
print(json.dumps(out))
"""


def compile_times(calls):
    """numba compile time of the kernels used by ``calls``, from two fresh subprocesses.

    The first subprocess runs with ``NUMBA_CACHE_DIR`` set to a new empty directory
    (cold: compile + run), the second reuses that directory (warm: load from cache + run).
    ``calls`` is a list of ``(label, model kwargs, t_max, simulate kwargs)`` run in order;
    each is run twice in-process, the second time warm.

    Returns
    -------
    dict
        Per label: cold and warm first-call seconds, ``compile_seconds`` = their
        difference, the in-process second call, and flowsim's own compile timer.
    """
    with tempfile.TemporaryDirectory(prefix="flowsim-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = {}
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(calls)],
                                  env=env, capture_output=True, text=True, check=True)
            runs[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[kind]["process_seconds"] = time.perf_counter() - t0
    result = {"cold_process_seconds": runs["cold"]["process_seconds"],
              "warm_process_seconds": runs["warm"]["process_seconds"],
              "cold_import_seconds": runs["cold"]["import_seconds"],
              "warm_import_seconds": runs["warm"]["import_seconds"], "calls": {}}
    for label, *_ in calls:
        cold, warm = runs["cold"]["calls"][label], runs["warm"]["calls"][label]
        result["calls"][label] = {
            "cold_first_call_seconds": cold["first_call_seconds"],
            "warm_cache_first_call_seconds": warm["first_call_seconds"],
            "in_process_warm_seconds": warm["second_call_seconds"],
            "compile_seconds": max(cold["first_call_seconds"] - warm["first_call_seconds"], 0.0),
            "flowsim_reported_compile_seconds": cold["flowsim_compile_seconds"],
        }
    result["total_compile_seconds"] = sum(c["compile_seconds"] for c in result["calls"].values())
    return result


def print_table(header, rows):
    """Print rows (lists of str) as an aligned table with a header line."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def fmt(x, digits=3):
    """Compact number formatting for tables."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------- baselines


def numpy_prox_euler(W, lam, h, steps):
    """Plain NumPy proximal Euler with all forces on (c = 1): ``steps`` steps from W.

    Each step: ``G = W Wᵀ``, ``P = ReLU(G)`` with zero diagonal,
    ``F = (1 - diag G) W - P W``, then ``W ← S_{hλ}(W + h F)``.
    """
    W = np.array(W, dtype=np.float64)
    for _ in range(steps):
        G = W @ W.T
        norms = np.diag(G).copy()
        np.fill_diagonal(G, 0.0)
        np.maximum(G, 0.0, out=G)
        F = (1.0 - norms)[:, None] * W - G @ W
        V = W + h * F
        W = np.sign(V) * np.maximum(np.abs(V) - h * lam, 0.0)
    return W


def reference_steps(W, model, h, steps, method):
    """``steps`` steps of ``flowsim.forces.reference_step`` (the NumPy oracle)."""
    for _ in range(steps):
        W = reference_step(W, model, h, method)
    return W


def numpy_row_euler(w, lam, dt, steps):
    """The paper's NumPy Euler on one row's |w| (c = 1), pruning weights that reach 0.

    Returns
    -------
    w : ndarray
        The surviving weights.
    active_updates : int
        Σ over steps of the number of weights updated.
    """
    active = 0
    for _ in range(steps):
        active += w.size
        w = w + dt * ((1.0 - (w * w).sum()) * w - lam)
        w = w[w > 0]
    return w, active


# ---------------------------------------------------------------- cases


def bench_dense(cfg, repeats):
    n, m, lam, dt, t_max = (cfg[k] for k in ("dense_n", "dense_m", "dense_lam", "dense_dt", "dense_tmax"))
    model = Model(n=n, m=m, lam=lam, seed=0)
    W0 = model.initial_weights()
    steps = int(round(t_max / dt))
    coords = n * m * steps
    out = {"n": n, "m": m, "lam": lam, "dt": dt, "t_max": t_max, "steps": steps,
           "all_forces_on": True, "methods": {}}
    for method in METHODS:
        fns = {"flowsim": lambda: simulate(model, t_max, method=method, dt=dt, W0=W0, save_at=[])}
        fns["flowsim"]()  # warm-up
        if method == "euler":
            fns["numpy_prox_euler"] = lambda: numpy_prox_euler(W0, lam, dt, steps)
        fns["reference_step"] = lambda: reference_steps(W0, model, dt, steps, method)
        res = interleaved(fns, repeats)
        fs_best, fs_all, traj = res.pop("flowsim")
        assert traj.stats.steps == steps, traj.stats
        rec = {"flowsim_seconds": fs_best, "flowsim_all_seconds": fs_all,
               "flowsim_wall_seconds_stat": traj.stats.wall_seconds,
               "flowsim_compile_seconds_in_process": traj.stats.compile_seconds,
               "flowsim_coord_updates_per_s": coords / fs_best,
               "final_nnz": int(np.count_nonzero(traj.W)),
               "final_live_columns": int(np.count_nonzero(np.any(traj.W != 0, axis=0))),
               "baselines": {}}
        for name, (b_best, b_all, Wb) in res.items():
            rec["baselines"][name] = {
                "seconds": b_best, "all_seconds": b_all, "coord_updates_per_s": coords / b_best,
                "speedup": b_best / fs_best,
                "max_abs_diff_final_W": float(np.abs(Wb - traj.W).max())}
        out["methods"][method] = rec
    return out


def bench_row(cfg, repeats):
    m, lam, dt = cfg["row_m"], cfg["row_lam"], cfg["row_dt"]
    model = Model(n=1, m=m, lam=lam, interference=False, init_std=0.9 / math.sqrt(m), seed=0)
    W0 = model.initial_weights()
    out = {"m": m, "lam": lam, "dt": dt, "init_std": model.std, "intervals": {}}
    for label, (ta, tb) in (("early", cfg["row_early"]), ("late", cfg["row_late"])):
        steps = int(round((tb - ta) / dt))
        if ta == 0:
            Wa, w_start = W0, np.abs(W0[0])
        else:  # state at ta from the baseline itself (|w| sorted, pruned), untimed
            w_start, _ = numpy_row_euler(np.sort(np.abs(W0[0])), lam, dt, int(round(ta / dt)))
            Wa = np.zeros((1, m))
            Wa[0, : w_start.size] = w_start
        T = tb - ta
        coords = m * steps
        fns = {"numpy_euler": lambda: numpy_row_euler(w_start, lam, dt, steps)}
        for method in METHODS:
            fns[method] = functools.partial(simulate, model, T, method=method, dt=dt, W0=Wa, save_at=[])
            fns[method]()  # warm-up
        res = interleaved(fns, repeats)
        b_best, b_all, (w_end, b_active) = res["numpy_euler"]
        rec = {"t_start": ta, "t_end": tb, "steps": steps, "nnz_start": int(w_start.size),
               "baseline_numpy_euler": {
                   "seconds": b_best, "all_seconds": b_all, "nnz_end": int(w_end.size),
                   "active_updates": int(b_active), "coord_updates_per_s": coords / b_best,
                   "active_updates_per_s": b_active / b_best},
               "methods": {}}
        per_step = np.arange(steps + 1) * dt
        for method in METHODS:
            fs_best, fs_all, traj = res[method]
            assert traj.stats.steps == steps, traj.stats
            # untimed run saving at every step: nonzeros at each step start
            nnz = simulate(model, T, method=method, dt=dt, W0=Wa, save_at=per_step).nnz[:, 0]
            active = int(nnz[:steps].sum())
            rr = {"flowsim_seconds": fs_best, "flowsim_all_seconds": fs_all,
                  "nnz_end": int(traj.nnz[-1, 0]), "active_updates": active,
                  "coord_updates_per_s": coords / fs_best, "active_updates_per_s": active / fs_best,
                  "speedup_vs_numpy_euler": b_best / fs_best}
            if method == "euler":
                a = np.sort(np.abs(traj.W[0][traj.W[0] != 0]))
                rr["max_abs_diff_vs_baseline"] = (float(np.abs(a - np.sort(w_end)).max())
                                                  if a.size == w_end.size else None)
            rec["methods"][method] = rr
        out["intervals"][label] = rec
    return out


def compile_section():
    calls_rows = [[f"rows-{me}", dict(n=1, m=1000, lam=1e-3, interference=False), 1.0,
                   dict(method=me, dt=0.1)] for me in METHODS]
    calls_dense = [[f"dense-{me}", dict(n=8, m=64, lam=0.01), 1.0, dict(method=me, dt=0.1)]
                   for me in METHODS]
    return {"rows_engine": compile_times(calls_rows), "dense_engine": compile_times(calls_dense)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 60 s), e.g. for CI")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_steppers.json"),
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    data = {"benchmark": "bench_steppers", "quick": args.quick, "repeats": args.repeats,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__, "config": cfg}
    data["compile"] = compile_section()
    data["dense"] = bench_dense(cfg, args.repeats)
    data["row"] = bench_row(cfg, args.repeats)
    finish(data, args.json, t_start, report)


def finish(data, path, t_start, report):
    """Record the total time and load, write the JSON atomically and print the report."""
    data["total_seconds"] = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        data["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(path, data)
    report(data)
    print(f"\nwrote {path} ({data['total_seconds']:.1f} s)")


def compile_rows(compile_data):
    """Table rows of the compile-time section (one per call, one total per engine)."""
    rows = []
    for eng, c in compile_data.items():
        for label, x in c["calls"].items():
            rows.append([label, fmt(x["cold_first_call_seconds"]), fmt(x["warm_cache_first_call_seconds"]),
                         fmt(x["compile_seconds"]), fmt(x["flowsim_reported_compile_seconds"]),
                         fmt(x["in_process_warm_seconds"])])
        rows.append([f"{eng} total", "", "", fmt(c["total_compile_seconds"]), "", ""])
    return rows


COMPILE_HEADER = ["engine-method", "cold 1st call s", "warm-cache 1st s", "compile s",
                  "RunStats.compile s", "in-process warm s"]


def report(data):
    mach = data["machine"]
    print(f"flowsim {data['flowsim_version']} ({mach.get('flowsim_git_commit')}) | "
          f"{mach.get('cpu_model')} x{mach['cpu_count']} | "
          f"numpy {mach['numpy']}, numba {mach['numba']}, scipy {mach['scipy']} | {data['date_utc']}"
          f"{' | QUICK sizes' if data['quick'] else ''}")
    d = data["dense"]
    print(f"\n(a) dense: n={d['n']}, m={d['m']}, all forces on, lam={d['lam']}, dt={d['dt']}, "
          f"{d['steps']} steps; best of {data['repeats']}; rate = n*m*steps/s")
    rows = []
    for method, r in d["methods"].items():
        for name, b in r["baselines"].items():
            rows.append([method, name, fmt(b["seconds"]), fmt(r["flowsim_seconds"]),
                         fmt(b["coord_updates_per_s"] / 1e6), fmt(r["flowsim_coord_updates_per_s"] / 1e6),
                         f"{b['speedup']:.2f}x", fmt(b["max_abs_diff_final_W"], 2)])
    print_table(["method", "baseline", "base s", "flowsim s", "base Mupd/s", "flowsim Mupd/s",
                 "speedup", "max|dW|"], rows)
    r = data["row"]
    print(f"\n(b) one row: m={r['m']}, interference off, lam={r['lam']:g}, dt={r['dt']}; "
          f"baseline = NumPy Euler on |w| with pruning; rates per second")
    rows = []
    for label, iv in r["intervals"].items():
        b = iv["baseline_numpy_euler"]
        span = f"{label} t=[{iv['t_start']:g},{iv['t_end']:g}] m'={iv['nnz_start']}->{b['nnz_end']}"
        rows.append([span, "numpy euler", iv["steps"], fmt(b["seconds"]),
                     fmt(b["coord_updates_per_s"] / 1e6), fmt(b["active_updates_per_s"] / 1e6), "1x"])
        for method, x in iv["methods"].items():
            rows.append(["", f"flowsim {method}", iv["steps"], fmt(x["flowsim_seconds"]),
                         fmt(x["coord_updates_per_s"] / 1e6), fmt(x["active_updates_per_s"] / 1e6),
                         f"{x['speedup_vs_numpy_euler']:.1f}x"])
    print_table(["interval", "stepper", "steps", "seconds", "M upd/s (n*m)", "M active upd/s",
                 "speedup"], rows)
    print("\nnumba compile time (fresh subprocess, empty NUMBA_CACHE_DIR, minus warm-cache first call)")
    print_table(COMPILE_HEADER, compile_rows(data["compile"]))

if __name__ == "__main__":
    main()
