"""The exact-score model (``model.name = 'exact_score'``) and the probability-flow ODE encoder.

The closed form (``exact_scores``) is checked against the test oracle on every SDE; through the
builders and ``run_lib.sample`` (no checkpoint) it makes the samplers reproduce the toy mixture;
and with it the ODE encoder inverts the ODE sampler and matches the PF-ODE's closed-form map for
Gaussian data.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import builders
import datasets
import exact_scores
import run_lib
import sampling
import sde_lib
from configs.toy import gaussian_mixture, gaussian_mixture_exact
from datasets import toy_data
from infra.devices import Devices
from tests import oracles

SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE()}
TOY = exact_scores.toy_mixture("gaussian_mixture")


def full_covariance(mix: exact_scores.Mixture) -> exact_scores.GaussianMixture:
  """An isotropic mixture in the general form, whose score is derived another way (the
  eigenbasis of each covariance)."""
  d = mix.means.shape[1]
  covs = mix.stds[:, None, None] ** 2 * np.eye(d)[None]
  return exact_scores.GaussianMixture(mix.weights, mix.means, covs, (d,))


# ---------------------------------------------------------------------------- closed form


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


# ---------------------------------------------------------------------- the model, plugged in


def test_exact_score_is_a_parameter_free_model():
  config = gaussian_mixture_exact.get_config()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  assert builders.is_exact_score(model) and params == {}
  model, _, state = builders.init_state(config, Devices())  # the rest of the pipeline's state
  assert state.ema_params == {} and int(state.step) == 0
  assert "exact_score" in builders.mutils.MODELS.names()
  with pytest.raises(ValueError, match="no parameters to train"):
    builders.build_loss_fn(config, builders.build_sde(config), model, train=True)
  for dataset, source in [("swiss_roll", "toy"), ("CIFAR10", "tfds")]:
    other = gaussian_mixture.get_config()
    other.model.name, other.data.dataset, other.data.source = "exact_score", dataset, source
    with pytest.raises(ValueError, match=f"closed-form score, the toys gaussian_mixture .*"
                                         f"got data.dataset = '{dataset}'"):
      builders.init_model(jax.random.PRNGKey(0), other)


def test_bits_per_dim_of_the_exact_score_is_the_true_density():
  """``build_bpd_fn`` on the exact score: -log2 p_eps(x) / D of the closed form, up to the
  prior's mismatch with p_T (VP: a(T)^2 ~ 4e-5) and the solver (rtol = atol = 1e-5): within
  5e-4 bits/dim (measured 3e-5)."""
  config = gaussian_mixture_exact.get_config()
  sde, devices = builders.build_sde(config), Devices()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  x = toy_data.sample_toy("gaussian_mixture", 16, seed=2)
  bpd, _ = builders.build_bpd_fn(config, sde, model, devices)(jax.random.PRNGKey(0), params,
                                                              devices.put_batch(x))
  eps = jnp.full((16,), 1e-5)  # likelihood's default start time
  exact = -full_covariance(TOY).marginal_log_prob(sde, jnp.asarray(x), eps) / (2 * np.log(2.0))
  np.testing.assert_allclose(bpd, exact, atol=5e-4)


# --------------------------------------------------------------- run_lib.sample, no checkpoint

N_SAMPLES = 4000
# Per-mode std, relative: 4 standard errors of an RMS over 2 n_k coordinates (1 / sqrt(4 n_k),
# ~9 % at n_k ~ 500) plus 2 % for the samplers' bias (measured with 40 000 samples: Euler-
# Maruyama at 500 steps +1.0 %, the ODE +0.2 %).
STD_BIAS = 0.02


@pytest.mark.parametrize("method,folder", [("pc", "exact_pc-euler_maruyama-none"),
                                           ("ode", "exact_ode-tsit5")])
def test_sample_without_checkpoint_reproduces_the_mixture(tmp_path, method, folder):
  """The toy config's sampler (Euler-Maruyama, 500 steps, denoised) and the ODE sampler on the
  exact score: mode weights (each sample to its nearest mean) within 4 binomial standard errors
  (0.021) and per-mode std within the tolerance above of the denoised std
  ``s a(eps) s / sqrt(a^2 s^2 + std(eps)^2)`` (0.09945; E[x0 | x_eps] is a little narrower than
  the data)."""
  config = gaussian_mixture_exact.get_config()
  config.sampling.method = method
  result = run_lib.sample(config, str(tmp_path), num_samples=N_SAMPLES, num_frames=0)
  assert result["path"] == os.path.join(str(tmp_path), "sampled", folder) and result["step"] is None
  with open(os.path.join(result["path"], "sample.json")) as f:
    info = json.load(f)
  assert info["checkpoint"] is None and info["num_samples"] == N_SAMPLES
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
  with np.load(os.path.join(result["path"], "sample.npz")) as saved:
    x = saved["samples"]
  assert x.shape == (N_SAMPLES, 2)
  nearest = np.argmin(((x[:, None] - TOY.means[None]) ** 2).sum(-1), axis=1)
  weights = np.bincount(nearest, minlength=len(TOY.weights)) / N_SAMPLES
  assert np.all(np.abs(weights - TOY.weights) <= 4 * np.sqrt(TOY.weights * (1 - TOY.weights)
                                                              / N_SAMPLES)), weights
  sde, eps = builders.build_sde(config), jnp.full((1,), config.sampling.eps)
  a, std = float(sde.mean_coeff(eps)[0]), float(sde.marginal_std(eps)[0])
  for k, (mean, s) in enumerate(zip(TOY.means, TOY.stds)):
    xk = x[nearest == k]
    expected = s * a * s / np.sqrt(a**2 * s**2 + std**2)
    rms = np.sqrt(((xk - mean) ** 2).mean())
    assert abs(rms / expected - 1) <= 4 / np.sqrt(4 * len(xk)) + STD_BIAS, (k, rms, expected)


def test_sample_exact_score_refuses_a_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="has no parameters and reads no checkpoint"):
    run_lib.sample(gaussian_mixture_exact.get_config(), str(tmp_path), checkpoint="100")


# ------------------------------------------------------------------------------ ODE encoder


def test_encoder_inverts_the_ode_sampler():
  """decode(encode(x)) on 500 toy points, VP, exact score, rtol = atol = 1e-5: the 99th
  percentile of the per-point max |error| <= 1e-3 and the largest <= 5e-3 (measured over three
  draws: at most 2.6e-4 and 1.6e-3; median 1e-6). The largest errors are points between the
  modes, where the decoder is most sensitive to its input; the step size is shared by the batch
  (RMS error norm), so they are controlled least. (rtol = atol = 1e-6: largest 1.8e-4.)"""
  sde = sde_lib.VPSDE()
  score_fn = exact_scores.gaussian_mixture_score(sde, *TOY)
  x = jnp.asarray(toy_data.sample_toy("gaussian_mixture", 500, seed=3))
  encode = sampling.get_ode_encoder(sde, rtol=1e-5, atol=1e-5)
  decode = sampling.get_ode_sampler(sde, x.shape, rtol=1e-5, atol=1e-5)

  @jax.jit
  def round_trip(x):
    z, nfe_encode = encode(score_fn, x)
    return z, decode(None, score_fn, z), nfe_encode

  z, (y, nfe_decode), nfe_encode = round_trip(x)
  assert np.all(np.isfinite(z)) and int(nfe_encode) > 1 and int(nfe_decode) > 1
  assert float(jnp.std(z)) > 0.9  # a latent of p_T ~ N(0, I), not the data
  err = np.max(np.abs(np.asarray(y - x)), axis=1)
  assert np.quantile(err, 0.99) <= 1e-3 and err.max() <= 5e-3, (np.quantile(err, 0.99), err.max())


def test_encoder_is_the_closed_form_map_for_gaussian_data():
  """For N(mu, s^2 I) data the PF-ODE maps x_eps to x_T = a_T mu + (sigma_T / sigma_eps)
  (x_eps - a_eps mu), sigma_t^2 = a_t^2 s^2 + std_t^2. VP and VE (sigma_max = 5), rtol = atol =
  1e-5: max |error| <= 2e-3 max |x_T| (measured 2e-5 for VP, 4e-4 for VE)."""
  mu, s, eps = np.array([0.5, -1.0, 0.25]), 0.3, 1e-3
  x = jnp.asarray(mu + s * np.random.default_rng(0).standard_normal((200, 3)), jnp.float32)
  sdes = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(sigma_max=5.0)}
  encoders = {k: sampling.get_ode_encoder(sde, eps=eps) for k, sde in sdes.items()}
  scores = {k: exact_scores.gaussian_mixture_score(sde, mu[None], np.array([s]), np.array([1.0]))
            for k, sde in sdes.items()}
  latents = jax.jit(lambda x: {k: encoders[k](scores[k], x)[0] for k in sdes})(x)
  for name, sde in sdes.items():
    exact = exact_scores.gaussian_flow_map(sde, mu, s**2 * np.eye(3), x, eps, sde.T)
    err = np.max(np.abs(np.asarray(latents[name]) - exact))
    assert err <= 2e-3 * np.max(np.abs(exact)), (name, err)
