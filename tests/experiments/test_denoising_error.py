"""The per-noise-level denoising error (``experiments/denoising_error.py``) against exact answers:
a score that knows nothing scores 1, the exact score of the data's own points scores 0 where the
noise is below the points' spacing, and rounding recovers 8-bit data at sub-level noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import exact_scores
import sde_lib
from experiments import denoising_error

_TIMES = (1e-5, 1e-3, 0.5)


def _data():
  """Five 4x4 8-bit images in [-1, 1] (the centred scaler's model space)."""
  pixels = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4, 1)) / 255.0
  return jnp.asarray(2.0 * pixels - 1.0, jnp.float32)


def _errors(score_fn):
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  return denoising_error.denoising_errors(score_fn, sde, _data(), _TIMES, jax.random.PRNGKey(1),
                                          lambda x: 2.0 * x - 1.0, lambda x: (x + 1.0) / 2.0,
                                          repeats=40)


def test_a_score_without_structure_scores_one():
  got = _errors(lambda x, t: jnp.zeros_like(x))
  # E|z|^2 / D over 40 x 80 draws: s.e. sqrt(2 / 3200) = 0.025.
  np.testing.assert_allclose(got["score"], 1.0, atol=0.1)
  assert got["t"] == list(_TIMES)


def test_the_exact_score_of_the_points_resolves_them_and_rounding_resolves_grey_levels():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  points = np.asarray(_data()).reshape(5, -1)
  got = _errors(exact_scores.empirical_score(sde, points))
  # At t = 1e-5 and 1e-3 the noise (0.13 and 1.3 grey levels) is far below the spacing of five
  # random images: the posterior is certain, the noise estimate exact.
  assert got["score"][0] < 1e-3 and got["score"][1] < 1e-3
  t = jnp.array([1e-5])
  noise_levels = 255 / 2 * float(sde.marginal_std(t)[0] / sde.mean_coeff(t)[0])
  assert got["std_grey_levels"][0] == pytest.approx(noise_levels, rel=1e-4)
  # Rounding: exact when the noise stays within half a level (0.13 levels: |z| < 3.9), wrong
  # on most pixels at 1.3 levels.
  assert got["rounding"][0] < 1e-3 and got["rounding"][1] > 0.3
