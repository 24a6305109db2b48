r"""The one integration loop: every solver, fixed-step or adaptive, ODE or SDE, runs through here.

:func:`integrate` checks the solver against the problem once, then either steps a fixed-step solver
over the grid (``init`` once, ``step`` per grid interval) or hands an adaptive solver the grid's end
points (``solve``); both may end with the final denoise x̂0(x, t_n). ``sample``, the tuners and the
benchmark runner are thin layers on top of it.

The loop reads nothing back from the device per step: grid quantities are float64 host values
precomputed by :class:`~diffsolve.solvers.base.StepContext`, and non-finite network outputs on an
accelerator are flagged on the device and read once, after the loop (``tests/test_no_sync.py``
runs every fixed-step solver on data-less ``meta`` tensors to prove it).

:func:`drive` runs the same loop with the network *outside* it: a generator that yields each
network evaluation the solver needs and receives the network's output, so a caller that owns the
network call (a diffusers pipeline, a serving loop) can drive any solver one evaluation at a time.
"""
from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Generator, NamedTuple

import torch
from torch import Tensor

from .denoiser import Denoiser
from .noise import NoiseSource
from .processes import NoiseLevel
from .solvers.base import Solver, StepContext
from .solvers.registry import stochastic_solver_names

__all__ = ["integrate", "Solution", "drive", "Evaluation"]


class Solution(NamedTuple):
    """What :func:`integrate` returns.

    Attributes:
        x: (B, *shape) state at the last grid time (after the final denoise, if asked for).
        trajectory: states at every grid point, each (B, *shape) (and after the final denoise),
            when asked for; else None. Fixed-step solvers only.
        info: the solver's own statistics (adaptive solvers: accepted and rejected steps, ...).
    """

    x: Tensor
    trajectory: list | None = None
    info: dict | None = None


def integrate(solver: Solver, denoiser: Denoiser, x: Tensor, t: Tensor, *, level: NoiseLevel,
              source: NoiseSource | None = None, denoise_final: bool = False, trajectory: bool = False,
              callback: Callable | None = None, analytic_first_step: bool = False) -> Solution:
    """Run ``solver`` from state ``x`` at t[0] over the decreasing float64 grid ``t``.

    A fixed-step solver steps from t[i] to t[i + 1] for every i; an adaptive one integrates from
    t[0] to t[-1] with the steps it chooses. ``denoise_final`` replaces the last state by
    x̂0(x, t[-1]) (one more evaluation).

    Args:
        solver: a :class:`~diffsolve.solvers.base.Solver` instance.
        denoiser: the network as a :class:`~diffsolve.Denoiser` (evaluations are counted there).
        x: (B, *shape) state at t[0], in the dtype the solver state should have.
        t: (n + 1,) strictly decreasing float64 times.
        level: the noise level ν_t of the reverse family (``NoiseLevel(schedule, 0.0)``: the
            probability-flow ODE).
        source: the random source of stochastic solvers (per-sample seeds or a generator).
        trajectory: keep the state at every grid point (fixed-step solvers).
        callback: ``callback(i, x)`` after each fixed step.
        analytic_first_step: answer the first evaluation, at t[0], with
            :meth:`~diffsolve.Denoiser.prior_output` (the exact network of standard-normal data)
            instead of a network call (docs/math.md §27; fixed-step solvers): the run makes one
            network call fewer than its steps need.
    """
    ctx = StepContext(denoiser, level, t, source, denoise_final)
    check_run(solver, ctx, trajectory, analytic_first_step)
    try:
        with denoiser.one_run():
            return _integrate(solver, denoiser, ctx, x, t, denoise_final, trajectory, callback, analytic_first_step)
    finally:  # the location of a network call belongs to this run: a failed run must not leave it to the next
        denoiser._where[0] = ""


def _integrate(solver, denoiser, ctx, x, t, denoise_final, trajectory, callback, analytic_first_step) -> Solution:
    """:func:`integrate` after its checks."""
    denoiser.prime(ctx.t, x)  # labels and conversion coefficients of the whole grid, vectorised
    if solver.adaptive:
        try:
            x, info = solver.solve(ctx, x)
        except Exception:  # a NaN the network made on an accelerator (checked once, after the solve) is the
            denoiser.check_finite()  # cause to report, not the step-size control it then broke
            raise
        traj = None
    else:
        if analytic_first_step:
            denoiser._analytic_at = ctx.times[0]
        try:
            x, traj = _steps(solver, ctx, x, trajectory, callback)
        finally:
            missed, denoiser._analytic_at = denoiser._analytic_at is not None, None
        if missed:  # every fixed-step solver evaluates at t[0] first; one that does not is a bug here
            raise RuntimeError(f"solver {solver.name!r} made no evaluation at t[0] = {ctx.times[0]!r}: "
                               f"the analytic first step was not used")
        info = {}
    n, where = ctx.steps, denoiser._where  # location for error messages, formatted on demand
    if denoise_final:
        where[0] = (solver.name, n, n, ctx.times)
        x = denoiser.x0(x, t[n])
        if traj is not None:
            traj.append(x)
    where[0] = ""
    denoiser.check_finite()
    return Solution(x, traj, info)


