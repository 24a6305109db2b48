"""Step-for-step agreement with diffusers' schedulers on the same exact ε-network (docs/math.md §2, §4, §6).

The network is the analytic mixture's exact ε in float64, called the diffusers way: with an integer
training timestep k (DDPMSchedule maps it to t = (k + 1)/N, the Denoiser's default time label).
Both sides use the same ᾱ table (diffusers' float32 linear betas, read into DDPMSchedule).

Mapping: diffusers visits the timesteps τ_0 > … > τ_{n−1} and then steps to σ = 0; diffsolve's
grid is t_j = DDPMSchedule.t_of_timestep(τ_j) (n − 1 steps) and diffusers' final step to σ = 0 is
``denoise_final`` at t_{n−1}. We compare every intermediate state and the final sample.

Precision: diffusers stores ``sigmas`` in float32 and DPMSolverMultistepScheduler casts the sample
to float32 inside ``step``. ``exact=True`` replaces the scheduler's ``sigmas`` / ``alphas_cumprod``
by float64 values of the same table (DDIM and UniPC then run fully in float64); the native float32
tables agree to ~1e-6.
"""
import pytest
import torch

import diffsolve as ds
from diffsolve.processes import NoiseLevel
from diffsolve.solvers import get_solver
from diffsolve.loop import integrate

diffusers = pytest.importorskip("diffusers")

N = 1000


def make_problem():
    """(schedule, denoiser, diffusers-style net, x_T) shared by every check."""
    gm = ds.GaussianMixture.random(d=8, n_modes=4, seed=3, spread=0.7)
    ref_sched = diffusers.DDIMScheduler(num_train_timesteps=N)  # default linear betas 1e-4 .. 2e-2
    sch = ds.DDPMSchedule(alphas_cumprod=ref_sched.alphas_cumprod.double())
    exact = gm.denoiser(sch, "eps")  # network fed solver time t

    def net(x, k):  # the diffusers-style network: integer timestep in, ε out
        k = torch.as_tensor(k, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return exact.net(x, sch.t_of_timestep(k))

    den = ds.Denoiser(net, sch, prediction="eps", net_dtype=torch.float64)
    xT = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return sch, den, net, xT


@pytest.fixture(scope="module")
def problem():
    return make_problem()


def _float64_tables(sched, exact: bool):
    if not exact:
        return
    ac = sched.alphas_cumprod.double()
    sched.alphas_cumprod = ac
    if hasattr(sched, "sigmas") and sched.sigmas is not None and len(sched.sigmas) == len(sched.timesteps) + 1:
        s = ((1 - ac[sched.timesteps]) / ac[sched.timesteps]).sqrt()
        sched.sigmas = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if sched.config.set_alpha_to_one else ac[0]


def run_diffusers(sched, net, xT, steps, exact=True):
    sched.set_timesteps(steps)
    _float64_tables(sched, exact)
    x, states = xT.clone(), []
    for k in sched.timesteps:
        x = sched.step(net(x, int(k)), k, x).prev_sample.to(torch.float64)
        states.append(x)
    return sched.timesteps.clone(), states


def run_diffsolve(solver, den, xT, timesteps, denoise_final=True, **options):
    sch = den.schedule
    t = sch.t_of_timestep(timesteps.to(torch.float64))
    s = get_solver(solver, **options)
    x, traj, _ = integrate(s, den, xT, t, level=NoiseLevel(sch, 0.0), denoise_final=denoise_final, trajectory=True)
    return traj[1:]


def max_rel_diff(a_states, b_states):
    """Largest difference over all states, relative to each state's largest entry."""
    assert len(a_states) == len(b_states)
    for a, b in zip(a_states, b_states):
        assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(a_states, b_states))


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim(problem, steps, set_alpha_to_one):
    sch, den, net, xT = problem
    sched = diffusers.DDIMScheduler(num_train_timesteps=N, clip_sample=False, set_alpha_to_one=set_alpha_to_one)
    ts, ref = run_diffusers(sched, net, xT, steps)
    # set_alpha_to_one: the last step goes to ᾱ = 1 (σ = 0), i.e. x̂0 at the last timestep (= 0)
    # = diffsolve's denoise_final. Otherwise it goes from timestep 0 to ᾱ_0 itself: the identity.
    out = run_diffsolve("ddim", den, xT, ts, denoise_final=set_alpha_to_one)
    if not set_alpha_to_one:
        out = out + [out[-1]]
    assert max_rel_diff(out, ref) < 1e-12


