"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2) in ``sigma``, with churn.

Each step first raises the noise level ``sigma -> sigma_hat = sigma (1 + gamma)``,
``gamma = min(S_churn / num_steps, sqrt 2 - 1)`` where ``S_min <= sigma <= S_max`` (else 0), by
adding ``S_noise sqrt(sigma_hat^2 - sigma^2) z`` (``sigma_hat`` capped at ``sigma(T)``, the top
of the range the model was trained on), then takes a Heun step to ``sigma'`` on
``dy/dsigma = (y - D) / sigma``: two evaluations a step, second order. ``S_churn = 0`` is the
deterministic Heun sampler. ``denoise=True`` is EDM's last step, the Euler step from
``sigma(eps)`` to ``sigma = 0``: EDM's 18-step, 35-NFE setting is ``num_steps = 17`` with
``denoise=True``.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from fast_samplers.noise_levels import time_of_sigma
from fast_samplers.schedules import Schedule
from fast_samplers.solver import Method, build

Shape = Tuple[int, ...]


def _heun_method(s_churn: float, s_min: float, s_max: float, s_noise: float) -> Method:

  def extra_times(sde, grid):
    if s_churn == 0.0:
      return ()
    sigma = grid.sigma[:-1]
    gamma = min(s_churn / len(sigma), math.sqrt(2.0) - 1.0)  # per step of the actual grid
    churned = (sigma >= s_min) & (sigma <= s_max)
    target = np.minimum(sigma * (1.0 + gamma), grid.sigma[0])
    return (np.where(churned, time_of_sigma(sde, target), grid.t[:-1]),)

  def stepper(predict, grid, extra, coefficients):
    del coefficients

    def step(carry, key, i):
      (y,) = carry
      t, sigma, sigma_next = grid.t[i], grid.sigma[i], grid.sigma[i + 1]
      if extra:  # raise the noise level to the churned one, sigma_hat >= sigma
        (hat,) = extra
        added = s_noise * jnp.sqrt(jnp.maximum(hat.sigma[i]**2 - sigma**2, 0.0))
        y = y + added * jax.random.normal(key, y.shape, y.dtype)
        t, sigma = hat.t[i], hat.sigma[i]
      slope = (y - predict(y, t)) / sigma
      y_euler = y + (sigma_next - sigma) * slope
      slope_next = (y_euler - predict(y_euler, grid.t[i + 1])) / sigma_next
      return (y + (sigma_next - sigma) * 0.5 * (slope + slope_next),)

    return (lambda y: (y,)), step

  return Method(2, extra_times, stepper)


def get_edm_heun_sampler(sde: sde_lib.SDE, shape: Shape, *, s_churn: float = 0.0,
                         s_min: float = 0.0, s_max: float = float("inf"), s_noise: float = 1.0,
                         num_steps: int = 18, schedule: Schedule = None, rho: float = 7.0,
                         eps: float = 1e-3, denoise: bool = True, num_frames: int = 0
                         ) -> Callable[..., sampling.SampleOutput]:
  """EDM's Heun sampler ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe,
  trajectory)`` with ``num_frames``); ``nfe = 2 num_steps + denoise``.

  Args:
    s_churn: EDM's ``S_churn >= 0`` (0: deterministic); ``s_min``, ``s_max``: the noise levels
      ``sigma`` (in ``edm_sigma``'s units) where churn acts; ``s_noise``: EDM's ``S_noise``.
    schedule: a :data:`fast_samplers.SCHEDULES` name or a list of times; None: ``karras``
      (``rho``).
    denoise: end with EDM's Euler step to ``sigma = 0`` (the data prediction at ``eps``).
    Others as :func:`fast_samplers.ddim.get_ddim_sampler`.
  """
  if s_churn < 0 or s_noise < 0 or s_min > s_max:
    raise ValueError(f"EDM churn needs s_churn >= 0, s_noise >= 0 and s_min <= s_max, got "
                     f"s_churn={s_churn}, s_noise={s_noise}, s_min={s_min}, s_max={s_max}.")
  method = _heun_method(float(s_churn), float(s_min), float(s_max), float(s_noise))
  return build(sde, shape, method, num_steps=num_steps,
               schedule="karras" if schedule is None else schedule, rho=rho, eps=eps,
               denoise=denoise, num_frames=num_frames)
