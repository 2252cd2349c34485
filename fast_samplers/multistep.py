"""The multistep predictor-corrector DPM-Solver++(2M, 3M) and UniPC share: one evaluation a
step, on the data prediction, in ``y = x / a`` and ``lambda = -log sigma``.

A step of ``h = lambda_(i+1) - lambda_i`` from ``y_i``, with the data predictions ``D_i`` and
the two before it, ``Delta_k = D_(i-k) - D_i``:

  predictor:  ``y_pred = e^-h y_i + (1 - e^-h) D_i + P_i0 Delta_1 + P_i1 Delta_2``,
  corrector:  ``y_(i+1) = y_pred + Q_i0 Delta_1 + Q_i1 Delta_2 + Q_i2 (D(y_pred) - D_i)``.

The first two terms are DPM-Solver-1 (exact for constant ``D``); a method is its weights ``P``
and ``Q``, which depend on the ``lambda`` grid alone and are computed on the host (float64)
when the sampler is built. ``D(y_pred)`` at ``t_(i+1)`` is the next step's ``D_i``, so the
corrector adds no evaluation; the last step evaluates nothing and is not corrected. NFE: one
evaluation before the first step and one in every step but the last: ``num_steps``.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fast_samplers.noise_levels import Grid
from fast_samplers.solver import Method, no_extra_times

Weights = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
"""``weights(lam: [num_steps + 1]) -> (P: [num_steps, 2], Q: [num_steps, 3])``, float64."""


def step_orders(order: int, num_steps: int, lower_final_below: int = 0) -> np.ndarray:
  """The order of each step: a warm start with the orders the history allows, and, with fewer
  than ``lower_final_below`` steps, final steps whose order drops to the steps left."""
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  if num_steps < lower_final_below:
    orders = np.minimum(orders, num_steps - i)
  return orders


def multistep_method(weights: Weights) -> Method:
  """The :class:`solver.Method` stepping with ``weights`` (module docstring)."""

  def coefficients(grid: Grid) -> Tuple[np.ndarray, ...]:
    lam = np.asarray(grid.lam, np.float64)
    predictor, corrector = weights(lam)
    decay = np.exp(lam[:-1] - lam[1:])
    return decay, 1.0 - decay, predictor, corrector

  def stepper(predict, grid, extra, tables):
    del extra
    decay, first_order, p, q = tables
    last = grid.t.shape[0] - 2

    def step(carry, key, i):
      del key
      y, d0, d1, d2 = carry
      delta1, delta2 = d1 - d0, d2 - d0
      y_pred = decay[i] * y + first_order[i] * d0 + p[i, 0] * delta1 + p[i, 1] * delta2

      def evaluate_next():
        d_new = predict(y_pred, grid.t[i + 1])
        return y_pred + q[i, 0] * delta1 + q[i, 1] * delta2 + q[i, 2] * (d_new - d0), d_new

      y_next, d_next = jax.lax.cond(i < last, evaluate_next, lambda: (y_pred, d0))
      return y_next, d_next, d0, d1

    def init(y):
      zeros = jnp.zeros_like(y)
      return y, predict(y, grid.t[0]), zeros, zeros

    return init, step

  return Method(1, no_extra_times, stepper, coefficients)
