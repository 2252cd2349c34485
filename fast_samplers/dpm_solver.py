"""DPM-Solver++ (data prediction), orders 1-3, singlestep and multistep.

The exact solution over a step of ``h`` in ``lambda = -log sigma`` is
``y' = e^-h y + int_0^h e^-(h - u) D(lambda + u) du``; with ``D`` expanded around ``lambda``,
``y' = e^-h y + c0 D + c1 D' + c2 D''``, ``c0 = 1 - e^-h``, ``c1 = h - c0``,
``c2 = h^2 / 2 - c1`` (derivatives in ``lambda``).

* Singlestep order ``k = 1, 2, 3`` estimates the derivatives from ``k - 1`` intermediate
  evaluations in the step (at ``r h``, ``r = 1/2``; ``1/3, 2/3``): ``k`` evaluations a step.
* Multistep ``2M`` / ``3M`` estimates them from the previous steps' ``D`` (backward differences
  on the non-uniform ``lambda`` grid), starting with the lower orders the history allows: one
  evaluation a step. 3M's first (first-order) step adds an ``O(h^2)`` error whose constant is
  ``D'`` at ``T``, tiny because ``D`` barely changes at the top noise level.

The second-order methods use the published DPM-Solver++(2S)/(2M) weight ``c0 h / 2`` for ``D'``
(equal to ``c1`` to second order). Global order ``k``; order 1 is DDIM.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from fast_samplers.noise_levels import time_of_sigma
from fast_samplers.solver import Method, build, no_extra_times

Array = jax.Array
Shape = Tuple[int, ...]


def _phi(h: Array) -> Tuple[Array, Array, Array]:
  """``(c0, c1, c2)``: ``c_k = int_0^h e^-(h - u) u^k / k! du``."""
  c0 = -jnp.expm1(-h)
  c1 = h - c0
  return c0, c1, 0.5 * h**2 - c1


# Intermediate points of the singlestep methods, as fractions r of the step in lambda.
_SINGLESTEP_FRACTIONS = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def _singlestep_method(order: int) -> Method:

  def extra_times(sde, grid):
    step_lam = grid.lam[1:] - grid.lam[:-1]
    return tuple(time_of_sigma(sde, grid.sigma[:-1] * np.exp(-r * step_lam))
                 for r in _SINGLESTEP_FRACTIONS[order])

  def stepper(predict, grid, mids, coefficients):
    del coefficients

    def step(carry, key, i):
      del key
      (y,) = carry
      lam = grid.lam[i]
      x0 = predict(y, grid.t[i])
      h = grid.lam[i + 1] - lam
      c0, c1, _ = _phi(h)
      decay = grid.sigma[i + 1] / grid.sigma[i]  # e^-h
      if order == 1:
        return (decay * y + c0 * x0,)
      h1 = mids[0].lam[i] - lam
      b0, _, _ = _phi(h1)
      x0_1 = predict(mids[0].sigma[i] / grid.sigma[i] * y + b0 * x0, mids[0].t[i])
      slope = (x0_1 - x0) / h1
      if order == 2:  # DPM-Solver++(2S)
        return (decay * y + c0 * x0 + 0.5 * c0 * h * slope,)
      h2 = mids[1].lam[i] - lam
      e0, e1, _ = _phi(h2)
      x0_2 = predict(mids[1].sigma[i] / grid.sigma[i] * y + e0 * x0 + e1 * slope, mids[1].t[i])
      return (decay * y + c0 * x0 + c1 * (x0_2 - x0) / h2,)

    return (lambda y: (y,)), step

  return Method(order, extra_times, stepper)


def _multistep_method(order: int) -> Method:

  def stepper(predict, grid, extra, coefficients):
    del extra, coefficients

    def step(carry, key, i):
      del key
      y, prev1, prev2 = carry
      x0 = predict(y, grid.t[i])
      h = grid.lam[i + 1] - grid.lam[i]
      c0, c1, c2 = _phi(h)
      update = grid.sigma[i + 1] / grid.sigma[i] * y + c0 * x0
      if order >= 2:
        has1, has2 = i >= 1, i >= 2
        # Backward steps in lambda (1 where there is no history yet, to stay finite).
        h0 = jnp.where(has1, grid.lam[i] - grid.lam[jnp.maximum(i - 1, 0)], 1.0)
        d0 = jnp.where(has1, 1.0, 0.0) * (x0 - prev1) / h0
        if order == 2:  # DPM-Solver++(2M)
          update = update + 0.5 * c0 * h * d0
        else:
          h1 = jnp.where(has2, grid.lam[jnp.maximum(i - 1, 0)] - grid.lam[jnp.maximum(i - 2, 0)],
                         1.0)
          d1 = (prev1 - prev2) / h1
          curvature = jnp.where(has2, 2.0, 0.0) * (d0 - d1) / (h0 + h1)
          update = update + c1 * (d0 + 0.5 * h0 * curvature) + c2 * curvature
      return update, x0, prev1

    return (lambda y: (y, jnp.zeros_like(y), jnp.zeros_like(y))), step

  return Method(1, no_extra_times, stepper)


def get_dpm_solver_sampler(sde: sde_lib.SDE, shape: Shape, *, order: int = 2,
                           multistep: bool = True, num_steps: int = 20,
                           schedule: Optional[str] = None, rho: float = 7.0, eps: float = 1e-3,
                           denoise: bool = True, num_frames: int = 0
                           ) -> Callable[..., sampling.SampleOutput]:
  """DPM-Solver++ (data prediction) ``sample(rng, score_fn, z=None) -> (x: shape, nfe)``
  (``(x, nfe, trajectory)`` with ``num_frames``).

  Args:
    order: 1, 2 or 3.
    multistep: multistep (``2M``, ``3M``; ``nfe = num_steps + denoise``) or singlestep
      (``2S``, ``3S``; ``nfe = order num_steps + denoise``). Order 1 is DDIM either way.
    schedule: a :data:`SCHEDULES` name; None: ``logsnr``.
    Others as :func:`fast_samplers.ddim.get_ddim_sampler`.
  """
  order = int(order)
  if order not in (1, 2, 3):
    raise ValueError(f"DPM-Solver's order must be 1, 2 or 3, got {order}.")
  method = _multistep_method(order) if multistep else _singlestep_method(order)
  return build(sde, shape, method, num_steps=num_steps, schedule=schedule or "logsnr", rho=rho,
                eps=eps, denoise=denoise, num_frames=num_frames)
