"""Tests of flowsim.cooccur: q = 0 is the plain model bit for bit; the numba kernels equal
the NumPy reference; the expected-loss force equals finite differences of the expected
loss computed by enumerating every input; SGD's mean minibatch gradient equals the
expected gradient within sampling error; bad q/p; the command."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from flowsim import cooccur as C
from flowsim import forces
from flowsim.errors import FlowsimInputError
from flowsim.integrate import Stop, simulate
from flowsim.model import Model


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _W(n, m, seed, zeros=0.3, scale=0.5):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, m)) * scale
    W[rng.random((n, m)) < zeros] = 0.0
    return W


def _total_force(W, model, q):
    """Force with the L1 subgradient sign(0) = 0 (what the engine integrates, off zeros)."""
    e = C.CoEngine(W.copy(), model, "euler", q)
    F = np.empty_like(W)
    e.smooth(W, F)
    return F - C.reference_thresholds(W, model, q) * np.sign(W)


# ---------------------------------------------------------------- q = 0 is the plain model

@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_q0_is_simulate_bit_for_bit(method):
    model = Model(n=12, m=40, lam=0.02, seed=4)
    kw = dict(method=method, dt=0.1, save_at=[5.0, 50.0], stop=Stop(tol=1e-6, window=20.0))
    a = simulate(model, 400.0, **kw)
    b = C.simulate_cooccur(model, 0.0, 400.0, **kw)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.l2sq, b.l2sq)
    assert a.stats.steps == b.stats.steps and a.stats.status == b.stats.status


def test_engine_at_q0_matches_the_plain_engine():
    """The q > 0 code path itself, run at q = 0, integrates flowsim's flow: 300 Euler and
    rk4 steps agree with forces.reference_step to 1e-12 (different summation order only)."""
    model = Model(n=8, m=20, lam=0.02, seed=1)
    for method in ("euler", "rk4"):
        W = model.initial_weights()
        e = C.CoEngine(W.copy(), model, method, 0.0)
        ref = W.copy()
        out = np.zeros(64)
        e.run(0.0, 0, 30.0, 0.1, 10_000, -1, -1.0, 1.0, out)
        for _ in range(300):
            ref = forces.reference_step(ref, model, 0.1, method)
        assert np.abs(e.W - ref).max() < 1e-12
        assert np.array_equal(e.W == 0, ref == 0)


# ---------------------------------------------------------------- kernels vs NumPy reference

@pytest.mark.parametrize("q", [0.0, 0.3, 1.0])
def test_kernels_equal_reference(q):
    model = Model(n=7, m=11, lam=0.05, c=4.0, seed=0)
    W = _W(7, 11, 2)
    e = C.CoEngine(W.copy(), model, "euler", q)
    F = np.empty_like(W)
    e.smooth(W, F)
    assert np.abs(F - C.reference_smooth(W, model, q)).max() < 1e-13
    for method in ("euler", "heun", "rk4"):
        e = C.CoEngine(W.copy(), model, method, q)
        assert e.step(W.copy(), 0.05)
        assert np.abs(e.V - C.reference_step(W, model, q, 0.05, method)).max() < 1e-13


def test_pair_sign_force_sorted_branch():
    """Columns with more than SORT_ABOVE partners take the sorted path: same numbers."""
    from flowsim import _cooccur_kernels as CK

    n = 3 * CK.SORT_ABOVE
    model = Model(n=n, m=5, lam=0.05, seed=0)
    W = _W(n, 5, 3, zeros=0.1)
    W[0, 0] = -W[1, 0]  # an exact kink: sign(0) = 0 on both paths
    F = np.zeros_like(W)
    CK.pair_sign_force(W, W, 1.0, F, np.empty(n))
    ref = C.reference_smooth(W, model.replace(lam=0.0), 0.5) - C.reference_smooth(W, model, 0.5)
    lam_pair = 2 * 0.5 * 0.05 / (n - 1)
    assert np.abs(F * lam_pair + ref).max() < 1e-13  # F = -Σ sign, ref = +λ_p Σ sign


def test_gradient_of_all_inputs_is_minus_the_force():
    """Σ_x w_x ∇ℓ(x) over every single and pair input (weighted_gradient, a separate code
    path: per-input derivative) is minus the engine's force, zeros included."""
    model = Model(n=6, m=9, lam=0.05, c=4.0, seed=0)
    W = _W(6, 9, 5)
    for q in (0.0, 0.4, 1.0):
        X, w = C.inputs_and_weights(6, q)
        g = C.weighted_gradient(W, X, w, model.c, model.lam)
        assert np.abs(g + _total_force(W, model, q)).max() < 1e-13


