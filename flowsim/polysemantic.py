"""``python -m flowsim.polysemantic``: incidental polysemanticity at scale (Figure 3).

Trains the full model (all three forces) for every (m, seed) and counts polysemantic
neurons. ``--optimizer flow`` (default) integrates the gradient flow until it converges
and writes into ``--out``: ``figure3_polysemantic.png`` (mean ± std against m, log–log,
with n²/(4m) and n(n−1)/(2m)), ``figure3_collisions.png`` (initial benign collisions
against final polysemantic neurons, per run), ``polysemantic.csv`` (one row per run) and
``polysemantic.json`` (parameters, per-m table, timing). ``--optimizer
sgd|momentum|adam|adamw`` trains with that optimizer instead (``flowsim.optim``; c = 4,
the published loss; ``--lr --steps --l1``) and writes ``figure3_polysemantic_<opt>.png``,
``polysemantic_<opt>.csv`` and ``polysemantic_<opt>.json``; ``--paper`` sets the published
procedure (AdamW, lr 1e-3, 7,500 steps, l1 1e-3, counted in the window [0.8, 1.2]).
``--compare`` runs the flow and the optimizer on the same seeds, hence the same initial
weights, and writes ``figure3_flow_vs_<opt>.png`` (both curves, n²/(4m) and the published
read-offs), ``figure3_flow_vs_<opt>_runs.png`` (flow count against optimizer count per
run), ``flow_vs_<opt>.csv`` and ``flow_vs_<opt>.json``.

Each finished run is stored at once in ``<out>/polysemantic_runs/``, and a stored run
made with the same parameters and flowsim version is reused (``--no-resume`` runs
everything again). A flow run that reaches ``--t-max`` before the convergence rule holds
is ``"not converged"``: it is kept in the CSV, counted apart and left out of the per-m
means. Optimizer runs take a fixed number of steps (status ``"completed"``).
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
from .errors import FlowsimInputError, invalid
from .integrate import ADAPTIVE_METHODS, EXPLICIT_METHODS, TOLERANCES, Stop, simulate
from .io import write_csv, write_json
from .model import Model
from .provenance import weights_digest

PROG = "python -m flowsim.polysemantic"
DEFAULT_M = tuple(range(256, 4097, 256))
#: Version of the layout of ``polysemantic.json`` (and of the optimizer and comparison JSON).
JSON_FORMAT_VERSION = 1
#: Version of the layout of ``flow_vs_<opt>.json``.
COMPARE_FORMAT_VERSION = 1
OPTIMIZER_CHOICES = ("flow", "sgd", "momentum", "adam", "adamw")
#: The flow's options and their defaults (the paper's Figure 3 as flowsim integrates it).
FLOW_DEFAULTS = dict(lam=0.01, c=1.0, method="bs32", dt=None, rtol=None, atol=None, t_max=None, tol=1e-6,
                     window=50.0, sparse_below=0.15)
#: Step of the fixed-step methods when --dt is not given.
DEFAULT_DT = 0.1
#: The discrete optimizers' options; lr, steps and l1 default to the published procedure.
OPTIM_DEFAULTS = dict(lr=1e-3, steps=7500, l1=1e-3, momentum=None, betas=None, eps=None,
                      weight_decay=None, proximal=None)
#: Published Figure 3 (AdamW, n = 256, 16 runs), read off the plot: m -> (low, high).
PUBLISHED_FIGURE3 = {256: (72.0, 72.0), 512: (24.0, 24.0), 1024: (10.0, 10.0), 2048: (5.4, 5.4),
                     4096: (3.3, 3.8)}
#: Statuses of runs that count in the per-m means (flow: converged; optimizers: all steps done).
OK_STATUS = ("converged", "completed")
COUNT_FIELDS = {"threshold": "polysemantic", "window": "polysemantic_window"}


# --------------------------------------------------------------------------- one run

def run_one(params):
    """One training run, summarised by the polysemanticity metrics.

    Parameters
    ----------
    params : dict
        Flow (no ``optimizer`` key, or ``"flow"``): n, m, lam, c, seed, method, dt,
        t_max, tol, window, threshold, sparse_below. Optimizer: n, m, seed, optimizer,
        lr, steps, l1, c, threshold and the optimizer's hyper-parameters (see
        :func:`optimizer_params`). Every input that shapes the result (with the
        flowsim version).

    Returns
    -------
    dict
        JSON-ready metrics (see :func:`flowsim.metrics.summary`; both the threshold and
        the window counts) and run statistics; ``w0_sha256`` is the digest of the initial
        weights. Flow: ``status`` is ``"converged"`` when the stop rule held for a whole
        window before ``t_max``, else ``"not converged"``; ``t_converged`` is the time
        from which it held (NaN when not converged); ``t_end`` the time of the final
        state. Optimizer: ``status`` ``"completed"``, ``t_end`` = steps × lr.

    Raises
    ------
    KeyboardInterrupt
        When the run was interrupted (a partial run is not a result).
    """
    if params.get("optimizer", "flow") != "flow":
        return _run_optimizer(params)
    model = Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    W0 = model.initial_weights()
    traj = simulate(model, params["t_max"], method=params["method"], dt=params["dt"], W0=W0,
                    save_at=[], stop=Stop(tol=params["tol"], window=params["window"]),
                    sparse_below=params["sparse_below"], rtol=params.get("rtol"), atol=params.get("atol"))
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
               w0_sha256=weights_digest(W0),
               polysemantic_expected=theory.polysemantic_expected(model.n, model.m),
               collisions_expected=theory.collisions_expected(model.n, model.m))
    return out


def optimizer_params(name, **hyper):
    """The resolved hyper-parameters of optimizer ``name`` (PyTorch defaults filled in),
    as they go into a run's params: every field of :class:`flowsim.optim.Optimizer` but
    ``name``, those the optimizer does not have left out."""
    from .optim import Optimizer

    d = Optimizer(name, **hyper).as_dict()
    return {k: v for k, v in d.items() if k != "name" and v is not None}


def _run_optimizer(params):
    from .optim import Optimizer, train

    model = Model(n=params["n"], m=params["m"], lam=params["l1"], c=params["c"], seed=params["seed"])
    hyper = {k: params[k] for k in ("lr", "momentum", "dampening", "nesterov", "betas", "eps",
                                    "weight_decay", "proximal") if k in params}
    opt = Optimizer(params["optimizer"], **hyper)
    W0 = model.initial_weights()
    tr = train(model, opt, params["steps"], W0=W0, save_at=[])
    stats = tr.stats
    if stats.status == "interrupted":
        raise KeyboardInterrupt
    W = tr.W[0]
    out = metrics.summary(W0, W, threshold=params["threshold"], window=(0.8, 1.2))
    out.update(status="completed", t_end=stats.t_end, steps=stats.steps,
               run_seconds=stats.wall_seconds, compile_seconds=stats.compile_seconds,
               max_nnz=int(tr.nnz[-1, 0].max()), mean_l2sq=float(tr.l2sq[-1, 0].mean()),
               loss=float(tr.loss[-1, 0].sum()), small_weights=int(np.count_nonzero(np.abs(W) < 0.01)),
               w0_sha256=weights_digest(W0),
               polysemantic_expected=theory.polysemantic_expected(model.n, model.m),
               collisions_expected=theory.collisions_expected(model.n, model.m))
    return out


# --------------------------------------------------------------------------- arguments

def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--n", type=int, default=256, help="features (default 256)")
    a("--m", type=int, nargs="+", default=list(DEFAULT_M), help="hidden sizes (default 256, 512, ..., 4096)")
    a("--seeds", type=int, default=16, help="runs per m (seeds seed0 .. seed0+seeds-1, default 16)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--optimizer", choices=OPTIMIZER_CHOICES, default=None,
      help="flow: gradient flow to convergence (default); or a discrete optimizer on the c = 4 loss")
    a("--paper", action="store_true",
      help="the published procedure: --optimizer adamw, lr 1e-3, 7500 steps, l1 1e-3, --count window")
    a("--compare", action="store_true",
      help="run the flow and the optimizer on the same seeds and write the comparison")
    a("--count", choices=tuple(COUNT_FIELDS), default=None,
      help="rule of the per-m counts: |W_ik| > --threshold (default), or 0.8 <= |W_ik| <= 1.2 "
           "(the paper's; default with --paper)")
    g = p.add_argument_group("flow (--optimizer flow, or --compare)")
    g.add_argument("--lam", type=float, default=None, help="L1 strength (default 0.01)")
    g.add_argument("--c", type=float, default=None, help="force scale (default 1, the paper's)")
    g.add_argument("--method", default=None,
                   help=f"one of {', '.join(EXPLICIT_METHODS + ADAPTIVE_METHODS)} (default bs32: "
                        "converged in the step size, benchmarks/study_dt.py)")
    g.add_argument("--dt", type=float, default=None, help="step of euler/heun/rk4 (default 0.1)")
    g.add_argument("--rtol", type=float, default=None, help="bs32: relative tolerance (default 1e-3)")
    g.add_argument("--atol", type=float, default=None, help="bs32: absolute tolerance (default 1e-6)")
    g.add_argument("--t-max", type=float, default=None, help="cap on training time (default 100/lam)")
    g.add_argument("--tol", type=float, default=None,
                   help="converged when max|dW|/dt < tol over a window (default 1e-6)")
    g.add_argument("--window", type=float, default=None, help="convergence window in time units (default 50)")
    g.add_argument("--sparse-below", type=float, default=None,
                   help="density at which the sparse engine takes over (default 0.15; 0: never)")
    o = p.add_argument_group("discrete optimizers (--optimizer sgd|momentum|adam|adamw, --paper)")
    o.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3)")
    o.add_argument("--steps", type=int, default=None, help="training steps (default 7500)")
    o.add_argument("--l1", type=float, default=None, help="L1 strength of the loss (default 1e-3)")
    o.add_argument("--momentum", type=float, default=None, help="momentum: momentum factor (default 0.9)")
    o.add_argument("--betas", type=float, nargs=2, default=None, help="adam/adamw: betas (default 0.9 0.999)")
    o.add_argument("--eps", type=float, default=None, help="adam/adamw: eps (default 1e-8)")
    o.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default 0; adamw 0.01, decoupled)")
    o.add_argument("--proximal", action="store_true", default=None,
                   help="sgd: apply the L1 term by soft-thresholding after each step")
    a("--threshold", type=float, default=0.5, help="|W_ik| above which a neuron represents a feature (default 0.5)")
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


def resolve(args):
    """Fill in the mode-dependent defaults of ``args`` in place and check that no option
    is given that the chosen mode does not use. Returns ``(flow, optimizer)``: whether
    flow runs are made, and the optimizer's name or None."""
    if args.paper and args.optimizer is None:
        args.optimizer = "adamw"
    name = args.optimizer or "flow"
    if args.compare and name == "flow":
        raise invalid("--compare", True, "needs --optimizer sgd, momentum, adam or adamw (or --paper)")
    flow = name == "flow" or args.compare
    optimizer = None if name == "flow" else name
    for key, default in FLOW_DEFAULTS.items():
        value = getattr(args, key)
        if value is not None and not flow:
            raise invalid("--" + key.replace("_", "-"), value,
                          "is used only by the flow (--optimizer flow, or with --compare)")
        if value is None:
            setattr(args, key, default)
    for key, default in OPTIM_DEFAULTS.items():
        value = getattr(args, key)
        if value is not None and optimizer is None:
            raise invalid("--" + key.replace("_", "-"), value,
                          "is used only with --optimizer sgd, momentum, adam or adamw (or --paper)")
        if value is None:
            setattr(args, key, default)
    if args.count is None:
        args.count = "window" if args.paper else "threshold"
    return flow, optimizer


