"""Time schedules: ``num_steps + 1`` times from exactly ``T`` down to exactly ``eps``.

``uniform_t`` (``linspace(T, eps)``, DDIM's), ``quadratic_t`` (uniform in ``sqrt t``),
``logsnr`` (uniform in ``lambda = -log sigma``, DPM-Solver's) and ``karras`` (uniform in
``sigma^(1/rho)``, EDM's, ``rho = 7``), registered in :data:`SCHEDULES`.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

import sde_lib
from fast_samplers.noise_levels import grid_of_times, time_of_sigma
from infra.registry import Registry

ScheduleFn = Callable[[sde_lib.SDE, int, float, float], np.ndarray]
"""``schedule(sde, num_steps, eps, rho) -> times: [num_steps + 1]`` from ``T`` to ``eps``."""

SCHEDULES: Registry[ScheduleFn] = Registry("time schedule")


def _end_sigmas(sde: sde_lib.SDE, eps: float) -> Tuple[float, float]:
  ends = grid_of_times(sde, np.asarray([sde.T, eps])).sigma
  return float(ends[0]), float(ends[1])


def _times_of_sigmas(sde: sde_lib.SDE, sigmas: np.ndarray, eps: float) -> np.ndarray:
  t = time_of_sigma(sde, sigmas).astype(np.float64)
  t[0], t[-1] = sde.T, eps
  return t


@SCHEDULES.register("uniform_t")
def uniform_time_schedule(sde: sde_lib.SDE, num_steps: int, eps: float,
                          rho: float) -> np.ndarray:
  """``t_i = linspace(T, eps, num_steps + 1)``."""
  del rho
  return np.linspace(sde.T, eps, num_steps + 1)


@SCHEDULES.register("quadratic_t")
def quadratic_time_schedule(sde: sde_lib.SDE, num_steps: int, eps: float,
                            rho: float) -> np.ndarray:
  """``t_i = linspace(sqrt T, sqrt eps, num_steps + 1)^2``: steps shrink towards ``eps``."""
  del rho
  t = np.linspace(math.sqrt(sde.T), math.sqrt(eps), num_steps + 1) ** 2
  t[0], t[-1] = sde.T, eps
  return t


@SCHEDULES.register("logsnr")
def logsnr_schedule(sde: sde_lib.SDE, num_steps: int, eps: float, rho: float) -> np.ndarray:
  """Uniform in ``lambda = -log sigma`` (half the log-SNR) from ``sigma(T)`` to ``sigma(eps)``."""
  del rho
  sigma_max, sigma_min = _end_sigmas(sde, eps)
  log_sigma = np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps + 1)
  return _times_of_sigmas(sde, np.exp(log_sigma), eps)


@SCHEDULES.register("karras")
def karras_schedule(sde: sde_lib.SDE, num_steps: int, eps: float, rho: float) -> np.ndarray:
  """EDM's ``sigma_i = (sigma_max^(1/rho) + i / num_steps (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho`` between ``sigma(T)`` and ``sigma(eps)``."""
  sigma_max, sigma_min = _end_sigmas(sde, eps)
  top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  frac = np.linspace(0.0, 1.0, num_steps + 1)
  return _times_of_sigmas(sde, (top + frac * (bottom - top)) ** rho, eps)


def get_time_schedule(name: str, sde: sde_lib.SDE, num_steps: int, eps: float = 1e-3,
                      rho: float = 7.0) -> np.ndarray:
  """The ``num_steps + 1`` times (float64 NumPy, decreasing from exactly ``T`` to exactly
  ``eps``) of the registered schedule ``name``; ``rho`` is the ``karras`` exponent. Computed on
  the host (:func:`time_of_sigma`)."""
  return np.asarray(SCHEDULES.get(name)(sde, num_steps, eps, rho), np.float64)
