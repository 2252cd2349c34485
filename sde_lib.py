"""Forward SDEs, their marginals, discretizations and time reversals.

Conventions:

* ``x`` is batch-first, ``[B, ...]`` (images ``[B, H, W, C]``, toys ``[B, D]``);
  ``t`` has shape ``[B]`` and lies in ``[eps, T]``.
* Per-example scalars (diffusion coefficient, marginal std, ...) have shape ``[B]``
  and are broadcast against ``x`` with :func:`batch_mul`.
* Every method is pure and safe under ``jit`` and ``vmap``.

A subclass states only its drift/diffusion, its perturbation kernel and its prior;
discretizations, reverse-time SDEs and the probability-flow ODE are derived here. SDEs are
registered by name in :data:`SDES` (``training.sde`` in a config); a new SDE is its class plus
its ``@SDES.register`` line, and everything else (network conditioning, losses, samplers) asks
the SDE through the attributes below instead of testing its type.

What the rest of the code asks an SDE, besides its coefficients:

* :meth:`SDE.noise_label` and :attr:`SDE.prediction`: the network conventions of the SDE's
  family (what a network is conditioned on, and what it outputs unless ``model.prediction``
  says otherwise), which ``models.utils.get_score_fn`` turns into a score.
* :attr:`SDE.discrete_chain`: the discrete Markov chain the SDE is the limit of (``'SMLD'``
  for VE, ``'DDPM'`` for VP; None for sub-VP, the tutorial's SDE and OU), with its noise levels
  (:meth:`SDE.discrete_marginal`, :meth:`SDE.discrete_level`), the label a discretely trained
  network is conditioned on (:meth:`SDE.discrete_label`, the authors' convention: for SMLD label
  0 is ``sigma_max``) and ancestral sampling step (:meth:`SDE.ancestral_step`). Discrete
  training and ancestral sampling need one.

Besides VE, VP and sub-VP: :class:`SigmaPowerSDE` (``dx = sigma^t dw``, the SDE of Song's
score-SDE tutorial), :class:`OUSDE` (the Ornstein-Uhlenbeck process, horizon ``T`` a
parameter) and :class:`RectifiedFlow` (the linear path of flow matching, ``x(t) = (1 - t) x0 +
t z``, as the SDE with those marginals).

Time grids and discretizations. The samplers step between explicit time pairs
``t -> t_next`` of a grid they choose, and :meth:`SDE.discretize` takes both times, so
the step size always equals the grid spacing (the authors used ``dt = 1/N`` on a grid
spaced ``(T - eps)/(N - 1)``). :class:`VESDE` and :class:`VPSDE` override it with the
exact SMLD / DDPM transition between the two times, which reduces to the papers' noise
ladders on their grids.

VE marginal. Following the paper's parameterisation, the VE perturbation kernel is
``N(x0, sigma(t)^2 I)`` with ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``. It is the
exact marginal of ``dx = sqrt(d[sigma^2]/dt) dw`` started at ``t = 0`` from the data
convolved with ``N(0, sigma_min^2 I)`` -- the smallest SMLD noise level, which is what a
VE model is trained to denoise. We keep it (rather than ``sigma(t)^2 - sigma_min^2``)
because it keeps the SMLD noise ladder ``sigma_0 = sigma_min`` and the authors' model
conditioning; all tests compare against this exact process.
"""

from __future__ import annotations

import abc
from typing import Callable, Optional, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np

from infra.registry import Registry

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

# Levels by which a DDPM time may fall short of a grid point i / (N - 1) T and still count as
# level i: float32 rounding of t_i (N - 1) is below 2.5e-4 for N <= 4000.
_LEVEL_TOLERANCE = 1e-3
"""``score_fn(x: [B, ...], t: [B]) -> [B, ...]``, an estimate of grad_x log p_t(x)."""


def batch_mul(a: Array, x: Array) -> Array:
  """Multiplies per-example scalars ``a: [B]`` into ``x: [B, ...]``."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def sum_non_batch(x: Array) -> Array:
  """Sums ``x: [B, ...]`` over every axis but the first, ``[B]``."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


