"""The one scan every fast sampler runs: a sampler states its steps as a :class:`Method`, and
:func:`build` turns that into ``sample(rng, score_fn, z=None)``.

A step moves ``y = x / a`` from grid index ``i`` to ``i + 1``, calling the data prediction
``D(y, t) = E[x0 | x(t) = a(t) y]`` (:func:`data_prediction`); every time a sampler visits
(its grid, intermediate points, churned levels) depends on the grid alone, so they are found
once, on the host, and enter the program as constants. NFE counts the calls made:
``evals_per_step * num_steps`` plus one for ``denoise``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from fast_samplers.noise_levels import Grid, grid_of_times
from fast_samplers.schedules import SCHEDULES, Schedule, check_times, get_time_schedule
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Shape = Tuple[int, ...]
Carry = Tuple[Array, ...]
Denoiser = Callable[[Array, Array], Array]
"""``D(y: [B, ...], t: scalar) -> [B, ...]``, the data prediction at ``x = a(t) y``."""
StepFn = Callable[[Carry, Array, Array], Carry]
"""``step(carry, key, i) -> carry``: one step from grid index ``i`` to ``i + 1``;
``carry[0]`` is ``y``."""


def data_prediction(sde: sde_lib.SDE, score_fn: ScoreFn) -> Denoiser:
  """``D(y, t) = E[x0 | x(t) = a(t) y]`` from ``score_fn`` (:func:`sampling.tweedie_denoise`)."""

  def predict(y, t):
    tb = jnp.full((y.shape[0],), t, y.dtype)
    return sampling.tweedie_denoise(sde, score_fn, batch_mul(sde.mean_coeff(tb), y), tb)

  return predict


def no_extra_times(sde: sde_lib.SDE, grid: Grid) -> Tuple[np.ndarray, ...]:
  del sde, grid
  return ()


def no_coefficients(grid: Grid) -> Tuple[np.ndarray, ...]:
  del grid
  return ()


class Method(NamedTuple):
  """A sampler's steps.

  Attributes:
    evals_per_step: score evaluations per step (a method that evaluates once before its first
      step and once in every step but the last counts one a step).
    extra_times: ``(sde, grid) -> times``: the other times, ``[num_steps]`` each, its steps
      evaluate at (intermediate or churned levels), found on the host when it is built.
    stepper: ``(predict, grid, extra_grids, coefficients) -> (init(y) -> carry, step)`` on
      device arrays.
    coefficients: ``grid -> tables``, ``[num_steps, ...]`` each: per-step weights that depend on
      the grid alone (multistep methods on a non-uniform grid), computed on the host in float64
      when the sampler is built.
  """
  evals_per_step: int
  extra_times: Callable[[sde_lib.SDE, Grid], Tuple[np.ndarray, ...]]
  stepper: Callable[[Denoiser, Grid, Tuple[Grid, ...], Tuple[Array, ...]],
                    Tuple[Callable[[Array], Carry], StepFn]]
  coefficients: Callable[[Grid], Tuple[np.ndarray, ...]] = no_coefficients


def check(sde: sde_lib.SDE, num_steps: int, eps: float, schedule: Schedule, rho: float,
          num_frames: int) -> np.ndarray:
  """The schedule's times, or a one-line ``ValueError`` for a bad argument, when the sampler is
  built (a list of times sets ``num_steps`` and ``eps`` itself)."""
  sampling.check_num_frames(num_frames)
  if not isinstance(schedule, str):
    return check_times(sde, schedule)
  SCHEDULES.get(schedule)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  if not rho > 0:
    raise ValueError(f"rho (karras schedule) must be > 0, got {rho}.")
  return get_time_schedule(schedule, sde, num_steps, eps, rho)


def build(sde: sde_lib.SDE, shape: Shape, method: Method, *, num_steps: int,
          schedule: Union[str, Sequence[float]], rho: float, eps: float, denoise: bool,
          num_frames: int) -> Callable[..., sampling.SampleOutput]:
  """The sampler that runs ``method``'s steps on the schedule in one scan (module docstring);
  a list of times replaces ``num_steps`` and ``eps``."""
  num_frames = int(num_frames)
  times = check(sde, int(num_steps), eps, schedule, rho, num_frames)
  num_steps, eps = len(times) - 1, float(times[-1])
  host_grid = grid_of_times(sde, times)
  host_extra = tuple(grid_of_times(sde, t) for t in method.extra_times(sde, host_grid))
  host_coefficients = method.coefficients(host_grid)
  slots = None
  if num_frames:
    frame_index = sampling.pc_frame_indices(num_steps, num_frames)
    # More frames than grid states repeat states: each is stored once.
    stored, which = np.unique(frame_index, return_inverse=True)
    slots = sampling.frame_slots(stored, num_steps)

  def sample(rng: Array, score_fn: ScoreFn, z: Optional[Array] = None) -> sampling.SampleOutput:
    prior_rng, loop_rng = jax.random.split(rng)
    x = sde.prior_sampling(prior_rng, shape) if z is None else z
    on_device = lambda g: Grid(*(jnp.asarray(v, x.dtype) for v in g))
    grid = on_device(host_grid)
    init, step = method.stepper(data_prediction(sde, score_fn), grid,
                                tuple(on_device(g) for g in host_extra),
                                tuple(jnp.asarray(c, x.dtype) for c in host_coefficients))
    carry = init(x / grid.a[0])
    inputs = (jax.random.split(loop_rng, num_steps), jnp.arange(num_steps))

    carry, frames = sampling.scan_with_frames(
        lambda c, inp: step(c, *inp), carry, inputs, slots, first=x,
        frame_of=lambda c, inp: grid.a[inp[1] + 1] * c[0])
    x = grid.a[-1] * carry[0]
    if denoise:
      x = sampling.tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps, x.dtype))
    nfe = method.evals_per_step * num_steps + int(denoise)
    if num_frames:
      trajectory = sampling.Trajectory(jnp.asarray(host_grid.t[frame_index], jnp.float32),
                                       frames.at[-1].set(x)[which])
      return x, nfe, trajectory
    return x, nfe

  return sample
