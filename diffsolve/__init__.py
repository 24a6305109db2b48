"""diffsolve: numerical ODE/SDE solvers for diffusion models.

Public names are re-exported here; see the README for the first lines to type.
"""
from .schedules import (SCHEDULES, CosineSchedule, DDPMSchedule, EDMSchedule, FlowSchedule, Schedule,
                        SubVPSchedule, VESchedule, VPSchedule, make_schedule)
from .denoiser import PREDICTIONS, Denoiser, NonFiniteError
from .processes import ForwardSDE, NoiseLevel, ReverseSDE
from .ode import ProbabilityFlowODE
from .noise import NoiseSource, parse_seeds
from .grids import make_grid
from . import analytic, solvers
from .loop import integrate
from .analytic import GaussianMixture
from .sample import SampleResult, sample

from ._version import __version__

# Names whose modules load on first use (keeps `import diffsolve` light).
_LAZY = {
    "log_likelihood": ("diffsolve.likelihood", "log_likelihood"),
    "LikelihoodResult": ("diffsolve.likelihood", "LikelihoodResult"),
    "dataset_log_likelihood": ("diffsolve.dataset_likelihood", "dataset_log_likelihood"),
    "zoo": ("diffsolve.zoo", None),
    "adapters": ("diffsolve.adapters", None),
    "CFGDenoiser": ("diffsolve.guidance", "CFGDenoiser"),
    "DiffsolveScheduler": ("diffsolve.scheduler", "DiffsolveScheduler"),  # needs the diffusers extra
    "tune_steps": ("diffsolve.tune", "tune_steps"),
    "tune_solver": ("diffsolve.tune", "tune_solver"),
    "TunedGrid": ("diffsolve.tuned", "TunedGrid"),
    "bench": ("diffsolve.bench", None),
}


_NEEDS = {"DiffsolveScheduler": "diffusers"}  # lazy names that need an optional package


def _missing(name) -> str | None:
    """The optional package ``name`` needs, if it is not installed."""
    import importlib.util

    package = _NEEDS.get(name)
    return package if package is not None and importlib.util.find_spec(package) is None else None


def __dir__():
    return sorted(set(globals()) | {n for n in _LAZY if _missing(n) is None})


def __getattr__(name):
    if name in _LAZY:
        import importlib

        if _missing(name):  # an AttributeError: hasattr, inspect.getmembers and help() then pass it by
            raise AttributeError(f"diffsolve.{name} needs {_missing(name)}: pip install 'diffsolve[{_missing(name)}]'")
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'diffsolve' has no attribute {name!r}")
