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

ODE sampling (:func:`get_ode_sampler`)
--------------------------------------
Integrates the probability-flow ODE from ``T`` to ``eps`` with diffrax on device
(:mod:`ode_solvers`), the batch as one state (one shared step size, as the authors'
flattened scipy solve). The ``score_fn`` the caller passes is used as is, so discretely
trained models get their integer noise-level labels (the authors hard-coded continuous
conditioning here).
"""

from __future__ import annotations

import abc
from typing import Callable, Optional, Tuple, Type, Union

import jax
import jax.numpy as jnp

import ode_solvers
import sde_lib
from registry import Registry
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Shape = Tuple[int, ...]
SampleFn = Callable[[Array, ScoreFn], Tuple[Array, Union[int, Array]]]
"""``sample(rng, score_fn) -> (x: [B, ...], nfe)``."""

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


def get_pc_sampler(sde: sde_lib.SDE, shape: Shape, predictor: str, corrector: str, *,
                   snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
                   denoise: bool = True, eps: float = 1e-3,
                   num_steps: Optional[int] = None) -> SampleFn:
  """A predictor-corrector sampler ``pc_sample(rng, score_fn) -> (x: shape, nfe: int)``.

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

  The loop order, grid and NFE count are described in the module docstring.
  """
  predictor_cls, corrector_cls = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
  predictor_cls.check(sde, probability_flow)
  num_steps = sde.N if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  batch = shape[0]

  def pc_sample(rng: Array, score_fn: ScoreFn) -> Tuple[Array, int]:
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
      return x, None

    keys = jax.random.split(loop_rng, num_steps)
    x, _ = jax.lax.scan(pc_step, x, (keys, times[:-1], times[1:]))
    if denoise:
      x = tweedie_denoise(sde, score_fn, x, jnp.full((batch,), times[-1]))
    nfe = num_steps * (pred.score_evals + corr.score_evals) + int(denoise)
    return x, nfe

  return pc_sample


def get_ode_sampler(sde: sde_lib.SDE, shape: Shape, *, rtol: float = 1e-5, atol: float = 1e-5,
                    method: str = "tsit5", eps: float = 1e-3, denoise: bool = False,
                    max_steps: int = 16384, num_steps: Optional[int] = None
                    ) -> Callable[..., Tuple[Array, Array]]:
  """A probability-flow ODE sampler ``ode_sample(rng, score_fn, z=None) -> (x, nfe)``.

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

  ``ode_sample`` integrates from ``x(T) = z`` (default ``sde.prior_sampling(rng, shape)``)
  down to ``eps`` and returns ``x: [B, ...]`` and ``nfe``, an int32 scalar counting drift
  (= score) evaluations as :mod:`ode_solvers` derives them from the tableau (``1 + 6 n`` for
  ``n`` Tsit5/Dopri5 step attempts, ``2 n`` for Heun, ``n`` for Euler), plus 1 with
  ``denoise``. Jittable; everything stays on device.
  """
  ode_solvers.SOLVERS.get(method)
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  num_steps = sde.N if num_steps is None else int(num_steps)

  def ode_sample(rng: Array, score_fn: ScoreFn, z: Optional[Array] = None
                 ) -> Tuple[Array, Array]:
    x = sde.prior_sampling(rng, shape) if z is None else z
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(t, y):
      return rsde.sde(y, jnp.full((y.shape[0],), t, y.dtype))[0]

    x, nfe = ode_solvers.solve(drift, x, sde.T, eps, method=method, rtol=rtol, atol=atol,
                               num_steps=num_steps, max_steps=max_steps)
    if denoise:
      x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps, x.dtype))
      nfe = nfe + 1
    return x, nfe

  return ode_sample