def specs_from_args(args):
    """The list of RunSpec of a sweep, validated (one-line errors): the flow runs, then the
    optimizer runs (after :func:`resolve`; ``resolve`` is applied if it was not)."""
    from .sweep import RunSpec

    if not hasattr(args, "_modes"):
        args._modes = resolve(args)
    flow, optimizer = args._modes
    if args.seeds < 1:
        raise invalid("--seeds", args.seeds, "must be an integer >= 1")
    if args.workers is not None and args.workers < 1:
        raise invalid("--workers", args.workers, "must be an integer >= 1")
    if args.scheduler and args.executor != "dask":
        raise invalid("--scheduler", args.scheduler, "needs --executor dask")
    if not (math.isfinite(args.threshold) and args.threshold > 0):
        raise invalid("--threshold", args.threshold, "must be a finite number > 0")
    seeds = range(args.seed0, args.seed0 + args.seeds)
    specs = []
    if flow:
        common = _flow_params(args)
        for m in args.m:
            for seed in seeds:
                Model(n=args.n, m=m, lam=args.lam, c=args.c, seed=seed)  # validates every value
                params = dict(n=args.n, m=m, lam=args.lam, c=args.c, seed=seed, **common)
                specs.append(RunSpec(key=f"n{args.n}_m{m}_seed{seed}", params=params))
    if optimizer is not None:
        hyper = _optimizer_hyper(args, optimizer)
        for m in args.m:
            for seed in seeds:
                Model(n=args.n, m=m, lam=args.l1, c=4.0, seed=seed)
                params = dict(n=args.n, m=m, seed=seed, optimizer=optimizer, steps=args.steps,
                              l1=args.l1, c=4.0, threshold=args.threshold, **hyper)
                specs.append(RunSpec(key=f"n{args.n}_m{m}_seed{seed}_{optimizer}", params=params))
    return specs


