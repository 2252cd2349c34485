"""Samplers: predictor-corrector (PC) loops and the probability-flow ODE.

Every sampler takes an explicit PRNG key and a plain ``score_fn(x: [B, ...], t: [B]) ->
[B, ...]`` (see :func:`models.utils.get_score_fn`), so it runs unchanged on exact scores
in the tests and on networks (``builders.build_sampler`` chooses one from a config). Times
keep their forward meaning: sampling runs from ``t = T`` down to ``t = eps``.

PC sampling (:func:`get_pc_sampler`)
------------------------------------
* Time grid: ``t_i = linspace(T, eps, num_steps + 1)``, ``i = 0 .. num_steps``, and
  ``num_steps`` (default ``sde.N``) predictor steps ``t_i -> t_{i+1}``. Each step is
  handed both times, so its step size is exactly the grid spacing (the authors used
  ``dt = 1/N`` on a grid spaced ``(T - eps)/(N - 1)``).
* Order: in each step the PREDICTOR runs first (``t_i -> t_{i+1}``), then the corrector
  at the new time ``t_{i+1}``; this is the order of the paper's Algorithms 2/3 and means
  the last corrector acts at ``eps``, the time the sample is taken at. (The authors' code
  ran the corrector first, at ``t_i``.)
* Denoising (``denoise=True``): one final Tweedie step at ``eps``,
  ``x0 = (x + std(eps)^2 score(x, eps)) / a(eps)`` with ``a = sde.mean_coeff``, i.e. the
  posterior mean ``E[x(0) | x(eps)]``; it costs one extra score evaluation. Without it
  the noisy sample ``x(eps)`` is returned.
* NFE (score evaluations) is counted honestly:
  ``num_steps * (predictor.score_evals + corrector.score_evals) + denoise``; a ``none``
  corrector costs nothing (the authors reported ``N (n_steps + 1)`` regardless).
* The whole loop is one ``jax.lax.scan``: compile time does not grow with ``num_steps``.
  The returned ``pc_sample`` is not jitted; callers jit a wrapper that builds ``score_fn``
  from traced model parameters, so new parameters do not recompile.

Predictors and correctors share one interface each (:class:`Predictor`,
:class:`Corrector`) and are looked up by case-insensitive name in the registries
:data:`PREDICTORS` / :data:`CORRECTORS`. The correctors' step-size factor
``alpha`` comes from ``sde.langevin_alpha`` (defined on every SDE, so sub-VP works; the
authors' correctors read VP's DDPM ``alphas`` and crashed on sub-VP). The ``langevin``
corrector averages its norms over the (global) batch, as the authors did, so its step
couples the samples of a batch; ``ald`` does not.

ODE sampling (:func:`get_ode_sampler`) and encoding (:func:`get_ode_encoder`)
----------------------------------------------------------------------------
Integrates the probability-flow ODE (drift :func:`probability_flow_drift`) from ``T`` to ``eps``
with diffrax on device (:mod:`ode_solvers`), the batch as one state (one shared step size, as
the authors' flattened scipy solve); the encoder integrates the same ODE forward, from ``eps`` to
``T``, mapping data to latents that the sampler decodes (``ode_sample(rng, score_fn, z)``). The
``score_fn`` the caller passes is used as is, so discretely trained models get their integer
noise-level labels (the authors hard-coded continuous conditioning here).

Trajectories (``num_frames = K > 0``)
-------------------------------------
Both samplers can also return their state at ``K >= 2`` times from ``T`` to ``eps``, a
:class:`Trajectory` of ``K x`` the batch (never every step): frame 0 is the prior draw ``x(T)``,
frame ``K - 1`` the returned samples (denoised if ``denoise``; its time is still ``eps``). The PC
sampler writes its frames into a preallocated ``[K, B, ...]`` buffer inside its one scan, at grid
indices ``i_k = floor(k num_steps / (K - 1) + 1/2)`` (times ``t_{i_k}``, exactly
``linspace(T, eps, K)`` when ``K - 1`` divides ``num_steps``); the ODE sampler saves the solve's
dense output at ``linspace(T, eps, K)`` (diffrax ``SaveAt(ts=...)``), which does not change its
steps. Neither changes the samples or the NFE; ``num_frames = 0`` (the default) is the sampler
without a trajectory.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, NamedTuple, Optional, Tuple, Type, Union

import jax
import jax.numpy as jnp
import numpy as np

import ode_solvers
import sde_lib
from infra.registry import Registry
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Shape = Tuple[int, ...]
Nfe = Union[int, Array]


class Trajectory(NamedTuple):
  """A sampler's states at ``K`` times from ``T`` to its end (module docstring, Trajectories).

  Attributes:
    t: float32 ``[K]``, the frames' times, decreasing from ``T`` to ``eps``.
    x: ``[K, B, ...]``: ``x[0]`` is the prior draw ``x(T)``, ``x[K - 1]`` the returned samples.
  """
  t: Array
  x: Array


SampleOutput = Union[Tuple[Array, Nfe], Tuple[Array, Nfe, Trajectory]]
"""``(x: [B, ...], nfe)``, or ``(x, nfe, trajectory)`` for a sampler built with frames."""
SampleFn = Callable[[Array, ScoreFn], SampleOutput]
"""``sample(rng, score_fn) -> SampleOutput``."""

PREDICTORS: Registry[Type["Predictor"]] = Registry("predictor")
CORRECTORS: Registry[Type["Corrector"]] = Registry("corrector")


def _normal_like(rng: Array, x: Array) -> Array:
  return jax.random.normal(rng, x.shape, x.dtype)


# --------------------------------------------------------------------------- predictors


class Predictor(abc.ABC):
  """One step of the reverse-time process from ``t`` to ``t_next < t``.

  Attributes:
    score_evals: score evaluations per :meth:`update`.
  """
  score_evals: int = 1

  def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, probability_flow: bool = False):
    self.check(sde, probability_flow)
    self.sde = sde
    self.score_fn = score_fn
    self.rsde = sde.reverse(score_fn, probability_flow)

  @classmethod
  def check(cls, sde: sde_lib.SDE, probability_flow: bool) -> None:
    """Raises ``ValueError`` if the predictor cannot be used with this SDE / setting."""

  @abc.abstractmethod
  def update(self, rng: Array, x: Array, t: Array, t_next: Array) -> Tuple[Array, Array]:
    """Steps ``x: [B, ...]`` from ``t: [B]`` to ``t_next: [B]``; returns ``(x, x_mean)``.

    ``x_mean`` is the update before the injected noise.
    """


@PREDICTORS.register("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
  """Euler-Maruyama on the reverse SDE (or Euler on the probability-flow ODE).

  ``x' = x + f_rev(x, t) dt + g(t) sqrt(-dt) z`` with ``dt = t_next - t < 0``.
  Strong order 0.5, weak order 1 (order 1 for the ODE). One score evaluation; works for
  every SDE.
  """

  def update(self, rng, x, t, t_next):
    dt = t_next - t
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x + batch_mul(dt, drift)
    x = x_mean + batch_mul(diffusion * jnp.sqrt(-dt), _normal_like(rng, x))
    return x, x_mean


@PREDICTORS.register("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
  """Reverses the SDE's own discretization: ``x' = x - f + G^2 score + G z``.

  Uses ``sde.reverse(score_fn).discretize(x, t, t_next)``, so VE/VP step with their exact
  SMLD/DDPM transitions and other SDEs with Euler-Maruyama; weak order 1. One score
  evaluation; works for every SDE.
  """

  def update(self, rng, x, t, t_next):
    rev_f, rev_g = self.rsde.discretize(x, t, t_next)
    x_mean = x + rev_f
    x = x_mean + batch_mul(rev_g, _normal_like(rng, x))
    return x, x_mean


@PREDICTORS.register("ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the SDE's discrete chain (SMLD for VE, DDPM for VP), any two times.

  ``sde.ancestral_step`` gives the step; on the authors' grid these are their SMLD / DDPM
  ancestral steps. Weak order 1; one score evaluation. Only SDEs with a discrete chain, and
  stochastic only (there is no probability-flow variant).
  """

  @classmethod
  def check(cls, sde, probability_flow):
    if sde.discrete_chain is None:
      raise ValueError(f"ancestral_sampling is defined for "
                       f"{' and '.join(sde_lib.discrete_chain_sdes())} only, got "
                       f"{type(sde).__name__}; use reverse_diffusion or euler_maruyama.")
    if probability_flow:
      raise ValueError("ancestral_sampling has no probability-flow (deterministic) variant.")

  def update(self, rng, x, t, t_next):
    x_mean, std = self.sde.ancestral_step(x, self.score_fn(x, t), t, t_next)
    return x_mean + batch_mul(std, _normal_like(rng, x)), x_mean


