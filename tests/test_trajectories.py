"""Trajectories from the samplers themselves (``num_frames``): the default path is untouched, the
frames sit at the documented times, start at the prior draw, end at the samples, and -- driven by
the exact score of Gaussian data -- follow the closed-form marginals ``p_t``."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import exact_scores
import sampling
import sde_lib
from configs.toy import gaussian_mixture_exact
from infra.devices import Devices, gather

Z = 4.5  # standard errors allowed per statistic (two-sided p = 7e-6)
# Gaussian data N(MU, S^2 I) in D = 2.
MU, S = np.array([0.7, -0.4]), 0.3
PC_CASES = [("euler_maruyama", "none"), ("reverse_diffusion", "langevin")]


def gaussian_score(sde: sde_lib.SDE) -> sde_lib.ScoreFn:
  """The exact score of N(MU, S^2 I) data."""
  return exact_scores.gaussian_mixture_score(sde, MU[None], np.array([S]), np.ones(1))


def marginal(sde: sde_lib.SDE, t: np.ndarray):
  """Mean ``[K, D]`` and per-coordinate std ``[K, 1]`` of the exact ``p_t`` at times ``t: [K]``."""
  t = jnp.asarray(t)
  a, std = np.asarray(sde.mean_coeff(t))[:, None], np.asarray(sde.marginal_std(t))[:, None]
  return a * MU[None], np.sqrt(a**2 * S**2 + std**2)


# --------------------------------------------------------------------- default path unchanged

SHAPE, NUM_STEPS, FRAMES = (2000, 2), 30, 4
_SDE = sde_lib.VPSDE(N=NUM_STEPS)
CASES = {f"pc-{p}-{c}": lambda frames, p=p, c=c: sampling.get_pc_sampler(
    _SDE, SHAPE, p, c, n_steps=2, denoise=True, num_frames=frames) for p, c in PC_CASES}
CASES["ode"] = lambda frames: sampling.get_ode_sampler(_SDE, SHAPE, denoise=True,
                                                       num_frames=frames)
_DEFAULTS = {f"pc-{p}-{c}": lambda p=p, c=c: sampling.get_pc_sampler(
    _SDE, SHAPE, p, c, n_steps=2, denoise=True) for p, c in PC_CASES}
_DEFAULTS["ode"] = lambda: sampling.get_ode_sampler(_SDE, SHAPE, denoise=True)
RNG = jax.random.PRNGKey(0)


@functools.lru_cache(maxsize=None)
def _outputs():
  """Every case built without ``num_frames``, with 0 and with FRAMES, and the ODE's framed case
  without denoising, run in ONE jitted program (one compilation instead of ten)."""
  score_fn = gaussian_score(_SDE)
  samplers = {(name, kind): sampler for name in CASES for kind, sampler in
              [("default", _DEFAULTS[name]()), ("zero", CASES[name](0)),
               ("framed", CASES[name](FRAMES))]}
  samplers["ode", "framed, not denoised"] = sampling.get_ode_sampler(_SDE, SHAPE,
                                                                     num_frames=FRAMES)
  return jax.jit(lambda rng: {k: f(rng, score_fn) for k, f in samplers.items()})(RNG)


@pytest.mark.parametrize("name", list(CASES))
def test_without_frames_the_sampler_is_todays_and_frames_change_no_output(name):
  """num_frames=0 traces to the very jaxpr of the sampler built without it and gives its outputs
  bit for bit; with frames the samples and NFE are unchanged too."""
  score_fn = gaussian_score(_SDE)
  jaxpr = lambda sampler: str(jax.make_jaxpr(lambda rng: sampler(rng, score_fn))(RNG))
  assert jaxpr(CASES[name](0)) == jaxpr(_DEFAULTS[name]())
  out = _outputs()
  (x, nfe), (x0, nfe0) = out[name, "default"], out[name, "zero"]
  framed, nfe_framed, _ = out[name, "framed"]
  np.testing.assert_array_equal(x0, x)
  np.testing.assert_array_equal(framed, x)  # ODE: saving at ts does not change the steps
  assert int(nfe0) == int(nfe_framed) == int(nfe) > 1


@pytest.mark.parametrize("name", list(CASES))
def test_frames_start_at_the_prior_draw_and_end_at_the_samples(name):
  x, _, traj = _outputs()[name, "framed"]
  assert traj.t.dtype == jnp.float32 and traj.t.shape == (FRAMES,)
  assert traj.x.shape == (FRAMES,) + SHAPE and traj.x.dtype == x.dtype
  # The PC sampler splits its key into (prior, loop); the ODE sampler draws from it directly.
  prior_rng = RNG if name == "ode" else jax.random.split(RNG)[0]
  np.testing.assert_array_equal(traj.x[0], _SDE.prior_sampling(prior_rng, SHAPE))
  np.testing.assert_array_equal(traj.x[-1], x)
  # K - 1 = 3 divides NUM_STEPS = 30: the PC frame times are evenly spaced too.
  np.testing.assert_allclose(traj.t, np.linspace(1.0, 1e-3, FRAMES), rtol=1e-6)


def test_ode_frames_follow_the_exact_marginals():
  """VP driven by the exact score of N(MU, S^2 I): at every saved t the frames' per-coordinate
  mean and std match the closed-form p_t (mean a(t) MU, std sqrt(a^2 S^2 + std(t)^2)) within
  Z standard errors (std / sqrt(n) for the mean, std / sqrt(2 n) for the std). The solve starts
  from the prior N(0, I) rather than p_T; the PF-ODE carries the difference affinely, shifting
  frame means by at most a(T) |MU| std(t) / std(T) (0.005 std(t), 0.2 standard errors here)."""
  _, _, traj = _outputs()["ode", "framed, not denoised"]
  n = SHAPE[0]
  mean, std = marginal(_SDE, np.asarray(traj.t))
  frames = np.asarray(traj.x, np.float64)
  assert np.all(np.abs(frames.mean(1) - mean) <= Z * std / np.sqrt(n)), (frames.mean(1), mean)
  assert np.all(np.abs(frames.std(1) - std) <= Z * std / np.sqrt(2 * n)), (frames.std(1), std)


def test_ode_denoising_applies_to_the_last_frame_only():
  out = _outputs()
  x, nfe, traj = out["ode", "framed"]
  x_plain, nfe_plain, traj_plain = out["ode", "framed, not denoised"]
  np.testing.assert_array_equal(traj.x[:-1], traj_plain.x[:-1])
  np.testing.assert_array_equal(traj_plain.x[-1], x_plain)
  denoise = jax.jit(lambda x: sampling.tweedie_denoise(_SDE, gaussian_score(_SDE), x,
                                                       jnp.full((SHAPE[0],), 1e-3)))
  np.testing.assert_allclose(x, denoise(x_plain), rtol=1e-5, atol=1e-6)
  assert int(nfe) == int(nfe_plain) + 1


# ----------------------------------------------------------------------------- PC frames


def test_pc_frames_are_the_loop_states_at_their_grid_indices():
  """Each frame is the loop's state at its grid index (stepped here by hand); the last is the
  denoised sample, not the state at eps."""
  sde, shape, num_steps = sde_lib.VPSDE(), (6, 2), 12
  score_fn = lambda x, t: -x
  # Deterministic (probability-flow Euler), so the states can be recomputed step by step.
  sampler = sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", probability_flow=True,
                                    denoise=True, num_steps=num_steps, num_frames=5)
  x, nfe, traj = jax.jit(lambda rng: sampler(rng, score_fn))(jax.random.PRNGKey(2))
  assert nfe == num_steps + 1
  np.testing.assert_allclose(traj.t, np.linspace(1.0, 1e-3, 5), rtol=1e-6)
  grid = jnp.linspace(1.0, 1e-3, num_steps + 1)
  update = jax.jit(sampling.EulerMaruyamaPredictor(sde, score_fn, probability_flow=True).update)
  state, states = traj.x[0], [traj.x[0]]
  for t, t_next in zip(grid[:-1], grid[1:]):
    state, _ = update(jax.random.PRNGKey(0), state, jnp.full((6,), t), jnp.full((6,), t_next))
    states.append(state)
  for k, i in enumerate(sampling.pc_frame_indices(num_steps, 5)[1:-1], start=1):
    np.testing.assert_allclose(traj.x[k], states[i], rtol=1e-5, atol=1e-6)
  assert not np.allclose(traj.x[-1], states[-1])


def test_pc_frame_indices_rule():
  np.testing.assert_array_equal(sampling.pc_frame_indices(12, 5), [0, 3, 6, 9, 12])
  np.testing.assert_array_equal(sampling.pc_frame_indices(10, 4), [0, 3, 7, 10])  # 3.33, 6.67
  np.testing.assert_array_equal(sampling.pc_frame_indices(5, 6), np.arange(6))  # every state
  for n, k in [(7, 3), (500, 11), (999, 7), (3, 4)]:
    idx = sampling.pc_frame_indices(n, k)
    assert idx[0] == 0 and idx[-1] == n and np.all(np.diff(idx) > 0)
    assert np.all(np.abs(idx - np.arange(k) * n / (k - 1)) <= 0.5)  # within half a grid step


def test_pc_with_frames_is_one_scan_storing_k_frames_not_every_step():
  num_steps, num_frames = 50, 4
  sampler = sampling.get_pc_sampler(sde_lib.VESDE(), (3, 2), "reverse_diffusion", "langevin",
                                    num_steps=num_steps, num_frames=num_frames)
  jaxpr = jax.make_jaxpr(lambda rng: sampler(rng, lambda x, t: -x))(jax.random.PRNGKey(0)).jaxpr
  (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  assert scan.params["length"] == num_steps
  shapes = [v.aval.shape for v in scan.outvars]
  assert (num_frames, 3, 2) in shapes and all(s[:1] != (num_steps,) for s in shapes)


def test_bad_num_frames_raise():
  sde = sde_lib.VPSDE(N=5)
  for bad in (1, -2):
    with pytest.raises(ValueError, match="num_frames must be 0"):
      sampling.get_pc_sampler(sde, (2, 2), "euler_maruyama", "none", num_frames=bad)
    with pytest.raises(ValueError, match="num_frames must be 0"):
      sampling.get_ode_sampler(sde, (2, 2), num_frames=bad)
  with pytest.raises(ValueError, match=r"cannot exceed the 6 times of the PC grid"):
    sampling.get_pc_sampler(sde, (2, 2), "euler_maruyama", "none", num_frames=7)


# ------------------------------------------------------------------------------ builders


def test_build_sampler_passes_frames_through_sharded_like_the_samples():
  config = gaussian_mixture_exact.get_config()
  sde = builders.build_sde(config)
  devices = Devices()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  sampler = builders.build_sampler(config, sde, model, devices, 8, num_steps=20, num_frames=3)
  samples, nfe, traj = sampler(jax.random.PRNGKey(4), params)
  assert samples.sharding.is_equivalent_to(devices.batch, 2)
  assert traj.x.sharding.is_equivalent_to(devices.stacked_batch, 3)
  frames = gather(traj.x)
  assert frames.shape == (3, 8, 2) and np.asarray(traj.t).shape == (3,) and int(nfe) > 1
  np.testing.assert_array_equal(frames[-1], gather(samples))
