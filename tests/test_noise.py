"""The noisy-hidden-layer model: kernels vs NumPy reference, exact gradient, Figure 4's
ordering, the Section 3.2 formulas, determinism, bad input (flowsim.noise)."""
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import flowsim
from flowsim import _noise_kernels as K
from flowsim import noise as nz
from flowsim.errors import DivergenceError, FlowsimInputError, FlowsimWarning

OPTIONS = list(itertools.product(nz.DISTRIBUTIONS, nz.SHARING))


def _kernel_gradient(W, Xi, shared):
    n = W.shape[0]
    G, Z, Gam, grad = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros_like(W)
    loss = K.gradient(W, Xi, True, shared, G, Z, Gam, grad)
    return loss, grad, Z


def _noise(dist, sharing, n, m, sigma, seed):
    rng = np.random.default_rng(seed)
    rows = 1 if sharing == "shared" else n
    Xi = np.zeros((n, m))
    Xi[:rows] = nz.sample_noise(rng, dist, sigma, (rows, m))
    return Xi, np.broadcast_to(Xi[:1], (n, m)) if sharing == "shared" else Xi


@pytest.mark.parametrize("dist, sharing", OPTIONS)
def test_gradient_matches_finite_differences(dist, sharing):
    """Central differences (h = 1e-6) of the reference loss against the kernel gradient.

    Truncation error ~h² and rounding ~1e-16·L/h ≈ 1e-9; tolerance 1e-7. The noise is
    large (σ = 0.3) so that many output ReLUs are off; no pre-activation is within 1e-4
    of the kink (checked; a perturbation h moves them by at most ~h·2‖W‖ ≈ 1e-5), so the
    loss is smooth within h.
    """
    n, m = 5, 7
    W = np.random.default_rng(1).standard_normal((n, m)) / np.sqrt(m)
    Xk, Xi = _noise(dist, sharing, n, m, 0.3, 2)
    loss, grad, Z = _kernel_gradient(W, Xk, sharing == "shared")
    assert np.abs(Z).min() > 1e-4
    assert 0 < np.count_nonzero(Z <= 0) < n * n  # both sides of the ReLU are exercised
    ref_loss, ref_grad = nz.loss_and_gradient(W, Xi)
    assert loss == pytest.approx(float(ref_loss), rel=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-13)
    h = 1e-6
    fd = np.empty_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        fd[idx] = (nz.loss_and_gradient(W + E, Xi)[0] - nz.loss_and_gradient(W - E, Xi)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7)


