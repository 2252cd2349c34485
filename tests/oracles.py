"""Exact answers for Gaussian-mixture data, used as oracles by the tests.

For an SDE with affine drift the perturbation kernel is ``N(a(t) x0, s(t)^2 I)``, so data
``p_0 = sum_k w_k N(mu_k, S_k)`` have the marginal

    p_t = sum_k w_k N(a(t) mu_k, a(t)^2 S_k + s(t)^2 I)

at every ``t``, and its score and log-density are known in closed form. Data may be vectors
``[B, D]`` or image-shaped ``[B, H, W, C]`` (flattened to ``D = H W C``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

import sde_lib


@dataclass(frozen=True)
class GaussianMixture:
  """``weights: [K]`` (sum to 1), ``means: [K, D]``, ``covs: [K, D, D]``; samples are
  ``event_shape``-shaped."""
  weights: np.ndarray
  means: np.ndarray
  covs: np.ndarray
  event_shape: Tuple[int, ...]

  @property
  def dim(self) -> int:
    return int(np.prod(self.event_shape))

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_rng, z_rng = jax.random.split(rng)
    k = jax.random.choice(k_rng, len(self.weights), (n,), p=jnp.asarray(self.weights))
    chol = jnp.asarray(np.linalg.cholesky(self.covs), jnp.float32)
    z = jax.random.normal(z_rng, (n, self.dim))
    x = jnp.asarray(self.means, jnp.float32)[k] + jnp.einsum("nij,nj->ni", chol[k], z)
    return x.reshape((n,) + self.event_shape)

  def component_log_probs_t(self, x: jax.Array, a: jax.Array, s: jax.Array) -> jax.Array:
    """``log w_k + log N(x; a mu_k, a^2 S_k + s^2 I)`` as ``[B, K]``; ``a, s: [B]``.

    ``a^2 S_k + s^2 I`` shares the eigenvectors of ``S_k``, so with ``S_k = U diag(lam) U^T``
    (K small decompositions) the density needs matrix products only -- no triangular solves
    batched over B, which deadlocked jaxlib's CPU LAPACK path under heavy load.
    """
    flat = x.reshape(x.shape[0], -1)
    lam, vecs = jnp.linalg.eigh(jnp.asarray(self.covs, flat.dtype))   # [K, D], [K, D, D]
    means = jnp.asarray(self.means, flat.dtype)
    var = a[:, None, None] ** 2 * lam[None] + s[:, None, None] ** 2   # [B, K, D]
    diff = flat[:, None, :] - a[:, None, None] * means[None]          # [B, K, D]
    proj = jnp.einsum("bkd,kde->bke", diff, vecs)                     # coordinates in U_k
    return (jnp.log(jnp.asarray(self.weights, flat.dtype))[None]
            - 0.5 * jnp.sum(proj**2 / var + jnp.log(var), axis=-1)
            - 0.5 * self.dim * jnp.log(2 * jnp.pi))

  def log_prob(self, x: jax.Array) -> jax.Array:
    """Log-density of the data, ``[B]``."""
    b = x.shape[0]
    return logsumexp(self.component_log_probs_t(x, jnp.ones(b), jnp.zeros(b)), axis=-1)

  def marginal_log_prob(self, sde: sde_lib.SDE, x: jax.Array, t: jax.Array) -> jax.Array:
    """``log p_t(x)``, ``[B]``, under ``sde``'s perturbation kernel."""
    a = sde.mean_coeff(t)
    s = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return logsumexp(self.component_log_probs_t(x, a, s), axis=-1)

  def score_fn(self, sde: sde_lib.SDE) -> sde_lib.ScoreFn:
    """The exact score ``grad_x log p_t(x)`` as a plain ``score_fn(x, t)``."""

    def score_fn(x, t):
      return jax.grad(lambda y: jnp.sum(self.marginal_log_prob(sde, y, t)))(x)

    return score_fn

  def mean(self) -> np.ndarray:
    return np.einsum("k,kd->d", self.weights, self.means)

  def cov(self) -> np.ndarray:
    mu = self.mean()
    second = np.einsum("k,kij->ij", self.weights,
                       self.covs + np.einsum("ki,kj->kij", self.means, self.means))
    return second - np.outer(mu, mu)


def gaussian(mean, cov, event_shape=None) -> GaussianMixture:
  """A single Gaussian ``N(mean, cov)`` as a one-component mixture."""
  mean = np.asarray(mean, np.float64)
  event_shape = tuple(event_shape) if event_shape is not None else mean.shape
  return GaussianMixture(np.ones(1), mean.reshape(1, -1), np.asarray(cov, np.float64)[None],
                         event_shape)


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
