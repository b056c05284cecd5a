"""``python -m flowsim.noise``: Figures 4, 5 and 7 and the kurtosis experiment (Section 3).

Writes into ``--out``, for each figure asked, the PNG, a CSV of every plotted number and
a JSON of everything that produced it (parameters, seeds, distributions, sharing modes,
η, steps, compile and run seconds, flowsim version)::

    figure4_noise.*            mean ‖W_i‖₄⁴ over steps, bipolar and normal, σ = 0.07, 0.1, 0.15
    figure5_noise.*            final fourth norms against λ (no noise) and σ (bipolar noise)
    figure7_noise.*            one bipolar instance: per-encoding ‖W_i‖₄⁴ and the final W
    figure_kurtosis.*          final mean ‖W_i‖₄⁴ against excess kurtosis, both sharing modes
    figure_kurtosis_theory.*   measured per-step change vs the implicit regulariser
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from . import _cli
from . import noise as nz
from .errors import DivergenceError, check_float, check_int, invalid

PROG = "python -m flowsim.noise"
FIGURES = ("4", "5", "7", "kurtosis")
FIG4_SIGMAS = (0.07, 0.1, 0.15)
FIG4_DISTRIBUTIONS = ("bipolar", "normal")
FIG5_LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 1.3, 1.6, 2.0)
FIG5_SIGMAS = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: The σ of the paper's Figure 7 caption, run beside the chosen σ as a check.
FIG7_CAPTION_SIGMA = 0.01
STUCK_BELOW = 0.5
KURTOSIS_SIGMAS = (0.1, 0.15)
#: The isolated encoding (n = 1) has no interference and a slow, noisy drift: more
#: instances and steps, and its value is the mean over the last half of the run.
ISOLATED_INSTANCES, ISOLATED_STEP_FACTOR = 50, 3
#: Window 1 is measured by antithetic pairs; longer windows by independent instances,
#: whose spread over the first ~10 steps (the radial transient) swamps short windows.
THEORY_WINDOWS = (1, 100, 1000, 10000)
THEORY_PAIRS, THEORY_DRAWS = 100_000, 200
#: Noise-free steps that make the Figure-4-setting start of the theory check.
NOISE_FREE_STEPS = 20_000
CURVE_RECORDS = 400


def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--figure", choices=(*FIGURES, "all"), default="all", help="which figure to make (default all)")
    a("--steps", type=int, default=100_000, help="gradient steps of every run (default 100000)")
    a("--instances", type=int, default=5, help="independent instances per setting (default 5)")
    a("--seed", type=int, default=0, help="seed: instance k of every setting starts from the same weights (default 0)")
    a("--eta", type=float, default=0.02, help="learning rate η (default 0.02)")
    a("--n", type=int, default=8, help="features (default 8)")
    a("--m", type=int, default=16, help="hidden neurons (default 16)")
    a("--sigmas", type=float, nargs="+", default=list(FIG4_SIGMAS),
      help="Figure 4's noise levels (default 0.07 0.1 0.15)")
    a("--sigma", type=float, default=0.1, help="σ of Figure 7 (default 0.1; the caption's 0.01 is run as a check)")
    a("--distribution", default="bipolar", help=f"Figure 7's noise, one of {', '.join(nz.DISTRIBUTIONS)} (default bipolar)")
    a("--kurtosis-sigmas", type=float, nargs="+", default=list(KURTOSIS_SIGMAS),
      help="σ of the kurtosis experiment, all distributions at each (default 0.1 0.15; the theory check uses the last)")
    a("--workers", type=int, default=None, help="threads over instances (default: one per CPU, at most instances)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bars or summary")
    return p


def _check(args):
    check_int("steps", args.steps, 1)
    check_int("instances", args.instances, 1)
    if args.workers is not None:
        check_int("workers", args.workers, 1)
    for s in [*args.sigmas, *args.kurtosis_sigmas]:
        check_float("sigma", s, minimum=0.0)
    if any(s <= 0 for s in args.kurtosis_sigmas):
        raise invalid("--kurtosis-sigmas", args.kurtosis_sigmas, "every σ must be > 0")
    return nz.NoiseModel(args.n, args.m, args.sigma, args.distribution, eta=args.eta,
                         instances=args.instances, seed=args.seed)


def main(argv=None):
    args = parser().parse_args(argv)
    base = _check(args)
    ctx = _Context(args, base)
    for fig in FIGURES if args.figure == "all" else (args.figure,):
        if ctx.interrupted:
            break
        {"4": figure4, "5": figure5, "7": figure7, "kurtosis": kurtosis}[fig](ctx)
    if not args.quiet:
        print(f"wrote {args.out}/ ({', '.join(ctx.files)})")
    return _cli.EXIT_INTERRUPTED if ctx.interrupted else 0


class _Context:
    """Arguments, the base model, and the bookkeeping shared by the figure builders."""

    def __init__(self, args, base):
        self.args, self.base = args, base
        self.interrupted = False
        self.files = []

    def train(self, model, steps=None, **kw):
        """Train; a divergence is returned (status "diverged"), a Ctrl-C stops what follows."""
        a = self.args
        try:
            run = nz.train(model, a.steps if steps is None else steps, workers=a.workers,
                           progress=not a.quiet, **kw)
        except DivergenceError as err:
            run = err.trajectory
            self.say(f"{PROG}: warning: {str(err).split(';')[0]}")
        if run.stats.status == "interrupted":
            self.interrupted = True
        return run

    def say(self, line):
        if not self.args.quiet:
            sys.stderr.write(line + "\n")

    def write(self, stem, rows, meta, fig=None):
        from .io import write_csv, write_json

        out = self.args.out
        plot = fig is not None and not self.args.no_plot
        meta = dict(command=PROG, argv=sys.argv, interrupted=self.interrupted,
                    flowsim_version=nz.__version__, **meta)
        meta["files"] = [f"{stem}.csv", f"{stem}.json"] + ([f"{stem}.png"] if plot else [])
        write_csv(out / f"{stem}.csv", rows)
        write_json(out / f"{stem}.json", meta)
        if plot:
            from .plotting import save_figure

            save_figure(fig(), out / f"{stem}.png")
        self.files.extend(meta["files"])

    def curve_steps(self, steps=None):
        steps = self.args.steps if steps is None else steps
        grid = np.concatenate([np.linspace(0, steps, CURVE_RECORDS + 1), np.geomspace(1, steps, 100)])
        return np.unique(np.round(grid))


def _timing(runs):
    return {"compile_seconds": sum(r.stats.compile_seconds for r in runs),
            "run_seconds": sum(r.stats.wall_seconds for r in runs)}


def figure4(ctx):
    """Mean ‖W_i‖₄⁴ over steps for bipolar and normal noise at each σ."""
    runs = []
    for sigma in ctx.args.sigmas:
        for dist in FIG4_DISTRIBUTIONS:
            if not ctx.interrupted:
                runs.append(ctx.train(ctx.base.replace(sigma=sigma, distribution=dist),
                                      record_at=ctx.curve_steps()))
    rows, summary = [], []
    for run in runs:
        mdl, f = run.model, run.mean_l4()
        l2 = run.l2.mean(axis=2)
        for r, step in enumerate(run.steps):
            rows.extend(dict(distribution=mdl.distribution, sigma=mdl.sigma, sharing=mdl.sharing, step=int(step),
                             instance=k, mean_l4=f[k, r], mean_l2=l2[k, r], loss=run.loss[k, r])
                        for k in range(mdl.instances))
        summary.append(dict(distribution=mdl.distribution, sigma=mdl.sigma, status=run.stats.status,
                            final_step=int(run.steps[-1]), final_mean_l4=f[:, -1].mean(),
                            final_std_l4=f[:, -1].std(ddof=1) if mdl.instances > 1 else 0.0,
                            final_min_l4=f[:, -1].min(), final_max_l4=f[:, -1].max()))
    from .plotting import figure4_noise

    ctx.write("figure4_noise", rows, dict(figure="4", summary=summary, reference_3_over_m=3 / ctx.base.m,
                                          timing=_timing(runs), runs=[r.metadata() for r in runs]),
              lambda: figure4_noise(runs))
    for s in summary:
        ctx.say(f"figure 4: {s['distribution']:8s} σ={s['sigma']:<5g} final mean |W_i|_4^4 = "
                f"{s['final_mean_l4']:.4f} ± {s['final_std_l4']:.4f} "
                f"(min {s['final_min_l4']:.4f}, max {s['final_max_l4']:.4f})")


def _final_row(run, x):
    """Final fourth norms of a sweep point (means over instances of means over encodings)."""
    if run.stats.status == "diverged":
        return dict(x=x, diverged=True, steps_done=min(run.options["steps_done"]), l4_mean=math.nan,
                    l4_min=math.nan, l4_max=math.nan, l2_mean=math.nan, l4_normalised=math.nan, dead_encodings=None)
    f = run.mean_l4()[:, -1]
    l2 = run.l2[:, -1]
    alive = l2 > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(alive, run.l4[:, -1] / np.where(alive, l2, 1.0) ** 4, np.nan)
    return dict(x=x, diverged=False, steps_done=int(run.steps[-1]),
                l4_mean=f.mean(), l4_min=f.min(), l4_max=f.max(), l2_mean=l2.mean(),
                l4_normalised=float(np.nanmean(norm)) if alive.any() else math.nan,
                dead_encodings=int(np.count_nonzero(~alive)))


def figure5(ctx):
    """Final fourth norms against λ (no noise) and against σ (bipolar noise)."""
    panels = {"lam": [], "sigma": []}
    runs = []
    for key, values in (("lam", FIG5_LAMS), ("sigma", FIG5_SIGMAS)):
        for x in values:
            if ctx.interrupted:
                break
            change = dict(lam=x, sigma=0.0) if key == "lam" else dict(sigma=x, distribution="bipolar")
            run = ctx.train(ctx.base.replace(**change), record_at=[])
            runs.append(run)
            panels[key].append(_final_row(run, x))
    rows = [dict(panel=key, **r) for key, table in panels.items() for r in table]
    from .plotting import figure5_noise

    ctx.write("figure5_noise", rows, dict(figure="5", lams=FIG5_LAMS, sigmas=FIG5_SIGMAS, timing=_timing(runs),
                                          runs=[r.metadata() for r in runs]),
              lambda: figure5_noise(panels["lam"], panels["sigma"], ctx.base.m))
    for key, table in panels.items():
        best = max((r for r in table if not r["diverged"]), key=lambda r: r["l4_mean"], default=None)
        bad = [r["x"] for r in table if r["diverged"]]
        if best is not None:
            ctx.say(f"figure 5: against {key}: highest final mean |W_i|_4^4 = {best['l4_mean']:.4f} at {key}={best['x']:g}; "
                    f"last value {table[-1]['l4_mean']:.4f} at {key}={table[-1]['x']:g}"
                    + (f"; diverged at {key} = {bad}" if bad else ""))


def figure7(ctx):
    """One instance under the chosen noise; the caption's σ = 0.01 run beside it as a check."""
    one = ctx.base.replace(instances=1)
    run = ctx.train(one, record_at=ctx.curve_steps())
    check = None if ctx.interrupted else ctx.train(one.replace(sigma=FIG7_CAPTION_SIGMA), record_at=ctx.curve_steps())
    rows = []
    for r_ in (run, check):
        if r_ is None:
            continue
        for r, step in enumerate(r_.steps):
            rows.extend(dict(sigma=r_.model.sigma, step=int(step), encoding=i, l4=r_.l4[0, r, i], l2=r_.l2[0, r, i])
                        for i in range(one.n))
    stuck = np.flatnonzero(run.l4[0, -1] < STUCK_BELOW).tolist()
    meta = dict(figure="7", instance=0, stuck_below=STUCK_BELOW, stuck_encodings=stuck,
                final_l4=run.l4[0, -1], final_W=run.W[0], timing=_timing([r for r in (run, check) if r]),
                run=run.metadata())
    if check is not None:
        meta["caption_sigma_check"] = dict(sigma=FIG7_CAPTION_SIGMA, initial_mean_l4=check.mean_l4()[0, 0],
                                           final_mean_l4=check.mean_l4()[0, -1], final_l4=check.l4[0, -1],
                                           run=check.metadata())
    from .plotting import figure7_noise

    ctx.write("figure7_noise", rows, meta, lambda: figure7_noise(run, 0, STUCK_BELOW))
    ctx.say(f"figure 7: {one.distribution} σ={one.sigma:g}: final |W_i|_4^4 = {np.round(run.l4[0, -1], 3).tolist()}; "
            f"stuck below {STUCK_BELOW}: {stuck}")
    if check is not None:
        c = meta["caption_sigma_check"]
        ctx.say(f"figure 7 check: σ={FIG7_CAPTION_SIGMA:g} (the caption): mean |W_i|_4^4 "
                f"{c['initial_mean_l4']:.4f} -> {c['final_mean_l4']:.4f} after {int(check.steps[-1])} steps")


