"""``python -m flowsim.polysemantic``: incidental polysemanticity at scale (Figure 3).

Trains the full model (all three forces) for every (m, seed) until it converges and
counts polysemantic neurons. Writes into ``--out``: ``figure3_polysemantic.png`` (mean
± std against m, log–log, with n²/(4m) and n(n−1)/(2m)), ``figure3_collisions.png``
(initial benign collisions against final polysemantic neurons, per run),
``polysemantic.csv`` (one row per run) and ``polysemantic.json`` (parameters, per-m
table, timing). Each finished run is stored at once in ``<out>/polysemantic_runs/``,
and a stored run made with the same parameters and flowsim version is reused
(``--no-resume`` runs everything again). A run that reaches ``--t-max`` before the
convergence rule holds is ``"not converged"``: it is kept in the CSV, counted apart and
left out of the per-m means.
"""
from __future__ import annotations

import math
import os
import sys
import time
from argparse import BooleanOptionalAction
from pathlib import Path

import numpy as np

from . import _cli, metrics, theory
from ._version import __version__
from .errors import invalid
from .integrate import EXPLICIT_METHODS, Stop, simulate
from .io import write_csv, write_json
from .model import Model

PROG = "python -m flowsim.polysemantic"
DEFAULT_M = tuple(range(256, 4097, 256))
#: Version of the layout of ``polysemantic.json``.
JSON_FORMAT_VERSION = 1


def run_one(params):
    """One training run to convergence, summarised by the polysemanticity metrics.

    Parameters
    ----------
    params : dict
        n, m, lam, c, seed, method, dt, t_max, tol, window, threshold, sparse_below:
        every input that shapes the result (with the flowsim version).

    Returns
    -------
    dict
        JSON-ready metrics (see :func:`flowsim.metrics.summary`) and run statistics:
        ``status`` is ``"converged"`` when the stop rule held for a whole window before
        ``t_max``, else ``"not converged"``; ``t_converged`` is the time from which it
        held (NaN when not converged); ``t_end`` the time of the final state.

    Raises
    ------
    KeyboardInterrupt
        When the run was interrupted (a partial run is not a result).
    """
    model = Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    W0 = model.initial_weights()
    traj = simulate(model, params["t_max"], method=params["method"], dt=params["dt"], W0=W0,
                    save_at=[], stop=Stop(tol=params["tol"], window=params["window"]),
                    sparse_below=params["sparse_below"])
    stats = traj.stats
    if stats.status == "interrupted":
        raise KeyboardInterrupt
    converged = stats.status == "converged"
    out = metrics.summary(W0, traj.W, threshold=params["threshold"], window=(0.8, 1.2))
    out.update(status="converged" if converged else "not converged",
               t_converged=getattr(stats, "t_converged", stats.t_end) if converged else math.nan,
               t_end=stats.t_end, steps=stats.steps,
               run_seconds=stats.wall_seconds, compile_seconds=stats.compile_seconds,
               max_nnz=int(traj.nnz[-1].max()), mean_l2sq=float(traj.l2sq[-1].mean()),
               polysemantic_expected=theory.polysemantic_expected(model.n, model.m),
               collisions_expected=theory.collisions_expected(model.n, model.m))
    return out


