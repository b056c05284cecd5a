"""flowsim: simulate the training dynamics behind incidental polysemanticity.

Public API (everything else is internal)::

    Model, simulate, Stop, Trajectory, RunStats, METHODS   the engine
    force, row_stats                                       kernels' Python faces
    save_trajectory, load_trajectory                       results on disk and back
    train, Optimizer, Training                             discrete optimizers: SGD, momentum, Adam, AdamW
    flowsim.forces      NumPy reference of every force and stepper
    flowsim.theory      the paper's predictions
    flowsim.metrics     polysemanticity metrics
    flowsim.sweep       sweeps on any concurrent.futures executor (local, Dask)
    flowsim.io          atomic saving of results with their metadata
    flowsim.noise       the noisy-hidden-layer model (Section 3): NoiseModel, train, drift_check
    flowsim.untied      untied encoder and decoder: UntiedModel, simulate_untied
    flowsim.split       the neuron-splitting intervention of Section 4
    flowsim.lineage     which initial weight wins: winner_lineage
    flowsim.cooccur     co-occurring features: simulate_cooccur (expected-loss flow), SGD mode
    flowsim.plotting    the paper's figures as functions returning Figures
"""
from ._version import __version__
from .errors import DivergenceError, FlowsimInputError, FlowsimWarning
from .integrate import METHODS, Stop, force, simulate
from .io import load_trajectory, save_trajectory
from .model import Model
from .optim import Optimizer, Training, train
from .trajectory import RunStats, Trajectory, row_stats

__all__ = [
    "__version__",
    "DivergenceError",
    "FlowsimInputError",
    "FlowsimWarning",
    "METHODS",
    "Model",
    "Optimizer",
    "RunStats",
    "Stop",
    "Trajectory",
    "Training",
    "force",
    "load_trajectory",
    "row_stats",
    "save_trajectory",
    "simulate",
    "train",
]
