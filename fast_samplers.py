"""Fast samplers of the probability-flow ODE and its stochastic relatives: DDIM, DPM-Solver++ and
EDM's Heun sampler (with churn), for every SDE of ``sde_lib``.

They share ``sampling``'s interface: ``sample(rng, score_fn, z=None) -> (x: [B, ...], nfe)``
(``(x, nfe, trajectory)`` with ``num_frames``), a plain ``score_fn(x: [B, ...], t: [B])``, times
with their forward meaning (from ``t = T`` down to ``t = eps``), one ``jax.lax.scan`` over the
steps, not jitted (callers jit a wrapper, as for :func:`sampling.get_pc_sampler`).

One parameterisation for every SDE (the EDM view)
-------------------------------------------------
Every SDE here has the perturbation kernel ``x(t) = a(t) x0 + std(t) z`` (``a = sde.mean_coeff``,
``std = sde.marginal_std``), i.e. ``x(t) = a(t) (x0 + sigma(t) z)`` with the noise level
``sigma(t) = std(t) / a(t)`` (:func:`edm_sigma`): ``sigma`` of VE, ``sqrt(1/a^2 - 1)`` of VP and
``1/a - a`` of sub-VP (not VP's). In ``y = x / a`` the probability-flow ODE is
``dy/dsigma = (y - D(y, sigma)) / sigma`` with the data prediction (posterior mean)
``D = E[x0 | x(t)] = (x + std^2 score(x, t)) / a`` (:func:`sampling.tweedie_denoise`), and in
``lambda = -log sigma`` (half the log-SNR) ``dy/dlambda = D - y``. The samplers step ``y`` on
these variables and hand the network ``x = a(t) y`` at the time ``t`` of each noise level, so
one implementation serves VE, VP and sub-VP. ``sigma(t)`` increases with ``t`` for all three;
times of given noise levels come from :func:`time_of_sigma` (bisection on ``[0, T]`` to the
resolution of the dtype), and every coefficient is then recomputed from the time actually used,
so the network's input and the solver's noise level always agree. All times a sampler visits
(its grid, DPM-Solver's intermediate points, EDM's churned levels) depend on the grid alone, so
they are found once, on the host, when the sampler is built, and enter the program as
constants.

Time schedules (:data:`SCHEDULES`, ``num_steps + 1`` times from ``T`` to ``eps``)
-------------------------------------------------------------------------------
``uniform_t`` (``linspace(T, eps)``, DDIM's), ``quadratic_t`` (uniform in ``sqrt t``),
``logsnr`` (uniform in ``lambda``, DPM-Solver's) and ``karras`` (uniform in ``sigma^(1/rho)``,
EDM's, ``rho = 7``). The end points are exactly ``T`` and ``eps``.

Samplers and NFE (score evaluations, counted as the calls made)
--------------------------------------------------------------
* :func:`get_ddim_sampler`: ``y' = D + sqrt(sigma'^2 - s^2) (y - D) / sigma + s z`` with
  ``s = eta sigma' sqrt(1 - sigma'^2 / sigma^2)``. ``eta = 0`` is deterministic (the
  probability-flow ODE's first-order exponential integrator, identical to DPM-Solver-1);
  ``eta = 1`` samples the forward chain's posterior ``q(y' | y, x0 = D)`` between the two levels
  (for VE SMLD's ancestral step; for VP DDPM's with the posterior variance). ``num_steps``
  evaluations.
* :func:`get_dpm_solver_sampler` (DPM-Solver++, data prediction): the exact solution
  ``y' = e^-h y + int_0^h e^-(h - u) D(lambda + u) du`` with ``D`` expanded around ``lambda``:
  ``y' = e^-h y + c0 D + c1 D' + c2 D''``, ``c0 = 1 - e^-h``, ``c1 = h - c0``,
  ``c2 = h^2 / 2 - c1`` (derivatives in ``lambda``). Singlestep order ``k = 1, 2, 3`` estimates
  the derivatives from ``k - 1`` intermediate evaluations in the step (at ``r h``, ``r = 1/2``;
  ``1/3, 2/3``): ``k`` evaluations a step. Multistep ``2M`` / ``3M`` estimates them from the
  previous steps' ``D`` (backward differences on the non-uniform ``lambda`` grid), starting
  with the lower orders the history allows: one evaluation a step. The second-order methods
  use the published DPM-Solver++(2S)/(2M) weight ``c0 h / 2`` for ``D'`` (equal to ``c1`` to
  second order). 3M's first (first-order) step adds an ``O(h^2)`` error whose constant is
  ``D'`` at ``T``, tiny because ``D`` barely changes at the top noise level.
* :func:`get_edm_heun_sampler`: EDM's Algorithm 2 in ``sigma``: each step first raises the
  noise level ``sigma -> sigma_hat = sigma (1 + gamma)``, ``gamma = min(S_churn / num_steps,
  sqrt 2 - 1)`` where ``S_min <= sigma <= S_max`` (else 0), by adding
  ``S_noise sqrt(sigma_hat^2 - sigma^2) z`` (``sigma_hat`` capped at ``sigma(T)``, the top of
  the range the model was trained on), then takes a Heun step to ``sigma'`` on the ODE:
  two evaluations a step. ``S_churn = 0`` is the deterministic second-order Heun sampler.
* ``denoise=True`` (every sampler) ends with one more evaluation, ``D`` at ``eps``, returned
  in place of ``x(eps)`` (the PC sampler's Tweedie step). For the Heun sampler this is EDM's
  last step, the Euler step from ``sigma(eps)`` to ``sigma = 0``: EDM's 18-step, 35-NFE
  setting is ``num_steps = 17`` with ``denoise=True``.

Trajectories (``num_frames = K >= 2``): as the PC sampler's, the states ``x = a y`` at the grid
indices :func:`sampling.pc_frame_indices` (frame 0 the prior draw, frame ``K - 1`` the returned
samples) written inside the one scan; ``K`` may exceed ``num_steps + 1``, the frames then
repeat grid states. The samples and NFE are the same with or without frames.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from infra.registry import Registry
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
ScheduleFn = Callable[[sde_lib.SDE, int, float, float], np.ndarray]
"""``schedule(sde, num_steps, eps, rho) -> times: [num_steps + 1]`` from ``T`` to ``eps``."""

SCHEDULES: Registry[ScheduleFn] = Registry("time schedule")

# Halvings of [0, T] in time_of_sigma: below the resolution of float64 times (2^-64 T).
_BISECTION_STEPS = 64
_BISECTION_MIN_SIZE = 256


# --------------------------------------------------------------------------- noise levels


def edm_sigma(sde: sde_lib.SDE, t: Array) -> Array:
  """The noise level ``sigma(t) = std(t) / a(t)``, ``[B]``, of ``x(t) = a (x0 + sigma z)``."""
  return sde.marginal_std(t) / sde.mean_coeff(t)


def time_of_sigma(sde: sde_lib.SDE, sigma: np.ndarray) -> np.ndarray:
  """The times ``t in [0, T]``, ``[n]``, with ``edm_sigma(sde, t) = sigma: [n]``, by bisection.

  ``sigma(t)`` is increasing for every SDE here; levels outside ``[sigma(0), sigma(T)]`` map to
  the nearer end. Runs eagerly on the host when a sampler is built (also inside a ``jit`` trace),
  in JAX's default float dtype (float64 under ``jax.enable_x64``), to that dtype's resolution.
  """
  flat = np.asarray(sigma, np.float64).reshape(-1)
  # Eager ops compile once per shape: padding to a few sizes keeps that a one-time cost.
  padded = np.ones(max(_BISECTION_MIN_SIZE, 1 << max(len(flat) - 1, 0).bit_length()))
  padded[:len(flat)] = flat
  with jax.ensure_compile_time_eval():  # eager even when a sampler is built inside a trace
    target = jnp.asarray(padded, jnp.asarray(0.0).dtype)
    lo, hi = jnp.zeros_like(target), jnp.full_like(target, sde.T)
    for _ in range(_BISECTION_STEPS):
      mid = 0.5 * (lo + hi)
      above = edm_sigma(sde, mid) > target
      lo, hi = jnp.where(above, lo, mid), jnp.where(above, mid, hi)
    return np.array(0.5 * (lo + hi))[:len(flat)].reshape(np.shape(sigma))


class Grid(NamedTuple):
  """Times and noise levels, each ``[n]`` (NumPy when built, device arrays in a sampler).

  Attributes:
    t: times. a: ``a(t)``. sigma: ``edm_sigma(t)``. lam: ``lambda = -log sigma``.
  """
  t: Array
  a: Array
  sigma: Array
  lam: Array


def grid_of_times(sde: sde_lib.SDE, t: np.ndarray) -> Grid:
  """The :class:`Grid` of times ``t: [n]``, on the host."""
  with jax.ensure_compile_time_eval():
    t = jnp.asarray(t, jnp.asarray(0.0).dtype)
    sigma = edm_sigma(sde, t)
    return Grid(*(np.asarray(v) for v in (t, sde.mean_coeff(t), sigma, -jnp.log(sigma))))


# --------------------------------------------------------------------------- schedules


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


# --------------------------------------------------------------------------- the scan


def _data_prediction(sde: sde_lib.SDE, score_fn: ScoreFn) -> Denoiser:

  def predict(y, t):
    tb = jnp.full((y.shape[0],), t, y.dtype)
    return sampling.tweedie_denoise(sde, score_fn, batch_mul(sde.mean_coeff(tb), y), tb)

  return predict


class _Method(NamedTuple):
  """A sampler's steps.

  Attributes:
    evals_per_step: score evaluations per step.
    extra_times: ``(sde, grid) -> times``: the other times, ``[num_steps]`` each, its steps
      evaluate at (intermediate or churned levels), found on the host when it is built.
    stepper: ``(predict, grid, extra_grids) -> (init(y) -> carry, step)`` on device arrays.
  """
  evals_per_step: int
  extra_times: Callable[[sde_lib.SDE, Grid], Tuple[np.ndarray, ...]]
  stepper: Callable[[Denoiser, Grid, Tuple[Grid, ...]], Tuple[Callable[[Array], Carry], StepFn]]


def _no_extra_times(sde: sde_lib.SDE, grid: Grid) -> Tuple[np.ndarray, ...]:
  del sde, grid
  return ()


def _check(sde: sde_lib.SDE, num_steps: int, eps: float, schedule: str, rho: float,
           num_frames: int) -> None:
  """One-line ``ValueError`` for a bad argument, when the sampler is built."""
  SCHEDULES.get(schedule)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  if not rho > 0:
    raise ValueError(f"rho (karras schedule) must be > 0, got {rho}.")
  sampling.check_num_frames(num_frames)


def _build(sde: sde_lib.SDE, shape: Shape, method: _Method, *, num_steps: int, schedule: str,
           rho: float, eps: float, denoise: bool,
           num_frames: int) -> Callable[..., sampling.SampleOutput]:
  """The sampler that runs ``method``'s steps on the schedule in one scan (module docstring)."""
  num_steps, num_frames = int(num_steps), int(num_frames)
  _check(sde, num_steps, eps, schedule, rho, num_frames)
  host_grid = grid_of_times(sde, get_time_schedule(schedule, sde, num_steps, eps, rho))
  host_extra = tuple(grid_of_times(sde, t) for t in method.extra_times(sde, host_grid))
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
    init, step = method.stepper(_data_prediction(sde, score_fn), grid,
                                tuple(on_device(g) for g in host_extra))
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


