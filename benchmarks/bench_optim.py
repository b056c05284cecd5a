"""Benchmark of discrete training (issue 12): the published Figure 3 procedure in PyTorch
against ``flowsim.optim.train``, side by side in one process.

Usage::

    python benchmarks/bench_optim.py [--quick] [--steps K] [--json PATH] [--no-torch]
                                     [--phase-steps P] [--estimate-steps E]

Baseline: the published procedure as its code ran it -- PyTorch on the CPU, autograd,
``torch.optim.AdamW`` (defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01), lr 1e-3,
the I instances batched in one (I, n, m) tensor, loss ``Σ (ReLU(h Wᵀ) - x)² + l1 Σ|h|``
with ``h = x W`` on the n basis inputs ``x = I``, l1 = 1e-3. It runs in float64 (the
precision flowsim computes in; the two agree to rounding) and in float32 (PyTorch's
default dtype), each with one thread and with PyTorch's default thread count.
flowsim: ``train(Model(n, m, lam=l1, c=4), "adamw", K, seeds=range(I))`` with 1 and 2
worker threads over the instances (BLAS one thread per product). Both start from the same
W0 (``Model(n, m, seed=i).initial_weights()``). Full size: n = 256, m = 1024, I = 4,
K = 7500 (the published horizon).

Reported: wall seconds of each at the fixed horizon K and every ratio torch/flowsim;
agreement (max relative difference of the final weights, polysemantic counts by the
window rule 0.8 <= |W_ik| <= 1.2 on both sides); a per-phase table (time per step and
instance of each part of a step, both sides, measured on ``--phase-steps`` instrumented
steps); numba compile time from fresh subprocesses (cold vs warm cache); and the
per-step time of one instance at m = 256 ... 4096 (``--estimate-steps`` steps each), from
which the wall time of the whole ``--paper`` sweep (16 m × 16 seeds × 7,500 steps, two
worker processes) is *estimated*. The procedure has a fixed number of steps, so its
"to convergence" time is this fixed horizon; the per-step cost is the same at every step
(dense throughout: AdamW leaves no exact zeros).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowsim  # noqa: E402
from flowsim import Model  # noqa: E402
from flowsim import _kernels as K  # noqa: E402
from flowsim import _optim_kernels as OK  # noqa: E402
from flowsim._engines import DenseEngine  # noqa: E402
from flowsim.metrics import count_polysemantic  # noqa: E402
from flowsim.optim import Optimizer, train  # noqa: E402

from bench_steppers import finish, fmt, machine_info, print_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = dict(n=256, m=1024, instances=4, steps=7500, lr=1e-3, l1=1e-3, phase_steps=40,
            estimate_m=[256, 512, 1024, 2048, 4096], estimate_steps=200,
            sweep_m=list(range(256, 4097, 256)), sweep_seeds=16, sweep_workers=2)
QUICK = dict(n=64, m=256, instances=2, steps=100, lr=1e-3, l1=1e-3, phase_steps=10,
             estimate_m=[256, 512], estimate_steps=10,
             sweep_m=list(range(256, 4097, 256)), sweep_seeds=16, sweep_workers=2)
WINDOW = (0.8, 1.2)


# ---------------------------------------------------------------- baseline

def torch_adamw(W0s, cfg, steps, dtype, threads, phases=False):
    """The published procedure in PyTorch. Returns (final W as float64 ndarray (I, n, m),
    seconds, per-phase seconds or None)."""
    import torch

    torch.set_num_threads(threads)
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    W = torch.tensor(W0s, dtype=tdt, requires_grad=True)
    x = torch.eye(W0s.shape[1], dtype=tdt)
    opt = torch.optim.AdamW([W], lr=cfg["lr"])
    l1 = cfg["l1"]
    t = {"zero_grad": 0.0, "forward": 0.0, "backward": 0.0, "adamw_step": 0.0}
    tick = time.perf_counter()
    for _ in range(steps):
        if phases:
            a = time.perf_counter()
        opt.zero_grad()
        if phases:
            b = time.perf_counter()
        h = x @ W
        loss = ((torch.relu(h @ W.transpose(1, 2)) - x) ** 2).sum() + l1 * h.abs().sum()
        if phases:
            c = time.perf_counter()
        loss.backward()
        if phases:
            d = time.perf_counter()
        opt.step()
        if phases:
            e = time.perf_counter()
            for k, v in zip(t, (b - a, c - b, d - c, e - d)):
                t[k] += v
    secs = time.perf_counter() - tick
    return W.detach().to(torch.float64).numpy(), secs, (t if phases else None)


# ---------------------------------------------------------------- flowsim phases

def flowsim_phases(W0s, cfg, steps):
    """The steps of ``train`` (AdamW), instrumented: the same calls, timed one by one.
    Returns dict phase -> seconds over ``steps`` steps of every instance, one thread
    (BLAS limited to one thread, as ``train`` does)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _flowsim_phases(W0s, cfg, steps)


