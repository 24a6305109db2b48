r"""``DiffsolveScheduler``: any fixed-step diffsolve solver as the scheduler of a diffusers pipeline.

A diffusers pipeline owns the network call: it loops ``for t in scheduler.timesteps``, evaluates
the network at ``(latents, t)`` and hands the output to ``scheduler.step``, which returns the
latents for the next call. This scheduler runs diffsolve's one loop with the network outside it
(:func:`diffsolve.loop.drive`): each ``step`` sends the network output to the solver and returns
the input of the solver's next evaluation, so a pipeline runs any fixed-step solver, with its own
grid, noise level and seeds, unchanged, and the result equals ``diffsolve.sample`` with that
network bit for bit (up to the dtype the pipeline keeps its latents in).

**The budget.** ``num_inference_steps`` is read as the budget of *network evaluations* (NFE), the
final denoise included: a two-evaluation solver (``heun``, ``dpmpp_2s``) takes about half as many
steps, and ``len(scheduler.timesteps)`` is the number of network calls the pipeline makes.
``timesteps`` lists the network's time input of every evaluation, known before the first call (the
solver is run once on data-less ``meta`` tensors to find them).

**Conventions.** The latents are the state x_t = α_t x_0 + σ_t ε of the model's own training
schedule (``init_noise_sigma`` = √(α² + σ²) at the first time, 1 for variance-preserving models;
``scale_model_input`` is the identity). The schedule and the prediction type come from the
config (``beta_schedule``, ``trained_betas``, ``rescale_betas_zero_snr``, ``prediction_type``);
the solver, grid and noise level from this scheduler's own options.

References:
    von Platen et al., Diffusers: State-of-the-art diffusion models (github.com/huggingface/diffusers).
"""
from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._diffusers import (_SET_SHIFT, NETWORK_FIELDS, as_flow_config, flow_grid, plan_times, refuse_flow_options,
                         refuse_network_fields, schedule_from_diffusers)
from ._numbers import check_int, check_number
from .denoiser import Denoiser
from .grids import GRIDS, diffusers_grid
from .loop import drive
from .noise import NoiseSource, parse_seeds
from .processes import NoiseLevel
from .defaults import default_run, default_start, prior_flow_scale
from .solvers import default_eta, get_solver
from .thresholding import threshold_from_config
from .tuned import load_grid

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as e:  # pragma: no cover - diffusers is an optional extra
    raise ImportError("DiffsolveScheduler needs diffusers: pip install 'diffsolve[diffusers]'") from e

__all__ = ["DiffsolveScheduler", "DiffsolveSchedulerOutput"]

_OWN_GRIDS = ("diffusers", "flow_dpm")  # the source diffusers class's timesteps; diffusers' flow DPM-Solver's
# the fields that mark a flow-matching config (FlowMatchEulerDiscreteScheduler's), run on a FlowSchedule
_FLOW_FIELDS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "time_shift_type")
_SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "prediction_type", "rescale_betas_zero_snr", "shift", "time_shift_type")
_FLOW_GRID_FIELDS = _FLOW_FIELDS + ("base_image_seq_len", "max_image_seq_len", "num_train_timesteps")
# the classes whose flow configs (use_flow_sigmas) space σ as the flow_dpm grid does (UniPC's start at σ = 1)
_FLOW_DPM_CLASSES = ("DPMSolverMultistepScheduler",)
# x̂0 clipping / thresholding (diffsolve.thresholding)
_THRESHOLD_FIELDS = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio",
                     "sample_max_value")
# the fields of EDM-preconditioned configs (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): not expressible
_EDM_FIELDS = ("sigma_data", "sigma_schedule")
# configs of other processes than the DDPM and flow-matching families, by a field of their own or by class
_OTHER_PROCESSES = {"snr": "a VE score SDE", "sampling_eps": "a VE score SDE", "correct_steps": "a VE score SDE",
                    "s_churn": "Karras et al.'s VE sampler", "scaler": "Würstchen's noise schedule",
                    "num_vec_classes": "VQ diffusion"}
_OTHER_CLASSES = ("ScoreSdeVeScheduler", "ScoreSdeVpScheduler", "KarrasVeScheduler", "IPNDMScheduler",
                  "DDPMWuerstchenScheduler", "VQDiffusionScheduler")


def _class_of_fields(config: dict) -> str | None:
    """The diffusers scheduler class of a config without ``_class_name`` (a scheduler built in memory
    has none; a saved or loaded one has it): the class whose ``__init__`` takes exactly the config's
    fields, or of several such (DDIMScheduler and DDIMParallelScheduler) the one whose timesteps
    diffsolve knows; None if that does not single one out."""
    return _class_of_field_set(frozenset(k for k in config if not k.startswith("_")))


@functools.lru_cache(maxsize=64)
def _class_of_field_set(fields: frozenset) -> str | None:
    import diffusers

    from .grids import DIFFUSERS_SPACING

    found = []
    for name in dir(diffusers):
        if not name.endswith("Scheduler") or name == "DiffsolveScheduler" or name.startswith("Flax"):
            continue
        try:
            c = getattr(diffusers, name)
            init = set(inspect.signature(c.__init__).parameters) - {"self", "kwargs"}
        except Exception:  # a class whose optional dependencies are missing
            continue
        if isinstance(c, type) and init == fields:
            found.append(name)
    known = [n for n in found if n in DIFFUSERS_SPACING or n in _OTHER_CLASSES]
    return found[0] if len(found) == 1 else known[0] if len(known) == 1 else None


