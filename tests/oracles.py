"""The Gaussian-mixture data the tests sample and score exactly
(:class:`exact_scores.GaussianMixture`: marginals, scores and log-densities in closed form under
every SDE). Data may be vectors ``[B, D]`` or image-shaped ``[B, H, W, C]`` (flattened to
``D = H W C``)."""

from __future__ import annotations

import numpy as np

import exact_scores
from exact_scores import GaussianMixture

# The 2-D toy mixture of the toy configs (8 modes, std 0.1), as ``exact_scores`` gives it.
TOY = exact_scores.toy_mixture("gaussian_mixture")


def gaussian(mean, cov, event_shape=None) -> GaussianMixture:
  """A single Gaussian ``N(mean, cov)`` as a one-component mixture."""
  return GaussianMixture.gaussian(mean, cov, event_shape)


def two_moons_mixture() -> GaussianMixture:
  """A 2-D, 3-component mixture with unequal weights and anisotropic covariances."""
  weights = np.array([0.5, 0.3, 0.2])
  means = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
  covs = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]],
                   [[0.25, -0.1], [-0.1, 0.25]]])
  return GaussianMixture(weights, means, covs, (2,))


def image_gaussian(seed: int = 0) -> GaussianMixture:
  """A correlated Gaussian on ``[4, 4, 1]`` images (D = 16), values roughly in [-1, 1]."""
  rng = np.random.default_rng(seed)
  d = 16
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  cov = 0.1 * (a @ a.T) + 0.05 * np.eye(d)
  mean = rng.uniform(-0.5, 0.5, size=d)
  return gaussian(mean, cov, (4, 4, 1))


def image_mixture(seed: int = 1) -> GaussianMixture:
  """A two-component mixture on ``[4, 4, 1]`` images with well-separated means."""
  rng = np.random.default_rng(seed)
  d = 16
  means = np.stack([np.full(d, -0.6), np.full(d, 0.6)]) + 0.1 * rng.normal(size=(2, d))
  covs = np.stack([0.05 * np.eye(d), 0.08 * np.eye(d)])
  return GaussianMixture(np.array([0.4, 0.6]), means, covs, (4, 4, 1))


def full_covariance(mix: exact_scores.Mixture) -> exact_scores.GaussianMixture:
  """An isotropic mixture in the general form, whose score is derived another way (the
  eigenbasis of each covariance)."""
  d = mix.means.shape[1]
  covs = mix.stds[:, None, None] ** 2 * np.eye(d)[None]
  return exact_scores.GaussianMixture(mix.weights, mix.means, covs, (d,))
