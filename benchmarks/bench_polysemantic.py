"""Benchmark of the full dynamics (issue "Incidental polysemanticity at scale").

Usage::

    python benchmarks/bench_polysemantic.py [--quick] [--json PATH] [--no-torch]

Baseline 1: dense NumPy proximal Euler, two matrix products per step and a
soft-threshold, ``W ← S_{hλ}(W + h F(W))``, with the same dt, seed and convergence rule
as flowsim (supports unchanged and ``max|ΔW| <= tol·window`` over a window), n = 256,
m = 4096, λ = 0.01, run to convergence. flowsim runs ``simulate(method="euler")`` (the
same steps: dense BLAS phase, then the sparse working-set engine). Reported: wall times,
the ratio, and whether the final supports are identical.

Baseline 2 (if torch is installed): the model trained the way the published code did:
PyTorch on the CPU, the full batch of n basis vectors, plain SGD with learning rate dt on
``Σ ||ReLU(W Wᵀ x) - x||² + λ |Wᵀ x|₁`` (the c = 4 flow; subgradient, so weights
oscillate around 0 instead of being exactly 0). It runs as many steps as flowsim's
c = 4 run needed to converge; the ratio is of wall times for those steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowsim  # noqa: E402
from flowsim import Model, Stop, simulate  # noqa: E402
from flowsim.io import write_json  # noqa: E402

from bench_steppers import machine_info  # noqa: E402

FULL = dict(n=256, m=4096, lam=0.01, dt=0.1, tol=1e-6, window=50.0, seed=0, t_cap=1e4)
QUICK = dict(n=64, m=512, lam=0.01, dt=0.1, tol=1e-6, window=50.0, seed=0, t_cap=1e4)


def numpy_proximal_euler(W0, lam, dt, tol, window, t_cap, c=1.0):
    """Dense proximal Euler to convergence. Returns (W, steps, t)."""
    W = W0.copy()
    every = max(int(round(window / dt)), 1)
    W_check = W.copy()
    steps = 0
    while steps * dt < t_cap:
        G = W @ W.T
        norms = np.diag(G).copy()
        P = np.maximum(G, 0.0)
        np.fill_diagonal(P, 0.0)
        V = W + dt * (c * (1.0 - norms)[:, None] * W - c * (P @ W))
        W = np.sign(V) * np.maximum(np.abs(V) - dt * lam, 0.0)
        steps += 1
        if steps % every == 0:
            if np.array_equal(W != 0, W_check != 0) and np.abs(W - W_check).max() <= tol * every * dt:
                break
            W_check = W.copy()
    return W, steps, steps * dt


def torch_sgd(W0, lam, dt, steps):
    """Full-batch SGD on the autoencoder loss in PyTorch (CPU). Returns (W, seconds)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    W = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    x = torch.eye(W0.shape[0], dtype=torch.float64)
    opt = torch.optim.SGD([W], lr=dt)
    tick = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        h = x @ W
        y = torch.relu(h @ W.T)
        loss = ((y - x) ** 2).sum() + lam * h.abs().sum()
        loss.backward()
        opt.step()
    return W.detach().numpy(), time.perf_counter() - tick


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_polysemantic.json"))
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    model = Model(n=p["n"], m=p["m"], lam=p["lam"], seed=p["seed"])
    W0 = model.initial_weights()
    stop = Stop(tol=p["tol"], window=p["window"])
    res = dict(params=p, machine=machine_info(), flowsim_version=flowsim.__version__)

    simulate(Model(n=8, m=16, lam=p["lam"]), 1.0, method="euler", dt=p["dt"])  # warm-up
    tr = simulate(model, p["t_cap"], method="euler", dt=p["dt"], W0=W0, stop=stop, save_at=[])
    res["flowsim"] = dict(seconds=tr.stats.wall_seconds, compile_seconds=tr.stats.compile_seconds,
                          steps=tr.stats.steps, t_end=tr.stats.t_end, status=tr.stats.status)
    tr_dense = simulate(model, p["t_cap"], method="euler", dt=p["dt"], W0=W0, stop=stop, save_at=[],
                        sparse_below=0.0)
    res["flowsim_dense_only"] = dict(seconds=tr_dense.stats.wall_seconds, steps=tr_dense.stats.steps)

    tick = time.perf_counter()
    Wb, steps_b, t_b = numpy_proximal_euler(W0, p["lam"], p["dt"], p["tol"], p["window"], p["t_cap"])
    base = time.perf_counter() - tick
    res["numpy_baseline"] = dict(seconds=base, steps=steps_b, t_end=t_b)
    res["ratio_numpy_over_flowsim"] = base / tr.stats.wall_seconds
    res["ratio_numpy_over_flowsim_dense_only"] = base / tr_dense.stats.wall_seconds
    res["identical_supports"] = bool(np.array_equal(Wb != 0, tr.W != 0))
    res["max_abs_diff_W"] = float(np.abs(Wb - tr.W).max())
    print(f"n={p['n']} m={p['m']} lam={p['lam']} dt={p['dt']}: to convergence")
    print(f"  numpy proximal Euler   {base:8.2f} s  {steps_b} steps")
    print(f"  flowsim euler          {tr.stats.wall_seconds:8.2f} s  {tr.stats.steps} steps "
          f"(compile/load {tr.stats.compile_seconds:.2f} s)  ratio {res['ratio_numpy_over_flowsim']:.1f}x")
    print(f"  flowsim dense only     {tr_dense.stats.wall_seconds:8.2f} s  ratio {res['ratio_numpy_over_flowsim_dense_only']:.1f}x")
    print(f"  identical final supports: {res['identical_supports']}  max|ΔW| = {res['max_abs_diff_W']:.2e}")

    try:
        if args.no_torch:
            raise ImportError("--no-torch")
        import torch  # noqa: F401
    except ImportError as err:
        res["torch"] = dict(skipped=str(err))
        print(f"  torch baseline skipped ({err})")
    else:
        m4 = model.replace(c=4.0)
        tr4 = simulate(m4, p["t_cap"], method="euler", dt=p["dt"], W0=W0, stop=stop, save_at=[])
        Wt, secs = torch_sgd(W0, p["lam"], p["dt"], tr4.stats.steps)
        res["torch"] = dict(seconds=secs, steps=tr4.stats.steps, flowsim_seconds=tr4.stats.wall_seconds,
                            ratio_torch_over_flowsim=secs / tr4.stats.wall_seconds,
                            torch_exact_zeros=int(np.count_nonzero(Wt == 0)),
                            flowsim_exact_zeros=int(np.count_nonzero(tr4.W == 0)),
                            max_abs_diff_W=float(np.abs(Wt - tr4.W).max()), torch_version=torch.__version__)
        print(f"  torch SGD (c=4, lr=dt={p['dt']:g}, {tr4.stats.steps} steps) {secs:8.2f} s vs flowsim "
              f"{tr4.stats.wall_seconds:.2f} s: ratio {res['torch']['ratio_torch_over_flowsim']:.1f}x; "
              f"max|ΔW| = {res['torch']['max_abs_diff_W']:.2e}")
    write_json(args.json, res)
    print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