# the source scheduler's own sampler settings: replaced by diffsolve's solver, grid and final denoise
# (diffsolve.parity gives the options that reproduce a diffusers scheduler), so not passed on
_SAMPLER_FIELDS = ("set_alpha_to_one", "solver_order", "algorithm_type", "solver_type", "lower_order_final",
                   "euler_at_final", "final_sigmas_type", "use_karras_sigmas", "use_exponential_sigmas",
                   "use_beta_sigmas", "use_lu_lambdas", "lambda_min_clipped", "variance_type", "skip_prk_steps",
                   "predict_x0", "solver_p", "disable_corrector", "interpolation_type", "sigma_min", "sigma_max",
                   "beta_schedule_type", "use_flow_sigmas", "flow_shift",
                   "stochastic_sampling", "shift_terminal")  # (flow configs refuse these two above their defaults)


def _grid_start(schedule) -> dict:
    """Where a grid kind starts, as in :func:`diffsolve.sample`: at :data:`~diffsolve.defaults.START_LOG_SNR` on a
    schedule that starts below it (cosine, zero-terminal-SNR tables), when the exact flow of standard-normal data
    leaves the pipeline's latents unchanged on the way (α² + σ² = 1, variance preserving); else at t_max (a
    pipeline calls the network on the latents it drew before the scheduler could rescale them)."""
    t_start = default_start(schedule)
    if t_start is None or abs(prior_flow_scale(schedule, schedule.t_max, t_start) - 1.0) > 1e-9:
        return {}
    return {"t_start": t_start}


_NOT_PASSED = object()  # step()'s use_clipped_model_output when the pipeline does not pass it (DDIMPipeline does)