def _flow_params(args):
    methods = EXPLICIT_METHODS + ADAPTIVE_METHODS
    if args.method not in methods:
        raise invalid("--method", args.method, "must be one of " + ", ".join(methods))
    adaptive = args.method in ADAPTIVE_METHODS
    for name in ("rtol", "atol") if not adaptive else ("dt",):
        if getattr(args, name) is not None:
            raise invalid(f"--{name}", getattr(args, name), f"is not used by --method {args.method}")
    steps = {}
    if adaptive:
        steps = dict(rtol=TOLERANCES["adaptive"][0] if args.rtol is None else args.rtol,
                     atol=TOLERANCES["adaptive"][1] if args.atol is None else args.atol)
        if not steps["rtol"] <= 1.0:
            raise invalid("--rtol", steps["rtol"], "must be a finite number in (0, 1]")
    else:
        args.dt = DEFAULT_DT if args.dt is None else args.dt
    for name in ("tol", "window") + tuple(steps) + (() if adaptive else ("dt",)):
        v = getattr(args, name) if name not in steps else steps[name]
        if not (math.isfinite(v) and v > 0):
            raise invalid(f"--{name}", v, "must be a finite number > 0")
    if not (args.lam > 0 and math.isfinite(args.lam)):
        raise invalid("--lam", args.lam, "must be a finite number > 0 (L1 drives the sparsification)")
    t_max = args.t_max if args.t_max is not None else 100.0 / args.lam
    if not (math.isfinite(t_max) and t_max > 0):
        raise invalid("--t-max", t_max, "must be a finite number > 0")
    return dict(method=args.method, dt=args.dt, t_max=t_max, tol=args.tol, window=args.window,
                threshold=args.threshold, sparse_below=args.sparse_below, **steps)


