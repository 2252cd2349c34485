"""Reflow (Liu et al. 2023): a flow trained again on its own couplings comes out straighter.

A trained flow (the probability-flow ODE of any process here, rectified flow's being the flow
itself) maps each prior draw ``x(T)`` to a data point ``x0 = x(eps)``. Reflow trains a network
on those pairs instead of on independent (data, noise) pairs. Each pair's path is the process's
interpolation ``x(t) = a(t) x0 + std(t) z`` through both ends: :func:`coupling_noise` picks the
``z`` that puts it at ``x(T)`` at ``T`` (on the linear path a straight line from ``x0`` to
``x(T)``). Coupled paths cross less than independent ones, so the new flow's trajectories are
straighter and few-step Euler sampling loses less to them.

Straightness (Liu et al.'s ``S``): along a trajectory from ``x(T)`` to ``x(eps)``, the mean over
``t`` uniform on ``[eps, T]`` of ``|v(x(t), t) - (x(eps) - x(T)) / (eps - T)|^2``, per
dimension: 0 for a straight path at constant speed (:func:`euler_straightness`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sde_lib
from sde_lib import batch_mul, sum_non_batch

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]
"""``velocity_fn(x: [B, ...], t: [B]) -> dx/dt: [B, ...]`` of a flow (forward time)."""


def flow_velocity(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn) -> VelocityFn:
  """The probability-flow ODE's ``dx/dt = f - g^2 score / 2``: the flow of the process."""
  flow = sde.reverse(score_fn, probability_flow=True)
  return lambda x, t: flow.sde(x, t)[0]


def coupling_noise(sde: sde_lib.SDE, x0: Array, x_end: Array) -> Array:
  """``z`` with ``a(T) x0 + std(T) z = x_end``, ``[B, ...]``: the noise that makes the process's
  interpolation of the pair ``(x0, x_end = x(T))`` pass through both ends. On the linear path,
  ``z = (x(T) - (1 - T) x0) / T``."""
  t = jnp.full((x0.shape[0],), sde.T, x0.dtype)
  return batch_mul(1.0 / sde.marginal_std(t), x_end - batch_mul(sde.mean_coeff(t), x0))


class EulerPaths(NamedTuple):
  """What :func:`euler_straightness` integrated.

  Attributes:
    x: ``x(eps)``, ``[B, ...]``.
    straightness: per example, ``[B]``.
    path: ``[K + 1, B, ...]`` the states on the grid from ``T`` to ``eps`` (None unless asked).
  """
  x: Array
  straightness: Array
  path: Optional[Array]


def euler_straightness(velocity_fn: VelocityFn, x_end: Array, t_end: float, eps: float,
                       num_steps: int, keep_path: bool = False) -> EulerPaths:
  """Integrates the flow from ``x(T) = x_end`` down to ``eps`` by ``num_steps`` Euler steps on a
  uniform grid (one ``lax.scan``) and measures its straightness (module docstring).

  On a uniform grid Euler's endpoint is ``x(T) + h sum_i v_i`` with ``h = (eps - T) / K``, so the
  mean velocity equals the path's average one, ``m = (x(eps) - x(T)) / (eps - T)``, and
  ``S = mean_i |v_i|^2 / D - |m|^2 / D`` needs only a running sum. The velocities are those
  of the flow along the Euler path, which approaches the exact trajectory as ``K`` grows.
  """
  if num_steps < 1 or not 0 <= eps < t_end:
    raise ValueError(f"euler_straightness needs num_steps >= 1 and 0 <= eps < T, got "
                     f"num_steps={num_steps}, eps={eps}, T={t_end}.")
  times = np.linspace(t_end, eps, num_steps + 1)
  h = (eps - t_end) / num_steps
  dim = int(np.prod(x_end.shape[1:]))

  def step(carry, t):
    x, speed2 = carry
    v = velocity_fn(x, jnp.full((x.shape[0],), t, x.dtype))
    x_next = x + h * v
    return (x_next, speed2 + sum_non_batch(v**2)), (x_next if keep_path else None)

  (x, speed2), path = jax.lax.scan(step, (x_end, jnp.zeros(x_end.shape[0], x_end.dtype)),
                                   jnp.asarray(times[:-1], x_end.dtype))
  mean_velocity = (x - x_end) / (eps - t_end)
  straightness = (speed2 / num_steps - sum_non_batch(mean_velocity**2)) / dim
  if keep_path:
    path = jnp.concatenate([x_end[None], path], axis=0)
  return EulerPaths(x, straightness, path)


def gaussian_straightness(sde: sde_lib.SDE, data_std: float, eps: float,
                          num_points: int = 200001) -> float:
  """The exact straightness of the flow of data ``N(mu, data_std^2 I)`` (any ``mu``): its
  trajectories are ``x(t) = a(t) mu + h(t) xi`` with ``h = sqrt(a^2 s^2 + std^2)`` and
  ``xi ~ N(0, I)``, so per dimension ``S = mean_t[(a' mu + h' xi - m)^2]`` reduces, for a
  constant ``a' = -1`` (the linear path), to ``mean_t h'^2 - ((h(eps) - h(T)) / (eps - T))^2``.
  Returned for the linear path only (by trapezoidal quadrature on ``num_points`` times)."""
  if not isinstance(sde, sde_lib.RectifiedFlow):
    raise ValueError("gaussian_straightness is the linear path's closed form; got "
                     f"{type(sde).__name__}.")
  t = np.linspace(eps, sde.T, num_points)
  h = np.sqrt((1.0 - t) ** 2 * data_std**2 + t**2)
  dh = ((t - (1.0 - t) * data_std**2)) / h
  mean_dh2 = np.trapezoid(dh**2, t) / (sde.T - eps)
  slope = (h[-1] - h[0]) / (sde.T - eps)
  return float(mean_dh2 - slope**2)


def straightness_summary(values: np.ndarray) -> Tuple[float, float]:
  """``(mean, standard error)`` of per-example straightness values."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