@pytest.mark.parametrize("order,steps,exact", [(2, 10, True), (2, 20, True), (3, 10, True), (3, 20, True),
                                               (3, 20, False)])
def test_dpmpp_multistep(problem, order, steps, exact):
    sch, den, net, xT = problem
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=N, algorithm_type="dpmsolver++",
                                                  solver_order=order, final_sigmas_type="zero")
    ts, ref = run_diffusers(sched, net, xT, steps, exact=exact)
    # diffusers: last step to σ = 0 of first order (= denoise_final); with < 15 timesteps the one
    # before it of order ≤ 2 (= diffsolve's lower_order_final rule, lower_order_below=15, the default);
    # its third-order term is DPM-Solver's (third_order="dpm_solver").
    out = run_diffsolve("dpmpp_2m", den, xT, ts, order=order, third_order="dpm_solver")
    tol = 1e-5 if not exact else 1e-6  # diffusers casts the sample to float32 inside step()
    assert max_rel_diff(out, ref) < tol
    if order == 3 and steps < 15:  # diffusers without the ramp = diffsolve without it
        sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=N, algorithm_type="dpmsolver++",
                                                      solver_order=3, final_sigmas_type="zero",
                                                      lower_order_final=False)
        ts, ref_nr = run_diffusers(sched, net, xT, steps, exact=exact)
        out_nr = run_diffsolve("dpmpp_3m", den, xT, ts, third_order="dpm_solver", lower_order_final=False)
        assert max_rel_diff(out_nr, ref_nr) < tol
    if order == 3:
        # the options matter: the exact third-order term, and (< 15 steps) the final-order ramp
        assert max_rel_diff(run_diffsolve("dpmpp_2m", den, xT, ts, order=3), ref) > 1e-4
        if steps < 15:
            other = run_diffsolve("dpmpp_2m", den, xT, ts, order=3, third_order="dpm_solver", lower_order_final=False)
            assert max_rel_diff(other, ref) > 1e-4


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_solver_type(problem, solver_type):
    sch, den, net, xT = problem
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=N, algorithm_type="dpmsolver++",
                                                  solver_order=2, solver_type=solver_type, final_sigmas_type="zero")
    ts, ref = run_diffusers(sched, net, xT, 12)
    ours = {"midpoint": "midpoint", "heun": "taylor"}[solver_type]
    assert max_rel_diff(run_diffsolve("dpmpp_2m", den, xT, ts, solver_type=ours), ref) < 1e-6


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order,steps", [(1, 10), (2, 10), (3, 10), (3, 25)])
def test_unipc(problem, variant, order, steps):
    sch, den, net, xT = problem
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=N, solver_order=order, solver_type=variant,
                                              final_sigmas_type="zero")
    ts, ref = run_diffusers(sched, net, xT, steps)
    # diffusers ramps the order down at the end for any number of steps: lower_order_below=None.
    out = run_diffsolve("unipc", den, xT, ts, order=order, variant=variant, lower_order_below=None)
    if variant == "bh1" and not bool(torch.isfinite(ref[-1]).all()):
        # diffusers' bh1 step to σ = 0 computes B(h)·0 with B(h) = −h = −∞: NaN. diffsolve's final
        # denoise is the limit (x̂0 at the last timestep), which diffusers' bh2 gives.
        ref, out = ref[:-1], out[:-1]
    assert max_rel_diff(out, ref) < 1e-10
    if order == 3 and steps >= 15:  # diffsolve's default ramps only below 15 steps, diffusers' always
        default = run_diffsolve("unipc", den, xT, ts, order=3, variant=variant)[:len(ref)]
        assert max_rel_diff(default, ref) > 1e-4


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_noise_prediction(problem, variant, order):
    """UniPC in noise prediction = diffusers' UniPCMultistepScheduler(predict_x0=False), step for step."""
    sch, den, net, xT = problem
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=N, solver_order=order, solver_type=variant,
                                              predict_x0=False, final_sigmas_type="zero")
    ts, ref = run_diffusers(sched, net, xT, 12)
    out = run_diffsolve("unipc", den, xT, ts, order=order, variant=variant, predict_x0=False,
                        lower_order_below=None)
    # diffusers' last ε̂-form step, to σ = 0 (λ = ∞), is NaN for both variants; diffsolve ends with
    # the final denoise instead. Compare the states before it.
    n = len(ref) if bool(torch.isfinite(ref[-1]).all()) else len(ref) - 1
    assert max_rel_diff(out[:n], ref[:n]) < 1e-10