# --------------------------------------------------------------------------- DDIM


def _ddim_method(eta: float) -> _Method:

  def stepper(predict, grid, extra):
    del extra

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

  return _Method(1, _no_extra_times, stepper)


def get_ddim_sampler(sde: sde_lib.SDE, shape: Shape, *, eta: float = 0.0, num_steps: int = 20,
                     schedule: Optional[str] = None, rho: float = 7.0, eps: float = 1e-3,
                     denoise: bool = True, num_frames: int = 0
                     ) -> Callable[..., sampling.SampleOutput]:
  """DDIM ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe, trajectory)`` with
  ``num_frames``); ``nfe = num_steps + denoise``.

  Args:
    sde: the forward SDE (any of ``sde_lib``'s); ``x(T) = z``, default ``sde.prior_sampling``.
    shape: ``(B, ...)`` of the samples.
    eta: in ``[0, 1]``; 0 deterministic, 1 the forward chain's posterior (module docstring).
    num_steps: steps on the schedule's ``num_steps + 1`` times.
    schedule: a :data:`SCHEDULES` name; None: ``quadratic_t`` (DDIM's CIFAR-10 choice).
    rho: the ``karras`` exponent.
    eps: final time. denoise: end with the data prediction at ``eps`` (one more evaluation).
    num_frames: ``K``; 0: no trajectory, ``K >= 2``: also the :class:`sampling.Trajectory`.
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"DDIM's eta must lie in [0, 1], got {eta}.")
  return _build(sde, shape, _ddim_method(float(eta)), num_steps=num_steps,
                schedule=schedule or "quadratic_t", rho=rho, eps=eps, denoise=denoise,
                num_frames=num_frames)


# --------------------------------------------------------------------------- DPM-Solver++


def _phi(h: Array) -> Tuple[Array, Array, Array]:
  """``(c0, c1, c2)``: ``c_k = int_0^h e^-(h - u) u^k / k! du``."""
  c0 = -jnp.expm1(-h)
  c1 = h - c0
  return c0, c1, 0.5 * h**2 - c1


# Intermediate points of the singlestep methods, as fractions r of the step in lambda.
_SINGLESTEP_FRACTIONS = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def _singlestep_method(order: int) -> _Method:

  def extra_times(sde, grid):
    step_lam = grid.lam[1:] - grid.lam[:-1]
    return tuple(time_of_sigma(sde, grid.sigma[:-1] * np.exp(-r * step_lam))
                 for r in _SINGLESTEP_FRACTIONS[order])

  def stepper(predict, grid, mids):

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

  return _Method(order, extra_times, stepper)


def _multistep_method(order: int) -> _Method:

  def stepper(predict, grid, extra):
    del extra

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

  return _Method(1, _no_extra_times, stepper)


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
    Others as :func:`get_ddim_sampler`.
  """
  order = int(order)
  if order not in (1, 2, 3):
    raise ValueError(f"DPM-Solver's order must be 1, 2 or 3, got {order}.")
  method = _multistep_method(order) if multistep else _singlestep_method(order)
  return _build(sde, shape, method, num_steps=num_steps, schedule=schedule or "logsnr", rho=rho,
                eps=eps, denoise=denoise, num_frames=num_frames)


