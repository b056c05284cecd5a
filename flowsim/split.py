"""The neuron-splitting intervention (issue 14, part 2; paper Section 4).

After training, every polysemantic neuron k is duplicated: its column is divided by √2
and the copy ``W[:, k]/√2`` appended, so that ``W Wᵀ`` (hence every output and the
reconstruction part of the loss) is unchanged. The L1 term is not: the two copies carry
``√2 |W_ik|`` of activation, so the loss rises by ``(√2 - 1) λ Σ_{i, k dup} |W_ik|``.
(Section 4 divides only the outgoing weights by 2, which a tied model cannot do; 1/√2
on both sides is the tied equivalent.) Then both copies are perturbed by noise of size
ε and training continues with the tied engines (``flowsim.simulate`` on W of n × (m+p)).

What the flow predicts (tests/test_split.py and the experiment check it): a feature on
two copies is a row with two nonzeros and no interference, so its sparsity force
stretches the gap between them (Section 2.4): the larger magnitude after the
perturbation wins, the other dies. The symmetric state ``x = y = u`` with
``c (1 - 2u²) u = λ`` is a saddle whose unstable rate is ``σ = λ/u ≈ √2 λ``, so the pair
resolves after about ``ln(1/ε)/σ`` plus a constant. Each feature picks its copy
independently, from the sign of its own noise difference: with i.i.d. noise a
two-feature neuron splits with probability 1/2 whatever ε and λ, and a three-feature
neuron cannot become two monosemantic copies at all. Monosemantic and benign
polysemantic states have the same per-feature loss, so the loss after re-convergence
equals the loss before the intervention. A *targeted* perturbation (``mode="targeted"``:
feature q of the neuron made larger on copy q mod 2) splits every two-feature neuron.

Public API::

    duplicate_neurons, perturb, predicted_winners, outcomes, symmetric_rate
    split_run, SplitResult
    run_one           one (λ, seed): train, then every ε and mode (for flowsim.sweep)

``python -m flowsim.split`` runs the experiment (see :func:`main`).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from argparse import BooleanOptionalAction
from pathlib import Path

import numpy as np

from . import _cli, forces, metrics
from ._version import __version__
from .errors import check_float, check_int, invalid
from .integrate import EXPLICIT_METHODS, Stop, simulate
from .model import Model
from .provenance import weights_digest

PROG = "python -m flowsim.split"
MODES = ("random", "targeted")
NOISE_ON = ("support", "all")
#: Version of the layout of ``split.json``.
JSON_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the intervention

def _matrix(name, W):
    try:
        A = np.array(W, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError):
        raise invalid(name, type(W).__name__, "must be a real array") from None
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise invalid(f"{name}.shape", A.shape, "must be (n, m) with n, m >= 1")
    if not np.isfinite(A).all():
        raise invalid(name, f"<{int(np.count_nonzero(~np.isfinite(A)))} non-finite entries>",
                      "every entry must be finite")
    return A


def _neurons(neurons, m):
    try:
        idx = np.asarray(neurons).astype(np.int64, casting="safe").ravel()
    except (TypeError, ValueError):
        raise invalid("neurons", neurons, f"must be distinct integers in [0, {m})") from None
    if idx.size and (idx.min() < 0 or idx.max() >= m or np.unique(idx).size != idx.size):
        raise invalid("neurons", neurons.tolist() if hasattr(neurons, "tolist") else neurons,
                      f"must be distinct integers in [0, {m})")
    return idx


def duplicate_neurons(W, neurons):
    """Duplicate each listed neuron, both copies scaled by 1/√2 (W Wᵀ unchanged).

    Parameters
    ----------
    W : array_like, shape (n, m)
    neurons : array_like of int, shape (p,)
        Distinct column indices.

    Returns
    -------
    ndarray, shape (n, m + p)
        Column k of each listed neuron is ``W[:, k]/√2``; column ``m + r`` is the copy of
        ``neurons[r]``, also ``W[:, k]/√2``.
    """
    W = _matrix("W", W)
    idx = _neurons(neurons, W.shape[1])
    half = W[:, idx] / math.sqrt(2.0)
    out = np.hstack([W, half])
    out[:, idx] = half
    return out


def perturb(W2, neurons, eps, *, noise=None, on="support", mode="random", threshold=0.5):
    """Perturb both copies of every duplicated neuron.

    Parameters
    ----------
    W2 : array_like, shape (n, m + p)
        Output of :func:`duplicate_neurons` (copies in the last p columns).
    neurons : array_like of int, shape (p,)
    eps : float
        Size of the perturbation, >= 0.
    noise : ndarray, shape (n, p, 2), optional
        Standard-normal draws for ``mode="random"``: entry (i, r, 0) perturbs the
        original column of ``neurons[r]``, (i, r, 1) its copy.
    on : {"support", "all"}
        Perturb only the features the neuron carries (its nonzero weights), or every
        weight of both copies.
    mode : {"random", "targeted"}
        ``"random"``: add ``eps · noise``. ``"targeted"``: the q-th feature (ascending)
        that the neuron represents (``|w| > threshold``) gets ``+eps`` in magnitude on copy
        ``q mod 2`` and ``-eps`` on the other; other weights unchanged.
    threshold : float
        Rule of "represents" for ``"targeted"``.

    Returns
    -------
    ndarray, shape (n, m + p)
    """
    W3 = _matrix("W2", W2)
    p = np.asarray(neurons).size
    m = W3.shape[1] - p
    idx = _neurons(neurons, m)
    eps = check_float("eps", eps, minimum=0.0)
    if on not in NOISE_ON:
        raise invalid("on", on, "must be one of " + ", ".join(NOISE_ON))
    if mode not in MODES:
        raise invalid("mode", mode, "must be one of " + ", ".join(MODES))
    cols = np.stack([idx, m + np.arange(p)], axis=1)            # (p, 2)
    if mode == "random":
        Z = np.asarray(noise, dtype=np.float64) if noise is not None else None
        if Z is None or Z.shape != (W3.shape[0], p, 2):
            raise invalid("noise", None if Z is None else Z.shape, f"must be an array of shape {(W3.shape[0], p, 2)}")
        mask = (W3[:, idx] != 0.0)[:, :, None] if on == "support" else np.ones((1, 1, 1), bool)
        for c in range(2):
            W3[:, cols[:, c]] += eps * np.where(mask[:, :, 0], Z[:, :, c], 0.0)
        return W3
    check_float("threshold", threshold, positive=True)
    for r in range(p):
        k = cols[r, 0]
        feats = np.flatnonzero(np.abs(W3[:, k]) * math.sqrt(2.0) > threshold)
        for q, i in enumerate(feats):
            s = np.sign(W3[i, k])
            up, down = cols[r, q % 2], cols[r, 1 - q % 2]
            W3[i, up] += s * eps
            W3[i, down] -= s * eps
    return W3


def predicted_winners(W3, neurons, support):
    """The copy each carried feature is predicted to end on: the one where its magnitude
    is larger after the perturbation (0: original column, 1: the copy; -1 on a tie).

    Parameters
    ----------
    W3 : ndarray, shape (n, m + p)
    neurons : ndarray, shape (p,)
    support : list of p ndarrays
        The features each neuron carries.

    Returns
    -------
    list of p ndarrays of int
    """
    m = W3.shape[1] - len(neurons)
    out = []
    for r, k in enumerate(neurons):
        a, b = np.abs(W3[support[r], k]), np.abs(W3[support[r], m + r])
        out.append(np.where(a > b, 0, np.where(b > a, 1, -1)).astype(np.int64))
    return out


def outcomes(W, W3, W_after, neurons, threshold=0.5):
    """What became of each duplicated neuron.

    Parameters
    ----------
    W : ndarray, shape (n, m)
        Trained weights before the intervention.
    W3 : ndarray, shape (n, m + p)
        Duplicated and perturbed weights (the start of the continued training).
    W_after : ndarray, shape (n, m + p)
        Weights after the continued training.
    neurons : ndarray, shape (p,)
    threshold : float
        Rule of "represents" (``|w| > threshold``).

    Returns
    -------
    list of p dicts
        ``neuron``, ``features`` (carried: nonzero before), ``represented`` (count),
        ``winners`` (copy each carried feature ends on: 0 original, 1 copy, -1 neither,
        2 both), ``predicted`` (:func:`predicted_winners`), ``agree`` (all equal),
        ``split`` (each copy represents at most one feature, and every feature the neuron
        represented before is represented by one copy), ``predicted_split``.
    """
    m = W.shape[1]
    out = []
    support = [np.flatnonzero(W[:, k] != 0.0) for k in neurons]
    pred = predicted_winners(W3, neurons, support)
    for r, k in enumerate(neurons):
        S = support[r]
        a, b = W_after[S, k] != 0.0, W_after[S, m + r] != 0.0
        win = np.where(a & ~b, 0, np.where(b & ~a, 1, np.where(a & b, 2, -1)))
        rep_before = np.flatnonzero(np.abs(W[:, k]) > threshold)
        ra = np.abs(W_after[:, k]) > threshold
        rb = np.abs(W_after[:, m + r]) > threshold
        kept = bool(np.all(ra[rep_before] | rb[rep_before]))
        split = bool(kept and ra.sum() <= 1 and rb.sum() <= 1)
        pw = pred[r]
        pred_rep = [pw[list(S).index(i)] for i in rep_before if i in S]
        out.append(dict(neuron=int(k), features=S.tolist(), represented=int(rep_before.size),
                        winners=win.tolist(), predicted=pw.tolist(),
                        agree=bool(np.array_equal(win, pw)),
                        split=split,
                        predicted_split=bool(len(pred_rep) <= 2 and len(set(pred_rep)) == len(pred_rep)
                                             and -1 not in pred_rep)))
    return out


def symmetric_rate(lam, c=1.0):
    """Unstable rate ``σ = λ/u`` of the symmetric state of a feature on two copies, where
    ``c (1 - 2u²) u = λ`` (the larger root, u < 1/√2). Returns NaN when λ is too large
    for a symmetric state to exist."""
    lam = check_float("lam", lam, minimum=0.0)
    c = check_float("c", c, positive=True)
    if lam == 0.0:
        return 0.0
    f = lambda u: c * (1.0 - 2.0 * u * u) * u - lam  # noqa: E731
    peak = 1.0 / math.sqrt(6.0)           # maximum of (1 - 2u²) u
    if f(peak) < 0.0:
        return math.nan
    lo, hi = peak, 1.0 / math.sqrt(2.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0.0 else (lo, mid)
    return lam / (0.5 * (lo + hi))


# --------------------------------------------------------------------------- one intervention

@dataclasses.dataclass(frozen=True, eq=False)
class SplitResult:
    """One intervention on one trained W and its continued training.

    Attributes
    ----------
    neurons : ndarray, shape (p,)
        The duplicated (polysemantic) neurons; their copies are columns m .. m+p-1.
    eps : float
    mode, on : str
    outcomes : list of dict
        Per neuron (see :func:`outcomes`), with ``t_resolve``: the first check time at
        which every feature it carried has one nonzero weight left on the two copies
        (NaN if never).
    loss_before, loss_duplicated, loss_perturbed, loss_after : float
        Total loss (with L1) of W, after duplication, after the perturbation, and at the
        end of the continued training.
    recon_before, recon_duplicated, recon_after : float
        Its reconstruction part (L1 left out).
    l1_increase_predicted : float
        ``(√2 - 1) λ Σ |W_ik|`` over the duplicated columns.
    polysemantic_before, polysemantic_after : int
    t_resolved : float
        End of phase 1 (every duplicated neuron resolved), or t_max.
    t_end : float
        End of phase 2 (the convergence rule held), or t_max.
    status : str
        ``"converged"``, ``"unresolved"`` (phase 1 reached t_max) or ``"not converged"``.
    steps : int
    run_seconds : float
    W : ndarray, shape (n, m + p)
        Final weights.
    """

    neurons: np.ndarray
    eps: float
    mode: str
    on: str
    outcomes: list
    loss_before: float
    loss_duplicated: float
    loss_perturbed: float
    loss_after: float
    recon_before: float
    recon_duplicated: float
    recon_after: float
    l1_increase_predicted: float
    polysemantic_before: int
    polysemantic_after: int
    t_resolved: float
    t_end: float
    status: str
    steps: int
    run_seconds: float
    W: np.ndarray

    @property
    def split_fraction(self) -> float:
        """Fraction of the duplicated neurons that split (NaN if none)."""
        return float(np.mean([o["split"] for o in self.outcomes])) if self.outcomes else math.nan


def _resolve(big, W3, W, neurons, method, dt, t_max, check_every):
    """Phase 1: steps from t = 0 on the grid k·dt, checking every ``check_every`` time
    units which duplicated neurons have resolved (every carried feature's row back to its
    number of nonzeros in W), until all have or ``t_max``.

    Returns
    -------
    W_end : ndarray, shape (n, m + p)
    t_end : float
    t_resolve : list of p floats (NaN if not resolved)
    steps : int
    wall : float
    """
    from . import _engines
    from ._runtime import Interrupt, Progress
    from .errors import DivergenceError
    from .integrate import SPARSE_BELOW, _Stepper

    engine = _engines.make_engine(W3.copy(), big, method, SPARSE_BELOW if big.interference and big.l1 else 0.0)
    nnz0 = np.count_nonzero(W, axis=1)
    rows = [np.flatnonzero(W[:, k] != 0.0) for k in neurons]
    t_res = [math.nan] * len(neurons)
    interrupt = Interrupt()
    run = _Stepper(engine, dt, 0.0, None, Progress(False, method, 0.0, t_max, None, 0), interrupt)
    _engines.warm_up(big, method)
    tick = time.perf_counter()
    with interrupt.guard():
        while run.t < t_max and any(math.isnan(x) for x in t_res):
            try:
                going = run.advance(min(run.t + check_every, t_max))
            except FloatingPointError:
                raise DivergenceError(f"weights became non-finite after t={run.t:.6g} (step {run.steps}) "
                                      f"of the continued training with method={method}, dt={dt:g}; "
                                      f"try dt={dt / 10:g}", t=run.t, step=run.steps) from None
            if not going:
                raise KeyboardInterrupt
            for r, S in enumerate(rows):
                if math.isnan(t_res[r]) and np.all(np.count_nonzero(engine.W[S], axis=1) <= nnz0[S]):
                    t_res[r] = run.t
    return engine.W, run.t, t_res, run.steps, time.perf_counter() - tick


def split_run(model, W, eps, *, neurons=None, noise=None, mode="random", on="support",
              method="euler", dt=0.1, tol=1e-6, window=50.0, t_max=None, threshold=0.5,
              check_every=1.0):
    """Duplicate the polysemantic neurons of a trained W, perturb, and train on.

    Phase 1 steps until every duplicated neuron has resolved (each feature it carried
    has one nonzero weight left on the two copies), checking every ``check_every`` time
    units: the convergence rule alone would stop at the symmetric saddle, where the
    weights barely move for a time ~ln(1/ε)/σ. Phase 2 continues on the same grid until
    the convergence rule (``tol``, ``window``) holds.

    Parameters
    ----------
    model : Model
        The trained model (n, m, λ, c, switches).
    W : array_like, shape (n, m)
        Trained weights.
    eps : float
        Perturbation size (>= 0).
    neurons : array_like of int, optional
        Neurons to duplicate; default the polysemantic ones (``threshold``).
    noise : ndarray, shape (n, p, 2), optional
        Standard-normal draws for ``mode="random"`` (required then).
    mode, on : str
        See :func:`perturb`.
    method, dt : str, float
        Fixed-step method and step (the engines of ``flowsim.simulate``).
    tol, window : float
        Convergence rule of phase 2.
    t_max : float, optional
        Cap on the training time after the intervention (default 100/λ).
    threshold : float
    check_every : float
        Time between the checks of phase 1 (the resolution of ``t_resolve``; rounded to
        a whole number of steps, at least one).

    Returns
    -------
    SplitResult
    """
    if not isinstance(model, Model):
        raise invalid("model", type(model).__name__, "must be a flowsim.Model")
    W = model.check_weights(W)
    threshold = check_float("threshold", threshold, positive=True)
    if method not in EXPLICIT_METHODS:
        raise invalid("method", method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    dt = check_float("dt", dt, positive=True)
    check_every = max(round(check_float("check_every", check_every, positive=True) / dt), 1) * dt
    t_max = check_float("t_max", 100.0 / model.lam if (t_max is None and model.lam > 0) else
                        (1e4 if t_max is None else t_max), positive=True)
    idx = metrics.polysemantic_neurons(W, threshold) if neurons is None else _neurons(neurons, model.m)
    W2 = duplicate_neurons(W, idx)
    W3 = perturb(W2, idx, eps, noise=noise, on=on, mode=mode, threshold=threshold)
    big = model.replace(m=model.m + idx.size)
    recon = lambda A, mod: forces.loss(A, mod.replace(l1=False))  # noqa: E731
    l1_inc = (math.sqrt(2.0) - 1.0) * model.l1_strength * float(np.abs(W[:, idx]).sum())
    common = dict(loss_before=forces.loss(W, model), loss_duplicated=forces.loss(W2, big),
                  loss_perturbed=forces.loss(W3, big), recon_before=recon(W, model),
                  recon_duplicated=recon(W2, big), l1_increase_predicted=l1_inc,
                  polysemantic_before=metrics.count_polysemantic(W, threshold))
    if idx.size == 0:
        return SplitResult(idx, float(eps), mode, on, [], loss_after=common["loss_before"],
                           recon_after=common["recon_before"], polysemantic_after=common["polysemantic_before"],
                           t_resolved=0.0, t_end=0.0, status="converged", steps=0, run_seconds=0.0,
                           W=W3, **common)
    W1, t1, t_res, steps, wall = _resolve(big, W3, W, idx, method, dt, t_max, check_every)
    final, t_end, status = W1, t1, "unresolved"
    if not any(math.isnan(x) for x in t_res):
        status = "not converged"
        if t1 < t_max:
            tr2 = simulate(big, t_max, method=method, dt=dt, W0=W1, t0=t1,
                           stop=Stop(tol=tol, window=window), save_at=[])
            if tr2.stats.status == "interrupted":
                raise KeyboardInterrupt
            steps, wall, final, t_end = steps + tr2.stats.steps, wall + tr2.stats.wall_seconds, tr2.W, tr2.stats.t_end
            status = "converged" if tr2.stats.status == "converged" else "not converged"
    outs = outcomes(W, W3, final, idx, threshold)
    for o, tr in zip(outs, t_res):
        o["t_resolve"] = tr
    return SplitResult(idx, float(eps), mode, on, outs, loss_after=forces.loss(final, big),
                       recon_after=recon(final, big),
                       polysemantic_after=metrics.count_polysemantic(final, threshold),
                       t_resolved=float(t1), t_end=float(t_end), status=status, steps=int(steps),
                       run_seconds=float(wall), W=final, **common)


# --------------------------------------------------------------------------- one sweep run

def noise_for(seed, n, p):
    """The standard-normal perturbation of the run with base seed ``seed`` (n, p, 2): one
    draw shared by every ε (common random numbers: ε changes only its size)."""
    return np.random.default_rng(np.random.SeedSequence([seed, 14])).standard_normal((n, p, 2))


def run_one(params):
    """Train the tied model of one (λ, seed) to convergence, then run the intervention
    for every ε and mode.

    Parameters
    ----------
    params : dict
        n, m, lam, c, seed, method, dt, t_max (cap of the training and of each
        continuation), tol, window, threshold, eps (list), modes (list), on, check_every.

    Returns
    -------
    dict
        ``base``: status, t_end, polysemantic, loss and digest of the trained W;
        ``results``: one dict per (mode, ε) with the outcome of every duplicated neuron
        and the losses (see :class:`SplitResult`).
    """
    model = Model(n=params["n"], m=params["m"], lam=params["lam"], c=params["c"], seed=params["seed"])
    base = simulate(model, params["t_max"], method=params["method"], dt=params["dt"], save_at=[],
                    stop=Stop(tol=params["tol"], window=params["window"]))
    if base.stats.status == "interrupted":
        raise KeyboardInterrupt
    W = base.W
    neurons = metrics.polysemantic_neurons(W, params["threshold"])
    Z = noise_for(params["seed"], model.n, neurons.size)
    results = []
    for mode in params["modes"]:
        for eps in params["eps"]:
            r = split_run(model, W, eps, neurons=neurons, noise=Z, mode=mode, on=params["on"],
                          method=params["method"], dt=params["dt"], tol=params["tol"],
                          window=params["window"], t_max=params["t_max"],
                          threshold=params["threshold"], check_every=params["check_every"])
            results.append(dict(
                mode=mode, eps=eps, status=r.status, outcomes=r.outcomes,
                neurons=int(r.neurons.size), split=int(sum(o["split"] for o in r.outcomes)),
                predicted_split=int(sum(o["predicted_split"] for o in r.outcomes)),
                agree=int(sum(o["agree"] for o in r.outcomes)),
                loss_before=r.loss_before, loss_duplicated=r.loss_duplicated,
                loss_perturbed=r.loss_perturbed, loss_after=r.loss_after,
                recon_before=r.recon_before, recon_duplicated=r.recon_duplicated,
                recon_after=r.recon_after, l1_increase_predicted=r.l1_increase_predicted,
                polysemantic_before=r.polysemantic_before, polysemantic_after=r.polysemantic_after,
                t_resolved=r.t_resolved, t_end=r.t_end, steps=r.steps, run_seconds=r.run_seconds))
    return dict(base=dict(status=base.stats.status, t_end=base.stats.t_end, steps=base.stats.steps,
                          run_seconds=base.stats.wall_seconds, compile_seconds=base.stats.compile_seconds,
                          polysemantic=int(neurons.size), loss=forces.loss(W, model),
                          max_nnz=int(np.count_nonzero(W, axis=1).max()),
                          w_sha256=weights_digest(W), w0_source={"source": "seed", "seed": model.seed}),
                noise={"distribution": "standard normal", "seed_sequence": [params["seed"], 14],
                       "shape": [model.n, int(neurons.size), 2], "shared_by_every_eps": True},
                results=results)


# --------------------------------------------------------------------------- tables

def flat_rows(specs, results):
    """One row per (λ, seed, mode, ε), JSON/CSV-ready (outcomes summarised)."""
    rows = []
    for spec in specs:
        res = results.get(spec.key)
        if res is None:
            continue
        p = spec.params
        for r in res["results"]:
            tres = [o["t_resolve"] for o in r["outcomes"] if o["t_resolve"] is not None]
            two = [o for o in r["outcomes"] if o["represented"] == 2]
            rows.append(dict(key=spec.key, n=p["n"], m=p["m"], lam=p["lam"], seed=p["seed"],
                             mode=r["mode"], eps=r["eps"], status=r["status"],
                             base_status=res["base"]["status"], neurons=r["neurons"],
                             two_feature=len(two), split=r["split"],
                             split_two_feature=sum(o["split"] for o in two),
                             predicted_split=r["predicted_split"], agree=r["agree"],
                             t_resolve_median=float(np.median(tres)) if tres else math.nan,
                             t_resolve_max=float(np.max(tres)) if tres else math.nan,
                             loss_before=r["loss_before"], loss_duplicated=r["loss_duplicated"],
                             loss_perturbed=r["loss_perturbed"], loss_after=r["loss_after"],
                             recon_before=r["recon_before"], recon_duplicated=r["recon_duplicated"],
                             recon_after=r["recon_after"], l1_increase_predicted=r["l1_increase_predicted"],
                             polysemantic_before=r["polysemantic_before"],
                             polysemantic_after=r["polysemantic_after"], t_end=r["t_end"],
                             steps=r["steps"], run_seconds=r["run_seconds"]))
    return rows


def summary_table(specs, results, c=1.0):
    """Per (λ, mode, ε), pooled over seeds: neurons, splits, the split fraction with its
    binomial standard error, the predicted fraction and the agreement of every winner,
    resolve times (median, and all of them for the fit), losses before and after
    (summed over seeds), and the theory rate σ (:func:`symmetric_rate`)."""
    table = []
    keys = sorted({(s.params["lam"], mode, eps) for s in specs for mode in s.params["modes"]
                   for eps in s.params["eps"]}, key=lambda k: (k[0], MODES.index(k[1]), k[2]))
    for lam, mode, eps in keys:
        outs, rs = [], []
        for s in specs:
            res = results.get(s.key)
            if res is None or s.params["lam"] != lam:
                continue
            for r in res["results"]:
                if r["mode"] == mode and r["eps"] == eps:
                    outs += r["outcomes"]
                    rs.append(r)
        k = len(outs)
        f = float(np.mean([o["split"] for o in outs])) if k else math.nan
        two = [o for o in outs if o["represented"] == 2]
        tres = [o["t_resolve"] for o in outs if o["t_resolve"] is not None and np.isfinite(o["t_resolve"])]
        table.append(dict(
            lam=lam, mode=mode, eps=eps, runs=len(rs), neurons=k, split=int(sum(o["split"] for o in outs)),
            fraction=f, fraction_se=math.sqrt(f * (1 - f) / k) if k else math.nan,
            two_feature=len(two), fraction_two_feature=float(np.mean([o["split"] for o in two])) if two else math.nan,
            predicted_fraction=float(np.mean([o["predicted_split"] for o in outs])) if k else math.nan,
            agree_fraction=float(np.mean([o["agree"] for o in outs])) if k else math.nan,
            t_resolve_median=float(np.median(tres)) if tres else math.nan,
            t_resolve_mean=float(np.mean(tres)) if tres else math.nan,
            unresolved=sum(r["status"] == "unresolved" for r in rs),
            loss_before=float(sum(r["loss_before"] for r in rs)),
            loss_duplicated=float(sum(r["loss_duplicated"] for r in rs)),
            loss_after=float(sum(r["loss_after"] for r in rs)),
            max_abs_loss_change=float(max((abs(r["loss_after"] - r["loss_before"]) for r in rs), default=math.nan)),
            polysemantic_before=int(sum(r["polysemantic_before"] for r in rs)),
            polysemantic_after=int(sum(r["polysemantic_after"] for r in rs)),
            sigma=symmetric_rate(lam, c)))
    return table


def time_fits(table):
    """Per (λ, mode): least-squares slope of the median resolve time against ln(1/ε),
    and the predicted slope 1/σ."""
    fits = []
    for lam, mode in dict.fromkeys((r["lam"], r["mode"]) for r in table):
        rs = [r for r in table if r["lam"] == lam and r["mode"] == mode and np.isfinite(r["t_resolve_median"])
              and r["eps"] > 0]
        if len(rs) < 2:
            continue
        x = np.log(1.0 / np.array([r["eps"] for r in rs]))
        y = np.array([r["t_resolve_median"] for r in rs])
        slope, icpt = np.polyfit(x, y, 1)
        fits.append(dict(lam=lam, mode=mode, slope=float(slope), intercept=float(icpt),
                         predicted_slope=1.0 / rs[0]["sigma"], points=len(rs)))
    return fits


# --------------------------------------------------------------------------- command

def parser():
    p = _cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--n", type=int, default=256, help="features (default 256)")
    a("--m", type=int, default=512, help="hidden neurons before the intervention (default 512)")
    a("--lam", type=float, nargs="+", default=[0.005, 0.01, 0.02], help="L1 strengths (default 0.005 0.01 0.02)")
    a("--eps", type=float, nargs="+", default=[1e-6, 1e-4, 1e-2, 1e-1],
      help="perturbation sizes (default 1e-6 1e-4 1e-2 1e-1)")
    a("--seeds", type=int, default=6, help="trained models per λ (seeds seed0 ..., default 6)")
    a("--seed0", type=int, default=0, help="first seed (default 0)")
    a("--modes", nargs="+", choices=MODES, default=list(MODES),
      help="random: i.i.d. normal noise; targeted: each feature pushed to its own copy (default both)")
    a("--on", choices=NOISE_ON, default="support", help="perturb the carried features only (default) or all weights")
    a("--c", type=float, default=1.0, help="force scale (default 1, the paper's)")
    a("--method", default="euler", help=f"one of {', '.join(EXPLICIT_METHODS)} (default euler)")
    a("--dt", type=float, default=0.1, help="step (default 0.1)")
    a("--t-max", type=float, default=None, help="cap on training and on each continuation (default 100/λ)")
    a("--tol", type=float, default=1e-6, help="convergence: max|dW|/dt below this over a window (default 1e-6)")
    a("--window", type=float, default=50.0, help="convergence window (default 50)")
    a("--threshold", type=float, default=0.5, help="|W_ik| above which a neuron represents a feature (default 0.5)")
    a("--check-every", type=float, default=1.0,
      help="time between the checks for resolved neurons, the resolution of the resolve times (default 1)")
    a("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    a("--executor", choices=("local", "dask", "serial"), default="local", help="where runs execute (default local)")
    a("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    a("--resume", action=BooleanOptionalAction, default=True,
      help="reuse runs stored in OUT/split_runs/ with the same parameters and flowsim version")
    a("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    a("--no-plot", action="store_true", help="write CSV and JSON only")
    a("--quiet", action="store_true", help="no progress bar or summary")
    return p


def specs_from_args(args):
    """The RunSpecs (one per (λ, seed)), every value validated with a one-line error."""
    from .sweep import RunSpec

    check_int("--n", args.n, 1)
    check_int("--m", args.m, 1)
    check_int("--seeds", args.seeds, 1)
    check_int("--seed0", args.seed0, 0)
    if args.workers is not None:
        check_int("--workers", args.workers, 1)
    check_int("--retries", args.retries, 0)
    if args.method not in EXPLICIT_METHODS:
        raise invalid("--method", args.method, "must be one of " + ", ".join(EXPLICIT_METHODS))
    for name in ("dt", "tol", "window", "threshold", "c", "check_every"):
        check_float("--" + name.replace("_", "-"), getattr(args, name), positive=True)
    for lam in args.lam:
        if not (math.isfinite(lam) and lam > 0):
            raise invalid("--lam", lam, "must be a finite number > 0 (L1 drives the splitting)")
    for eps in args.eps:
        if not (math.isfinite(eps) and eps > 0):
            raise invalid("--eps", eps, "must be a finite number > 0")
    if args.t_max is not None:
        check_float("--t-max", args.t_max, positive=True)
    specs = []
    for lam in args.lam:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            Model(n=args.n, m=args.m, lam=lam, c=args.c, seed=seed)  # validates
            params = dict(n=args.n, m=args.m, lam=lam, c=args.c, seed=seed, method=args.method,
                          dt=args.dt, t_max=args.t_max if args.t_max is not None else 100.0 / lam,
                          tol=args.tol, window=args.window, threshold=args.threshold,
                          eps=sorted(args.eps), modes=list(dict.fromkeys(args.modes)), on=args.on,
                          check_every=args.check_every)
            specs.append(RunSpec(key=f"n{args.n}_m{args.m}_lam{lam:g}_seed{seed}", params=params))
    return specs


def main(argv=None):
    """``python -m flowsim.split``: the intervention for every (λ, seed), ε and mode.

    Writes into ``--out``: ``split.png`` (split fraction and resolve time against ε per λ,
    losses before and after), ``split.csv`` (one row per (λ, seed, mode, ε)) and
    ``split.json`` (parameters, seeds, the pooled table, the fits of the resolve time
    against ln(1/ε) with the predicted slope 1/σ, timing, flowsim version). Each finished
    (λ, seed) is stored at once in ``<out>/split_runs/`` and reused by the same command.
    """
    args = parser().parse_args(argv)
    specs = specs_from_args(args)
    out = _cli.check_out_dir(args.out)
    from .io import write_csv, write_json
    from .sweep import strict_json
    from flowsim.split import run_one as fn   # importable by the workers (not __main__)

    store = out / "split_runs"
    done = _cli.sweep_command(PROG, fn, specs, store, args)
    if done is None:
        return _cli.EXIT_INTERRUPTED
    sweep, wall = done
    rows = flat_rows(specs, sweep.results)
    table = summary_table(specs, sweep.results, args.c)
    fits = time_fits(table)
    write_csv(out / "split.csv", rows)
    meta = dict(format_version=JSON_FORMAT_VERSION, flowsim_version=__version__, command=PROG,
                argv=sys.argv, parameters={k: v for k, v in specs[0].params.items() if k not in ("lam", "seed", "t_max")},
                lam=args.lam, seeds=list(range(args.seed0, args.seed0 + args.seeds)),
                t_max={str(s.params["lam"]): s.params["t_max"] for s in specs},
                executor=args.executor, workers=args.workers, wall_seconds=wall, runs=len(specs),
                finished=len(sweep.results), skipped=len(sweep.skipped), rerun=sweep.rerun,
                failed=sweep.failed, table=table, time_fits=fits,
                base_runs={s.key: sweep.results[s.key]["base"] for s in specs if s.key in sweep.results},
                noise={s.key: sweep.results[s.key]["noise"] for s in specs if s.key in sweep.results})
    from .provenance import environment

    meta["environment"] = environment()
    if table and not args.no_plot:
        from .plotting import figure_split, save_figure

        save_figure(figure_split(table, fits, args.n, args.m), out / "split.png")
    write_json(out / "split.json", strict_json(meta))
    if sweep.failed:
        sys.stderr.write(f"{PROG}: {len(sweep.failed)} runs failed: "
                         + "; ".join(f"{k}: {v}" for k, v in list(sweep.failed.items())[:3]) + "\n")
    if not args.quiet:
        _print_summary(table, fits, sweep, wall, out)
    return 1 if sweep.failed else _cli.EXIT_OK


def _print_summary(table, fits, sweep, wall, out):
    print(f"{len(sweep.results)} runs finished in {wall:.1f} s ({len(sweep.skipped)} stored runs reused)")
    print(f"{'lam':>7} {'mode':>9} {'eps':>8} {'neurons':>7} {'split':>9} {'predicted':>9} {'agree':>6} "
          f"{'t_res':>7} {'dloss':>9}")
    for r in table:
        print(f"{r['lam']:>7g} {r['mode']:>9} {r['eps']:>8.0e} {r['neurons']:>7} {r['fraction']:>5.2f}±{r['fraction_se']:.2f} "
              f"{r['predicted_fraction']:>9.2f} {r['agree_fraction']:>6.2f} {r['t_resolve_median']:>7.0f} "
              f"{r['max_abs_loss_change']:>9.1e}")
    for f in fits:
        print(f"lam={f['lam']:g} {f['mode']}: resolve time vs ln(1/eps) slope {f['slope']:.1f} "
              f"(predicted 1/sigma = {f['predicted_slope']:.1f})")
    print(f"wrote {out}/ (split.png, split.csv, split.json)")


if __name__ == "__main__":
    sys.exit(_cli.run_main(PROG, main, sys.argv[1:]))