def kurtosis(ctx):
    """Final fourth norms against excess kurtosis (Figure-4 setting and isolated encoding),
    then the theory check."""
    a, rows, runs = ctx.args, [], []
    settings = [(f"Figure 4 setting: n={a.n}, m={a.m}, final value after {a.steps:,} steps", a.n,
                 a.instances, a.steps, nz.SHARING),
                (f"isolated encoding: n=1, m={a.m}, mean over steps {a.steps * ISOLATED_STEP_FACTOR // 2:,}–"
                 f"{a.steps * ISOLATED_STEP_FACTOR:,}", 1, ISOLATED_INSTANCES, a.steps * ISOLATED_STEP_FACTOR, ("shared",))]
    for title, n, inst, steps, modes in settings:
        for sigma in a.kurtosis_sigmas:
            for sharing in modes:
                for dist in nz.DISTRIBUTIONS:
                    if ctx.interrupted:
                        break
                    mdl = ctx.base.replace(n=n, sigma=sigma, distribution=dist, sharing=sharing, instances=inst)
                    late = steps // 2 if n == 1 else steps
                    run = ctx.train(mdl, steps, record_at=np.linspace(late, steps, 51).round() if n == 1 else [])
                    runs.append(run)
                    f = run.mean_l4()
                    vals = f[:, run.steps >= late].mean(axis=1) if n == 1 else f[:, -1]
                    rows.append(dict(setting=title, n=n, sigma=sigma, sharing=sharing, distribution=dist,
                                     kurtosis=mdl.excess_kurtosis, steps=int(run.steps[-1]), status=run.stats.status,
                                     mean=vals.mean(), sem=vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else 0.0,
                                     values=vals))
    from .plotting import figure_kurtosis

    ctx.write("figure_kurtosis", rows, dict(figure="kurtosis", timing=_timing(runs), runs=[r.metadata() for r in runs]),
              lambda: figure_kurtosis(rows, a.m))
    for r in rows:
        ctx.say(f"kurtosis: n={r['n']} σ={r['sigma']:g} {r['sharing']:11s} {r['distribution']:8s} (κ={r['kurtosis']:+g}): "
                f"{r['mean']:.4f} ± {r['sem']:.4f}")
    if not ctx.interrupted:
        theory(ctx)


