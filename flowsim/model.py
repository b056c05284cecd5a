"""Model parameters and initial weights.

The model is the tied-weight autoencoder ``y = ReLU(W Wᵀ x)`` trained on the n basis
vectors with an L1 penalty ``lam`` on the hidden activations. Its gradient flow, row by
row, is::

    dW_i/dt = c (1 - |W_i|²) W_i  -  c Σ_{j≠i} ReLU(W_i·W_j) W_j  -  lam sign(W_i)
              feature benefit       interference                    L1 sign force

``c = 1`` is the paper's convention; ``c = 4`` is the exact gradient flow of the loss
``Σ_i (1-|W_i|²)² + Σ_{i≠j} ReLU(W_i·W_j)² + lam |W|₁``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from .errors import FlowsimWarning, check_float, check_int, invalid


@dataclasses.dataclass(frozen=True)
class Model:
    """Frozen parameters of one simulation.

    Parameters
    ----------
    n : int
        Number of features (rows of W), >= 1.
    m : int
        Number of hidden neurons (columns of W), >= 1.
    lam : float
        L1 strength λ >= 0.
    feature_benefit, interference, l1 : bool
        Switch each force on or off.
    c : float
        Scale of the two smooth forces (> 0). 1 as in the paper, 4 for the exact
        gradient flow of the loss.
    init_std : float or None
        Standard deviation of the i.i.d. normal initial weights; ``None`` means 1/√m.
    seed : int
        Seed of the initial weights (>= 0).
    """

    n: int
    m: int
    lam: float = 0.0
    feature_benefit: bool = True
    interference: bool = True
    l1: bool = True
    c: float = 1.0
    init_std: float | None = None
    seed: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("n", check_int("n", self.n, 1))
        set_("m", check_int("m", self.m, 1))
        set_("lam", check_float("lam", self.lam, minimum=0.0))
        set_("c", check_float("c", self.c, positive=True))
        set_("init_std", check_float("init_std", self.init_std, positive=True, allow_none=True))
        set_("seed", check_int("seed", self.seed, 0))
        for name in ("feature_benefit", "interference", "l1"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise invalid(name, value, "must be True or False")
            set_(name, bool(value))
        if self.l1 and self.lam > 1.0 / math.sqrt(self.m):
            warnings.warn(
                f"lam={self.lam:g} > 1/sqrt(m)={1 / math.sqrt(self.m):g}: outside the paper's "
                "assumption lam <= 1/sqrt(m); the L1 force may kill every weight",
                FlowsimWarning,
                stacklevel=3,
            )
        if self.m < self.n:
            warnings.warn(
                f"m={self.m} < n={self.n}: fewer neurons than features, so polysemanticity "
                "is necessary here, not incidental",
                FlowsimWarning,
                stacklevel=3,
            )

    @property
    def std(self) -> float:
        """Effective initial standard deviation (``init_std`` or 1/√m)."""
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.m)

    @property
    def l1_strength(self) -> float:
        """λ if the L1 force is on, else 0."""
        return self.lam if self.l1 else 0.0

    def replace(self, **changes) -> "Model":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def initial_weights(self) -> np.ndarray:
        """I.i.d. normal initial weights from ``seed``.

        Returns
        -------
        W0 : ndarray, shape (n, m), float64
        """
        rng = np.random.default_rng(self.seed)
        W = rng.standard_normal((self.n, self.m))
        W *= self.std
        return W

    def check_weights(self, W0) -> np.ndarray:
        """Validate a user-supplied initial matrix and return it as a float64 copy.

        Parameters
        ----------
        W0 : array_like, shape (n, m)
        """
        try:
            W = np.array(W0, dtype=np.float64, order="C", copy=True)
        except (TypeError, ValueError):
            raise invalid("W0", type(W0).__name__, "must be a real array") from None
        if W.shape != (self.n, self.m):
            raise invalid("W0.shape", W.shape, f"must be (n, m) = ({self.n}, {self.m})")
        if not np.all(np.isfinite(W)):
            bad = int(np.count_nonzero(~np.isfinite(W)))
            raise invalid("W0", f"<{bad} non-finite entries>", "every entry must be finite")
        return W

    def as_dict(self) -> dict:
        """Parameters as a plain dict (for JSON), including the effective init std."""
        d = dataclasses.asdict(self)
        d["std"] = self.std
        return d