def _optimizer_hyper(args, optimizer):
    """lr and the optimizer's hyper-parameters, validated, with the CLI's option names in
    errors."""
    if args.steps < 1:
        raise invalid("--steps", args.steps, "must be an integer >= 1")
    if not (math.isfinite(args.l1) and args.l1 >= 0):
        raise invalid("--l1", args.l1, "must be a finite number >= 0")
    given = {k: getattr(args, k) for k in ("lr", "momentum", "betas", "eps", "weight_decay", "proximal")
             if getattr(args, k) is not None}
    try:
        return optimizer_params(optimizer, **given)
    except FlowsimInputError as err:
        text = str(err).replace("invalid ", "invalid --", 1).replace("weight_decay", "weight-decay")
        raise FlowsimInputError(text.replace("leave it None", "leave it out")) from None


# --------------------------------------------------------------------------- tables

def per_m_table(rows, n, count="polysemantic"):
    """Polysemantic count per m, over the runs that converged (or completed), with theory.

    Parameters
    ----------
    rows : list of dict
        ``results_table`` rows (``m``, ``status``, ``benign`` and the ``count`` field).
    n : int
    count : str
        The field that is counted: ``"polysemantic"`` (threshold rule) or
        ``"polysemantic_window"``.

    Returns
    -------
    list of dict, one per m (ascending)
        ``runs``, ``converged`` (runs whose status is ``"converged"``, or ``"completed"``
        for the fixed-step optimizers), ``not_converged`` (counts); ``mean``, ``std``
        (ddof 1; 0 for one run) and ``benign_mean`` over those runs only (NaN when
        there are none); ``n2_over_4m`` and ``collisions_expected``.
    """
    table = []
    for m in sorted({r["m"] for r in rows}):
        runs = [r for r in rows if r["m"] == m]
        ok = [r for r in runs if r["status"] in OK_STATUS]
        ys = np.array([r[count] for r in ok], dtype=float)
        col = np.array([r["benign"] for r in ok], dtype=float)
        table.append(dict(m=m, runs=len(runs), converged=len(ok), not_converged=len(runs) - len(ok),
                          mean=float(ys.mean()) if ok else math.nan,
                          std=float(ys.std(ddof=1)) if len(ok) > 1 else (0.0 if ok else math.nan),
                          benign_mean=float(col.mean()) if ok else math.nan,
                          n2_over_4m=theory.polysemantic_expected(n, m),
                          collisions_expected=theory.collisions_expected(n, m)))
    return table


