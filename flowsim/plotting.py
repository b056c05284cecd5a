"""Figures as functions: results in, matplotlib Figure out. No global state, no pyplot."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import theory


def _positive_times(traj):
    keep = traj.t > 0
    return traj.t[keep], keep


def figure2(traj, compare=None):
    """Figure 2: ‖W_i‖₁ and m′ against t (log–log) with the paper's predictions.

    Parameters
    ----------
    traj : Trajectory
        A run without interference.
    compare : Trajectory, optional
        The exact reduced solution, drawn over the simulation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    model = traj.model
    t, keep = _positive_times(traj)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    tt = np.geomspace(t[0], t[-1], 400)
    smooth = theory.l1_smooth(tt, model.m, model.lam)
    piece = theory.l1_piecewise(tt, model.m, model.lam)
    for ax, name, label in ((ax1, "l1", r"$\|W_i\|_1$"), (ax2, "nnz", r"$m'$ (nonzero weights)")):
        y = traj.stat(name)[keep].astype(float)
        rows = y.shape[1]
        for i in range(rows):
            ax.plot(t, y[:, i], color="C0", lw=1.6 if rows == 1 else 0.8, alpha=1 if rows == 1 else 0.5,
                    label=f"simulation ({traj.method}{'' if traj.dt is None else f', dt={traj.dt:g}'})" if i == 0 else None)
        if compare is not None:
            tc, kc = _positive_times(compare)
            yc = compare.stat(name)[kc].astype(float)
            ax.plot(tc, yc[:, 0], color="k", lw=0.8, ls="-", label="exact reduced solution")
        power = 1 if name == "l1" else 2
        ax.plot(tt, smooth**power, color="C3", ls="--", label=r"theory $1/(1/\sqrt{m}+\lambda t)$" + ("" if power == 1 else "$^2$"))
        ax.plot(tt, piece**power, color="C2", ls=":", label="theory, piecewise")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training time t")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Sparsification without interference: m={model.m:,}, λ={model.lam:g}, "
                 f"init std={model.std:.3g}, c={model.c:g}, rows={model.n}", fontsize=10)
    return fig


