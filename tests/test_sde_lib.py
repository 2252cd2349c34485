"""Tests of sde_lib.py against independently derived float64 references.

References (numpy, float64), with B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2:

* VE:     f = 0, g = sigma(t) sqrt(2 log(sigma_max / sigma_min)) with sigma(t) = sigma_min
          (sigma_max / sigma_min)^t; marginal N(x0, sigma(t)^2), i.e. the process starts at
          x(0) = x0 + sigma_min z (sde_lib's convention).
* VP:     f = -beta x / 2, g = sqrt(beta); marginal N(e^{-B/2} x0, 1 - e^{-B}).
* sub-VP: f = -beta x / 2, g = sqrt(beta (1 - e^{-2B})); marginal N(e^{-B/2} x0, (1 - e^{-B})^2).
* sigma^t (Song's tutorial): f = 0, g = sigma^t; marginal N(x0, (sigma^{2t} - 1) / (2 log sigma)).
* OU:     f = -mu x, g = sigma; marginal N(e^{-mu t} x0, sigma^2 / (2 mu) (1 - e^{-2 mu t})); prior
          N(0, that variance at T).

For a linear SDE dx = k(t) x dt + g(t) dw the mean obeys dm/dt = k m and the variance
dV/dt = 2 k V + g^2; with V(0) = sigma_min^2 (VE) or 0 (VP, sub-VP) these ODEs determine the
marginal, which is what the finite-difference tests check against ``sde()``. The new SDEs
(sigma^t, OU) start at V(0) = 0.

Monte-Carlo checks allow ``Z_TOL`` standard errors (sd / sqrt(n) for means, sd / sqrt(2 n) for
Gaussian standard deviations) plus, for Euler-Maruyama, its exactly computed discretization bias.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sde_lib

Z_TOL = 5.0

CASES = {
    "ve": (sde_lib.VESDE, dict(sigma_min=0.01, sigma_max=50.0, N=1000)),
    "ve_small": (sde_lib.VESDE, dict(sigma_min=0.05, sigma_max=3.0, N=100)),
    "vp": (sde_lib.VPSDE, dict(beta_min=0.1, beta_max=20.0, N=1000)),
    "vp_small": (sde_lib.VPSDE, dict(beta_min=0.5, beta_max=5.0, N=50)),
    "subvp": (sde_lib.subVPSDE, dict(beta_min=0.1, beta_max=20.0, N=1000)),
    "sigma_power": (sde_lib.SigmaPowerSDE, dict(sigma=25.0, N=1000)),
    "ou": (sde_lib.OUSDE, dict(mu=0.5, sigma=1.0, T=10.0, N=1000)),
    "ou_short": (sde_lib.OUSDE, dict(mu=1.5, sigma=2.0, T=1.0, N=100)),
    "rectified_flow": (sde_lib.RectifiedFlow, dict(T=0.99, N=1000)),
    "rectified_flow_long": (sde_lib.RectifiedFlow, dict(T=0.999, N=100)),
}
MAIN = ("ve", "vp", "subvp", "sigma_power", "ou", "rectified_flow")


def make(name):
  cls, kwargs = CASES[name]
  return cls(**kwargs)


# ----------------------------------------------------------------------------- float64 references


def ref_int_beta(p, t):
  return p["beta_min"] * t + 0.5 * (p["beta_max"] - p["beta_min"]) * t**2


def ref_beta(p, t):
  return p["beta_min"] + t * (p["beta_max"] - p["beta_min"])


def ref_sigma(p, t):
  return p["sigma_min"] * (p["sigma_max"] / p["sigma_min"]) ** t


def ref_marginal(name, t):
  """``(a(t), std(t))`` of the perturbation kernel, float64."""
  cls, p = CASES[name]
  t = np.asarray(t, np.float64)
  if cls is sde_lib.VESDE:
    return np.ones_like(t), ref_sigma(p, t)
  if cls is sde_lib.SigmaPowerSDE:
    return np.ones_like(t), np.sqrt((p["sigma"] ** (2 * t) - 1) / (2 * np.log(p["sigma"])))
  if cls is sde_lib.OUSDE:
    mu, sigma = p["mu"], p["sigma"]
    return np.exp(-mu * t), np.sqrt(sigma**2 / (2 * mu) * (1 - np.exp(-2 * mu * t)))
  if cls is sde_lib.RectifiedFlow:
    return 1.0 - t, t
  big_b = ref_int_beta(p, t)
  a = np.exp(-0.5 * big_b)
  if cls is sde_lib.VPSDE:
    return a, np.sqrt(1.0 - np.exp(-big_b))
  return a, 1.0 - np.exp(-big_b)


def ref_coefficients(name, t):
  """``(k(t), g(t))`` with drift ``f = k x``, float64."""
  cls, p = CASES[name]
  t = np.asarray(t, np.float64)
  if cls is sde_lib.VESDE:
    return np.zeros_like(t), ref_sigma(p, t) * np.sqrt(2 * np.log(p["sigma_max"] / p["sigma_min"]))
  if cls is sde_lib.SigmaPowerSDE:
    return np.zeros_like(t), p["sigma"] ** t
  if cls is sde_lib.OUSDE:
    return np.full_like(t, -p["mu"]), np.full_like(t, p["sigma"])
  if cls is sde_lib.RectifiedFlow:  # f = d log a / dt x, g^2 = d std^2 / dt - 2 f std^2
    return -1.0 / (1.0 - t), np.sqrt(2.0 * t + 2.0 * t**2 / (1.0 - t))
  beta = ref_beta(p, t)
  if cls is sde_lib.VPSDE:
    return -0.5 * beta, np.sqrt(beta)
  return -0.5 * beta, np.sqrt(beta * (1.0 - np.exp(-2 * ref_int_beta(p, t))))


def ref_initial_variance(name):
  cls, p = CASES[name]
  return p["sigma_min"] ** 2 if cls is sde_lib.VESDE else 0.0


def ref_prior_std(name):
  """The prior's std: ``sigma_max`` (VE), 1 (VP, sub-VP), ``std(T)`` (sigma^t, OU)."""
  cls, p = CASES[name]
  if cls is sde_lib.VESDE:
    return p["sigma_max"]
  if cls in (sde_lib.SigmaPowerSDE, sde_lib.OUSDE, sde_lib.RectifiedFlow):
    return float(ref_marginal(name, p.get("T", 1.0))[1])
  return 1.0


