"""Errors and warnings raised by flowsim, and the one-line parameter check."""
from __future__ import annotations

import math
import numbers


class FlowsimInputError(ValueError):
    """A parameter has a value that is not allowed.

    The message is one line naming the parameter, its value and what is allowed;
    command-line tools print it and exit with status 2.
    """


class DivergenceError(FloatingPointError):
    """The weights became non-finite.

    Attributes
    ----------
    t : float
        Time of the last finite state.
    step : int
        Number of steps taken when the non-finite value appeared.
    trajectory : Trajectory or None
        Everything saved before the divergence (never silently lost).
    """

    def __init__(self, message, *, t, step, trajectory=None):
        super().__init__(message)
        self.t = t
        self.step = step
        self.trajectory = trajectory


class FlowsimWarning(UserWarning):
    """Parameters outside the paper's assumptions (the run still goes ahead)."""


def invalid(name, value, allowed):
    """Return the standard one-line error for parameter ``name``."""
    return FlowsimInputError(f"invalid {name}={value!r}: {allowed}")


def check_int(name, value, minimum):
    """Return ``value`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise invalid(name, value, f"must be an integer >= {minimum}")
    return int(value)


def check_float(name, value, *, minimum=None, positive=False, allow_none=False):
    """Return ``value`` as a finite float, or raise naming ``name``.

    Parameters
    ----------
    minimum : float, optional
        Smallest allowed value (inclusive).
    positive : bool
        Require ``value > 0``.
    allow_none : bool
        Let ``None`` through unchanged.
    """
    if value is None and allow_none:
        return None
    if positive:
        allowed = "must be a finite number > 0"
    elif minimum is not None:
        allowed = f"must be a finite number >= {minimum:g}"
    else:
        allowed = "must be a finite number"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, allowed) from None
    if isinstance(value, bool) or not math.isfinite(x):
        raise invalid(name, value, allowed)
    if positive and not x > 0:
        raise invalid(name, value, allowed)
    if minimum is not None and x < minimum:
        raise invalid(name, value, allowed)
    return x