def figure6(traj, W0_row):
    """Figure 6: relative variance of the nonzero |W_ik| over time, with its bounds.

    The bounds (Appendix B) are functions of m′; they are drawn at the simulated m′(t),
    for the actual initial row (red) and for the idealised half-normal row (pink, dashed).

    Parameters
    ----------
    traj : Trajectory
    W0_row : ndarray, shape (m,)
        Initial weights of row 0.

    Returns
    -------
    matplotlib.figure.Figure
    """
    t, keep = _positive_times(traj)
    nnz = traj.nnz[keep, 0]
    rv = traj.relvar[keep, 0]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ok = nnz >= 1
    mp, lo, hi = theory.relvar_bounds(W0_row)
    _, lo_i, hi_i = theory.relvar_bounds(theory.halfnormal_row(mp.size))
    at = np.clip(nnz[ok], 1, mp.size) - 1
    ax.plot(t[ok], rv[ok], color="C1", lw=1.6, label="simulation (row 0)")
    ax.plot(t[ok], lo[at], color="C3", lw=1, label="bounds for $W_i(0)$")
    ax.plot(t[ok], hi[at], color="C3", lw=1)
    ax.plot(t[ok], lo_i[at], color="violet", ls="--", lw=1, label="bounds, idealised half-normal row")
    ax.plot(t[ok], hi_i[at], color="violet", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training time t")
    ax.set_ylabel(r"relative variance Var$[X]$/E$[X]^2$ of nonzero $|W_{ik}|$")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    model = traj.model
    ax.set_title(f"m={model.m:,}, λ={model.lam:g}, {traj.method}", fontsize=10)
    return fig


def figure3(table, rows, n):
    """Figure 3: polysemantic neurons against m (log–log), mean ± std over seeds.

    Parameters
    ----------
    table : list of dict
        Per-m rows with ``m``, ``mean``, ``std`` over the converged runs (see
        ``polysemantic.per_m_table``).
    rows : list of dict
        One row per run with ``m``, ``polysemantic`` and ``status``. Runs that did not
        converge are drawn apart (hollow orange circles) and named in the legend.
    n : int
        Number of features.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    m = np.array([r["m"] for r in table], dtype=float)
    mean = np.array([r["mean"] for r in table], dtype=float)
    std = np.array([r["std"] for r in table], dtype=float)
    rm = np.array([r["m"] for r in rows], dtype=float)
    ry = np.array([r["polysemantic"] for r in rows], dtype=float)
    ok = _converged(rows)
    rx = rm * np.exp(np.random.default_rng(0).uniform(-0.03, 0.03, rm.size))
    ry = np.where(ry > 0, ry, np.nan)
    ax.scatter(rx[ok], ry[ok], s=6, color="C0", alpha=0.25, label="single runs")
    if not ok.all():
        ax.scatter(rx[~ok], ry[~ok], s=18, facecolors="none", edgecolors="C1",
                   label=f"not converged ({np.count_nonzero(~ok)} runs, not in the means)")
    ax.errorbar(m, mean, yerr=std, fmt="o", color="C0", capsize=3, label="mean ± std over converged runs")
    mm = np.unique(np.round(np.geomspace(m.min(), m.max(), 100)))
    ax.plot(mm, theory.polysemantic_expected(n, mm), color="C3", ls="--", label=r"$n^2/(4m)$")
    ax.plot(mm, theory.collisions_expected(n, mm), color="C2", ls=":", label=r"initial collisions $n(n-1)/(2m)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden neurons m")
    ax.set_ylabel("polysemantic neurons")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    unconverged = f", {np.count_nonzero(~ok)} not converged" if not ok.all() else ""
    ax.set_title(f"n = {n}, {len(rows)} runs{unconverged}", fontsize=10)
    return fig


def _converged(rows):
    """ndarray of bool, shape (len(rows),): the runs whose status is ``"converged"``."""
    return np.array([r["status"] == "converged" for r in rows], dtype=bool)


def figure3_collisions(rows):
    """Initial benign collisions against final polysemantic neurons, one point per run.

    Runs that did not converge (``status``) are drawn as hollow circles.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    x = np.array([r["benign"] for r in rows], dtype=float)
    y = np.array([r["polysemantic"] for r in rows], dtype=float)
    m = np.array([r["m"] for r in rows], dtype=float)
    ok = _converged(rows)
    top = max(x.max(), y.max(), 1) + 1
    rng = np.random.default_rng(1)
    x, y = x + rng.uniform(-0.2, 0.2, x.size), y + rng.uniform(-0.2, 0.2, y.size)
    sc = ax.scatter(x[ok], y[ok], c=np.log2(m[ok]), s=10, cmap="viridis", alpha=0.7,
                    vmin=np.log2(m.min()), vmax=np.log2(m.max()))
    if not ok.all():
        ax.scatter(x[~ok], y[~ok], s=18, facecolors="none", edgecolors="k",
                   label=f"not converged ({np.count_nonzero(~ok)} runs)")
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("initial benign collisions (opposite signs)")
    ax.set_ylabel("polysemantic neurons at convergence")
    fig.colorbar(sc, ax=ax, label="log2 m")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def save_figure(fig, path, dpi=130):
    """Save ``fig`` to ``path`` atomically. Returns the path."""
    import io

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=str(path).rsplit(".", 1)[-1], dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------ noise (Section 3)

_NOISE_STYLE = {"bipolar": "-", "normal": "--", "uniform": "-.", "laplace": ":"}


def _fourth_norm_references(ax, m, horizontal=True):
    draw = ax.axhline if horizontal else ax.axvline
    draw(3.0 / m, color="k", lw=0.8, ls="--", label=f"3/m = {3.0 / m:.3g}")
    draw(3.0 / (m + 2), color="grey", lw=0.8, ls=":", label=f"random unit vector 3/(m+2) = {3.0 / (m + 2):.3g}")


def figure4_noise(runs):
    """Figure 4: mean ‖W_i‖₄⁴ over steps for several noises, band over instances.

    Parameters
    ----------
    runs : list of NoiseRun
        One per (distribution, σ); the curve is the mean over instances of the mean over
        encodings, the band its minimum and maximum over instances.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    sigmas = sorted({r.model.sigma for r in runs})
    for run in runs:
        mdl = run.model
        color = f"C{sigmas.index(mdl.sigma)}"
        y = run.mean_l4()
        ax.plot(run.steps, y.mean(axis=0), color=color, ls=_NOISE_STYLE[mdl.distribution], lw=1.4,
                label=f"{mdl.distribution}, σ={mdl.sigma:g}")
        ax.fill_between(run.steps, y.min(axis=0), y.max(axis=0), color=color, alpha=0.15, lw=0)
    mdl = runs[0].model
    _fourth_norm_references(ax, mdl.m)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(r"mean $\|W_i\|_4^4$ over encodings")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"n={mdl.n}, m={mdl.m}, η={mdl.eta:g}, {mdl.instances} instances (band: min–max), "
                 f"{mdl.sharing} noise", fontsize=10)
    return fig


def figure5_noise(lam_rows, sigma_rows, m):
    """Figure 5: final fourth norms (a) against λ without noise, (b) against σ (bipolar).

    Parameters
    ----------
    lam_rows, sigma_rows : list of dict
        One per value with ``x`` (λ or σ), ``l4_mean``, ``l4_min``, ``l4_max`` (over
        instances of the mean over encodings), ``l2_mean`` (mean ‖W_i‖₂),
        ``l4_normalised`` (mean over nonzero encodings of ‖W_i‖₄⁴/‖W_i‖₂⁴) and
        ``diverged`` (bool; such points are marked at the bottom).
    m : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, rows, xlabel, title in ((axes[0], lam_rows, "L1 strength λ", "(a) L1, no noise"),
                                    (axes[1], sigma_rows, "bipolar noise σ", "(b) bipolar noise, no L1")):
        ok = [r for r in rows if not r["diverged"]]
        x = np.array([r["x"] for r in ok], dtype=float)
        mean = np.array([r["l4_mean"] for r in ok], dtype=float)
        err = np.maximum(np.array([[r["l4_mean"] - r["l4_min"], r["l4_max"] - r["l4_mean"]] for r in ok]).T, 0.0)
        ax.errorbar(x, mean, yerr=err, fmt="o-", color="C0", capsize=3, label=r"mean $\|W_i\|_4^4$ (min–max)")
        ax.plot(x, [r["l2_mean"] for r in ok], "s--", color="C2", ms=4, label=r"mean $\|W_i\|_2$")
        ax.plot(x, [r["l4_normalised"] for r in ok], "^:", color="C1", ms=4,
                label=r"mean $\|W_i\|_4^4/\|W_i\|_2^4$ (nonzero rows)")
        bad = [r["x"] for r in rows if r["diverged"]]
        if bad:
            ax.plot(bad, np.zeros(len(bad)), "x", color="C3", ms=8, label="diverged")
        _fourth_norm_references(ax, m)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("after the last step")
    axes[0].set_ylim(-0.03, 1.05)
    axes[1].legend(fontsize=7, loc="center left")
    return fig


def figure7_noise(run, instance=0, stuck_below=0.5):
    """Figure 7: one instance: ‖W_i‖₄⁴ of each encoding over steps, and the final W.

    Encodings whose final ‖W_i‖₄⁴ is below ``stuck_below`` are drawn thick and marked.

    Parameters
    ----------
    run : NoiseRun
    instance : int
    stuck_below : float

    Returns
    -------
    matplotlib.figure.Figure
    """
    mdl = run.model
    l4 = run.l4[instance]
    W = run.W[instance]
    stuck = np.flatnonzero(l4[-1] < stuck_below)
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
    for i in range(mdl.n):
        flag = i in stuck
        ax1.plot(run.steps, l4[:, i], color=f"C{i % 10}", lw=2.2 if flag else 1.0,
                 label=f"$W_{{{i}}}$" + (f" (stuck: {l4[-1, i]:.2f})" if flag else ""))
    ax1.axhline(stuck_below, color="k", lw=0.6, ls=":")
    ax1.set_xlabel("gradient steps")
    ax1.set_ylabel(r"$\|W_i\|_4^4$")
    ax1.set_ylim(0, max(1.05, float(np.nanmax(l4)) * 1.02))
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax1.set_title(f"(a) {mdl.distribution} σ={mdl.sigma:g}, η={mdl.eta:g}, instance {instance}", fontsize=10)
    lim = max(float(np.abs(W).max()), 1e-12)
    im = ax2.imshow(W, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax2.set_yticks(range(mdl.n), [f"$W_{{{i}}}$" + (" ◀" if i in stuck else "") for i in range(mdl.n)])
    ax2.set_xlabel("hidden neuron j")
    ax2.set_title(f"(b) final W after {int(run.steps[-1]):,} steps", fontsize=10)
    fig.colorbar(im, ax=ax2)
    return fig


def figure_kurtosis(rows, m):
    """Final mean ‖W_i‖₄⁴ against the noise's excess kurtosis, at equal σ.

    Parameters
    ----------
    rows : list of dict
        One per (setting, σ, sharing, distribution) with ``setting`` (panel title),
        ``sigma``, ``sharing``, ``kurtosis``, ``mean`` and ``sem`` (standard error over
        instances).
    m : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig = Figure(figsize=(5.5 * len(settings), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(settings)))
    for ax, setting in zip(axes, settings):
        sub = [r for r in rows if r["setting"] == setting]
        for c, key in enumerate(dict.fromkeys((r["sigma"], r["sharing"]) for r in sub)):
            line = sorted((r for r in sub if (r["sigma"], r["sharing"]) == key), key=lambda r: r["kurtosis"])
            ax.errorbar([r["kurtosis"] for r in line], [r["mean"] for r in line],
                        yerr=[r["sem"] for r in line], fmt="o-" if key[1] == "shared" else "s--",
                        color=f"C{c}", capsize=3, label=f"σ={key[0]:g}, {key[1]} noise")
        _fourth_norm_references(ax, m)
        ax.set_xticks([-2, -1.2, 0, 3], ["bipolar\n−2", "uniform\n−1.2", "normal\n0", "Laplace\n+3"])
        ax.set_xlabel("excess kurtosis of the noise")
        ax.set_title(setting, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"mean $\|W_i\|_4^4$ (± standard error over instances)")
    return fig


def figure_kurtosis_theory(checks):
    """The theory check: per-step change of mean ‖W_i‖₄⁴ beyond normal noise's, by window.

    Parameters
    ----------
    checks : list of (str, DriftCheck)
        Panel title and the measurement.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6 * len(checks), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(checks)))
    for ax, (title, c) in zip(axes, checks):
        win = c.windows.astype(float)
        for d, dist in enumerate(c.distributions):
            if dist == "normal":
                continue
            color = f"C{d}"
            ax.errorbar(win, c.excess[d], yerr=2 * c.excess_se[d], fmt="o", color=color, capsize=3,
                        label=f"{dist} (κ={c.kurtosis[d]:+g}) measured ± 2 s.e.")
            ax.plot(win[1:], c.excess[d][1:], color=color, lw=0.8)
            ax.axhline(c.regulariser_drift[d], color=color, ls="--", lw=1)
            if np.isfinite(c.exact[d]):
                ax.plot([1.0], [c.exact[d] - c.exact[c.distributions.index("normal")]], "*", color=color, ms=12)
        ax.plot([], [], "k--", lw=1, label="regulariser prediction −η∇R·∇f (per step)")
        if np.isfinite(c.exact).any():
            ax.plot([], [], "k*", ms=10, label="exact one-step value")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-9)
        ax.set_xlabel("window (steps) from the shared start W0")
        ax.set_ylabel(r"per-step change of mean $\|W_i\|_4^4$ minus normal noise's")
        ax.set_title(f"{title}\nσ={c.sigma:g}, η={c.eta:g}, {c.sharing} noise, f̄(W0)={c.f0:.3f}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def figure3_compare(tables, n, published=None, runs=None, count="threshold"):
    """Figure 3 for several training procedures: polysemantic neurons against m (log–log).

    Parameters
    ----------
    tables : dict of str -> list of dict
        Label (e.g. ``"flow"``, ``"adamw"``) -> per-m rows with ``m``, ``mean``, ``std``.
    n : int
        Number of features (for n²/(4m)).
    published : dict of int -> (float, float), optional
        Read-offs of the published figure, m -> (low, high); drawn as black stars (with
        a bar when low < high).
    runs : dict of str -> list of (m, count), optional
        Single runs of each label, drawn faintly beside its means.
    count : str
        The counting rule, for the axis label (``"threshold"`` or ``"window"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(7.2, 5.2), layout="constrained")
    ax = fig.subplots()
    labels = list(tables)
    shift = {lab: np.exp(0.04 * (k - (len(labels) - 1) / 2)) for k, lab in enumerate(labels)}
    rng = np.random.default_rng(0)
    for k, lab in enumerate(labels):
        color = f"C{k}"
        if runs and lab in runs and runs[lab]:
            rm, ry = (np.array(v, dtype=float) for v in zip(*runs[lab]))
            rx = rm * shift[lab] * np.exp(rng.uniform(-0.015, 0.015, rm.size))
            ok = ry > 0
            ax.scatter(rx[ok], ry[ok], s=7, color=color, alpha=0.3)
        t = tables[lab]
        m = np.array([r["m"] for r in t], dtype=float)
        mean = np.array([r["mean"] for r in t], dtype=float)
        std = np.array([r["std"] for r in t], dtype=float)
        ax.errorbar(m * shift[lab], mean, yerr=std, fmt="o-", color=color, capsize=3, lw=1,
                    label=f"{lab}: mean ± std ({'single runs faint' if runs else 'over runs'})")
    ms = np.array([r["m"] for t in tables.values() for r in t], dtype=float)
    if ms.size:
        mm = np.geomspace(ms.min(), ms.max(), 100)
        ax.plot(mm, n * n / (4.0 * mm), color="C3", ls="--", label=r"$n^2/(4m)$")
    if published:
        pm = np.array(sorted(published), dtype=float)
        lo = np.array([published[k][0] for k in sorted(published)], dtype=float)
        hi = np.array([published[k][1] for k in sorted(published)], dtype=float)
        mid = (lo + hi) / 2
        ax.errorbar(pm, mid, yerr=[mid - lo, hi - mid], fmt="*", color="k", ms=11, capsize=4,
                    label="published Figure 3 (AdamW), read off the plot")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden neurons m")
    rule = r"$0.8 \leq |W_{ik}| \leq 1.2$" if count == "window" else r"$|W_{ik}| > $ threshold"
    ax.set_ylabel(f"polysemantic neurons (≥ 2 features with {rule})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"n = {n}: " + " vs ".join(labels), fontsize=10)
    return fig


def figure3_compare_runs(pairs, xlabel, ylabel):
    """Per-run scatter of two procedures' counts on the same initial weights.

    Parameters
    ----------
    pairs : list of dict
        One per run with ``m`` and the counts under keys ``xlabel`` and ``ylabel``
        (``polysemantic.paired_rows``).
    xlabel, ylabel : str
        Keys (and axis names) of the two counts, e.g. ``"flow"`` and ``"adamw"``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    x = np.array([p[xlabel] for p in pairs], dtype=float)
    y = np.array([p[ylabel] for p in pairs], dtype=float)
    m = np.array([p["m"] for p in pairs], dtype=float)
    top = max(x.max(), y.max(), 1) + 1
    rng = np.random.default_rng(1)
    sc = ax.scatter(x + rng.uniform(-0.2, 0.2, x.size), y + rng.uniform(-0.2, 0.2, y.size),
                    c=np.log2(m), s=14, cmap="viridis", alpha=0.8)
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel(f"polysemantic neurons, {xlabel}")
    ax.set_ylabel(f"polysemantic neurons, {ylabel} (same initial weights)")
    fig.colorbar(sc, ax=ax, label="log2 m")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{len(pairs)} runs, one point each (jittered ±0.2)", fontsize=10)
    return fig


# ------------------------------------------------------------------ untied and split (issue 14)

_VARIANT_COLORS = {"tied": "k", "untied-tiedinit-E": "C1", "untied-E": "C0", "untied-ED": "C2"}


def figure_untied(rows, table, labels):
    """Untied encoder and decoder against the tied model (``python -m flowsim.untied``).

    Parameters
    ----------
    rows : list of dict
        One per run: ``n``, ``m``, ``seed``, ``variant``, ``t`` (save times) and
        ``series`` (``gap``, ``norm_E``, ``norm_D`` ... at each save time).
    table : list of dict
        Per (n, m, variant): ``polysemantic`` (mean), ``polysemantic_std``,
        ``clipped_fraction`` (see ``untied.per_size_table``).
    labels : dict of str -> str
        Legend label of each variant.

    Returns
    -------
    matplotlib.figure.Figure
        (a) ‖E − Dᵀ‖/‖D‖ and (b) ‖D‖/‖E‖ against t, mean over seeds per (n, m);
        (c) polysemantic neurons and (d) features whose output is clipped (d_i·e_i <= 0)
        at the end, against m.
    """
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (ax1, ax2), (ax3, ax4) = fig.subplots(2, 2)
    ns = sorted({r["n"] for r in rows})
    styles = {n: ls for n, ls in zip(ns, ("-", "--", ":", "-."))}
    shown = set()
    for (n, m, variant) in sorted({(r["n"], r["m"], r["variant"]) for r in rows}):
        rs = [r for r in rows if (r["n"], r["m"], r["variant"]) == (n, m, variant)]
        t = np.asarray(rs[0]["t"], dtype=float)
        if any(len(r["t"]) != t.size for r in rs):
            continue
        keep = t > 0
        gap = np.nanmean([np.asarray(r["series"]["gap"], dtype=float) for r in rs], axis=0)
        ratio = np.nanmean([np.asarray(r["series"]["norm_D"], dtype=float)
                            / np.asarray(r["series"]["norm_E"], dtype=float) for r in rs], axis=0)
        color = _VARIANT_COLORS.get(variant, "C3")
        label = labels.get(variant, variant) if variant not in shown else None
        shown.add(variant)
        alpha = 0.45 + 0.55 * (m == max(r["m"] for r in rows if r["n"] == n))
        ax1.plot(t[keep], gap[keep], color=color, ls=styles[n], lw=1.2, alpha=alpha, label=label)
        ax2.plot(t[keep], ratio[keep], color=color, ls=styles[n], lw=1.2, alpha=alpha)
    for n in ns:
        ax1.plot([], [], color="gray", ls=styles[n], label=f"n = {n}")
    ax1.set_xscale("log")
    ax1.set_xlabel("training time t")
    ax1.set_ylabel(r"$\|E - D^T\|_F / \|D\|_F$")
    ax1.set_title("(a) distance from tied weights (mean over seeds; each m one line)", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training time t")
    ax2.set_ylabel(r"$\|D\|_F / \|E\|_F$")
    ax2.set_title("(b) decoder against encoder scale (L1 on E only: no minimiser, drift)", fontsize=9)
    markers = {n: mk for n, mk in zip(ns, ("o", "s", "^", "D"))}
    for variant in dict.fromkeys(r["variant"] for r in table):
        color = _VARIANT_COLORS.get(variant, "C3")
        for n in ns:
            tr = [r for r in table if r["variant"] == variant and r["n"] == n]
            if not tr:
                continue
            m = np.array([r["m"] for r in tr], dtype=float)
            y = np.array([r["polysemantic"] for r in tr], dtype=float)
            e = np.array([r["polysemantic_std"] for r in tr], dtype=float)
            shift = np.exp(0.03 * (list(_VARIANT_COLORS).index(variant) - 1.5)) if variant in _VARIANT_COLORS else 1.0
            ax3.errorbar(m * shift, y, yerr=[np.minimum(e, y), e], color=color, marker=markers[n], ls="-",
                         lw=1, capsize=3, ms=5)
            ax4.plot(m * shift, [r["clipped_fraction"] for r in tr], color=color, marker=markers[n], ls="-", lw=1)
    for n in ns:
        ax3.plot([], [], color="gray", marker=markers[n], ls="", label=f"n = {n} (t_max "
                 f"{next(r['t_max'] for r in table if r['n'] == n):g})")
        mm = np.array(sorted({r["m"] for r in table if r["n"] == n}), dtype=float)
        ax3.plot(mm, theory.polysemantic_expected(n, mm), color="C3", ls=":", lw=1,
                 label=r"$n^2/(4m)$ (tied theory)" if n == ns[0] else None)
    ax3.set_xscale("log")
    ax3.set_yscale("symlog", linthresh=1)
    ax3.set_ylim(bottom=0)
    ax3.set_xlabel("hidden neurons m")
    ax3.set_ylabel(r"polysemantic neurons at t_max ($\sqrt{|D_{ik}E_{ki}|}$ > threshold)")
    ax3.set_title("(c) polysemantic neurons, mean ± std over seeds (same seeds for all)", fontsize=9)
    ax3.legend(fontsize=7)
    ax4.set_xscale("log")
    ax4.set_xlabel("hidden neurons m")
    ax4.set_ylabel(r"fraction of features with $d_i \cdot e_i \leq 0$ at t_max")
    ax4.set_title("(d) features the output ReLU clips (never learned)", fontsize=9)
    for ax in (ax1, ax2, ax3, ax4):
        ax.grid(True, which="both", alpha=0.3)
    return fig


def figure_split(table, fits, n, m):
    """The neuron-splitting intervention (``python -m flowsim.split``).

    Parameters
    ----------
    table : list of dict
        Per (λ, mode, ε): ``fraction``, ``fraction_se``, ``predicted_fraction``,
        ``t_resolve_median``, ``sigma``, ``loss_before``, ``loss_duplicated``,
        ``loss_after`` (see ``split.summary_table``).
    fits : list of dict
        Per (λ, mode): ``slope``, ``intercept`` of the resolve time against ln(1/ε).
    n, m : int
        Size of the trained models.

    Returns
    -------
    matplotlib.figure.Figure
        (a) fraction of duplicated polysemantic neurons that split into monosemantic
        copies, against ε; (b) median time to resolve against ε with the predicted slope
        1/σ; (c) loss before, right after duplication, and after retraining.
    """
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    lams = sorted({r["lam"] for r in table})
    style = {"random": ("o", "-"), "targeted": ("s", "--")}
    for q, lam in enumerate(lams):
        color = f"C{q}"
        for mode in ("random", "targeted"):
            rs = [r for r in table if r["lam"] == lam and r["mode"] == mode]
            if not rs:
                continue
            eps = np.array([r["eps"] for r in rs], dtype=float)
            mk, ls = style[mode]
            shift = np.exp(0.08 * (q - (len(lams) - 1) / 2))
            ax1.errorbar(eps * shift, [r["fraction"] for r in rs], yerr=[r["fraction_se"] for r in rs],
                         color=color, marker=mk, ls=ls, capsize=3, label=f"λ = {lam:g}, {mode}")
            if mode == "random":
                ax1.plot(eps * shift, [r["predicted_fraction"] for r in rs], color=color, marker="x", ls="",
                         ms=8, label="predicted from the perturbation" if q == 0 else None)
            y = np.array([r["t_resolve_median"] for r in rs], dtype=float)
            ax2.plot(eps, y, color=color, marker=mk, ls=ls, label=f"λ = {lam:g}, {mode}")
            fit = next((f for f in fits if f["lam"] == lam and f["mode"] == mode), None)
            if fit is not None and mode == "targeted":
                xx = np.geomspace(eps.min(), eps.max(), 50)
                yy = np.nanmean(y - fit["predicted_slope"] * np.log(1 / eps)) + fit["predicted_slope"] * np.log(1 / xx)
                ax2.plot(xx, yy, color=color, lw=3, alpha=0.25,
                         label=r"slope $1/\sigma$ (theory)" if q == 0 else None)
    ax1.axhline(0.5, color="k", lw=0.8, ls=":", label="1/2: coin flip per two-feature neuron")
    ax1.set_xscale("log")
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_xlabel("perturbation size ε")
    ax1.set_ylabel("fraction of duplicated neurons that split")
    ax1.set_title(f"(a) split into monosemantic copies (n = {n}, m = {m}; one noise draw per "
                  "model, scaled by ε)", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("perturbation size ε")
    ax2.set_ylabel("median time to resolve (after the intervention)")
    ax2.set_title(r"(b) time until each feature keeps one copy: $\approx \ln(1/\varepsilon)/\sigma$", fontsize=9)
    ax2.legend(fontsize=7)
    x = np.arange(len(lams))
    for k, (field, label) in enumerate((("loss_before", "before"), ("loss_duplicated", "after duplication"),
                                         ("loss_after", "after retraining"))):
        vals = []
        for lam in lams:
            rs = [r for r in table if r["lam"] == lam and r["mode"] == "random"] or \
                 [r for r in table if r["lam"] == lam]
            vals.append(np.mean([r[field] / max(r["runs"], 1) for r in rs]))
        ax3.bar(x + (k - 1) * 0.27, vals, width=0.27, color=f"C{k + 4}", label=label)
    ax3.set_xticks(x, [f"λ = {lam:g}" for lam in lams])
    ax3.set_ylabel("loss per trained model (mean over seeds and ε)")
    ax3.set_title("(c) loss; duplication adds (√2−1)λΣ|W| (the L1 term)", fontsize=9)
    ax3.legend(fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.grid(True, which="both", alpha=0.3)
    return fig