def _flowsim_phases(W0s, cfg, steps):
    n, m = W0s.shape[1:]
    model = Model(n=n, m=m, lam=cfg["l1"], c=4.0)
    opt = Optimizer("adamw", lr=cfg["lr"])
    eng = DenseEngine(np.empty((n, m)), model, "euler")
    t = {"G = W Wᵀ (BLAS syrk)": 0.0, "P = ReLU(G), 0 diagonal (numba)": 0.0, "P W (BLAS gemm)": 0.0,
         "force F (numba)": 0.0, "AdamW update (numba, fused)": 0.0}
    keys = list(t)
    b1, b2 = opt.betas
    for W0 in W0s:
        W, V, F = W0.copy(), np.empty_like(W0), np.empty_like(W0)
        M, S = np.zeros_like(W0), np.zeros_like(W0)
        for k in range(1, steps + 1):
            c0 = time.perf_counter()
            np.matmul(W, W.T, out=eng.G)
            np.copyto(eng.norms, np.diagonal(eng.G))
            c1 = time.perf_counter()
            K.relu_offdiag(eng.G, eng.P)
            c2 = time.perf_counter()
            np.matmul(eng.P, W, out=eng.PW)
            c3 = time.perf_counter()
            K.combine_force(W, eng.norms, eng.PW, 1.0, 1.0, model.c, F)
            c4 = time.perf_counter()
            OK.adam_update(W, F, model.lam, opt.lr, b1, b2, opt.eps, opt.weight_decay, True,
                           opt.lr / (1 - b1**k), (1 - b2**k) ** 0.5, M, S, V)
            c5 = time.perf_counter()
            W, V = V, W
            for key, dt in zip(keys, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4)):
                t[key] += dt
    return t


_CHILD = r"""
import json, time
t0 = time.perf_counter()
from flowsim import Model
from flowsim.optim import train
imp = time.perf_counter() - t0
out = {"import_seconds": imp}
for name in ("adamw", "momentum"):
    a = time.perf_counter()
    tr = train(Model(n=8, m=16, lam=1e-3, c=4.0), name, 10, save_at=[])
    b = time.perf_counter()
    train(Model(n=8, m=16, lam=1e-3, c=4.0), name, 10, save_at=[])
    out[name] = {"first_call_seconds": b - a, "second_call_seconds": time.perf_counter() - b,
                 "flowsim_compile_seconds": tr.stats.compile_seconds}
print(json.dumps(out))
"""


def compile_times():
    """numba compile time of train's kernels: a fresh subprocess with an empty
    NUMBA_CACHE_DIR (cold) and one reusing it (warm); compile = cold - warm first call."""
    with tempfile.TemporaryDirectory(prefix="flowsim-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = {kind: json.loads(subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True,
                                                capture_output=True, text=True).stdout.splitlines()[-1])
                for kind in ("cold", "warm")}
    out = {}
    for name in ("adamw", "momentum"):
        cold, warm = runs["cold"][name], runs["warm"][name]
        out[name] = dict(cold_first_call_seconds=cold["first_call_seconds"],
                         warm_cache_first_call_seconds=warm["first_call_seconds"],
                         compile_seconds=max(cold["first_call_seconds"] - warm["first_call_seconds"], 0.0),
                         flowsim_reported_compile_seconds_cold=cold["flowsim_compile_seconds"],
                         flowsim_reported_compile_seconds_warm=warm["flowsim_compile_seconds"])
    return out


# ---------------------------------------------------------------- sections