SDES: Registry[Type["SDE"]] = Registry("SDE")
"""The SDEs by name; constructors take keyword arguments named as in ``config.model``."""


class SDE(abc.ABC):
  """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]``.

  Attributes:
    N: number of discretization steps (noise levels) the SDE is used with by default.
    prediction: what a network trained on this SDE outputs unless ``model.prediction`` names
      another (``models.predictions``): ``'score'`` (the authors' VE networks, optionally
      divided by ``std``, ``scale_by_sigma``), ``'noise'`` (the ``z`` of ``x(t) = mean + std z``;
      the authors' VP networks) or ``'velocity'`` (``d mean / dt + d std / dt z``, flow
      matching's target).
    discrete_chain: name of the discrete Markov chain this SDE is the continuous limit of
      (``'SMLD'``, ``'DDPM'``), or None. Discretely trained models and ancestral sampling
      exist only for SDEs that have one.
  """
  prediction: str = "score"
  discrete_chain: Optional[str] = None

  def __init__(self, N: int):
    if N < 1:
      raise ValueError(f"N (number of discretization steps) must be >= 1, got {N}.")
    self.N = int(N)

  @property
  def T(self) -> float:
    """End time of the forward SDE."""
    return 1.0

  @abc.abstractmethod
  def sde(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """Returns drift ``f(x, t): [B, ...]`` and diffusion ``g(t): [B]``."""

  @abc.abstractmethod
  def marginal_prob(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """Perturbation kernel ``p_0t(x(t) | x(0) = x) = N(mean, std^2 I)``.

    Returns ``mean: [B, ...]`` and ``std: [B]``.
    """

  @abc.abstractmethod
  def prior_sampling(self, rng: Array, shape: Tuple[int, ...]) -> Array:
    """Draws ``x(T)`` from the prior ``p_T``; ``shape`` is ``(B, ...)``."""

  @abc.abstractmethod
  def prior_logp(self, z: Array) -> Array:
    """Log-density of the prior at ``z: [B, ...]`` (nats), shape ``[B]``."""

  def mean_coeff(self, t: Array) -> Array:
    """The ``a(t): [B]`` in ``mean = a(t) x(0)``, for SDEs with affine drift."""
    return self.marginal_prob(jnp.ones((t.shape[0], 1)), t)[0][:, 0]

  def marginal_std(self, t: Array) -> Array:
    """The perturbation kernel's ``std(t): [B]``."""
    return self.marginal_prob(jnp.zeros((t.shape[0], 1)), t)[1]

  @abc.abstractmethod
  def noise_label(self, t: Array) -> Array:
    """The noise-level label ``[B]`` a continuously trained network is conditioned on at ``t``."""

  def _no_discrete_levels(self) -> ValueError:
    """The error of asking an SDE without a :attr:`discrete_chain` for its discrete levels."""
    return ValueError(f"{type(self).__name__} has no discrete noise levels (only "
                      f"{' and '.join(discrete_chain_sdes())} do); use continuous training.")

  def discrete_label(self, t: Array) -> Array:
    """The label, float32 ``[B]``, a discretely trained network is conditioned on at ``t``: the
    authors' convention, so that their released networks and the ones trained here agree.

    Defined where :attr:`discrete_chain` is set (see the chain's class).
    """
    raise self._no_discrete_levels()

  def discrete_level(self, t: Array) -> Array:
    """The level ``i``, int32 ``[B]`` in ``[0, N)`` (0 the least noise), whose kernel
    :meth:`discrete_marginal` scales a discretely trained network's output at ``t``: about
    ``t / T (N - 1)``, rounded as the chain's class says.

    Defined where :attr:`discrete_chain` is set.
    """
    raise self._no_discrete_levels()

  def discrete_time(self, levels: Array) -> Array:
    """``t_i = i / (N - 1) T``, float32 ``[B]``: the time whose :meth:`discrete_level` is ``i``."""
    return levels.astype(jnp.float32) / max(self.N - 1, 1) * self.T

  def discrete_marginal(self, levels: Array) -> Tuple[Array, Array]:
    """``(a_i, s_i): [B]`` of the discrete chain's kernel ``x_i = a_i x(0) + s_i z``.

    Defined where :attr:`discrete_chain` is set; ``levels: [B]`` are integers in ``[0, N)``.
    """
    raise self._no_discrete_levels()

  def ancestral_step(self, x: Array, score: Array, t: Array,
                     t_next: Array) -> Tuple[Array, Array]:
    """The discrete chain's ancestral step from ``t`` to ``t_next < t``: ``(x_mean, std)``.

    ``x' = x_mean + std z``; ``score: [B, ...]`` is the score at ``(x, t)``, ``std: [B]``.
    Defined where :attr:`discrete_chain` is set.
    """
    raise ValueError(f"{type(self).__name__} has no ancestral sampling step (only "
                     f"{' and '.join(discrete_chain_sdes())} do).")

  def discretize(self, x: Array, t: Array, t_next: Array) -> Tuple[Array, Array]:
    """Forward transition over the interval between ``t`` and ``t_next``: ``x' = x + f + G z``.

    The interval is run forward in time whichever of ``t``, ``t_next`` is larger, so a
    reverse sampler can ask for the step it undoes. The default is Euler-Maruyama with
    ``dt = |t_next - t|``, coefficients evaluated at ``(x, t)``. Returns ``f: [B, ...]``
    and ``G: [B]``. Subclasses override it with their exact transition.
    """
    dt = jnp.abs(t_next - t)
    drift, diffusion = self.sde(x, t)
    return batch_mul(dt, drift), diffusion * jnp.sqrt(dt)

  def langevin_alpha(self, t: Array) -> Array:
    """Step-size factor ``alpha_i`` of the Langevin/ALD correctors at ``t``, ``[B]``."""
    return jnp.ones_like(t)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn``."""
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """``dx = [f - c g^2 score] dt + [c == 1/2 ? 0 : g] dw-bar``, run from ``T`` to ``eps``.

  ``c = 1`` is the reverse-time SDE, ``c = 1/2`` the probability-flow ODE. Times keep
  their forward meaning, so a sampler steps with ``t_next < t``.
  """

  def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N
    self.T = forward.T

  def _coeff(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: Array, t: Array) -> Tuple[Array, Array]:
    """Reverse drift ``[B, ...]`` and diffusion ``[B]`` (zero for the ODE)."""
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - batch_mul(diffusion**2 * self._coeff(), score)
    if self.probability_flow:
      diffusion = jnp.zeros_like(diffusion)
    return drift, diffusion

  def discretize(self, x: Array, t: Array, t_next: Array) -> Tuple[Array, Array]:
    """Reverse step ``x' = x - f + G^2 c score + [G z]`` from the forward discretization.

    Returns ``rev_f: [B, ...]`` and ``rev_G: [B]`` so that ``x' = x + rev_f + rev_G z``.
    """
    f, G = self.forward.discretize(x, t, t_next)
    rev_f = -f + batch_mul(G**2 * self._coeff(), self.score_fn(x, t))
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


@SDES.register("vesde")
class VESDE(SDE):
  """Variance-exploding SDE (SMLD): ``dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw``.

  Networks are conditioned on ``sigma(t)`` and output the score (NCSN).
  """
  discrete_chain = "SMLD"

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                       f"sigma_max={sigma_max}.")
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)

  def sigma(self, t: Array) -> Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def discrete_sigmas(self) -> Array:
    """The SMLD noise ladder ``sigma_i = sigma(i / (N - 1))``, ascending, ``[N]``."""
    return self.sigma(jnp.linspace(0.0, 1.0, self.N))

  def sde(self, x, t):
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def mean_coeff(self, t):
    return jnp.ones_like(t)

  def noise_label(self, t):
    return self.sigma(t)

  def discrete_label(self, t):
    """The authors' SMLD label ``round((T - t) / T (N - 1))``: label 0 is ``sigma_max``, their
    noise ladder being descending; NCSN v1's per-level tables and NCSN++'s positional embedding
    are indexed by it."""
    return jnp.round((self.T - t) / self.T * (self.N - 1)).astype(jnp.float32)

  def discrete_level(self, t):
    """``N - 1 -`` :meth:`discrete_label`: the ascending level of the label's ``sigma``."""
    return (self.N - 1) - self.discrete_label(t).astype(jnp.int32)

  def discrete_marginal(self, levels):
    """SMLD's ``(1, sigma_i)``."""
    return jnp.ones(levels.shape, jnp.float32), self.discrete_sigmas()[levels]

  def ancestral_step(self, x, score, t, t_next):
    """SMLD's step: with ``s = sigma(t)``, ``s' = sigma(t_next)``,
    ``x' = x + (s^2 - s'^2) score + sqrt(s'^2 (s^2 - s'^2) / s^2) z``."""
    var, var_next = self.sigma(t)**2, self.sigma(t_next)**2
    x_mean = x + batch_mul(var - var_next, score)
    return x_mean, jnp.sqrt(var_next * (var - var_next) / var)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    return _isotropic_normal_logp(z, self.sigma_max)

  def discretize(self, x, t, t_next):
    """Exact SMLD transition ``x' = x + sqrt(|sigma(t_next)^2 - sigma(t)^2|) z``."""
    var = jnp.abs(self.sigma(t_next) ** 2 - self.sigma(t) ** 2)
    return jnp.zeros_like(x), jnp.sqrt(var)


class _BetaScheduleSDE(SDE):
  """Shared linear ``beta(t) = beta_min + t (beta_max - beta_min)`` of VP and sub-VP.

  Networks are conditioned on ``999 t`` (DDPM's time scale) and predict the noise.
  """
  prediction = "noise"

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    super().__init__(N)
    if not 0 <= beta_min <= beta_max:
      raise ValueError(
          f"{type(self).__name__} needs 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}.")
    self.beta_min = float(beta_min)
    self.beta_max = float(beta_max)

  def beta(self, t: Array) -> Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: Array) -> Array:
    """``log a(t) = -1/2 int_0^t beta(s) ds``."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def mean_coeff(self, t):
    return jnp.exp(self.log_mean_coeff(t))

  def langevin_alpha(self, t):
    """DDPM's ``alpha_i = 1 - beta_i`` with ``beta_i = beta(t) / N``."""
    return 1.0 - self.beta(t) / self.N

  def noise_label(self, t):
    return 999.0 * t

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    return _isotropic_normal_logp(z, 1.0)


@SDES.register("vpsde")
class VPSDE(_BetaScheduleSDE):
  """Variance-preserving SDE (DDPM): ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``."""
  discrete_chain = "DDPM"

  def discrete_betas(self) -> Array:
    """DDPM's ``beta_i = beta(i / (N - 1)) / N``, ``[N]``.

    Raises:
      ValueError: if ``beta_max / N >= 1``: the betas would not be probabilities and the
        DDPM kernel would be NaN.
    """
    if self.beta_max >= self.N:
      raise ValueError(f"DDPM's discrete betas beta(t) / N need N > beta_max, got N={self.N}, "
                       f"beta_max={self.beta_max}.")
    return self.beta(jnp.linspace(0.0, 1.0, self.N)) / self.N

  def discrete_label(self, t):
    """The authors' DDPM label ``t / T (N - 1)``, not rounded (their timestep embedding takes
    any real step)."""
    return (t / self.T * (self.N - 1)).astype(jnp.float32)

  def discrete_level(self, t):
    """``floor(t / T (N - 1))`` as the authors index ``sqrt(1 - alpha_bar)``, with a tolerance
    of ``1e-3`` levels: the grid times ``t_i = i / (N - 1) T`` of discrete training land a
    float32 rounding error below ``i``."""
    level = jnp.floor(t / self.T * (self.N - 1) + _LEVEL_TOLERANCE).astype(jnp.int32)
    return jnp.clip(level, 0, self.N - 1)

  def discrete_marginal(self, i: Array) -> Tuple[Array, Array]:
    """DDPM's ``(sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i))`` at integer levels ``i: [B]``.

    This is the kernel a discretely trained DDPM model was trained on; it differs from
    :meth:`marginal_prob` at ``t = i / (N - 1)`` by ``O(1/N)``.
    """
    log_alphas_cumprod = jnp.cumsum(jnp.log1p(-self.discrete_betas()))[i]
    return jnp.exp(0.5 * log_alphas_cumprod), jnp.sqrt(-jnp.expm1(log_alphas_cumprod))

  def ancestral_step(self, x, score, t, t_next):
    """DDPM's step: with ``b = 1 - a(t)^2 / a(t_next)^2`` (``a = mean_coeff``),
    ``x' = (x + b score) / sqrt(1 - b) + sqrt(b) z``; ``b`` is DDPM's ``beta_i`` to first
    order on the authors' grid."""
    beta = -jnp.expm1(2.0 * (self.log_mean_coeff(t) - self.log_mean_coeff(t_next)))
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
    return x_mean, jnp.sqrt(beta)

  def sde(self, x, t):
    beta_t = self.beta(t)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    log_mean_coeff = self.log_mean_coeff(t)
    std = jnp.sqrt(-jnp.expm1(2.0 * log_mean_coeff))
    return batch_mul(jnp.exp(log_mean_coeff), x), std

  def discretize(self, x, t, t_next):
    """Exact DDPM transition ``x' = sqrt(1 - b) x + sqrt(b) z`` between the two times.

    ``b = 1 - a(hi)^2 / a(lo)^2`` with ``lo, hi`` the earlier and later time; on the
    grid ``t_i = i / (N - 1)`` this is DDPM's ``beta_i`` to first order.
    """
    lo, hi = jnp.minimum(t, t_next), jnp.maximum(t, t_next)
    beta = -jnp.expm1(2.0 * (self.log_mean_coeff(hi) - self.log_mean_coeff(lo)))
    f = batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x)
    return f, jnp.sqrt(beta)