def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--n", type=int, default=256, help="features (default 256)")
    a("--m", type=int, nargs="+", default=list(DEFAULT_M), help="hidden sizes (default 256, 512, ..., 4096)")
    a("--seeds", type=int, default=16, help="runs per m (seeds seed0 .. seed0+seeds-1, default 16)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--lam", type=float, default=0.01, help="L1 strength (default 0.01)")
    a("--c", type=float, default=1.0, help="force scale (default 1, the paper's)")
    a("--method", default="euler", help=f"one of {', '.join(EXPLICIT_METHODS)} (default euler)")
    a("--dt", type=float, default=0.1, help="step (default 0.1)")
    a("--t-max", type=float, default=None, help="cap on training time (default 100/lam)")
    a("--tol", type=float, default=1e-6, help="converged when max|dW|/dt < tol over a window (default 1e-6)")
    a("--window", type=float, default=50.0, help="convergence window in time units (default 50)")
    a("--threshold", type=float, default=0.5, help="|W_ik| above which a neuron represents a feature (default 0.5)")
    a("--sparse-below", type=float, default=0.15, help="density at which the sparse engine takes over (0: never)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--executor", choices=("local", "dask", "serial"), default="local", help="where runs execute (default local)")
    a("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    a("--scheduler", default=None, help="address of a running Dask scheduler (with --executor dask)")
    a("--resume", action=BooleanOptionalAction, default=True,
      help="reuse runs stored in OUT/polysemantic_runs/ with the same parameters and flowsim "
           "version (default); --no-resume runs everything again")
    a("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bar or summary")
    return p


def specs_from_args(args):
    """The list of RunSpec of a sweep, validated (one-line errors)."""
    from .sweep import RunSpec

    if args.method not in EXPLICIT_METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    if args.seeds < 1:
        raise invalid("--seeds", args.seeds, "must be an integer >= 1")
    if args.workers is not None and args.workers < 1:
        raise invalid("--workers", args.workers, "must be an integer >= 1")
    if args.scheduler and args.executor != "dask":
        raise invalid("--scheduler", args.scheduler, "needs --executor dask")
    for name in ("dt", "tol", "window", "threshold"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            raise invalid(f"--{name}", v, "must be a finite number > 0")
    if not (args.lam > 0 and math.isfinite(args.lam)):
        raise invalid("--lam", args.lam, "must be a finite number > 0 (L1 drives the sparsification)")
    t_max = args.t_max if args.t_max is not None else 100.0 / args.lam
    if not (math.isfinite(t_max) and t_max > 0):
        raise invalid("--t-max", t_max, "must be a finite number > 0")
    specs = []
    for m in args.m:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            Model(n=args.n, m=m, lam=args.lam, c=args.c, seed=seed)  # validates every value
            params = dict(n=args.n, m=m, lam=args.lam, c=args.c, seed=seed, method=args.method,
                          dt=args.dt, t_max=t_max, tol=args.tol, window=args.window,
                          threshold=args.threshold, sparse_below=args.sparse_below)
            specs.append(RunSpec(key=f"n{args.n}_m{m}_seed{seed}", params=params))
    return specs


def per_m_table(rows, n):
    """Polysemantic count per m, over the runs that converged, with the theory.

    Parameters
    ----------
    rows : list of dict
        ``results_table`` rows (``m``, ``status``, ``polysemantic``, ``benign``).
    n : int

    Returns
    -------
    list of dict, one per m (ascending)
        ``runs``, ``converged``, ``not_converged`` (counts); ``mean``, ``std`` (ddof 1;
        0 for one run) and ``benign_mean`` over the converged runs only (NaN when none
        converged); ``n2_over_4m`` and ``collisions_expected``.
    """
    table = []
    for m in sorted({r["m"] for r in rows}):
        runs = [r for r in rows if r["m"] == m]
        ok = [r for r in runs if r["status"] == "converged"]
        ys = np.array([r["polysemantic"] for r in ok], dtype=float)
        col = np.array([r["benign"] for r in ok], dtype=float)
        table.append(dict(m=m, runs=len(runs), converged=len(ok), not_converged=len(runs) - len(ok),
                          mean=float(ys.mean()) if ok else math.nan,
                          std=float(ys.std(ddof=1)) if len(ok) > 1 else (0.0 if ok else math.nan),
                          benign_mean=float(col.mean()) if ok else math.nan,
                          n2_over_4m=theory.polysemantic_expected(n, m),
                          collisions_expected=theory.collisions_expected(n, m)))
    return table


def main(argv=None):
    args = parser().parse_args(argv)
    specs = specs_from_args(args)
    if args.executor != "serial":  # one BLAS/numba thread per worker process
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    from .sweep import results_table, run_sweep

    store = args.out / "polysemantic_runs"
    tick = time.perf_counter()
    try:
        sweep = run_sweep(run_one, specs, store, executor=args.executor, workers=args.workers,
                          scheduler=args.scheduler, resume=args.resume, retries=args.retries,
                          progress=not args.quiet)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; finished runs are in {store}/ "
                         "(the same command again runs only what is missing)\n")
        return _cli.EXIT_INTERRUPTED
    wall = time.perf_counter() - tick
    rows = results_table(specs, sweep.results)
    table = per_m_table(rows, args.n) if rows else []
    _write_outputs(args, specs, sweep, rows, table, wall)
    unconverged = [r["key"] for r in rows if r["status"] != "converged"]
    if unconverged:
        sys.stderr.write(f"{PROG}: warning: {len(unconverged)} of {len(rows)} runs did not converge "
                         f"by t_max={specs[0].params['t_max']:g} (e.g. {unconverged[0]}); they are "
                         "left out of the per-m means (raise --t-max or --tol)\n")
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
    if not args.quiet:
        _print_summary(args, sweep, table, wall)
    return 1 if sweep.failed else _cli.EXIT_OK


def _write_outputs(args, specs, sweep, rows, table, wall):
    """polysemantic.csv, the two figures and polysemantic.json (strict JSON: NaN as null)."""
    from .sweep import strict_json

    write_csv(args.out / "polysemantic.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, flowsim_version=__version__, command=PROG,
                argv=sys.argv, parameters={k: v for k, v in specs[0].params.items() if k not in ("m", "seed")},
                m=args.m, seeds=list(range(args.seed0, args.seed0 + args.seeds)),
                executor=args.executor, workers=args.workers, wall_seconds=wall,
                runs=len(specs), finished=len(sweep.results), skipped=len(sweep.skipped),
                rerun=sweep.rerun, failed=sweep.failed,
                converged=sum(r["status"] == "converged" for r in rows),
                not_converged=sum(r["status"] != "converged" for r in rows), per_m=table)
    if rows and not args.no_plot:
        from .plotting import figure3, figure3_collisions, save_figure

        save_figure(figure3(table, rows, args.n), args.out / "figure3_polysemantic.png")
        save_figure(figure3_collisions(rows), args.out / "figure3_collisions.png")
    write_json(args.out / "polysemantic.json", strict_json(meta))


def _print_summary(args, sweep, table, wall):
    print(f"{len(sweep.results)} runs finished in {wall:.1f} s ({len(sweep.skipped)} stored runs "
          f"reused, {len(sweep.rerun)} stored runs re-run: other parameters or flowsim version)")
    print(f"{'m':>6} {'conv.':>6} {'mean':>7} {'std':>6} {'n²/4m':>7}")
    for r in table:
        print(f"{r['m']:>6} {r['converged']:>3}/{r['runs']:<2} {r['mean']:>7.2f} {r['std']:>6.2f} "
              f"{r['n2_over_4m']:>7.2f}")
    print(f"wrote {args.out}/ (figure3_polysemantic.png, figure3_collisions.png, polysemantic.csv, polysemantic.json)")


if __name__ == "__main__":
    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
