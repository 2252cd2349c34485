"""Tests of likelihood.py against exact Gaussian-mixture log-densities (tests/oracles.py).

What "exact" means here. The solve starts at ``t = eps`` and stops at ``T``, where the model
swaps the true marginal ``p_T`` for the SDE's prior. With the exact score, the flow is exact and

    returned logp = log p_eps(x) - log p_T(z) + prior_logp(z),

with ``z`` the returned latent. The last two terms are not negligible at a 1e-3 budget (about
0.01-0.05 nats here: VP's ``a(1) = 0.0066`` still shifts the mixture's means, and VE's
``sigma_max`` is finite), so the tests account for them exactly instead of approximating them
away; ``z`` itself is checked against the closed-form flow map of a single Gaussian.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dequantization
import exact_scores
import likelihood
import sde_lib
from models import utils as mutils
from tests import oracles

EPS = 1e-5
TOL = 1e-6  # rtol = atol of the oracle solves; float32 suffices (errors seen ~1e-5 relative)

SDES = {
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0),
    "sigma_power": lambda: sde_lib.SigmaPowerSDE(sigma=25.0),
    "ou": lambda: sde_lib.OUSDE(mu=0.5, sigma=1.0, T=10.0),
    "rectified_flow": lambda: sde_lib.RectifiedFlow(T=0.99),
}
MIXTURES = {
    "two_moons": oracles.two_moons_mixture,
    "image_gaussian": oracles.image_gaussian,
    "image_mixture": oracles.image_mixture,
}


def _solve(sde, score_fn, x, rng=None, **kwargs):
  """Runs ``get_likelihood_fn(sde, **kwargs)`` under ``jit``; returns numpy outputs."""
  likelihood_fn = likelihood.get_likelihood_fn(sde, **kwargs)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  bpd, z, nfe = jax.jit(lambda r, y: likelihood_fn(r, score_fn, y))(rng, x)
  return np.asarray(bpd, np.float64), np.asarray(z), int(nfe)


@functools.partial(jax.jit, static_argnames=("sde_name", "event_shape"))
def _oracle_solve(weights, means, covs, x, bpd_offset, *, sde_name, event_shape):
  """Exact-divergence likelihood driven by a mixture's exact score, the mixture as (traced) arrays.

  Mixtures of equal shapes (after :func:`_padded`) and ``bpd_offset`` values share one
  compilation: compiling the solve dominates this file's run time.
  """
  sde = SDES[sde_name]()
  mix = exact_scores.GaussianMixture(weights, means, covs, event_shape)
  likelihood_fn = likelihood.get_likelihood_fn(
      sde, hutchinson_type="exact", rtol=TOL, atol=TOL, eps=EPS, bpd_offset=bpd_offset)
  return likelihood_fn(jax.random.PRNGKey(0), mix.score_fn(sde), x)


def _padded(mix, k):
  """``mix`` with zero-weight copies of its first component appended, to ``k`` components."""
  extra = k - len(mix.weights)
  return exact_scores.GaussianMixture(
      np.concatenate([mix.weights, np.zeros(extra)]),
      np.concatenate([mix.means, np.repeat(mix.means[:1], extra, axis=0)]),
      np.concatenate([mix.covs, np.repeat(mix.covs[:1], extra, axis=0)]), mix.event_shape)


def _run_oracle(sde_name, mix, x, bpd_offset=0.0):
  padded = _padded(mix, 3 if mix.dim == 2 else 2)
  bpd, z, nfe = _oracle_solve(
      *(jnp.asarray(a, jnp.float32) for a in (padded.weights, padded.means, padded.covs)),
      x, jnp.float32(bpd_offset), sde_name=sde_name, event_shape=mix.event_shape)
  return np.asarray(bpd, np.float64), np.asarray(z), int(nfe)


def _logp_from_bpd(bpd, x):
  return -bpd * np.prod(x.shape[1:]) * np.log(2.0)


def _model_target(mix, sde, x, z):
  """``log p_eps(x) - log p_T(z) + prior_logp(z)``: what an exact solve returns, ``[B]``."""
  b = x.shape[0]
  log_p_eps = mix.marginal_log_prob(sde, x, jnp.full((b,), EPS))
  prior_swap = sde.prior_logp(z) - mix.marginal_log_prob(sde, z, jnp.full((b,), sde.T))
  return np.asarray(log_p_eps + prior_swap, np.float64)


def _marginal_coeffs(sde, t):
  """``(a(t), s(t))`` of the perturbation kernel ``N(a(t) x0, s(t)^2 I)``, as floats."""
  ones = jnp.ones((1,))
  return (float(sde.mean_coeff(t * ones)[0]),
          float(sde.marginal_prob(jnp.zeros((1, 1)), t * ones)[1][0]))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("mix_name", list(MIXTURES))
def test_exact_divergence_matches_analytic_log_density(sde_name, mix_name):
  sde, mix = SDES[sde_name](), MIXTURES[mix_name]()
  x = mix.sample(jax.random.PRNGKey(1), 8)
  bpd, z, nfe = _run_oracle(sde_name, mix, x)
  assert bpd.shape == (8,) and z.shape == x.shape and nfe > 0
  logp = _logp_from_bpd(bpd, x)
  target = _model_target(mix, sde, x, z)
  # Relative error, in nats, floored at 1 nat so that densities near log p = 0 are well posed.
  rel_err = np.abs(logp - target) / np.maximum(np.abs(target), 1.0)
  assert rel_err.max() < 1e-3, (rel_err, logp, target)
  if mix_name == "image_gaussian":
    z_exact = exact_scores.gaussian_flow_map(sde, mix.means[0], mix.covs[0], x, EPS, sde.T)
    scale = float(np.sqrt(np.mean(z_exact**2)))
    np.testing.assert_allclose(z, z_exact, atol=1e-3 * scale)


@pytest.mark.parametrize("hutchinson_type, seed", [("rademacher", 11), ("gaussian", 12)])
def test_hutchinson_estimate_is_unbiased(hutchinson_type, seed):
  # Copies of one x in the batch get independent noise vectors, so one solve gives n i.i.d.
  # draws of the estimator; the trajectory of x does not depend on the noise.
  sde, mix = SDES["vp"](), MIXTURES["image_gaussian"]()
  x1 = mix.sample(jax.random.PRNGKey(2), 1)
  n = 2048
  bpd, z, _ = _solve(sde, mix.score_fn(sde), jnp.repeat(x1, n, axis=0),
                     rng=jax.random.PRNGKey(seed), hutchinson_type=hutchinson_type, rtol=1e-5,
                     atol=1e-5, eps=EPS)
  draws = _logp_from_bpd(bpd, x1)
  exact, = _model_target(mix, sde, x1, z[:1])
  std_err = draws.std(ddof=1) / math.sqrt(n)
  # The estimator has real variance (else this would not test averaging) but the test has power:
  # a 1% error in the integrated divergence (~0.17 nats here) would be >= 1.3 standard errors.
  assert 0.0 < std_err < 0.15
  # A correct estimator fails this 3-sigma check with probability 0.27% (fixed seed).
  assert abs(draws.mean() - exact) < 3.0 * std_err, (draws.mean(), exact, std_err)


def test_bpd_offset_matches_density_in_dequantized_integer_space():
  # Model space [-1, 1]; the dequantized 8-bit space is w = 128 (y + 1). Evaluate the same
  # (eps-marginal) Gaussian directly in w-space, independently of the offset formula.
  sde, mix = SDES["vp"](), MIXTURES["image_gaussian"]()
  x = mix.sample(jax.random.PRNGKey(3), 8)
  bpd, z, _ = _run_oracle("vp", mix, x, bpd_offset=dequantization.bits_offset("uniform", True))
  a, s = _marginal_coeffs(sde, EPS)
  mean_y = a * mix.means[0]
  cov_y = a**2 * mix.covs[0] + s**2 * np.eye(mix.dim)
  w_space = oracles.gaussian(128.0 * (mean_y + 1.0), 128.0**2 * cov_y, mix.event_shape)
  w = 128.0 * (np.asarray(x, np.float64) + 1.0)
  log_p_w = np.asarray(w_space.log_prob(jnp.asarray(w, jnp.float32)), np.float64)
  # The solve's prior swap at T, in nats, computed in model space (as in the oracle test).
  prior_swap = _model_target(mix, sde, x, z) - np.asarray(
      mix.marginal_log_prob(sde, x, jnp.full((8,), EPS)), np.float64)
  expected = -(log_p_w + prior_swap) / (mix.dim * np.log(2.0))
  np.testing.assert_allclose(bpd, expected, rtol=1e-4)


class _LabelRecorder(nn.Module):
  """A tiny conditional network that reports every label it is given to the host (tests only)."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    jax.debug.callback(_RECORDED_LABELS.append, labels)
    h = jnp.concatenate([x, labels[:, None] / 10.0], axis=-1)
    return 0.1 * nn.Dense(x.shape[-1])(jnp.tanh(nn.Dense(8)(h)))


