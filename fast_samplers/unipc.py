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
the host (:mod:`fast_samplers.multistep`'s stepper). UniC follows DPM-Solver++'s multistep
steps the same way (``predictor='dpm_solver++'``): DPM-Solver++(2M) + UniC has order 3,
(3M) + UniC order 4. NFE: one evaluation before the first step and one in every step but the
last: ``num_steps + denoise``.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

import sampling
import sde_lib
from fast_samplers.dpm_solver import multistep_weights
from fast_samplers.multistep import multistep_method, step_orders
from fast_samplers.schedules import Schedule
from fast_samplers.solver import build

Shape = Tuple[int, ...]

VARIANTS = ("bh1", "bh2")
PREDICTORS = ("unip", "dpm_solver++")
_LOWER_ORDER_FINAL_BELOW = 15  # steps; the authors' code lowers the last orders below this


def _order_conditions(lam: np.ndarray, i: int, p: int, variant: str
                      ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
  """Step ``i``'s ``(B(h), r: [p], R: [p, p], b: [p])``: ``r`` the history's ``r_k`` and 1 (the
  corrector's new point), ``R_mk = r_k^(m-1)``, ``b_m = m! phi_(m+1)(-h) / B(h)``."""
  h = lam[i + 1] - lam[i]
  hh = -h
  b_h = hh if variant == "bh1" else math.expm1(hh)
  r = np.array([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0])
  # phi_(m+1) by the recursion h_phi_(m+1) = h_phi_m / hh - 1 / (m + 1)!.
  b_vec, h_phi, factorial = [], math.expm1(hh) / hh - 1.0, 1.0
  for m in range(1, p + 1):
    b_vec.append(h_phi * factorial / b_h)
    factorial *= m + 1
    h_phi = h_phi / hh - 1.0 / factorial
  return b_h, r, np.vander(r, p, increasing=True).T, np.array(b_vec)


def unip_weights(lam: np.ndarray, orders: np.ndarray, variant: str) -> np.ndarray:
  """UniP's predictor weights ``P: [num_steps, 2]`` (:mod:`fast_samplers.multistep`): step ``i``
  of order ``p = orders[i]`` adds ``-B(h) sum_k rho_k D1_k`` (UniP-2: ``rho = 1/2``)."""
  weights = np.zeros((len(lam) - 1, 2))
  for i, p in enumerate(orders):
    if p == 1:
      continue
    b_h, r, r_mat, b_vec = _order_conditions(lam, i, p, variant)
    rho = np.array([0.5]) if p == 2 else np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
    weights[i, :p - 1] = -b_h * rho / r[:-1]
  return weights


def unic_weights(lam: np.ndarray, orders: np.ndarray, variant: str) -> np.ndarray:
  """UniC's corrected update ``y_1 - B(h) (sum_k rho^c_k D1_k + rho^c_p (D(y_pred) - D_i))`` as
  weights ``C: [num_steps, 3]`` of ``Delta_1``, ``Delta_2`` and ``D(y_pred) - D_i`` (UniC-1:
  ``rho^c = 1/2``); the last step's row is zero (it is not corrected)."""
  weights = np.zeros((len(lam) - 1, 3))
  for i, p in enumerate(orders[:-1]):
    b_h, r, r_mat, b_vec = _order_conditions(lam, i, p, variant)
    rho = np.array([0.5]) if p == 1 else np.linalg.solve(r_mat, b_vec)
    weights[i, :p - 1] = -b_h * rho[:-1] / r[:-1]
    weights[i, 2] = -b_h * rho[-1]
  return weights


def _unipc_weights(order: int, variant: str, corrector: bool, predictor: str
                   ) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:

  def weights(lam):
    num_steps = len(lam) - 1
    if predictor == "unip":
      orders = step_orders(order, num_steps, _LOWER_ORDER_FINAL_BELOW)
      predicted = unip_weights(lam, orders, variant)
    else:
      orders = step_orders(order, num_steps)
      predicted = multistep_weights(lam, order)
    correction = np.zeros((num_steps, 3))
    if corrector:
      corrected = unic_weights(lam, orders, variant)
      correction[:-1, :2] = corrected[:-1, :2] - predicted[:-1]
      correction[:, 2] = corrected[:, 2]
    return predicted, correction

  return weights


def get_unipc_sampler(sde: sde_lib.SDE, shape: Shape, *, order: int = 3, variant: str = "bh1",
                      corrector: bool = True, predictor: str = "unip", num_steps: int = 10,
                      schedule: Schedule = None, rho: float = 7.0, eps: float = 1e-3,
                      denoise: bool = True, num_frames: int = 0
                      ) -> Callable[..., sampling.SampleOutput]:
  """UniPC ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe, trajectory)`` with
  ``num_frames``); ``nfe = num_steps + denoise``.

  Args:
    order: ``p`` in 1, 2, 3: the predictor's order; with the corrector, order ``p + 1``.
    variant: ``'bh1'`` (``B(h) = -h``, the paper's choice for unconditional sampling) or
      ``'bh2'`` (``B(h) = e^-h - 1``, for guided sampling).
    corrector: follow each step but the last with UniC (no extra evaluation); False: the
      predictor alone.
    predictor: ``'unip'`` (UniP-p, whose final orders drop below 15 steps) or
      ``'dpm_solver++'`` (DPM-Solver++(pM), exactly :func:`get_dpm_solver_sampler`'s multistep
      steps, so ``corrector=True`` is DPM-Solver++(pM) followed by UniC-p).
    schedule: a :data:`fast_samplers.SCHEDULES` name or a list of times; None: ``logsnr``.
    Others as :func:`fast_samplers.ddim.get_ddim_sampler`.
  """
  order = int(order)
  if order not in (1, 2, 3):
    raise ValueError(f"UniPC's order must be 1, 2 or 3, got {order}.")
  if variant not in VARIANTS:
    raise ValueError(f"UniPC's variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
  if predictor not in PREDICTORS:
    raise ValueError(f"UniPC's predictor must be one of {', '.join(PREDICTORS)}, "
                     f"got {predictor!r}.")
  method = multistep_method(_unipc_weights(order, variant, bool(corrector), predictor))
  return build(sde, shape, method, num_steps=num_steps,
               schedule="logsnr" if schedule is None else schedule, rho=rho, eps=eps,
               denoise=denoise, num_frames=num_frames)
