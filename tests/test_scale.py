"""Scale tests kept out of the default run (``pytest -m slow``); CI runs the same code
paths at small sizes in test_sparsification.py and test_cli.py."""
import numpy as np
import pytest

import flowsim
from flowsim import Stop, simulate


@pytest.mark.slow
def test_ten_million_weights_explicit_matches_exact():
    """m = 10^7, λ = 10^-5: rk4 at dt = 0.5 (~30 s) reaches m′ = 1 at the exact time to
    within 0.1 % and stays within 1e-3 relative of the exact ‖W‖₁."""
    m = 10**7
    model = flowsim.Model(n=1, m=m, lam=1e-5, interference=False, init_std=0.9 / np.sqrt(m), seed=0)
    ex = simulate(model, 1e8, method="rk4", dt=0.5, stop=Stop(max_nnz=1), save_at=np.geomspace(1, 1e5, 30))
    red = simulate(model, ex.stats.t_end, method="reduced", save_at=ex.t)
    assert ex.stats.status == "sparse"
    assert red.nnz[-1, 0] == 1
    np.testing.assert_allclose(ex.l1, red.l1, rtol=1e-3)