_RECORDED_LABELS = []


@pytest.mark.parametrize("sde", [sde_lib.VESDE(0.01, 50.0, N=10), sde_lib.VPSDE(N=50)],
                         ids=["ve", "vp"])
def test_discrete_models_receive_the_authors_labels(sde):
  """Along the likelihood's ODE solve a discretely trained network gets the authors' labels: SMLD
  the integer levels (0 at sigma_max), DDPM the unrounded t (N - 1)."""
  model = _LabelRecorder()
  x = jax.random.normal(jax.random.PRNGKey(4), (4, 2))
  params = model.init(jax.random.PRNGKey(5), x, jnp.zeros((4,)))["params"]
  score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=False)
  _RECORDED_LABELS.clear()
  bpd, _, nfe = _solve(sde, score_fn, x, hutchinson_type="rademacher", rtol=1e-3, atol=1e-3)
  jax.effects_barrier()
  labels = np.concatenate([np.asarray(l) for l in _RECORDED_LABELS])
  assert np.all(np.isfinite(bpd)) and labels.size == nfe * x.shape[0]
  if sde.discrete_chain == "SMLD":
    np.testing.assert_array_equal(labels, np.round(labels))
    # The solve spans [eps, T]: it must see the lowest and the highest level, and nothing beyond.
    assert labels.min() == 0 and labels.max() == sde.N - 1
  else:
    assert not np.array_equal(labels, np.round(labels))
    assert 0 <= labels.min() < 1e-3 and labels.max() == pytest.approx(sde.N - 1)


