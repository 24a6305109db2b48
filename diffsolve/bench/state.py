"""One problem's state in a benchmark run: its seeds and shards, its (timed) denoiser, the reference
ODE solution, and the metrics of a row's gathered samples (:mod:`.metrics`, and the feature metrics
of :mod:`.feature_metrics` when asked for); and how a row that raises is given up on every rank.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ..distributed import DistContext
from ..noise import parse_seeds
from . import metrics as M
from .config import DTYPES, BenchConfig
from .problems import EXACT_SEED_FLOOR as _DATA_SEED_A
from .problems import EXACT_SEED_TARGET as _DATA_SEED_B
from .problems import Problem
from .._text import StatusLine

# --- timing -------------------------------------------------------------------------------------
class NetTimer(torch.nn.Module):
    """Wraps a denoiser's network and accumulates the time spent in its calls."""

    def __init__(self, net, sync: bool):
        super().__init__()
        self.inner = net
        self.sync = sync
        self.enabled = True
        self.seconds = 0.0

    def forward(self, x, label):
        if not self.enabled:
            return self.inner(x, label)
        if self.sync:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        out = self.inner(x, label)
        if self.sync:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0
        return out


def sync_device(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --- a row that raises ------------------------------------------------------------------------------
class RowFailed(Exception):
    """A row's work raised (on some rank): the row is recorded as failed, the run goes on."""


def describe(e: BaseException) -> str:
    """An exception as one line: ``Type: message`` (whitespace collapsed, at most 500 characters)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 500 else text[:497] + "..."


def attempt(dist: DistContext, fn):
    """``fn()`` on every rank; if it raised on any of them, :class:`RowFailed` on all of them."""
    error, out = None, None
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - whatever the network raises fails this row only
        error = describe(e)
    error = dist.first_error(error)
    if error is not None:
        raise RowFailed(error)
    return out


# --- per-problem state --------------------------------------------------------------------------
class ProblemState:
    """Seeds, shards, the denoiser, the reference solution and the metric targets of one problem."""

    def __init__(self, problem: Problem, cfg: BenchConfig, dist: DistContext, progress: StatusLine, features=None,
                 weights: str | None = None):
        self.problem, self.cfg, self.dist, self.progress = problem, cfg, dist, progress
        self.features = features  # a FeatureMetrics (rank 0, when feature metrics are asked for) or None
        self.weights = weights  # a trained model's weights fingerprint, recorded in its rows; None: analytic
        if cfg.seeds is not None:
            self.seeds = parse_seeds(cfg.seeds)
        else:
            self.seeds = list(range(cfg.n_samples or problem.n_samples))
        self.n = len(self.seeds)
        self.local_seeds = dist.shard(self.seeds)
        self.device = dist.device
        self.dtype = DTYPES[cfg.dtype]
        self.den = problem.denoiser()
        net_time = cfg.net_time if cfg.net_time is not None else torch.device(self.device).type == "cpu"
        if net_time:
            if not isinstance(self.den.net, NetTimer):
                self.den.net = NetTimer(self.den.net, sync=torch.device(self.device).type == "cuda")
            self.timer = self.den.net
        else:
            self.timer = None
        self.sch = self.den.schedule
        self._ref: dict = {}
        self._targets = None
        self.warmed = set()

    @property
    def shape(self):
        return tuple(self.problem.shape)

    def x_T(self, t_start: float) -> Tensor:
        """This rank's starting points at t_start, drawn exactly as ``sample`` draws them."""
        from ..noise import NoiseSource

        src = NoiseSource(len(self.local_seeds), self.shape, seeds=self.local_seeds, device=self.device,
                          dtype=self.dtype)
        return float(self.sch.sigma(t_start)) * src.randn()

    def reference(self, t_start: float, t_end: float, denoise_final: bool) -> Tensor:
        """The exact ODE solution from every x_T (at t_start) to t_end, then the final denoise when
        the row ends with one (gathered on every rank; cached per span and final denoise)."""
        span = (float(t_start), float(t_end), bool(denoise_final))
        if span not in self._ref:
            p = self.problem
            tol = self.cfg.reference_tol or p.reference_tol
            how = "closed form" if p.exact and p.mixture.K == 1 else f"dopri5, tol {tol:g}"
            self.progress(f"{p.name}: reference ODE solution for {self.n} samples ({how})", force=True)
            ref_den = p.denoiser()  # its own NFE counter; its timer (if shared) is paused below
            timer = ref_den.net if isinstance(ref_den.net, NetTimer) else None
            if timer is not None:
                timer.enabled = False
            try:
                with torch.no_grad():
                    local = attempt(self.dist, lambda: M.reference_solution(
                        ref_den, self.x_T(span[0]), span[0], span[1], denoise_final=span[2],
                        tol=tol, mixture=p.mixture))
            finally:
                if timer is not None:
                    timer.enabled = True
            self._ref[span] = self.dist.gather(local.to(torch.float64), self.n).cpu()
        return self._ref[span]

    def reference_name(self) -> str:
        p = self.problem
        if p.exact and p.mixture.K == 1:
            return "closed form"
        return f"dopri5 in log-SNR, per-sample rtol=atol={self.cfg.reference_tol or p.reference_tol:g}"

    def targets(self) -> dict:
        """Exact batches / held-out data and the Gaussian targets (rank 0 only)."""
        if self._targets is None:
            p, n = self.problem, self.n
            t = {}
            if p.exact:
                t["batch"] = p.exact_samples(n, _DATA_SEED_B)        # what samples are compared with
                t["batch_floor"] = p.exact_samples(n, _DATA_SEED_A)  # an exact batch in the sampler's place
                t["gauss"] = M.GaussianTarget.from_mixture(p.mixture)
            elif p.heldout is not None:
                held = p.heldout()
                t["batch"] = held
                t["gauss"] = M.GaussianTarget.from_samples(held)
                train = p.train() if p.train is not None else None
                if train is not None:
                    g = torch.Generator().manual_seed(_DATA_SEED_A)
                    idx = torch.randperm(train.shape[0], generator=g)[: min(n, train.shape[0])]
                    t["batch_floor"] = train[idx]
            self._targets = t
        return self._targets

    def metrics(self, x: Tensor, span: tuple | None) -> tuple[dict, dict, dict]:
        """(metrics, floors, intervals) of the gathered samples x (float64, CPU); ``span`` = (t_start,
        t_end, denoise_final) of a deterministic run (its error against the exact ODE solution is
        measured), else None."""
        p = self.problem
        m, f = {}, {}
        if span is not None:
            m["rms_error"] = M.rms_error(x, self.reference(*span))
            f["rms_error"] = None
        t = self.targets()
        proj = self.cfg.n_projections
        if p.exact:
            m["sliced_w2"] = M.sliced_wasserstein(x, t["batch"], proj)
            f["sliced_w2"] = M.sliced_wasserstein(t["batch_floor"], t["batch"], proj)
            m["frechet"] = M.frechet_distance(x, t["gauss"])
            f["frechet"] = M.frechet_distance(t["batch_floor"], t["gauss"])
            m["log_p0"] = M.mean_log_prob(x, p.mixture)
            f["log_p0"] = M.mean_log_prob(t["batch_floor"], p.mixture)
        elif "batch" in t:
            xp = p.to_pixels(x)
            m["frechet_heldout"] = M.frechet_distance(xp, t["gauss"])
            m["sliced_w2_heldout"] = M.sliced_wasserstein(xp, t["batch"], proj)
            if "batch_floor" in t:
                f["frechet_heldout"] = M.frechet_distance(t["batch_floor"], t["gauss"])
                f["sliced_w2_heldout"] = M.sliced_wasserstein(t["batch_floor"], t["batch"], proj)
        intervals = {}
        if self.features is not None:
            fm, intervals, ff = self.features(x)
            m.update(fm)
            f.update(ff)
        return m, f, intervals
