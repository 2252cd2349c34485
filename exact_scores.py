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
(``builders.data_scalers`` passes them through), so model space is ``toy_data``'s space.

Oracles of conditional generation (``controllable_generation``): the mixture's exact
noise-conditional classifier ``log p_t(k | x)`` (:func:`gaussian_mixture_log_posterior`) and
class-conditional score ``grad log p_t(x | k)`` (:func:`gaussian_mixture_conditional_score`),
the class being the component; the score of Gaussian data of any covariance
(:func:`gaussian_score`) and the closed-form law of its unknown coordinates given the known
ones (:func:`gaussian_conditional`), what an inpainter should sample.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

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
    flat = x.reshape(x.shape[0], -1)
    mu = jnp.asarray(means, flat.dtype)
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]       # [B, 1]
    var = a**2 * jnp.asarray(stds, flat.dtype)[None] ** 2 + std**2           # [B, K]
    diff = flat[:, None, :] - a[:, :, None] * mu[None]                       # [B, K, D]
    log_p = (jnp.asarray(log_weights, flat.dtype)[None]
             - 0.5 * jnp.sum(diff**2, axis=-1) / var - 0.5 * flat.shape[1] * jnp.log(var))
    resp = jax.nn.softmax(log_p, axis=-1)                                    # [B, K]
    return -jnp.einsum("bk,bkd->bd", resp / var, diff).reshape(x.shape)

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


# --------------------------------------------------------------------- conditional oracles


def _mixture_component_log_probs(sde: sde_lib.SDE, means: np.ndarray, stds: np.ndarray,
                                 log_weights: np.ndarray, x: Array, t: Array) -> Array:
  """``log w_k + log N(x; a mu_k, (a^2 s_k^2 + std^2) I)``, ``[B, K]``, of ``x: [B, ...]``."""
  flat = x.reshape(x.shape[0], -1)
  mu = jnp.asarray(means, flat.dtype)
  a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]          # [B, 1]
  var = a**2 * jnp.asarray(stds, flat.dtype)[None] ** 2 + std**2              # [B, K]
  diff = flat[:, None, :] - a[:, :, None] * mu[None]                          # [B, K, D]
  return (jnp.asarray(log_weights, flat.dtype)[None] - 0.5 * jnp.sum(diff**2, axis=-1) / var
          - 0.5 * flat.shape[1] * jnp.log(2.0 * np.pi * var))


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
    log_joint = _mixture_component_log_probs(sde, means, stds, log_weights, x, t)
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
  """The exact score of Gaussian data ``N(mean, cov)`` (any covariance) under ``sde``.

  The marginal is ``N(a m, a^2 C + std^2 I)``; with ``C = U diag(lam) U^T`` its score is
  ``-U diag(1 / (a^2 lam + std^2)) U^T (x - a m)``.

  Args:
    mean: ``[D]``; cov: ``[D, D]`` symmetric positive semi-definite.

  Returns:
    ``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` with ``prod(x.shape[1:]) = D``. Jittable.
  """
  mean = np.asarray(mean, np.float64)
  lam, vecs = np.linalg.eigh(np.asarray(cov, np.float64))

  def score_fn(x: Array, t: Array) -> Array:
    flat = x.reshape(x.shape[0], -1)
    u = jnp.asarray(vecs, flat.dtype)
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]          # [B, 1]
    proj = (flat - a * jnp.asarray(mean, flat.dtype)[None]) @ u                # [B, D]
    return (-(proj / (a**2 * jnp.asarray(lam, flat.dtype)[None] + std**2)) @ u.T).reshape(
        x.shape)

  return score_fn


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