@pytest.mark.parametrize("c", [1.0, 4.0])
def test_force_is_minus_finite_difference_of_expected_loss(c):
    """Central differences (step 1e-6) of L = n E[ℓ] enumerated over all n + C(n,2) inputs,
    n = 5, at a W with no zero entry and every kink (ReLU arguments, W_ik + W_jk) at least
    1e-3 away, so the loss is smooth within the step. Truncation error ~ eps² |L'''| ~ 1e-12,
    rounding ~ 1e-16 |L| / eps ~ 1e-10: tolerance 1e-7 (measured max 3e-10)."""
    n, m, q = 5, 7, 0.35
    model = Model(n=n, m=m, lam=0.03, c=c, seed=0)
    W = _W(n, m, 11, zeros=0.0)
    X, _ = C.inputs_and_weights(n, q)
    A = (X @ W) @ W.T
    S = W[:, None, :] + W[None, :, :]
    off = ~np.eye(n, dtype=bool)
    assert np.abs(A).min() > 1e-3 and np.abs(S[off]).min() > 1e-3 and np.abs(W).min() > 1e-3
    F = _total_force(W, model, q)
    eps = 1e-6
    fd = np.empty_like(W)
    for i in range(n):
        for k in range(m):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, k] += eps
            Wm[i, k] -= eps
            fd[i, k] = (C.expected_loss(Wp, model, q) - C.expected_loss(Wm, model, q)) / (2 * eps)
    assert np.abs(F + fd).max() < 1e-7


def test_q0_expected_loss_is_flowsims_loss():
    model = Model(n=6, m=8, lam=0.05, c=4.0, seed=0)
    W = _W(6, 8, 1)
    assert C.expected_loss(W, model, 0.0) == pytest.approx(forces.loss(W, model), rel=1e-13)


def test_zeros_stay_exact_and_thresholds():
    """Entrywise L1 weights: a lone nonzero in a column gives its n-1 zero partners the
    weight λ(1-q) + λ_p (n-2) and itself λ(1-q) + λ_p (n-1) = λ(1+q)."""
    n, q, lam = 5, 0.5, 0.1
    model = Model(n=n, m=3, lam=lam, seed=0)
    W = np.zeros((n, 3))
    W[2, 1] = 0.7
    L = C.reference_thresholds(W, model, q)
    lp = 2 * q * lam / (n - 1)
    assert L[2, 1] == pytest.approx(lam * (1 + q))
    assert np.allclose(np.delete(L[:, 1], 2), lam * (1 - q) + lp * (n - 2))
    tr = C.simulate_cooccur(Model(n=8, m=24, lam=0.02, seed=2), 0.3, 300.0, dt=0.1, save_at=[])
    Wf = tr.W
    assert np.count_nonzero(Wf == 0.0) > Wf.size // 2   # exact zeros, not tiny values
    assert np.abs(Wf[Wf != 0]).min() > 1e-3


# ---------------------------------------------------------------- stochastic mode

def _sample_gradients(W, model, batches, batch, data, p, q, seed):
    rng = np.random.default_rng(seed)
    n = model.n
    scale = (n if data == "mixture" else 1.0 / p) / batch
    return np.stack([C.weighted_gradient(W, C.sample_batch(rng, batch, n, data, p, q), scale,
                                         model.c, model.lam) for _ in range(batches)])


@pytest.mark.parametrize("data, p, q", [("mixture", None, 0.4), ("bernoulli", 0.3, 0.0),
                                        ("bernoulli", 0.3, 0.6)])