def bench_fixed_horizon(cfg, steps, with_torch):
    n, m, I = cfg["n"], cfg["m"], cfg["instances"]
    model = Model(n=n, m=m, lam=cfg["l1"], c=4.0)
    opt = Optimizer("adamw", lr=cfg["lr"])
    seeds = list(range(I))
    W0s = np.stack([model.replace(seed=s).initial_weights() for s in seeds])
    res = dict(n=n, m=m, instances=I, seeds=seeds, steps=steps, l1=cfg["l1"], optimizer=opt.as_dict(),
               flowsim={}, torch={})
    train(model, opt, 3, seeds=seeds, save_at=[])  # compile / load the kernels
    final = {}
    for workers in (1, 2):
        tr = train(model, opt, steps, seeds=seeds, workers=workers, save_at=[])
        final[workers] = tr.W
        res["flowsim"][f"workers{workers}"] = dict(
            seconds=tr.stats.wall_seconds, compile_seconds=tr.stats.compile_seconds,
            ms_per_step=1e3 * tr.stats.wall_seconds / steps,
            polysemantic_window=[count_polysemantic(w, window=WINDOW) for w in tr.W])
        print(f"  flowsim adamw, {workers} worker(s): {tr.stats.wall_seconds:.1f} s", flush=True)
    res["flowsim_workers_identical"] = bool(np.array_equal(final[1], final[2]))
    if with_torch:
        import torch

        res["torch_version"] = torch.__version__
        default_threads = torch.get_num_threads()
        res["torch_default_threads"] = default_threads
        for dtype in ("float64", "float32"):
            for threads in sorted({1, default_threads}):
                Wt, secs, _ = torch_adamw(W0s, cfg, steps, dtype, threads)
                key = f"{dtype}_threads{threads}"
                res["torch"][key] = dict(
                    seconds=secs, ms_per_step=1e3 * secs / steps,
                    polysemantic_window=[count_polysemantic(w, window=WINDOW) for w in Wt],
                    max_rel_diff_vs_flowsim=float(np.abs(Wt - final[1]).max() / np.abs(final[1]).max()))
                print(f"  torch {key}: {secs:.1f} s", flush=True)
        res["ratios_torch_over_flowsim"] = {
            f"{tk} / flowsim {fk}": tv["seconds"] / fv["seconds"]
            for tk, tv in res["torch"].items() for fk, fv in res["flowsim"].items()}
    return res


def bench_phases(cfg, with_torch):
    n, m, I, P = cfg["n"], cfg["m"], cfg["instances"], cfg["phase_steps"]
    W0s = np.stack([Model(n=n, m=m, seed=s).initial_weights() for s in range(I)])
    flowsim_phases(W0s, cfg, 2)  # warm
    per = 1e3 / (P * I)
    out = {"steps": P, "instances": I,
           "flowsim_ms_per_instance_step": {k: v * per for k, v in flowsim_phases(W0s, cfg, P).items()}}
    if with_torch:
        import torch

        for dtype in ("float64", "float32"):
            torch_adamw(W0s, cfg, 2, dtype, 1, phases=True)
            _, _, t = torch_adamw(W0s, cfg, P, dtype, 1, phases=True)
            out[f"torch_{dtype}_threads1_ms_per_instance_step"] = {k: v * per for k, v in t.items()}
        torch.set_num_threads(os.cpu_count() or 1)
    return out