@PREDICTORS.register("none")
class NonePredictor(Predictor):
  """Leaves ``x`` unchanged (corrector-only sampling). No score evaluations."""
  score_evals = 0

  def update(self, rng, x, t, t_next):
    return x, x


# --------------------------------------------------------------------------- correctors


class Corrector(abc.ABC):
  """MCMC steps targeting the marginal ``p_t`` at a fixed time ``t``.

  Attributes:
    score_evals: score evaluations per :meth:`update`.
  """

  def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, snr: float, n_steps: int):
    if n_steps < 0:
      raise ValueError(f"n_steps must be >= 0, got {n_steps}.")
    self.sde = sde
    self.score_fn = score_fn
    self.snr = snr
    self.n_steps = int(n_steps)

  @property
  def score_evals(self) -> int:
    return self.n_steps

  @abc.abstractmethod
  def update(self, rng: Array, x: Array, t: Array) -> Tuple[Array, Array]:
    """Corrects ``x: [B, ...]`` at ``t: [B]``; returns ``(x, x_mean)``."""


class _LangevinCorrector(Corrector):
  """``n_steps`` Langevin steps ``x <- x + e score + sqrt(2 e) z``; subclasses set ``e``."""

  @abc.abstractmethod
  def step_size(self, grad: Array, noise: Array, t: Array) -> Array:
    """Langevin step size ``[B]`` given the score ``grad`` and noise ``noise`` at ``t``."""

  def update(self, rng, x, t):
    alpha = self.sde.langevin_alpha(t)

    def langevin_step(carry, key):
      x, _ = carry
      grad = self.score_fn(x, t)
      noise = _normal_like(key, x)
      step = self.step_size(grad, noise, t) * alpha
      x_mean = x + batch_mul(step, grad)
      return (x_mean + batch_mul(jnp.sqrt(2.0 * step), noise), x_mean), None

    (x, x_mean), _ = jax.lax.scan(langevin_step, (x, x), jax.random.split(rng, self.n_steps))
    return x, x_mean


