"""UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC-p, multistep, on
the data prediction, orders 1-3.

In ``y = x / a`` and ``lambda = -log sigma`` a step of ``h`` from grid point ``i`` starts from
DPM-Solver-1, ``y_1 = e^-h y_i + (1 - e^-h) D_i``, and adds the earlier data predictions through
their scaled differences ``D1_k = (D_(i-k) - D_i) / r_k``, ``r_k = (lambda_(i-k) - lambda_i) / h``:

  UniP-p:  ``y_pred = y_1 - B(h) sum_k rho_k D1_k`` (``k < p``),
  UniC-p:  ``y_(i+1) = y_1 - B(h) (sum_k rho^c_k D1_k + rho^c_p (D(y_pred) - D_i))``,

with ``rho`` solving the order conditions ``R rho = b`` of the paper (``R_mk = r_k^m``,
``b_m = m! phi_(m+1)(-h) / B(h)``; UniP-2 takes ``rho = 1/2``, UniC-1 ``rho^c = 1/2``) and
``B(h) = -h`` (``bh1``) or ``e^-h - 1`` (``bh2``; UniP-2 with ``bh2`` is DPM-Solver++(2M)).
UniP-p has order ``p``; the corrector raises it to ``p + 1`` and adds no evaluation: the
``D(y_pred)`` it needs is the next step's ``D_i``. The first steps use the orders the history
allows; with fewer than 15 steps the last ones lower their order too (as the authors' code),
and the last step is not corrected. The weights depend on the grid alone and are computed on
the host. NFE: one evaluation before the first step and one in every step but the last:
``num_steps + denoise``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from fast_samplers.noise_levels import Grid
from fast_samplers.solver import Method, build, no_extra_times

Shape = Tuple[int, ...]

VARIANTS = ("bh1", "bh2")
_LOWER_ORDER_FINAL_BELOW = 15  # steps; the authors' code lowers the last orders below this


def _step_orders(order: int, num_steps: int) -> np.ndarray:
  """The order of each step: warm start, and lower final orders for short runs."""
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  if num_steps < _LOWER_ORDER_FINAL_BELOW:
    orders = np.minimum(orders, num_steps - i)
  return orders


def unipc_weights(lam: np.ndarray, order: int, variant: str, corrector: bool
                  ) -> Tuple[np.ndarray, ...]:
  """Per-step weights on the ``lambda`` grid ``lam: [num_steps + 1]``, float64:
  ``(decay, phi1, B, inv_r [n, 2], rho_p [n, 2], rho_c [n, 3])``; the last column of ``rho_c``
  weighs ``D(y_pred) - D_i`` and is zero where the step is not corrected."""
  n = len(lam) - 1
  decay, phi1, b_h = np.zeros(n), np.zeros(n), np.zeros(n)
  inv_r, rho_p, rho_c = np.zeros((n, 2)), np.zeros((n, 2)), np.zeros((n, 3))
  for i, p in enumerate(_step_orders(order, n)):
    h = lam[i + 1] - lam[i]
    hh = -h
    decay[i], phi1[i] = math.exp(-h), math.expm1(hh)
    b_h[i] = hh if variant == "bh1" else math.expm1(hh)
    rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
    inv_r[i, :p - 1] = [1.0 / r for r in rks[:-1]]
    # b_m = m! phi_(m+1)(hh) h^... / B: the recursion of the authors' code.
    r_mat, b_vec = [], []
    h_phi_k, factorial = phi1[i] / hh - 1.0, 1.0
    for m in range(1, p + 1):
      r_mat.append([r ** (m - 1) for r in rks])
      b_vec.append(h_phi_k * factorial / b_h[i])
      factorial *= m + 1
      h_phi_k = h_phi_k / hh - 1.0 / factorial
    r_mat, b_vec = np.array(r_mat), np.array(b_vec)
    if p == 2:
      rho_p[i, :1] = 0.5
    elif p == 3:
      rho_p[i, :2] = np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
    if corrector and i < n - 1:
      rho = np.array([0.5]) if p == 1 else np.linalg.solve(r_mat, b_vec)
      rho_c[i, :p - 1], rho_c[i, 2] = rho[:-1], rho[-1]
  return decay, phi1, b_h, inv_r, rho_p, rho_c


def _unipc_method(order: int, variant: str, corrector: bool) -> Method:

  def coefficients(grid: Grid) -> Tuple[np.ndarray, ...]:
    return unipc_weights(np.asarray(grid.lam, np.float64), order, variant, corrector)

  def stepper(predict, grid, extra, tables):
    del extra
    decay, phi1, b_h, inv_r, rho_p, rho_c = tables
    last = grid.t.shape[0] - 2

    def step(carry, key, i):
      del key
      y, d0, d1, d2 = carry
      diffs = ((d1 - d0) * inv_r[i, 0], (d2 - d0) * inv_r[i, 1])
      y_1 = decay[i] * y - phi1[i] * d0
      y_pred = y_1 - b_h[i] * (rho_p[i, 0] * diffs[0] + rho_p[i, 1] * diffs[1])

      def evaluate_next():
        d_new = predict(y_pred, grid.t[i + 1])
        if not corrector:
          return y_pred, d_new
        return y_1 - b_h[i] * (rho_c[i, 0] * diffs[0] + rho_c[i, 1] * diffs[1]
                               + rho_c[i, 2] * (d_new - d0)), d_new

      # The last step needs no next data prediction: it evaluates nothing and is not corrected.
      y_next, d_next = jax.lax.cond(i < last, evaluate_next, lambda: (y_pred, d0))
      return y_next, d_next, d0, d1

    def init(y):
      d0 = predict(y, grid.t[0])
      return y, d0, jnp.zeros_like(y), jnp.zeros_like(y)

    return init, step

  return Method(1, no_extra_times, stepper, coefficients)


def get_unipc_sampler(sde: sde_lib.SDE, shape: Shape, *, order: int = 3, variant: str = "bh1",
                      corrector: bool = True, num_steps: int = 10,
                      schedule: Optional[str] = None, rho: float = 7.0, eps: float = 1e-3,
                      denoise: bool = True, num_frames: int = 0
                      ) -> Callable[..., sampling.SampleOutput]:
  """UniPC ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe, trajectory)`` with
  ``num_frames``); ``nfe = num_steps + denoise``.

  Args:
    order: ``p`` in 1, 2, 3: UniP-p, order ``p``; with the corrector, order ``p + 1``.
    variant: ``'bh1'`` (``B(h) = -h``, the paper's choice for unconditional sampling) or
      ``'bh2'`` (``B(h) = e^-h - 1``, for guided sampling).
    corrector: follow each step but the last with UniC (no extra evaluation); False: UniP alone.
    schedule: a :data:`fast_samplers.SCHEDULES` name; None: ``logsnr``.
    Others as :func:`fast_samplers.ddim.get_ddim_sampler`.
  """
  order = int(order)
  if order not in (1, 2, 3):
    raise ValueError(f"UniPC's order must be 1, 2 or 3, got {order}.")
  if variant not in VARIANTS:
    raise ValueError(f"UniPC's variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
  return build(sde, shape, _unipc_method(order, variant, bool(corrector)), num_steps=num_steps,
               schedule=schedule or "logsnr", rho=rho, eps=eps, denoise=denoise,
               num_frames=num_frames)
