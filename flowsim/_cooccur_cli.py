"""``python -m flowsim.cooccur``: polysemantic neurons against co-occurrence.

The flow against q (the deterministic mode of ``flowsim.cooccur``), SGD against p
(``--stochastic``) or against q on the flow's own distribution (``--stochastic --data
mixture``); every run stored and resumable (``flowsim.sweep``); a figure, a CSV and a JSON
with provenance per experiment. See ``flowsim.cooccur`` for the model and the defaults.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .cooccur import DATA, check_probability, collision_fate, simulate_cooccur, train_stochastic
from .errors import FlowsimWarning, check_float, check_int, invalid
from .model import Model


PROG = "python -m flowsim.cooccur"
JSON_FORMAT_VERSION = 1
DEFAULT_Q = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75)
DEFAULT_P = (0.01, 0.03, 0.1)
DEFAULT_M = (64, 256, 1024)


def run_one(params):
    """One run of the experiment, summarised (JSON-ready dict).

    ``params["mode"]`` "flow": n, m, lam, c, seed, q, method, dt, t_max, tol, window,
    threshold. "sgd": n, m, lam, c, seed, data, p, q, lr, batch, steps, threshold.
    Returns :func:`flowsim.metrics.summary` (threshold and window counts, initial
    collisions), :func:`collision_fate`, status, times, ``w0_sha256``.
    """
    from . import metrics
    from .integrate import Stop
    from .provenance import weights_digest

    with warnings.catch_warnings():  # the command warned once already
        warnings.simplefilter("ignore", FlowsimWarning)
        model = Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    W0 = model.initial_weights()
    if params["mode"] == "flow":
        tr = simulate_cooccur(model, params["q"], params["t_max"], method=params["method"], dt=params["dt"],
                              W0=W0, save_at=[], stop=Stop(tol=params["tol"], window=params["window"]))
        st = tr.stats
        W, status = tr.W, ("converged" if st.status == "converged" else "not converged")
        extra = dict(t_converged=st.t_converged if status == "converged" else math.nan, t_end=st.t_end,
                     steps=st.steps, run_seconds=st.wall_seconds)
        interrupted = st.status == "interrupted"
    else:
        r = train_stochastic(model, params["steps"], params["lr"], params["batch"], data=params["data"],
                             p=params["p"], q=params["q"], seed=params["seed"], W0=W0)
        W, status, interrupted = r.W, "completed", r.status == "interrupted"
        extra = dict(t_end=r.steps * params["lr"], steps=r.steps, run_seconds=r.wall_seconds)
    if interrupted:
        raise KeyboardInterrupt
    out = metrics.summary(W0, W, threshold=params["threshold"], window=(0.8, 1.2))
    out.update(collision_fate(W0, W, params["threshold"]))
    out.update(status=status, w0_sha256=weights_digest(W0), **extra)
    return out


def parser():
    from argparse import BooleanOptionalAction
    from pathlib import Path

    from . import _cli

    from . import cooccur

    p = _cli.ArgumentParser(prog=PROG, description=cooccur.__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--stochastic", action="store_true",
      help="minibatch SGD on Bernoulli(p) features against p (default: the expected-loss flow against q)")
    a("--data", choices=DATA, default="bernoulli",
      help="--stochastic: bernoulli (each feature present w.p. p; default) or mixture (the flow's "
           "distribution: pairs w.p. q; a control of SGD against the flow)")
    a("--n", type=int, default=64, help="features (default 64)")
    a("--m", type=int, nargs="+", default=list(DEFAULT_M), help="hidden sizes (default 64 256 1024)")
    a("--seeds", type=int, default=8, help="runs per point (default 8)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--lam", type=float, default=0.01, help="L1 strength (default 0.01)")
    a("--c", type=float, default=1.0, help="force scale (default 1, the paper's)")
    a("--q", type=float, nargs="+", default=None,
      help="flow: pair probabilities (default 0 0.05 0.1 0.25 0.5 0.75); --stochastic: the "
           "copy probability of the pairs (0,1), (2,3), ... (default 0)")
    a("--p", type=float, nargs="+", default=None, help="--stochastic: feature probabilities (default 0.01 0.03 0.1)")
    a("--method", default="euler", help="flow: euler, heun or rk4 (default euler)")
    a("--dt", type=float, default=0.1, help="flow: step (default 0.1)")
    a("--t-max", type=float, default=2000.0, help="flow: cap on training time (default 2000)")
    a("--tol", type=float, default=1e-6, help="flow: convergence tolerance (default 1e-6)")
    a("--window", type=float, default=50.0, help="flow: convergence window (default 50)")
    a("--lr", type=float, default=0.15, help="--stochastic: learning rate (default 0.15)")
    a("--batch", type=int, default=32, help="--stochastic: minibatch size (default 32)")
    a("--steps", type=int, default=3000, help="--stochastic: SGD steps (default 3000: t = 450)")
    a("--threshold", type=float, default=0.5, help="|W_ik| above which k represents i (default 0.5)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--executor", choices=("local", "dask", "serial"), default="local", help="where runs execute")
    a("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    a("--resume", action=BooleanOptionalAction, default=True, help="reuse stored runs (default)")
    a("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bar or summary")
    return p


def specs_from_args(args):
    """The RunSpecs of the sweep, validated (one-line errors naming the option)."""
    from .integrate import EXPLICIT_METHODS
    from .sweep import RunSpec

    if args.seeds < 1:
        raise invalid("--seeds", args.seeds, "must be an integer >= 1")
    if args.workers is not None and args.workers < 1:
        raise invalid("--workers", args.workers, "must be an integer >= 1")
    check_float("--lam", args.lam, minimum=0.0)
    for name in ("c", "threshold"):
        check_float("--" + name, getattr(args, name), positive=True)
    seeds = range(args.seed0, args.seed0 + args.seeds)
    common = dict(n=args.n, lam=args.lam, c=args.c, threshold=args.threshold)
    specs = []
    if args.stochastic:
        check_float("--lr", args.lr, positive=True)
        check_int("--batch", args.batch, 1)
        check_int("--steps", args.steps, 1)
        sgd = dict(mode="sgd", data=args.data, lr=args.lr, batch=args.batch, steps=args.steps, **common)
        if args.data == "mixture":
            if args.p is not None:
                raise invalid("--p", args.p, "is not used with --data mixture (pairs come with probability --q)")
            grid = [(None, check_probability("--q", q)) for q in (DEFAULT_Q if args.q is None else args.q)]
        else:
            qs = [0.0] if args.q is None else args.q
            if len(qs) != 1:
                raise invalid("--q", args.q, "takes one value with --data bernoulli (the pair copy probability)")
            q = check_probability("--q", qs[0])
            grid = []
            for p in (DEFAULT_P if args.p is None else args.p):
                if check_probability("--p", p) == 0:
                    raise invalid("--p", p, "must be > 0 (no feature would ever be present)")
                grid.append((p, q))
        for m in args.m:
            _validate_model(args, m)
            for p, q in grid:
                for seed in seeds:
                    key = (f"sgd_n{args.n}_m{m}_p{p:g}_q{q:g}_seed{seed}" if args.data == "bernoulli"
                           else f"sgdmix_n{args.n}_m{m}_q{q:g}_seed{seed}")
                    specs.append(RunSpec(key, dict(m=m, seed=seed, p=p, q=q, **sgd)))
        return specs
    if args.data != "bernoulli":
        raise invalid("--data", args.data, "is used only with --stochastic")
    if args.p is not None:
        raise invalid("--p", args.p, "is used only with --stochastic")
    if args.method not in EXPLICIT_METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    for name in ("dt", "t_max", "tol", "window"):
        check_float("--" + name.replace("_", "-"), getattr(args, name), positive=True)
    qs = list(DEFAULT_Q) if args.q is None else args.q
    for q in qs:
        check_probability("--q", q)
    for m in args.m:
        _validate_model(args, m)
        for q in qs:
            for seed in seeds:
                params = dict(mode="flow", m=m, seed=seed, q=q, method=args.method, dt=args.dt,
                              t_max=args.t_max, tol=args.tol, window=args.window, **common)
                specs.append(RunSpec(f"flow_n{args.n}_m{m}_q{q:g}_seed{seed}", params))
    return specs


def _validate_model(args, m):
    Model(n=args.n, m=m, lam=args.lam, c=args.c, seed=args.seed0)  # one-line errors; warns once
    if args.n < 2:
        raise invalid("--n", args.n, "must be an integer >= 2 (pairs of features)")


FIELDS = ("polysemantic", "polysemantic_window", "dead", "final_benign", "final_malign",
          "benign_survived", "malign_survived", "benign", "malign")


def table(rows, x):
    """Per (m, x) with x "q" or "p": runs, ok (converged / completed), and mean and standard
    error (ddof 1, over the ok runs) of every field of FIELDS."""
    out = []
    for m in sorted({r["m"] for r in rows}):
        for v in sorted({r[x] for r in rows if r["m"] == m}):
            runs = [r for r in rows if r["m"] == m and r[x] == v]
            ok = [r for r in runs if r["status"] in ("converged", "completed")]
            row = dict(m=m, **{x: v}, runs=len(runs), ok=len(ok))
            for f in FIELDS:
                y = np.array([r[f] for r in ok], dtype=float)
                row[f] = float(y.mean()) if ok else math.nan
                row[f + "_se"] = float(y.std(ddof=1) / math.sqrt(len(y))) if len(ok) > 1 else math.nan
            out.append(row)
    return out


def figure(tab, x, n):
    """Polysemantic neurons (± s.e.) against x per m, with n²/(4m) at x = 0; final
    benign and malign polysemantic neurons; initial benign collisions that survive."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for m in sorted({r["m"] for r in tab}):
        rs = [r for r in tab if r["m"] == m]
        xs = [r[x] for r in rs]
        line = axes[0].errorbar(xs, [r["polysemantic"] for r in rs], yerr=[r["polysemantic_se"] for r in rs],
                                marker="o", capsize=3, label=f"m = {m}")
        col = line[0].get_color()
        axes[0].axhline(n * n / (4 * m), color=col, ls=":", lw=0.8)
        axes[1].plot(xs, [r["final_benign"] for r in rs], marker="o", color=col, label=f"benign, m = {m}")
        axes[1].plot(xs, [r["final_malign"] for r in rs], marker="x", ls="--", color=col, label=f"malign, m = {m}")
        axes[2].plot(xs, [r["benign_survived"] / r["benign"] if r["benign"] else math.nan for r in rs],
                     marker="o", color=col, label=f"m = {m}")
    label = {"q": "q (probability that an input is a pair e_i + e_j)", "p": "p (feature probability)"}[x]
    for ax in axes:
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if x == "p":
            ax.set_xscale("log")
    axes[0].set_ylabel("polysemantic neurons (|W_ik| > 0.5)")
    axes[0].set_title("polysemanticity (dotted: n²/(4m))")
    axes[1].set_ylabel("final polysemantic neurons")
    axes[1].set_title("benign (mixed signs) vs malign (one sign)")
    axes[2].set_ylabel("fraction")
    axes[2].set_title("initial benign collisions that survive")
    return fig


