"""A catalogue of bad inputs, each refused by diffsolve with an error that names what is wrong.

Every row of the tables below is one bad input, across the Python API (``sample``, ``log_likelihood``,
``tune_steps``, ``tune_solver``, ``get_solver``, ``make_grid``, ``Denoiser``, ``NoiseSource``,
``parse_seeds``, ``zoo.load``, ``adapters.load_factory``, ``TunedGrid.load``, ``BenchConfig``/``run_bench``)
and the command line (``diffsolve.cli.main([...])``: exit status 2, one ``error:`` line, no traceback).
For the API each must raise a ``ValueError``/``TypeError``/``FileNotFoundError`` *made by diffsolve*
(:func:`diffsolve_error`: the last frame of the traceback is in the package, and the message is not a
raw Python/torch one such as "invalid literal for int()"), whose message matches the row's regex.

The count: ``python -m pytest tests/test_bad_inputs.py -q`` (one test per bad input, plus a few
checks of the tables; the summary line gives the number), or ``python tests/test_bad_inputs.py``,
which prints the number of bad inputs per entry point and their total.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve.cli import main
from diffsolve.noise import NoiseSource, parse_seeds
from diffsolve.tuned import TunedGrid

PACKAGE = Path(ds.__file__).resolve().parent
ALLOWED = (ValueError, TypeError, FileNotFoundError)
# messages that Python, numpy or torch make, not diffsolve (at the start of a message)
RAW = re.compile(r"^(?:'[^']*' object |invalid literal for|could not convert|argument after|unsupported operand|"
                 r"[^ ]* not supported between|too many dimensions|Overflow when|cannot create weak reference|"
                 r"expected str, bytes|[\w.<>]+\(\) (?:missing|got|takes)|(?:list|tuple) index|division by zero|"
                 r"unhashable type|Expected one of cpu|Trying to create tensor|only integer tensors|new\(\)|"
                 r"a bytes-like object|can't multiply|must be real number|bad operand type|int\(\) argument|"
                 r"keywords must be strings|maximum recursion|object of type|cannot unpack|not enough values|"
                 r"too many values|string indices|Cannot convert|can only concatenate)")


def diffsolve_error(exc: BaseException) -> str | None:
    """None if ``exc`` is an error diffsolve raised about its input, else why it is not one."""
    if not isinstance(exc, ALLOWED):
        return f"{type(exc).__name__} is not a ValueError/TypeError/FileNotFoundError: {exc}"
    msg = str(exc).strip()
    if not msg:
        return f"{type(exc).__name__} without a message"
    frames = traceback.extract_tb(exc.__traceback__)
    last = Path(frames[-1].filename).resolve() if frames else None
    if last is None or PACKAGE not in last.parents:
        return f"raised outside diffsolve ({last}): {type(exc).__name__}: {msg}"
    if RAW.search(msg) or "weights_only" in msg:
        return f"a raw Python/numpy/torch message: {type(exc).__name__}: {msg}"
    return None


# --- what the tables use ----------------------------------------------------------------------------------
VP, COS, EDM = ds.VPSchedule(), ds.CosineSchedule(), ds.EDMSchedule()
GM = ds.GaussianMixture.ring()
DEN = GM.denoiser(VP, "eps")  # samples of shape (2,)
X = GM.sample(4, generator=torch.Generator().manual_seed(0)).to(torch.float64)
NAN_X = X.clone()
NAN_X[2, 1] = float("nan")
INF_X = X.clone()
INF_X[0, 0] = float("inf")


class _Net(torch.nn.Module):
    """A network returning ``out(x)``; ``meta``: with a weight on the meta device."""

    def __init__(self, out, meta: bool = False):
        super().__init__()
        self.out = out
        self.lin = torch.nn.Linear(2, 2, device="meta" if meta else "cpu")

    def forward(self, x, label):
        return self.out(x)


class IntNet(_Net):
    def __init__(self):
        super().__init__(lambda x: torch.zeros_like(x, dtype=torch.int64))


class ComplexNet(_Net):
    def __init__(self):
        super().__init__(lambda x: torch.zeros_like(x, dtype=torch.complex64))


class BoolNet(_Net):
    def __init__(self):
        super().__init__(lambda x: x > 0)


class ShapeNet(_Net):
    def __init__(self):
        super().__init__(lambda x: x[:, :1])


class ListNet(_Net):
    def __init__(self):
        super().__init__(lambda x: x.tolist())


def _den(net, **kw):
    return ds.Denoiser(net, VP, prediction="eps", shape=(2,), **kw)


def _tuned(schedule, log_snr: bool = True, record: bool = True, **kw) -> TunedGrid:
    """A 3-step ddim grid on ``schedule``, recording it (or not, as files from before the record)."""
    t = ds.make_grid(schedule, 3, "log_snr")
    extra = dict(schedule=repr(schedule), log_snr=schedule.log_snr(t).tolist() if log_snr else []) if record else {}
    return TunedGrid(t=t.tolist(), solver="ddim", nfe=4, denoise_final=True, **extra, **kw)


TUNED_VP = _tuned(VP)
META_DEN = _den(_Net(lambda x: x, meta=True))
FAST = dict(pilot=2, fresh=0, max_evals=2)  # a tuning run that would end quickly (never reached)


def C(id, fn, regex, exc=ALLOWED):
    return pytest.param(fn, regex, exc, id=id)


def sample(*args, **kw):
    return lambda: ds.sample(*args, **kw)


# --- diffsolve.sample --------------------------------------------------------------------------------------
SAMPLE = [
    # seeds: integers in [0, 2**63), each once
    C("float-seeds", sample(DEN, seeds=[0.5, 1.7], solver="ddim", nfe=4), r"seed 0\.5 .*not an integer"),
    C("float-seed-later", sample(DEN, seeds=[0, 1.0], solver="ddim", nfe=4), r"seed 1\.0 at position 1 .*not an integer"),
    C("bool-seeds", sample(DEN, seeds=[True, False], solver="ddim", nfe=4), r"seed True .*bool"),
    C("seed-2**64", sample(DEN, seeds=[2 ** 64], solver="ddim", nfe=4), r"seed 18446744073709551616 .*out of range"),
    C("seed-2**63", sample(DEN, seeds=[2 ** 63], solver="ddim", nfe=4), r"out of range.*2\*\*63"),
    C("negative-seed", sample(DEN, seeds=[-1, 2], solver="ddim", nfe=4), r"seed -1 .*no negative seeds"),
    C("numpy-float-seeds", sample(DEN, seeds=np.array([0.0, 1.0]), solver="ddim", nfe=4), r"not an integer"),
    C("tensor-2d-seeds", sample(DEN, seeds=torch.zeros(2, 2, dtype=torch.long), solver="ddim"), r"one-dimensional"),
    C("set-seeds", sample(DEN, seeds={1, 2}, solver="ddim", nfe=4), r"seeds must be .*unordered"),
    C("dict-seeds", sample(DEN, seeds={"a": 1}, solver="ddim", nfe=4), r"seeds must be an int, a list"),
    C("none-in-seeds", sample(DEN, seeds=[0, None], solver="ddim", nfe=4), r"seed None at position 1"),
    C("str-in-seeds", sample(DEN, seeds=["0", "1"], solver="ddim", nfe=4), r"seed '0' .*not an integer"),
    C("repeated-seeds", sample(DEN, seeds=[3, 4, 3], solver="ddim", nfe=4), r"seed 3 is repeated"),
    C("overlapping-ranges", sample(DEN, seeds="0-5,3-8", solver="ddim", nfe=4), r"seeds 3-5 are repeated"),
    C("bad-seed-text", sample(DEN, seeds="0..3", solver="ddim", nfe=4), r"bad seed specification"),
    C("seeds-vs-batch", sample(DEN, X, seeds=[0, 1], solver="ddim", nfe=4), r"got 2 seeds for a batch of 4"),
    C("seeds-and-generator", sample(DEN, seeds=[0], generator=torch.Generator(), solver="ddim"), r"either seeds"),
    C("generator-int", sample(DEN, shape=(2, 2), generator=3, solver="ddim"), r"generator must be a torch.Generator"),
    C("too-many-seeds-for-memory", sample(DEN, seeds="0-9000000000000000000", solver="ddim", nfe=4),
      r"need at least .* GiB .*draw them in batches"),
    # budgets: integers >= 1 (no floats, no bools)
    C("nfe-float", sample(DEN, shape=(2, 2), solver="ddim", nfe=2.5), r"nfe must be a positive integer.*2\.5 \(a float\)"),
    C("nfe-whole-float", sample(DEN, shape=(2, 2), solver="ddim", nfe=10.0), r"nfe must be a positive integer"),
    C("nfe-bool", sample(DEN, shape=(2, 2), solver="ddim", nfe=True), r"nfe .*True \(a bool\)"),
    C("nfe-zero", sample(DEN, shape=(2, 2), solver="ddim", nfe=0), r"nfe must be a positive integer.*got 0"),
    C("nfe-negative", sample(DEN, shape=(2, 2), solver="ddim", nfe=-3), r"nfe must be a positive integer"),
    C("nfe-huge", sample(DEN, shape=(2, 2), nfe=10**12), r"nfe must be at most 10,000,000"),
    C("steps-huge", sample(DEN, shape=(2, 2), solver="ddim", steps=10**20), r"steps must be at most 10,000,000"),
    C("nfe-str", sample(DEN, shape=(2, 2), solver="ddim", nfe="10"), r"nfe must be a positive integer.*'10'"),
    C("nfe-too-small", sample(DEN, shape=(2, 2), solver="heun", nfe=1), r"NFE 1 is too small for solver 'heun'"),
    C("steps-float", sample(DEN, shape=(2, 2), solver="ddim", steps=2.5), r"steps must be a positive integer"),
    C("steps-bool", sample(DEN, shape=(2, 2), solver="ddim", steps=True), r"steps .*bool"),
    C("steps-zero", sample(DEN, shape=(2, 2), solver="ddim", steps=0), r"steps must be a positive integer"),
    C("steps-str", sample(DEN, shape=(2, 2), solver="ddim", steps="ten"), r"steps must be a positive integer"),
    C("steps-and-nfe", sample(DEN, shape=(2, 2), solver="ddim", steps=3, nfe=4), r"not both"),
    # the state's dtype: float32 or float64
    C("dtype-bf16", sample(DEN, shape=(2, 2), solver="ddim", dtype=torch.bfloat16),
      r"solver state.*half precision.*net_dtype"),
    C("dtype-fp16", sample(DEN, shape=(2, 2), solver="ddim", dtype=torch.float16), r"torch.float16 is the dtype of the solver"),
    C("dtype-int", sample(DEN, shape=(2, 2), solver="ddim", dtype=torch.int64), r"dtype must be torch.float64 or"),
    C("dtype-complex", sample(DEN, shape=(2, 2), solver="ddim", dtype=torch.complex128), r"dtype must be torch.float64"),
    C("dtype-str", sample(DEN, shape=(2, 2), solver="ddim", dtype="float64"), r"dtype must be torch.float64.*'float64'"),
    # x: a finite real floating tensor of the denoiser's sample shape
    C("x-shape", sample(DEN, torch.zeros(3, 5, dtype=torch.float64), solver="ddim"), r"x has sample shape \(5,\).*\(2,\)"),
    C("x-1d", sample(DEN, torch.zeros(2, dtype=torch.float64), solver="ddim"), r"x must have shape \(batch.*x\[None\]"),
    C("x-empty-batch", sample(DEN, torch.zeros(0, 2, dtype=torch.float64), solver="ddim"), r"batch >= 1"),
    C("x-nan", sample(DEN, NAN_X, solver="ddim"), r"x contains NaN or Inf \(samples \[2\]\): sample 2 has NaN"),
    C("x-inf", sample(DEN, INF_X, solver="ddim"), r"sample 0 has Inf"),
    C("x-int", sample(DEN, torch.zeros(3, 2, dtype=torch.int64), solver="ddim"), r"real floating-point.*int64"),
    C("x-bool", sample(DEN, torch.zeros(3, 2, dtype=torch.bool), solver="ddim"), r"boolean dtype"),
    C("x-complex", sample(DEN, torch.zeros(3, 2, dtype=torch.complex64), solver="ddim"), r"complex dtype.*\.real"),
    C("x-list", sample(DEN, [[0.0, 1.0]], solver="ddim"), r"x must be a torch.Tensor.*list"),
    C("x-numpy", sample(DEN, np.zeros((2, 2)), solver="ddim"), r"x must be a torch.Tensor.*ndarray"),
    C("x-and-other-shape", sample(DEN, X, shape=(3, 2), solver="ddim"), r"does not match x of shape"),
    C("x-meta-to-cpu", sample(DEN, torch.zeros(2, 2, device="meta", dtype=torch.float64), device="cpu"),
      r"x is on the meta device and device='cpu'"),
    # shape
    C("shape-negative", sample(DEN, shape=(-1, 2), solver="ddim"), r"shape must have positive sizes"),
    C("shape-zero-batch", sample(DEN, shape=(0, 2), solver="ddim"), r"positive sizes"),
    C("shape-str", sample(DEN, shape="ab", solver="ddim"), r"shape must be a tuple of positive integers"),
    C("shape-float", sample(DEN, shape=(2.0, 2), solver="ddim"), r"shape must be a tuple of positive integers"),
    C("shape-no-batch", sample(DEN, shape=(2,), solver="ddim"), r"\(batch, \*sample_shape\)"),
    C("shape-vs-denoiser", sample(DEN, shape=(4, 3), solver="ddim"), r"samples of shape \(3,\).*denoiser's samples"),
    C("no-size-at-all", sample(ds.Denoiser(lambda x, t: x, VP), solver="ddim"), r"give x, or shape"),
    # the denoiser and its network
    C("denoiser-bare-net", sample(lambda x, t: x, shape=(2, 2)), r"denoiser must be a diffsolve.Denoiser.*wrap"),
    C("denoiser-none", sample(None, shape=(2, 2)), r"denoiser must be a diffsolve.Denoiser, got NoneType"),
    C("denoiser-meta", sample(META_DEN, shape=(2, 2), solver="ddim"), r"network _Net is on the meta device"),
    C("denoiser-shape-negative", lambda: ds.Denoiser(lambda x, t: x, VP, shape=(-1,)),
      r"shape must be the shape of one sample, a tuple of positive integers"),
    C("denoiser-shape-int", lambda: ds.Denoiser(lambda x, t: x, VP, shape=3), r"shape must be the shape of one sample"),
    C("denoiser-shape-float", lambda: ds.Denoiser(lambda x, t: x, VP, shape=(2.0,)),
      r"shape must be the shape of one sample"),
    C("grid-kind-none", lambda: ds.make_grid(VP, 3, None), r"grid kind must be one of"),
    C("grid-steps-bool", lambda: ds.make_grid(VP, True), r"steps must be a positive integer"),
    C("denoiser-net-dtype-str", lambda: _den(lambda x, t: x, net_dtype="float16"), r"net_dtype must be a"),
    C("denoiser-net-dtype-int", lambda: _den(lambda x, t: x, net_dtype=torch.int32), r"net_dtype must be"),
    C("net-int-output", sample(_den(IntNet()), shape=(2, 2), solver="ddim", steps=2),
      r"network IntNet returned torch.int64 values"),
    C("net-complex-output", sample(_den(ComplexNet()), shape=(2, 2), solver="ddim", steps=2),
      r"network ComplexNet returned torch.complex64 .*out.real"),
    C("net-bool-output", sample(_den(BoolNet()), shape=(2, 2), solver="ddim", steps=2), r"returned torch.bool values"),
    C("net-shape-output", sample(_den(ShapeNet()), shape=(2, 2), solver="ddim", steps=2),
      r"returned shape \(2, 1\) for input of shape \(2, 2\)"),
    C("net-list-output", sample(_den(ListNet()), shape=(2, 2), solver="ddim", steps=2), r"returned a list of 2, not a tensor"),
    # devices
    C("device-unknown", sample(DEN, shape=(2, 2), solver="ddim", device="foo"), r"unknown or unsupported device 'foo'"),
    C("device-meta", sample(DEN, shape=(2, 2), solver="ddim", device="meta"), r"device 'meta' holds shapes but no data"),
    C("device-list", sample(DEN, shape=(2, 2), solver="ddim", device=["cpu"]), r"device must be a device name"),
    C("device-cuda-missing" if not torch.cuda.is_available() else "device-cuda-index",
      sample(DEN, shape=(2, 2), solver="ddim", device="cuda:0" if not torch.cuda.is_available() else "cuda:99"),
      r"CUDA is not available|CUDA devices here"),
    # solver, options, noise, grid, flags
    C("solver-unknown", sample(DEN, shape=(2, 2), solver="nope"), r"unknown solver 'nope'"),
    C("solver-int", sample(DEN, shape=(2, 2), solver=3), r"unknown solver 3"),
    C("solver-option-unknown", sample(DEN, shape=(2, 2), solver="unipc", solver_options={"ordr": 3}),
      r"bad options for solver 'unipc'"),
    C("solver-option-eta", sample(DEN, shape=(2, 2), solver="dpmpp_2m_sde", solver_options={"eta": 0.5}),
      r"eta is the run's noise level, not a solver option: pass eta= to sample"),
    C("solver-options-list", sample(DEN, shape=(2, 2), solver="ddim", solver_options=[1]), r"solver_options must be a dict"),
    C("solver-options-int-keys", sample(DEN, shape=(2, 2), solver="ddim", solver_options={1: 2}), r"options by name"),
    C("solver-spec-bad", sample(DEN, shape=(2, 2), solver="unipc:order"), r"'order' is not key=value"),
    C("solver-option-range", sample(DEN, shape=(2, 2), solver="unipc:order=9"), r"order must be one of"),
    C("eta-str", sample(DEN, shape=(2, 2), solver="euler", eta="x"), r"eta must be a number"),
    C("eta-negative", sample(DEN, shape=(2, 2), solver="euler", eta=-0.5), r"eta must be >= 0"),
    C("eta-inf", sample(DEN, shape=(2, 2), solver="euler", eta=math.inf), r"eta must be >= 0 and < 1e\+150 \(a finite"),
    C("eta-nan", sample(DEN, shape=(2, 2), solver="euler", eta=math.nan), r"eta must be >= 0"),
    C("eta-published-ddim", sample(DEN, shape=(2, 2), solver="ddim:variant=published", eta=3.0, nfe=10),
      r"adds more noise at step 0 than the marginal holds.*variant=exact"),
    C("eta-torchsde-unstable", sample(DEN, shape=(2, 2), solver="torchsde:steps=20", eta=20.0),
      r"torchsde's euler with eta=20 is unstable on this grid of 20 steps"),
    C("eta-overflow", sample(DEN, shape=(2, 2), solver="ancestral", eta=1e308), r"eta must be >= 0 and < 1e\+150"),
    C("eta-for-ode-solver", sample(DEN, shape=(2, 2), solver="dpmpp_2m", eta=1.0), r"probability-flow ODE only"),
    C("noise-not-callable", sample(DEN, shape=(2, 2), solver="euler", noise=0.5), r"noise must be a callable"),
    C("grid-unknown", sample(DEN, shape=(2, 2), solver="ddim", grid="nope"), r"unknown grid 'nope'"),
    C("grid-strings", sample(DEN, shape=(2, 2), solver="ddim", grid=["a", "b"]), r"grid must be a grid kind"),
    C("grid-increasing", sample(DEN, shape=(2, 2), solver="ddim", grid=[0.5, 0.9]), r"strictly decreasing"),
    C("grid-outside", sample(DEN, shape=(2, 2), solver="ddim", grid=[3.0, 0.5]), r"time outside the range"),
    C("grid-one-point", sample(DEN, shape=(2, 2), solver="ddim", grid=[0.5]), r"at least 2 points"),
    C("grid-kind-for-adaptive", sample(DEN, shape=(2, 2), solver="dopri5", grid="karras"), r"chooses its own steps"),
    C("trajectory-str", sample(DEN, shape=(2, 2), solver="ddim", trajectory="yes"), r"trajectory must be True or False"),
    C("denoise-final-str", sample(DEN, shape=(2, 2), solver="ddim", denoise_final="no"), r"denoise_final must be True"),
    # tuned grids against the run
    C("tuned-other-schedule", sample(GM.denoiser(COS, "eps"), shape=(2, 2), steps=TUNED_VP),
      r"tuned on the schedule VPSchedule.*CosineSchedule"),
    C("tuned-other-parameters", sample(GM.denoiser(ds.VPSchedule(beta_max=10.0), "eps"), shape=(2, 2), steps=TUNED_VP),
      r"VPSchedule with other parameters"),
    C("tuned-user-schedule", sample(GM.denoiser(VP, "eps"), shape=(2, 2),
                                    steps=_tuned(type("MyVP", (ds.VPSchedule,), {})(beta_max=10.0))),
      r"tuned on another schedule \(MyVP\(.*this model's is a VPSchedule\)"),
    C("tuned-legacy-out-of-range", sample(DEN, shape=(2, 2), steps=_tuned(EDM, record=False)),
      r"spans t in \[0.002, 80\], outside this model's schedule"),
    C("tuned-with-nfe", sample(DEN, shape=(2, 2), steps=TUNED_VP, nfe=5), r"fixes the times and the budget"),
    C("tuned-denoise-final", sample(DEN, shape=(2, 2), steps=TUNED_VP, denoise_final=False), r"tuned with the final"),
    C("tuned-missing-file", sample(DEN, shape=(2, 2), steps="/nonexistent/grid.json"), r"no tuned grid file"),
]


# --- diffsolve.log_likelihood -------------------------------------------------------------------------------
def ll(*args, **kw):
    return lambda: ds.log_likelihood(*args, **kw)


LIKELIHOOD = [
    C("ll-bare-net", ll(lambda x, t: x, X), r"denoiser must be a diffsolve.Denoiser"),
    C("ll-x-list", ll(DEN, [[0.0, 1.0]]), r"x must be a torch.Tensor"),
    C("ll-x-shape", ll(DEN, torch.zeros(2, 3, dtype=torch.float64)), r"x has sample shape \(3,\)"),
    C("ll-x-nan", ll(DEN, NAN_X), r"NaN or Inf \(samples \[2\]\)"),
    C("ll-x-int", ll(DEN, torch.zeros(2, 2, dtype=torch.int64)), r"integer data need dequantize"),
    C("ll-x-complex", ll(DEN, torch.zeros(2, 2, dtype=torch.complex128)), r"complex dtype"),
    C("ll-meta-net", ll(META_DEN, X), r"meta device"),
    C("ll-meta-x", ll(DEN, torch.zeros(2, 2, device="meta", dtype=torch.float64)), r"x is on the meta device"),
    C("ll-float-seeds", ll(DEN, X, seeds=[0.5, 1.5, 2.5, 3.5]), r"seed 0\.5 .*not an integer"),
    C("ll-huge-seed", ll(DEN, X, seeds=[0, 1, 2, 2 ** 70]), r"out of range"),
    C("ll-seeds-vs-batch", ll(DEN, X, seeds="0-2"), r"got 3 seeds for a batch of 4"),
    C("ll-dtype-bf16", ll(DEN, X, dtype=torch.bfloat16), r"half precision"),
    C("ll-dtype-str", ll(DEN, X, dtype="float32"), r"dtype must be torch.float64 or torch.float32"),
    C("ll-probes-float", ll(DEN, X, probes=2.0), r"probes must be a positive integer"),
    C("ll-probes-bool", ll(DEN, X, probes=True), r"probes must be a positive integer"),
    C("ll-rtol-str", ll(DEN, X, rtol="a"), r"rtol must be a positive finite number"),
    C("ll-rtol-zero", ll(DEN, X, rtol=0.0), r"rtol"),
    C("ll-divergence", ll(DEN, X, divergence="skilling"), r"valid: hutchinson, exact"),
    C("ll-t-end-str", ll(DEN, X, t_end="a"), r"t_end must be a number"),
    C("ll-t-end-range", ll(DEN, X, t_end=1.0), r"t_end must lie in"),
    C("ll-fixed-steps-float", ll(DEN, X, fixed_steps=2.5), r"fixed_steps must be a positive integer"),
    C("ll-chunk-zero", ll(DEN, X, chunk_size=0), r"chunk_size"),
    C("ll-fresh-probes-str", ll(DEN, X, fresh_probes="yes"), r"fresh_probes must be True or False"),
    C("ll-prior", ll(DEN, X, prior="laplace"), r"prior must be 'gaussian' or a callable"),
    C("ll-dequantize-levels", ll(DEN, X, dequantize=dict(levels=1)), r"levels"),
]


# --- tune_steps / tune_solver --------------------------------------------------------------------------------
def tune(*args, **kw):
    return lambda: ds.tune_steps(*args, **{**FAST, **kw})


def tsolver(*args, **kw):
    return lambda: ds.tune_solver(*args, **{**FAST, "iterations": 1, **kw})


TUNE = [
    C("tune-nfe-float", tune(DEN, "ddim", nfe=2.5), r"nfe must be a positive integer.*2\.5 \(a float\)"),
    C("tune-nfe-zero", tune(DEN, "ddim", nfe=0), r"nfe must be a positive integer"),
    C("tune-nfe-small", tune(DEN, "heun", nfe=1), r"NFE 1 is too small"),
    C("tune-pilot-zero", tune(DEN, "ddim", nfe=4, pilot=0), r"pilot must be a positive integer"),
    C("tune-pilot-float", tune(DEN, "ddim", nfe=4, pilot=2.5), r"pilot must be a positive integer.*a float"),
    C("tune-pilot-float-seeds", tune(DEN, "ddim", nfe=4, pilot=[0.5, 1.5]), r"seed 0\.5"),
    C("tune-pilot-empty", tune(DEN, "ddim", nfe=4, pilot=[]), r"pilot: got 0 seeds, need at least 1"),
    C("tune-pilot-repeated", tune(DEN, "ddim", nfe=4, pilot=[1, 1]), r"seed 1 is repeated"),
    C("tune-fresh-negative", tune(DEN, "ddim", nfe=4, fresh=-1), r"fresh must be an integer >= 0"),
    C("tune-fresh-overlap", tune(DEN, "ddim", nfe=4, pilot="0-3", fresh="3-5"), r"fresh seeds must differ"),
    C("tune-max-evals-zero", tune(DEN, "ddim", nfe=4, max_evals=0), r"max_evals must be a positive integer"),
    C("tune-shape-vs-denoiser", tune(DEN, "ddim", nfe=4, shape=(3,)), r"shape=\(3,\), but the denoiser's samples"),
    C("tune-shape-with-batch", tune(DEN, "ddim", nfe=4, shape=(8, 2)),
      r"one sample's, without sample\(\)'s batch"),
    C("tune-no-shape", tune(ds.Denoiser(lambda x, t: x, VP), "ddim", nfe=4), r"give shape=\(\.\.\.\) of one sample"),
    C("tune-rtol-negative", tune(DEN, "ddim", nfe=4, rtol=-1.0), r"rtol must be > 0"),
    C("tune-atol-str", tune(DEN, "ddim", nfe=4, atol="tight"), r"atol must be a number"),
    C("tune-device", tune(DEN, "ddim", nfe=4, device="foo"), r"unknown or unsupported device"),
    C("tune-denoise-final", tune(DEN, "ddim", nfe=4, denoise_final="maybe"), r"denoise_final must be True, False or 'auto'"),
    C("tune-tune-end", tune(DEN, "ddim", nfe=4, tune_end="yes"), r"tune_end must be True or False"),
    C("tune-solver-options", tune(DEN, "ddim", nfe=4, solver_options=["order"]), r"solver_options must be a dict"),
    C("tune-init-strings", tune(DEN, "ddim", nfe=4, init=["a", "b"]), r"init must be a grid kind"),
    C("tune-init-kind", tune(DEN, "ddim", nfe=4, init="nope"), r"unknown grid 'nope'"),
    C("tune-adaptive", tune(DEN, "dopri5", nfe=4), r"fixed-step"),
    C("tune-solver-instance", tune(DEN, ds.solvers.get_solver("ddim"), nfe=4), r"by name or spec"),
    C("tune-meta", tune(META_DEN, "ddim", nfe=4), r"meta device"),
    C("tune-bare-net", tune(lambda x, t: x, "ddim", nfe=4), r"denoiser must be a diffsolve.Denoiser"),
    C("tsolver-validation", tsolver(DEN, 4, grid="log_snr", validation=1.5), r"validation must be > 0 and < 1"),
    C("tsolver-iterations", tsolver(DEN, 4, grid="log_snr", iterations=-1), r"iterations must be an integer >= 0"),
    C("tsolver-lr", tsolver(DEN, 4, grid="log_snr", lr=0.0), r"lr must be > 0"),
    C("tsolver-history", tsolver(DEN, 4, grid="log_snr", history=1.5), r"history must be an integer >= 2"),
    C("tsolver-history-one", tsolver(DEN, 4, grid="log_snr", history=1), r"history must be an integer >= 2.*got 1$"),
    C("tsolver-shifts", tsolver(DEN, 4, grid="log_snr", shifts="no"), r"shifts must be True or False"),
    C("tsolver-pilot-one", tsolver(DEN, 4, grid="log_snr", pilot=1), r"pilot must be an integer >= 2"),
    C("tsolver-nfe", tsolver(DEN, 0, grid="log_snr"), r"nfe must be a positive integer"),
    C("tsolver-grid-budget", tsolver(DEN, 6, grid=TUNED_VP), r"not a budget of 6"),
    C("tsolver-grid-schedule", tsolver(GM.denoiser(COS, "eps"), 4, grid=TUNED_VP), r"tuned on the schedule VPSchedule"),
    C("tsolver-grid-values", tsolver(DEN, 4, grid=[None, 1]), r"grid must be a grid kind"),
]


# --- the smaller entry points ----------------------------------------------------------------------------------
def call(f, *args, **kw):
    return lambda: f(*args, **kw)


def _load_factory(spec):
    from diffsolve.adapters import load_factory

    return load_factory(spec)


def _features(metrics, **kw):
    from diffsolve.bench import FeatureSettings

    return FeatureSettings(metrics=(metrics,), **kw)


def _nan_reference(call):
    """``call`` with the file NAN_REFERENCE made first: 8 rows of 2, one of them with a NaN."""
    def made():
        NAN_REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        np.save(NAN_REFERENCE, np.where(np.arange(16).reshape(8, 2) == 5, np.nan, np.arange(16.0).reshape(8, 2)))
        return call()
    return made


NAN_REFERENCE = Path(tempfile.gettempdir()) / f"diffsolve-bad-inputs-{os.getpid()}" / "nan-reference.npy"


def _bench(**kw):
    from diffsolve.bench import BenchConfig, run_bench

    return lambda: run_bench(BenchConfig(**{"problems": ["ring2d"], "solvers": ["ddim"], "nfe": [4], "quiet": True,
                                            "out": "/nonexistent-dir/bench-out", **kw}))


OTHERS = [
    C("seeds-float", call(parse_seeds, 1.5), r"seed 1\.5 is not an integer"),
    C("seeds-bool", call(parse_seeds, True), r"seed True is not an integer \(a bool\)"),
    C("seeds-none", call(parse_seeds, None), r"seeds must be an int.*NoneType"),
    C("seeds-bytes", call(parse_seeds, b"0-3"), r"seeds must be an int"),
    C("seeds-negative-text", call(parse_seeds, "-1"), r"bad seed specification '-1'"),
    C("seeds-empty-text", call(parse_seeds, ""), r"bad seed specification ''"),
    C("seeds-double-comma", call(parse_seeds, "1,,2"), r"bad seed specification"),
    C("seeds-reversed", call(parse_seeds, "3-1"), r"end before start; write it as 1-3"),
    C("seeds-decimal", call(parse_seeds, "1.5"), r"bad seed specification '1\.5'"),
    C("seeds-huge-text", call(parse_seeds, "1" * 40), r"out of range"),
    C("seeds-huge-range", call(parse_seeds, "0-9223372036854775808"), r"seed 9223372036854775808 .*out of range"),
    C("seeds-range-negative", call(parse_seeds, range(-3, 3)), r"seed -3 .*out of range"),
    C("seeds-range-huge", call(parse_seeds, range(2 ** 63, 2 ** 63 + 2)), r"out of range"),
    C("seeds-repeated-text", call(parse_seeds, "1,1,2,3,3", distinct=True), r"seeds 1, 3 are repeated in '1,1,2,3,3'"),
    C("seeds-repeated-range", call(parse_seeds, "0-199999999,5", distinct=True), r"seed 5 is repeated"),
    C("seeds-float-array", call(parse_seeds, np.array([1.5])), r"seed 1\.5 .*not an integer"),
    C("seeds-float-tensor", call(parse_seeds, torch.tensor([0.0, 1.0])), r"seed 0\.0 .*not an integer"),
    C("seeds-object", call(parse_seeds, object()), r"seeds must be an int"),
    C("noise-batch-str", call(NoiseSource, "a", (2,)), r"batch must be a positive integer"),
    C("noise-batch-zero", call(NoiseSource, 0, (2,)), r"batch must be a positive integer"),
    C("noise-batch-float", call(NoiseSource, 2.0, (2,)), r"batch must be a positive integer.*float"),
    C("noise-shape-negative", call(NoiseSource, 2, (-2,)), r"event_shape must have positive sizes"),
    C("noise-shape-int", call(NoiseSource, 2, 3), r"event_shape must be a tuple"),
    C("noise-float-seeds", call(NoiseSource, 2, (2,), seeds=[0.1, 0.2]), r"seed 0\.1 .*not an integer"),
    C("noise-seeds-count", call(NoiseSource, 2, (2,), seeds=[0, 1, 2]), r"got 3 seeds for a batch of 2"),
    C("noise-generator", call(NoiseSource, 2, (2,), generator="g"), r"generator must be a torch.Generator"),
    C("noise-generator-list-length", call(NoiseSource, 2, (2,), generator=[torch.Generator()] * 3),
      r"list of 3 generators for a batch of 2"),
    C("noise-generator-list-type", call(NoiseSource, 2, (2,), generator=[torch.Generator(), 3]),
      r"must hold torch.Generator objects, got int"),
    C("noise-dtype", call(NoiseSource, 2, (2,), dtype=torch.int64), r"dtype must be a floating torch.dtype"),
    C("noise-device", call(NoiseSource, 2, (2,), device="gpu"), r"unknown or unsupported device 'gpu'"),
    C("noise-seeds-on-meta", call(NoiseSource, 2, (2,), seeds=[0, 1], device="meta"), r"meta device has none"),
    C("denoiser-net", call(ds.Denoiser, 3, VP), r"net must be callable"),
    C("denoiser-prediction", call(ds.Denoiser, lambda x, t: x, VP, prediction="noise"), r"unknown prediction type"),
    C("denoiser-time-label", call(ds.Denoiser, lambda x, t: x, VP, time_label="steps"), r"unknown time_label"),
    C("denoiser-schedule", call(ds.Denoiser, lambda x, t: x, "vpp"), r"unknown schedule 'vpp'"),
    C("denoiser-schedule-int", call(ds.Denoiser, lambda x, t: x, 3), r"unknown schedule 3"),
    C("get-solver-unknown", call(ds.solvers.get_solver, "dpm"), r"unknown solver 'dpm'; valid solvers"),
    C("get-solver-none", call(ds.solvers.get_solver, None), r"unknown solver None"),
    C("get-solver-option", call(ds.solvers.get_solver, "unipc", ordr=3), r"bad options for solver 'unipc'"),
    C("get-solver-twice", call(ds.solvers.get_solver, "unipc:order=2", order=3), r"given both in the spec"),
    C("get-solver-spec", call(ds.solvers.get_solver, "unipc:=3"), r"is not key=value"),
    C("get-solver-instance-options", call(ds.solvers.get_solver, ds.solvers.get_solver("ddim"), stride=2),
      r"solver options go to the constructor"),
    C("get-solver-order", call(ds.solvers.get_solver, "deis:order=9"), r"order must be one of"),
    # a spec's text is typed by the option's default: "no" is not false, "abc" not a number
    C("get-solver-bool-word", call(ds.solvers.get_solver, "torchsde:adaptive=no"),
      r"adaptive='no' must be true or false"),
    C("get-solver-bool-word-kw", call(ds.solvers.get_solver, "dpmpp_2m_sde", corrected_start="off"),
      r"corrected_start='off' must be true or false"),
    C("get-solver-int-text", call(ds.solvers.get_solver, "torchsde:steps=abc"), r"steps='abc' must be an integer"),
    C("get-solver-float-text", call(ds.solvers.get_solver, "pc:snr=abc"), r"snr='abc' must be a number"),
    C("make-grid-steps-zero", call(ds.make_grid, VP, 0), r"steps must be a positive integer"),
    C("make-grid-steps-float", call(ds.make_grid, VP, 2.5), r"steps must be a positive integer"),
    C("make-grid-kind", call(ds.make_grid, VP, 3, "nope"), r"unknown grid 'nope'"),
    C("make-grid-increasing", call(ds.make_grid, VP, None, [0.2, 0.5]), r"strictly decreasing"),
    C("make-grid-nan", call(ds.make_grid, VP, None, [math.nan, 0.5]), r"contains NaN or Inf"),
    C("make-grid-discrete", call(ds.make_grid, VP, 3, "leading"), r"needs a discrete DDPMSchedule"),
    C("ddpm-zero-terminal-snr", call(ds.DDPMSchedule, alphas_cumprod=torch.tensor([0.9, 0.5, 0.0], dtype=torch.float64)),
      r"alphas_cumprod must lie in \(0, 1\); the last value makes a zero terminal SNR.*2\*\*-24"),
    C("make-grid-outside", call(ds.make_grid, VP, None, [2.0, 0.5]), r"time outside the range"),
    C("zoo-unknown", call(ds.zoo.load, "mnist"), r"unknown model 'mnist'; bundled models"),
    C("zoo-int", call(ds.zoo.load, 3), r"a model is a bundled model's name"),
    C("zoo-dtype-int", call(ds.zoo.load, "digits", dtype=torch.int64), r"dtype must be a floating torch.dtype"),
    C("zoo-dtype-str", call(ds.zoo.load, "digits", dtype="float32"), r"dtype must be a floating torch.dtype"),
    C("zoo-device", call(ds.zoo.load, "digits", device="foo"), r"unknown or unsupported device"),
    C("zoo-meta", call(ds.zoo.load, "digits", device="meta"), r"device 'meta' holds shapes but no data"),
    C("zoo-missing-file", call(ds.zoo.load, "/nonexistent/model.safetensors"), r"model metadata .* not found"),
    C("factory-int", call(_load_factory, 3), r"expected 'package.module:factory'"),
    C("factory-no-colon", call(_load_factory, "mymodel"), r"expected 'package.module:factory'"),
    C("factory-no-file", call(_load_factory, "no/such/file.py:make"), r"no such Python file"),
    C("factory-no-module", call(_load_factory, "no_such_module_xyz:make"), r"cannot import module"),
    C("factory-no-attr", call(_load_factory, "diffsolve:nothing_here"), r"has no attribute 'nothing_here'"),
    C("factory-not-callable", call(_load_factory, "diffsolve:__version__"), r"not a factory"),
    C("bench-nfe-float", _bench(nfe=[2.5]), r"NFE budgets must be integers"),
    C("bench-eta", _bench(eta=[-1]), r"eta must be a number >= 0"),
    C("bench-dtype", _bench(dtype="bfloat16"), r"unknown dtype 'bfloat16'"),
    C("bench-device", _bench(device="foo"), r"unknown device 'foo'"),
    C("bench-grid", _bench(grid="nope"), r"unknown grid 'nope'"),
    C("bench-seeds-repeated", _bench(seeds="0-3,2"), r"seed 2 is repeated"),
    C("bench-seeds-float", _bench(seeds=[0.5, 1.5]), r"seed 0\.5 .*not an integer"),
    C("bench-n-samples", _bench(n_samples=1), r"n_samples must be an integer >= 2"),
    C("bench-solver", _bench(solvers=["nope"]), r"unknown solver 'nope'"),
    C("bench-problem", _bench(problems=["nope"]), r"unknown problem 'nope'"),
    C("bench-grid-file", _bench(grid="/nonexistent/g.json"), r"no tuned grid file"),
    C("bench-prdc-few", _bench(n_samples=5, feature_metrics=_features("prdc")), r"need at least 6 samples per row"),
    C("bench-prdc-few-seeds", _bench(seeds="0-3", feature_metrics=_features("prdc")), r"at least 6 samples.*got 4"),
    C("bench-reference-nan", _nan_reference(_bench(n_samples=8, feature_metrics=_features("fid", reference=str(
        NAN_REFERENCE)))), r"non-finite features \(1 of 8 rows\)"),
]


def _bad_grid_file(tmp: Path, name: str, change: dict) -> Path:
    data = json.loads(json.dumps(TUNED_VP.__dict__))
    path = tmp / name
    path.write_text(change if isinstance(change, str) else json.dumps({**data, **change}))
    return path


GRID_FILES = [  # (name, change to a valid file, regex); the file is written in a temporary directory
    ("grid-not-json", "{not json", r"is not a tuned-grid JSON file"),
    ("grid-a-list", "[1, 2]", r"holds a JSON list, not an object"),
    ("grid-missing", '{"t": [1.0, 0.5]}', r"missing \['denoise_final', 'nfe', 'solver'\]"),
    ("grid-nfe-str", {"nfe": "4"}, r"'nfe' must be a positive integer"),
    ("grid-nfe-wrong", {"nfe": 9}, r"'nfe' is 9, but its grid 't' has 3 steps"),
    ("grid-t-increasing", {"t": [0.5, 0.9]}, r"strictly decreasing"),
    ("grid-t-strings", {"t": ["1", "0.5"]}, r"'t' must be a list of numbers"),
    ("grid-solver-adaptive", {"solver": "dopri5"}, r"chooses its own steps"),
    ("grid-solver-unknown", {"solver": "nope"}, r"cannot run its solver on its grid"),
    ("grid-log-snr-length", {"log_snr": [1.0]}, r"'log_snr' a list of finite numbers, one per time"),
    ("grid-schedule-int", {"schedule": 3}, r"'schedule' must be a string"),
    ("grid-denoise-final", {"denoise_final": "yes"}, r"'denoise_final' must be true or false"),
    ("grid-error-str", {"fresh_error": "abc"}, r"'fresh_error' must be a number \(or null"),
    ("grid-seeds-str", {"pilot_seeds": "abc"}, r"'pilot_seeds' must be a list of numbers"),
    ("grid-weights-rows", {"solver": "learned", "solver_options": {"history": 2, "predictor": [[0.1]]}},
     r"grid-weights-rows.json: cannot run its solver on its grid: predictor has 1 rows .* needs 3 rows"),
]


# --- the command line ------------------------------------------------------------------------------------------
def _files(tmp: Path) -> dict:
    """Bad files for the command line, in ``tmp``."""
    (tmp / "garbage.pt").write_bytes(b"this is not a torch file")
    torch.save(torch.zeros(4, 2), tmp / "ok.pt")
    data = (tmp / "ok.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"x": torch.zeros(2, 2)}, tmp / "dict.pt")
    torch.save(np.zeros((2, 2)), tmp / "numpy-inside.pt")
    torch.save(torch.zeros(2, 2, dtype=torch.complex64), tmp / "complex.pt")
    torch.save(torch.zeros(2, 2, dtype=torch.int64), tmp / "int.pt")
    torch.save(torch.tensor([[0.0, math.nan]]), tmp / "nan.pt")
    torch.save(torch.zeros(2, 3), tmp / "wide.pt")
    torch.save(torch.zeros(2), tmp / "flat.pt")
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "strings.npy", np.array(["a", "b"]))
    np.save(tmp / "bools.npy", np.zeros((2, 2), dtype=bool))
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp / "blocker").write_text("a file where a directory should be")
    (tmp / "dir.pt").mkdir(exist_ok=True)
    _tuned(VP).save(tmp / "vp-grid.json")  # ring2d's default schedule is ddpm
    (tmp / "factory.py").write_text(
        "import torch, diffsolve\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = torch.nn.Linear(2, 2, device='meta')\n"
        "    def forward(self, x, t):\n"
        "        return self.lin(x)\n"
        "def meta():\n"
        "    return diffsolve.Denoiser(Net(), 'vp', shape=(2,))\n"
        "def ints():\n"
        "    return diffsolve.Denoiser(lambda x, t: (x * 0).long(), 'vp', shape=(2,))\n"
        "def not_a_denoiser():\n"
        "    return 42\n")
    return {}


S = ["sample", "--problem", "ring2d", "--quiet"]  # + --out
CLI = [  # (id, argv after the command, regex on stderr); "{t}" is the temporary directory
    ("cli-seeds-float", S + ["--seeds", "0.5", "--out", "{t}/x.pt"], r"bad seed specification '0\.5'"),
    ("cli-seeds-negative", S + ["--seeds", "-3", "--out", "{t}/x.pt"], r"argument --seeds|bad seed"),
    ("cli-seeds-huge", S + ["--seeds", "18446744073709551616", "--out", "{t}/x.pt"], r"out of range"),
    ("cli-seeds-repeated", S + ["--seeds", "1,1,2", "--out", "{t}/x.pt"], r"seed 1 is repeated"),
    ("cli-seeds-reversed", S + ["--seeds", "5-1", "--out", "{t}/x.pt"], r"end before start"),
    ("cli-seeds-too-many", S + ["--seeds", "0-9000000000000000000", "--out", "{t}/x.pt"], r"draw them in batches"),
    ("cli-seeds-empty", S + ["--seeds", ",", "--out", "{t}/x.pt"], r"bad seed specification"),
    ("cli-nfe-float", S + ["--nfe", "2.5", "--out", "{t}/x.pt"], r"expected a positive integer, got '2\.5'"),
    ("cli-nfe-zero", S + ["--nfe", "0", "--out", "{t}/x.pt"], r"expected a positive integer, got '0'"),
    ("cli-nfe-word", S + ["--nfe", "ten", "--out", "{t}/x.pt"], r"expected a positive integer"),
    ("cli-nfe-too-small", S + ["--solver", "heun", "--nfe", "1", "--out", "{t}/x.pt"], r"NFE 1 is too small"),
    ("cli-steps-negative", S + ["--steps", "-4", "--out", "{t}/x.pt"], r"expected a positive integer"),
    ("cli-nfe-and-steps", S + ["--nfe", "4", "--steps", "4", "--out", "{t}/x.pt"], r"not allowed with argument"),
    ("cli-eta-negative", S + ["--eta", "-1", "--out", "{t}/x.pt"], r"expected a finite number >= 0"),
    ("cli-eta-nan", S + ["--eta", "nan", "--out", "{t}/x.pt"], r"expected a finite number >= 0"),
    ("cli-eta-overflow", S + ["--solver", "ancestral", "--eta", "1e308", "--out", "{t}/x.pt"], r"eta must be >= 0 and <"),
    ("cli-eta-ode-solver", S + ["--solver", "dpmpp_2m", "--eta", "1", "--out", "{t}/x.pt"], r"probability-flow ODE only"),
    ("cli-dtype-bf16", S + ["--dtype", "bfloat16", "--out", "{t}/x.pt"], r"unknown dtype 'bfloat16'.*half precision"),
    ("cli-dtype-float16", S + ["--dtype", "float16", "--out", "{t}/x.pt"], r"loses its accuracy in float16"),
    ("cli-dtype-word", S + ["--dtype", "double", "--out", "{t}/x.pt"], r"unknown dtype 'double'; valid dtypes: float64, "
                                                                       r"float32$"),
    ("cli-device-unknown", S + ["--device", "tpu", "--out", "{t}/x.pt"], r"unknown or unsupported --device 'tpu'"),
    ("cli-device-meta", S + ["--device", "meta", "--out", "{t}/x.pt"], r"--device 'meta' holds shapes but no data"),
    ("cli-solver-unknown", S + ["--solver", "dpm", "--out", "{t}/x.pt"], r"unknown solver 'dpm'"),
    ("cli-solver-option", S + ["--solver", "unipc:ordr=3", "--out", "{t}/x.pt"], r"bad options for solver 'unipc'"),
    ("cli-solver-spec", S + ["--solver", "unipc:order", "--out", "{t}/x.pt"], r"is not key=value"),
    ("cli-grid-unknown", S + ["--grid", "nope", "--out", "{t}/x.pt"], r"unknown grid 'nope'"),
    ("cli-grid-missing-file", S + ["--grid", "{t}/none.json", "--out", "{t}/x.pt"], r"no tuned grid file"),
    ("cli-grid-other-schedule", S + ["--grid", "{t}/vp-grid.json", "--out", "{t}/x.pt"],
     r"tuned on the schedule VPSchedule.*DDPMSchedule"),
    ("cli-grid-for-adaptive", S + ["--solver", "dopri5", "--grid", "karras", "--out", "{t}/x.pt"], r"chooses its own"),
    ("cli-out-suffix", S + ["--out", "{t}/x.txt"], r"must end in \.pt or \.npy"),
    ("cli-out-directory", S + ["--out", "{t}/dir.pt"], r"is a directory"),
    ("cli-out-under-file", S + ["--out", "{t}/blocker/x.pt"], r"not a directory|cannot create directory"),
    ("cli-out-proc", S + ["--out", "/proc/diffsolve-x.pt"], r"cannot write '/proc/diffsolve-x\.pt'"),
    ("cli-out-missing", ["sample", "--problem", "ring2d"], r"one of the arguments --out --outdir is required"),
    ("cli-problem-unknown", ["sample", "--problem", "ring3d", "--out", "{t}/x.pt"], r"unknown problem 'ring3d'"),
    ("cli-model-unknown", ["sample", "--model", "mnist", "--out", "{t}/x.pt"], r"unknown model 'mnist'"),
    ("cli-model-and-problem", ["sample", "--model", "digits", "--problem", "ring2d", "--out", "{t}/x.pt"],
     r"not allowed with argument"),
    ("cli-no-problem", ["sample", "--out", "{t}/x.pt"], r"give --problem NAME"),
    ("cli-schedule-unknown", S + ["--schedule", "vpp", "--out", "{t}/x.pt"], r"unknown schedule 'vpp'"),
    ("cli-schedule-for-model", ["sample", "--model", "digits", "--schedule", "vp", "--out", "{t}/x.pt"],
     r"--schedule applies to analytic problems"),
    ("cli-factory-missing", ["sample", "--model", "{t}/nofile.py:make", "--out", "{t}/x.pt"], r"no such Python file"),
    ("cli-factory-meta", ["sample", "--model", "{t}/factory.py:meta", "--out", "{t}/x.pt"], r"network Net is on the meta"),
    ("cli-factory-ints", ["sample", "--model", "{t}/factory.py:ints", "--nfe", "4", "--seeds", "0-1", "--out",
                          "{t}/x.pt"], r"network .*returned torch.int64 values"),
    ("cli-factory-not-denoiser", ["sample", "--model", "{t}/factory.py:not_a_denoiser", "--out", "{t}/x.pt"],
     r"returned int, not a diffsolve.Denoiser"),
    ("cli-ll-missing", ["likelihood", "--problem", "ring2d", "--data", "{t}/none.npy"], r"does not exist"),
    ("cli-ll-suffix", ["likelihood", "--problem", "ring2d", "--data", "{t}/blocker"], r"must be \.npy .* or \.pt"),
    ("cli-ll-directory", ["likelihood", "--problem", "ring2d", "--data", "{t}/dir.pt"], r"is a directory"),
    ("cli-ll-garbage-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/garbage.pt"],
     r"not a file written by torch.save, or truncated"),
    ("cli-ll-truncated-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/truncated.pt"], r"truncated"),
    ("cli-ll-dict-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/dict.pt"],
     r"holds an object of type dict with keys \['x'\]"),
    ("cli-ll-objects-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/numpy-inside.pt"],
     r"Python objects other than tensors"),
    ("cli-ll-complex-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/complex.pt"], r"complex64 values"),
    ("cli-ll-int-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/int.pt"], r"int64 values.*floating-point"),
    ("cli-ll-nan-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/nan.pt"], r"contains NaN or Inf \(samples \[0\]\)"),
    ("cli-ll-wide-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/wide.pt"], r"sample shape \(3,\)"),
    ("cli-ll-flat-pt", ["likelihood", "--problem", "ring2d", "--data", "{t}/flat.pt"], r"must have shape \(batch"),
    ("cli-ll-objects-npy", ["likelihood", "--problem", "ring2d", "--data", "{t}/objects.npy"], r"pickled array"),
    ("cli-ll-strings-npy", ["likelihood", "--problem", "ring2d", "--data", "{t}/strings.npy"], r"dtype <U1"),
    ("cli-ll-bools-npy", ["likelihood", "--problem", "ring2d", "--data", "{t}/bools.npy"], r"dtype bool"),
    ("cli-ll-garbage-npy", ["likelihood", "--problem", "ring2d", "--data", "{t}/garbage.npy"], r"as a \.npy array"),
    ("cli-ll-seed-huge", ["likelihood", "--problem", "ring2d", "--seed", "18446744073709551616"],
     r"seed 18446744073709551616 \(--seed\) is out of range"),
    ("cli-ll-seed-negative", ["likelihood", "--problem", "ring2d", "--n", "4", "--seed", "-5"], r"seed -5 .*out of range"),
    ("cli-ll-probes-zero", ["likelihood", "--problem", "ring2d", "--probes", "0"], r"expected a positive integer"),
    ("cli-ll-divergence", ["likelihood", "--problem", "ring2d", "--divergence", "skilling"], r"valid: hutchinson, exact"),
    ("cli-ll-rtol-negative", ["likelihood", "--problem", "ring2d", "--rtol", "-1"], r"rtol must be a positive"),
    ("cli-ll-rtol-word", ["likelihood", "--problem", "ring2d", "--rtol", "tight"], r"invalid float value: 'tight'"),
    ("cli-ll-model-no-data", ["likelihood", "--model", "digits"], r"give --data"),
    ("cli-tune-out-suffix", ["tune", "--problem", "ring2d", "--nfe", "4", "--out", "{t}/g.txt"], r"must end in \.json"),
    ("cli-tune-out-proc", ["tune", "--problem", "ring2d", "--nfe", "4", "--out", "/proc/g.json"], r"cannot write"),
    ("cli-tune-no-nfe", ["tune", "--problem", "ring2d", "--out", "{t}/g.json"], r"required: --nfe"),
    ("cli-tune-fresh-negative", ["tune", "--problem", "ring2d", "--nfe", "4", "--fresh", "-2", "--out", "{t}/g.json"],
     r"--fresh must be >= 0"),
    ("cli-tune-pilot-float", ["tune", "--problem", "ring2d", "--nfe", "4", "--pilot", "2.5", "--out", "{t}/g.json"],
     r"expected a positive integer"),
    ("cli-tune-adaptive", ["tune", "--problem", "ring2d", "--solver", "dopri5", "--nfe", "4", "--out", "{t}/g.json"],
     r"fixed-step"),
    ("cli-tune-init-file", ["tune", "--problem", "ring2d", "--solver", "unipc", "--nfe", "4", "--init",
                            "{t}/vp-grid.json", "--out", "{t}/g.json"], r"only for --solver learned"),
    ("cli-tune-init-kind", ["tune", "--problem", "ring2d", "--nfe", "4", "--init", "nope", "--out", "{t}/g.json"],
     r"unknown grid 'nope'"),
    ("cli-tune-denoise-final", ["tune", "--problem", "ring2d", "--nfe", "4", "--denoise-final", "maybe", "--out",
                                "{t}/g.json"], r"invalid choice: 'maybe'"),
    ("cli-tune-learned-options", ["tune", "--problem", "ring2d", "--solver", "learned:history=2", "--nfe", "4", "--out",
                                  "{t}/g.json"], r"takes no options"),
    ("cli-list-unknown", ["list", "everything"], r"valid choices: solvers, schedules"),
    ("cli-unknown-command", ["frobnicate"], r"invalid choice: 'frobnicate'"),
]


# --- the tests -----------------------------------------------------------------------------------------------
API = SAMPLE + LIKELIHOOD + TUNE + OTHERS


@pytest.mark.parametrize("fn, regex, exc", API)
def test_api_bad_input(fn, regex, exc):
    with pytest.raises(BaseException) as info:
        fn()
    why = diffsolve_error(info.value)
    assert why is None, why
    assert isinstance(info.value, exc)
    assert re.search(regex, str(info.value)), f"{regex!r} not in: {info.value}"


@pytest.mark.parametrize("name, change, regex", GRID_FILES, ids=[g[0] for g in GRID_FILES])
def test_tuned_grid_file(name, change, regex, tmp_path):
    path = _bad_grid_file(tmp_path, f"{name}.json", change)
    with pytest.raises(BaseException) as info:
        TunedGrid.load(path)
    assert diffsolve_error(info.value) is None, diffsolve_error(info.value)
    assert str(info.value).startswith(str(path)) and re.search(regex, str(info.value)), str(info.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    _files(tmp)
    return tmp


def run_cli(argv) -> tuple[int, str]:
    """The exit status and stderr of ``diffsolve argv`` (argparse's own errors exit through SystemExit)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize("argv, regex", [pytest.param(a, r, id=i) for i, a, r in CLI])
def test_cli_bad_input(argv, regex, files, monkeypatch):
    monkeypatch.chdir(files)
    argv = [a.replace("{t}", str(files)) for a in argv]
    for made in [*Path(files).glob("x.*"), Path(files) / "g.json"]:
        made.unlink(missing_ok=True)
    code, err = run_cli(argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err and "error:" in err and "weights_only" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.search(regex, last), f"{regex!r} not in: {last}"
    assert not list(Path(files).glob("x.*")) and not (Path(files) / "g.json").exists()  # no work was written


def test_the_catalogue_is_large_and_its_ids_unique():
    ids = [p.id for p in API] + [g[0] for g in GRID_FILES] + [c[0] for c in CLI]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(ids) >= 150, len(ids)


def test_a_range_of_seeds_stays_lazy():
    """--seeds 0-199999999 costs nothing until used: len, indexing, slicing, iteration, equality."""
    seeds = parse_seeds("0-199999999", distinct=True)
    assert len(seeds) == 200_000_000 and seeds[-1] == 199_999_999 and 123_456_789 in seeds
    assert seeds[5:8] == [5, 6, 7] and list(seeds[:3]) == [0, 1, 2] and seeds[::100_000_000] == [0, 100_000_000]
    assert parse_seeds("1,5,10-12") == [1, 5, 10, 11, 12] and parse_seeds("1,5,10-12")[2:4] == [10, 11]
    assert parse_seeds(seeds) is seeds  # checked once: passing it on costs nothing


def counts() -> dict:
    groups = {"sample": SAMPLE, "log_likelihood": LIKELIHOOD, "tune_steps/tune_solver": TUNE,
              "parse_seeds, NoiseSource, Denoiser, get_solver, make_grid, zoo, load_factory, bench": OTHERS,
              "TunedGrid.load": GRID_FILES, "command line": CLI}
    return {k: len(v) for k, v in groups.items()}


if __name__ == "__main__":
    c = counts()
    for k, n in c.items():
        print(f"{n:4d}  {k}")
    print(f"{sum(c.values()):4d}  bad inputs in all (run them: python -m pytest {Path(__file__).name} -q)")
    sys.exit(0)
