r"""Benchmark problems: analytic mixtures with exact ground truth (docs/math.md §6) and trained models.

Built-in analytic problems (every quantity the metrics need is known exactly):

- ``ring2d``    8 isotropic Gaussians on a circle in 2-D (``GaussianMixture.ring()``);
- ``mix64``     8 Gaussians with random full covariances in 64-D (``GaussianMixture.random(d=64)``);
- ``gauss3072`` one Gaussian with an image-like power spectrum, shape (3, 32, 32)
  (``GaussianMixture.image_gaussian()``): the exact ODE solution is also in closed form.

Each runs under a default schedule (DDPM linear, the most common discrete schedule) that
``schedule=`` changes to any name in :data:`diffsolve.SCHEDULES`; the exact denoiser is rebuilt
for that schedule, so the data distribution p_0 is the same under every schedule.

Trained models come from :mod:`diffsolve.zoo` (``digits``, ``two_moons``) or from a user factory
``package.module:factory`` (:func:`diffsolve.adapters.load_factory`); they have no ground truth,
so they are measured against held-out data (when known) and against a high-accuracy reference solve.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..analytic import GaussianMixture
from ..denoiser import Denoiser
from ..schedules import SCHEDULES, Schedule, make_schedule

__all__ = ["Problem", "BUILTIN_PROBLEMS", "get_problem", "get_model", "list_problems", "DEFAULT_SCHEDULE"]

DEFAULT_SCHEDULE = "ddpm"
# the seeds of an analytic problem's exact batches: the one samples are compared with, and a second
# one in the sampler's place (the metric's floor)
EXACT_SEED_TARGET, EXACT_SEED_FLOOR = 1_000_033, 1_000_003
_F64 = torch.float64


@dataclass
class Problem:
    """One benchmark problem.

    Attributes:
        name: problem name as used on the command line and in result rows.
        description: one line.
        shape: shape of one sample.
        n_samples: default number of samples (seeds ``0..n-1``) of the default run.
        schedule_name: the schedule the denoiser runs under.
        mixture: the exact data distribution (``None`` for trained models).
        make_denoiser: ``() -> Denoiser`` (a fresh one, so NFE counters never mix).
        heldout: ``() -> Tensor`` held-out data in the space of ``to_pixels`` (models), or None.
        train: ``() -> Tensor`` training data in that space: an exact batch for the metric floor.
        to_pixels: map from sample space to the space Fréchet distances are taken in (models).
        reference_tol: rtol = atol of the reference ODE solve.
        data: ``() -> Tensor`` held-out data in sample space, shape (N, *shape): the default
            reference of the feature metrics (``--metric fid,...``) for a model (an analytic
            problem uses exact samples).
        quantize: sample space → sample space on the data's discrete levels (the digits' 17
            grey levels), applied to samples before their features; None for continuous data.
    """

    name: str
    description: str
    shape: tuple
    n_samples: int
    schedule_name: str
    make_denoiser: Callable[[], Denoiser]
    mixture: GaussianMixture | None = None
    heldout: Callable[[], Tensor] | None = None
    train: Callable[[], Tensor] | None = None
    to_pixels: Callable[[Tensor], Tensor] | None = None
    reference_tol: float = 1e-8
    kind: str = "analytic"
    data: Callable[[], Tensor] | None = None
    quantize: Callable[[Tensor], Tensor] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def exact(self) -> bool:
        return self.mixture is not None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def denoiser(self) -> Denoiser:
        return self.make_denoiser()

    @property
    def schedule(self) -> Schedule:
        if "schedule" not in self._cache:
            self._cache["schedule"] = self.make_denoiser().schedule
        return self._cache["schedule"]

    def exact_samples(self, n: int, seed: int) -> Tensor:
        """n exact samples of p_0 (float64, shape (n, *shape)) from a fixed seed."""
        if self.mixture is None:
            raise ValueError(f"problem {self.name!r} is a trained model: it has no exact samples")
        g = torch.Generator().manual_seed(int(seed))
        return self.mixture.sample(n, generator=g)


# --- analytic problems ------------------------------------------------------------------------
_MIXTURES: dict[str, tuple[Callable[[], GaussianMixture], int, str]] = {
    # name: (mixture factory, default n_samples, description)
    "ring2d": (lambda: GaussianMixture.ring(), 1000, "8 Gaussians on a circle, 2-D"),
    "mix64": (lambda: GaussianMixture.random(d=64, n_modes=8, seed=0), 256,
              "8 Gaussians with random full covariances, 64-D"),
    "gauss3072": (lambda: GaussianMixture.image_gaussian((3, 32, 32)), 128,
                  "one Gaussian with an image-like spectrum, 3x32x32"),
}
BUILTIN_PROBLEMS = tuple(_MIXTURES)
_mixture_cache: dict[str, GaussianMixture] = {}


def _mixture(name: str) -> GaussianMixture:
    if name not in _mixture_cache:
        _mixture_cache[name] = _MIXTURES[name][0]()
    return _mixture_cache[name]


def _analytic(name: str, schedule: str | None) -> Problem:
    sch_name = schedule or DEFAULT_SCHEDULE
    if sch_name not in SCHEDULES:
        raise ValueError(f"unknown schedule {sch_name!r}; valid schedules: {', '.join(SCHEDULES)}")
    mix = _mixture(name)
    _, n, desc = _MIXTURES[name]
    sch = make_schedule(sch_name)
    return Problem(name=name, description=desc, shape=tuple(mix.shape), n_samples=n, schedule_name=sch_name,
                   make_denoiser=lambda: mix.denoiser(sch, "eps"), mixture=mix, reference_tol=1e-8)


# --- trained models ---------------------------------------------------------------------------
def _zoo():
    try:
        from .. import zoo
    except ImportError as e:  # pragma: no cover - only when the zoo is missing from an install
        raise ValueError(f"the model zoo (diffsolve.zoo) is not available: {e}") from None
    return zoo


def zoo_models() -> dict[str, str]:
    """Bundled model names and descriptions ({} if the zoo is unavailable)."""
    try:
        return dict(_zoo().available())
    except ValueError:
        return {}


def _schedule_name(sch: Schedule) -> str:
    return getattr(sch, "name", type(sch).__name__)


def _model_problem(spec: str, device=None) -> Problem:
    """A problem from a zoo name or a ``package.module:factory`` spec."""
    if ":" in spec and not spec.endswith((".safetensors", ".json")):
        try:
            from ..adapters import load_factory
        except ImportError as e:
            raise ValueError(f"loading a model from {spec!r} needs diffsolve.adapters.load_factory, "
                             f"which is not available: {e}") from None
        den = load_factory(spec)
        if not isinstance(den, Denoiser):
            raise TypeError(f"the factory {spec!r} must return a diffsolve.Denoiser, got {type(den).__name__}")
        if den.shape is None:
            raise ValueError(f"the denoiser from {spec!r} has no sample shape; set Denoiser(..., shape=...)")
        return Problem(name=spec, description=f"user model {spec}", shape=tuple(den.shape), n_samples=64,
                       schedule_name=_schedule_name(den.schedule), make_denoiser=lambda: den,
                       reference_tol=1e-5, kind="model")
    zoo = _zoo()
    models = zoo.available()
    if spec not in models and not Path(spec).expanduser().is_file():
        raise ValueError(f"unknown model {spec!r}; bundled models: {', '.join(models) or '(none)'}; or a model "
                         f"file (diffsolve.zoo.save_model's .safetensors), package.module:factory or "
                         f"path/to/file.py:factory")
    den = zoo.load(spec, device=device)
    heldout = train = to_pixels = model_data = quantize = None
    n = 128
    if spec == "digits":
        data = zoo.data
        heldout = lambda: data.digits("test")[0].to(_F64).reshape(-1, 64)  # noqa: E731
        train = lambda: data.digits("train")[0].to(_F64).reshape(-1, 64)  # noqa: E731
        to_pixels = lambda x: data.digits_to_pixels(x).to(_F64).reshape(x.shape[0], -1)  # noqa: E731
        model_data = lambda: data.digits_to_model(data.digits("test")[0]).reshape(-1, *den.shape)  # noqa: E731
        quantize = lambda x: data.digits_to_model(data.digits_to_pixels(x)).to(x.dtype)  # noqa: E731
        n = 256
    elif spec == "two_moons":
        data = zoo.data
        heldout = lambda: data.two_moons(2000, seed=1)  # noqa: E731
        train = lambda: data.two_moons(2000, seed=0)  # noqa: E731
        to_pixels = lambda x: x.to(_F64).reshape(x.shape[0], -1)  # noqa: E731
        model_data = heldout
        n = 1000
    desc = models.get(spec) or (f"bundled model {spec}" if spec in models else f"model file {spec}")
    return Problem(name=spec, description=desc, shape=tuple(den.shape), n_samples=n,
                   schedule_name=_schedule_name(den.schedule), make_denoiser=lambda: den, heldout=heldout,
                   train=train, to_pixels=to_pixels, reference_tol=1e-5, kind="model", data=model_data,
                   quantize=quantize)


def get_model(spec: str, device=None) -> Problem:
    """A trained-model problem from a zoo name or ``package.module:factory`` (clear error otherwise)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a model must be a zoo name or package.module:factory, got {spec!r}")
    return _model_problem(spec, device=device)