class _GivenNoise:
    """Noise source replaying a fixed list of draws (diffsolve side of the SDE check)."""

    def __init__(self, zs):
        self.zs, self.j = zs, 0

    def randn(self):
        self.j += 1
        return self.zs[self.j - 1]


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_dpmpp_2m(problem, solver_type):
    """SDE-DPM-Solver++(2M) = diffsolve's dpmpp_2m_sde at η = 1 (ν = g), fed the same Gaussian draws."""
    sch, den, net, xT = problem
    steps = 12
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(xT.shape, dtype=torch.float64, generator=g).float().double() for _ in range(steps)]
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=N, algorithm_type="sde-dpmsolver++",
                                                  solver_order=2, solver_type=solver_type, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    _float64_tables(sched, True)
    x, ref = xT.clone(), []
    for j, k in enumerate(sched.timesteps):
        x = sched.step(net(x, int(k)), k, x, variance_noise=zs[j]).prev_sample.to(torch.float64)
        ref.append(x)
    t = sch.t_of_timestep(sched.timesteps.to(torch.float64))
    s = get_solver("dpmpp_2m_sde", solver_type={"midpoint": "midpoint", "heun": "taylor"}[solver_type])
    traj = integrate(s, den, xT, t, level=NoiseLevel(sch, eta=1.0), source=_GivenNoise(zs),
                        denoise_final=True, trajectory=True).trajectory
    assert max_rel_diff(traj[1:], ref) < 1e-6


@pytest.mark.parametrize("order,steps", [(1, 10), (2, 10), (3, 10), (3, 25)])
def test_deis(problem, order, steps):
    """DEISMultistepScheduler (logρ) = diffsolve's deis. diffusers' last step goes to timestep 0's σ
    (t_min), not to σ = 0: the diffsolve grid ends at t_min and has no final denoise."""
    sch, den, net, xT = problem
    sched = diffusers.DEISMultistepScheduler(num_train_timesteps=N, solver_order=order)
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()
    sched.alphas_cumprod = ac
    s = ((1 - ac) / ac).sqrt()
    sched.sigmas = torch.cat([s[sched.timesteps], s[:1]])  # float64 copy of its float32 table
    x, ref = xT.clone(), []
    for k in sched.timesteps:
        x = sched.step(net(x, int(k)), k, x).prev_sample.to(torch.float64)
        ref.append(x)
    t = torch.cat([sch.t_of_timestep(sched.timesteps.to(torch.float64)), torch.tensor([sch.t_min], dtype=torch.float64)])
    traj = integrate(get_solver("deis", order=order), den, xT, t, level=NoiseLevel(sch, 0.0), trajectory=True).trajectory
    assert max_rel_diff(traj[1:], ref) < 1e-10
    if order == 3:  # the noise-prediction method is not DPM-Solver++ in disguise
        other = integrate(get_solver("dpmpp_3m"), den, xT, t, level=NoiseLevel(sch, 0.0), trajectory=True).trajectory
        assert max_rel_diff(other[1:], ref) > 1e-4