@SDES.register("subvpsde")
class subVPSDE(_BetaScheduleSDE):  # pylint: disable=invalid-name
  """sub-VP SDE: ``dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 int_0^t beta)) ) dw``."""

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    log_mean_coeff = self.log_mean_coeff(t)
    std = -jnp.expm1(2.0 * log_mean_coeff)
    return batch_mul(jnp.exp(log_mean_coeff), x), std


@SDES.register("sigmapowersde")
class SigmaPowerSDE(SDE):
  """The SDE of Song's score-SDE tutorial: ``dx = sigma^t dw`` on ``t in [0, 1]``.

  Registered as ``sigmapowersde``. No drift, diffusion ``g(t) = sigma^t``; the kernel is
  ``N(x0, std(t)^2 I)`` with ``std(t)^2 = int_0^t sigma^(2s) ds = (sigma^(2t) - 1) / (2 log
  sigma)``, exact from ``x(0) = x0`` (``std(0) = 0``, unlike the VE SDE's ``sigma_min``). The
  prior is ``N(0, std(1)^2 I)``. Networks are conditioned on ``t`` itself (the tutorial's
  ScoreNet embeds it with random Fourier features) and output the score, which the tutorial
  divides by ``std(t)`` (``scale_by_sigma``). There is no discrete chain.
  """

  def __init__(self, sigma: float = 25.0, N: int = 1000):
    super().__init__(N)
    if not sigma > 1.0:
      raise ValueError(f"SigmaPowerSDE needs sigma > 1 (noise growing with t, as the tutorial's "
                       f"25), got sigma={sigma}.")
    self.sigma = float(sigma)
    self._log_sigma = float(np.log(sigma))

  def sde(self, x, t):
    return jnp.zeros_like(x), jnp.exp(t * self._log_sigma)

  def _variance(self, t: Array) -> Array:
    """``std(t)^2``, with ``expm1`` for accuracy at small ``t``."""
    return jnp.expm1(2.0 * t * self._log_sigma) / (2.0 * self._log_sigma)

  def marginal_prob(self, x, t):
    return x, jnp.sqrt(self._variance(t))

  def mean_coeff(self, t):
    return jnp.ones_like(t)

  def noise_label(self, t):
    return t

  def prior_std(self) -> float:
    """``std(T)``, the prior's standard deviation (9.85 for ``sigma = 25``)."""
    return float(np.sqrt(np.expm1(2.0 * self.T * self._log_sigma) / (2.0 * self._log_sigma)))

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.prior_std()

  def prior_logp(self, z):
    return _isotropic_normal_logp(z, self.prior_std())

  def discretize(self, x, t, t_next):
    """Exact transition ``x' = x + sqrt(|std(t_next)^2 - std(t)^2|) z``."""
    return jnp.zeros_like(x), jnp.sqrt(jnp.abs(self._variance(t_next) - self._variance(t)))


