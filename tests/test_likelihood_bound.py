"""The likelihood bound (likelihood.get_bound_fn) against its closed form on Gaussian data.

For data ``N(m, s^2 I)`` and the exact score ``-(y - a m) / (a^2 s^2 + std^2)`` every term of
the bound at a fixed ``x`` is a one-dimensional integral or a Gaussian expectation (per
dimension, with ``v = a^2 s^2 + std^2`` and the drift ``f = c(t) x + ...``):

    diffusion: 1/2 int g^2 (a^2 (x - m)^2 / v^2 - 2 / v + std^2 / v^2) - 2 c dt
    prior:     E[-log prior(a_T x + std_T z)]             (Gauss-Hermite, exact for a Gaussian)
    decoder:   (r^2 (x - m)^2 + std_e^2 (1 - r)^2 / a_e^2) / (2 d^2) + log(2 pi d^2) / 2
               - (log(2 pi std_e^2) + 1) / 2,    r = std_e^2 / v_e,  d = std_e / a_e

so the Monte Carlo estimate must agree with it within its own standard error, and its
average over the data must lie above the data's entropy (the exact negative log-likelihood).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import exact_scores
import likelihood
import sde_lib

EPS = 1e-5
SDES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "rectified_flow": lambda: sde_lib.RectifiedFlow(T=0.99),
}
MEAN, STD = 0.3, 0.5


def _coefficients(sde, t):
  """``a, std, g, c`` at times ``t`` (numpy float64); ``c`` the drift's slope in ``x``."""
  tt = jnp.asarray(t, jnp.float32)
  ones = jnp.ones((len(t), 1), jnp.float32)
  a = np.asarray(sde.mean_coeff(tt), np.float64)
  std = np.asarray(sde.marginal_std(tt), np.float64)
  f1, g = sde.sde(ones, tt)
  f0 = sde.sde(0.0 * ones, tt)[0]
  return a, std, np.asarray(g, np.float64), np.asarray(f1 - f0, np.float64)[:, 0]


def closed_form_bound(sde, x, eps=EPS, data_std=STD):
  """The bound at each row of ``x: [B, D]`` for data ``N(MEAN, data_std^2 I)`` and the exact
  score, nats ``[B]``."""
  STD = data_std  # pylint: disable=invalid-name
  half = 0.5 * (sde.T - eps)
  offsets = np.geomspace(1e-9, half, 100_000) - 1e-9
  t = np.unique(np.concatenate([eps + offsets, sde.T - offsets]))
  a, std, g, c = _coefficients(sde, t)
  v = a ** 2 * STD ** 2 + std ** 2
  dev2 = (x - MEAN) ** 2                                                      # [B, D]

  def integral(y):
    return np.sum(0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t), axis=-1)

  fisher_part = integral(g ** 2 * a ** 2 / v ** 2)                          # times dev2
  rest = integral(g ** 2 * (-2.0 / v + std ** 2 / v ** 2) - 2.0 * c)
  diffusion = 0.5 * np.sum(fisher_part * dev2 + rest, axis=-1)
  # Prior term by Gauss-Hermite in each dimension (the prior factorizes over dimensions).
  nodes, weights = np.polynomial.hermite_e.hermegauss(40)
  a_end, std_end, _, _ = _coefficients(sde, np.array([sde.T]))
  points = a_end[0] * x[..., None] + std_end[0] * nodes                     # [B, D, n]
  logp = np.asarray(sde.prior_logp(jnp.asarray(points.reshape(-1, 1), jnp.float32)))
  prior = -np.sum(logp.reshape(points.shape) @ weights / weights.sum(), axis=-1)
  a_e, std_e, _, _ = _coefficients(sde, np.array([eps]))
  a_e, std_e = a_e[0], std_e[0]
  r = std_e ** 2 / (a_e ** 2 * STD ** 2 + std_e ** 2)
  d2 = (std_e / a_e) ** 2
  decoder = np.sum((r ** 2 * dev2 + std_e ** 2 * (1 - r) ** 2 / a_e ** 2) / (2 * d2)
                   + 0.5 * np.log(2 * np.pi * d2) - 0.5 * (np.log(2 * np.pi * std_e ** 2) + 1),
                   axis=-1)
  return diffusion + prior + decoder


def _exact_score(sde, dim, data_std=STD):
  return exact_scores.gaussian_mixture_score(sde, np.full((1, dim), MEAN), np.array([data_std]),
                                             np.array([1.0]))


def _estimate(sde, x, **kwargs):
  bound_fn = likelihood.get_bound_fn(sde, eps=EPS, **kwargs)
  score_fn = _exact_score(sde, x.shape[1])
  bpd, stderr = jax.jit(lambda r, y: bound_fn(r, score_fn, y))(jax.random.PRNGKey(1),
                                                               jnp.asarray(x, jnp.float32))
  to_nats = x.shape[1] * np.log(2.0)
  return np.asarray(bpd, np.float64) * to_nats, np.asarray(stderr, np.float64) * to_nats