@dataclass
class _Plan:
    """What ``set_timesteps`` fixes: the grid, the evaluations' times and labels, the budget."""

    t: Tensor  # (n + 1,) float64 grid
    times: list  # solver time of every evaluation
    labels: Tensor  # (NFE,) the network's time input of every evaluation


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    r"""A diffusers scheduler that runs a diffsolve solver (module docstring).

    ``pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="unipc")``

    Args (the diffusers config fields; from ``from_config``):
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        rescale_betas_zero_snr: the model's training schedule (a :class:`~diffsolve.DDPMSchedule`).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        timestep_spacing, steps_offset: used by ``grid="diffusers"`` only.
        diffusers_class: the diffusers scheduler class whose spacing ``grid="diffusers"`` follows
            (their formulas differ: :func:`diffsolve.grids.diffusers_timesteps`); ``from_config``
            sets it from the source config's ``_class_name``; default DPMSolverMultistepScheduler's.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value:
            x̂0 clipping / thresholding, a property of the denoiser's x̂0 (:mod:`diffsolve.thresholding`).
        shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len, max_image_seq_len,
        time_shift_type: a flow-matching config (SD3, FLUX), run on a :class:`~diffsolve.FlowSchedule`
            (``from_config`` sets ``prediction_type="flow_prediction"``; the default grid of a flow
            config is ``"flow_dpm"``: the shifted σ of diffusers' flow DPM-Solver (``use_flow_sigmas``),
            which starts below σ = 1 and suits multistep solvers, where diffsolve's grid kinds would start at
            σ = 1, spend steps there and ignore the shift; ``grid="diffusers"`` is FlowMatchEulerDiscreteScheduler's
            shifted σ from σ = 1, :func:`diffsolve._diffusers.flow_grid`; a DPMSolverMultistepScheduler config
            with ``use_flow_sigmas`` (Sana) runs as a flow config with ``shift=flow_shift``, flow_dpm then being
            its own spacing). ``set_timesteps`` takes
            ``sigmas`` (FlowMatchEuler's convention, as pipelines pass them) and ``mu`` as diffusers'
            does, and :meth:`set_shift` changes the static shift of the next run as its ``set_shift`` does.
            ``solver="euler", grid="diffusers"`` reproduces FlowMatchEulerDiscreteScheduler (§25).
        variance_type: the source config's (``"learned_range"`` for DeepFloyd IF), kept because pipelines
            read it to decide whether to hand ``step`` the network's variance channels too; ``step`` takes
            either and uses the prediction half (the solvers run the probability-flow ODE or the ν_t family,
            whose noise does not come from a learned variance).
    Args (diffsolve's own):
        solver: a fixed-step solver name or spec ``"name:key=value:..."``; default None: the
            measured default for the budget that ``set_timesteps`` gives, as ``diffsolve.sample``
            picks it (:func:`diffsolve.defaults.default_run`), with its grid and final denoise
            unless those are given, but without its analytic first step (up to 6 evaluations, 9 on
            DDPM and cosine schedules, 20 on flow schedules, ``sample`` answers the first
            evaluation analytically, docs/math.md §27; a pipeline makes every network call itself,
            at the timesteps it is given, so here
            the budget buys one step fewer than in ``sample``).
        grid: a grid kind of :mod:`diffsolve.grids` (default: the default run's, ``"log_snr"``, or ``"karras"``
            with ``deis`` at 7–12 evaluations, 7–20 on EDM schedules, where the run starts at α/σ ≥ 0.0025;
            ``"flow_dpm"`` on flow configs), ``"diffusers"``, ``"flow_dpm"``, or the
            path of a tuned grid (``diffsolve tune``), which fixes the solver, the times and the final
            denoise. ``"diffusers"``: the grid points are the n timesteps that ``diffusers_class``
            chooses with the config's ``timestep_spacing`` and ``steps_offset``, n = the solver's
            steps for the budget + 1 with ``denoise_final`` (whose evaluation is at the last
            timestep, where diffusers steps to σ = 0), else n = its steps, followed by t_min (where
            diffusers' last step goes to ᾱ of timestep 0). :mod:`diffsolve.parity` lists the
            options that reproduce each diffusers scheduler.
        eta: the noise level ν_t = η g_t of the reverse family (stochastic solvers); default: the solver's
            (1 for ``ancestral`` and the SDE solvers, else 0; :func:`diffsolve.solvers.default_eta`); a
            callable noise level t ↦ ν_t, which a JSON config cannot hold, is set by :meth:`set_noise_level`.
        denoise_final: end with x̂0 at the last grid time (one evaluation of the budget); default:
            the default run's for a solver left to the budget, and always on diffusers' own spacings
            (``"diffusers"``, ``"flow_dpm"``, the default of flow configs: their last evaluation is where
            diffusers steps to σ = 0); True for a named solver (diffusers'
            schedulers end on x̂0, and ``diffsolve.parity``'s twins rely on it); a tuned grid's own
            setting. With it, a budget of one evaluation is the final denoise alone, x̂0 at the first time
            (as diffusers' schedulers step to σ = 0 at once from their one timestep).
        seeds: per-sample seeds for the solver's noise (a list or ``"0-3"``; each stream's first draw stands for
            the pipeline's latents and is skipped, as :func:`diffsolve.sample` skips it for a given x); else the
            generator the pipeline passes to ``step`` (one, or a list of one per sample, each sample's noise drawn
            from its own, as diffusers' ``randn_tensor`` draws); else torch's own generator of the latents'
            device, which ``torch.manual_seed`` seeds (as diffusers' schedulers draw without a generator).

    Attributes after ``set_timesteps``, as diffusers names them: ``timesteps`` (the network time input of each
    evaluation), ``sigmas`` (the noise level of each evaluation, then where the run ends: a flow config's σ,
    else σ/α; float32, CPU), ``step_index`` (the next evaluation, None before the first ``step``),
    ``begin_index``, ``num_inference_steps`` (the number of evaluations) and ``init_noise_sigma``.

    Shapes: ``sample`` and ``model_output`` are (B, *shape); ``timestep`` a scalar.

    Raises ``ValueError`` for a config field diffsolve cannot express (named), an adaptive solver,
    a budget too small for the solver, and ``step`` called before ``set_timesteps`` or with a
    timestep other than the solver's next evaluation.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 clip_sample: bool = False, thresholding: bool = False, solver: str | None = None,
                 grid: str | None = None, eta: float | None = None, denoise_final: bool | None = None, seeds=None,
                 diffusers_class: str | None = None, clip_sample_range: float = 1.0,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, base_shift: float = 0.5, max_shift: float = 1.15,
                 base_image_seq_len: int = 256, max_image_seq_len: int = 4096, time_shift_type: str = "exponential",
                 variance_type: str | None = None):
        # the static shift set_timesteps applies to a flow config (set_shift); a config's null shift is no shift
        self._shift = 1.0 if shift is None else float(shift)
        self.schedule, self.prediction = schedule_from_diffusers(self._schedule_config())
        threshold = threshold_from_config(dict(
            clip_sample=clip_sample, clip_sample_range=clip_sample_range, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value))
        self._tuned = load_grid(grid) if grid not in (None, *_OWN_GRIDS) else None
        if grid is not None and self._tuned is None and grid not in (*GRIDS, *_OWN_GRIDS):
            raise ValueError(f"unknown grid {grid!r}; valid: {', '.join((*GRIDS, *_OWN_GRIDS))}, or the path of a "
                             f"tuned grid (.json, from diffsolve tune)")
        spec = self._tuned.solver if self._tuned is not None else solver
        options = self._tuned.solver_options if self._tuned is not None else {}
        # None: the default run of each budget, chosen in set_timesteps (with its grid and final denoise)
        self.solver = get_solver(spec, **(options or {})) if spec is not None else None
        self._grid_kind, self._final = None, denoise_final  # both resolved per budget in set_timesteps
        if self._tuned is not None and denoise_final is None:
            self._final = self._tuned.denoise_final
        if self.solver is not None:
            try:
                self.solver.steps_for_nfe(10 ** 6)  # an adaptive solver says here that it sizes its own steps
            except ValueError as e:
                raise ValueError(f"DiffsolveScheduler runs fixed-step solvers only (a pipeline makes one network "
                                 f"call per entry of scheduler.timesteps, all known before the first): {e}") from None
        # no eta: the solver's own (1 for ancestral and the SDE solvers, as diffusers' EulerAncestral and
        # sde-dpmsolver++ run; else 0)
        self.level = NoiseLevel(self.schedule, eta=default_eta(self.solver) if eta is None else eta)
        if self.solver is None and not self.level.is_zero:
            default_run(1, self.schedule, stochastic=True)  # refused here, naming the stochastic solvers
        self.seeds = parse_seeds(seeds, distinct=True) if seeds is not None else None
        if seeds is not None and not isinstance(seeds, str):  # the config holds them as text ("0-3"): a range,
            self.register_to_config(seeds=self.seeds.spec)  # a tensor or a Seeds would not save as JSON
        self._threshold = threshold
        self._converter = self._make_converter()
        self.plan: _Plan | None = None
        self._said_clipped = False
        self.timesteps = None
        self.sigmas = None
        self._step_index = None
        self.num_inference_steps = None
        self._begin = 0
        self._reset_run()
        self._ended = False
        self.init_noise_sigma = 1.0

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``, after checking the whole source config (defaults
        included): a flow-matching config or a field diffsolve cannot express is refused by name."""
        full = dict(config or {})
        # a flow-matching config: FlowMatchEulerDiscreteScheduler's (a shift, no betas) or a DPM-Solver's
        # with use_flow_sigmas (DDPM-family configs of recent diffusers carry unused flow fields too)
        if full.get("use_flow_sigmas"):  # a DPM-Solver config of a flow model (Sana): a flow config with
            # shift = flow_shift, whose own spacing is the flow_dpm grid (its betas describe no training schedule)
            source = full.get("_class_name") or _class_of_fields(full)
            if source not in _FLOW_DPM_CLASSES:
                raise ValueError(f"DiffsolveScheduler does not reproduce the σ spacing of {source or 'this config'} "
                                 f"with use_flow_sigmas=True (DPMSolverMultistepScheduler's it does); give a "
                                 f"FlowMatchEulerDiscreteScheduler config with shift=<flow_shift> instead")
            full = {**as_flow_config(full), "_class_name": source}
        flow = "beta_start" not in full and any(k in full for k in _FLOW_FIELDS)
        if flow:
            refuse_flow_options(full, "DiffsolveScheduler")
            kwargs.setdefault("prediction_type", "flow_prediction")
        # what the source scheduler does, its defaults included (diffusers' from_config drops defaulted fields)
        for name in _THRESHOLD_FIELDS + (_FLOW_GRID_FIELDS if flow else ()):
            if name in full and name not in kwargs:
                kwargs[name] = full[name]
        edm = [k for k in _EDM_FIELDS if k in full]
        if edm:
            raise ValueError(f"DiffsolveScheduler does not run EDM-preconditioned configs (fields {', '.join(edm)}: "
                             f"{full.get('_class_name', 'an EDM scheduler')} scales the network's input, time and "
                             f"output); use diffsolve.adapters.from_edm with diffsolve.sample")
        refuse_network_fields(full, "DiffsolveScheduler")
        source = full.get("_class_name") or (None if "solver" in full else _class_of_fields(full))
        if source is None and "solver" not in full and kwargs.get("grid") == "diffusers" and not (
                kwargs.get("diffusers_class") or full.get("diffusers_class")):
            raise ValueError("grid='diffusers' places the timesteps as the source scheduler class does, and this config "
                             "does not say which class it is (a scheduler built in memory has no _class_name): pass "
                             "diffusers_class=type(pipe.scheduler).__name__")
        other = next((what for k, what in _OTHER_PROCESSES.items() if k in full), None)
        if other is not None or source in _OTHER_CLASSES:
            raise ValueError(f"the {source or 'source scheduler'} config describes {other or 'another process'}, not a "
                             f"DDPM-family or flow-matching one, which DiffsolveScheduler runs; wrap the model with "
                             f"the diffsolve.adapters function for its process (from_score_sde for a score SDE, "
                             f"from_edm / from_k_diffusion for σ-parametrised models) and use diffsolve.sample")
        if "diffusers_class" not in kwargs and "diffusers_class" not in full and source not in (None, cls.__name__):
            kwargs["diffusers_class"] = source
        # every value of the source config is the source's (its class's defaults included): diffusers would
        # replace those it lists as defaults by DiffsolveScheduler's own (another training schedule)
        full.pop("_use_default_values", None)
        full = {k: v for k, v in full.items()  # checked above: dropped, as diffusers would with a warning
                if k not in NETWORK_FIELDS and (k not in _SAMPLER_FIELDS or k in cls._get_init_keys(cls))}
        return super().from_config(full, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- the plan --------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      mu: float | None = None):
        """Fix the run: a budget of ``num_inference_steps`` network evaluations, or explicit
        ``timesteps`` (network time inputs, strictly decreasing, within the training timesteps): the
        grid, whose last time is the final denoise's when ``denoise_final`` (so a one-evaluation
        solver evaluates exactly at these timesteps, as diffusers' DDIM with ``set_alpha_to_one``
        does), else followed by a last step to the schedule's t_min; a last timestep at t_min itself
        is evaluated there as the final denoise, so every timestep given is an evaluation. Flow-matching configs also take ``sigmas`` (the grid, shifted as
        diffusers shifts them) and the dynamic shift ``mu`` (required with ``use_dynamic_shifting``,
        ignored without, as in diffusers)."""
        flow = self.config.prediction_type == "flow_prediction"
        if (sigmas is not None or mu is not None) and not flow:
            raise ValueError("sigmas= and mu= are for flow-matching configs (FlowMatchEulerDiscreteScheduler's); "
                             "this is a DDPM-family config: give num_inference_steps or timesteps")
        if sigmas is not None:
            if timesteps is not None or num_inference_steps not in (None, len(sigmas)):
                raise ValueError("sigmas fix the grid: give them without timesteps (and num_inference_steps, if "
                                 "given, equal to len(sigmas))")
            num_inference_steps = None
        elif (num_inference_steps is None) == (timesteps is None):
            raise ValueError("give exactly one of num_inference_steps (a budget of network evaluations) or timesteps")
        if num_inference_steps is not None:
            check_int("num_inference_steps", num_inference_steps, hint=" (network evaluations)")
        if timesteps is not None:
            timesteps = self._checked_timesteps(timesteps)
            if flow and (self.config.use_dynamic_shifting or self._shift != 1.0):
                warnings.warn("timesteps= on a shifted flow config: diffusers shifts their σ = timestep/N and still "
                              "gives the network the unshifted timesteps; DiffsolveScheduler evaluates at σ = "
                              "timestep/N, where the label is the state's, so the two runs differ; pass sigmas= for "
                              "diffusers' shifted spacing", UserWarning, stacklevel=2)
        budget = num_inference_steps if num_inference_steps is not None else len(
            sigmas if sigmas is not None else timesteps)
        self._resolve(int(budget), given=timesteps is not None or sigmas is not None)
        if (timesteps is not None and not self._final and self.config.denoise_final is None
                and float(self.schedule.t_of_timestep(timesteps[-1])) <= self.schedule.t_min * (1 + 1e-12)):
            self._final = True  # the last timestep is t_min itself: evaluated there as x̂0, so every timestep given
            # is an evaluation (without it, t_min was the end of the last step and one timestep went unevaluated)
        # the grid is diffusers' own: the source class's spacing, the pipeline's timesteps or sigmas (flow_dpm, the
        # default of flow configs, is DPM-Solver's flow spacing, not FlowMatchEuler's: a strength starts elsewhere)
        dpm_class = flow and self.config.diffusers_class in _FLOW_DPM_CLASSES  # flow_dpm is the source's spacing
        self._diffusers_spacing = (timesteps is not None or sigmas is not None or self._tuned is not None
                                   or self._grid_kind == "diffusers" or (dpm_class and self._grid_kind == "flow_dpm"))
        if flow and timesteps is None and (sigmas is not None or self._grid_kind in _OWN_GRIDS):
            dpm = self._grid_kind == "flow_dpm" or (dpm_class and self._grid_kind == "diffusers")
            spacing = "dpm" if dpm and sigmas is None else "euler"
            t = flow_grid({**self.config, _SET_SHIFT: self._shift}, self.schedule, self.solver, num_inference_steps,
                          sigmas=sigmas, mu=mu, denoise_final=self._final, spacing=spacing)
        else:
            t = self._grid(num_inference_steps, timesteps)
        self.plan = self._dry_run(t)
        labels = self.plan.labels
        if num_inference_steps is None and len(labels) > budget:  # given sigmas or timesteps, each a step
            given = "sigmas" if sigmas is not None else "timesteps"
            warnings.warn(f"on the {budget} {given} given, solver {self.solver.name!r} makes {len(labels)} network "
                          f"evaluations (it spends more than one per step), more than the {budget} the pipeline asked "
                          f"for; len(scheduler.timesteps) is the true count, and a one-evaluation solver (e.g. "
                          f"dpmpp_2m, unipc) keeps the budget", UserWarning, stacklevel=2)
        if bool((labels == labels.round()).all()):  # whole training timesteps (grid "diffusers"): as diffusers'
            labels = labels.to(torch.int64)  # DDIM/DDPM give them, which a time embedding by index needs
        self.timesteps = labels.to(device) if device is not None else labels
        self.num_inference_steps = len(self.timesteps)
        self.sigmas = self._sigmas(flow)
        self._step_index = None
        self.init_noise_sigma = float((self.schedule.alpha(t[0]) ** 2 + self.schedule.sigma(t[0]) ** 2).sqrt())
        self._begin = 0
        self._reset_run()
        self._ended = False

    def _sigmas(self, flow: bool) -> Tensor:
        """diffusers' ``sigmas`` of the run: the noise level at each evaluation, then where the run ends, in the
        source's convention (a flow config's σ_t; else the VE σ/α = √((1 − ᾱ)/ᾱ) of the Euler and DPM-Solver
        schedulers), float32 on the CPU. The last entry is 0 after a final denoise (the output is x̂0), else that
        of t_min; pipelines read ``sigmas[i]`` as the level of ``timesteps[i]``."""
        sch, times = self.schedule, self.plan.times
        t = torch.stack([torch.as_tensor(s, dtype=torch.float64).reshape(()) for s in times]
                        + [torch.as_tensor(self.plan.t[-1], dtype=torch.float64).reshape(())])
        alpha, sigma = sch.alpha_sigma(t)
        level = sigma if flow else sigma / alpha
        if self._final:
            level[-1] = 0.0
        return level.to(torch.float32)

    @property
    def step_index(self):
        """The index of the next evaluation in ``timesteps`` (diffusers' ``step_index``): None from
        :meth:`set_timesteps` until the first :meth:`step`, then one more after each."""
        return self._step_index

    def _checked_timesteps(self, timesteps) -> Tensor:
        """A pipeline's ``timesteps``, checked in its own units (network time inputs): 1-D, finite, strictly
        decreasing, within this config's training timesteps."""
        try:
            ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"timesteps must be a sequence of numbers, got {type(timesteps).__name__}") from None
        if ts.dim() != 1 or len(ts) < 1 or not bool(torch.isfinite(ts).all()):
            raise ValueError(f"timesteps must be a non-empty 1-D sequence of finite numbers, got {timesteps!r}")
        step = ts[1:] - ts[:-1]
        if bool((step >= 0).any()):
            k = int((step >= 0).nonzero()[0])
            raise ValueError(f"timesteps must be strictly decreasing (from noise to data): timesteps[{k}] = "
                             f"{float(ts[k]):g} is followed by timesteps[{k + 1}] = {float(ts[k + 1]):g}")
        label = self._converter.time_label
        sch = self.schedule
        lo, hi = (float(label(torch.tensor(t, dtype=torch.float64))) for t in (sch.t_min, sch.t_max))
        tol = 1e-9 * max(1.0, abs(hi))
        if float(ts.max()) > hi + tol or float(ts.min()) < lo - tol:
            raise ValueError(f"timesteps must lie within this config's training timesteps, [{lo:g}, {hi:g}]; got "
                             f"{float(ts.min()):g} to {float(ts.max()):g}")
        return ts

    def _resolve(self, budget: int, given: bool = False):
        """The solver, grid kind and final denoise of a run of ``budget`` evaluations: those the config
        names, the rest from the measured default run (:func:`diffsolve.defaults.default_run`, on the grid
        the config names or on the ``given`` timesteps/sigmas) when no solver is named, else the named
        solver's own rule for the final denoise."""
        cfg = self.config
        flow = cfg.prediction_type == "flow_prediction"  # a flow config runs on diffusers' shifted σ (class docstring)
        if cfg.solver is None and self._tuned is None:
            grid = "given" if given else cfg.grid
            run = default_run(budget, self.schedule, stochastic=not self.level.is_zero, grid=grid)
            self.solver = get_solver(run.solver)
            self._grid_kind = ("flow_dpm" if flow else run.grid) if cfg.grid is None else cfg.grid
            # diffusers' own spacings place the last evaluation where diffusers steps to σ = 0: a run on them
            # ends with the final denoise (without it, one step from that σ, e.g. 0.17 on a shifted flow
            # grid, to t_min would carry most of the error)
            own_spacing = self._grid_kind in _OWN_GRIDS
            self._final = (own_spacing or run.denoise_final) if cfg.denoise_final is None else cfg.denoise_final
            return
        self._grid_kind = ("flow_dpm" if flow else "log_snr") if cfg.grid is None else cfg.grid
        if cfg.denoise_final is None and self._tuned is None:
            self._final = True  # a named solver ends as diffusers' schedulers do: its last step lands on x̂0

    def _grid(self, nfe, timesteps) -> Tensor:
        sch, final = self.schedule, self._final
        if timesteps is not None:  # the evaluations' times; the last is the final denoise's, or else
            t = sch.t_of_timestep(torch.as_tensor(timesteps, dtype=torch.float64).cpu().reshape(-1))
            if not final and float(t[-1]) > sch.t_min:  # the last step ends at the schedule's t_min
                t = torch.cat([t, torch.tensor([sch.t_min], dtype=torch.float64)])
            return self.solver.grid_for(sch, grid=t, denoise_final=final)
        if self._tuned is not None:
            if int(nfe) != self._tuned.nfe:
                raise ValueError(f"the tuned grid {self.config.grid} was tuned for {self._tuned.nfe} evaluations, "
                                 f"not num_inference_steps={nfe}")
            return self._tuned.grid
        if self._grid_kind == "diffusers":  # the n timesteps of the source class (class docstring)
            t = diffusers_grid(sch, plan_times(self.solver, nfe, final), self.config.timestep_spacing,
                               steps_offset=self.config.steps_offset,
                               scheduler=self.config.diffusers_class or "DPMSolverMultistepScheduler",
                               end_at_t_min=not final)
            return self.solver.grid_for(sch, grid=t, denoise_final=final)
        if final and plan_times(self.solver, nfe, final) == 1:  # the final denoise alone, at the kind's first time
            return self.solver.grid_for(sch, steps=1, grid=self._grid_kind, **_grid_start(sch))[:1]
        return self.solver.grid_for(sch, nfe=nfe, grid=self._grid_kind, denoise_final=final, **_grid_start(sch))

    def _dry_run(self, t: Tensor, solver=None) -> _Plan:
        """The solver (default the scheduler's) on data-less ``meta`` tensors: the times and labels of its
        evaluations."""
        x = torch.empty(1, 1, dtype=torch.float64, device="meta")
        gen = drive(solver or self.solver, self.schedule, x, t, prediction=self.prediction, level=self.level,
                    source=_MetaSource(), denoise_final=self._final)
        times = []
        try:
            request = next(gen)
            while True:
                times.append(request.t)
                request = gen.send(torch.zeros_like(request.x))
        except StopIteration:
            pass
        label_fn = self._converter.time_label
        labels = torch.stack([torch.as_tensor(label_fn(torch.as_tensor(s, dtype=torch.float64))).reshape(())
                              for s in times])
        return _Plan(t, times, labels)

    # --- the run ---------------------------------------------------------------------------------
    def _reset_run(self):
        self._deferred = []  # (evaluation, expected label, the pipeline's timestep on its device)
        self._gen = None
        self._request = None
        self._index = 0
        self._last = None

    def _make_converter(self) -> Denoiser:
        """The model output → x̂0 conversion of this config (a Denoiser of the identity network)."""
        return Denoiser(lambda x, label: x, self.schedule, prediction=self.prediction, threshold=self._threshold)

    def _schedule_config(self) -> dict:
        """The config fields that define the training schedule, with the current shift."""
        return {**{k: self.config[k] for k in _SCHEDULE_FIELDS}, _SET_SHIFT: self._shift}

    @property
    def shift(self) -> float:
        """The static timestep shift s that :meth:`set_timesteps` applies to a flow config's σ (the config's
        ``shift`` until :meth:`set_shift`)."""
        return self._shift

    def set_shift(self, shift: float):
        """Use the static timestep shift ``shift`` from the next :meth:`set_timesteps` on, as
        ``FlowMatchEulerDiscreteScheduler.set_shift`` does: the config, and with it diffusers' σ_min =
        s₀(1/N), keep the shift they were built with (docs/math.md (25.6)). Flow-matching configs only;
        with ``use_dynamic_shifting`` the run's ``mu`` decides the shift, as in diffusers."""
        if self.config.prediction_type != "flow_prediction":
            raise ValueError("set_shift shifts the σ of a flow-matching config (FlowMatchEulerDiscreteScheduler's); "
                             "this is a DDPM-family config, whose timesteps have no shift")
        self._shift = check_number("shift", shift, positive=True)
        self.schedule, _ = schedule_from_diffusers(self._schedule_config())
        self.level = NoiseLevel(self.schedule, eta=self.level.eta, noise=self.level.noise)
        self._converter = self._make_converter()
        self.plan = None

    def set_noise_level(self, noise: Callable | None = None, eta: float | None = None):
        """The reverse family's noise level for the next run: a callable t ↦ ν_t ≥ 0 (``noise``) or
        ν = η g (``eta``), as in :func:`diffsolve.sample`; call :meth:`set_timesteps` after it."""
        self.level = NoiseLevel(self.schedule, eta=eta, noise=noise)
        self.plan = None

    def set_begin_index(self, begin_index: int = 0):
        """Start at evaluation ``begin_index`` (img2img, inpainting): the solve restarts from the grid
        time of that evaluation, which must begin a step (diffusers passes t_start · order)."""
        begin_index = int(begin_index)
        if begin_index == 0:
            self._begin = 0
            return
        if self.plan is None:
            raise ValueError("call set_timesteps before set_begin_index")
        per_step = self.solver.nfe_per_step
        if not 0 < begin_index < len(self.plan.times) or begin_index % per_step:
            raise ValueError(f"the run cannot start at evaluation {begin_index} of {len(self.plan.times)}: solver "
                             f"{self.solver.name!r} spends {per_step} evaluations per step and a solve can only start "
                             f"where a step starts (img2img/inpainting start at num_inference_steps - "
                             f"int(num_inference_steps * strength)); choose a strength or budget that makes it a "
                             f"multiple of {per_step}, or a one-evaluation solver")
        start = self.plan.times[begin_index]
        t = self.plan.t[self.plan.t <= float(start) + 1e-12]
        solver = self.solver.restarted(len(self.plan.t) - len(t))
        sub = self._dry_run(solver.grid_for(self.schedule, grid=t, denoise_final=self._final), solver)
        rest = self.plan.labels[begin_index:]
        if len(sub.labels) != len(rest) or not torch.allclose(sub.labels, rest, rtol=0, atol=1e-6):
            raise ValueError(f"evaluation {begin_index} does not begin a step of {self.solver.name!r}; start the run "
                             f"at a step boundary")
        self._restart_plan, self._restart_solver, self._begin = sub, solver, begin_index
        if not self._diffusers_spacing:
            warnings.warn(f"img2img/inpainting start at evaluation {begin_index} of {len(self.plan.times)}: on this "
                          f"{self._grid_kind!r} grid that is timestep {float(rest[0]):.4g}, not where diffusers' own "
                          f"spacing puts it (a strength means another noise level there); grid='diffusers' keeps "
                          f"diffusers' meaning", UserWarning, stacklevel=2)

    @property
    def begin_index(self):
        return self._begin

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the network takes the state x_t itself."""
        return sample

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True,
             eta: float | None = None, use_clipped_model_output=_NOT_PASSED, variance_noise=None):
        """Hand the network's output at ``(sample, timestep)`` to the solver; returns the input of
        its next evaluation as ``prev_sample`` (the final sample after the last one) and x̂0 of this
        evaluation as ``pred_original_sample`` (with ``return_dict=False`` the tuple of the two, as
        diffusers' DDIM, DDPM and Euler schedulers return it; pipelines take its first entry).

        ``eta`` and ``use_clipped_model_output`` are taken for the pipelines that pass them
        (``DDIMPipeline``): the noise level is the scheduler's own (``eta`` of its config), so a
        pipeline's ``eta`` of 0 or of that level is accepted and any other refused; with a threshold the
        solver always continues from the thresholded x̂0, which is what ``use_clipped_model_output``
        asks. ``variance_noise`` (noise chosen by the pipeline) is refused: the solver draws its own."""
        if self.plan is None:
            raise ValueError("step() called before set_timesteps(); call set_timesteps first")
        if eta is not None and float(eta) != 0.0 and float(eta) != float(self.level.eta or 0.0):
            raise ValueError(f"the pipeline passes eta={eta!r} to step(), but DiffsolveScheduler's noise level is "
                             f"part of its config (eta={self.level.eta!r}): make it with "
                             f"DiffsolveScheduler.from_config(config, eta={eta!r}, solver=<a stochastic solver such as "
                             f"'ddim'>)")
        if variance_noise is not None:
            raise ValueError("step(variance_noise=...) is not supported: DiffsolveScheduler's solver draws its own "
                             "noise, from the generator passed to step() or the scheduler's seeds")
        if (use_clipped_model_output is not _NOT_PASSED and not use_clipped_model_output and not self._said_clipped
                and self._converter.threshold is not None):  # a DDIM pipeline's choice that the solver cannot make
            self._said_clipped = True
            warnings.warn("the config clips x̂0 (clip_sample/thresholding) and step() is called with "
                          f"use_clipped_model_output={use_clipped_model_output!r} (DDIMPipeline's default): diffusers' "
                          "DDIM then continues with the network's raw ε̂, DiffsolveScheduler with the ε̂ of the clipped "
                          "x̂0 (as use_clipped_model_output=True), so the two differ where x̂0 is clipped",
                          UserWarning, stacklevel=2)
        model_output = self._one_output(model_output, sample)
        if self._gen is None:
            self._start(sample, generator)
        elif self._last is not None and sample is not self._last and not torch.equal(sample, self._last):
            raise ValueError("the pipeline changed the latents between steps; DiffsolveScheduler keeps the solver's "
                             "own state and cannot take an edited one (inpainting with a non-inpainting model)")
        request, index = self._request, self._index
        self._check_timestep(timestep, request)
        x0 = self._converter.from_output(model_output.to(torch.float64), request.x.to(torch.float64), request.t, "x0")
        try:  # with a threshold the solver takes the thresholded x̂0 (its loop then runs on prediction "x0")
            self._request = self._gen.send(x0 if self._converter.threshold is not None else model_output)
            prev = self._request.x
        except StopIteration as stop:
            prev = stop.value.x
            self._check_deferred_timesteps()
            self._reset_run()
            self._ended = True  # a further step() starts a new run from the first timestep
        prev = prev.to(sample.dtype)
        if self._gen is not None:
            self._last = prev
        self._step_index = index + 1
        self._index += 1
        out = DiffsolveSchedulerOutput(prev_sample=prev, pred_original_sample=x0.to(sample.dtype))
        return out if return_dict else out.to_tuple()  # (prev_sample, pred_original_sample), as DDIM's and Euler's

    @staticmethod
    def _one_output(model_output: Tensor, sample: Tensor) -> Tensor:
        """The network's prediction: a learned-variance output (2C channels for C, diffusers' ``learned`` /
        ``learned_range``) gives its first C channels, as diffusers' DDPM splits it; another shape is refused."""
        if model_output.shape == sample.shape:
            return model_output
        if (model_output.dim() >= 2 and model_output.shape[1] == 2 * sample.shape[1]
                and model_output.shape[0] == sample.shape[0] and model_output.shape[2:] == sample.shape[2:]):
            return model_output[:, : sample.shape[1]]
        raise ValueError(f"model_output has shape {tuple(model_output.shape)} for a sample of shape "
                         f"{tuple(sample.shape)}: give the network's prediction, of the sample's shape (or twice its "
                         f"channels for a learned variance, whose first half is the prediction)")

    def _start(self, sample: Tensor, generator):
        plan, solver = (self.plan, self.solver) if self._begin == 0 else (self._restart_plan, self._restart_solver)
        B, event = sample.shape[0], tuple(sample.shape[1:])
        if self.seeds is not None:
            # the pipeline's latents stand for each stream's first draw (x_T), as in sample(x=latents, seeds=...)
            source = NoiseSource(B, event, seeds=self.seeds, device=sample.device, skip_start=True)
        else:  # a generator, a list of one per sample (diffusers' pipelines), or none
            source = NoiseSource(B, event, generator=generator, device=sample.device, draw_dtype=sample.dtype,
                                 global_rng=True)  # no generator: torch's own, as diffusers' schedulers draw
        handoff = "x0" if self._converter.threshold is not None else self.prediction
        self._gen = drive(solver, self.schedule, sample.to(torch.float64), plan.t, prediction=handoff,
                          net_dtype=sample.dtype, level=self.level, source=source,
                          denoise_final=self._final)
        self._request = next(self._gen)
        self._index = self._begin

    def _check_timestep(self, timestep, request):
        """The pipeline must call step at the solver's next evaluation. A timestep on an accelerator is
        compared there and read back once, when the run ends (no host synchronisation per step)."""
        want = float(self.plan.labels[self._index])
        ts = torch.as_tensor(timestep).reshape(-1)[0]
        ended, self._ended = self._ended, False
        if ts.device.type != "cpu":
            self._deferred.append((self._index, want, ts))
            return
        self._timestep_error(self._index, float(ts), want, ended)

    @staticmethod
    def _timestep_error(index: int, got: float, want: float, ended: bool = False):
        if abs(got - want) <= 1e-4 * max(1.0, abs(want)):
            return
        if ended:
            raise ValueError(f"step() called with timestep {got:g} after the run's last evaluation: the run has "
                             f"ended (its output was the last prev_sample), and a new one starts at timestep {want:g}; "
                             f"call set_timesteps and step once per entry of scheduler.timesteps")
        raise ValueError(f"step() called with timestep {got:g}, but the solver's evaluation {index} is at "
                         f"timestep {want:g}; call step once per entry of scheduler.timesteps, in order")

    def _check_deferred_timesteps(self):
        if self._deferred:
            got = torch.stack([ts.double() for _, _, ts in self._deferred]).cpu().tolist()
            for (index, want, _), g in zip(self._deferred, got):
                self._timestep_error(index, g, want)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """x_t = α_t x_0 + σ_t ε at the times whose network labels are ``timesteps``."""
        t = self.schedule.t_of_timestep(torch.as_tensor(timesteps, dtype=torch.float64).cpu().reshape(-1))
        a, s = (v.to(original_samples.device, original_samples.dtype) for v in self.schedule.alpha_sigma(t))
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return a.reshape(shape) * original_samples + s.reshape(shape) * noise

    def scale_noise(self, sample: Tensor, timestep, noise: Tensor) -> Tensor:
        """Flow-matching pipelines' name for :meth:`add_noise`: x = (1 − σ) x_0 + σ ε at σ = timestep/1000."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self):
        return self.config.num_train_timesteps


@dataclass
class DiffsolveSchedulerOutput(BaseOutput):
    """``step``'s result: ``prev_sample``, the next network input (or the final sample), and
    ``pred_original_sample``, x̂0 of the evaluation just made; both (B, *shape)."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class _MetaSource:
    """A random source of data-less tensors (the dry run draws without numbers)."""

    def randn(self, rows=None, *, dtype=None):
        return torch.empty(1, 1, dtype=torch.float64, device="meta")