def get_problem(name: str, schedule: str | None = None, device=None) -> Problem:
    """A :class:`Problem` by name: a built-in analytic problem, a zoo model or ``module:factory``.

    ``schedule`` (a name in :data:`diffsolve.SCHEDULES`) applies to analytic problems; a trained
    model keeps the schedule it was trained with.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a problem name must be a non-empty string, got {name!r}")
    if name in _MIXTURES:
        return _analytic(name, schedule)
    if ":" in name or name in zoo_models() or Path(name).expanduser().is_file():
        return _model_problem(name, device=device)
    models = zoo_models()
    raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(BUILTIN_PROBLEMS)}"
                     + (f"; bundled models: {', '.join(models)}" if models else "")
                     + "; or a model factory package.module:factory")


def list_problems() -> list[dict]:
    """Name, kind, shape, default sample count and description of every problem (zoo included)."""
    out = []
    for name, (_, n, desc) in _MIXTURES.items():
        mix = _mixture(name)
        out.append({"name": name, "kind": "analytic", "shape": list(mix.shape), "n_samples": n,
                    "default_schedule": DEFAULT_SCHEDULE, "ground_truth": True, "description": desc})
    for name, desc in zoo_models().items():
        out.append({"name": name, "kind": "model", "shape": None, "n_samples": None,
                    "default_schedule": None, "ground_truth": False, "description": desc})
    return out