@pytest.mark.parametrize("sde_name", list(SDES))
def test_estimate_matches_the_closed_form_at_the_exact_score(sde_name):
  sde = SDES[sde_name]()
  x = np.random.default_rng(0).normal(MEAN, STD, (4, 3))
  estimate, stderr = _estimate(sde, x, num_draws=4000)
  exact = closed_form_bound(sde, x)
  assert np.all(stderr > 0)
  np.testing.assert_array_less(np.abs(estimate - exact), 4.5 * stderr + 1e-3 * np.abs(exact))


def test_importance_sampling_keeps_the_mean_and_shrinks_the_error():
  """Data concentrated far below the noise (std 1e-3, about the VP kernel's at t = 1e-5, as
  8-bit pixels are) make std s ~ -z over most of [eps, T], so the integrand g^2 / std^2 (|std s
  + z|^2 - |z|^2) ~ -|z|^2 / t: uniform times pay that 1 / t in variance (of order 1 / eps, so
  heavy-tailed that even their sample standard error is unreliable), the proposal does not and
  keeps the closed form's mean."""
  sde = SDES["vp"]()
  narrow = 1e-3
  x = np.random.default_rng(1).normal(MEAN, narrow, (4, 3))
  exact = closed_form_bound(sde, x, data_std=narrow)
  score_fn = _exact_score(sde, 3, data_std=narrow)
  errors = {}
  for sampling in ("importance", "uniform"):
    bound_fn = likelihood.get_bound_fn(sde, eps=EPS, num_draws=4000, time_sampling=sampling)
    bpd, stderr = jax.jit(lambda r, y: bound_fn(r, score_fn, y))(jax.random.PRNGKey(3),
                                                                 jnp.asarray(x, jnp.float32))
    estimate = np.asarray(bpd, np.float64) * 3 * np.log(2.0)
    errors[sampling] = np.asarray(stderr, np.float64) * 3 * np.log(2.0)
    if sampling == "importance":
      np.testing.assert_array_less(np.abs(estimate - exact), 4.5 * errors[sampling])
  assert np.all(errors["importance"] < 0.5 * errors["uniform"])


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_bound_lies_above_the_exact_negative_log_likelihood(sde_name):
  """Averaged over the data, the bound at the exact score is the data's entropy plus a small
  gap (the prior swap at T and the decoder), never less; a worse score raises it."""
  sde = SDES[sde_name]()
  dim = 2
  x = np.random.default_rng(2).normal(MEAN, STD, (20_000, dim))
  bound = closed_form_bound(sde, x).mean() / dim
  entropy = 0.5 * np.log(2 * np.pi * np.e * STD ** 2)
  stderr = closed_form_bound(sde, x).std() / dim / np.sqrt(len(x))
  assert bound > entropy - 3 * stderr
  assert bound - entropy < 0.02
  # A score scaled by 0.8 is worse: its Monte Carlo bound is higher.
  exact_fn = _exact_score(sde, dim)
  bound_fn = likelihood.get_bound_fn(sde, eps=EPS, num_draws=500)
  y = jnp.asarray(x[:256], jnp.float32)
  good = bound_fn(jax.random.PRNGKey(0), exact_fn, y)[0].mean()
  bad = bound_fn(jax.random.PRNGKey(0), lambda u, t: 0.8 * exact_fn(u, t), y)[0].mean()
  assert float(bad) > float(good) + 0.01


def test_bpd_offset_and_shape_and_argument_errors():
  sde = SDES["vp"]()
  x = jnp.zeros((2, 3))
  score_fn = _exact_score(sde, 3)
  plain = likelihood.get_bound_fn(sde, num_draws=8)(jax.random.PRNGKey(0), score_fn, x)[0]
  shifted = likelihood.get_bound_fn(sde, num_draws=8, bpd_offset=7.0)(jax.random.PRNGKey(0),
                                                                      score_fn, x)[0]
  np.testing.assert_allclose(shifted - plain, 7.0, rtol=1e-6)
  with pytest.raises(ValueError, match="batch-first"):
    likelihood.get_bound_fn(sde, num_draws=8)(jax.random.PRNGKey(0), score_fn, jnp.zeros(3))
  with pytest.raises(ValueError, match="0 < eps"):
    likelihood.get_bound_fn(sde, eps=0.0)
  with pytest.raises(ValueError, match="num_draws"):
    likelihood.get_bound_fn(sde, num_draws=1)
  with pytest.raises(ValueError, match="importance, uniform"):
    likelihood.get_bound_fn(sde, time_sampling="logit_normal")
