"""Benchmark of the sparse phase of the full dynamics (issue 9, "Figure 3 engine").

Usage::

    python benchmarks/bench_sparse_phase.py [--quick] [--json PATH] [--repeats R]
                                            [--sparse-below D] [--blas-threads N] [--no-compile]

Engines compared side by side in one process (kernels warm; numba compile time is
measured apart, in fresh subprocesses):

* **certified** -- the sparse engine of ``flowsim._kernels`` (bound (B) rules out the
  release of most zeros; see the notes of its sparse phase section), hand-over at
  ``--sparse-below`` (default 0.15, simulate's default: the crossover measured in (a)
  at m = 4096).
* **legacy** -- today's engine, commit f8da2ae: its sparse kernel (every zero a
  positive-Gram neighbour reaches is checked at every step) and its dense Euler step
  (three elementwise passes after the BLAS products), kept as
  ``DenseEngine(..., sparse_engine="legacy")``, hand-over at 0.15 as at f8da2ae.

Cases
-----
(a) hand-over: per-step wall time of a dense step and of a sparse step at densities
    0.4 ... 0.08 (states of a dense run, n = 256, m = 1024 and 4096, λ = 0.01, euler,
    dt = 0.1), best of R; the crossover is the largest density at which the sparse step
    is cheaper.
(b) dense phase: a dense step against its two BLAS products (n = 256, m = 4096).
(c) Figure 3 run, n = 256, m = 4096, λ = 0.01, c = 1, euler dt = 0.1, seed 0, to
    convergence (supports unchanged and max|ΔW|/Δt <= 1e-6 for 50 time units): wall time
    to reach T = 5, 10, 20, 50 and convergence, in chunks as ``simulate`` takes them;
    density and nonzeros per row there; both engines' final W compared; the certified
    engine also through ``simulate`` (same numbers bit for bit).
(d) fixed horizon: n = 128, m = 2048, λ = 0.01, dt = 0.05, T = 300, the same W0: the dense
    NumPy proximal Euler loop (two matrix products and a soft-threshold per step,
    ``bench_steppers.numpy_prox_euler``) against ``simulate`` (and the legacy engine).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowsim  # noqa: E402
from flowsim import Model, Stop, simulate  # noqa: E402
from flowsim import _engines as E  # noqa: E402
from flowsim import _kernels as K  # noqa: E402

from bench_steppers import (COMPILE_HEADER, compile_rows, compile_times, finish, fmt,  # noqa: E402
                            interleaved, machine_info, numpy_prox_euler, print_table)

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = dict(n=256, lam=0.01, dt=0.1, handover_m=(1024, 4096), densities=(0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08),
            handover_steps=8, fig3_m=4096, marks=(5.0, 10.0, 20.0, 50.0), tol=1e-6, window=50.0, t_cap=1e4,
            fh_n=128, fh_m=2048, fh_dt=0.05, fh_T=300.0, legacy_below=0.15)
QUICK = dict(n=64, lam=0.01, dt=0.1, handover_m=(256, 512), densities=(0.3, 0.2, 0.15, 0.1), handover_steps=4,
             fig3_m=512, marks=(5.0, 10.0, 20.0, 50.0), tol=1e-6, window=50.0, t_cap=1e4,
             fh_n=32, fh_m=256, fh_dt=0.05, fh_T=30.0, legacy_below=0.15)


def run_chunked(engine, t1, dt, marks=(), conv=None):
    """Drive an engine from t = 0 as ``simulate`` does (chunks of about 0.2 s), through
    the marks to t1 or convergence.

    Returns
    -------
    list of dict
        At each mark reached and at the end: time, wall seconds since the start, steps,
        density and mean nonzeros per row; the last one has the run's status.
    """
    tol, window = conv if conv else (-1.0, 1.0)
    out = np.zeros(K.OUT_SIZE)
    t, j, jmax = 0.0, 0, 64
    n, m = engine.W.shape
    rows, status = [], K.STATUS_DONE
    tick = time.perf_counter()
    for target in list(marks) + [t1]:
        while t < target - 1e-9 * dt and status != K.STATUS_CONVERGED:
            a = time.perf_counter()
            engine.run(t, j, target, dt, jmax, -1, tol, window, out)
            took = time.perf_counter() - a
            t, j, status = float(out[K.OUT_T]), int(out[K.OUT_J]), int(out[K.OUT_STATUS])
            jmax = int(min(max(jmax * min(0.2 / max(took, 1e-4), 4.0), 1), 1 << 40))
        nnz = np.count_nonzero(engine.W)
        rows.append(dict(t=t, wall=time.perf_counter() - tick, steps=j, density=nnz / (n * m),
                         nnz_per_row=nnz / n))
        if status == K.STATUS_CONVERGED:
            break
    rows[-1]["status"] = {K.STATUS_CONVERGED: "converged"}.get(status, "completed")
    return rows


def dense_states(model, dt, densities):
    """States of a dense-engine run where its density first falls to each target."""
    eng = E.DenseEngine(model.initial_weights(), model, "euler", 0.0)
    out = np.zeros(K.OUT_SIZE)
    t, j, states, targets = 0.0, 0, [], list(densities)
    while targets:
        eng.run(t, j, 1e4, dt, 1, -1, -1.0, 1.0, out)
        t, j = float(out[K.OUT_T]), int(out[K.OUT_J])
        d = np.count_nonzero(eng.W) / eng.W.size
        while targets and d <= targets[0]:
            states.append((t, j, d, eng.W.copy()))
            targets.pop(0)
    return states


def bench_handover(cfg, repeats):
    """Per-step wall time of a dense and a sparse step at falling densities (each a run of
    a few steps after one untimed step, repeated round after round; best and all)."""
    res = {}
    for m in cfg["handover_m"]:
        model = Model(n=cfg["n"], m=m, lam=cfg["lam"], seed=0)
        dt, steps = cfg["dt"], cfg["handover_steps"]
        rows = []
        for t, j, d, W in dense_states(model, dt, cfg["densities"]):
            times = {"dense": [], "sparse": []}
            for _ in range(repeats):
                for name, below in (("dense", 0.0), ("sparse", 1.0)):
                    eng = E.DenseEngine(W.copy(), model, "euler", below)
                    out = np.zeros(K.OUT_SIZE)
                    eng.run(t, j, t + dt, dt, 1, -1, -1.0, 1.0, out)  # sparse: allocation, first epoch
                    tick = time.perf_counter()
                    eng.run(float(out[K.OUT_T]), j + 1, (j + 1 + steps) * dt, dt, 10**9, -1, -1.0, 1.0, out)
                    times[name].append((time.perf_counter() - tick) / steps)
            rows.append(dict(t=t, density=d, dense_step_s=min(times["dense"]),
                             sparse_step_s=min(times["sparse"]), dense_all_s=times["dense"],
                             sparse_all_s=times["sparse"]))
        cheaper = [r["density"] for r in rows if r["sparse_step_s"] < r["dense_step_s"]]
        res[str(m)] = dict(rows=rows, steps=steps, crossover_density=max(cheaper) if cheaper else None)
    return res


def bench_dense_blas(cfg, repeats):
    """A dense Euler step (20 in one call) against its two BLAS products, same shapes."""
    model = Model(n=cfg["n"], m=cfg["fig3_m"], lam=cfg["lam"], seed=0)
    W0 = model.initial_weights()
    P = np.maximum(W0 @ W0.T, 0.0)
    np.fill_diagonal(P, 0.0)
    G, PW, steps = np.empty((W0.shape[0],) * 2), np.empty_like(W0), 20

    def blas():
        for _ in range(steps):
            np.matmul(W0, W0.T, out=G)
            np.matmul(P, W0, out=PW)

    def dense():
        eng = E.DenseEngine(W0.copy(), model, "euler", 0.0)
        eng.run(0.0, 0, steps * cfg["dt"], cfg["dt"], 10**9, -1, -1.0, 1.0, np.zeros(K.OUT_SIZE))
    r = interleaved({"blas": blas, "dense": dense}, repeats)
    return dict(n=model.n, m=model.m, steps=steps, blas_step_s=r["blas"][0] / steps,
                dense_step_s=r["dense"][0] / steps, blas_all_s=[x / steps for x in r["blas"][1]],
                dense_all_s=[x / steps for x in r["dense"][1]], ratio=r["dense"][0] / r["blas"][0])


def bench_figure3(cfg, repeats, below):
    """Figure 3 run to convergence: per-phase wall times of both engines, interleaved."""
    model = Model(n=cfg["n"], m=cfg["fig3_m"], lam=cfg["lam"], seed=0)
    W0 = model.initial_weights()
    conv = (cfg["tol"], cfg["window"])
    engines = {"certified": ("certified", below), "legacy": ("legacy", cfg["legacy_below"])}
    runs = {name: [] for name in engines}
    finals = {}
    for _ in range(repeats):
        for name, (kind, b) in engines.items():
            eng = E.DenseEngine(W0.copy(), model, "euler", b, kind)
            runs[name].append(run_chunked(eng, cfg["t_cap"], cfg["dt"], cfg["marks"], conv))
            finals[name] = eng.W
    tr = simulate(model, cfg["t_cap"], method="euler", dt=cfg["dt"], W0=W0, save_at=[], sparse_below=below,
                  stop=Stop(tol=cfg["tol"], window=cfg["window"]))
    best = {name: min(rs, key=lambda r: r[-1]["wall"]) for name, rs in runs.items()}
    totals = {name: [r[-1]["wall"] for r in rs] for name, rs in runs.items()}
    return dict(
        n=model.n, m=model.m, lam=model.lam, dt=cfg["dt"], tol=cfg["tol"], window=cfg["window"],
        sparse_below={name: b for name, (_, b) in engines.items()}, marks=list(cfg["marks"]),
        best=best, all_runs=runs, total_wall_s=totals,
        ratio_best=best["legacy"][-1]["wall"] / best["certified"][-1]["wall"],
        ratios_per_round=[a / b for a, b in zip(totals["legacy"], totals["certified"])],
        max_abs_diff_final_W=float(np.abs(finals["certified"] - finals["legacy"]).max()),
        identical_supports=bool(np.array_equal(finals["certified"] != 0, finals["legacy"] != 0)),
        simulate=dict(wall_s=tr.stats.wall_seconds, steps=tr.stats.steps, t_end=tr.stats.t_end,
                      status=tr.stats.status, compile_s=tr.stats.compile_seconds,
                      same_W_as_engine_run=bool(np.array_equal(tr.W, finals["certified"]))))


def bench_fixed_horizon(cfg, repeats, below):
    """Fixed horizon against the dense NumPy proximal Euler loop, same W0."""
    model = Model(n=cfg["fh_n"], m=cfg["fh_m"], lam=cfg["lam"], seed=0)
    W0 = model.initial_weights()
    dt, T = cfg["fh_dt"], cfg["fh_T"]
    steps = int(round(T / dt))
    sim = {}

    def flowsim_run():
        tr = simulate(model, T, method="euler", dt=dt, W0=W0, save_at=[], sparse_below=below)
        sim["W"] = tr.W
        sim.setdefault("walls", []).append(tr.stats.wall_seconds)
        return tr

    def legacy_run():
        eng = E.DenseEngine(W0.copy(), model, "euler", cfg["legacy_below"], "legacy")
        run_chunked(eng, T, dt)
        return eng.W
    r = interleaved({"numpy": lambda: numpy_prox_euler(W0, cfg["lam"], dt, steps),
                     "flowsim": flowsim_run, "legacy": legacy_run}, repeats)
    Wn, Wl = r["numpy"][2], r["legacy"][2]
    return dict(n=model.n, m=model.m, lam=model.lam, dt=dt, T=T, steps=steps, sparse_below=below,
                numpy_s=r["numpy"][0], numpy_all_s=r["numpy"][1], flowsim_s=r["flowsim"][0],
                flowsim_all_s=r["flowsim"][1], flowsim_stats_wall_all_s=sim["walls"],
                legacy_s=r["legacy"][0], legacy_all_s=r["legacy"][1],
                ratio_numpy_over_flowsim=r["numpy"][0] / r["flowsim"][0],
                ratio_numpy_over_legacy=r["numpy"][0] / r["legacy"][0],
                identical_supports=bool(np.array_equal(Wn != 0, sim["W"] != 0)),
                max_abs_diff_W=float(np.abs(Wn - sim["W"]).max()),
                legacy_identical_supports=bool(np.array_equal(Wn != 0, Wl != 0)))


def compile_section():
    calls = [[f"sparse-{me}", dict(n=8, m=64, lam=0.01), 1.0, dict(method=me, dt=0.1, sparse_below=1.0)]
             for me in ("euler", "heun", "rk4")]
    return {"dense_and_sparse_engines": compile_times(calls)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute), e.g. for CI")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_sparse_phase.json"),
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, interleaved; the best is reported")
    p.add_argument("--sparse-below", type=float, default=0.15, help="hand-over density of the certified engine")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS to N threads in this process (threadpoolctl; default: as configured). "
                        "On a shared machine one thread keeps the dense steps and the NumPy baseline "
                        "from stalling on each other's threads")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time subprocesses")
    args = p.parse_args(argv)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads, user_api="blas")
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    data = {"benchmark": "bench_sparse_phase", "quick": args.quick, "repeats": args.repeats,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__, "config": cfg,
            "sparse_below": args.sparse_below, "blas_threads": args.blas_threads}
    for method in ("euler",):
        E.warm_up(Model(n=8, m=16, lam=0.01), method)
        warm = Model(n=8, m=16, lam=0.01)
        E.DenseEngine(warm.initial_weights(), warm, method, 1.0, "legacy").run(
            0.0, 0, 0.2, 0.1, 2, -1, -1.0, 1.0, np.zeros(K.OUT_SIZE))
    data["handover"] = bench_handover(cfg, args.repeats)
    data["dense_vs_blas"] = bench_dense_blas(cfg, args.repeats)
    data["figure3"] = bench_figure3(cfg, args.repeats, args.sparse_below)
    data["fixed_horizon"] = bench_fixed_horizon(cfg, max(args.repeats - 1, 1), args.sparse_below)
    if not args.no_compile:
        data["compile"] = compile_section()
    finish(data, args.json, t_start, report)


def report(data):
    mach = data["machine"]
    print(f"flowsim {data['flowsim_version']} ({mach.get('flowsim_git_commit')}) | {mach.get('cpu_model')} "
          f"x{mach['cpu_count']} | numpy {mach['numpy']}, numba {mach['numba']} | {data['date_utc']} | "
          f"load {mach.get('load_average_1_5_15min')} -> {data.get('load_average_at_end')} | "
          f"BLAS threads {data.get('blas_threads') or 'default'}"
          f"{' | QUICK sizes' if data['quick'] else ''}")
    print(f"\n(a) hand-over: wall ms per step, best of {data['repeats']} (n={data['config']['n']})")
    rows = []
    for m, h in data["handover"].items():
        for r in h["rows"]:
            rows.append([m, f"{r['density']:.3f}", fmt(r["dense_step_s"] * 1e3), fmt(r["sparse_step_s"] * 1e3),
                         f"{r['dense_step_s'] / r['sparse_step_s']:.2f}x"])
        print_table(["m", "density", "dense ms", "sparse ms", "dense/sparse"], rows)
        rows = []
        print(f"  m={m}: sparse cheaper at densities <= {h['crossover_density']}\n")
    d = data["dense_vs_blas"]
    print(f"(b) dense step {d['dense_step_s'] * 1e3:.1f} ms vs its two BLAS products {d['blas_step_s'] * 1e3:.1f} ms: "
          f"{d['ratio']:.2f}x (n={d['n']}, m={d['m']}, best of {data['repeats']})")
    f = data["figure3"]
    print(f"\n(c) Figure 3 run n={f['n']} m={f['m']} lam={f['lam']} dt={f['dt']} to convergence "
          f"(tol {f['tol']}, window {f['window']}); best of {data['repeats']} rounds")
    rows = []
    for (a, b) in zip(f["best"]["certified"], f["best"]["legacy"]):
        rows.append([fmt(a["t"]), fmt(b["wall"]), fmt(a["wall"]), f"{b['wall'] / a['wall']:.1f}x", a["steps"],
                     f"{a['density']:.4f}", fmt(a["nnz_per_row"])])
    print_table(["T", "legacy wall s", "certified wall s", "ratio", "steps", "density", "nnz/row"], rows)
    print(f"  to convergence: {f['ratio_best']:.2f}x (per round {', '.join(f'{x:.2f}' for x in f['ratios_per_round'])}); "
          f"final W max|dW| {f['max_abs_diff_final_W']:.1e}, identical supports {f['identical_supports']}; "
          f"simulate(): {f['simulate']['wall_s']:.2f} s, same W {f['simulate']['same_W_as_engine_run']}")
    x = data["fixed_horizon"]
    print(f"\n(d) fixed horizon n={x['n']} m={x['m']} lam={x['lam']} dt={x['dt']} T={x['T']} ({x['steps']} steps): "
          f"numpy {x['numpy_s']:.2f} s, flowsim {x['flowsim_s']:.2f} s ({x['ratio_numpy_over_flowsim']:.1f}x), "
          f"legacy {x['legacy_s']:.2f} s ({x['ratio_numpy_over_legacy']:.1f}x); identical supports "
          f"{x['identical_supports']} (max|dW| {x['max_abs_diff_W']:.1e})")
    if "compile" in data:
        print("\nnumba compile time (fresh subprocess, empty NUMBA_CACHE_DIR, minus warm-cache first call)")
        print_table(COMPILE_HEADER, compile_rows(data["compile"]))


if __name__ == "__main__":
    main()
