"""flowsim: simulate the training dynamics behind incidental polysemanticity."""
from ._version import __version__
from .errors import DivergenceError, FlowsimInputError, FlowsimWarning
from .integrate import METHODS, Stop, force, simulate
from .model import Model
from .trajectory import RunStats, Trajectory, row_stats

__all__ = [
    "__version__",
    "DivergenceError",
    "FlowsimInputError",
    "FlowsimWarning",
    "METHODS",
    "Model",
    "RunStats",
    "Trajectory",
    "row_stats",
    "force",
    "simulate",
    "Stop",
]
