r"""The diffsolve twin of a diffusers scheduler: the options that reproduce it step for step.

``DiffsolveScheduler`` runs diffsolve's own solvers; with the options below it computes what a
diffusers scheduler computes, evaluation for evaluation (the same network inputs and time labels,
the same noise draws from the same generator), so a pipeline gives the same result to round-off::

    from diffsolve.parity import diffusers_twin
    twin = diffusers_twin(pipe.scheduler, n)              # refuses, by name, what it cannot reproduce
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, **twin.options)
    pipe(..., num_inference_steps=twin.budget(n))         # n: what you gave the diffusers scheduler

:data:`DIFFUSERS_EQUIVALENTS` states the rule of each class in words (to look it up);
:func:`diffusers_twin` applies it to a scheduler or a saved config. Measured agreement
(``python benchmarks/diffusers_parity.py``, ``tests/test_scheduler_parity.py``; random float64
UNet, every prediction type and spacing): ~1e-15 relative with diffusers' code run in float64,
~1e-7 with its float32 tables; *approximate* twins say why (:attr:`Twin.approximate`).

Conventions the twin takes care of: ``grid="diffusers"`` (the timesteps of the source class,
:func:`diffsolve.grids.diffusers_timesteps`); ``denoise_final`` for a last step to σ = 0
(``set_alpha_to_one``, ``final_sigmas_type="zero"``); a last step to σ of timestep 0
(``"sigma_min"``, DEIS) is a step to t_min; ``num_inference_steps`` as DiffsolveScheduler's
budget of evaluations (:meth:`Twin.budget`: Heun's n timesteps cost 2n − 1). Euler,
EulerAncestral and Heun keep their latents in VE coordinates y = x/α (``scale_model_input``
divides by √(σ² + 1)): the same start is y_T = x_T √(σ_0² + 1), and their output at σ = 0 is x̂0,
in data space like diffsolve's. Their ``init_noise_sigma`` is σ_0 for ``linspace``/``trailing``
(not √(σ_0² + 1), as for ``leading``), so a pipeline starts them √(1 + 1/σ_0²) − 1 smaller in
scale than the twin, whose ``init_noise_sigma`` is 1: ≈ 1/(2σ_0²), 2.3e-3 for Stable Diffusion's
betas with trailing spacing (σ_0 = 14.6), but a factor 100 where the first timestep is at low noise
(one linspace timestep: timestep 0); above 1e-4 the twin's ``notes`` say so.

Not reproduced (refused by :func:`diffusers_twin`, by name): Karras/exponential/beta/Lu σ's,
``use_flow_sigmas``, ``lambda_min_clipped``, ``interpolation_type="log_linear"``, DDPM's
``fixed_large``/learned variances, DPM-Solver's noise-prediction ``dpmsolver``/``sde-dpmsolver``
and its SDE of order 3 (diffusers' third-order SDE update weighs D2 ≈ h²D''/2 by
(1 − e^{−2h} − 2h)/(4h²) − ½ → −1 as h → 0: an O(h²) term that no order-3 update has), the
singlestep solver of order 3, ``euler_at_final`` with ``final_sigmas_type="sigma_min"``, UniPC's
``disable_corrector``/``solver_p``, and the EDM schedulers in the drop-in scheduler (their
network takes c_in·x and c_noise(σ); :func:`edm_twin` runs them through
:func:`diffsolve.adapters.from_edm` and ``diffsolve.sample``/``integrate``). Approximate:
DDIM with ``clip_sample``/``thresholding`` unless its pipeline passes
``use_clipped_model_output=True`` (:mod:`diffsolve.thresholding`), the Euler/Heun family's
fractional ``linspace`` timesteps (σ interpolated linearly in the timestep there, log α in
DDPMSchedule: ~1e-6), and ``rescale_betas_zero_snr`` with DDIM (ᾱ = 0 at the last timestep
there, 2⁻²⁴ in :func:`~diffsolve.adapters.schedule_from_diffusers`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["DIFFUSERS_EQUIVALENTS", "Twin", "diffusers_twin", "edm_twin", "VE_LATENTS"]

# what each diffusers class becomes (n: the scheduler's num_inference_steps; N: training timesteps)
DIFFUSERS_EQUIVALENTS: dict[str, dict[str, str]] = {
    "DDIMScheduler": dict(
        solver="ddim (step eta > 0: ddim:variant=published); ddim:stride=⌊N/n⌋/N where the spacing's "
               "timesteps are not ⌊N/n⌋ apart (linspace; trailing when n does not divide N)",
        eta="the eta passed to step()", denoise_final="set_alpha_to_one", budget="n",
        notes="DDIM steps from timestep k to k − ⌊N/n⌋ whatever the next timestep is (ddim's stride); "
              "set_alpha_to_one=False ending at timestep 0: its last, identity, step is dropped (n − 1 "
              "evaluations); rescale_betas_zero_snr: approximate (diffusers keeps ᾱ = 0 at the last "
              "timestep, diffsolve 2^-24)"),
    "DDPMScheduler": dict(
        solver="ddim", eta="1", denoise_final="True", budget="n",
        notes="variance_type fixed_small / fixed_small_log; diffusers adds 1e-10·z at a last step from a "
              "timestep > 0 (its clamped variance), the final denoise adds nothing"),
    "DPMSolverMultistepScheduler": dict(
        solver="dpmsolver++: dpmpp_2m:order=<solver_order>:solver_type=<midpoint|taylor for heun>:"
               "third_order=dpm_solver:lower_order_final=<lower_order_final>[:lower_order_below=16 for "
               "sigma_min]; sde-dpmsolver++ (orders 1, 2): dpmpp_2m_sde:... with eta=1",
        eta="0 (dpmsolver++), 1 (sde-dpmsolver++)", denoise_final='final_sigmas_type == "zero"', budget="n",
        notes="diffusers ramps the order down for fewer than 15 timesteps; without the final denoise "
              "diffsolve's rule counts one step more, hence lower_order_below=16"),
    "DPMSolverSinglestepScheduler": dict(
        solver="solver_order 1: ddim; 2: dpmpp_2s:intermediate=grid:solver_type=<...>:"
               "lower_order_final=<lower_order_final>", eta="0",
        denoise_final='final_sigmas_type == "zero"', budget="n",
        notes="the intermediate point of each 2S step is the next timestep (dpmpp_2s's intermediate=grid)"),
    "DEISMultistepScheduler": dict(
        solver="deis:order=<solver_order>:lower_order_final=<lower_order_final>:lower_order_below=16",
        eta="0", denoise_final="False (its last step goes to σ of timestep 0)", budget="n", notes=""),
    "UniPCMultistepScheduler": dict(
        solver="unipc:order=<solver_order>:variant=<solver_type>:predict_x0=<predict_x0>:"
               "lower_order_final=<lower_order_final>:lower_order_below=null",
        eta="0", denoise_final='final_sigmas_type == "zero"', budget="n",
        notes="diffusers' step to σ = 0 is NaN for bh1 and for predict_x0=False; diffsolve's final "
              "denoise is its limit (x̂0 at the last timestep)"),
    "EulerDiscreteScheduler": dict(
        solver="euler_ve", eta="0", denoise_final='final_sigmas_type == "zero"', budget="n",
        notes="VE latents (module docstring); linspace: approximate (fractional timesteps, where "
              "diffusers interpolates σ linearly in the timestep and DDPMSchedule log α: ~1e-5)"),
    "EulerAncestralDiscreteScheduler": dict(
        solver="ancestral", eta="1", denoise_final="True", budget="n",
        notes="VE latents; linspace approximate, as Euler"),
    "HeunDiscreteScheduler": dict(
        solver="heun", eta="0", denoise_final="True", budget="2n − 1",
        notes="VE latents; linspace approximate, as Euler; num_inference_steps counts evaluations"),
    "FlowMatchEulerDiscreteScheduler": dict(
        solver="euler on the config's FlowSchedule (its shift; with use_dynamic_shifting the mu given to "
               "set_timesteps)", eta="0", denoise_final="True (its last step goes to σ = 0: x − σv = x̂0)",
        budget="n", notes="Karras/exponential/beta σ's, shift_terminal, invert_sigmas, stochastic_sampling: "
                          "refused; custom timesteps= are read as σ = timestep/N (diffusers shifts them and keeps the "
                          "labels): give sigmas= instead"),
    "FlowMatchHeunDiscreteScheduler": dict(
        solver="heun (in t on a flow schedule) on the config's FlowSchedule (its shift)", eta="0",
        denoise_final="True (its last, Euler step goes to σ = 0: x − σv = x̂0)", budget="2n − 1",
        notes="as FlowMatchEulerDiscreteScheduler; its churn (s_churn in step()) is not reproduced"),
    "EDMEulerScheduler": dict(
        solver="euler_ve on EDMSchedule(sigma_min, sigma_max), grid karras (rho) or log_snr "
               "(exponential), n − 1 steps", eta="0", denoise_final='final_sigmas_type == "zero"',
        budget="n", notes="not in DiffsolveScheduler (EDM preconditioning): edm_twin, diffsolve.sample"),
    "EDMDPMSolverMultistepScheduler": dict(
        solver="dpmpp_2m:order=<solver_order>:solver_type=<...>:third_order=dpm_solver on EDMSchedule, "
               "as EDMEulerScheduler; sde-dpmsolver++ order 2: dpmpp_2m_sde with eta=1", eta="0 or 1",
        denoise_final='final_sigmas_type == "zero"', budget="n", notes="as EDMEulerScheduler"),
}

# diffusers classes whose latents are in VE coordinates y = x/α
VE_LATENTS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")


@dataclass
class Twin:
    """The twin of a diffusers scheduler: ``options`` for ``DiffsolveScheduler.from_config``,
    the ``per_step`` evaluations a diffusers timestep costs (``budget(n)``: its
    ``num_inference_steps`` as DiffsolveScheduler's NFE), ``approximate``: why its solve is not
    exact (empty when it is), and ``notes``: what differs around the solve in a pipeline (its start)."""

    options: dict
    per_step: int = 1
    approximate: str = ""
    notes: list = field(default_factory=list)

    def budget(self, n: int) -> int:
        return self.per_step * int(n) - (self.per_step - 1)


def _refuse(cls: str, c: dict, **allowed):
    for name, ok in allowed.items():
        if name in c and c[name] not in ok:
            raise ValueError(f"{cls} with {name}={c[name]!r} has no diffsolve twin (reproduced: "
                             f"{', '.join(map(repr, ok))}); see diffsolve.parity")


_COMMON = dict(use_karras_sigmas=(False, None), use_exponential_sigmas=(False, None), use_beta_sigmas=(False, None),
               use_lu_lambdas=(False, None), use_flow_sigmas=(False, None), lambda_min_clipped=(-float("inf"),),
               timestep_type=("discrete",), interpolation_type=("linear",),
               variance_type=(None, "fixed_small", "fixed_small_log"))
_TYPE = {"midpoint": "midpoint", "heun": "taylor"}


def _bool(v) -> str:
    return "true" if v else "false"


def diffusers_twin(scheduler_or_config, n: int | None = None, *, eta: float = 0.0,
                   use_clipped_model_output: bool = False) -> Twin:
    """The :class:`Twin` of a diffusers scheduler (or its config dict with ``_class_name``), for
    ``n`` timesteps (only DDIM needs it: its stride) and the ``eta`` and ``use_clipped_model_output``
    its pipeline passes to ``step`` (DDIM). Raises ``ValueError`` naming a class or field that has
    no twin. Clipping and thresholding (``clip_sample``, ``thresholding``) are the drop-in
    scheduler's own (:mod:`diffsolve.thresholding`), read from the config."""
    config = dict(getattr(scheduler_or_config, "config", scheduler_or_config))
    cls = type(scheduler_or_config).__name__ if hasattr(scheduler_or_config, "config") else config.get("_class_name")
    if cls is None:
        raise ValueError("pass the diffusers scheduler, or a config with its _class_name (a saved config has it)")
    if cls not in DIFFUSERS_EQUIVALENTS:
        raise ValueError(f"no diffsolve twin is known for {cls}; known: {', '.join(DIFFUSERS_EQUIVALENTS)}")
    if cls.startswith("EDM"):
        raise ValueError(f"{cls} preconditions the network (c_in, c_noise, c_skip, c_out): DiffsolveScheduler "
                         f"does not run it; use diffsolve.parity.edm_twin with diffsolve.sample")
    _refuse(cls, config, **_COMMON)
    spec, level, final, per_step, approx = _RULES[cls](cls, config, n, eta)
    options = dict(solver=spec, grid="diffusers", denoise_final=final, eta=level, diffusers_class=cls)
    clipped = config.get("thresholding") or config.get("clip_sample")
    if cls == "DDIMScheduler" and clipped and not use_clipped_model_output:
        approx = ("not a twin where x̂0 is clipped: DDIM with a clipped x̂0 keeps the raw ε̂ "
                  "(use_clipped_model_output=False, DDIMPipeline's default), the twin's thresholded denoiser is "
                  "use_clipped_model_output=True; the two can differ by the size of the samples wherever the "
                  "clip binds (pass use_clipped_model_output=True for a twin)")
    if cls in ("DDIMScheduler", "DDPMScheduler") and config.get("rescale_betas_zero_snr"):
        approx = "zero terminal SNR: ᾱ = 0 at the last timestep in diffusers' DDIM/DDPM, 2^-24 in the twin"
    if cls == "UniPCMultistepScheduler" and not config.get("predict_x0", True):
        options["thresholding"] = False  # diffusers' noise-prediction UniPC ignores it
    if cls in VE_LATENTS and config.get("timestep_spacing", "linspace") == "linspace" and _fractional(config, n, cls):
        approx = ("fractional linspace timesteps: diffusers interpolates σ linearly in the timestep, "
                  "DDPMSchedule interpolates log α")
    gap, notes = _start_gap(config, n, cls), []
    if gap > 1e-4:
        notes.append(f"in a pipeline: {cls}'s init_noise_sigma is σ_0 = {math.sqrt(1 / ((gap + 1) ** 2 - 1)):.3g}, "
                     f"the twin's √(σ_0² + 1), so a pipeline starts the twin's latents {gap + 1:.6g} times as large; "
                     f"from one start the two solves agree")
    return Twin(options, per_step, approx, notes)


def _start_gap(c, n, cls) -> float:
    """√(1 + 1/σ_0²) − 1: how much larger a pipeline starts the twin of an Euler-family class whose
    ``init_noise_sigma`` is σ_0 (``linspace``/``trailing``) than the class itself (module docstring);
    0 for the others and without n."""
    spacing = c.get("timestep_spacing", "linspace")
    if cls not in VE_LATENTS or spacing not in ("linspace", "trailing") or n is None:
        return 0.0
    from ._diffusers import schedule_from_diffusers
    from .grids import diffusers_timesteps

    schedule = schedule_from_diffusers(c)[0]
    k = diffusers_timesteps(n, spacing, num_train_timesteps=c.get("num_train_timesteps", 1000), scheduler=cls)
    t = schedule.t_of_timestep(k[:1].to(torch.float64))
    s = float(schedule.sigma(t) / schedule.alpha(t))
    return math.sqrt(1 + 1 / s ** 2) - 1


def _fractional(c, n, cls) -> bool:
    """Whether the Euler/Heun family's linspace timesteps for n are fractional (always, without n)."""
    from .grids import diffusers_timesteps

    if n is None:
        return True
    k = diffusers_timesteps(n, "linspace", num_train_timesteps=c.get("num_train_timesteps", 1000), scheduler=cls)
    return not torch.equal(k, k.round())


def _ddim(cls, c, n, eta):
    from .grids import diffusers_timesteps

    spec, final = ("ddim" if eta == 0 else "ddim:variant=published"), bool(c.get("set_alpha_to_one", True))
    if n is None:
        if c.get("timestep_spacing", "leading") != "leading":
            raise ValueError(f"{cls} with timestep_spacing={c.get('timestep_spacing')!r}: give n (its steps "
                             f"change with n)")
        return spec, float(eta), final, 1, ""
    N = c.get("num_train_timesteps", 1000)
    k = diffusers_timesteps(n, c.get("timestep_spacing", "leading"), num_train_timesteps=N,
                            steps_offset=c.get("steps_offset", 0), scheduler=cls).tolist()
    stride = N // int(n)
    if any(a - stride > b for a, b in zip(k, k[1:])):
        spec += f":stride={stride / N!r}"
    last = k[-1] - stride  # its last step goes to timestep `last`, or to ᾱ = final_alpha_cumprod if < 0
    if last > 0:
        raise ValueError(f"{cls}'s last step for n = {n} goes to timestep {last:g} (steps_offset "
                         f"{c.get('steps_offset')} ≥ ⌊N/n⌋): no twin")
    return spec, float(eta), final and last < 0, 1, ""


def _ddpm(cls, c, n, eta):
    return "ddim", 1.0, True, 1, ""


def _final(c) -> bool:
    return c.get("final_sigmas_type", "zero") == "zero"


def _dpm_multistep(cls, c, n, eta):
    _refuse(cls, c, algorithm_type=("dpmsolver++", "sde-dpmsolver++"), solver_type=("midpoint", "heun"))
    order, sde = c.get("solver_order", 2), c.get("algorithm_type", "dpmsolver++") == "sde-dpmsolver++"
    if sde:
        _refuse(cls, c, solver_order=(1, 2))
    if c.get("euler_at_final") and not _final(c):
        raise ValueError(f"{cls} with euler_at_final=True and final_sigmas_type='sigma_min' has no diffsolve twin")
    spec = (f"{'dpmpp_2m_sde' if sde else 'dpmpp_2m'}:order={order}:solver_type={_TYPE[c.get('solver_type', 'midpoint')]}"
            f":third_order=dpm_solver:lower_order_final={_bool(c.get('lower_order_final', True))}")
    if not _final(c):
        spec += ":lower_order_below=16"
    return spec, 1.0 if sde else 0.0, _final(c), 1, ""


def _dpm_singlestep(cls, c, n, eta):
    _refuse(cls, c, algorithm_type=("dpmsolver++",), solver_type=("midpoint", "heun"), solver_order=(1, 2))
    if c.get("solver_order", 2) == 1:
        return "ddim", 0.0, _final(c), 1, ""
    spec = (f"dpmpp_2s:intermediate=grid:solver_type={_TYPE[c.get('solver_type', 'midpoint')]}"
            f":lower_order_final={_bool(c.get('lower_order_final', False))}")
    return spec, 0.0, _final(c), 1, ""


def _deis(cls, c, n, eta):
    _refuse(cls, c, algorithm_type=("deis",), solver_type=("logrho",))
    spec = (f"deis:order={c.get('solver_order', 2)}:lower_order_final={_bool(c.get('lower_order_final', True))}"
            f":lower_order_below=16")
    return spec, 0.0, False, 1, ""


def _unipc(cls, c, n, eta):
    _refuse(cls, c, disable_corrector=([],), solver_p=(None,))
    spec = (f"unipc:order={c.get('solver_order', 2)}:variant={c.get('solver_type', 'bh2')}"
            f":predict_x0={_bool(c.get('predict_x0', True))}"
            f":lower_order_final={_bool(c.get('lower_order_final', True))}:lower_order_below=null")
    return spec, 0.0, _final(c), 1, ""


_RULES = {"DDIMScheduler": _ddim, "DDPMScheduler": _ddpm, "DPMSolverMultistepScheduler": _dpm_multistep,
          "DPMSolverSinglestepScheduler": _dpm_singlestep, "DEISMultistepScheduler": _deis,
          "UniPCMultistepScheduler": _unipc,
          "EulerDiscreteScheduler": lambda cls, c, n, eta: ("euler_ve", 0.0, _final(c), 1, ""),
          "EulerAncestralDiscreteScheduler": lambda cls, c, n, eta: ("ancestral", 1.0, True, 1, ""),
          "HeunDiscreteScheduler": lambda cls, c, n, eta: ("heun", 0.0, True, 2, ""),
          "FlowMatchEulerDiscreteScheduler": lambda cls, c, n, eta: _flow_twin(cls, c),
          "FlowMatchHeunDiscreteScheduler": lambda cls, c, n, eta: _flow_twin(cls, c, "heun:variable=t", 2)}


def _flow_twin(cls, c, solver: str = "euler", per_step: int = 1):
    from ._diffusers import refuse_flow_options

    refuse_flow_options(c, f"{cls}'s twin")
    return solver, 0.0, True, per_step, ""


# --- EDM: through diffsolve.sample -------------------------------------------------------------
def edm_twin(scheduler, net):
    """(denoiser, solver spec, grid, eta, denoise_final) that reproduce an EDM scheduler
    (``EDMEulerScheduler`` or ``EDMDPMSolverMultistepScheduler``) through ``diffsolve.sample`` /
    ``integrate``: the network with the scheduler's own preconditioning as an EDM denoiser
    D(y; σ) on EDMSchedule(sigma_min, sigma_max), the grid of its ``sigma_schedule`` with as many
    points as its σs (``set_timesteps`` first) and the solver of :data:`DIFFUSERS_EQUIVALENTS`."""
    from .adapters import from_edm
    from .grids import make_grid, validate_grid
    from .schedules import EDMSchedule

    c = scheduler.config
    cls = type(scheduler).__name__

    def D(y, s):
        s = s.reshape(-1)[:1].to(y.dtype).reshape(())
        with torch.no_grad():
            out = net(scheduler.precondition_inputs(y, s), scheduler.precondition_noise(s))
        return scheduler.precondition_outputs(y, out, s)

    if c.final_sigmas_type != "zero":
        raise ValueError(f"{cls} with final_sigmas_type={c.final_sigmas_type!r} has no twin here (its last step "
                         f"goes from sigma_min to sigma_min)")
    schedule = EDMSchedule(c.sigma_min, c.sigma_max)
    kind = "karras" if c.sigma_schedule == "karras" else "log_snr"  # exponential: uniform in log σ = −λ
    steps, final = len(scheduler.sigmas) - 2, True
    if steps:
        grid = make_grid(schedule, steps, kind, rho=c.rho)
    else:  # a one-step plan: the final denoise alone, at the scheduler's one σ (σ_min for its exponential
        # spacing); α = 1, so λ = −log σ
        grid = validate_grid(schedule, schedule.t_of_log_snr(-scheduler.sigmas[:1].double().log()), single=True)
    if cls == "EDMEulerScheduler":
        spec, eta = "euler_ve", 0.0
    else:
        sde = c.algorithm_type == "sde-dpmsolver++"
        spec = (f"{'dpmpp_2m_sde' if sde else 'dpmpp_2m'}:order={c.solver_order}:solver_type="
                f"{_TYPE[c.solver_type]}:third_order=dpm_solver:lower_order_final={_bool(c.lower_order_final)}"
                + ("" if final else ":lower_order_below=16"))
        eta = 1.0 if sde else 0.0
    return from_edm(D, schedule), spec, grid, eta, final