def _standard_normal_score(y, t):
  """The exact score of every VP marginal when the data are ``N(0, I)``."""
  del t
  return -y


def test_nfe_counts_every_drift_evaluation_and_grows_as_rtol_shrinks():
  sde = SDES["vp"]()
  x = jax.random.normal(jax.random.PRNGKey(6), (8, 2))
  calls = []

  def counting_score_fn(y, t):
    jax.debug.callback(lambda _: calls.append(1), t)
    return _standard_normal_score(y, t)

  nfes = []
  for tol in (1e-3, 1e-7):
    calls.clear()
    bpd, _, nfe = _solve(sde, counting_score_fn, x, hutchinson_type="rademacher", rtol=tol,
                         atol=tol)
    jax.effects_barrier()
    assert np.all(np.isfinite(bpd)) and nfe == len(calls) > 0
    nfes.append(nfe)
  assert nfes[1] > nfes[0]


@pytest.mark.parametrize("hutchinson_type", ["rademacher", "exact"])
def test_jitted_solve_has_no_host_callbacks(hutchinson_type):
  likelihood_fn = likelihood.get_likelihood_fn(SDES["vp"](), hutchinson_type=hutchinson_type)
  lowered = jax.jit(lambda r, y: likelihood_fn(r, _standard_normal_score, y)).lower(
      jax.random.PRNGKey(0), jnp.zeros((4, 2)))
  assert "callback" not in lowered.as_text()


def test_failed_solve_returns_nan():
  x = jax.random.normal(jax.random.PRNGKey(7), (4, 2))
  bpd, _, nfe = _solve(SDES["vp"](), _standard_normal_score, x, max_steps=2)
  assert np.all(np.isnan(bpd)) and nfe == 1 + 6 * 2


def test_invalid_arguments_raise_clear_errors():
  sde = SDES["vp"]()
  with pytest.raises(ValueError, match="exact, gaussian, rademacher"):
    likelihood.get_likelihood_fn(sde, hutchinson_type="skilling")
  with pytest.raises(ValueError, match="tsit5"):
    likelihood.get_likelihood_fn(sde, method="rk45")
  rng = jax.random.PRNGKey(0)
  score_fn = _standard_normal_score
  with pytest.raises(ValueError, match="batch"):
    likelihood.get_likelihood_fn(sde)(rng, score_fn, jnp.zeros((2,)))
  with pytest.raises(ValueError, match="batch"):
    likelihood.get_likelihood_fn(sde, data_shape=(4, 4, 1))(rng, score_fn, jnp.zeros((4, 4, 1)))
  with pytest.raises(ValueError, match="score_fn returned shape"):
    likelihood.get_likelihood_fn(sde)(rng, lambda y, t: y[:, :1], jnp.zeros((3, 2)))
