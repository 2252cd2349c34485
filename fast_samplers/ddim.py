"""DDIM: ``y' = D + sqrt(sigma'^2 - s^2) (y - D) / sigma + s z`` with
``s = eta sigma' sqrt(1 - sigma'^2 / sigma^2)``, one evaluation a step.

``eta = 0`` is deterministic: the probability-flow ODE's first-order exponential integrator
(order 1, identical to DPM-Solver-1). ``eta = 1`` samples the forward chain's posterior
``q(y' | y, x0 = D)`` between the two levels (for VE SMLD's ancestral step; for VP DDPM's with
the posterior variance). ``nfe = num_steps + denoise``.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

import sampling
import sde_lib
from fast_samplers.schedules import Schedule
from fast_samplers.solver import Method, build, no_extra_times

Shape = Tuple[int, ...]


def _ddim_method(eta: float) -> Method:

  def stepper(predict, grid, extra, coefficients):
    del extra, coefficients

    def step(carry, key, i):
      (y,) = carry
      sigma, sigma_next = grid.sigma[i], grid.sigma[i + 1]
      x0 = predict(y, grid.t[i])
      if eta == 0.0:
        return (x0 + (sigma_next / sigma) * (y - x0),)
      noise_std = eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - (sigma_next / sigma)**2, 0.0))
      kept = jnp.sqrt(sigma_next**2 - noise_std**2) / sigma
      return (x0 + kept * (y - x0) + noise_std * jax.random.normal(key, y.shape, y.dtype),)

    return (lambda y: (y,)), step

  return Method(1, no_extra_times, stepper)


def get_ddim_sampler(sde: sde_lib.SDE, shape: Shape, *, eta: float = 0.0, num_steps: int = 20,
                     schedule: Schedule = None, rho: float = 7.0, eps: float = 1e-3,
                     denoise: bool = True, num_frames: int = 0
                     ) -> Callable[..., sampling.SampleOutput]:
  """DDIM ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe, trajectory)`` with
  ``num_frames``); ``nfe = num_steps + denoise``.

  Args:
    sde: the forward SDE (any of ``sde_lib``'s); ``x(T) = z``, default ``sde.prior_sampling``.
    shape: ``(B, ...)`` of the samples.
    eta: in ``[0, 1]``; 0 deterministic, 1 the forward chain's posterior (module docstring).
    num_steps: steps on the schedule's ``num_steps + 1`` times.
    schedule: a :data:`fast_samplers.SCHEDULES` name or a list of times; None: ``quadratic_t``
      (DDIM's CIFAR-10 choice).
    rho: the ``karras`` exponent.
    eps: final time. denoise: end with the data prediction at ``eps`` (one more evaluation).
    num_frames: ``K``; 0: no trajectory, ``K >= 2``: also the :class:`sampling.Trajectory`.
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"DDIM's eta must lie in [0, 1], got {eta}.")
  return build(sde, shape, _ddim_method(float(eta)), num_steps=num_steps,
               schedule="quadratic_t" if schedule is None else schedule, rho=rho, eps=eps,
               denoise=denoise, num_frames=num_frames)


# --------------------------------------------------------------------------- DPM-Solver++
