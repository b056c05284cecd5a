"""Benchmark of the adaptive rows engine (bs32) against rk4 at dt = 0.5 (issue 10).

Usage::

    python benchmarks/bench_adaptive_rows.py [--quick] [--json PATH] [--repeats R] [--rtol R] [--atol A]

Problem (the paper's Figure 2, as ``bench_sparsify.py``): one row, m = 10^5,
λ = 10^-5, initial weights N(0, (0.9/√m)²) with seed 0, interference off, c = 1, run
until m′ = 1 (``stop_nnz = 1``). ``--quick``: m = 2000, λ = 10^-4.

Both engines are driven directly (``AdaptiveRowsEngine`` at rtol, atol; ``RowsEngine``
rk4 at dt = 0.5), warm (kernels loaded or compiled before timing), best of R
interleaved repeats. Reported:

* to m′ = 1 and to a fixed horizon (half the exact time to m′ = 1): wall seconds,
  accepted steps, rejected trials, force evaluations, and their ratios;
* a per-phase table (time intervals): steps and wall seconds of each engine;
* errors against the exact ``reduced`` solution (rtol 1e-13, atol 1e-15): relative
  error of ‖W‖₁ and |Δm′| at common times (multiples of dt, the adaptive run reaching
  them by side runs as ``integrate`` does), and the error in the time m′ reaches 1
  (a run knows it only to within its last step);
* numba compile time of the adaptive kernel, from fresh subprocesses (empty cache vs
  warm cache), apart from the run times.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import flowsim  # noqa: E402
from flowsim.integrate import H_CAP  # noqa: E402
from flowsim import Model, Stop, simulate  # noqa: E402
from flowsim import _adaptive  # noqa: E402
from flowsim import _kernels as K  # noqa: E402
from flowsim._adaptive_rows import AdaptiveRowsEngine  # noqa: E402
from flowsim._engines import RowsEngine  # noqa: E402

from bench_steppers import finish, fmt, machine_info, print_table  # noqa: E402

FULL = dict(m=100_000, lam=1e-5, seed=0, dt=0.5, fine_dt=0.1, t_cap=4e5, h0=0.5, n_times=25)
QUICK = dict(m=2_000, lam=1e-4, seed=0, dt=0.5, fine_dt=0.1, t_cap=4e4, h0=0.5, n_times=15)
#: The runs compared: name -> (engine, dt of rk4).
KINDS = {"bs32": ("bs32", None), "rk4": ("rk4", "dt"), "rk4_fine": ("rk4", "fine_dt")}
BIG = 1 << 40
REDUCED_TOL = dict(rtol=1e-13, atol=1e-15)


class Driver:
    """One engine on a copy of W0 with its out array; ``run_to(t1, stop_nnz)`` advances
    it (for the adaptive engine: as far as it can without passing t1, t_end fixed)."""

    def __init__(self, kind, model, W0, cfg):
        self.kind, self.cfg = KINDS[kind][0], cfg
        self.dt = cfg[KINDS[kind][1]] if KINDS[kind][1] else 0.0
        self.out = np.zeros(K.OUT_SIZE)
        if self.kind == "bs32":
            self.engine = AdaptiveRowsEngine(W0.copy(), model, "bs32", cfg["rtol"], cfg["atol"], cfg["t_cap"])
            _adaptive.start(self.out, cfg["h0"], H_CAP / model.c)  # as simulate() does
        else:
            self.engine = RowsEngine(W0.copy(), model, "rk4")
        self.t, self.j = 0.0, 0

    def run_to(self, t1, stop_nnz=-1):
        self.engine.run(self.t, self.j, t1, self.dt, BIG, stop_nnz, -1.0, 1.0, self.out)
        self.t, self.j = float(self.out[K.OUT_T]), int(self.out[K.OUT_J])
        return int(self.out[K.OUT_STATUS])

    def at(self, t_save):
        """(‖W‖₁, m′) at t_save >= self.t (adaptive: a side run on a fork, as integrate does)."""
        if self.kind == "bs32":
            side = self.engine.fork()
            side.t_end = t_save
            out = self.out.copy()
            side.run(self.t, self.j, t_save, 0.0, BIG, -1, -1.0, 1.0, out)
            assert out[K.OUT_T] == t_save
            W = side.W
        else:
            assert self.t == t_save
            W = self.engine.W
        return float(np.abs(W).sum()), int(np.count_nonzero(W))

    def record(self):
        return dict(t=self.t, steps=self.j, rejected=int(self.out[K.OUT_REJECTED]),
                    force_evals=int(self.out[K.OUT_EVALS]), status=int(self.out[K.OUT_STATUS]),
                    h_min=float(self.out[K.OUT_HMIN]) if self.kind == "bs32" else self.dt,
                    h_max=float(self.out[K.OUT_HMAX]) if self.kind == "bs32" else self.dt)


def timed_run(kind, model, W0, cfg, t1, stop_nnz):
    """One run from W0 to t1 (or m′ <= stop_nnz); the engine's set-up (sorting the row,
    the same for both engines) is timed apart from the run."""
    tick = time.perf_counter()
    d = Driver(kind, model, W0, cfg)
    tock = time.perf_counter()
    d.run_to(t1, stop_nnz)
    return dict(d.record(), seconds=time.perf_counter() - tock, setup_seconds=tock - tick)


def accuracy(kind, model, W0, cfg, times, ref_l1, ref_nnz, t_ref):
    """Errors against the reduced solution at ``times`` and in the time m′ reaches 1."""
    d = Driver(kind, model, W0, cfg)
    l1, nnz = [], []
    for t_save in times:
        d.run_to(t_save)
        a, b = d.at(t_save)
        l1.append(a)
        nnz.append(b)
    d.run_to(cfg["t_cap"], 1)
    l1, nnz = np.array(l1), np.array(nnz)
    rel = np.abs(l1 - ref_l1) / ref_l1
    dm = np.abs(nnz - ref_nnz)
    k = int(np.argmax(rel))
    return dict(l1=l1.tolist(), nnz=nnz.tolist(), l1_rel_err_max=float(rel.max()), l1_rel_err_at=float(times[k]),
                nnz_abs_err_max=int(dm.max()), nnz_times_differing=int(np.count_nonzero(dm)),
                nnz_rel_err_max=float(np.max(dm / ref_nnz)), t_nnz1=d.t, t_nnz1_err=d.t - t_ref,
                last_step_bound=d.record()["h_max"])


def phases(model, W0, cfg, bounds, repeats):
    """Steps, rejections and wall seconds (best of ``repeats``) of each engine over the
    time intervals ``bounds`` (chunked runs: the chunking does not change the numbers)."""
    res = {}
    for kind in ("bs32", "rk4"):
        for _ in range(repeats):
            d = Driver(kind, model, W0, cfg)
            rows = []
            for t1 in bounds[1:]:
                j0, r0, t0 = d.j, d.out[K.OUT_REJECTED], d.t
                tick = time.perf_counter()
                d.run_to(t1, 1)
                rows.append(dict(t_from=t0, t_to=d.t, steps=d.j - j0, rejected=int(d.out[K.OUT_REJECTED] - r0),
                                 seconds=time.perf_counter() - tick, nnz_end=int(np.count_nonzero(d.engine.W))))
            if kind in res:
                for old, row in zip(res[kind], rows):
                    old["seconds"] = min(old["seconds"], row["seconds"])
            else:
                res[kind] = rows
    return res


_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from flowsim import Model, _adaptive, _kernels as K
from flowsim._adaptive_rows import AdaptiveRowsEngine
imp = time.perf_counter() - t0
model = Model(n=1, m=50, lam=1e-3, interference=False)
times = []
for _ in range(2):
    eng = AdaptiveRowsEngine(model.initial_weights(), model, "bs32", 1e-6, 1e-9, 5.0)
    out = np.zeros(K.OUT_SIZE); _adaptive.start(out, 0.1)
    t1 = time.perf_counter()
    eng.run(0.0, 0, 5.0, 0.0, 1 << 40, -1, -1.0, 1.0, out)
    times.append(time.perf_counter() - t1)
print(json.dumps(dict(import_seconds=imp, first=times[0], second=times[1])))
"""