T_GRID = np.array([1e-5, 1e-3, 0.05, 0.2, 0.37, 0.5, 0.81, 1.0])


def grid(name):
  """``T_GRID``, ending at the horizon where it is below 1 (rectified flow); rounded to float32,
  so that float64 references see the times the SDE sees (``1 - t`` near 1 magnifies it)."""
  return (T_GRID * min(1.0, CASES[name][1].get("T", 1.0))).astype(np.float32).astype(np.float64)


def _x(shape=(8, 2, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", sorted(CASES))
def test_marginal_prob_matches_closed_form(name):
  sde = make(name)
  x = _x()
  t = jnp.asarray(grid(name), jnp.float32)
  mean, std = sde.marginal_prob(x, t)
  a, s = ref_marginal(name, grid(name))
  assert mean.shape == x.shape and std.shape == (8,)
  np.testing.assert_allclose(mean, a[:, None, None] * np.asarray(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, s, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(sde.mean_coeff(t), a, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sde_coefficients_match_formulas(name):
  sde = make(name)
  x = _x()
  t = jnp.asarray(grid(name), jnp.float32)
  drift, diffusion = sde.sde(x, t)
  k, g = ref_coefficients(name, grid(name))
  assert drift.shape == x.shape and diffusion.shape == (8,)
  np.testing.assert_allclose(drift, k[:, None, None] * np.asarray(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(diffusion, g, rtol=1e-5, atol=1e-7)


def test_tutorial_and_kaist_closed_forms():
  """The two tutorials' formulas as they state them: sigma^t with sigma = 25 has std(1) =
  sqrt(624 / (2 log 25)) = 9.845 and g(1) = 25; OU with mu = 1/2, sigma = 1 has mean
  e^{-t/2} x0 and variance 1 - e^{-t}, its prior at T the variance 1 - e^{-T}."""
  t = jnp.array([0.1, 0.5, 1.0, 4.0])
  tutorial = sde_lib.SigmaPowerSDE(sigma=25.0)
  np.testing.assert_allclose(tutorial.marginal_std(t[:3]),
                             np.sqrt((25.0 ** (2 * np.asarray(t[:3])) - 1) / (2 * np.log(25.0))),
                             rtol=1e-5)
  np.testing.assert_allclose(tutorial.prior_std(), 9.8454, rtol=1e-4)
  np.testing.assert_allclose(tutorial.sde(jnp.ones((3, 1)), t[:3])[1], [25**0.1, 5.0, 25.0],
                             rtol=1e-5)
  for horizon in (1.0, 10.0):
    ou = sde_lib.OUSDE(mu=0.5, sigma=1.0, T=horizon)
    assert ou.T == horizon and ou.reverse(_score_fn).T == horizon
    x0 = jnp.full((4, 2), 3.0)
    mean, std = ou.marginal_prob(x0, t)
    np.testing.assert_allclose(mean, np.outer(3.0 * np.exp(-np.asarray(t) / 2), [1, 1]),
                               rtol=1e-6)
    np.testing.assert_allclose(std**2, 1.0 - np.exp(-np.asarray(t)), rtol=1e-5)
    np.testing.assert_allclose(ou.prior_std()**2, 1.0 - np.exp(-horizon), rtol=1e-6)
    np.testing.assert_allclose(ou.noise_label(jnp.array([horizon])), [1.0])
  # At T = 1 the prior is far from the stationary N(0, I): variance 0.63.
  np.testing.assert_allclose(sde_lib.OUSDE(T=1.0).prior_std()**2, 0.632, atol=1e-3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_marginal_solves_moment_odes(name):
  """Finite differences in float64: d log a / dt = k and dV/dt = 2 k V + g^2 with k, g taken
  from ``sde()`` (for VP/sub-VP 2k = -beta; for VE k = 0 so dV/dt = g^2), plus the initial
  conditions a(0) = 1, V(0) = sigma_min^2 (VE) or 0."""
  sde = make(name)
  t = np.linspace(0.02, 0.98, 25)
  h = 1e-5
  with jax.enable_x64(True):
    ones = jnp.ones((t.size, 1), jnp.float64)

    def moments(tt):
      mean, std = sde.marginal_prob(ones, jnp.asarray(tt, jnp.float64))
      return np.asarray(mean[:, 0]), np.asarray(std) ** 2

    (a_plus, v_plus), (a_minus, v_minus), (a, v) = moments(t + h), moments(t - h), moments(t)
    drift, diffusion = sde.sde(ones, jnp.asarray(t, jnp.float64))
    k, g2 = np.asarray(drift[:, 0]), np.asarray(diffusion) ** 2
    a0, v0 = moments(np.zeros(1))
  assert a.dtype == np.float64
  np.testing.assert_allclose((np.log(a_plus) - np.log(a_minus)) / (2 * h), k, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose((v_plus - v_minus) / (2 * h), 2 * k * v + g2, rtol=1e-6)
  np.testing.assert_allclose(a0, 1.0)
  np.testing.assert_allclose(v0, ref_initial_variance(name), rtol=1e-12, atol=1e-300)


def _euler_maruyama_moments_ref(name, x0, t_grid):
  """Exact mean and variance of the Euler-Maruyama chain (float64 recursion): the MC target
  differs from the true marginal by exactly this discretization bias."""
  m = np.asarray(x0, np.float64)
  v = ref_initial_variance(name)
  out = []
  for t, t_next in zip(t_grid[:-1], t_grid[1:]):
    dt = t_next - t
    k, g = ref_coefficients(name, t)
    m, v = (1 + k * dt) * m, (1 + k * dt) ** 2 * v + g**2 * dt
    out.append((m, v))
  return out


@pytest.mark.parametrize("name", MAIN)
def test_marginal_prob_matches_monte_carlo_forward_sde(name):
  """Simulate the forward SDE with ``sde()`` by Euler-Maruyama (VE starts at x0 + sigma_min z)."""
  sde = make(name)
  n_paths, n_steps = 10000, 500
  x0 = np.array([1.5, -0.5])
  # Rectified flow's drift grows as 1 / (1 - t): EM's bias at this step size stays small up to
  # 0.9 T (the exact transition, tested apart, covers the rest).
  t_grid = np.linspace(0.0, 1.0 if sde.T >= 1.0 else 0.9 * sde.T, n_steps + 1)
  checkpoints = (n_steps // 4, n_steps // 2, n_steps)

  @jax.jit
  def simulate(rng):
    init_rng, rng = jax.random.split(rng)
    x = jnp.broadcast_to(jnp.asarray(x0, jnp.float32), (n_paths, 2))
    if isinstance(sde, sde_lib.VESDE):
      x = x + sde.sigma_min * jax.random.normal(init_rng, x.shape)

    def step(x, inputs):
      t, dt, key = inputs
      drift, diffusion = sde.sde(x, jnp.full((n_paths,), t))
      x = x + drift * dt + diffusion[:, None] * jnp.sqrt(dt) * jax.random.normal(key, x.shape)
      return x, (jnp.mean(x, axis=0), jnp.std(x, axis=0))

    grid = jnp.asarray(t_grid, jnp.float32)
    _, stats_over_time = jax.lax.scan(
        step, x, (grid[:-1], jnp.diff(grid), jax.random.split(rng, n_steps)))
    return stats_over_time

  means, stds = (np.asarray(s, np.float64) for s in simulate(jax.random.PRNGKey(0)))
  em_ref = _euler_maruyama_moments_ref(name, x0, t_grid)
  for i in checkpoints:
    t = t_grid[i]
    mean, std = sde.marginal_prob(jnp.asarray(x0[None], jnp.float32), jnp.array([t], jnp.float32))
    mean, std = np.asarray(mean[0], np.float64), float(std[0])
    em_mean, em_var = em_ref[i - 1]
    bias_mean, bias_std = np.abs(em_mean - mean), abs(np.sqrt(em_var) - std)
    assert bias_std < 0.02 * std  # EM's O(dt) bias is small at this step size
    np.testing.assert_array_less(np.abs(means[i - 1] - mean),
                                 Z_TOL * std / np.sqrt(n_paths) + bias_mean + 1e-6)
    np.testing.assert_array_less(np.abs(stds[i - 1] - std),
                                 Z_TOL * std / np.sqrt(2 * n_paths) + bias_std + 1e-6)


# ----------------------------------------------------------------------------- prior


@pytest.mark.parametrize("name", sorted(CASES))
def test_prior_logp_matches_scipy(name):
  sde = make(name)
  z = _x((5, 2, 2, 1), seed=1) * 3.0
  flat = np.asarray(z, np.float64).reshape(5, -1)
  scale = ref_prior_std(name)
  want = stats.multivariate_normal(np.zeros(4), scale**2 * np.eye(4)).logpdf(flat)
  np.testing.assert_allclose(sde.prior_logp(z), want, rtol=1e-5)
  np.testing.assert_allclose(want, stats.norm(0.0, scale).logpdf(flat).sum(axis=1), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_prior_sampling_moments(name):
  sde = make(name)
  n = 20000
  x = np.asarray(sde.prior_sampling(jax.random.PRNGKey(3), (n, 3)), np.float64)
  assert x.shape == (n, 3)
  var = ref_prior_std(name) ** 2
  # Per coordinate: mean SE sqrt(var / n); sample-variance SE var sqrt(2 / n).
  np.testing.assert_array_less(np.abs(x.mean(axis=0)), Z_TOL * np.sqrt(var / n))
  np.testing.assert_array_less(np.abs(x.var(axis=0) - var), Z_TOL * var * np.sqrt(2.0 / n))
  # The prior is the marginal at T up to the negligible mean (VP/sub-VP: e^{-B(1)/2} x0; OU at
  # T = 10: e^{-5} x0).
  if name in ("vp", "subvp", "ou"):
    a_t, std_t = ref_marginal(name, make(name).T)
    assert a_t < 1e-2 and abs(std_t - 1.0) < 1e-4


# ----------------------------------------------------------------------------- discretizations


@pytest.mark.parametrize("name", ("ve", "ve_small", "vp", "vp_small", "sigma_power", "ou",
                                  "ou_short", "rectified_flow", "rectified_flow_long"))
def test_exact_transitions_compose_to_marginal(name):
  """Composing ``discretize`` over a non-uniform grid from t = 0 reproduces marginal_prob at
  every grid point: means multiply, variances add (float64)."""
  sde = make(name)
  end = min(1.0, sde.T)
  grid = np.concatenate([[0.0], np.sort(np.random.default_rng(0).uniform(0, end, 30)), [end]])
  with jax.enable_x64(True):
    one = jnp.ones((1, 1), jnp.float64)
    m, v = 1.0, ref_initial_variance(name)
    for t, t_next in zip(grid[:-1], grid[1:]):
      f, big_g = sde.discretize(one, jnp.array([t]), jnp.array([t_next]))
      m, v = (1.0 + float(f[0, 0])) * m, (1.0 + float(f[0, 0])) ** 2 * v + float(big_g[0]) ** 2
      mean, std = sde.marginal_prob(one, jnp.array([t_next]))
      np.testing.assert_allclose(m, float(mean[0, 0]), rtol=1e-11)
      np.testing.assert_allclose(v, float(std[0]) ** 2, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_discretize_agrees_with_euler_maruyama_to_first_order(name):
  """Relative difference of (f, G^2) from (f dt, g^2 dt) is O(dt); sub-VP's default *is* EM."""
  sde = make(name)
  t = np.array([0.1, 0.4, 0.7, 0.95])
  x = np.random.default_rng(2).normal(size=(4, 3))
  errors = []
  with jax.enable_x64(True):
    for dt in (1e-3, 1e-4, 1e-5):
      f, big_g = sde.discretize(jnp.asarray(x), jnp.asarray(t), jnp.asarray(t + dt))
      f_rev, big_g_rev = sde.discretize(jnp.asarray(x), jnp.asarray(t + dt), jnp.asarray(t))
      if CASES[name][0] is sde_lib.subVPSDE:
        # The default EM step evaluates its coefficients at the first time argument.
        k_rev, g_rev = ref_coefficients(name, t + dt)
        np.testing.assert_allclose(f_rev, k_rev[:, None] * x * dt, rtol=1e-10)
        np.testing.assert_allclose(big_g_rev, g_rev * np.sqrt(dt), rtol=1e-10)
      else:
        # The exact transitions do not depend on the order of the two times.
        np.testing.assert_allclose(f_rev, f, rtol=1e-12)
        np.testing.assert_allclose(big_g_rev, big_g, rtol=1e-12)
      k, g = ref_coefficients(name, t)
      g2_err = np.max(np.abs(np.asarray(big_g) ** 2 / (g**2 * dt) - 1.0))
      f_err = 0.0 if not np.any(k) else np.max(np.abs(np.asarray(f) / (k[:, None] * x * dt) - 1.0))
      errors.append(max(g2_err, f_err))
  if CASES[name][0] is sde_lib.subVPSDE:
    np.testing.assert_allclose(errors, 0.0, atol=1e-9)  # rounding of (t + dt) - t
  else:
    assert errors[0] < 0.1
    np.testing.assert_allclose(np.array(errors[:-1]) / np.array(errors[1:]), 10.0, rtol=0.05)


# ----------------------------------------------------------------------------- discrete ladders


@pytest.mark.parametrize("name", ("vp", "vp_small"))
def test_discrete_betas_and_marginal_match_cumprod(name):
  sde = make(name)
  p, n = CASES[name][1], CASES[name][1]["N"]
  betas = (p["beta_min"] + np.linspace(0, 1, n) * (p["beta_max"] - p["beta_min"])) / n
  alphas_cumprod = np.cumprod(1.0 - betas)
  np.testing.assert_allclose(sde.discrete_betas(), betas, rtol=1e-6)
  levels = jnp.array([0, 1, n // 3, n // 2, n - 2, n - 1])
  a, s = sde.discrete_marginal(levels)
  np.testing.assert_allclose(a, np.sqrt(alphas_cumprod[np.asarray(levels)]), rtol=1e-5)
  np.testing.assert_allclose(s, np.sqrt(1.0 - alphas_cumprod[np.asarray(levels)]), rtol=1e-5)
  np.testing.assert_allclose(sde.langevin_alpha(jnp.linspace(0.0, 1.0, n)), 1.0 - betas, rtol=1e-6)


def test_discrete_betas_reject_too_few_steps():
  with pytest.raises(ValueError, match="N > beta_max"):
    sde_lib.VPSDE(beta_max=20.0, N=20).discrete_betas()


def test_discrete_vp_kernel_converges_to_continuous_at_rate_one_over_n():
  fractions = np.linspace(0.1, 1.0, 10)
  errors = []
  n_values = (100, 400, 1600)
  for n in n_values:
    sde = sde_lib.VPSDE(N=n)
    levels = np.round(fractions * (n - 1)).astype(np.int32)
    a, s = sde.discrete_marginal(jnp.asarray(levels))
    a_ref, s_ref = ref_marginal("vp", levels / (n - 1))
    errors.append(max(np.max(np.abs(a - a_ref)), np.max(np.abs(s - s_ref))))
  slope = np.polyfit(np.log(n_values), np.log(errors), 1)[0]
  assert -1.2 < slope < -0.8, (errors, slope)


@pytest.mark.parametrize("name", ("ve", "ve_small"))
def test_discrete_sigmas_and_langevin_alpha(name):
  sde = make(name)
  p = CASES[name][1]
  want = np.geomspace(p["sigma_min"], p["sigma_max"], p["N"])
  np.testing.assert_allclose(sde.discrete_sigmas(), want, rtol=1e-5)
  np.testing.assert_array_equal(sde.langevin_alpha(jnp.array([0.1, 0.9])), 1.0)


def test_discrete_labels_are_the_authors():
  """A discretely trained network's label is the authors' (SMLD: round((T - t)(N - 1)), label 0
  at sigma_max; DDPM: t (N - 1) unrounded, its std at floor(t (N - 1))), and the level of the
  std is the label's."""
  t = jnp.array([0.05, 0.3, 0.6, 0.95])
  ve, vp = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000), sde_lib.VPSDE(N=1000)
  assert ve.discrete_label(t).tolist() == [949.0, 699.0, 400.0, 50.0]
  descending = np.exp(np.linspace(np.log(50.0), np.log(0.01), 1000))
  np.testing.assert_allclose(ve.discrete_marginal(ve.discrete_level(t))[1],
                             descending[[949, 699, 400, 50]], rtol=1e-5)
  np.testing.assert_allclose(vp.discrete_label(t), np.asarray(t) * 999, rtol=1e-6)
  assert vp.discrete_level(t).tolist() == [49, 299, 599, 949]
  with pytest.raises(ValueError, match="no discrete noise levels"):
    sde_lib.subVPSDE().discrete_label(t)


@pytest.mark.parametrize("sde", [sde_lib.SigmaPowerSDE(), sde_lib.OUSDE()],
                         ids=lambda sde: type(sde).__name__)
def test_sdes_without_a_chain_refuse_discrete_levels_and_ancestral_steps(sde):
  t = jnp.array([0.3, 0.6])
  assert sde.discrete_chain is None
  for ask in (sde.discrete_label, sde.discrete_level, lambda t: sde.discrete_marginal(t * 0)):
    with pytest.raises(ValueError, match="has no discrete noise levels.*use continuous"):
      ask(t)
  with pytest.raises(ValueError, match="has no ancestral sampling step"):
    sde.ancestral_step(jnp.ones((2, 3)), jnp.ones((2, 3)), t, t - 0.1)


@pytest.mark.parametrize("sde", [sde_lib.VESDE(N=10), sde_lib.VESDE(N=1000), sde_lib.VPSDE(N=25),
                                 sde_lib.VPSDE(N=1000), sde_lib.VPSDE(N=4000)],
                         ids=lambda sde: f"{type(sde).__name__}-{sde.N}")
def test_every_grid_time_maps_back_to_its_level(sde):
  """Discrete training reaches the network through t_i = i / (N - 1) T: each level must survive
  the float32 round trip (truncating t_i (N - 1) would lose 170 of DDPM's 1000)."""
  levels = jnp.arange(sde.N)
  np.testing.assert_array_equal(sde.discrete_level(sde.discrete_time(levels)), levels)


# ----------------------------------------------------------------------------- reverse time


def _score_fn(x, t):
  return jnp.sin(x) * t.reshape((-1,) + (1,) * (x.ndim - 1)) - 0.3 * x


@pytest.mark.parametrize("probability_flow", [False, True])
@pytest.mark.parametrize("name", MAIN)
def test_reverse_sde_and_probability_flow(name, probability_flow):
  sde = make(name)
  x, t = _x(), jnp.asarray(grid(name), jnp.float32)
  rev = sde.reverse(_score_fn, probability_flow=probability_flow)
  assert rev.N == sde.N and rev.T == sde.T
  drift, diffusion = rev.sde(x, t)
  f, g = sde.sde(x, t)
  c = 0.5 if probability_flow else 1.0
  want = f - (c * g**2)[:, None, None] * _score_fn(x, t)
  np.testing.assert_allclose(drift, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(diffusion, 0.0 if probability_flow else g)

  t_next = t - 0.01
  rev_f, rev_g = rev.discretize(x, t, t_next)
  fwd_f, fwd_g = sde.discretize(x, t, t_next)
  np.testing.assert_allclose(rev_f, -fwd_f + (c * fwd_g**2)[:, None, None] * _score_fn(x, t),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rev_g, 0.0 if probability_flow else fwd_g)


# ----------------------------------------------------------------------------- jit / vmap


@pytest.mark.parametrize("name", MAIN)
def test_jit_and_vmap_safe(name):
  sde = make(name)
  x = _x((3, 4, 2, 2, 1))  # [M, B, H, W, C]
  t = jnp.asarray(np.random.default_rng(1).uniform(0.01, 1.0, (3, 4)), jnp.float32)

  def everything(x, t):
    return (sde.marginal_prob(x, t), sde.sde(x, t), sde.discretize(x, t, t * 0.9),
            sde.prior_logp(x), sde.mean_coeff(t),
            sde.reverse(_score_fn, probability_flow=True).sde(x, t))

  batched = jax.jit(jax.vmap(everything))(x, t)
  for m in range(x.shape[0]):
    eager = everything(x[m], t[m])
    for got, want in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(eager)):
      np.testing.assert_allclose(got[m], want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- registry, validation


def test_sde_registry():
  assert sde_lib.SDES.get("vesde") is sde_lib.VESDE
  assert sde_lib.SDES.get("sigmapowersde") is sde_lib.SigmaPowerSDE
  assert sde_lib.SDES.get("OUSDE") is sde_lib.OUSDE
  assert sde_lib.SDES.get("VPSDE") is sde_lib.VPSDE
  assert sde_lib.SDES.get("subVPSDE") is sde_lib.subVPSDE
  with pytest.raises(ValueError) as info:
    sde_lib.SDES.get("cosine")
  for valid in ("vesde", "vpsde", "subvpsde"):
    assert valid in str(info.value)
  assert "cosine" in str(info.value)


@pytest.mark.parametrize("cls, kwargs", [
    (sde_lib.VESDE, dict(sigma_min=0.0)),
    (sde_lib.VESDE, dict(sigma_min=-0.1)),
    (sde_lib.VESDE, dict(sigma_min=5.0, sigma_max=1.0)),
    (sde_lib.VESDE, dict(sigma_min=1.0, sigma_max=1.0)),
    (sde_lib.VESDE, dict(N=0)),
    (sde_lib.VPSDE, dict(beta_min=-0.1)),
    (sde_lib.VPSDE, dict(beta_min=5.0, beta_max=1.0)),
    (sde_lib.VPSDE, dict(N=0)),
    (sde_lib.subVPSDE, dict(beta_min=2.0, beta_max=1.0)),
    (sde_lib.subVPSDE, dict(N=-3)),
    (sde_lib.SigmaPowerSDE, dict(sigma=1.0)),
    (sde_lib.SigmaPowerSDE, dict(sigma=0.5)),
    (sde_lib.OUSDE, dict(mu=0.0)),
    (sde_lib.OUSDE, dict(sigma=-1.0)),
    (sde_lib.OUSDE, dict(T=0.0)),
])
def test_invalid_parameters_raise(cls, kwargs):
  with pytest.raises(ValueError):
    cls(**kwargs)
