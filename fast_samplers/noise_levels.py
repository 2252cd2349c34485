"""Noise levels: ``sigma(t) = std(t) / a(t)`` of ``x(t) = a(t) (x0 + sigma(t) z)``, its inverse
and the grid of times and levels a sampler steps on, all computed on the host when a sampler
is built."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import sde_lib

Array = jax.Array

# Halvings of [0, T] in time_of_sigma: below the resolution of float64 times (2^-64 T).
_BISECTION_STEPS = 64
_BISECTION_MIN_SIZE = 256


def edm_sigma(sde: sde_lib.SDE, t: Array) -> Array:
  """The noise level ``sigma(t) = std(t) / a(t)``, ``[B]``, of ``x(t) = a (x0 + sigma z)``."""
  return sde.marginal_std(t) / sde.mean_coeff(t)


def time_of_sigma(sde: sde_lib.SDE, sigma: np.ndarray) -> np.ndarray:
  """The times ``t in [0, T]``, ``[n]``, with ``edm_sigma(sde, t) = sigma: [n]``, by bisection.

  ``sigma(t)`` is increasing for every SDE here; levels outside ``[sigma(0), sigma(T)]`` map to
  the nearer end. Runs eagerly on the host when a sampler is built (also inside a ``jit`` trace),
  in JAX's default float dtype (float64 under ``jax.enable_x64``), to that dtype's resolution.
  """
  flat = np.asarray(sigma, np.float64).reshape(-1)
  # Eager ops compile once per shape: padding to a few sizes keeps that a one-time cost.
  padded = np.ones(max(_BISECTION_MIN_SIZE, 1 << max(len(flat) - 1, 0).bit_length()))
  padded[:len(flat)] = flat
  with jax.ensure_compile_time_eval():  # eager even when a sampler is built inside a trace
    target = jnp.asarray(padded, jnp.asarray(0.0).dtype)
    lo, hi = jnp.zeros_like(target), jnp.full_like(target, sde.T)
    for _ in range(_BISECTION_STEPS):
      mid = 0.5 * (lo + hi)
      above = edm_sigma(sde, mid) > target
      lo, hi = jnp.where(above, lo, mid), jnp.where(above, mid, hi)
    return np.array(0.5 * (lo + hi))[:len(flat)].reshape(np.shape(sigma))


class Grid(NamedTuple):
  """Times and noise levels, each ``[n]`` (NumPy when built, device arrays in a sampler).

  Attributes:
    t: times. a: ``a(t)``. sigma: ``edm_sigma(t)``. lam: ``lambda = -log sigma``.
  """
  t: Array
  a: Array
  sigma: Array
  lam: Array


def grid_of_times(sde: sde_lib.SDE, t: np.ndarray) -> Grid:
  """The :class:`Grid` of times ``t: [n]``, on the host."""
  with jax.ensure_compile_time_eval():
    t = jnp.asarray(t, jnp.asarray(0.0).dtype)
    sigma = edm_sigma(sde, t)
    return Grid(*(np.asarray(v) for v in (t, sde.mean_coeff(t), sigma, -jnp.log(sigma))))
