"""DPM-Solver++ (data prediction), orders 1-3, singlestep and multistep.

The exact solution over a step of ``h`` in ``lambda = -log sigma`` is
``y' = e^-h y + int_0^h e^-(h - u) D(lambda + u) du``; with ``D`` expanded around ``lambda``,
``y' = e^-h y + c0 D + c1 D' + c2 D''``, ``c0 = 1 - e^-h``, ``c1 = h - c0``,
``c2 = h^2 / 2 - c1`` (derivatives in ``lambda``).

* Singlestep order ``k = 1, 2, 3`` estimates the derivatives from ``k - 1`` intermediate
  evaluations in the step (at ``r h``, ``r = 1/2``; ``1/3, 2/3``): ``k`` evaluations a step.
* Multistep ``2M`` / ``3M`` estimates them from the previous steps' ``D`` (backward differences
  on the non-uniform ``lambda`` grid), starting with the lower orders the history allows: one
  evaluation a step, on :mod:`fast_samplers.multistep`'s stepper (which UniC can correct:
  :func:`fast_samplers.unipc.get_unipc_sampler` with ``predictor='dpm_solver++'``). 3M's first
  (first-order) step adds an ``O(h^2)`` error whose constant is ``D'`` at ``T``, tiny because
  ``D`` barely changes at the top noise level.

The second-order methods use the published DPM-Solver++(2S)/(2M) weight ``c0 h / 2`` for ``D'``
(equal to ``c1`` to second order). Global order ``k``; order 1 is DDIM.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from fast_samplers.multistep import multistep_method, step_orders
from fast_samplers.noise_levels import time_of_sigma
from fast_samplers.schedules import Schedule
from fast_samplers.solver import Method, build

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


def multistep_weights(lam: np.ndarray, order: int) -> np.ndarray:
  """DPM-Solver++(2M) / (3M)'s predictor weights ``P: [num_steps, 2]`` on the ``lambda`` grid
  ``lam: [num_steps + 1]`` (:mod:`fast_samplers.multistep`), float64: the backward differences
  of the earlier ``D`` on the non-uniform grid, lower orders while the history is short."""
  n = len(lam) - 1
  weights = np.zeros((n, 2))
  for i, k in enumerate(step_orders(order, n)):
    h = lam[i + 1] - lam[i]
    c0 = -math.expm1(-h)
    c1 = h - c0
    c2 = 0.5 * h**2 - c1
    if k == 1:
      continue
    h0 = lam[i] - lam[i - 1]
    if order == 2:  # y_pred += (c0 h / 2) (D_i - D_(i-1)) / h0
      weights[i, 0] = -0.5 * c0 * h / h0
    elif k == 2:  # 3M's second step: y_pred += c1 (D_i - D_(i-1)) / h0
      weights[i, 0] = -c1 / h0
    else:  # c1 (d0 + h0 d'' / 2) + c2 d'' with backward differences d0, d1, d''
      h1 = lam[i - 1] - lam[i - 2]
      curvature = (0.5 * c1 * h0 + c2) * 2.0 / (h0 + h1)
      weights[i] = (-c1 / h0 - curvature * (1.0 / h0 + 1.0 / h1), curvature / h1)
  return weights


def get_dpm_solver_sampler(sde: sde_lib.SDE, shape: Shape, *, order: int = 2,
                           multistep: bool = True, num_steps: int = 20,
                           schedule: Schedule = None, rho: float = 7.0, eps: float = 1e-3,
                           denoise: bool = True, num_frames: int = 0
                           ) -> Callable[..., sampling.SampleOutput]:
  """DPM-Solver++ (data prediction) ``sample(rng, score_fn, z=None) -> (x: shape, nfe)``
  (``(x, nfe, trajectory)`` with ``num_frames``).

  Args:
    order: 1, 2 or 3.
    multistep: multistep (``2M``, ``3M``; ``nfe = num_steps + denoise``) or singlestep
      (``2S``, ``3S``; ``nfe = order num_steps + denoise``). Order 1 is DDIM either way.
    schedule: a :data:`fast_samplers.SCHEDULES` name or a list of times; None: ``logsnr``.
    Others as :func:`fast_samplers.ddim.get_ddim_sampler`.
  """
  order = int(order)
  if order not in (1, 2, 3):
    raise ValueError(f"DPM-Solver's order must be 1, 2 or 3, got {order}.")
  if multistep:
    method = multistep_method(
        lambda lam: (multistep_weights(lam, order), np.zeros((len(lam) - 1, 3))))
  else:
    method = _singlestep_method(order)
  return build(sde, shape, method, num_steps=num_steps,
               schedule="logsnr" if schedule is None else schedule, rho=rho, eps=eps,
               denoise=denoise, num_frames=num_frames)
