"""diffsolve: numerical ODE/SDE solvers for diffusion models.

Public names are re-exported here; see the README for the first lines to type.
"""
from .schedules import (SCHEDULES, CosineSchedule, DDPMSchedule, EDMSchedule, FlowSchedule, Schedule,
                        SubVPSchedule, VESchedule, VPSchedule, make_schedule)
from .denoiser import PREDICTIONS, Denoiser, NonFiniteError
from .processes import ForwardSDE, NoiseLevel, ProbabilityFlowODE, ReverseSDE
from .noise import NoiseSource, parse_seeds
from .grids import make_grid
from . import analytic, solvers
from .analytic import GaussianMixture
from .sample import SampleResult, sample

__version__ = "0.1.0"