def paired_rows(flow_rows, opt_rows, optimizer, count):
    """One row per (m, seed) that both the flow and the optimizer finished.

    Returns
    -------
    list of dict
        m, seed, ``same_w0`` (the digests of the two initial weights are equal; None if a
        stored flow run predates the digest), the flow's and the optimizer's counts by
        the chosen rule (``flow``, ``<optimizer>``, their difference ``diff``), both rules
        for each, the initial benign collisions, the flow's status and both run times.
    """
    by_key = {(r["m"], r["seed"]): r for r in flow_rows}
    out = []
    for o in opt_rows:
        f = by_key.get((o["m"], o["seed"]))
        if f is None:
            continue
        fw, ow = f.get("w0_sha256"), o.get("w0_sha256")
        field = COUNT_FIELDS[count]
        out.append(dict(
            m=o["m"], seed=o["seed"], same_w0=None if fw is None or ow is None else fw == ow,
            flow=f[field], **{optimizer: o[field]}, diff=o[field] - f[field],
            flow_polysemantic=f["polysemantic"], flow_polysemantic_window=f["polysemantic_window"],
            **{f"{optimizer}_polysemantic": o["polysemantic"],
               f"{optimizer}_polysemantic_window": o["polysemantic_window"],
               f"{optimizer}_dead_window": o["dead_window"]},
            flow_dead_window=f["dead_window"], benign=o["benign"], flow_status=f["status"],
            flow_run_seconds=f["run_seconds"], **{f"{optimizer}_run_seconds": o["run_seconds"]},
            n2_over_4m=o["polysemantic_expected"]))
    return out


def compare_table(pairs, optimizer):
    """Per m: both means and stds, the paired difference (optimizer − flow) with its
    standard error, the correlation of the per-run counts, n²/(4m), the published
    read-off and the mean run time of each (list of dict, ascending m)."""
    table = []
    for m in sorted({p["m"] for p in pairs}):
        ps = [p for p in pairs if p["m"] == m and p["flow_status"] in OK_STATUS]
        f = np.array([p["flow"] for p in ps], dtype=float)
        o = np.array([p[optimizer] for p in ps], dtype=float)
        k = len(ps)
        std = (lambda y: float(y.std(ddof=1)) if k > 1 else (0.0 if k else math.nan))
        d = o - f
        corr = float(np.corrcoef(f, o)[0, 1]) if k > 1 and f.std() > 0 and o.std() > 0 else math.nan
        lo_hi = PUBLISHED_FIGURE3.get(m)
        table.append(dict(
            m=m, runs=k, flow_mean=float(f.mean()) if k else math.nan, flow_std=std(f),
            mean=float(o.mean()) if k else math.nan, std=std(o),
            diff_mean=float(d.mean()) if k else math.nan,
            diff_stderr=std(d) / math.sqrt(k) if k > 1 else math.nan, correlation=corr,
            n2_over_4m=ps[0]["n2_over_4m"] if k else math.nan,
            published=None if lo_hi is None else list(lo_hi),
            flow_run_seconds=float(np.mean([p["flow_run_seconds"] for p in ps])) if k else math.nan,
            run_seconds=float(np.mean([p[f"{optimizer}_run_seconds"] for p in ps])) if k else math.nan))
    return table