def test_gradient_matches_torch_autograd():
    """PyTorch autograd of the same forward pass (float64) gives the same gradient."""
    torch = pytest.importorskip("torch")
    n, m = 6, 9
    W = np.random.default_rng(3).standard_normal((n, m)) / 3
    for dist, sharing in OPTIONS:
        Xk, Xi = _noise(dist, sharing, n, m, 0.2, 4)
        Wt = torch.tensor(W, requires_grad=True)
        H = Wt + torch.tensor(np.ascontiguousarray(Xi))  # row i: hidden layer on input e_i
        loss = ((torch.relu(H @ Wt.T) - torch.eye(n, dtype=torch.float64)) ** 2).sum()
        loss.backward()
        _, grad, _ = _kernel_gradient(W, Xk, sharing == "shared")
        np.testing.assert_allclose(grad, Wt.grad.numpy(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("dist, sharing", OPTIONS)
def test_training_kernel_matches_numpy_reference(dist, sharing):
    """Same noise stream value for value; weights agree to rounding after 40 steps."""
    lam = 0.3 if sharing == "independent" else 0.0  # ηλ beats the noise: zeros stay
    model = nz.NoiseModel(6, 10, sigma=0.15, distribution=dist, sharing=sharing, lam=lam, instances=2, seed=5)
    a = nz.train(model, 40, record_at=[7, 20], workers=2)
    b = nz.train_reference(model, 40, record_at=[7, 20])
    assert a.steps.tolist() == b.steps.tolist() == [0, 7, 20, 40]
    np.testing.assert_allclose(a.W, b.W, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.l4, b.l4, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.loss, b.loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.train_loss[:, 1:], b.train_loss[:, 1:], rtol=0, atol=1e-12)
    assert np.isnan(a.train_loss[:, 0]).all()
    if lam:
        assert np.count_nonzero(a.W == 0.0) == np.count_nonzero(b.W == 0.0) > 0  # exact zeros


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_zero_noise_is_the_euler_flow_of_simulate(lam):
    """σ = 0: k steps at rate η equal simulate(c = 4, euler, dt = η) up to t = kη.

    Not bit for bit: simulate forms c(1 - ‖W_i‖²)W_i - c P W with BLAS products and adds
    h·F, the noise kernel sums ∂L/∂W input by input (decoder and encoder paths) and
    subtracts η·∂L/∂W; the same real numbers rounded in a different order. Measured
    difference after 60 steps ≈ 1e-16; tolerance 1e-12.
    """
    eta, k = 0.02, 60
    model = flowsim.Model(n=8, m=16, c=4.0, lam=lam, l1=lam > 0, seed=7)
    W0 = model.initial_weights()
    traj = flowsim.simulate(model, k * eta, method="euler", dt=eta, W0=W0)
    run = nz.train(nz.NoiseModel(8, 16, sigma=0.0, eta=eta, lam=lam), k, W0=W0)
    np.testing.assert_allclose(run.W[0], traj.W, rtol=0, atol=1e-12)
    assert np.abs(run.W[0] - W0).max() > 1e-2  # the weights did move
    if lam:
        assert np.array_equal(run.W[0] == 0.0, traj.W == 0.0)


def test_paper_gradient_of_an_isolated_encoding():
    """Appendix C: with ‖W_i‖ = 1 and no other encoding, ∂L/∂W_i = 2(W_i·ξ)(2W_i + ξ)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 12))
    w /= np.linalg.norm(w)
    for dist in nz.DISTRIBUTIONS:
        xi = nz.sample_noise(rng, dist, 0.1, (1, 12))
        _, grad, Z = _kernel_gradient(w, xi, True)
        assert Z[0, 0] > 0
        a = float(w[0] @ xi[0])
        np.testing.assert_allclose(grad[0], 2 * a * (2 * w[0] + xi[0]), rtol=0, atol=1e-15)


def test_noise_moments_and_the_papers_fourth_moment():
    """Sampled std, excess kurtosis and E[(w·ξ)⁴] against σ, κ and the paper's formula.

    Tolerances: 5 standard errors of each Monte Carlo mean (400 000 draws).
    """
    rng = np.random.default_rng(11)
    w = rng.standard_normal(8)
    sigma, N = 0.3, 400_000
    for dist in nz.DISTRIBUTIONS:
        x = nz.sample_noise(rng, dist, sigma, (N, 8))
        mu = nz.noise_moments(dist, sigma, 8)
        for p in (2, 4):
            samples = (x**p).ravel()
            assert abs(samples.mean() - mu[p]) <= 5 * samples.std() / np.sqrt(samples.size) + 1e-15
        assert mu[2] == pytest.approx(sigma**2) and mu[4] / mu[2] ** 2 - 3 == pytest.approx(nz.EXCESS_KURTOSIS[dist])
        a4 = (x @ w) ** 4
        assert abs(a4.mean() - nz.fourth_moment(w, sigma, dist)) < 5 * a4.std() / np.sqrt(N)


def test_one_step_exact_equals_enumeration_and_expansion_is_second_order():
    """Exact one-step E[Δ‖w‖₄⁴] equals the average over all 2^10 bipolar sign patterns;
    the O(η²) expansion's error shrinks like η³ (fitted slope 3 ± 0.15) for every noise."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(10) * 0.35
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=10)))
    sigma, eta = 0.1, 0.03
    _, g = nz.loss_and_gradient(w[None], sigma * signs[:, None, :])
    V = w - eta * g[:, 0]
    assert (w @ w + sigma * np.abs(w).sum()) > 0  # output ReLU always on
    assert nz.one_step_exact(w, sigma, eta, "bipolar") == pytest.approx((V**4).sum(-1).mean() - (w**4).sum(), rel=1e-12)
    u = w / np.linalg.norm(w)
    etas = np.array([0.02, 0.01, 0.005, 0.0025])
    for dist in nz.DISTRIBUTIONS:
        err = [abs(nz.one_step_exact(u, 0.15, e, dist) - nz.one_step_expansion(u, 0.15, e, dist)) for e in etas]
        slope = np.polyfit(np.log(etas), np.log(err), 1)[0]
        assert abs(slope - 3.0) < 0.15, (dist, slope)
    # one step from a point: the distribution-dependent part has the sign of κ
    ex = {d: nz.one_step_exact(u, 0.15, 0.02, d) for d in nz.DISTRIBUTIONS}
    assert ex["bipolar"] < ex["uniform"] < ex["normal"] < ex["laplace"]