def theory(ctx):
    """The theory check at the largest kurtosis σ, isolated encoding and Figure-4 setting."""
    a = ctx.args
    sigma = a.kurtosis_sigmas[-1]
    windows = [w for w in THEORY_WINDOWS if w <= a.steps]
    rng = np.random.default_rng(np.random.SeedSequence(a.seed, spawn_key=(1 << 21,)))
    w = rng.standard_normal((1, a.m))
    w /= np.linalg.norm(w)
    start = ctx.train(ctx.base.replace(sigma=0.0, instances=1), NOISE_FREE_STEPS, record_at=[])
    W8 = start.W[0]
    G = W8 @ W8.T
    off = G[~np.eye(a.n, dtype=bool)]
    checks = []
    for title, W0 in ((f"isolated encoding (n=1, m={a.m}), W0 a random unit vector", w),
                      (f"Figure 4 setting (n={a.n}, m={a.m}), W0 after {NOISE_FREE_STEPS:,} noise-free steps\n"
                       f"(‖W_i‖₂ ∈ [{np.sqrt(G.diagonal().min()):.4f}, {np.sqrt(G.diagonal().max()):.4f}], "
                       f"W_i·W_j ∈ [{off.min():.2f}, {off.max():.1e}])", W8)):
        ctx.say(f"theory check: {title.splitlines()[0]}")
        checks.append((title, nz.drift_check(W0, sigma, a.eta, windows=windows, pairs=THEORY_PAIRS,
                                             draws=THEORY_DRAWS, seed=a.seed, workers=a.workers,
                                             progress=not a.quiet)))
    rows = [dict(setting=title, distribution=d, kurtosis=c.kurtosis[i], window=int(win), change=c.change[i, j],
                 se=c.se[i, j], excess=c.excess[i, j], excess_se=c.excess_se[i, j],
                 regulariser=c.regulariser[i], regulariser_drift=c.regulariser_drift[i],
                 expansion=c.expansion[i], exact=c.exact[i])
            for title, c in checks for i, d in enumerate(c.distributions) for j, win in enumerate(c.windows)]
    from .plotting import figure_kurtosis_theory

    ctx.write("figure_kurtosis_theory", rows,
              dict(figure="kurtosis-theory", noise_free_start=start.metadata(),
                   checks=[dict(setting=t, **c.metadata()) for t, c in checks]),
              lambda: figure_kurtosis_theory(checks))
    for title, c in checks:
        for i, d in enumerate(c.distributions):
            if d != "normal":
                ctx.say(f"theory: {title.split(' (')[0]} {d:8s}: excess per step " +
                        ", ".join(f"K={k}: {e:+.2e}±{s:.1e}" for k, e, s in zip(c.windows, c.excess[i], c.excess_se[i]))
                        + f"; regulariser predicts {c.regulariser_drift[i]:+.2e}")


def run(argv=None):
    """Entry point of ``python -m flowsim.noise``."""
    return _cli.run_main(PROG, main, sys.argv[1:] if argv is None else argv)
