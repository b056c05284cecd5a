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
        Per-m rows with ``m``, ``mean``, ``std`` (see ``polysemantic.per_m_table``).
    rows : list of dict
        One row per run with ``m`` and ``polysemantic``.
    n : int
        Number of features.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    m = np.array([r["m"] for r in table], dtype=float)
    mean = np.array([r["mean"] for r in table])
    std = np.array([r["std"] for r in table])
    rm = np.array([r["m"] for r in rows], dtype=float)
    ry = np.array([r["polysemantic"] for r in rows], dtype=float)
    jitter = np.exp(np.random.default_rng(0).uniform(-0.03, 0.03, rm.size))
    ax.scatter(rm * jitter, np.where(ry > 0, ry, np.nan), s=6, color="C0", alpha=0.25, label="single runs")
    ax.errorbar(m, mean, yerr=std, fmt="o", color="C0", capsize=3, label="mean ± std over seeds")
    mm = np.unique(np.round(np.geomspace(m.min(), m.max(), 100)))
    ax.plot(mm, theory.polysemantic_expected(n, mm), color="C3", ls="--", label=r"$n^2/(4m)$")
    ax.plot(mm, theory.collisions_expected(n, mm), color="C2", ls=":", label=r"initial collisions $n(n-1)/(2m)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden neurons m")
    ax.set_ylabel("polysemantic neurons")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"n = {n}, {len(rows)} runs", fontsize=10)
    return fig


def figure3_collisions(rows):
    """Initial benign collisions against final polysemantic neurons, one point per run.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    x = np.array([r["benign"] for r in rows], dtype=float)
    y = np.array([r["polysemantic"] for r in rows], dtype=float)
    m = np.array([r["m"] for r in rows], dtype=float)
    rng = np.random.default_rng(1)
    sc = ax.scatter(x + rng.uniform(-0.2, 0.2, x.size), y + rng.uniform(-0.2, 0.2, y.size), c=np.log2(m),
                    s=10, cmap="viridis", alpha=0.7)
    top = max(x.max(), y.max(), 1) + 1
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
