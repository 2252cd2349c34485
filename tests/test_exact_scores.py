"""``exact_scores``: the closed-form scores of Gaussian mixtures, checked against the test oracle
and scipy on every SDE, and the toy mixture's parameters against the data ``toy_data`` samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import builders
import datasets
import exact_scores
import sde_lib
from configs.toy import gaussian_mixture_exact
from datasets import toy_data
from infra.devices import Devices
from tests import oracles
from tests.oracles import TOY, full_covariance

SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE()}


@pytest.mark.parametrize("sde_name", list(SDES))
def test_closed_form_equals_the_oracle(sde_name):
  """The toy mixture (through the model and builders, as the samplers get it) and an uneven
  3-D mixture, at t from eps to T, on points near and far from the data."""
  sde = SDES[sde_name]
  uneven = exact_scores.Mixture(means=np.array([[1.0, -0.5, 0.0], [-1.0, 0.5, 2.0]]),
                                stds=np.array([0.3, 0.7]), weights=np.array([0.2, 0.8]))
  config = gaussian_mixture_exact.get_config()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  toy_score = builders.build_score_fn(config, sde, model, Devices())(params)
  t = jnp.array([1e-3, 1e-2, 0.1, 0.3, 0.6, 1.0])
  uneven_score = exact_scores.gaussian_mixture_score(sde, *uneven)
  for mix, score_fn in [(TOY, toy_score), (uneven, uneven_score)]:
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (6, mix.means.shape[1]))
    general = full_covariance(mix).score_fn(sde)
    got, want = jax.jit(lambda x, t: (score_fn(x, t), general(x, t)))(x, t)
    # Scores reach ~1/std(eps)^2 ~ 1e2..1e4 near eps: a relative tolerance, floored.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("sde_name", list(SDES))
def test_full_covariance_closed_forms_are_the_density_and_its_gradient(sde_name):
  """``GaussianMixture`` (the tests' mixtures: 2-D anisotropic, 16-D image Gaussian and
  mixture) at t from 1e-3 to T: the marginal log-density equals scipy's mixture of multivariate
  normals (float64, independent of the eigenbasis), and the closed-form score the autodiff
  gradient of that log-density."""
  sde = SDES[sde_name]
  t = jnp.linspace(1e-3, 1.0, 6)
  for mix in (oracles.two_moons_mixture(), oracles.image_gaussian(), oracles.image_mixture()):
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (6,) + mix.event_shape)
    flat = np.asarray(x, np.float64).reshape(6, -1)
    a, std = (np.asarray(c, np.float64) for c in (sde.mean_coeff(t), sde.marginal_std(t)))
    want = [logsumexp([np.log(w) + stats.multivariate_normal.logpdf(
        flat[b], a[b] * m, a[b]**2 * c + std[b]**2 * np.eye(mix.dim))
        for w, m, c in zip(mix.weights, mix.means, mix.covs)]) for b in range(6)]
    np.testing.assert_allclose(mix.marginal_log_prob(sde, x, t), want, rtol=1e-5, atol=1e-4)
    gradient = jax.grad(lambda y: jnp.sum(mix.marginal_log_prob(sde, y, t)))
    np.testing.assert_allclose(jax.jit(mix.score_fn(sde))(x, t), jax.jit(gradient)(x),
                               rtol=1e-4, atol=1e-4)


def test_toy_parameters_are_those_toy_data_samples():
  """Per component (toy_data's labels): mean within 4.5 standard errors, std within 4.5 relative
  standard errors (1 / sqrt(2 n_k) per coordinate), weights within 4.5 binomial ones."""
  x, labels = toy_data.sample_with_labels("gaussian_mixture", 16000, np.random.default_rng(0))
  weights = np.bincount(labels, minlength=len(TOY.weights)) / len(labels)
  se_w = np.sqrt(TOY.weights * (1 - TOY.weights) / len(labels))
  assert np.all(np.abs(weights - TOY.weights) <= 4.5 * se_w)
  for k, (mean, std) in enumerate(zip(TOY.means, TOY.stds)):
    xk = x[labels == k]
    assert np.all(np.abs(xk.mean(0) - mean) <= 4.5 * std / np.sqrt(len(xk)))
    assert np.all(np.abs(xk.std(0) / std - 1) <= 4.5 / np.sqrt(2 * len(xk)))
  # Vector data enter the model unscaled: toy_data's space is the model's.
  scaler, _ = datasets.data_scalers(gaussian_mixture_exact.get_config())
  assert scaler(x) is x


@pytest.mark.parametrize("sde_name", list(SDES))
def test_empirical_score_is_the_zero_width_mixture_and_its_posterior_collapses(sde_name):
  """The empirical distribution's score equals the mixture score with ``s_k = 0`` (scipy's
  posterior over the points gives its denoiser), in images' shape; near ``t = 0`` the posterior
  mean of a point's noisy copy is the point itself."""
  sde = SDES[sde_name]
  rng = np.random.default_rng(0)
  points = rng.uniform(-1.0, 1.0, (7, 12))
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(5, 2, 2, 3)) * 2.0)
    t = jnp.asarray([1e-3, 0.1, 0.4, 0.7, 1.0])
    got = exact_scores.empirical_score(sde, points)(x, t)
    want = exact_scores.gaussian_mixture_score(sde, points, np.zeros(7), np.full(7, 1 / 7))(x, t)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    mean, log_posterior = exact_scores.empirical_denoiser(sde, points)(x, t)
    a, std = np.asarray(sde.mean_coeff(t)), np.asarray(sde.marginal_std(t))
    flat = np.asarray(x).reshape(5, -1)
    logits = (-((flat[:, None] - a[:, None, None] * points[None]) ** 2).sum(-1)
              / (2 * std[:, None]**2))
    posterior = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    np.testing.assert_allclose(np.exp(log_posterior), posterior, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mean.reshape(5, -1), posterior @ points, rtol=1e-9, atol=1e-12)
    t0 = jnp.full((7,), 1e-3)
    noisy = (sde.mean_coeff(t0)[:, None] * points
             + sde.marginal_std(t0)[:, None] * rng.normal(size=points.shape))
    np.testing.assert_allclose(exact_scores.empirical_denoiser(sde, points)(noisy, t0)[0],
                               points, atol=1e-9)