def test_drift_check_one_step_monte_carlo_matches_exact():
    """The antithetic common-random-number estimate of window 1 is unbiased: within 4
    standard errors of the exact value for an isolated encoding (40 000 pairs)."""
    w = np.random.default_rng(0).standard_normal((1, 16))
    w /= np.linalg.norm(w)
    c = nz.drift_check(w, 0.15, 0.02, windows=(1, 30), pairs=40_000, draws=8, seed=3, workers=1)
    assert c.windows.tolist() == [1, 30] and c.change.shape == (4, 2)
    assert np.all(np.abs(c.change[:, 0] - c.exact) < 4 * c.se[:, 0])
    assert np.all(c.excess[c.distributions.index("normal")] == 0)
    assert np.all(np.isfinite(c.change[:, 1])) and np.all(c.se[:, 1] > 0)
    assert np.sign(c.regulariser_drift).tolist() == [1.0, 0.0, 1.0, -1.0]  # up for κ < 0
    meta = c.metadata()
    assert meta["flowsim_version"] == flowsim.__version__ and meta["sigma"] == 0.15 and meta["seed"] == 3


def test_figure4_ordering_bipolar_above_normal_above_laplace():
    """Figure 4 setting (n = 8, m = 16, η = 0.02, σ = 0.1, shared noise), 20 000 steps,
    5 instances, seed 0: the mean over instances of mean ‖W_i‖₄⁴ is

    * bipolar above normal by more than 0.15, and
    * Laplace below normal by more than 0.02.

    Margins: over 100 instances (spawn keys 0…99) split into 20 groups of 5, the
    smallest group differences measured were 0.28 (bipolar − normal) and 0.040
    (normal − Laplace), group means 0.34 and 0.053; the thresholds are about half the
    worst group. Instance k starts from the same weights under every noise.
    """
    means = {}
    for dist in ("bipolar", "normal", "laplace"):
        run = nz.train(nz.NoiseModel(8, 16, sigma=0.1, distribution=dist, eta=0.02, instances=5, seed=0),
                       20_000, record_at=[])
        means[dist] = run.mean_l4()[:, -1].mean()
    assert means["bipolar"] > means["normal"] + 0.15
    assert means["laplace"] < means["normal"] - 0.02


def test_instances_snapshots_and_workers_are_consistent():
    model = nz.NoiseModel(4, 6, sigma=0.2, distribution="laplace", sharing="independent", instances=3, seed=9)
    run = nz.train(model, 300, record_at=[50], snapshot_at=[100, 200], workers=2)
    assert run.steps.tolist() == [0, 50, 100, 200, 300] and run.snapshot_steps.tolist() == [100, 200]
    assert run.snapshots.shape == (3, 2, 4, 6)
    short = nz.train(model, 200, workers=1)  # stops where the snapshot was taken
    np.testing.assert_array_equal(short.W, run.snapshots[:, 1])
    one = nz.train(model.replace(instances=1), 300, workers=1)  # instance 0 does not depend on the others
    np.testing.assert_array_equal(one.W[0], run.W[0])
    np.testing.assert_array_equal(run.W0, model.initial_weights())
    l4, l2, loss = nz.encoding_norms(run.snapshots[:, 1])
    np.testing.assert_allclose(run.l4[:, 3], l4, rtol=1e-14)
    np.testing.assert_allclose(run.l2[:, 3], l2, rtol=1e-14)
    np.testing.assert_allclose(run.loss[:, 3], loss, rtol=1e-13)
    meta = run.metadata()
    assert meta["model"]["distribution"] == "laplace" and meta["model"]["sharing"] == "independent"
    assert meta["model"]["seed"] == 9 and meta["eta"] == 0.02 and meta["steps_requested"] == 300
    assert meta["flowsim_version"] == flowsim.__version__ and meta["stats"]["compile_seconds"] >= 0


_DIGEST = """
import hashlib, numpy as np
from flowsim import noise as nz
run = nz.train(nz.NoiseModel(8, 16, sigma=0.1, distribution="{dist}", sharing="{sharing}", instances=3, seed=4),
               3000, workers={workers})
print(hashlib.sha256(run.W.tobytes() + run.l4.tobytes() + run.train_loss.tobytes()).hexdigest())
"""


def test_same_bytes_in_two_fresh_interpreters():
    """Same seed and parameters: identical bytes in separate processes (1 and 2 threads)."""
    out = []
    for workers in (1, 2):
        code = _DIGEST.format(dist="normal", sharing="independent", workers=workers)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.strip())
    assert len(out[0]) == 64 and out[0] == out[1]
    run = nz.train(nz.NoiseModel(8, 16, sigma=0.1, distribution="normal", sharing="independent", instances=3,
                                 seed=4), 3000, workers=2)
    here = hashlib.sha256(run.W.tobytes() + run.l4.tobytes() + run.train_loss.tobytes()).hexdigest()
    assert here == out[0]


def test_divergence_stops_with_step_and_keeps_last_finite_state():
    model = nz.NoiseModel(8, 16, sigma=1.0, distribution="bipolar", instances=2)
    with pytest.raises(DivergenceError, match=r"non-finite at step \d+ .*eta=0.02.*Try a smaller step") as err:
        nz.train(model, 1000)
    part = err.value.trajectory
    assert part.stats.status == "diverged" and np.all(np.isfinite(part.W))
    assert 0 < err.value.step < 1000 and part.steps[-1] <= err.value.step