def check_run(solver: Solver, ctx: StepContext, trajectory: bool, analytic_first_step: bool = False):
    """The checks of a run before its first step (the solver's own first); :func:`diffsolve.generate.generate`
    makes them before its folder."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a diffsolve Solver instance, got {type(solver).__name__}; "
                        f"build one with diffsolve.solvers.get_solver(name)")
    if ctx.steps == 0:  # a grid of one time: the final denoise alone (a diffusers plan of one evaluation)
        if not ctx.denoise_final or analytic_first_step or solver.adaptive:
            raise ValueError("a grid of one time makes no step: it is a run only as the final denoise alone "
                             "(denoise_final=True, a fixed-step solver, without the analytic first step); give a "
                             "grid of two or more times")
    else:
        solver.check(ctx)  # the solver's own checks first: their messages are the most specific
    if not solver.stochastic and not ctx.level.is_zero:
        raise ValueError(f"solver {solver.name!r} integrates the probability-flow ODE only (eta=0); "
                         f"for eta > 0 pick a stochastic solver: {', '.join(stochastic_solver_names())}")
    if solver.adaptive and trajectory:
        raise ValueError(f"solver {solver.name!r} chooses its own steps: it keeps no trajectory on a grid; "
                         f"use a fixed-step solver for trajectory=True")
    if solver.adaptive and analytic_first_step:
        raise ValueError(f"solver {solver.name!r} chooses its own steps, and the analytic first step replaces the "
                         f"first evaluation of a fixed grid; use a fixed-step solver, or analytic_first_step=False")


def _steps(solver: Solver, ctx: StepContext, x: Tensor, trajectory: bool, callback):
    """The fixed-step loop: ``init`` once, ``step`` per grid interval."""
    traj = [x] if trajectory else None
    n = ctx.steps
    if n == 0:
        return x, traj
    state = solver.init(ctx, x)
    where, times = ctx.denoiser._where, ctx.times
    for i in range(n):
        where[0] = (solver.name, i, n, times)
        x, state = solver.step(ctx, i, x, state)
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(i, x)
    return x, traj


# --- driven from outside: one network evaluation at a time --------------------------------------
@dataclass
class Evaluation:
    """A network evaluation the loop needs, yielded by :func:`drive`.

    Attributes:
        x: (B, *shape) the network's input, in its dtype.
        label: (B,) the network's own time input (the denoiser's ``time_label`` of t).
        t: the solver time of the evaluation (a float, or a float64 tensor of per-row times).
        index: 0 for the first evaluation of the solve, then 1, 2, ...
    """

    x: Tensor
    label: Tensor
    t: object
    index: int


@dataclass
class _Handoff:
    to_caller: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    to_loop: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    count: int = 0
    t: object = None  # the time of the evaluation under way


class _Cancelled(Exception):
    """The caller stopped driving the loop (the generator was closed)."""


_CANCEL = object()


def drive(solver: Solver, schedule, x: Tensor, t: Tensor, *, prediction: str = "eps", time_label="default",
          net_dtype: torch.dtype | None = None, level: NoiseLevel | None = None,
          source: NoiseSource | None = None, denoise_final: bool = False
          ) -> Generator[Evaluation, Tensor, Solution]:
    """:func:`integrate` with the network called by the caller, one evaluation at a time.

    A generator: each ``yield`` is an :class:`Evaluation` (the network's input and time label);
    ``send`` it the network's output (shape of ``Evaluation.x``, of type ``prediction``); its return
    value (``StopIteration.value``, or ``yield from``'s value) is the :class:`Solution`. The same
    loop and the same solver code run as in :func:`integrate` (in a worker thread that waits while
    the caller evaluates the network), so the result equals ``integrate`` with that network, bit
    for bit. Closing the generator early stops the solve.

    Example::

        gen = drive(get_solver("unipc"), schedule, x_T, t, prediction="eps")
        request = next(gen)
        try:
            while True:
                request = gen.send(unet(request.x, request.label))
        except StopIteration as stop:
            x0 = stop.value.x

    Args: as :func:`integrate`, with the denoiser's ``schedule``, ``prediction``, ``time_label``
    and ``net_dtype`` (:class:`~diffsolve.Denoiser`) instead of the denoiser; ``level`` defaults to
    the probability-flow ODE.
    """
    hand = _Handoff()

    def remote_net(x_in: Tensor, label: Tensor) -> Tensor:
        hand.to_caller.put(("eval", Evaluation(x_in, label, hand.t, hand.count)))
        hand.count += 1
        out = hand.to_loop.get()
        if out is _CANCEL:
            raise _Cancelled
        return out

    class _Remote(Denoiser):
        def raw(self, x_in: Tensor, t) -> Tensor:
            hand.t = t
            return super().raw(x_in, t)

    denoiser = _Remote(remote_net, schedule, prediction=prediction, time_label=time_label, net_dtype=net_dtype)
    level = NoiseLevel(denoiser.schedule, 0.0) if level is None else level
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work():
        try:
            with (torch.inference_mode() if inference else nullcontext()), torch.set_grad_enabled(grad):
                result = integrate(solver, denoiser, x, t, level=level, source=source, denoise_final=denoise_final)
            hand.to_caller.put(("done", result))
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 -- raised again in the caller's frame
            hand.to_caller.put(("error", e))

    worker = threading.Thread(target=work, name="diffsolve-drive", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = hand.to_caller.get()
            if kind == "done":
                return payload
            if kind == "error":
                raise payload
            out = yield payload
            if not isinstance(out, Tensor):
                raise TypeError(f"send the network's output tensor for evaluation {payload.index} "
                                f"(shape {tuple(payload.x.shape)}), got {type(out).__name__}")
            hand.to_loop.put(out)
    finally:
        if worker.is_alive():
            hand.to_loop.put(_CANCEL)
            worker.join()
