"""The sparse working-set engine computes the same steps as the dense engine."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsim
from flowsim import forces, simulate


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 12),
    m=st.integers(2, 48),
    seed=st.integers(0, 2**32 - 1),
    lam=st.sampled_from([1e-3, 0.01, 0.05]),
    zero_frac=st.sampled_from([0.0, 0.5, 0.9]),
    method=st.sampled_from(["euler", "heun", "rk4"]),
    c=st.sampled_from([1.0, 4.0]),
)
def test_sparse_engine_matches_dense_engine(n, m, seed, lam, zero_frac, method, c):
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((n, m)) / np.sqrt(m)
    W0[rng.random((n, m)) < zero_frac] = 0.0
    model = flowsim.Model(n=n, m=m, lam=lam, c=c)
    dt = 0.05 / c
    dense = simulate(model, 20.0, method=method, dt=dt, W0=W0, sparse_below=0.0)
    sparse = simulate(model, 20.0, method=method, dt=dt, W0=W0, sparse_below=1.0)
    # same steps up to summation order (BLAS vs sequential): agreement to 1e-9
    np.testing.assert_allclose(sparse.W, dense.W, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(sparse.nnz, dense.nnz)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_sparse_engine_single_step_matches_reference(method):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((6, 20)) * 0.4
    W[rng.random((6, 20)) < 0.6] = 0.0
    model = flowsim.Model(n=6, m=20, lam=0.02)
    got = simulate(model, 0.1, method=method, dt=0.1, W0=W, sparse_below=1.0).W
    np.testing.assert_allclose(got, forces.reference_step(W, model, 0.1, method), atol=1e-14)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_zero_weight_re_enters_in_both_engines(method):
    """Rows 0 and 1 overlap on column 0 (same sign, malign), and row 1 is zero at
    column 1 where row 0 is large: interference pushes W_11 beyond λ, so it must
    re-enter (with the sign opposite to W_01) — identically in both engines."""
    W0 = np.zeros((3, 6))
    W0[0, :2] = [0.5, 0.7]
    W0[1, 0] = 0.6
    W0[2, 3] = 0.9
    model = flowsim.Model(n=3, m=6, lam=0.01)
    dense = simulate(model, 5.0, method=method, dt=0.01, W0=W0, sparse_below=0.0, snapshots=True,
                     save_at=[0.01, 0.1, 1.0])
    sparse = simulate(model, 5.0, method=method, dt=0.01, W0=W0, sparse_below=1.0, snapshots=True,
                      save_at=[0.01, 0.1, 1.0])
    assert dense.snapshots[1][1, 1] < 0.0  # re-entered after one step, opposite sign to W_01
    np.testing.assert_allclose(sparse.snapshots, dense.snapshots, atol=1e-12)
    assert np.all(sparse.W[:, 4:] == 0.0)  # columns nobody uses stay exactly zero