def _batch_mean_norm(v: Array) -> Array:
  return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


@CORRECTORS.register("langevin")
class LangevinCorrector(_LangevinCorrector):
  """Langevin MCMC with the step size set by a target signal-to-noise ratio ``snr``.

  ``e = 2 alpha(t) (snr ||z|| / ||score||)^2`` (the paper's Algorithms 4/5, ``alpha`` =
  ``sde.langevin_alpha``, 1 for VE, DDPM's ``1 - beta_i`` for VP and sub-VP). The norms
  are averaged over the batch, as in the authors' code: per-example ratios are
  heavy-tailed in low dimension (``||score|| -> 0`` at a mode). ``n_steps`` score
  evaluations; works for every SDE.
  """

  def step_size(self, grad, noise, t):
    ratio = self.snr * _batch_mean_norm(noise) / _batch_mean_norm(grad)
    return jnp.full(t.shape, 2.0 * ratio**2, grad.dtype)


@CORRECTORS.register("ald")
class AnnealedLangevinCorrector(_LangevinCorrector):
  """Annealed Langevin dynamics (NCSN): ``e = 2 alpha(t) (snr std(t))^2``.

  ``std(t)`` is the perturbation kernel's std, so the step follows the noise scale
  rather than the score's norm. ``n_steps`` score evaluations; works for every SDE.
  """

  def step_size(self, grad, noise, t):
    return 2.0 * (self.snr * self.sde.marginal_std(t))**2


@CORRECTORS.register("none")
class NoneCorrector(Corrector):
  """Leaves ``x`` unchanged. No score evaluations."""

  @property
  def score_evals(self) -> int:
    return 0

  def update(self, rng, x, t):
    return x, x


# --------------------------------------------------------------------------- samplers


