"""Winner lineage: does a feature end on the neuron that led it at initialisation?

The paper (Section 2, open question) asks how likely the largest initial weight of a
feature is the one that wins. :func:`winner_lineage` answers it for one run from the
initial and final weights, and classifies every final polysemantic neuron as
*incidental* (its features collided at initialisation) or *formed* during training.
``python -m flowsim.lineage`` measures the probability against m/n and λ.

Definitions (all from :mod:`flowsim.metrics`, so that the counts agree with it):

* initial neuron of feature i: ``leading_neuron(W0)[i]`` = argmax_k |W0_ik| (lowest index
  on a tie; -1 for an all-zero row);
* final neuron: ``leading_neuron(W)[i]`` if feature i is represented
  (``metrics.represented``: some |W_ik| > threshold, or within the window), else -1 (dead);
* kept: final neuron == initial neuron (False for a dead feature); the *winner
  probability* of a run is kept / n;
* initial rank of the final neuron: how many neurons had a strictly larger |W0_ik| than the
  final one (0 when kept; -1 for a dead feature);
* a final polysemantic neuron k represents >= 2 features (``metrics.neuron_features``). It
  is *incidental* when every pair of its features is an initial collision in the sense of
  ``metrics.initial_collisions`` (their initial leading neurons coincide), i.e. all of them
  had one initial leading neuron; ``at_same_neuron`` says whether that neuron is k itself.
  Otherwise it was *formed* during training. ``benign`` (incidental neurons only): whether
  the initial collision pairs were all benign (opposite signs of W0 on the shared neuron).

Without interference the flow of each row is |w|' = a(t)|w| - λ on the support with a
row-common a(t), which preserves the order of |W_ik| within a row: every kept feature's
probability is 1 exactly (tested). Interference is what lets a runner-up win.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from argparse import BooleanOptionalAction
from pathlib import Path

import numpy as np

from . import _cli, metrics
from ._version import __version__
from .errors import FlowsimWarning, check_float, invalid

__all__ = ["FeatureLineage", "PolyNeuron", "Lineage", "winner_lineage", "run_one", "main"]

PROG = "python -m flowsim.lineage"
JSON_FORMAT_VERSION = 1
DEFAULT_N = 64
DEFAULT_M = (64, 128, 256, 512, 1024, 2048)
DEFAULT_LAM = (0.005, 0.01, 0.02)
#: The flow's options (the Figure 3 defaults of flowsim.polysemantic.FLOW_DEFAULTS).
FLOW_DEFAULTS = dict(c=1.0, method="euler", dt=0.1, tol=1e-6, window=50.0, sparse_below=0.15)


# --------------------------------------------------------------------------- library

@dataclasses.dataclass(frozen=True, eq=False)
class PolyNeuron:
    """One final polysemantic neuron and where its features came from.

    Attributes
    ----------
    neuron : int
        Column k of W.
    features : tuple of int
        The features it represents at the end (increasing), >= 2 of them.
    initial_neurons : tuple of int
        Each feature's initial leading neuron (same order).
    incidental : bool
        All features shared one initial leading neuron (every pair an initial collision).
    at_same_neuron : bool
        Incidental and that shared initial neuron is ``neuron`` itself.
    benign : bool or None
        Incidental: all initial collision pairs benign (opposite W0 signs on the shared
        neuron); None when formed.
    """

    neuron: int
    features: tuple
    initial_neurons: tuple
    incidental: bool
    at_same_neuron: bool
    benign: bool | None

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureLineage:
    """Per-feature lineage.

    Attributes
    ----------
    initial : ndarray, shape (n,), int64
        Initial leading neuron (-1: all-zero row).
    final : ndarray, shape (n,), int64
        Final neuron (-1: dead feature).
    kept : ndarray, shape (n,), bool
        ``final == initial`` and not dead.
    initial_rank : ndarray, shape (n,), int64
        Number of neurons with |W0_ik| > |W0_i,final| (0 when kept); -1 when dead.
    """

    initial: np.ndarray
    final: np.ndarray
    kept: np.ndarray
    initial_rank: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Lineage:
    """Lineage of one run (see the module docstring for the definitions).

    Attributes
    ----------
    features : FeatureLineage
    neurons : tuple of PolyNeuron
        Every final polysemantic neuron, by increasing column.
    """

    features: FeatureLineage
    neurons: tuple

    @property
    def n(self) -> int:
        return int(self.features.kept.size)

    @property
    def probability(self) -> float:
        """Fraction of all n features whose final neuron is their initial argmax."""
        return float(np.count_nonzero(self.features.kept)) / self.n

    @property
    def dead(self) -> int:
        return int(np.count_nonzero(self.features.final < 0))

    @property
    def incidental(self) -> int:
        return sum(p.incidental for p in self.neurons)

    @property
    def formed(self) -> int:
        return len(self.neurons) - self.incidental

    def summary(self) -> dict:
        """JSON-ready counts: kept, probability, dead, rank counts, polysemantic,
        incidental (and how many at the same neuron, benign), formed."""
        r = self.features.initial_rank
        return dict(kept=int(np.count_nonzero(self.features.kept)), probability=self.probability,
                    dead=self.dead, rank1=int(np.count_nonzero(r == 1)),
                    rank2plus=int(np.count_nonzero(r >= 2)), polysemantic=len(self.neurons),
                    incidental=self.incidental,
                    incidental_same_neuron=sum(p.at_same_neuron for p in self.neurons),
                    incidental_benign=sum(p.benign is True for p in self.neurons),
                    formed=self.formed)


def winner_lineage(W0, W, threshold=0.5, window=None) -> Lineage:
    """Lineage of the winners of one run.

    Parameters
    ----------
    W0 : array_like, shape (n, m)
        Initial weights.
    W : array_like, shape (n, m)
        Final weights.
    threshold, window :
        The representation rule of :func:`flowsim.metrics.represented`.

    Returns
    -------
    Lineage

    Raises
    ------
    FlowsimInputError
        Shapes differ, arrays not 2-D real and finite, bad threshold or window.
    """
    W0, W = metrics._pair(W0, W)
    R = metrics.represented(W, threshold, window)
    initial = metrics.leading_neuron(W0)
    lead = metrics.leading_neuron(W)
    alive = R.any(axis=1)
    final = np.where(alive, lead, -1).astype(np.int64)
    kept = alive & (final == initial)
    A0 = np.abs(W0)
    rows = np.arange(W.shape[0])
    at_final = A0[rows, np.maximum(final, 0)]
    rank = np.where(alive, np.count_nonzero(A0 > at_final[:, None], axis=1), -1).astype(np.int64)
    col = metrics.initial_collisions(W0)
    benign_pair = {(int(i), int(j)): bool(b) for (i, j), b in zip(col.pairs, col.pair_benign)}
    neurons = []
    for k, feats in enumerate(metrics.neuron_features(W, threshold, window)):
        if feats.size < 2:
            continue
        init = tuple(int(initial[f]) for f in feats)
        incidental = init[0] >= 0 and all(v == init[0] for v in init)
        benign = None
        if incidental:
            benign = all(benign_pair[(int(a), int(b))]
                         for x, a in enumerate(feats) for b in feats[x + 1:])
        neurons.append(PolyNeuron(k, tuple(int(f) for f in feats), init, bool(incidental),
                                  bool(incidental and init[0] == k), benign))
    return Lineage(FeatureLineage(initial, final, kept, rank), tuple(neurons))


# --------------------------------------------------------------------------- one run

def run_one(params):
    """One flow run (Figure 3 settings) summarised by its lineage.

    Parameters
    ----------
    params : dict
        n, m, lam, c, seed, method, dt, t_max, tol, window, threshold, sparse_below.

    Returns
    -------
    dict
        JSON-ready: :meth:`Lineage.summary`, the initial collision counts (``benign``,
        ``malign``), ``status`` (converged / not converged), ``t_converged``, ``t_end``,
        ``steps``, ``run_seconds``, ``w0_sha256``.
    """
    from .integrate import Stop, simulate
    from .model import Model
    from .provenance import weights_digest

    with warnings.catch_warnings():  # the command warned once per (m, λ) already
        warnings.simplefilter("ignore", FlowsimWarning)
        model = Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    W0 = model.initial_weights()
    traj = simulate(model, params["t_max"], method=params["method"], dt=params["dt"], W0=W0,
                    save_at=[], stop=Stop(tol=params["tol"], window=params["window"]),
                    sparse_below=params["sparse_below"])
    stats = traj.stats
    if stats.status == "interrupted":
        raise KeyboardInterrupt
    converged = stats.status == "converged"
    out = winner_lineage(W0, traj.W, threshold=params["threshold"]).summary()
    col = metrics.initial_collisions(W0)
    out.update(initial_collisions=col.total, benign=col.benign, malign=col.malign,
               status="converged" if converged else "not converged",
               t_converged=stats.t_converged if converged else math.nan, t_end=stats.t_end,
               steps=stats.steps, run_seconds=stats.wall_seconds, w0_sha256=weights_digest(W0))
    return out


# --------------------------------------------------------------------------- command

def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--n", type=int, default=DEFAULT_N, help=f"features (default {DEFAULT_N})")
    a("--m", type=int, nargs="+", default=list(DEFAULT_M), help="hidden sizes (default 64 ... 2048)")
    a("--lam", type=float, nargs="+", default=list(DEFAULT_LAM), help="L1 strengths (default 0.005 0.01 0.02)")
    a("--seeds", type=int, default=16, help="runs per (m, λ) (default 16)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--c", type=float, default=FLOW_DEFAULTS["c"], help="force scale (default 1)")
    a("--method", default=FLOW_DEFAULTS["method"], help="euler, heun or rk4 (default euler)")
    a("--dt", type=float, default=FLOW_DEFAULTS["dt"], help="step (default 0.1)")
    a("--t-max", type=float, default=None, help="cap on training time (default 100/λ)")
    a("--tol", type=float, default=FLOW_DEFAULTS["tol"], help="convergence tolerance (default 1e-6)")
    a("--window", type=float, default=FLOW_DEFAULTS["window"], help="convergence window (default 50)")
    a("--sparse-below", type=float, default=FLOW_DEFAULTS["sparse_below"], help="sparse hand-over density")
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
    from .model import Model
    from .sweep import RunSpec

    if args.seeds < 1:
        raise invalid("--seeds", args.seeds, "must be an integer >= 1")
    if args.workers is not None and args.workers < 1:
        raise invalid("--workers", args.workers, "must be an integer >= 1")
    if args.method not in EXPLICIT_METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    for name in ("dt", "tol", "window", "threshold", "c"):
        check_float("--" + name, getattr(args, name), positive=True)
    check_float("--sparse-below", args.sparse_below, minimum=0.0)
    for lam in args.lam:
        if not (math.isfinite(lam) and lam > 0):
            raise invalid("--lam", lam, "must be a finite number > 0")
    if args.t_max is not None:
        check_float("--t-max", args.t_max, positive=True)
    specs = []
    for lam in args.lam:
        t_max = args.t_max if args.t_max is not None else 100.0 / lam
        for m in args.m:
            Model(n=args.n, m=m, lam=lam, c=args.c, seed=args.seed0)  # validates; warns once
            for seed in range(args.seed0, args.seed0 + args.seeds):
                params = dict(n=args.n, m=m, lam=lam, c=args.c, seed=seed, method=args.method,
                              dt=args.dt, t_max=t_max, tol=args.tol, window=args.window,
                              threshold=args.threshold, sparse_below=args.sparse_below)
                specs.append(RunSpec(f"n{args.n}_m{m}_lam{lam:g}_seed{seed}", params))
    return specs


def table(rows):
    """Per (λ, m): runs, converged, mean winner probability and its standard error over
    the converged runs (ddof 1), mean rank-1 and rank>=2 fractions, polysemantic,
    incidental, formed (means) and the pooled incidental fraction."""
    out = []
    for lam in sorted({r["lam"] for r in rows}):
        for m in sorted({r["m"] for r in rows if r["lam"] == lam}):
            runs = [r for r in rows if r["lam"] == lam and r["m"] == m]
            ok = [r for r in runs if r["status"] == "converged"]
            p = np.array([r["probability"] for r in ok], dtype=float)
            n = runs[0]["n"]
            poly = sum(r["polysemantic"] for r in ok)
            mean = (lambda f: float(np.mean([r[f] for r in ok])) if ok else math.nan)
            out.append(dict(
                lam=lam, m=m, m_over_n=m / n, runs=len(runs), converged=len(ok),
                probability=float(p.mean()) if ok else math.nan,
                probability_se=float(p.std(ddof=1) / math.sqrt(len(ok))) if len(ok) > 1 else math.nan,
                rank1_fraction=mean("rank1") / n if ok else math.nan,
                rank2plus_fraction=mean("rank2plus") / n if ok else math.nan,
                dead=mean("dead"), polysemantic=mean("polysemantic"), incidental=mean("incidental"),
                formed=mean("formed"), incidental_same_neuron=mean("incidental_same_neuron"),
                incidental_fraction=(sum(r["incidental"] for r in ok) / poly) if poly else math.nan))
    return out


def figure(tab):
    """Winner probability against m/n per λ (± s.e.), and the incidental fraction."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for lam in sorted({r["lam"] for r in tab}):
        rs = [r for r in tab if r["lam"] == lam]
        x = [r["m_over_n"] for r in rs]
        ax1.errorbar(x, [r["probability"] for r in rs], yerr=[r["probability_se"] for r in rs],
                     marker="o", capsize=3, label=f"λ = {lam:g}")
        ax2.plot(x, [r["incidental_fraction"] for r in rs], marker="o", label=f"λ = {lam:g}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("m / n")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_ylabel("P(final neuron = initial argmax)")
    ax1.set_title("winner is the initial argmax")
    ax2.set_ylabel("incidental / all final polysemantic neurons")
    ax2.set_title("polysemantic neurons that were initial collisions")
    return fig


def main(argv=None):
    from .io import write_csv, write_json
    from .provenance import environment
    from .sweep import results_table, strict_json

    args = parser().parse_args(argv)
    specs = specs_from_args(args)
    _cli.check_out_dir(args.out)
    store = args.out / "lineage_runs"
    done = _cli.sweep_command(PROG, run_one, specs, store, args)
    if done is None:
        return _cli.EXIT_INTERRUPTED
    sweep, wall = done
    rows = results_table(specs, sweep.results)
    tab = table(rows) if rows else []
    write_csv(args.out / "lineage.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, command=PROG, argv=sys.argv, flowsim_version=__version__,
                environment=environment(), load_average=list(os.getloadavg()),
                parameters={k: v for k, v in vars(args).items() if k not in ("out",)} | {"out": str(args.out)},
                wall_seconds=wall, runs=len(specs), finished=len(sweep.results), skipped=len(sweep.skipped),
                rerun=sweep.rerun, failed=sweep.failed,
                not_converged=sum(r["status"] != "converged" for r in rows), table=tab)
    if tab and not args.no_plot:
        from .plotting import save_figure

        save_figure(figure(tab), args.out / "lineage.png")
    write_json(args.out / "lineage.json", strict_json(meta))
    if not args.quiet:
        print(f"{len(sweep.results)} runs in {wall:.1f} s ({len(sweep.skipped)} reused); "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'λ':>7} {'m/n':>5} {'done':>6} {'P(kept)':>8} {'±se':>6} {'rank1':>6} {'poly':>6} "
              f"{'incid':>6} {'formed':>6}")
        for r in tab:
            print(f"{r['lam']:>7g} {r['m_over_n']:>5g} {r['converged']:>3}/{r['runs']:<2} "
                  f"{r['probability']:>8.3f} {r['probability_se']:>6.3f} {r['rank1_fraction']:>6.3f} "
                  f"{r['polysemantic']:>6.2f} {r['incidental']:>6.2f} {r['formed']:>6.2f}")
        print(f"wrote {args.out}/ (lineage.png, lineage.csv, lineage.json, lineage_runs/)")
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
        return 1
    return _cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