def test_ctrl_c_keeps_the_records_reached():
    model = nz.NoiseModel(8, 16, sigma=0.1, instances=2)
    nz.train(model, 10, record_at=[0, 10], workers=2)  # compile first: the signal must land in the steps
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.warns(FlowsimWarning, match="interrupted"):
            run = nz.train(model, 50_000_000, record_at=np.arange(0, 50_000_001, 10_000), workers=2)
    finally:
        timer.cancel()
    assert run.stats.status == "interrupted"
    assert 0 < run.steps[-1] < 50_000_000 and np.all(np.isfinite(run.l4))
    assert min(run.options["steps_done"]) >= run.steps[-1]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sigma=-0.1), "sigma=-0.1"),
        (dict(sigma=float("nan")), "sigma=nan"),
        (dict(eta=0.0), "eta=0.0"),
        (dict(eta=-1), "eta=-1"),
        (dict(distribution="cauchy"), "distribution='cauchy'"),
        (dict(sharing="some"), "sharing='some'"),
        (dict(lam=-1e-3), "lam=-0.001"),
        (dict(instances=0), "instances=0"),
        (dict(n=0), "n=0"),
        (dict(seed=-1), "seed=-1"),
        (dict(init_std=0.0), "init_std=0.0"),
    ],
)
def test_bad_model_parameters(kwargs, name):
    with pytest.raises(FlowsimInputError, match=name.replace("(", r"\(")):
        nz.NoiseModel(**kwargs)


def test_bad_training_arguments():
    model = nz.NoiseModel(3, 4, sigma=0.1)
    for call, name in [(lambda: nz.train(model, 0), "steps=0"),
                       (lambda: nz.train(model, 10, record_at=[3.5]), "record_at"),
                       (lambda: nz.train(model, 10, snapshot_at=[11]), "snapshot_at"),
                       (lambda: nz.train(model, 10, W0=np.zeros((4, 3))), "W0.shape"),
                       (lambda: nz.train(model, 10, W0=np.full((3, 4), np.nan)), "W0"),
                       (lambda: nz.train(model, 10, workers=0), "workers=0"),
                       (lambda: nz.drift_check(np.eye(2), 0.1, distributions=("bipolar",)), "distributions")]:
        with pytest.raises(FlowsimInputError, match=name):
            call()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flowsim.noise", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.parametrize(
    "args, name",
    [
        (["--sigma", "-0.1"], "sigma=-0.1"),
        (["--sigmas", "0.1", "-2"], "sigma=-2.0"),
        (["--eta", "0"], "eta=0.0"),
        (["--steps", "0"], "steps=0"),
        (["--distribution", "cauchy"], "distribution='cauchy'"),
        (["--instances", "0"], "instances=0"),
        (["--kurtosis-sigmas", "0"], "--kurtosis-sigmas"),
        (["--figure", "6"], "invalid choice"),
        (["--steps", "ten"], "invalid int value"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(args, name, tmp_path):
    r = _cli(*args, "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


def test_cli_figure4_and_7_write_consistent_files(tmp_path):
    r = _cli("--figure", "4", "--steps", "400", "--instances", "2", "--sigmas", "0.1", "--no-plot", "--quiet",
             "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    meta = json.loads((tmp_path / "figure4_noise.json").read_text())
    assert {"figure4_noise.csv", "figure4_noise.json"} == {p.name for p in tmp_path.iterdir()}
    assert [run["model"]["distribution"] for run in meta["runs"]] == ["bipolar", "normal"]
    for run in meta["runs"]:
        assert run["model"]["sigma"] == 0.1 and run["model"]["seed"] == 0 and run["model"]["sharing"] == "shared"
        assert run["eta"] == 0.02 and run["steps_requested"] == 400 and run["flowsim_version"] == flowsim.__version__
    lines = (tmp_path / "figure4_noise.csv").read_text().splitlines()
    header = lines[0].split(",")
    last = [dict(zip(header, ln.split(","))) for ln in lines[1:] if ln.split(",")[header.index("step")] == "400"]
    assert len(last) == 4
    bip = np.mean([float(x["mean_l4"]) for x in last if x["distribution"] == "bipolar"])
    assert bip == pytest.approx(meta["summary"][0]["final_mean_l4"], rel=1e-12)
    r = _cli("--figure", "7", "--steps", "300", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figure7_noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta7 = json.loads((tmp_path / "figure7_noise.json").read_text())
    assert meta7["caption_sigma_check"]["sigma"] == 0.01 and len(meta7["final_W"]) == 8
    assert "figure 7" in r.stderr and "wrote" in r.stdout