def tweedie_denoise(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
  """``E[x(0) | x(t)] = (x + std(t)^2 score(x, t)) / a(t)``; ``x: [B, ...]``, ``t: [B]``."""
  std = sde.marginal_std(t)
  return batch_mul(1.0 / sde.mean_coeff(t), x + batch_mul(std**2, score_fn(x, t)))


def check_num_frames(num_frames: int, num_states: Optional[int] = None) -> int:
  """``num_frames`` as an int; ``ValueError`` unless it is 0 (no trajectory) or >= 2 (and at
  most ``num_states``, the states a sampler's grid holds, where that bounds it)."""
  num_frames = int(num_frames)
  if num_frames < 0 or num_frames == 1:
    raise ValueError(f"num_frames must be 0 (no trajectory) or >= 2 (the frames at T and at the "
                     f"end), got {num_frames}.")
  if num_states is not None and num_frames > num_states:
    raise ValueError(f"num_frames ({num_frames}) cannot exceed the {num_states} times of the "
                     f"PC grid (num_steps + 1).")
  return num_frames


def frame_slots(stored: np.ndarray, num_steps: int) -> np.ndarray:
  """``int32 [num_steps]``: the slot of a frame buffer that step ``j`` (ending at grid index
  ``j + 1``) writes, for the strictly increasing grid indices ``stored`` (first 0, last
  ``num_steps``); ``len(stored)``, out of range, where no frame is taken, so the write is
  dropped. The first and last frames are written outside the loop."""
  slots = np.full(num_steps, len(stored), np.int32)
  slots[np.asarray(stored)[1:-1] - 1] = np.arange(1, len(stored) - 1)
  return slots


def scan_with_frames(step: Callable[[Any, Any], Any], carry: Any, xs: Any,
                     slots: Optional[np.ndarray] = None, first: Optional[Array] = None,
                     frame_of: Callable[[Any, Any], Array] = lambda carry, x: carry
                     ) -> Tuple[Any, Any]:
  """``carry = step(carry, x)`` for every ``x`` of ``xs`` in one ``lax.scan``; returns ``(carry,
  frames)``. With ``slots`` (:func:`frame_slots`), ``frames: [len(stored), ...]`` holds ``first``
  at slot 0 and ``frame_of(carry, x)`` after step ``j`` (input ``x``) at ``slots[j]``; without,
  ``frames`` is None and nothing is recorded."""
  if slots is None:
    carry, _ = jax.lax.scan(lambda c, x: (step(c, x), None), carry, xs)
    return carry, None

  def framed_step(state, inputs):
    c, frames = state
    x, slot = inputs
    c = step(c, x)
    return (c, frames.at[slot].set(frame_of(c, x), mode="drop")), None

  # The last step never writes (its frame is the returned state): its slot is len(stored).
  frames = jnp.zeros((int(slots[-1]),) + first.shape, first.dtype).at[0].set(first)
  (carry, frames), _ = jax.lax.scan(framed_step, (carry, frames), (xs, jnp.asarray(slots)))
  return carry, frames


def pc_frame_indices(num_steps: int, num_frames: int) -> np.ndarray:
  """The grid indices ``i_k = floor(k num_steps / (K - 1) + 1/2)``, ``k = 0 .. K - 1``, of the
  PC sampler's frames on ``linspace(T, eps, num_steps + 1)``: strictly increasing from 0 to
  ``num_steps`` for ``2 <= K <= num_steps + 1`` (integer arithmetic, so exact)."""
  k = np.arange(num_frames)
  return (2 * k * num_steps + num_frames - 1) // (2 * (num_frames - 1))


def get_pc_sampler(sde: sde_lib.SDE, shape: Shape, predictor: str, corrector: str, *,
                   snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
                   denoise: bool = True, eps: float = 1e-3, num_steps: Optional[int] = None,
                   num_frames: int = 0) -> SampleFn:
  """A predictor-corrector sampler ``pc_sample(rng, score_fn) -> (x: shape, nfe: int)``
  (``(x, nfe, trajectory)`` with ``num_frames``).

  Args:
    sde: the forward SDE; ``sde.prior_sampling`` gives ``x(T)``.
    shape: ``(B, ...)`` of the samples.
    predictor, corrector: registered names (``none`` disables either).
    snr: the correctors' signal-to-noise ratio.
    n_steps: corrector steps per predictor step.
    probability_flow: predictors step the probability-flow ODE instead of the reverse SDE.
    denoise: finish with a Tweedie denoising step at ``eps`` (one more score evaluation).
    eps: final time.
    num_steps: predictor steps on ``linspace(T, eps, num_steps + 1)``; default ``sde.N``.
    num_frames: ``K``; 0 (default): no trajectory. ``2 <= K <= num_steps + 1``: ``pc_sample``
      returns ``(x, nfe, trajectory)``, the :class:`Trajectory` holding the state (after the
      predictor and corrector of that step; the noisy ``x``, not ``x_mean``) at the grid times
      ``t_{i_k}`` of :func:`pc_frame_indices`, frame 0 the prior draw and frame ``K - 1`` the
      returned ``x``. One scan still; ``K x`` the batch of extra memory; the same ``x`` and NFE.

  The loop order, grid and NFE count are described in the module docstring.
  """
  predictor_cls, corrector_cls = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
  predictor_cls.check(sde, probability_flow)
  num_steps = sde.N if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  num_frames = check_num_frames(num_frames, num_steps + 1)
  batch = shape[0]
  frame_index = pc_frame_indices(num_steps, num_frames) if num_frames else None
  slots = frame_slots(frame_index, num_steps) if num_frames else None

  def pc_sample(rng: Array, score_fn: ScoreFn) -> SampleOutput:
    pred = predictor_cls(sde, score_fn, probability_flow)
    corr = corrector_cls(sde, score_fn, snr, n_steps)
    prior_rng, loop_rng = jax.random.split(rng)
    x = sde.prior_sampling(prior_rng, shape)
    times = jnp.linspace(sde.T, eps, num_steps + 1, dtype=x.dtype)

    def pc_step(x, inputs):
      key, t, t_next = inputs
      pred_rng, corr_rng = jax.random.split(key)
      t, t_next = jnp.full((batch,), t), jnp.full((batch,), t_next)
      x, _ = pred.update(pred_rng, x, t, t_next)
      x, _ = corr.update(corr_rng, x, t_next)
      return x

    keys = jax.random.split(loop_rng, num_steps)
    x, frames = scan_with_frames(pc_step, x, (keys, times[:-1], times[1:]), slots, first=x)
    if denoise:
      x = tweedie_denoise(sde, score_fn, x, jnp.full((batch,), times[-1]))
    nfe = num_steps * (pred.score_evals + corr.score_evals) + int(denoise)
    if num_frames:
      return x, nfe, Trajectory(times[frame_index], frames.at[-1].set(x))
    return x, nfe

  return pc_sample


def probability_flow_drift(sde: sde_lib.SDE, score_fn: ScoreFn) -> ode_solvers.VectorField:
  """The probability-flow ODE's ``drift(t: scalar, x: [B, ...]) -> dx/dt: [B, ...]``,
  ``f(x, t) - g(t)^2 / 2 score(x, t)``, for :func:`ode_solvers.solve` in either direction."""
  rsde = sde.reverse(score_fn, probability_flow=True)

  def drift(t, y):
    return rsde.sde(y, jnp.full((y.shape[0],), t, y.dtype))[0]

  return drift


def _check_ode_arguments(sde: sde_lib.SDE, method: str, eps: float, num_steps: int) -> None:
  """Raises ``ValueError`` for an unknown method, ``eps`` outside ``(0, T)``, or a fixed-step
  method without steps -- when the sampler is built, not when it is traced."""
  if not ode_solvers.SOLVERS.get(method).adaptive and num_steps < 1:
    raise ValueError(f"The fixed-step ODE solver {method!r} needs num_steps >= 1, got "
                     f"{num_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")


def get_ode_sampler(sde: sde_lib.SDE, shape: Shape, *, rtol: float = 1e-5, atol: float = 1e-5,
                    method: str = "tsit5", eps: float = 1e-3, denoise: bool = False,
                    max_steps: int = 16384, num_steps: Optional[int] = None,
                    num_frames: int = 0) -> Callable[..., SampleOutput]:
  """A probability-flow ODE sampler ``ode_sample(rng, score_fn, z=None) -> (x, nfe)``
  (``(x, nfe, trajectory)`` with ``num_frames``).

  Args:
    sde: the forward SDE.
    shape: ``(B, ...)`` of the samples (ignored when ``z`` is given).
    rtol, atol: tolerances of the adaptive methods' PID step-size controller (the error
      norm is the RMS over the whole batch).
    method: a solver of :data:`ode_solvers.SOLVERS`: ``tsit5``, ``dopri5``, ``dopri8``,
      ``bosh3`` (adaptive) or ``heun`` / ``euler`` (fixed steps, 2nd / 1st order).
    eps: final time.
    denoise: finish with a Tweedie denoising step at ``eps`` (one more evaluation).
    max_steps: cap on step attempts of the adaptive methods; a solve that reaches it returns
      NaN samples (checked on the host by the caller; the device program holds no host
      callback).
    num_steps: steps of the fixed-step methods; default ``sde.N``.
    num_frames: ``K``; 0 (default): no trajectory. ``K >= 2``: ``ode_sample`` returns ``(x,
      nfe, trajectory)``, the :class:`Trajectory` at ``t = linspace(T, eps, K)``: frame 0 is
      ``x(T)`` (``z`` or the prior draw), frames ``1 .. K - 2`` the solver's dense output
      (interpolated within its steps, to the method's interpolation order), frame ``K - 1`` the
      returned ``x`` (denoising, if enabled, applies to it alone). The same ``x`` and NFE.

  ``ode_sample`` integrates from ``x(T) = z`` (default ``sde.prior_sampling(rng, shape)``)
  down to ``eps`` and returns ``x: [B, ...]`` and ``nfe``, an int32 scalar counting drift
  (= score) evaluations as :mod:`ode_solvers` derives them from the tableau (``1 + 6 n`` for
  ``n`` Tsit5/Dopri5 step attempts, ``2 n`` for Heun, ``n`` for Euler), plus 1 with
  ``denoise``. Jittable; everything stays on device.
  """
  num_steps = sde.N if num_steps is None else int(num_steps)
  _check_ode_arguments(sde, method, eps, num_steps)
  num_frames = check_num_frames(num_frames)

  def ode_sample(rng: Array, score_fn: ScoreFn, z: Optional[Array] = None) -> SampleOutput:
    x = sde.prior_sampling(rng, shape) if z is None else z
    drift = probability_flow_drift(sde, score_fn)
    solve = dict(method=method, rtol=rtol, atol=atol, num_steps=num_steps, max_steps=max_steps)
    if num_frames:
      frame_t = jnp.linspace(sde.T, eps, num_frames, dtype=jnp.float32)
      prior = x
      x, interior, nfe = ode_solvers.solve(drift, x, sde.T, eps, save_ts=frame_t[1:-1], **solve)
    else:
      x, nfe = ode_solvers.solve(drift, x, sde.T, eps, **solve)
    if denoise:
      x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps, x.dtype))
      nfe = nfe + 1
    if num_frames:
      return x, nfe, Trajectory(frame_t, jnp.concatenate([prior[None], interior, x[None]]))
    return x, nfe

  return ode_sample


