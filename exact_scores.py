"""Closed-form scores of data whose perturbed marginals are known: isotropic Gaussian mixtures.

Every SDE here has an affine drift, so its perturbation kernel is ``N(a(t) x0, std(t)^2 I)``
with ``(a(t), std(t))`` from ``sde.mean_coeff`` / ``sde.marginal_std`` (``sde.marginal_prob``).
Data ``p_0 = sum_k w_k N(mu_k, s_k^2 I)`` then have the marginal

    p_t = sum_k w_k N(a(t) mu_k, (a(t)^2 s_k^2 + std(t)^2) I)

at every ``t``. For VE, ``std(t) = sigma(t)`` (``sde_lib``'s convention): this is the marginal of
the data perturbed by ``sigma(t)`` noise, exactly what a VE network is trained on, so the score
below is the one a perfectly trained network would output.

:func:`gaussian_mixture_score` is that score as a plain ``score_fn(x, t)``;
:func:`toy_mixture` gives the parameters of the 2-D toys that are such mixtures
(:data:`MIXTURE_TOYS`), in model space: vector data enter the model unscaled
(``datasets.data_scalers`` passes them through), so model space is ``toy_data``'s space.

Full covariances (:class:`GaussianMixture`, ``sum_k w_k N(mu_k, S_k)``): the marginal's
components are ``N(a mu_k, a^2 S_k + std^2 I)``, which share ``S_k``'s eigenvectors, so their
log-densities and the score take matrix products only. These are the tests' oracles for the
samplers and the likelihood. For Gaussian data the probability-flow ODE is solvable in closed
form too: between any two times it is the affine map between the marginals
(:func:`gaussian_flow_map`), which measures a deterministic sampler's error and order.

The empirical distribution of N data points (zero-width components) has the closed-form score
too (:func:`empirical_score`, the posterior over the points from :func:`empirical_denoiser`):
a model-free "perfect network" at image dimension, whose exact samples are the points.

Oracles of conditional generation (``controllable_generation``): the mixture's exact
noise-conditional classifier ``log p_t(k | x)`` (:func:`gaussian_mixture_log_posterior`) and
class-conditional score ``grad log p_t(x | k)`` (:func:`gaussian_mixture_conditional_score`),
the class being the component; the score of Gaussian data of any covariance
(:func:`gaussian_score`) and the closed-form law of its unknown coordinates given the known
ones (:func:`gaussian_conditional`), what an inpainter should sample.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

import sde_lib
from datasets import toy_data

Array = jax.Array

MIXTURE_TOYS = ("gaussian_mixture",)
"""The toys (``toy_data.TOYS`` names) that :func:`toy_mixture` knows in closed form."""


class Mixture(NamedTuple):
  """An isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)``.

  Attributes:
    means: ``[K, D]`` component means ``mu_k``.
    stds: ``[K]`` per-coordinate component stds ``s_k``.
    weights: ``[K]`` component weights ``w_k`` (sum to 1).
  """
  means: np.ndarray
  stds: np.ndarray
  weights: np.ndarray


def _mixture_components(sde: sde_lib.SDE, means: np.ndarray, stds: np.ndarray,
                        log_weights: np.ndarray, x: Array, t: Array
                        ) -> Tuple[Array, Array, Array]:
  """Of ``x: [B, ...]`` at ``t: [B]``: ``log w_k + log N(x; a mu_k, v_k I)`` ``[B, K]``, the
  offsets ``x - a mu_k`` ``[B, K, D]`` and the variances ``v_k = a^2 s_k^2 + std^2`` ``[B, K]``."""
  flat = x.reshape(x.shape[0], -1)
  mu = jnp.asarray(means, flat.dtype)
  a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]          # [B, 1]
  var = a**2 * jnp.asarray(stds, flat.dtype)[None] ** 2 + std**2              # [B, K]
  diff = flat[:, None, :] - a[:, :, None] * mu[None]                          # [B, K, D]
  log_joint = (jnp.asarray(log_weights, flat.dtype)[None] - 0.5 * jnp.sum(diff**2, axis=-1) / var
               - 0.5 * flat.shape[1] * jnp.log(2.0 * np.pi * var))
  return log_joint, diff, var


def gaussian_mixture_score(sde: sde_lib.SDE, means: np.ndarray, stds: np.ndarray,
                           weights: np.ndarray) -> sde_lib.ScoreFn:
  """The exact score ``grad_x log p_t(x)`` of the mixture's marginal under ``sde``.

  Args:
    sde: the forward SDE (any of ``sde_lib``'s; only ``mean_coeff`` and ``marginal_std`` are
      read).
    means: ``[K, D]``; stds: ``[K]``; weights: ``[K]`` (see :class:`Mixture`).

  Returns:
    ``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` with ``prod(x.shape[1:]) = D`` and
    ``t in [0, T]``: ``-sum_k r_k(x, t) (x - a mu_k) / (a^2 s_k^2 + std^2)``, ``r_k`` the
    posterior component probabilities. Jittable; computed in ``x``'s dtype.
  """
  means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)
  log_weights = np.log(np.asarray(weights, np.float64))

  def score_fn(x: Array, t: Array) -> Array:
    log_joint, diff, var = _mixture_components(sde, means, stds, log_weights, x, t)
    resp = jax.nn.softmax(log_joint, axis=-1)                                # [B, K]
    return -jnp.einsum("bk,bkd->bd", resp / var, diff).reshape(x.shape)

  return score_fn


def empirical_denoiser(sde: sde_lib.SDE, points: np.ndarray
                       ) -> Callable[[Array, Array], Tuple[Array, Array]]:
  """The exact posterior over the points of the empirical distribution ``(1/N) sum_n
  delta(x0 - x_n)`` (a mixture of N images with zero-width components).

  Args:
    sde: the forward SDE (only ``mean_coeff`` and ``marginal_std`` are read).
    points: ``[N, D]`` the data points, in model space.

  Returns:
    ``denoise(x: [B, ...], t: [B]) -> (D: [B, ...], log_posterior: [B, N])``: the posterior
    mean ``E[x0 | x(t) = x] = sum_n r_n x_n`` and ``log r_n``, ``r_n`` proportional to
    ``exp(-|x - a x_n|^2 / (2 std^2))``. The squared distances are expanded, so the cost is
    two ``[B, D] x [D, N]`` products and no ``[B, N, D]`` array. Jittable; in ``x``'s dtype.
  """
  points = np.asarray(points, np.float64)
  norms = np.sum(points**2, axis=1)

  def denoise(x: Array, t: Array) -> Tuple[Array, Array]:
    flat = x.reshape(x.shape[0], -1)
    pts = jnp.asarray(points, flat.dtype)
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]      # [B, 1]
    # -|x - a x_n|^2 / (2 std^2) up to a term constant in n (|x|^2).
    logits = (a * (flat @ pts.T) - 0.5 * a**2 * jnp.asarray(norms, flat.dtype)[None]) / std**2
    log_posterior = jax.nn.log_softmax(logits, axis=-1)                     # [B, N]
    return (jnp.exp(log_posterior) @ pts).reshape(x.shape), log_posterior

  return denoise


def empirical_score(sde: sde_lib.SDE, points: np.ndarray) -> sde_lib.ScoreFn:
  """The exact score of the empirical distribution of ``points: [N, D]`` perturbed by ``sde``:
  ``score_fn(x: [B, ...], t: [B]) = (a D(x, t) - x) / std^2`` with ``D`` the posterior mean of
  :func:`empirical_denoiser` (the "optimal denoiser": sampled exactly, it reproduces the
  training points and nothing else)."""
  denoise = empirical_denoiser(sde, points)

  def score_fn(x: Array, t: Array) -> Array:
    mean, _ = denoise(x, t)
    a, std = sde.mean_coeff(t), sde.marginal_std(t)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (a.reshape(shape) * mean - x) / std.reshape(shape) ** 2

  return score_fn


def toy_mixture(name: str) -> Mixture:
  """The parameters of the toy ``name`` (any case), as ``toy_data`` samples it.

  Raises:
    ValueError: in one line naming :data:`MIXTURE_TOYS`, for a toy that is not a mixture.
  """
  if str(name).lower() not in MIXTURE_TOYS:
    raise ValueError(f"No closed-form score for data set {name!r}; exact scores exist for the "
                     f"toys {', '.join(MIXTURE_TOYS)} (data.source = 'toy').")
  means, std = toy_data.gaussian_mixture_parameters()  # what toy_data samples from
  k = len(means)
  return Mixture(means=means, stds=np.full(k, std), weights=np.full(k, 1.0 / k))


# --------------------------------------------------------------------- full covariances


def _kernel(sde: sde_lib.SDE, t: Array) -> Tuple[Array, Array]:
  """``(a(t), std(t))`` of the perturbation kernel ``N(a x0, std^2 I)``, each ``[B]``."""
  return sde.mean_coeff(t), sde.marginal_std(t)


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Data ``p_0 = sum_k w_k N(mu_k, S_k)`` of any covariances, whose marginal under an SDE is
  ``p_t = sum_k w_k N(a mu_k, a^2 S_k + std^2 I)`` in closed form.

  The parameters may be numpy arrays or JAX arrays, traced ones included (so that mixtures of
  one shape share a compiled program). Samples are ``event_shape``-shaped; every method takes
  ``x: [B, *event_shape]``.

  Attributes:
    weights: ``[K]``, summing to 1.
    means: ``[K, D]``.
    covs: ``[K, D, D]``, symmetric positive semi-definite.
    event_shape: the shape of one example (``(D,)``, or ``(H, W, C)`` with ``H W C = D``).
  """
  weights: Any
  means: Any
  covs: Any
  event_shape: Tuple[int, ...]

  @classmethod
  def gaussian(cls, mean: Any, cov: Any, event_shape: Optional[Sequence[int]] = None
               ) -> "GaussianMixture":
    """A single Gaussian ``N(mean, cov)`` as a one-component mixture."""
    mean = np.asarray(mean, np.float64)
    shape = tuple(event_shape) if event_shape is not None else mean.shape
    return cls(np.ones(1), mean.reshape(1, -1), np.asarray(cov, np.float64)[None], shape)

  @property
  def dim(self) -> int:
    return int(np.prod(self.event_shape))

  def sample(self, rng: Array, n: int) -> Array:
    """``n`` draws of the data, float32 ``[n, *event_shape]``."""
    k_rng, z_rng = jax.random.split(rng)
    k = jax.random.choice(k_rng, len(self.weights), (n,), p=jnp.asarray(self.weights))
    chol = jnp.linalg.cholesky(jnp.asarray(self.covs, jnp.float32))
    z = jax.random.normal(z_rng, (n, self.dim))
    x = jnp.asarray(self.means, jnp.float32)[k] + jnp.einsum("nij,nj->ni", chol[k], z)
    return x.reshape((n,) + self.event_shape)

  def _eigh(self, dtype: Any) -> Tuple[Array, Array]:
    """``S_k = U_k diag(lam_k) U_k^T``: ``lam [K, D]``, ``U [K, D, D]``. The marginal covariances
    ``a^2 S_k + std^2 I`` share ``U_k``, so everything below takes matrix products only (no
    solves batched over the examples)."""
    return jnp.linalg.eigh(jnp.asarray(self.covs, dtype))

  def component_log_probs(self, x: Array, a: Array, std: Array) -> Array:
    """``log w_k + log N(x; a mu_k, a^2 S_k + std^2 I)``, ``[B, K]``, for kernel coefficients
    ``a, std: [B]``."""
    flat = x.reshape(x.shape[0], -1)
    lam, vecs = self._eigh(flat.dtype)
    var = a[:, None, None] ** 2 * lam[None] + std[:, None, None] ** 2            # [B, K, D]
    diff = flat[:, None, :] - a[:, None, None] * jnp.asarray(self.means, flat.dtype)[None]
    proj = jnp.einsum("bkd,kde->bke", diff, vecs)                                # in U_k's basis
    return (jnp.log(jnp.asarray(self.weights, flat.dtype))[None]
            - 0.5 * jnp.sum(proj**2 / var + jnp.log(var), axis=-1)
            - 0.5 * self.dim * jnp.log(2 * jnp.pi))

  def log_prob(self, x: Array) -> Array:
    """The data's log-density, ``[B]``."""
    b = x.shape[0]
    return logsumexp(self.component_log_probs(x, jnp.ones(b), jnp.zeros(b)),
                                       axis=-1)

  def marginal_log_prob(self, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
    """``log p_t(x)``, ``[B]``, at ``t: [B]``."""
    return logsumexp(self.component_log_probs(x, *_kernel(sde, t)), axis=-1)

  def score_fn(self, sde: sde_lib.SDE) -> sde_lib.ScoreFn:
    """The exact score ``grad_x log p_t(x)`` as a plain ``score_fn(x: [B, ...], t: [B])``:
    ``sum_k r_k(x, t) s_k(x, t)`` with ``r`` the posterior over components and ``s_k = -U_k
    diag(1 / (a^2 lam_k + std^2)) U_k^T (x - a mu_k)`` each component's score. Jittable."""
    # Decomposed once, in the widest float enabled (float64 under jax.enable_x64).
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    lam, vecs = self._eigh(dtype)
    log_weights = jnp.log(jnp.asarray(self.weights, dtype))
    means = jnp.asarray(self.means, dtype)

    def score_fn(x: Array, t: Array) -> Array:
      flat = x.reshape(x.shape[0], -1)
      a, std = (c[:, None, None] for c in _kernel(sde, t))
      var = a**2 * lam[None].astype(flat.dtype) + std**2                         # [B, K, D]
      u = vecs.astype(flat.dtype)
      proj = jnp.einsum("bkd,kde->bke", flat[:, None, :] - a * means.astype(flat.dtype)[None], u)
      log_p = log_weights.astype(flat.dtype) - 0.5 * jnp.sum(proj**2 / var + jnp.log(var), -1)
      resp = jax.nn.softmax(log_p, axis=-1)
      component_scores = -jnp.einsum("bke,kde->bkd", proj / var, u)
      return jnp.einsum("bk,bkd->bd", resp, component_scores).reshape(x.shape)

    return score_fn

  def mean(self) -> np.ndarray:
    """The data's mean, ``[D]``."""
    return np.einsum("k,kd->d", self.weights, self.means)

  def cov(self) -> np.ndarray:
    """The data's covariance, ``[D, D]``."""
    mu = self.mean()
    second = np.einsum("k,kij->ij", self.weights,
                       self.covs + np.einsum("ki,kj->kij", self.means, self.means))
    return second - np.outer(mu, mu)


def gaussian_flow_map(sde: sde_lib.SDE, mean: np.ndarray, cov: np.ndarray, x: Any, t0: float,
                      t1: float) -> np.ndarray:
  """The probability-flow ODE's exact solution for Gaussian data ``N(mean, cov)``: the state at
  ``t1`` of the trajectory through ``x`` at ``t0``.

  The marginals ``N(a m, C_t)``, ``C_t = a^2 cov + std^2 I``, share ``cov``'s eigenvectors
  ``U``, and the flow is the affine map between them, ``a1 m + C1^(1/2) C0^(-1/2) (x - a0 m)``.
  Used to measure a deterministic sampler's error and order.

  Args:
    mean: ``[D]``; cov: ``[D, D]``.
    x: ``[B, ...]`` with ``prod(x.shape[1:]) = D``, the states at ``t0``.
    t0, t1: times in ``[0, T]``, either order.

  Returns:
    float64 ``[B, ...]``: the states at ``t1``.
  """
  mean = np.asarray(mean, np.float64)
  lam, vecs = np.linalg.eigh(np.asarray(cov, np.float64))
  times = jnp.asarray([t0, t1])
  (a0, a1), (s0, s1) = (np.asarray(c, np.float64) for c in _kernel(sde, times))
  gain = np.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  return (a1 * mean + ((flat - a0 * mean) @ vecs) * gain @ vecs.T).reshape(np.shape(x))


# --------------------------------------------------------------------- conditional oracles


def gaussian_mixture_log_posterior(sde: sde_lib.SDE, means: np.ndarray, stds: np.ndarray,
                                   weights: np.ndarray) -> Callable[[Array, Array], Array]:
  """The exact noise-conditional classifier of the mixture's components under ``sde``.

  Args:
    sde: the forward SDE (only ``mean_coeff`` and ``marginal_std`` are read).
    means: ``[K, D]``; stds: ``[K]``; weights: ``[K]`` (see :class:`Mixture`).

  Returns:
    ``log_prob_fn(x: [B, ...], t: [B]) -> [B, K]``, ``log p_t(k | x)`` (each row's exponentials
    sum to 1), ``t in [0, T]``. At ``t = 0`` (VP, sub-VP) it is the classifier of the data.
  """
  means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)
  log_weights = np.log(np.asarray(weights, np.float64))

  def log_prob_fn(x: Array, t: Array) -> Array:
    log_joint, _, _ = _mixture_components(sde, means, stds, log_weights, x, t)
    return jax.nn.log_softmax(log_joint, axis=-1)

  return log_prob_fn


def gaussian_mixture_conditional_score(sde: sde_lib.SDE, means: np.ndarray,
                                       stds: np.ndarray) -> Callable[[Array, Array, Array], Array]:
  """The exact class-conditional score ``grad_x log p_t(x | k)``, the class being the component.

  Returns:
    ``score_fn(x: [B, ...], t: [B], labels: [B] int) -> [B, ...]``,
    ``-(x - a mu_k) / (a^2 s_k^2 + std^2)`` with ``k = labels[b]`` per example. Jittable.
  """
  means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)

  def score_fn(x: Array, t: Array, labels: Array) -> Array:
    flat = x.reshape(x.shape[0], -1)
    mu = jnp.asarray(means, flat.dtype)[labels]                                 # [B, D]
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    var = a**2 * jnp.asarray(stds, flat.dtype)[labels][:, None] ** 2 + std**2  # [B, 1]
    return (-(flat - a * mu) / var).reshape(x.shape)

  return score_fn


def gaussian_score(sde: sde_lib.SDE, mean: np.ndarray, cov: np.ndarray) -> sde_lib.ScoreFn:
  """The exact score of Gaussian data ``N(mean, cov)`` (any covariance) under ``sde``:
  ``-U diag(1 / (a^2 lam + std^2)) U^T (x - a m)`` with ``cov = U diag(lam) U^T``
  (:meth:`GaussianMixture.score_fn` of one component). ``mean: [D]``; ``cov: [D, D]``;
  ``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` with ``prod(x.shape[1:]) = D``. Jittable."""
  mean = np.asarray(mean, np.float64)
  return GaussianMixture.gaussian(mean, cov, (mean.size,)).score_fn(sde)


def gaussian_conditional(mean: np.ndarray, cov: np.ndarray, known: np.ndarray,
                         values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The law of the unknown coordinates of ``N(mean, cov)`` given the known ones.

  Args:
    mean: ``[D]``; cov: ``[D, D]``.
    known: boolean ``[D]``, True where the coordinate is observed.
    values: ``[D]``; its known coordinates are the observation (the rest is ignored).

  Returns:
    ``(m_u, C_uu)``: ``m_u + C_uk C_kk^-1 (v_k - m_k)`` and ``C_uu - C_uk C_kk^-1 C_ku``, in
    float64, over the unknown coordinates in their order.
  """
  mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
  k = np.asarray(known, bool)
  u = ~k
  gain = np.linalg.solve(cov[np.ix_(k, k)], cov[np.ix_(k, u)]).T                # C_uk C_kk^-1
  cond_mean = mean[u] + gain @ (np.asarray(values, np.float64)[k] - mean[k])
  return cond_mean, cov[np.ix_(u, u)] - gain @ cov[np.ix_(k, u)]