def test_sgd_mean_gradient_matches_expected(data, p, q):
    """4000 minibatches of 16. Each entry's mean is compared with the exact expected
    gradient in units of its standard error (sample std / √4000): |z| < 4.5 for all
    n·m = 40 entries (false alarm probability < 40 · 7e-6). The expected gradient is minus
    the flow's force (mixture) or the enumeration over all 2^n inputs (bernoulli). The
    standard error is < 3 % of the gradient's scale, so a wrong distribution (e.g. q
    ignored) is detected: checked below against the other q."""
    n, m = 5, 8
    model = Model(n=n, m=m, lam=0.05, c=4.0, seed=0)
    W = _W(n, m, 7, zeros=0.0)
    G = _sample_gradients(W, model, 4000, 16, data, p, q, seed=1)
    mean, se = G.mean(0), G.std(0, ddof=1) / np.sqrt(len(G))
    if data == "mixture":
        expected = -_total_force(W, model, q)
        X, w = C.inputs_and_weights(n, 0.0)
        other = C.weighted_gradient(W, X, w, model.c, model.lam)
    else:
        X, prob = C.bernoulli_inputs(n, p, q)
        expected = C.weighted_gradient(W, X, prob / p, model.c, model.lam)
        X, prob = C.bernoulli_inputs(n, p, 1.0 - q)
        other = C.weighted_gradient(W, X, prob / p, model.c, model.lam)
    assert np.abs((mean - expected) / se).max() < 4.5
    assert se.max() < 0.03 * np.abs(expected).max()
    assert np.abs((mean - other) / se).max() > 6.0


def test_bernoulli_inputs_probabilities():
    X, prob = C.bernoulli_inputs(5, 0.3, 0.6)
    assert prob.sum() == pytest.approx(1.0)
    assert (prob[:, None] * X).sum(0) == pytest.approx(np.full(5, 0.3))     # marginals p
    both = prob[(X[:, 0] == 1) & (X[:, 1] == 1)].sum()
    assert both == pytest.approx(0.3 * (0.6 + 0.4 * 0.3))


def test_sgd_determinism_across_two_interpreters():
    code = ("import warnings; warnings.simplefilter('ignore');"
            "from flowsim.model import Model; from flowsim.cooccur import train_stochastic;"
            "r = train_stochastic(Model(n=8, m=16, lam=0.01, seed=3), 200, 0.1, 8, p=0.2, q=0.5, seed=3);"
            "print(r.W.tobytes().hex()[:4000], r.W.sum().hex())")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           check=True).stdout for _ in range(2)]
    assert outs[0] == outs[1] and len(outs[0]) > 100


# ---------------------------------------------------------------- bad input, command

@pytest.mark.parametrize("call, name", [
    (lambda: C.simulate_cooccur(Model(n=4, m=8), 1.5, 10.0), "q"),
    (lambda: C.simulate_cooccur(Model(n=4, m=8), -0.1, 10.0), "q"),
    (lambda: C.simulate_cooccur(Model(n=4, m=8), float("nan"), 10.0), "q"),
    (lambda: C.train_stochastic(Model(n=4, m=8), 10, 0.1, 4, p=1.2), "p"),
    (lambda: C.train_stochastic(Model(n=4, m=8), 10, 0.1, 4, p=-0.5), "p"),
    (lambda: C.train_stochastic(Model(n=4, m=8), 10, 0.1, 4, p=0.5, q=2.0), "q"),
    (lambda: C.simulate_cooccur(Model(n=4, m=8, interference=False), 0.5, 10.0), "model"),
])
def test_bad_input_one_line(call, name):
    with pytest.raises(FlowsimInputError, match=rf"invalid {name}=") as e:
        call()
    assert "\n" not in str(e.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flowsim.cooccur", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_tiny_runs_write_files(tmp_path):
    p = _cli("--n", "6", "--m", "12", "--q", "0", "0.5", "--seeds", "2", "--t-max", "300",
             "--executor", "serial", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "cooccur.json").read_text())
    assert [(r["q"], r["runs"]) for r in meta["table"]] == [(0.0, 2), (0.5, 2)]
    assert meta["environment"]["flowsim_version"]
    assert (tmp_path / "cooccur.png").stat().st_size > 0 and (tmp_path / "cooccur.csv").exists()
    p = _cli("--stochastic", "--n", "6", "--m", "12", "--p", "0.2", "--steps", "50", "--seeds", "2",
             "--executor", "serial", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "cooccur_sgd.json").read_text())
    assert meta["runs"] == 2 and meta["table"][0]["p"] == 0.2


@pytest.mark.parametrize("args, name", [(("--q", "1.5"), "--q"), (("--stochastic", "--p", "-0.1"), "--p"),
                                        (("--stochastic", "--q", "2"), "--q"), (("--p", "0.1"), "--p")])
def test_cli_bad_q_p_exit_2(tmp_path, args, name):
    p = _cli(*args, "--out", str(tmp_path))
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert f"invalid {name}=" in p.stderr and "Traceback" not in p.stderr