@SDES.register("ousde")
class OUSDE(SDE):
  """Ornstein-Uhlenbeck process ``dx = -mu x dt + sigma dw`` on ``t in [0, T]``.

  Registered as ``ousde``. Kernel ``N(e^(-mu t) x0, v(t) I)`` with ``v(t) = sigma^2 / (2 mu)
  (1 - e^(-2 mu t))``; the stationary law is ``N(0, sigma^2 / (2 mu) I)``. The prior is
  ``N(0, v(T) I)``, the marginal at ``T`` of a start at ``x0 = 0``: the true ``p_T`` differs
  from it by the data scaled by ``e^(-mu T)``, so ``T`` must be long enough to forget the data.
  With ``mu = 1/2, sigma = 1``: at ``T = 1``, ``e^(-mu T) = 0.61`` (the data are far from
  forgotten, so the prior is far from ``p_T``) and ``v(T) = 0.63``, far from the stationary
  ``N(0, I)``; at the default ``T = 10``, ``e^(-mu T) = 0.0067`` and ``v(T) = 0.99995``.

  Networks are conditioned on ``t / T in [0, 1]`` and predict the noise (score
  ``-out / std``), as for VP, of which this is the constant-``beta`` case: the noise has unit
  variance at every ``t``, so a network's output stays of order one. There is no discrete
  chain.
  """
  prediction = "noise"

  def __init__(self, mu: float = 0.5, sigma: float = 1.0, T: float = 10.0, N: int = 1000):
    super().__init__(N)
    if not (mu > 0 and sigma > 0 and T > 0):
      raise ValueError(f"OUSDE needs mu > 0, sigma > 0 and T > 0, got mu={mu}, sigma={sigma}, "
                       f"T={T}.")
    self.mu = float(mu)
    self.sigma = float(sigma)
    self._horizon = float(T)

  @property
  def T(self) -> float:
    return self._horizon

  def sde(self, x, t):
    return -self.mu * x, jnp.full_like(t, self.sigma)

  def _variance(self, t: Array) -> Array:
    """``v(t) = sigma^2 / (2 mu) (1 - e^(-2 mu t))``."""
    return -self.sigma**2 / (2.0 * self.mu) * jnp.expm1(-2.0 * self.mu * t)

  def mean_coeff(self, t):
    return jnp.exp(-self.mu * t)

  def marginal_prob(self, x, t):
    return batch_mul(self.mean_coeff(t), x), jnp.sqrt(self._variance(t))

  def noise_label(self, t):
    return t / self.T

  def prior_std(self) -> float:
    """``sqrt(v(T))``, the prior's standard deviation."""
    return float(np.sqrt(-self.sigma**2 / (2.0 * self.mu) * np.expm1(-2.0 * self.mu * self.T)))

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.prior_std()

  def prior_logp(self, z):
    return _isotropic_normal_logp(z, self.prior_std())

  def discretize(self, x, t, t_next):
    """Exact transition ``x' = e^(-mu h) x + sqrt(v(h)) z`` over ``h = |t_next - t|``."""
    h = jnp.abs(t_next - t)
    return batch_mul(jnp.expm1(-self.mu * h), x), jnp.sqrt(self._variance(h))


