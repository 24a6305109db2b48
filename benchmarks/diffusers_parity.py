r"""Parity with diffusers' schedulers, step for step, through the drop-in ``DiffsolveScheduler``.

For every diffusers scheduler with a diffsolve twin (:mod:`diffsolve.parity`), every prediction
type and every ``timestep_spacing`` (leading with steps_offset 0 and 1, trailing, linspace), the
diffusers scheduler's loop and its twin's loop (``DiffsolveScheduler.from_config(config,
**diffusers_twin(scheduler).options)``) run side by side on the same small random
``UNet2DModel`` (float64, random weights, built from a config), from the same x_T, the
stochastic ones with the same noise (both draw from generators seeded alike: diffusers in
``step``, the twin's ``NoiseSource``), at n = 7 and n = 10 timesteps. A cell is the largest
max |a − b| / max |b| of the final data-space outputs over both n:

- **float64**: diffusers' own code run in float64 (:func:`float64_tables`: its module sees
  ``float32`` as float64; its ᾱ table keeps the float32 values the twin reads), where equality
  shows as ~1e-15;
- **float32: twin**: the same against diffusers as shipped (σ tables and, in some classes, the step
  in float32), over all columns; **float32: diffusers' own**: diffusers as shipped against
  diffusers in float64, i.e. its own round-off. Where the two are alike, the float32 difference is
  diffusers' round-off (the noise-prediction forms, DEIS and UniPC with ``predict_x0=False``, lose
  up to 4e-4 to their float32 σ's: (α_t/α_s) x − σ_t(e^h − 1) ε̂ cancels from high noise). The
  stochastic DPM-Solver draws float32 noise there, which a float64 twin cannot share (n/a).

A ``*`` marks an approximate twin: the Euler/Heun family's fractional ``linspace`` timesteps at
n = 7 (diffusers interpolates σ linearly between training timesteps, DDPMSchedule log α). EDM
schedulers run through ``diffsolve.loop.integrate`` (:func:`diffsolve.parity.edm_twin`), their
columns being the σ schedule and the prediction type.

    python benchmarks/diffusers_parity.py            # ~3 min on two CPU cores
    python benchmarks/diffusers_parity.py --quick    # n = 7 only, no float32 column

``tests/test_scheduler_parity.py`` runs the same cases (:func:`cases`) and asserts ≤ 1e-6.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
import time
import types
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

warnings.filterwarnings("ignore")

import diffusers  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402

from diffsolve.parity import Twin, VE_LATENTS, diffusers_twin, edm_twin  # noqa: E402
from diffsolve.scheduler import DiffsolveScheduler  # noqa: E402

dlogging.set_verbosity_error()

SPACINGS = (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0))
PREDICTIONS = ("epsilon", "v_prediction", "sample")
SHORT = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


# --- the network and the two loops ---------------------------------------------------------------
def make_net(seed: int = 0):
    """A small random UNet2DModel in float64 (3×8×8), as ``net(x, t) -> tensor``."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    unet = unet.double().eval().requires_grad_(False)
    return lambda x, t: unet(x, t).sample


def make_x_T(seed: int = 1) -> Tensor:
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class _Replace(types.ModuleType):
    def __init__(self, module, replace: dict):
        super().__init__(module.__name__)
        self._module, self._replace = module, replace

    def __getattr__(self, name):
        return self._replace[name] if name in self._replace else getattr(self._module, name)


@contextlib.contextmanager
def float64_tables(scheduler_class):
    """Run a diffusers scheduler class's own code in float64: within the context its module sees
    ``torch.float32`` and ``numpy.float32`` as float64 (σ tables, the ``sample.to(float32)`` of
    some ``step`` methods, float32 noise draws), and torch's default dtype is float64."""
    import numpy as np

    module = sys.modules[scheduler_class.__module__]
    saved = module.torch, getattr(module, "np", None), torch.get_default_dtype()
    module.torch = _Replace(torch, {"float32": torch.float64})
    if saved[1] is not None:
        module.np = _Replace(np, {"float32": np.float64})
    torch.set_default_dtype(torch.float64)  # EDMDPMSolverMultistepScheduler's torch.linspace ramp
    try:
        yield
    finally:
        torch.set_default_dtype(saved[2])
        module.torch = saved[0]
        if saved[1] is not None:
            module.np = saved[1]