def sweep_estimate(cfg, measured_flow_sweep_seconds=738.4):
    """Per-step time of one AdamW instance (one thread) at several m, measured; the wall
    time of the --paper sweep estimated from it (per-run time linear in m between the
    measured points, runs spread over ``sweep_workers`` processes)."""
    n = cfg["n"] if cfg["n"] >= 256 else 256
    rows = []
    for m in cfg["estimate_m"]:
        model = Model(n=n, m=m, lam=cfg["l1"], c=4.0)
        train(model, "adamw", 2, save_at=[])
        tr = train(model, "adamw", cfg["estimate_steps"], save_at=[])
        rows.append(dict(m=m, ms_per_step=1e3 * tr.stats.wall_seconds / cfg["estimate_steps"]))
        print(f"  m={m}: {rows[-1]['ms_per_step']:.2f} ms/step", flush=True)
    ms = np.array([r["m"] for r in rows], dtype=float)
    per = np.array([r["ms_per_step"] for r in rows])
    grid = np.array(cfg["sweep_m"], dtype=float)
    run_s = np.interp(grid, ms, per, right=None) / 1e3 * 7500
    if grid.max() > ms.max():  # linear extrapolation beyond the last measured m
        slope = (per[-1] - per[-2]) / (ms[-1] - ms[-2])
        run_s = np.where(grid > ms.max(), (per[-1] + slope * (grid - ms[-1])) / 1e3 * 7500, run_s)
    core_s = float(run_s.sum() * cfg["sweep_seeds"])
    return dict(n=n, measured=rows, steps_per_run=7500, estimated_run_seconds={int(g): float(s) for g, s in zip(grid, run_s)},
                estimated_adamw_sweep_core_seconds=core_s,
                estimated_adamw_sweep_wall_seconds=core_s / cfg["sweep_workers"],
                workers=cfg["sweep_workers"], flow_sweep_measured_wall_seconds=measured_flow_sweep_seconds,
                note="estimate: measured per-step times x 7500 steps x 16 seeds, summed over m = 256..4096, "
                     "divided by 2 worker processes; assumes the two processes do not slow each other")


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds), e.g. for CI")
    ap.add_argument("--steps", type=int, default=None, help="fixed horizon (default 7500; quick 100)")
    ap.add_argument("--phase-steps", type=int, default=None, help="instrumented steps per instance")
    ap.add_argument("--estimate-steps", type=int, default=None, help="steps per m for the sweep estimate")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "bench_optim.json"))
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("steps", "phase_steps", "estimate_steps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            with_torch = False
            skipped = f"torch not installed ({err})"
    t_start = time.perf_counter()
    data = {"benchmark": "bench_optim", "quick": args.quick, "config": cfg,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__}
    if not with_torch:
        data["torch_skipped"] = "--no-torch" if args.no_torch else skipped
    print("compile times ...", flush=True)
    data["compile"] = compile_times()
    print(f"fixed horizon: {cfg['steps']} steps ...", flush=True)
    data["fixed_horizon"] = bench_fixed_horizon(cfg, cfg["steps"], with_torch)
    print("phases ...", flush=True)
    data["phases"] = bench_phases(cfg, with_torch)
    print("sweep estimate ...", flush=True)
    data["sweep_estimate"] = sweep_estimate(cfg)
    finish(data, args.json, t_start, report)
    return data


def report(data):
    f = data["fixed_horizon"]
    print(f"\nAdamW, n={f['n']}, m={f['m']}, {f['instances']} instances, {f['steps']} steps "
          f"(lr {f['optimizer']['lr']:g}, l1 {f['l1']:g}); load at end {data.get('load_average_at_end')}")
    rows = [[f"flowsim {k}", fmt(v["seconds"]), fmt(v["ms_per_step"]), str(v["polysemantic_window"]), "-"]
            for k, v in f["flowsim"].items()]
    rows += [[f"torch {k}", fmt(v["seconds"]), fmt(v["ms_per_step"]), str(v["polysemantic_window"]),
              fmt(v["max_rel_diff_vs_flowsim"], 2)] for k, v in f["torch"].items()]
    print_table(["run", "seconds", "ms/step (all instances)", "polysemantic (window)", "max rel |dW|"], rows)
    for k, v in f.get("ratios_torch_over_flowsim", {}).items():
        print(f"  ratio {k}: {v:.2f}x")
    p = data["phases"]
    print(f"\nper-phase ms per step and instance ({p['steps']} instrumented steps x {p['instances']} instances)")
    for key, t in p.items():
        if isinstance(t, dict):
            print(f"  {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()) + f"; total {sum(t.values()):.2f}")
    c = data["compile"]
    print("\nnumba compile: " + ", ".join(f"{k} {v['compile_seconds']:.2f} s (cache load "
                                           f"{v['flowsim_reported_compile_seconds_warm']:.2f} s)" for k, v in c.items()))
    s = data["sweep_estimate"]
    print(f"\nsweep estimate (n={s['n']}): " + ", ".join(f"m={r['m']} {r['ms_per_step']:.2f} ms/step"
                                                       for r in s["measured"]))
    print(f"  ESTIMATE of the --paper AdamW sweep: {s['estimated_adamw_sweep_wall_seconds'] / 3600:.2f} h wall "
          f"on {s['workers']} processes ({s['estimated_adamw_sweep_core_seconds'] / 3600:.2f} core-hours)")


if __name__ == "__main__":
    main()
