"""One Figure 3 run (issue 10): the Figure 3 default against euler dt = 0.1 (the old
default), side by side in one process, each against a tight reference.

    python benchmarks/bench_adaptive.py [--quick] [--seed 0] [--repeats 2] [--json PATH]
                                       [--settings NAME ...] [--no-reference] [--blas-threads N]

For each setting (names of ``study_dt.SETTINGS``) the run is driven through the marks
T = 5, 10, 20, 50 to convergence (supports unchanged and max|ΔW|/Δt <= 1e-6 over a window
of 50), recording the wall time, steps and force evaluations at each mark (the per-phase
table; an adaptive run stops at its last step before a mark, so the mark's time is the
one reached). Repeats are interleaved and the best is reported; the reference (rk4 at
dt = 0.01) runs once. Accuracy: final supports and weights against the reference.
numba compile time is measured apart (warm-up before timing).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from flowsim import Model, metrics  # noqa: E402
from flowsim import _adaptive as A  # noqa: E402
from flowsim import _engines as E  # noqa: E402
from flowsim import _kernels as K  # noqa: E402
from flowsim.integrate import ADAPTIVE_METHODS, H_CAP, SPARSE_BELOW, TOLERANCES, initial_step  # noqa: E402

from bench_steppers import finish, machine_info, print_table  # noqa: E402
from study_dt import REFERENCE, SETTINGS  # noqa: E402

FULL = dict(n=256, m=4096, lam=0.01, marks=(5.0, 10.0, 20.0, 50.0), tol=1e-6, window=50.0, t_cap=3000.0)
QUICK = dict(n=64, m=512, lam=0.01, marks=(5.0, 10.0, 20.0, 50.0), tol=1e-6, window=50.0, t_cap=3000.0)
DEFAULT_SETTINGS = ("euler dt=0.1", "bs32 (rtol=1e-3)")


def drive(model, setting, cfg):
    """Run one setting from W0 through the marks to convergence (as ``simulate`` drives an
    engine: chunks of about 0.2 s). Returns (rows per mark, final W)."""
    spec = SETTINGS[setting]
    method = spec["method"]
    W = model.initial_weights()
    out = np.zeros(K.OUT_SIZE)
    if method in ADAPTIVE_METHODS:
        rtol, atol = spec.get("rtol", TOLERANCES["adaptive"][0]), spec.get("atol", TOLERANCES["adaptive"][1])
        A.start(out, initial_step(W, model, rtol, atol), H_CAP / model.c)
        engine = E.make_engine(W, model, method, SPARSE_BELOW, rtol, atol, cfg["t_cap"])
        dt = 0.0
    else:
        engine = E.make_engine(W, model, method, SPARSE_BELOW)
        dt = spec["dt"]
    t, j, jmax, status = 0.0, 0, 64, K.STATUS_DONE
    rows, tick = [], time.perf_counter()
    for target in list(cfg["marks"]) + [cfg["t_cap"]]:
        while t < target - 1e-9 and status not in (K.STATUS_CONVERGED, K.STATUS_NONFINITE):
            a = time.perf_counter()
            engine.run(t, j, target, dt, jmax, -1, cfg["tol"], cfg["window"], out)
            took = time.perf_counter() - a
            t_new, j, status = float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])
            jmax = int(min(max(jmax * min(0.2 / max(took, 1e-4), 4.0), 1), 1 << 40))
            if status == K.STATUS_DONE and t_new < target and t_new == t:
                break  # an adaptive run stops before a step that would pass the mark
            t = t_new
        nnz = np.count_nonzero(engine.W)
        rows.append(dict(t=t, wall=time.perf_counter() - tick, steps=j, force_evals=int(out[K.OUT_EVALS]),
                         rejected=int(out[K.OUT_REJECTED]), density=nnz / engine.W.size))
        if status in (K.STATUS_CONVERGED, K.STATUS_NONFINITE):
            break
    rows[-1]["status"] = {K.STATUS_CONVERGED: "converged"}.get(status, "not converged")
    return rows, engine.W.copy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"n = {QUICK['n']}, m = {QUICK['m']} (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS))
    p.add_argument("--no-reference", action="store_true", help="skip the reference run (no accuracy)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_adaptive.json"))
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS to N threads in this process (threadpoolctl; default: as configured)")
    args = p.parse_args(argv)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads, user_api="blas")
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    model = Model(n=cfg["n"], m=cfg["m"], lam=cfg["lam"], seed=args.seed)
    compile_s = {}
    for name in args.settings + ([] if args.no_reference else [REFERENCE]):
        method = SETTINGS[name]["method"]
        compile_s[method] = E.warm_up(model, method)
    best = {}
    for _ in range(args.repeats):
        for name in args.settings:
            rows, W = drive(model, name, cfg)
            if name not in best or rows[-1]["wall"] < best[name][0][-1]["wall"]:
                best[name] = (rows, W)
    data = dict(machine=machine_info(), config=dict(cfg, seed=args.seed), repeats=args.repeats,
                blas_threads=args.blas_threads,
                compile_seconds=compile_s, quick=args.quick, settings={k: SETTINGS[k] for k in args.settings})
    ref_W = None
    if not args.no_reference:
        rows, ref_W = drive(model, REFERENCE, cfg)
        best[REFERENCE] = (rows, ref_W)
    runs = {}
    for name, (rows, W) in best.items():
        r = dict(phases=rows, polysemantic=metrics.count_polysemantic(W))
        if ref_W is not None:
            r["support_entries_differing"] = int(np.count_nonzero((W != 0) != (ref_W != 0)))
            r["max_abs_diff_W"] = float(np.abs(W - ref_W).max())
        runs[name] = r
    base = args.settings[0]
    for name in args.settings[1:]:
        runs[name]["to_convergence_ratio_vs_" + base] = runs[base]["phases"][-1]["wall"] / runs[name]["phases"][-1]["wall"]
        mark = min(len(runs[base]["phases"]), len(runs[name]["phases"])) - 2
        if mark >= 0:
            runs[name]["fixed_horizon_ratio_vs_" + base] = dict(
                T=cfg["marks"][mark], ratio=runs[base]["phases"][mark]["wall"] / runs[name]["phases"][mark]["wall"])
    data["runs"] = runs
    finish(data, args.json, t_start, report)


def report(data):
    cfg = data["config"]
    print(f"Figure 3 run n={cfg['n']} m={cfg['m']} lam={cfg['lam']} seed={cfg['seed']}, to convergence "
          f"(tol {cfg['tol']}, window {cfg['window']}); best of {data['repeats']}; compile (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in data["compile_seconds"].items()))
    for name, r in data["runs"].items():
        acc = (f"; vs {REFERENCE}: {r['support_entries_differing']} support entries differ, max|dW| "
               f"{r['max_abs_diff_W']:.2e}" if "max_abs_diff_W" in r else "")
        print(f"\n{name}: polysemantic {r['polysemantic']}, {r['phases'][-1]['status']}{acc}")
        print_table(["T reached", "wall s", "steps", "force evals", "rejected", "density"],
                    [[f"{x['t']:.2f}", f"{x['wall']:.3f}", x["steps"], x["force_evals"], x["rejected"],
                      f"{x['density']:.4f}"] for x in r["phases"]])
        for key, v in r.items():
            if key.startswith(("to_convergence", "fixed_horizon")):
                print(f"  {key}: {v}")


if __name__ == "__main__":
    main()