# --------------------------------------------------------------------------- command

def main(argv=None):
    args = parser().parse_args(argv)
    args._modes = resolve(args)
    flow, optimizer = args._modes
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
    flow_rows = [r for r in rows if r.get("optimizer", "flow") == "flow"]
    opt_rows = [r for r in rows if r.get("optimizer", "flow") != "flow"]
    field = COUNT_FIELDS[args.count]
    if optimizer is None:
        table = per_m_table(rows, args.n, field) if rows else []
        _write_outputs(args, specs, sweep, rows, table, wall)
    elif not args.compare:
        table = per_m_table(opt_rows, args.n, field) if opt_rows else []
        _write_optimizer_outputs(args, specs, sweep, opt_rows, table, wall)
    else:
        table = compare_table(paired_rows(flow_rows, opt_rows, optimizer, args.count), optimizer)
        _write_compare_outputs(args, specs, sweep, flow_rows, opt_rows, table, wall)
    unconverged = [r["key"] for r in flow_rows if r["status"] != "converged"]
    if unconverged:
        t_max = next(s.params["t_max"] for s in specs if "t_max" in s.params)
        sys.stderr.write(f"{PROG}: warning: {len(unconverged)} of {len(flow_rows)} runs did not "
                         f"converge by t_max={t_max:g} (e.g. {unconverged[0]}); they are "
                         "left out of the per-m means (raise --t-max or --tol)\n")
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
    if not args.quiet:
        _print_summary(args, sweep, table, wall, optimizer)
    return 1 if sweep.failed else _cli.EXIT_OK


def _sweep_meta(args, specs, sweep, wall):
    return dict(flowsim_version=__version__, command=PROG, argv=sys.argv, m=args.m,
                seeds=list(range(args.seed0, args.seed0 + args.seeds)), count=args.count,
                count_field=COUNT_FIELDS[args.count], executor=args.executor, workers=args.workers,
                wall_seconds=wall, runs=len(specs), finished=len(sweep.results),
                skipped=len(sweep.skipped), rerun=sweep.rerun, failed=sweep.failed)


def _common_params(specs, optimizer):
    for s in specs:
        if (s.params.get("optimizer", "flow") == "flow") == (optimizer is None):
            return {k: v for k, v in s.params.items() if k not in ("m", "seed")}
    return {}


def _write_outputs(args, specs, sweep, rows, table, wall):
    """polysemantic.csv, the two figures and polysemantic.json (strict JSON: NaN as null)."""
    from .sweep import strict_json

    write_csv(args.out / "polysemantic.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, **_sweep_meta(args, specs, sweep, wall),
                parameters=_common_params(specs, None),
                converged=sum(r["status"] == "converged" for r in rows),
                not_converged=sum(r["status"] != "converged" for r in rows), per_m=table)
    if rows and not args.no_plot:
        from .plotting import figure3, figure3_collisions, save_figure

        save_figure(figure3(table, rows, args.n), args.out / "figure3_polysemantic.png")
        save_figure(figure3_collisions(rows), args.out / "figure3_collisions.png")
    write_json(args.out / "polysemantic.json", strict_json(meta))


def _write_optimizer_outputs(args, specs, sweep, rows, table, wall):
    """polysemantic_<opt>.csv, figure3_polysemantic_<opt>.png and polysemantic_<opt>.json."""
    from .sweep import strict_json

    name = args.optimizer
    write_csv(args.out / f"polysemantic_{name}.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, **_sweep_meta(args, specs, sweep, wall),
                parameters=_common_params(specs, name), per_m=table,
                published_figure3={str(k): list(v) for k, v in PUBLISHED_FIGURE3.items()})
    if rows and not args.no_plot:
        from .plotting import figure3_compare, save_figure

        fig = figure3_compare({name: table}, args.n, PUBLISHED_FIGURE3 if args.n == 256 else None,
                              runs={name: [(r["m"], r[COUNT_FIELDS[args.count]]) for r in rows]},
                              count=args.count)
        save_figure(fig, args.out / f"figure3_polysemantic_{name}.png")
    write_json(args.out / f"polysemantic_{name}.json", strict_json(meta))