def _to_float64(scheduler):
    """The scheduler's float32 tables as float64 (the same values; λ, α, σ recomputed from ᾱ)."""
    for name, value in list(vars(scheduler).items()):
        if isinstance(value, Tensor) and value.dtype == torch.float32:
            setattr(scheduler, name, value.double())
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is not None and hasattr(scheduler, "lambda_t"):
        scheduler.alpha_t, scheduler.sigma_t = ac.sqrt(), (1 - ac).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()


def max_rel_diff(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b| (inf where either is not finite)."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return float("inf")
    return float((a - b).abs().max() / b.abs().max())


def _loop(scheduler, net, x: Tensor, seed: int, step_kwargs: dict) -> Tensor:
    """A pipeline's loop: ``net(scale_model_input(x, t), t)``, then ``step``, for every timestep."""
    if "generator" in inspect.signature(scheduler.step).parameters:  # the stochastic ones
        step_kwargs = dict(step_kwargs, generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        x = scheduler.step(net(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x


def run_diffusers(scheduler, net, x_T: Tensor, n: int, *, seed: int = 0, **step_kwargs) -> Tensor:
    """diffusers' loop from the VP state x_T (VE latents: y_T = x_T √(σ_0² + 1)); the output in data
    space (a VE state at σ_min divided by √(σ_min² + 1))."""
    scheduler.set_timesteps(n)
    ve = type(scheduler).__name__ in VE_LATENTS
    x = x_T * (float(scheduler.sigmas[0]) ** 2 + 1) ** 0.5 if ve else x_T.clone()
    x = _loop(scheduler, net, x, seed, step_kwargs)
    return x / (float(scheduler.sigmas[-1]) ** 2 + 1) ** 0.5 if ve else x


def run_twin(twin_scheduler, net, x_T: Tensor, nfe: int, *, seed: int = 0) -> Tensor:
    """The DiffsolveScheduler's loop (its latents are the VP state; ``init_noise_sigma`` is 1)."""
    twin_scheduler.set_timesteps(nfe)
    return _loop(twin_scheduler, net, x_T * twin_scheduler.init_noise_sigma, seed, {})


def compare(scheduler_class, config: dict, net, x_T: Tensor, n: int, *, eta: float = 0.0, seed: int = 0,
            float64: bool = True, step_kwargs: dict | None = None) -> tuple[float, Twin]:
    """Build ``scheduler_class(**config)`` and its twin, run both from x_T and return (max relative
    difference of the outputs, the twin). ``eta`` and ``step_kwargs`` go to diffusers' ``step``."""
    kwargs = dict(step_kwargs or {}, **({"eta": eta} if eta else {}))
    ref, want = diffusers_output(scheduler_class, config, net, x_T, n, seed=seed, float64=float64, **kwargs)
    got, twin = twin_output(ref, net, x_T, n, seed=seed, **kwargs)
    return max_rel_diff(got, want), twin


def diffusers_output(scheduler_class, config: dict, net, x_T: Tensor, n: int, *, seed: int = 0,
                     float64: bool = True, **step_kwargs) -> tuple[object, Tensor]:
    """(the scheduler, its data-space output from x_T) in float64 or as shipped."""
    edm = scheduler_class.__name__.startswith("EDM")
    ref = None if edm else scheduler_class(**config)  # ᾱ as a pipeline has it (float32): the twin reads it
    with float64_tables(scheduler_class) if float64 else contextlib.nullcontext():
        if edm:
            ref = scheduler_class(**config)
            ref.set_timesteps(n)
            y_T = x_T * (float(ref.sigmas[0]) ** 2 + 1) ** 0.5  # VE latents, as the other VE schedulers
            return ref, _loop(ref, net, y_T, seed, step_kwargs)
        if float64:
            _to_float64(ref)
        return ref, run_diffusers(ref, net, x_T, n, seed=seed, **step_kwargs)


def twin_output(ref, net, x_T: Tensor, n: int, *, seed: int = 0, eta: float = 0.0,
                use_clipped_model_output: bool = False) -> tuple[Tensor, Twin]:
    """The twin of the diffusers scheduler ``ref`` (after its run: some set their config there) and
    its output from x_T: through DiffsolveScheduler, or ``integrate`` for the EDM schedulers."""
    if type(ref).__name__.startswith("EDM"):
        return _edm_output(ref, net, x_T, seed)
    twin = diffusers_twin(ref, n, eta=eta, use_clipped_model_output=use_clipped_model_output)
    ours = DiffsolveScheduler.from_config(ref.config, **twin.options)
    return run_twin(ours, net, x_T, twin.budget(n), seed=seed), twin


def _edm_output(ref, net, x_T, seed):
    from diffsolve.loop import integrate
    from diffsolve.noise import NoiseSource
    from diffsolve.processes import NoiseLevel
    from diffsolve.solvers import get_solver

    y_T = x_T * (float(ref.sigmas[0]) ** 2 + 1) ** 0.5
    denoiser, spec, grid, eta, final = edm_twin(ref, net)
    source = NoiseSource(x_T.shape[0], x_T.shape[1:], generator=torch.Generator().manual_seed(seed))
    got = integrate(get_solver(spec), denoiser, y_T, grid, level=NoiseLevel(denoiser.schedule, eta), source=source,
                    denoise_final=final).x
    return got, Twin(dict(solver=spec, grid=f"{len(grid)} points", denoise_final=final, eta=eta))


# --- the cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    """One row of the table: a diffusers class with a config (``column`` adds the spacing and
    prediction type), the ``eta`` and other ``step_kwargs`` its pipeline passes to ``step``;
    ``float32``: whether diffusers as shipped can be compared (False where it draws float32 noise)."""

    label: str
    cls: str
    config: dict = field(default_factory=dict)
    eta: float = 0.0
    step_kwargs: dict = field(default_factory=dict)
    predictions: tuple = PREDICTIONS
    spacings: tuple = SPACINGS
    float32: bool = True

    def columns(self):
        """(column name, full config) for every spacing × prediction type of this row."""
        for spacing, offset in self.spacings:
            for pred in self.predictions:
                name = f"{spacing}/{offset}/{SHORT[pred]}" if spacing in ("leading", "trailing", "linspace") else \
                    f"{spacing}/{SHORT[pred]}"
                extra = dict(timestep_spacing=spacing, steps_offset=offset) if spacing in dict(SPACINGS) else \
                    dict(sigma_schedule=spacing)
                if self.cls == "DPMSolverSinglestepScheduler":
                    extra = {}
                yield name, dict(self.config, prediction_type=pred, **extra)


def cases() -> list[Case]:
    """Every measured configuration (``tests/test_scheduler_parity.py`` runs them too)."""
    off = dict(clip_sample=False)
    out = [Case("DDIM η=0", "DDIMScheduler", off), Case("DDIM η=0, set_alpha_to_one=False", "DDIMScheduler",
                                                            dict(off, set_alpha_to_one=False)),
           Case("DDIM η=0.7", "DDIMScheduler", off, eta=0.7), Case("DDPM fixed_small", "DDPMScheduler", off),
           Case("DDPM fixed_small_log", "DDPMScheduler", dict(off, variance_type="fixed_small_log"))]
    for order in (1, 2, 3):
        out.append(Case(f"DPM-Solver++ {order}M", "DPMSolverMultistepScheduler", dict(solver_order=order)))
    out += [Case("DPM-Solver++ 2M heun", "DPMSolverMultistepScheduler", dict(solver_type="heun")),
            Case("DPM-Solver++ 3M heun", "DPMSolverMultistepScheduler", dict(solver_order=3, solver_type="heun")),
            Case("DPM-Solver++ 2M sigma_min", "DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min")),
            Case("DPM-Solver++ 3M sigma_min", "DPMSolverMultistepScheduler",
                 dict(solver_order=3, final_sigmas_type="sigma_min")),
            Case("DPM-Solver++ 3M no lower_order_final", "DPMSolverMultistepScheduler",
                 dict(solver_order=3, lower_order_final=False))]
    for order, kind in ((1, "midpoint"), (2, "midpoint"), (2, "heun")):
        out.append(Case(f"SDE-DPM-Solver++ {order}M {kind}", "DPMSolverMultistepScheduler",
                        dict(algorithm_type="sde-dpmsolver++", solver_order=order, solver_type=kind), float32=False))
    linspace = (("linspace", 0),)
    out += [Case("DPM-Solver++ singlestep 1", "DPMSolverSinglestepScheduler", dict(solver_order=1), spacings=linspace),
            Case("DPM-Solver++ 2S midpoint", "DPMSolverSinglestepScheduler", {}, spacings=linspace),
            Case("DPM-Solver++ 2S heun", "DPMSolverSinglestepScheduler", dict(solver_type="heun"), spacings=linspace),
            Case("DPM-Solver++ 2S sigma_min", "DPMSolverSinglestepScheduler", dict(final_sigmas_type="sigma_min"),
                 spacings=linspace),
            Case("DPM-Solver++ 2S sigma_min, lower_order_final", "DPMSolverSinglestepScheduler",
                 dict(final_sigmas_type="sigma_min", lower_order_final=True), spacings=linspace)]
    out += [Case(f"DEIS {order}", "DEISMultistepScheduler", dict(solver_order=order)) for order in (1, 2, 3)]
    for variant in ("bh1", "bh2"):
        for x0 in (True, False):
            for order in (1, 2, 3):
                # diffusers' step to σ = 0 is NaN for bh1 and for noise prediction: end at sigma_min there
                final = "zero" if variant == "bh2" and x0 else "sigma_min"
                out.append(Case(f"UniPC-{order} {variant}{'' if x0 else ' ε'}{'' if final == 'zero' else ' sigma_min'}",
                                "UniPCMultistepScheduler", dict(solver_order=order, solver_type=variant,
                                                                predict_x0=x0, final_sigmas_type=final)))
    out += _thresholding_cases() if _thresholding_supported() else []
    out += [Case("Euler", "EulerDiscreteScheduler"),
            Case("Euler sigma_min", "EulerDiscreteScheduler", dict(final_sigmas_type="sigma_min")),
            Case("Euler ancestral", "EulerAncestralDiscreteScheduler", predictions=PREDICTIONS[:2]),
            Case("Heun", "HeunDiscreteScheduler")]
    edm = (("karras", 0), ("exponential", 0))
    out += [Case("EDM Euler", "EDMEulerScheduler", predictions=PREDICTIONS[:2], spacings=edm)]
    for order in (1, 2, 3):
        out.append(Case(f"EDM DPM-Solver++ {order}M", "EDMDPMSolverMultistepScheduler", dict(solver_order=order),
                        predictions=PREDICTIONS[:2], spacings=edm))
    out += [Case("EDM DPM-Solver++ 2M heun", "EDMDPMSolverMultistepScheduler", dict(solver_type="heun"),
                 predictions=PREDICTIONS[:2], spacings=edm),
            Case("EDM SDE-DPM-Solver++ 2M", "EDMDPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"),
                 predictions=PREDICTIONS[:2], spacings=edm)]
    return out


def _thresholding_supported() -> bool:
    """Whether this diffsolve's DiffsolveScheduler takes clip_sample (diffsolve.thresholding)."""
    try:
        DiffsolveScheduler(clip_sample=True)
    except (TypeError, ValueError):
        return False
    return True


def _thresholding_cases() -> list[Case]:
    """x̂0 clipping (clip_sample) and dynamic thresholding (Imagen's; the random UNet's x̂0 exceeds
    the range, so both act), where diffusers has them: the twin's thresholded denoiser."""
    dyn = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    clipped = dict(use_clipped_model_output=True)  # DDIM: ε̂ from the clipped x̂0 (diffsolve.thresholding)
    return [Case("DDIM η=0 clip_sample, clipped ε̂", "DDIMScheduler", dict(clip_sample=True), step_kwargs=clipped),
            Case("DDIM η=0.7 thresholding, clipped ε̂", "DDIMScheduler", dict(dyn, clip_sample=False), eta=0.7,
                 step_kwargs=clipped),
            Case("DDPM clip_sample", "DDPMScheduler", dict(clip_sample=True, clip_sample_range=0.8)),
            Case("DDPM thresholding", "DDPMScheduler", dict(dyn, clip_sample=False)),
            Case("DPM-Solver++ 2M thresholding", "DPMSolverMultistepScheduler", dyn),
            Case("DPM-Solver++ 3M sigma_min thresholding", "DPMSolverMultistepScheduler",
                 dict(dyn, solver_order=3, final_sigmas_type="sigma_min")),
            Case("SDE-DPM-Solver++ 2M thresholding", "DPMSolverMultistepScheduler",
                 dict(dyn, algorithm_type="sde-dpmsolver++"), float32=False),
            Case("DPM-Solver++ 2S thresholding", "DPMSolverSinglestepScheduler", dyn, spacings=(("linspace", 0),)),
            Case("DEIS 3 thresholding", "DEISMultistepScheduler", dict(dyn, solver_order=3)),
            Case("UniPC-2 bh2 thresholding", "UniPCMultistepScheduler", dyn),
            Case("UniPC-2 bh2 ε thresholding (ignored)", "UniPCMultistepScheduler",
                 dict(dyn, predict_x0=False, final_sigmas_type="sigma_min")),
            Case("Heun clip_sample", "HeunDiscreteScheduler", dict(clip_sample=True, clip_sample_range=0.8))]


def measure(case: Case, config: dict, net, x_T: Tensor, n: int, float64: bool = True) -> tuple[float, Twin]:
    return compare(getattr(diffusers, case.cls), config, net, x_T, n, eta=case.eta, float64=float64,
                   step_kwargs=case.step_kwargs)


def measure_all(case: Case, config: dict, net, x_T: Tensor, n: int, float32: bool) -> tuple[list, Twin]:
    """[twin vs diffusers in float64, and with ``float32``: twin vs diffusers as shipped, diffusers as
    shipped vs in float64], the twin. The twin runs once (it is the same for both)."""
    cls, kwargs = getattr(diffusers, case.cls), dict(case.step_kwargs, **({"eta": case.eta} if case.eta else {}))
    ref, want64 = diffusers_output(cls, config, net, x_T, n, **kwargs)
    got, twin = twin_output(ref, net, x_T, n, **kwargs)
    out = [max_rel_diff(got, want64)]
    if float32:
        want32 = diffusers_output(cls, config, net, x_T, n, float64=False, **kwargs)[1]
        out += [max_rel_diff(got, want32), max_rel_diff(want32, want64)]
    return out, twin


# --- the table -------------------------------------------------------------------------------------
def _cell(values: list, approximate: bool) -> str:
    if not values:
        return "—"
    worst = max(values)
    return ("inf" if worst == float("inf") else f"{worst:.0e}") + ("*" if approximate else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 7 only, float64 only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net, x_T = make_net(), make_x_T()
    ns = (7,) if args.quick else (7, 10)
    start, rows, headers = time.time(), [], {}
    for case in cases():
        cells, f32, own, twin = {}, [], [], None
        float32 = case.float32 and not args.quick
        for name, config in case.columns():
            f64, approx = [], False
            for n in ns:
                with torch.no_grad():
                    d, twin = measure_all(case, config, net, x_T, n, float32)
                f64.append(d[0])
                approx |= bool(twin.approximate)
                f32 += d[1:2]
                own += d[2:]
            cells[name] = _cell(f64, approx)
            headers.setdefault("edm" if case.cls.startswith("EDM") else "ddpm", {})[name] = None
        f32_cells = (_cell(f32, False), _cell(own, False)) if float32 else ("n/a", "n/a")
        rows.append((case, cells, f32_cells, twin.options["solver"]))
    _print(rows, headers, args, time.time() - start)


def _print(rows, headers, args, seconds):
    print(f"# command: python benchmarks/diffusers_parity.py{' --quick' if args.quick else ''}  "
          f"(diffusers {diffusers.__version__}, torch {torch.__version__}; {seconds:.0f} s)")
    for group in ("ddpm", "edm"):
        cols = list(headers.get(group, {}))
        print()
        print("| scheduler | " + " | ".join(cols) + " | float32: twin | float32: diffusers' own | twin solver |")
        print("|---|" + "---|" * (len(cols) + 3))
        for case, cells, (f32, own), spec in rows:
            if ("edm" if case.cls.startswith("EDM") else "ddpm") == group:
                print(f"| {case.label} | " + " | ".join(cells.get(c, "") for c in cols)
                      + f" | {f32} | {own} | `{spec}` |")


if __name__ == "__main__":
    main()
