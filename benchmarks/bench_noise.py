"""Benchmark of the noisy-hidden-layer training (issue "Sparsity from noise").

Usage::

    python benchmarks/bench_noise.py [--quick] [--json PATH] [--repeats R] [--no-torch]

Problem: the Figure 4 configuration, n = 8, m = 16, η = 0.02, 5 instances, 10⁵ full-batch
steps over the n basis inputs, noise shared by the inputs of a step; bipolar and normal
noise at σ = 0.1 (the middle of Figure 4's range).

Baselines, side by side in this process:

1. PyTorch on the CPU (if installed; skipped cleanly otherwise), the training as the
   published code ran it: W a (5, n, m) parameter (the 5 instances batched in one
   tensor, default dtype float32), forward ``ReLU((x W + ξ) Wᵀ)`` on the identity batch
   with one ξ per instance and step, loss ``Σ (y - x)²``, autograd, ``torch.optim.SGD``;
   one torch thread (the fastest setting for tensors this small).
2. A plain NumPy loop: the same batched step with the gradient written out
   (Γ = 2[Z > 0](Z - I), ∂L/∂W = ΓH + ΓᵀW), float64, noise from ``numpy.random``.

flowsim: ``flowsim.noise.train`` (numba, threads over instances; also timed with one
thread). Reported: wall times and ratios at the fixed horizon; the to-sparsity ratio
(steps each implementation's own instance-mean curve needs to reach mean ‖W_i‖₄⁴ ≥ 0.7
under bipolar noise, times its measured seconds per step); a per-phase table (numba
compile measured in fresh subprocesses with a cold and a warm cache, set-up, steps);
and the statistical agreement of the curves: the instance means of mean ‖W_i‖₄⁴ at
checkpoints, |Δ| against 3 combined standard errors (different random streams, same
distributions, so only a statistical agreement is expected).
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
from flowsim import noise as nz  # noqa: E402

from bench_steppers import finish, fmt, machine_info, print_table  # noqa: E402

FULL = dict(n=8, m=16, eta=0.02, sigma=0.1, instances=5, steps=100_000, seed=0, records=100, threshold=0.7)
QUICK = dict(n=8, m=16, eta=0.02, sigma=0.1, instances=5, steps=5_000, seed=0, records=20, threshold=0.3)
DISTRIBUTIONS = ("bipolar", "normal")


def _loop(steps, record_steps, measure, step):
    """Run ``step()`` ``steps`` times, ``measure()`` -> (I,) at the record steps. Returns (I, R), seconds."""
    rec = {int(s): k for k, s in enumerate(record_steps)}
    out = None
    tick = time.perf_counter()
    for s in range(steps + 1):
        if s in rec:
            value = measure()
            out = np.empty((value.size, len(record_steps))) if out is None else out
            out[:, rec[s]] = value
        if s < steps:
            step()
    return out, time.perf_counter() - tick


def torch_sgd(cfg, dist, record_steps, seed):
    """The published-code training in PyTorch. Returns (mean ‖W_i‖₄⁴ (I, R), setup s, loop s)."""
    import torch

    torch.set_num_threads(1)  # tensors of 640 numbers: one thread is fastest (and not hurt by load)
    tick = time.perf_counter()
    I, n, m, sigma = cfg["instances"], cfg["n"], cfg["m"], cfg["sigma"]
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(I, n, m, generator=g) / math.sqrt(m))
    opt = torch.optim.SGD([W], lr=cfg["eta"])
    x = torch.eye(n).expand(I, n, n)

    def step():
        if dist == "bipolar":
            xi = (torch.randint(0, 2, (I, 1, m), generator=g) * 2 - 1) * sigma
        else:
            xi = torch.randn(I, 1, m, generator=g) * sigma
        y = torch.relu((x @ W + xi) @ W.transpose(1, 2))
        loss = ((y - x) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    setup = time.perf_counter() - tick
    out, secs = _loop(cfg["steps"], record_steps, lambda: (W.detach() ** 4).sum(-1).mean(-1).numpy(), step)
    return out, setup, secs


def numpy_loop(cfg, dist, record_steps, seed):
    """The same training as a plain NumPy loop. Returns (mean ‖W_i‖₄⁴ (I, R), setup s, loop s)."""
    tick = time.perf_counter()
    I, n, m, sigma, eta = cfg["instances"], cfg["n"], cfg["m"], cfg["sigma"], cfg["eta"]
    rng = np.random.default_rng(seed)
    state = {"W": rng.standard_normal((I, n, m)) / math.sqrt(m)}
    eye = np.eye(n)

    def step():
        W = state["W"]
        if dist == "bipolar":
            xi = np.where(rng.random((I, 1, m)) < 0.5, -sigma, sigma)
        else:
            xi = sigma * rng.standard_normal((I, 1, m))
        H = W + xi
        Z = W @ H.transpose(0, 2, 1)
        Gam = 2.0 * (Z > 0) * (Z - eye)
        state["W"] = W - eta * (Gam @ H + Gam.transpose(0, 2, 1) @ W)

    setup = time.perf_counter() - tick
    out, secs = _loop(cfg["steps"], record_steps, lambda: (state["W"] ** 4).sum(-1).mean(-1), step)
    return out, setup, secs


def flowsim_run(cfg, dist, record_steps, workers):
    """flowsim.noise.train. Returns (mean ‖W_i‖₄⁴ (I, R), compile s, run s)."""
    model = nz.NoiseModel(cfg["n"], cfg["m"], cfg["sigma"], dist, eta=cfg["eta"], instances=cfg["instances"],
                          seed=cfg["seed"])
    run = nz.train(model, cfg["steps"], record_at=record_steps, workers=workers)
    return run.mean_l4(), run.stats.compile_seconds, run.stats.wall_seconds


_CHILD = r"""
import json, time
t0 = time.perf_counter()
from flowsim import noise as nz
t1 = time.perf_counter()
first = nz._warm_up()
second = nz._warm_up()
print(json.dumps(dict(import_seconds=t1 - t0, first_call_seconds=first, second_call_seconds=second)))
"""


def compile_times():
    """numba compile time of the noise kernels: fresh subprocesses, cold then warm cache."""
    with tempfile.TemporaryDirectory(prefix="flowsim-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = {}
        for kind in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
            runs[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(cold=runs["cold"], warm=runs["warm"],
                compile_seconds=max(runs["cold"]["first_call_seconds"] - runs["warm"]["first_call_seconds"], 0.0))


def agreement(a, b, steps, checkpoints):
    """Instance means of two (I, R) curve sets at checkpoints: |Δ| vs 3 combined s.e."""
    rows = []
    for s in checkpoints:
        k = int(np.searchsorted(steps, s))
        ma, mb = a[:, k].mean(), b[:, k].mean()
        se = math.sqrt(a[:, k].var(ddof=1) / a.shape[0] + b[:, k].var(ddof=1) / b.shape[0])
        rows.append(dict(step=int(s), mean_flowsim=ma, mean_baseline=mb, diff=ma - mb, combined_se=se,
                         within_3se=bool(abs(ma - mb) <= 3 * se)))
    return dict(checkpoints=rows, all_within_3se=all(r["within_3se"] for r in rows))


def first_crossing(curves, steps, threshold):
    """First record step > 0 at which the instance mean reaches ``threshold`` (None if never)."""
    hit = np.flatnonzero((curves.mean(axis=0) >= threshold) & (steps > 0))
    return int(steps[hit[0]]) if hit.size else None


def bench(cfg, repeats, use_torch):
    steps = np.unique(np.round(np.linspace(0, cfg["steps"], cfg["records"] + 1))).astype(np.int64)
    checkpoints = steps[np.searchsorted(steps, [cfg["steps"] * q for q in (0.25, 0.5, 0.75, 1.0)])]
    out = {}
    for dist in DISTRIBUTIONS:
        res = {}
        flowsim_run(cfg, dist, steps, None)  # warm-up: kernels loaded from the cache
        for label, workers in (("flowsim", None), ("flowsim_1_thread", 1)):
            times = []
            for _ in range(repeats):
                curves, comp, secs = flowsim_run(cfg, dist, steps, workers)
                times.append(secs)
            res[label] = dict(seconds=min(times), all_seconds=times, compile_seconds_in_run=comp,
                              final_mean_l4=curves[:, -1].mean(), curves=curves)
        curves_np, setup, secs = numpy_loop(cfg, dist, steps, cfg["seed"])
        res["numpy"] = dict(seconds=secs, setup_seconds=setup, final_mean_l4=curves_np[:, -1].mean(), curves=curves_np)
        if use_torch:
            import torch

            curves_t, setup, secs = torch_sgd(cfg, dist, steps, cfg["seed"])
            res["torch"] = dict(seconds=secs, setup_seconds=setup, final_mean_l4=curves_t[:, -1].mean(),
                                curves=curves_t, torch_version=torch.__version__, threads=torch.get_num_threads(),
                                dtype="float32")
        fl = res["flowsim"]
        for name in ("numpy", "torch"):
            if name in res:
                b = res[name]
                b["ratio_over_flowsim"] = b["seconds"] / fl["seconds"]
                b["ratio_over_flowsim_1_thread"] = b["seconds"] / res["flowsim_1_thread"]["seconds"]
                b["agreement"] = agreement(fl["curves"], b["curves"], steps, checkpoints)
                if dist == "bipolar":
                    s_b, s_f = (first_crossing(r["curves"], steps, cfg["threshold"]) for r in (b, fl))
                    b["to_sparsity"] = dict(
                        threshold=cfg["threshold"], steps_baseline=s_b, steps_flowsim=s_f,
                        ratio=(s_b * b["seconds"]) / (s_f * fl["seconds"]) if s_b and s_f else None)
        out[dist] = res
    return dict(record_steps=steps, checkpoints=checkpoints, results=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5000 steps (< 60 s), e.g. for CI")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_noise.json"),
                   help="where to write the results (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed flowsim repeats; the best is reported "
                   "(the baselines run once)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    t_start = time.perf_counter()
    data = {"benchmark": "bench_noise", "quick": args.quick, "repeats": args.repeats,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "flowsim_version": flowsim.__version__, "config": cfg}
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            use_torch = False
            data["torch_skipped"] = repr(err)
    elif args.no_torch:
        data["torch_skipped"] = "--no-torch"
    data["compile"] = compile_times()
    data.update(bench(cfg, args.repeats, use_torch))
    finish(data, args.json, t_start, report)


def report(data):
    mach, cfg = data["machine"], data["config"]
    print(f"flowsim {data['flowsim_version']} ({mach.get('flowsim_git_commit')}) | {mach.get('cpu_model')} "
          f"x{mach['cpu_count']} | load {mach.get('load_average_1_5_15min')} | {data['date_utc']}"
          f"{' | QUICK sizes' if data['quick'] else ''}")
    print(f"n={cfg['n']}, m={cfg['m']}, eta={cfg['eta']}, sigma={cfg['sigma']}, {cfg['instances']} instances, "
          f"{cfg['steps']} steps, shared noise; flowsim best of {data['repeats']}, baselines once")
    if "torch_skipped" in data:
        print(f"PyTorch baseline skipped: {data['torch_skipped']}")
    rows = []
    for dist, res in data["results"].items():
        for name in ("torch", "numpy", "flowsim_1_thread", "flowsim"):
            if name not in res:
                continue
            r = res[name]
            ag = r.get("agreement")
            rows.append([dist, name, fmt(r["seconds"]), fmt(1e6 * r["seconds"] / cfg["steps"]),
                         f"{r['ratio_over_flowsim']:.1f}x" if "ratio_over_flowsim" in r else "-",
                         f"{r['final_mean_l4']:.4f}",
                         "-" if ag is None else f"{sum(c['within_3se'] for c in ag['checkpoints'])}/"
                                                f"{len(ag['checkpoints'])}"])
    print_table(["noise", "implementation", "seconds", "us/step (5 inst)", "time / flowsim", "final mean l4",
                 "checkpoints within 3 s.e."], rows)
    for name in ("torch", "numpy"):
        b = data["results"]["bipolar"].get(name)
        if b and b.get("to_sparsity"):
            t = b["to_sparsity"]
            print(f"to sparsity (bipolar, instance mean >= {t['threshold']}): {name} at step {t['steps_baseline']}, "
                  f"flowsim at step {t['steps_flowsim']}; wall-time ratio {fmt(t['ratio'])}")
    print("\nagreement of instance means of mean ||W_i||_4^4 with flowsim (different random streams)")
    rows = []
    for dist, res in data["results"].items():
        for name in ("torch", "numpy"):
            for c in res.get(name, {}).get("agreement", {}).get("checkpoints", []):
                rows.append([dist, name, c["step"], f"{c['mean_flowsim']:.4f}", f"{c['mean_baseline']:.4f}",
                             f"{c['diff']:+.4f}", f"{c['combined_se']:.4f}", "yes" if c["within_3se"] else "NO"])
    print_table(["noise", "baseline", "step", "flowsim", "baseline", "diff", "combined s.e.", "|diff|<=3 s.e."], rows)
    c = data["compile"]
    print("\nper phase (seconds)")
    res = data["results"]["bipolar"]
    rows = [["flowsim", fmt(c["compile_seconds"]), fmt(c["warm"]["first_call_seconds"]), "-", fmt(res["flowsim"]["seconds"])]]
    for name in ("numpy", "torch"):
        if name in res:
            rows.append([name, "-", "-", fmt(res[name]["setup_seconds"]), fmt(res[name]["seconds"])])
    print_table(["implementation", "numba compile (cold - warm cache)", "cache load", "set-up", "steps (bipolar)"], rows)


if __name__ == "__main__":
    main()