@SDES.register("rectified_flow")
class RectifiedFlow(SDE):
  """The linear path of flow matching and rectified flow: ``x(t) = (1 - t) x0 + t z``.

  Registered as ``rectified_flow``. Kernel ``N((1 - t) x0, t^2 I)``: ``a(t) = 1 - t``,
  ``std(t) = t``. As an SDE with those marginals, ``f(x, t) = -x / (1 - t)`` (``d log a / dt``)
  and ``g(t)^2 = d std^2 / dt - 2 f std^2 = 2 t / (1 - t)``, so its score, reverse SDE,
  probability-flow ODE and likelihood are those of the other SDEs. The probability-flow ODE is
  the flow itself: its drift at the exact score is the velocity ``E[z - x0 | x(t)]``.

  End point. At ``t = 1`` the path is pure noise, but ``f`` and ``g^2`` grow as ``1 / (1 - t)``:
  the reverse SDE's drift is singular there and the probability-flow drift is a difference of
  two infinities. The process therefore stops at a horizon ``T < 1`` (default 0.99, where
  ``1 / (1 - T) = 100``: a 1000-step sampler's first step ``dt / (1 - T)`` is 0.1, well inside
  Euler-Maruyama's stability, and the signal left, ``(1 - T) x0``, is 1 % of the data). The
  prior is ``N(0, T^2 I)``, the marginal at ``T`` of a start at ``x0 = 0`` (as for VE and OU):
  ``N(0, I)`` scaled to the horizon. Networks are conditioned on ``999 t`` (VP's scale, so the
  same networks serve both) and predict the velocity ``z - x0`` by default.
  """
  prediction = "velocity"

  def __init__(self, T: float = 0.99, N: int = 1000):
    super().__init__(N)
    if not 0.0 < T < 1.0:
      raise ValueError(f"RectifiedFlow needs a horizon 0 < T < 1 (its drift is singular at t = "
                       f"1), got T={T}.")
    self._horizon = float(T)

  @property
  def T(self) -> float:
    return self._horizon

  def sde(self, x, t):
    return batch_mul(-1.0 / (1.0 - t), x), jnp.sqrt(2.0 * t / (1.0 - t))

  def mean_coeff(self, t):
    return 1.0 - t

  def marginal_prob(self, x, t):
    return batch_mul(1.0 - t, x), t

  def noise_label(self, t):
    return 999.0 * t

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.T

  def prior_logp(self, z):
    return _isotropic_normal_logp(z, self.T)

  def discretize(self, x, t, t_next):
    """Exact transition between the two times: ``x' = r x + sqrt(std'^2 - r^2 std^2) z`` with
    ``r = a' / a``, primes at the later time."""
    s, u = jnp.minimum(t, t_next), jnp.maximum(t, t_next)
    ratio = (1.0 - u) / (1.0 - s)
    return batch_mul(ratio - 1.0, x), jnp.sqrt(u**2 - (ratio * s)**2)


def _isotropic_normal_logp(z: Array, std: float) -> Array:
  """``log N(z; 0, std^2 I)``, nats, ``[B]`` for ``z: [B, ...]``."""
  d = np.prod(z.shape[1:])
  return -d / 2.0 * np.log(2 * np.pi * std**2) - sum_non_batch(z**2) / (2 * std**2)


def discrete_chain_sdes() -> Tuple[str, ...]:
  """Class names of the registered SDEs that have a :attr:`SDE.discrete_chain`."""
  return tuple(cls.__name__ for _, cls in SDES.items() if cls.discrete_chain)