def _write_compare_outputs(args, specs, sweep, flow_rows, opt_rows, table, wall):
    """flow_vs_<opt>.csv and .json, the comparison figure and the per-run scatter."""
    from .sweep import strict_json

    name = args.optimizer
    pairs = paired_rows(flow_rows, opt_rows, name, args.count)
    stem = f"flow_vs_{name}"
    write_csv(args.out / f"{stem}.csv", pairs)
    same = [p["same_w0"] for p in pairs]
    meta = dict(format_version=COMPARE_FORMAT_VERSION, **_sweep_meta(args, specs, sweep, wall),
                flow_parameters=_common_params(specs, None), optimizer_parameters=_common_params(specs, name),
                pairs=len(pairs), same_initial_weights=sum(s is True for s in same),
                initial_weights_unchecked=sum(s is None for s in same), per_m=table,
                flow_not_converged=sum(r["status"] != "converged" for r in flow_rows),
                published_figure3={str(k): list(v) for k, v in PUBLISHED_FIGURE3.items()})
    if pairs and not args.no_plot:
        from .plotting import figure3_compare, figure3_compare_runs, save_figure

        tables = {"flow": [dict(m=t["m"], mean=t["flow_mean"], std=t["flow_std"]) for t in table],
                  name: table}
        runs = {"flow": [(p["m"], p["flow"]) for p in pairs], name: [(p["m"], p[name]) for p in pairs]}
        save_figure(figure3_compare(tables, args.n, PUBLISHED_FIGURE3 if args.n == 256 else None,
                                    runs=runs, count=args.count), args.out / f"figure3_{stem}.png")
        save_figure(figure3_compare_runs(pairs, "flow", name), args.out / f"figure3_{stem}_runs.png")
    write_json(args.out / f"{stem}.json", strict_json(meta))


def _print_summary(args, sweep, table, wall, optimizer):
    print(f"{len(sweep.results)} runs finished in {wall:.1f} s ({len(sweep.skipped)} stored runs "
          f"reused, {len(sweep.rerun)} stored runs re-run: other parameters or flowsim version)")
    if args.compare:
        print(f"{'m':>6} {'runs':>5} {'flow':>7} {optimizer:>7} {'diff':>7} {'±se':>6} {'n²/4m':>7} {'published':>10}")
        for r in table:
            pub = "" if r["published"] is None else "–".join(f"{v:g}" for v in dict.fromkeys(r["published"]))
            print(f"{r['m']:>6} {r['runs']:>5} {r['flow_mean']:>7.2f} {r['mean']:>7.2f} {r['diff_mean']:>7.2f} "
                  f"{r['diff_stderr']:>6.2f} {r['n2_over_4m']:>7.2f} {pub:>10}")
        print(f"wrote {args.out}/ (figure3_flow_vs_{optimizer}.png, figure3_flow_vs_{optimizer}_runs.png, "
              f"flow_vs_{optimizer}.csv, flow_vs_{optimizer}.json)")
        return
    print(f"{'m':>6} {'done':>6} {'mean':>7} {'std':>6} {'n²/4m':>7}   ({args.count} rule)")
    for r in table:
        print(f"{r['m']:>6} {r['converged']:>3}/{r['runs']:<2} {r['mean']:>7.2f} {r['std']:>6.2f} "
              f"{r['n2_over_4m']:>7.2f}")
    if optimizer is None:
        print(f"wrote {args.out}/ (figure3_polysemantic.png, figure3_collisions.png, polysemantic.csv, polysemantic.json)")
    else:
        print(f"wrote {args.out}/ (figure3_polysemantic_{optimizer}.png, polysemantic_{optimizer}.csv, "
              f"polysemantic_{optimizer}.json)")


if __name__ == "__main__":
    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
