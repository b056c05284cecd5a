"""Is Figure 3 a property of the flow? The final supports of each step-size setting
against a tight reference (issue 10).

    python benchmarks/study_dt.py [--quick] [--seeds 8] [--m 256 1024 4096] [--workers 2]
                                  [--json PATH]

Every run is a Figure 3 run (n = 256, λ = 0.01, c = 1, W0 from the seed, to convergence:
supports unchanged and max|ΔW|/Δt <= 1e-6 over a window of 50). For each setting and run
it records whether the final support differs from the reference's (and in how many
entries), the largest weight difference, the polysemantic count (|W_ik| > 0.5, as
``flowsim.polysemantic``), steps, force evaluations, rejected steps and run time (numba
compile excluded). The settings (``SETTINGS``): euler at dt 0.1 (the old default), 0.25
and 0.05, heun at dt 0.1, bs32 at its default tolerance (rtol 1e-3, atol 1e-6) and at
rtol 1e-4, against rk4 at
dt = 0.01. Runs go to a process pool, largest first; results are written atomically to
benchmarks/results/study_dt.json with the machine and flowsim version.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time

# one BLAS thread per worker process: two workers with two spinning BLAS threads each on
# two cores made dense steps 10-20x slower (measured: 48 ms instead of ~3 ms at n = 64,
# m = 512); set before numpy is imported so that the workers inherit it
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import flowsim  # noqa: E402
from bench_steppers import machine_info  # noqa: E402
from flowsim import metrics  # noqa: E402
from flowsim.io import write_json  # noqa: E402

REFERENCE = "rk4 dt=0.01"
SETTINGS = {
    "euler dt=0.1": dict(method="euler", dt=0.1),
    "euler dt=0.25": dict(method="euler", dt=0.25),
    "euler dt=0.05": dict(method="euler", dt=0.05),
    "heun dt=0.1": dict(method="heun", dt=0.1),
    "bs32 (rtol=1e-3)": dict(method="bs32"),
    "bs32 rtol=1e-4": dict(method="bs32", rtol=1e-4, atol=1e-7),
    REFERENCE: dict(method="rk4", dt=0.01),
}
FIGURE3 = dict(lam=0.01, c=1.0, t_max=3000.0, tol=1e-6, window=50.0)


def one_run(n, m, seed, name):
    """One Figure 3 run; returns its record (the final W as its nonzeros)."""
    model = flowsim.Model(n=n, m=m, lam=FIGURE3["lam"], c=FIGURE3["c"], seed=seed)
    tr = flowsim.simulate(model, FIGURE3["t_max"], save_at=[],
                          stop=flowsim.Stop(tol=FIGURE3["tol"], window=FIGURE3["window"]), **SETTINGS[name])
    s = tr.stats
    idx = np.flatnonzero(tr.W)
    return dict(n=n, m=m, seed=seed, setting=name, options={k: v for k, v in tr.options.items() if k != "W0"},
                status=s.status, t_converged=None if s.status != "converged" else s.t_converged,
                steps=s.steps, force_evals=s.force_evals, rejected=s.rejected, h_min=s.h_min, h_max=s.h_max,
                run_seconds=s.wall_seconds, compile_seconds=s.compile_seconds,
                polysemantic=metrics.count_polysemantic(tr.W), nz_index=idx.tolist(), nz_value=tr.W.ravel()[idx].tolist())


def compare(run, ref):
    a = dict(zip(run["nz_index"], run["nz_value"]))
    b = dict(zip(ref["nz_index"], ref["nz_value"]))
    differ = len(set(a) ^ set(b))
    diff = max([abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)], default=0.0)
    return differ, diff


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n = 32, m = 64 and 128, 2 seeds (about a minute)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--m", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=os.path.join(HERE, "results", "study_dt.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.m, args.seeds = 32, [64, 128], 2
    tick = time.perf_counter()
    load0 = os.getloadavg()
    tasks = [(args.n, m, seed, name) for m in sorted(args.m, reverse=True) for seed in range(args.seeds)
             for name in [REFERENCE] + [k for k in SETTINGS if k != REFERENCE]]
    records = []
    with cf.ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, *t) for t in tasks]
        for k, f in enumerate(cf.as_completed(futures)):
            r = f.result()
            records.append(r)
            print(f"[{k + 1}/{len(tasks)}] m={r['m']} seed={r['seed']} {r['setting']}: {r['status']}, "
                  f"{r['steps']} steps, {r['run_seconds']:.2f} s", file=sys.stderr, flush=True)
    ref = {(r["m"], r["seed"]): r for r in records if r["setting"] == REFERENCE}
    summary = {}
    for name in SETTINGS:
        rows = [r for r in records if r["setting"] == name]
        per_m = {}
        for m in sorted(args.m):
            sel = [r for r in rows if r["m"] == m]
            cmp = [compare(r, ref[(m, r["seed"])]) for r in sel]
            per_m[m] = dict(runs=len(sel), differing_runs=sum(d > 0 for d, _ in cmp),
                            differing_entries=[d for d, _ in cmp], max_abs_diff=max(x for _, x in cmp),
                            polysemantic_differs=sum(r["polysemantic"] != ref[(m, r["seed"])]["polysemantic"]
                                                     for r in sel),
                            converged=sum(r["status"] == "converged" for r in sel),
                            mean_run_seconds=float(np.mean([r["run_seconds"] for r in sel])),
                            mean_force_evals=float(np.mean([r["force_evals"] for r in sel])))
        summary[name] = dict(per_m=per_m, differing_runs=sum(v["differing_runs"] for v in per_m.values()),
                             mean_run_seconds_at_max_m=per_m[max(args.m)]["mean_run_seconds"])
    matching = [k for k, v in summary.items() if v["differing_runs"] == 0 and k != REFERENCE]
    fastest = min(matching, key=lambda k: summary[k]["mean_run_seconds_at_max_m"]) if matching else None
    data = dict(study="dt", reference=REFERENCE, settings=SETTINGS, figure3=FIGURE3, n=args.n, m=args.m,
                seeds=args.seeds, workers=args.workers, summary=summary, matching_every_run=matching,
                fastest_matching=fastest, wall_seconds=time.perf_counter() - tick,
                load_average_start=load0, load_average_end=os.getloadavg(), machine=machine_info(),
                blas_threads=os.environ.get("OPENBLAS_NUM_THREADS"),
                quick=args.quick, runs=[{k: v for k, v in r.items() if not k.startswith("nz_")} for r in records])
    write_json(args.json, data)
    print(f"\nreference {REFERENCE}; n={args.n}, {args.seeds} seeds per m; runs differing from the reference "
          f"(final support), mean run seconds at m={max(args.m)}")
    print(f"{'setting':18s} " + " ".join(f"m={m:<6d}" for m in sorted(args.m)) + "  seconds  evals")
    for name, v in summary.items():
        cells = " ".join(f"{v['per_m'][m]['differing_runs']:>2d}/{v['per_m'][m]['runs']:<4d}" for m in sorted(args.m))
        top = v["per_m"][max(args.m)]
        print(f"{name:18s} {cells}  {top['mean_run_seconds']:7.2f}  {top['mean_force_evals']:8.0f}")
    print(f"fastest setting matching the reference on every run: {fastest}")
    print(f"wrote {args.json} ({data['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
