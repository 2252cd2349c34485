"""Time schedules: ``num_steps + 1`` times from exactly ``T`` down to exactly ``eps``.

A schedule is data: a name registered in :data:`SCHEDULES` (``uniform_t``: ``linspace(T,
eps)``, DDIM's; ``quadratic_t``: uniform in ``sqrt t``; ``logsnr``: uniform in
``lambda = -log sigma``, DPM-Solver's; ``karras``: EDM's polynomial in sigma, uniform in
``sigma^(1/rho)`` for any ``rho > 0``, EDM's ``rho = 7``) or the times themselves, a decreasing
list from ``T`` (then the list sets ``num_steps`` and ``eps``). Every fast sampler takes either.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

import sde_lib
from fast_samplers.noise_levels import grid_of_times, time_of_sigma
from infra.registry import Registry

Schedule = Optional[Union[str, Sequence[float]]]
"""A :data:`SCHEDULES` name, a list of times from ``T`` down to ``eps > 0``, or None (the
sampler's own)."""
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


def parse_schedule(text: str) -> Union[str, Tuple[float, ...]]:
  """``sampling.schedule`` as written in a config: a name, or comma-separated times
  (``'1,0.5,0.1,0.001'``)."""
  if "," not in text:
    return text
  try:
    return tuple(float(part) for part in text.split(","))
  except ValueError:
    raise ValueError(f"sampling.schedule {text!r} is neither a schedule name "
                     f"({', '.join(SCHEDULES.names())}) nor comma-separated times.") from None


def check_times(sde: sde_lib.SDE, times: Sequence[float]) -> np.ndarray:
  """A user's list of times as float64, or a one-line ``ValueError`` saying what is wrong."""
  t = np.asarray(times, np.float64)
  if t.ndim != 1 or len(t) < 2 or not np.all(np.isfinite(t)):
    raise ValueError(f"a list of times needs at least two finite times, got {list(times)}.")
  if not np.isclose(t[0], sde.T, rtol=1e-9, atol=0.0):
    raise ValueError(f"a list of times must start at T = {sde.T} (where the prior is sampled), "
                     f"got {t[0]}.")
  if not np.all(np.diff(t) < 0) or not t[-1] > 0:
    raise ValueError(f"a list of times must decrease strictly from T to a final time > 0, "
                     f"got {list(times)}.")
  t[0] = sde.T
  return t


def get_time_schedule(schedule: Union[str, Sequence[float]], sde: sde_lib.SDE, num_steps: int,
                      eps: float = 1e-3, rho: float = 7.0) -> np.ndarray:
  """The times (float64 NumPy, decreasing from exactly ``T``) of ``schedule``: a registered
  name's ``num_steps + 1`` times down to exactly ``eps`` (``rho`` is the ``karras`` exponent,
  computed on the host by :func:`time_of_sigma`), or a list of times, checked and returned."""
  if not isinstance(schedule, str):
    return check_times(sde, schedule)
  return np.asarray(SCHEDULES.get(schedule)(sde, num_steps, eps, rho), np.float64)