# --------------------------------------------------------------------------- EDM Heun


def _heun_method(num_steps: int, s_churn: float, s_min: float, s_max: float,
                 s_noise: float) -> _Method:
  gamma = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)

  def extra_times(sde, grid):
    if gamma == 0.0:
      return ()
    sigma = grid.sigma[:-1]
    churned = (sigma >= s_min) & (sigma <= s_max)
    target = np.minimum(sigma * (1.0 + gamma), grid.sigma[0])
    return (np.where(churned, time_of_sigma(sde, target), grid.t[:-1]),)

  def stepper(predict, grid, extra):

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

  return _Method(2, extra_times, stepper)


def get_edm_heun_sampler(sde: sde_lib.SDE, shape: Shape, *, s_churn: float = 0.0,
                         s_min: float = 0.0, s_max: float = float("inf"), s_noise: float = 1.0,
                         num_steps: int = 18, schedule: Optional[str] = None, rho: float = 7.0,
                         eps: float = 1e-3, denoise: bool = True, num_frames: int = 0
                         ) -> Callable[..., sampling.SampleOutput]:
  """EDM's Heun sampler ``sample(rng, score_fn, z=None) -> (x: shape, nfe)`` (``(x, nfe,
  trajectory)`` with ``num_frames``); ``nfe = 2 num_steps + denoise``.

  Args:
    s_churn: EDM's ``S_churn >= 0`` (0: deterministic); ``s_min``, ``s_max``: the noise levels
      ``sigma`` (in ``edm_sigma``'s units) where churn acts; ``s_noise``: EDM's ``S_noise``.
    schedule: a :data:`SCHEDULES` name; None: ``karras`` (``rho``).
    denoise: end with EDM's Euler step to ``sigma = 0`` (the data prediction at ``eps``).
    Others as :func:`get_ddim_sampler`.
  """
  if s_churn < 0 or s_noise < 0 or s_min > s_max:
    raise ValueError(f"EDM churn needs s_churn >= 0, s_noise >= 0 and s_min <= s_max, got "
                     f"s_churn={s_churn}, s_noise={s_noise}, s_min={s_min}, s_max={s_max}.")
  method = _heun_method(max(int(num_steps), 1), float(s_churn), float(s_min), float(s_max),
                        float(s_noise))
  return _build(sde, shape, method, num_steps=num_steps, schedule=schedule or "karras", rho=rho,
                eps=eps, denoise=denoise, num_frames=num_frames)