def get_ode_encoder(sde: sde_lib.SDE, *, rtol: float = 1e-5, atol: float = 1e-5,
                    method: str = "tsit5", eps: float = 1e-3, max_steps: int = 16384,
                    num_steps: Optional[int] = None
                    ) -> Callable[[ScoreFn, Array], Tuple[Array, Array]]:
  """The probability-flow ODE as an encoder ``encode(score_fn, x) -> (z, nfe)``.

  ``encode`` integrates the ODE of :func:`probability_flow_drift` forward from ``x(eps) = x:
  [B, ...]`` to ``t = T`` and returns the latent ``z = x(T): [B, ...]`` (NaN if an adaptive
  solve reached ``max_steps``) and the int32 NFE (:mod:`ode_solvers`). It inverts
  :func:`get_ode_sampler` with the same arguments and ``denoise=False``: ``ode_sample(None,
  score_fn, z)`` decodes ``z`` back to ``x`` up to the solvers' tolerances. Arguments as there;
  jittable.
  """
  num_steps = sde.N if num_steps is None else int(num_steps)
  _check_ode_arguments(sde, method, eps, num_steps)

  def encode(score_fn: ScoreFn, x: Array) -> Tuple[Array, Array]:
    return ode_solvers.solve(probability_flow_drift(sde, score_fn), x, eps, sde.T, method=method,
                             rtol=rtol, atol=atol, num_steps=num_steps, max_steps=max_steps)

  return encode
