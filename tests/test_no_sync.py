"""No host–device synchronisation inside the integration loop, checked without a GPU.

A tensor on PyTorch's ``meta`` device has a shape and dtype but no data: everything that would make
a CUDA run wait for the device (``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``, ``.tolist()``,
``nonzero``) raises on it. Running every fixed-step solver's loop on meta tensors therefore proves
that no step reads a value back from the device; the one deliberate read, the deferred NaN/Inf check
after the last step (``Denoiser.check_finite``), is counted instead of run.
"""
import pytest
import torch

import diffsolve as ds
from diffsolve.denoiser import PREDICTIONS
from diffsolve.processes import NoiseLevel
from diffsolve.schedules import SCHEDULES
from diffsolve.loop import integrate

from helpers import FIXED

SHAPE = (3, 2)


class _Net(torch.nn.Module):
    def forward(self, x, t):
        return 0.1 * x


class _MetaNoise:
    draws = 0

    def randn(self, rows=None):
        return torch.zeros(*SHAPE, device="meta", dtype=torch.float64)


def test_meta_tensors_refuse_every_synchronising_read():
    z = torch.zeros(3, device="meta")
    for read in (lambda: z.sum().item(), lambda: float(z.sum()), lambda: bool((z > 0).any()), lambda: z.cpu(),
                 lambda: z.tolist(), lambda: z.nonzero()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_loop_never_reads_the_device(schedule, prediction):
    den = ds.Denoiser(_Net(), SCHEDULES[schedule](), prediction=prediction)
    checks = []

    def check_finite():  # the deferred finiteness flags, one per network call, read once per solve
        checks.append(len(den._pending))
        den._pending.clear()

    den.check_finite = check_finite
    t = ds.make_grid(den.schedule, 6, "log_snr")
    for name in FIXED + ["unipc:predict_x0=false:order=3", "deis:variable=rho"]:
        solver = ds.solvers.get_solver(name)
        eta = 0.5 if solver.stochastic and name not in ("ddim", "euler") else 0.0
        x = torch.zeros(*SHAPE, device="meta", dtype=torch.float64)
        nfe = den.nfe
        out = integrate(solver, den, x, t, level=NoiseLevel(den.schedule, eta=eta), source=_MetaNoise(),
                           denoise_final=True).x
        assert out.device.type == "meta" and out.shape == SHAPE, name
        assert checks[-1] == den.nfe - nfe > 0, name
    # the public entry point too (it draws nothing for a deterministic solver given x)
    res = ds.sample(den, torch.zeros(*SHAPE, device="meta", dtype=torch.float64), solver="dpmpp_2m", steps=6,
                    denoise_final=True)
    assert res.x.device.type == "meta" and checks[-1] == res.nfe == 7
