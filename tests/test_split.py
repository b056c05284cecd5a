"""Tests of flowsim.split: the duplication is exact, the outcome is the one the flow
predicts (hand-built neurons), the resolve time follows ln(1/ε)/σ, the loss returns,
errors are one line, and the command as a user runs it."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from flowsim import FlowsimInputError, Model, Stop, forces, metrics, simulate
from flowsim.split import (duplicate_neurons, perturb, predicted_winners, split_run,
                           symmetric_rate)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "flowsim.split", *args], capture_output=True,
                          text=True, timeout=300)


def trained(n, m, lam, seed, W0=None):
    model = Model(n=n, m=m, lam=lam, seed=seed)
    tr = simulate(model, 100 / lam, method="euler", dt=0.1, W0=W0, stop=Stop(tol=1e-9, window=50.0), save_at=[])
    assert tr.stats.status == "converged"
    return model, tr.W


# ---------------------------------------------------------------- the duplication

def test_duplication_keeps_outputs_and_reconstruction_loss_and_raises_l1_as_stated():
    """W Wᵀ and the reconstruction loss are unchanged to 1e-12 (measured 2e-16); the L1
    term rises by exactly (√2 − 1) λ Σ|W_ik| over the duplicated columns (the issue's
    "the loss is unchanged" holds for the reconstruction part only)."""
    model = Model(n=9, m=14, lam=0.03, seed=2, init_std=0.4)
    W = model.initial_weights()
    neurons = np.array([3, 0, 11])
    W2 = duplicate_neurons(W, neurons)
    big = model.replace(m=17)
    assert W2.shape == (9, 17)
    assert np.abs(W2 @ W2.T - W @ W.T).max() < 1e-12
    recon = lambda A, mod: forces.loss(A, mod.replace(l1=False))  # noqa: E731
    assert abs(recon(W2, big) - recon(W, model)) < 1e-12
    jump = (math.sqrt(2) - 1) * model.lam * np.abs(W[:, neurons]).sum()
    assert abs(forces.loss(W2, big) - forces.loss(W, model) - jump) < 1e-12
    np.testing.assert_array_equal(W2[:, 14:], W2[:, neurons])


def test_perturbation_touches_only_the_copies_and_their_support():
    W = np.zeros((4, 3))
    W[0, 1], W[2, 1], W[3, 2] = 1.0, -0.9, 0.8
    W2 = duplicate_neurons(W, [1])
    Z = np.arange(8, dtype=float).reshape(4, 1, 2) + 1.0
    W3 = perturb(W2, [1], 0.01, noise=Z)
    diff = W3 - W2
    assert set(zip(*np.nonzero(diff))) == {(0, 1), (0, 3), (2, 1), (2, 3)}
    assert diff[0, 1] == pytest.approx(0.01) and diff[2, 3] == pytest.approx(0.06)
    every = perturb(W2, [1], 0.01, noise=Z, on="all")
    assert np.count_nonzero(every - W2) == 8
    tgt = perturb(W2, [1], 0.01, mode="targeted")
    assert abs(tgt[0, 1]) > abs(tgt[0, 3]) and abs(tgt[2, 3]) > abs(tgt[2, 1])


# ---------------------------------------------------------------- the outcome

def _hand_built(lam=0.02):
    """Two features on one neuron with opposite signs (benign), plus one monosemantic
    feature, trained to equilibrium."""
    W0 = np.zeros((3, 4))
    W0[0, 0], W0[1, 0], W0[2, 2] = 0.9, -0.8, 0.7
    return trained(3, 4, lam, 0, W0=W0)


@pytest.mark.parametrize("noise,splits", [
    (np.array([[1.0, -1.0], [1.0, -1.0], [0, 0]]), True),     # feature 0 bigger on the original, 1 on the copy
    (np.array([[1.0, -1.0], [-1.0, 1.0], [0, 0]]), False)])   # both bigger on the original
def test_hand_built_polysemantic_neuron_splits_as_its_perturbation_decides(noise, splits):
    """Neuron 0 carries features 0 (+) and 1 (−). After duplication each feature keeps the
    copy on which its magnitude is larger: split when they differ, not when they agree.
    Either way every feature is kept and the loss returns to its value before (to 1e-12)."""
    model, W = _hand_built()
    assert metrics.polysemantic_neurons(W).tolist() == [0]
    r = split_run(model, W, 1e-3, noise=noise.reshape(3, 1, 2), t_max=5000.0)
    (o,) = r.outcomes
    assert r.status == "converged" and o["agree"] and o["split"] is splits
    assert o["winners"] == ([0, 1] if splits else [0, 0])
    assert r.polysemantic_after == (0 if splits else 1)
    assert abs(r.loss_after - r.loss_before) < 1e-12 and abs(r.recon_duplicated - r.recon_before) < 1e-12
    assert metrics.dead_features(r.W).size == 0


def test_resolve_time_follows_ln_one_over_eps_over_sigma():
    """A feature on two copies leaves the symmetric saddle at rate σ = λ/u, c(1 − 2u²)u = λ,
    so the resolve time grows by ln(10⁴)/σ from ε = 1e-2 to 1e-6. Measured with the targeted
    perturbation at λ = 0.02 (1/σ = 34.84), euler dt = 0.01, checked every 0.1: slope within
    2 % of 1/σ (measured 34.85, 0.01 %); the margin covers the check grid and dt."""
    model, W = _hand_built(0.02)
    t = [split_run(model, W, eps, mode="targeted", dt=0.01, t_max=3000.0, check_every=0.1).outcomes[0]["t_resolve"]
         for eps in (1e-2, 1e-6)]
    slope = (t[1] - t[0]) / math.log(1e4)
    assert slope == pytest.approx(1 / symmetric_rate(0.02), rel=0.02)


def test_random_noise_winners_are_the_predicted_ones():
    """On a trained model (n = 32, m = 48: 4 polysemantic neurons; with this draw none
    splits) every feature ends on the copy where the perturbation made it larger (all
    winners agree with the prediction), and the loss after re-convergence equals the loss
    before to 1e-9 (measured 1e-16)."""
    model, W = trained(32, 48, 0.02, 1)
    p = metrics.count_polysemantic(W)
    assert p >= 4
    Z = np.random.default_rng(0).standard_normal((32, p, 2))
    r = split_run(model, W, 1e-4, noise=Z)
    assert r.status == "converged" and all(o["agree"] for o in r.outcomes)
    assert [o["split"] for o in r.outcomes] == [o["predicted_split"] for o in r.outcomes]
    assert abs(r.loss_after - r.loss_before) < 1e-9
    assert r.polysemantic_after == p - sum(o["split"] for o in r.outcomes)


def test_symmetric_rate():
    for lam in (1e-3, 0.01, 0.1):
        s = symmetric_rate(lam, c=1.0)
        u = lam / s
        assert (1 - 2 * u * u) * u == pytest.approx(lam, rel=1e-12)
    assert symmetric_rate(1e-4) == pytest.approx(math.sqrt(2) * 1e-4, rel=1e-3)
    assert math.isnan(symmetric_rate(1.0))


def test_predicted_winners_tie_is_minus_one():
    W3 = np.array([[0.5, 0.5], [0.6, 0.4]])
    assert [w.tolist() for w in predicted_winners(W3, np.array([0]), [np.array([0, 1])])] == [[-1, 0]]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call,name", [
    (lambda W: duplicate_neurons(W, [5]), "neurons"), (lambda W: duplicate_neurons(W, [1, 1]), "neurons"),
    (lambda W: perturb(duplicate_neurons(W, [1]), [1], -1.0, noise=np.zeros((3, 1, 2))), "eps"),
    (lambda W: perturb(duplicate_neurons(W, [1]), [1], 0.1), "noise"),
    (lambda W: perturb(duplicate_neurons(W, [1]), [1], 0.1, mode="swap"), "mode"),
    (lambda W: perturb(duplicate_neurons(W, [1]), [1], 0.1, on="half", noise=np.zeros((3, 1, 2))), "on"),
    (lambda W: duplicate_neurons(W[0], [0]), "W.shape")])
def test_bad_parameters_are_one_line_errors(call, name):
    W = np.ones((3, 4))
    with pytest.raises(FlowsimInputError, match=f"invalid {name}=") as err:
        call(W)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args,name", [
    (["--eps", "0"], "--eps"), (["--lam", "-0.1"], "--lam"), (["--seeds", "0"], "--seeds"),
    (["--method", "RK45"], "--method"), (["--modes", "swap"], "--modes"), (["--dt", "inf"], "--dt"),
    (["--n", "0"], "--n")])
def test_cli_bad_arguments_exit_2_with_one_line(args, name, tmp_path, capsys):
    from flowsim import _cli
    from flowsim.split import PROG, main

    with pytest.raises(SystemExit) as exit_:
        _cli.run_main(PROG, main, [*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the command

def test_cli_small_run_writes_consistent_files(tmp_path):
    r = run_cli("--n", "16", "--m", "32", "--lam", "0.04", "--eps", "1e-4", "1e-2", "--seeds", "2",
                "--executor", "serial", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert {"split.png", "split.csv", "split.json", "split_runs"} <= {p.name for p in tmp_path.iterdir()}
    meta = json.loads((tmp_path / "split.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert meta["runs"] == meta["finished"] == 2 and meta["flowsim_version"] and meta["environment"]
    assert meta["parameters"]["method"] == "euler" and meta["parameters"]["dt"] == 0.1 and meta["seeds"] == [0, 1]
    table = {(t["mode"], t["eps"]): t for t in meta["table"]}
    assert set(table) == {("random", 1e-4), ("random", 1e-2), ("targeted", 1e-4), ("targeted", 1e-2)}
    for t in table.values():
        assert t["agree_fraction"] == 1.0 and t["max_abs_loss_change"] < 1e-9
    assert table["targeted", 1e-4]["fraction_two_feature"] == 1.0
    assert table["targeted", 1e-4]["t_resolve_median"] > table["targeted", 1e-2]["t_resolve_median"]
    rows = (tmp_path / "split.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4
    assert "lam=0.04 targeted: resolve time vs ln(1/eps) slope" in r.stdout


def test_same_numbers_in_two_fresh_interpreters():
    code = ("import hashlib, json; from flowsim.split import run_one; "
            "r = run_one(dict(n=16, m=32, lam=0.04, c=1.0, seed=3, method='euler', dt=0.1, t_max=2500.0, "
            "tol=1e-6, window=50.0, threshold=0.5, eps=[1e-3], modes=['random'], on='support', check_every=1.0)); "
            "res = [{k: v for k, v in x.items() if k != 'run_seconds'} for x in r['results']]; "
            "print(hashlib.sha256(json.dumps(res, sort_keys=True).encode()).hexdigest(), r['base']['w_sha256'])")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
           for _ in range(2)]
    assert out[0].returncode == 0, out[0].stderr
    assert out[0].stdout == out[1].stdout and len(out[0].stdout.split()) == 2
