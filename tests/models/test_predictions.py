"""The network parameterisations (``models/predictions.py``) against exact answers: at the exact
posterior of Gaussian data every prediction converts to the same score, noise and data estimate;
each regression target is exact at ``x = a x0 + std z``; the plain regression loss equals DSM
with the stated weighting; the velocity on the linear path is ``z - x0`` and the exact velocity
field of Gaussian data is the flow's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from models import predictions

SDES = {
    "vp": lambda: sde_lib.VPSDE(),
    "subvp": lambda: sde_lib.subVPSDE(),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "ou": lambda: sde_lib.OUSDE(mu=0.5, sigma=1.0, T=10.0),
    "rectified_flow": lambda: sde_lib.RectifiedFlow(T=0.99),
}
NAMES = ("noise", "score", "data", "velocity", "v")
MU, S = 0.7, 0.5  # data N(MU, S^2 I)


def _times(sde):
  return jnp.asarray(np.array([0.01, 0.2, 0.5, 0.9]) * sde.T, jnp.float64)


def _posterior(sde, x, t):
  """Exact ``E[x0 | x]``, ``E[z | x]`` and the score for data ``N(MU, S^2 I)``, float64."""
  a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
  var = a**2 * S**2 + std**2
  r = x - a * MU
  return MU + a * S**2 / var * r, std / var * r, -r / var


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", NAMES)
def test_every_prediction_converts_its_exact_output_to_the_exact_score(sde_name, name):
  with jax.enable_x64(True):
    sde = SDES[sde_name]()
    t = _times(sde)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float64)
    x0_mean, z_mean, score = _posterior(sde, x, t)
    prediction = predictions.get_prediction(name)
    c = predictions.coefficients(sde, t)
    # The target is linear in (x0, z) at fixed x, so its posterior mean is the exact output.
    out = prediction.target(x0_mean, z_mean, c)
    np.testing.assert_allclose(prediction.score(out, x, c), score, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(prediction.noise(out, x, c), z_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(prediction.data(out, x, c), x0_mean, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", NAMES + ("score_scaled",))
def test_regression_equals_dsm_with_the_stated_weighting(sde_name, name):
  """``|out - target|^2 = lambda(t) |score(out) + z / std|^2`` for any output."""
  with jax.enable_x64(True):
    sde = SDES[sde_name]()
    t = _times(sde)
    rng = np.random.default_rng(1)
    x0, z, out = (jnp.asarray(rng.normal(size=(4, 5))) for _ in range(3))
    prediction = (predictions.get_prediction("score", scale_by_sigma=True)
                  if name == "score_scaled" else predictions.get_prediction(name))
    c = predictions.coefficients(sde, t)
    x = c.a[:, None] * x0 + c.std[:, None] * z
    regression = jnp.sum((out - prediction.target(x0, z, c)) ** 2, axis=1)
    score = prediction.score(out, x, c)
    dsm = prediction.dsm_weight(c) * jnp.sum((score + z / c.std[:, None]) ** 2, axis=1)
    np.testing.assert_allclose(regression, dsm, rtol=1e-9)


def test_the_stated_weightings():
  with jax.enable_x64(True):
    rf, vp = sde_lib.RectifiedFlow(T=0.99), sde_lib.VPSDE()
    t = jnp.array([0.1, 0.5, 0.9])
    get = predictions.get_prediction
    # Flow matching on the linear path is DSM weighted by t^2 / (1 - t)^2.
    np.testing.assert_allclose(get("velocity").dsm_weight(predictions.coefficients(rf, t)),
                               t**2 / (1 - t) ** 2, rtol=1e-12)
    c = predictions.coefficients(vp, t)
    np.testing.assert_allclose(get("noise").dsm_weight(c), c.std**2, rtol=1e-12)
    snr = c.a**2 / c.std**2
    np.testing.assert_allclose(get("v").dsm_weight(c), c.std**2 * (1 + 1 / snr), rtol=1e-12)
    np.testing.assert_allclose(get("data").dsm_weight(c), c.std**4 / c.a**2, rtol=1e-12)


def test_the_linear_path_velocity_is_z_minus_x0_and_v_is_vp_angular_velocity():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x0, z = jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(rng.normal(size=(3, 4)))
    t = jnp.array([0.05, 0.5, 0.95])
    c = predictions.coefficients(sde_lib.RectifiedFlow(T=0.99), t)
    np.testing.assert_allclose(c.da, -1.0) and np.testing.assert_allclose(c.dstd, 1.0)
    np.testing.assert_allclose(predictions.get_prediction("velocity").target(x0, z, c), z - x0,
                               rtol=1e-12, atol=1e-12)
    vp = sde_lib.VPSDE()
    c = predictions.coefficients(vp, t)
    want = c.a[:, None] * z - c.std[:, None] * x0
    np.testing.assert_allclose(predictions.get_prediction("v").target(x0, z, c), want,
                               rtol=1e-12, atol=1e-12)
    # On VP the velocity of the path is d x(t) / dt = a' x0 + std' z.
    want = c.da[:, None] * x0 + c.dstd[:, None] * z
    np.testing.assert_allclose(predictions.get_prediction("velocity").target(x0, z, c), want,
                               rtol=1e-10, atol=1e-10)


def test_the_probability_flow_drift_of_the_linear_path_is_the_exact_velocity():
  """The flow's drift ``f - g^2 score / 2`` at the exact score equals ``E[z - x0 | x]``."""
  with jax.enable_x64(True):
    sde = sde_lib.RectifiedFlow(T=0.99)
    t = jnp.array([0.01, 0.3, 0.7, 0.98])
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 2)), jnp.float64)
    x0_mean, z_mean, score = _posterior(sde, x, t)
    drift, _ = sde.reverse(lambda x, t: _posterior(sde, x, t)[2], probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift, z_mean - x0_mean, rtol=1e-9, atol=1e-9)


def test_unknown_prediction_is_refused_in_one_line():
  with pytest.raises(ValueError, match="Unknown prediction 'eps'; valid names are: data, noise, "
                                       "score, v, velocity"):
    predictions.get_prediction("eps")