def main(argv=None):
    import os
    import sys

    from . import _cli
    from ._version import __version__
    from .io import write_csv, write_json
    from .provenance import environment
    from .sweep import results_table, strict_json

    args = parser().parse_args(argv)
    specs = specs_from_args(args)
    _cli.check_out_dir(args.out)
    stem = ("cooccur_sgd" + ("_mixture" if args.data == "mixture" else "")) if args.stochastic else "cooccur"
    x = "p" if args.stochastic and args.data == "bernoulli" else "q"
    store = args.out / f"{stem}_runs"
    done = _cli.sweep_command(PROG, run_one, specs, store, args)
    if done is None:
        return _cli.EXIT_INTERRUPTED
    sweep, wall = done
    rows = results_table(specs, sweep.results)
    tab = table(rows, x) if rows else []
    write_csv(args.out / f"{stem}.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, command=PROG, argv=sys.argv, flowsim_version=__version__,
                environment=environment(), load_average=list(os.getloadavg()),
                parameters={k: (str(v) if k == "out" else v) for k, v in vars(args).items()},
                wall_seconds=wall, runs=len(specs), finished=len(sweep.results), skipped=len(sweep.skipped),
                rerun=sweep.rerun, failed=sweep.failed,
                not_ok=sum(r["status"] not in ("converged", "completed") for r in rows), table=tab)
    if tab and not args.no_plot:
        from .plotting import save_figure

        save_figure(figure(tab, x, args.n), args.out / f"{stem}.png")
    write_json(args.out / f"{stem}.json", strict_json(meta))
    if not args.quiet:
        print(f"{len(sweep.results)} runs in {wall:.1f} s ({len(sweep.skipped)} reused); "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'m':>5} {x:>5} {'ok':>5} {'poly':>6} {'±se':>5} {'benign':>6} {'malign':>6} {'dead':>5} "
              f"{'init benign kept':>16}")
        for r in tab:
            print(f"{r['m']:>5} {r[x]:>5g} {r['ok']:>2}/{r['runs']:<2} {r['polysemantic']:>6.2f} "
                  f"{r['polysemantic_se']:>5.2f} {r['final_benign']:>6.2f} {r['final_malign']:>6.2f} "
                  f"{r['dead']:>5.2f} {r['benign_survived']:>7.2f}/{r['benign']:<7.2f}")
        print(f"wrote {args.out}/ ({stem}.png, {stem}.csv, {stem}.json, {stem}_runs/)")
    not_ok = meta["not_ok"]
    if not_ok:
        sys.stderr.write(f"{PROG}: warning: {not_ok} runs did not converge by --t-max; they are left out "
                         "of the means\n")
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
        return 1
    return _cli.EXIT_OK