def compile_time():
    """First-call seconds of the adaptive kernel in a fresh process with an empty numba
    cache (compile) and with the cache it left (load); compile = their difference."""
    with tempfile.TemporaryDirectory(prefix="flowsim-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = {}
        for kind in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                                  check=True)
            runs[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(cold_first_call_seconds=runs["cold"]["first"], warm_cache_first_call_seconds=runs["warm"]["first"],
                in_process_second_call_seconds=runs["warm"]["second"],
                compile_seconds=max(runs["cold"]["first"] - runs["warm"]["first"], 0.0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_adaptive_rows.json"),
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-9)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    cfg = dict(QUICK if args.quick else FULL, rtol=args.rtol, atol=args.atol)
    m, dt = cfg["m"], cfg["dt"]
    model = Model(n=1, m=m, lam=cfg["lam"], interference=False, init_std=0.9 / math.sqrt(m), seed=cfg["seed"])
    W0 = model.initial_weights()
    data = {"benchmark": "bench_adaptive_rows", "quick": args.quick, "repeats": args.repeats,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__, "config": cfg,
            "model": model.as_dict(), "reduced_tolerances": REDUCED_TOL}
    data["compile"] = compile_time()

    # ---- the exact solution: time to m' = 1, then the common times and values there
    tick = time.perf_counter()
    red = simulate(model, cfg["t_cap"], method="reduced", stop=Stop(max_nnz=1), **REDUCED_TOL)
    t_ref = float(red.stats.t_end)
    raw = np.geomspace(1.0, 0.98 * t_ref, cfg["n_times"])
    times = np.unique(np.maximum(np.round(raw / dt), 1) * dt)
    red = simulate(model, float(times[-1]), method="reduced", save_at=times, **REDUCED_TOL)
    on = np.isin(red.t, times)
    ref_l1, ref_nnz = red.l1[on, 0], red.nnz[on, 0]
    red_loose = simulate(model, float(times[-1]), method="reduced", save_at=times)  # default tolerances
    data["reduced"] = dict(t_nnz1=t_ref, times=times.tolist(), l1=ref_l1.tolist(), nnz=ref_nnz.tolist(),
                           seconds=time.perf_counter() - tick,
                           l1_rel_change_vs_default_tol=float(np.max(np.abs(red_loose.l1[on, 0] - ref_l1) / ref_l1)),
                           nnz_change_vs_default_tol=int(np.max(np.abs(red_loose.nnz[on, 0] - ref_nnz))))

    # ---- timed runs, warm, interleaved: to m' = 1 and to a fixed horizon
    t_fix = dt * round(0.5 * t_ref / dt)
    fns = {}
    for kind in KINDS:
        fns[f"{kind}_to_nnz1"] = lambda kind=kind: timed_run(kind, model, W0, cfg, cfg["t_cap"], 1)
        fns[f"{kind}_fixed"] = lambda kind=kind: timed_run(kind, model, W0, cfg, t_fix, -1)
    for fn in fns.values():
        fn()  # warm-up
    recs = {name: [] for name in fns}
    for _ in range(args.repeats):  # interleaved, so that a change of load hits all alike
        for name, fn in fns.items():
            recs[name].append(fn())
    runs = {}
    for name, rs in recs.items():
        alls = [r["seconds"] for r in rs]
        runs[name] = dict(rs[-1], seconds=min(alls), all_seconds=alls,
                          setup_seconds=min(r["setup_seconds"] for r in rs))
    for goal in ("to_nnz1", "fixed"):
        for other in ("rk4", "rk4_fine"):
            a, b = runs[f"bs32_{goal}"], runs[f"{other}_{goal}"]
            runs[f"ratio_{goal}_{other}"] = dict(wall_over_bs32=b["seconds"] / a["seconds"],
                                                 steps_over_bs32=b["steps"] / a["steps"],
                                                 evals_over_bs32=b["force_evals"] / a["force_evals"])
    data["t_fixed"] = t_fix
    data["runs"] = runs
    bounds = [0.0] + [b for b in (10.0, 100.0, 1000.0, 10000.0) if b < t_ref] + [cfg["t_cap"]]
    data["phases"] = phases(model, W0, cfg, bounds, args.repeats)
    data["accuracy"] = {kind: accuracy(kind, model, W0, cfg, times, ref_l1, ref_nnz, t_ref) for kind in KINDS}
    finish(data, args.json, t_start, report)


def report(data):
    mach, cfg = data["machine"], data["config"]
    print(f"flowsim {data['flowsim_version']} ({mach.get('flowsim_git_commit')}) | {mach.get('cpu_model')} "
          f"x{mach['cpu_count']} | numpy {mach['numpy']}, numba {mach['numba']} | {data['date_utc']}"
          f"{' | QUICK sizes' if data['quick'] else ''}")
    print(f"one row, m={cfg['m']}, lam={cfg['lam']:g}, init std 0.9/sqrt(m), seed {cfg['seed']}, no interference, "
          f"c=1; bs32 rtol={cfg['rtol']:g} atol={cfg['atol']:g} (h0={cfg['h0']:g}) vs rk4 dt={cfg['dt']:g} "
          f"(and dt={cfg['fine_dt']:g}); "
          f"warm, best of {data['repeats']}")
    runs = data["runs"]
    rows = []
    for goal, label in (("to_nnz1", "to m'=1"), ("fixed", f"to t={data['t_fixed']:g}")):
        for kind in KINDS:
            r = runs[f"{kind}_{goal}"]
            rows.append([f"{kind} {label}", fmt(r["t"], 9), r["steps"], r["rejected"], r["force_evals"],
                         fmt(r["h_min"]), fmt(r["h_max"]), f"{r['seconds']:.4f}", f"{r['setup_seconds']:.4f}"])
    print_table(["run", "t end", "steps", "rejected", "force evals", "h min", "h max", "run wall s",
                 "set-up s"], rows)
    for goal in ("to_nnz1", "fixed"):
        for other in ("rk4", "rk4_fine"):
            q = runs[f"ratio_{goal}_{other}"]
            print(f"  {other}/bs32 {goal}: wall {q['wall_over_bs32']:.2f}x, steps {q['steps_over_bs32']:.2f}x, "
                  f"force evals {q['evals_over_bs32']:.2f}x")
    print(f"\nper phase (wall s: best of {data['repeats']})")
    ph = data["phases"]
    rows = [[f"[{fmt(a['t_from'], 6)}, {fmt(a['t_to'], 6)}]", a["nnz_end"], a["steps"], a["rejected"],
             f"{a['seconds']:.4f}", b["steps"], f"{b['seconds']:.4f}"] for a, b in zip(ph["bs32"], ph["rk4"])]
    print_table(["interval (bs32)", "m' at end", "bs32 steps", "rejected", "bs32 s", "rk4 steps", "rk4 s"], rows)
    red = data["reduced"]
    print(f"\nerrors against reduced (exact; rtol 1e-13: t(m'=1) = {red['t_nnz1']:.6f}; ‖W‖₁ changes by "
          f"{red['l1_rel_change_vs_default_tol']:.1e} rel. with its default tolerances) at "
          f"{len(red['times'])} times in [{fmt(red['times'][0])}, {fmt(red['times'][-1], 7)}]")
    rows = []
    for kind, a in data["accuracy"].items():
        rows.append([kind, f"{a['l1_rel_err_max']:.2e}", fmt(a["l1_rel_err_at"], 7), a["nnz_abs_err_max"],
                     f"{a['nnz_times_differing']}/{len(red['times'])}", f"{a['nnz_rel_err_max']:.1e}",
                     f"{a['t_nnz1_err']:+.4f}", fmt(a["last_step_bound"])])
    print_table(["engine", "max rel err ‖W‖₁", "at t", "max |Δm'|", "times m' differs", "max rel Δm'",
                 "t(m'=1) err", "h max"], rows)
    c = data["compile"]
    print(f"\nnumba compile (fresh subprocess, empty cache vs warm cache, tiny problem): "
          f"cold 1st call {c['cold_first_call_seconds']:.2f} s, warm-cache 1st call "
          f"{c['warm_cache_first_call_seconds']:.3f} s -> compile {c['compile_seconds']:.2f} s")


if __name__ == "__main__":
    main()
