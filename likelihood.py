"""Log-likelihoods in bits/dim: exact through the probability-flow ODE, and the SDE's bound.

For a forward SDE with marginals ``p_t``, the probability-flow ODE
``dx/dt = v(x, t) = f(x, t) - g(t)^2 / 2 * score(x, t)`` transports ``p_eps`` to ``p_T``, and along
a trajectory the instantaneous change of variables gives ``d log p_t(x(t)) / dt = -div v``.
Integrating from ``t = eps`` to ``T`` and replacing ``p_T`` by the SDE's prior:

    log p_eps(x) = prior_logp(x(T)) + int_eps^T div v(x(t), t) dt.

Both integrals run in one adaptive solve (:func:`ode_solvers.solve`: diffrax, whole solve on
device, jittable, no host callbacks). The divergence is either the exact Jacobian trace (small
``D`` only) or the Hutchinson-Skilling estimate ``e^T (dv/dx) e`` with one noise vector ``e``
drawn per solve; since the trajectory does not depend on ``e`` and each evaluation is unbiased,
so is the integral.

The reverse SDE defines a density of its own, bounded without solving anything
(:func:`get_bound_fn`, Song, Durkan, Murray & Ermon 2021): for ``x`` at time 0,

    -log p(x) <= E[-log prior(x(T))]
                 + 1/2 int_eps^T E[g^2 |s(x_t, t) - grad log p_0t(x_t | x)|^2
                                   - g^2 |grad log p_0t(x_t | x)|^2 - 2 div f(x_t, t)] dt
                 + E[-log N(x; decoder(x_eps), (std / a)^2 I)] - H[p_0eps(. | x)],

every expectation over ``x_t = a(t) x + std(t) z``. The first two lines bound the reverse SDE's
density of ``x_eps`` (the KL divergence between the forward and the model's path measures on
``[eps, T]``, with the entropy change of the forward process written as the integral of its
drift's divergence and its score's norm); the last line decodes ``x`` from ``x_eps`` with the
Gaussian whose mean is the model's denoiser ``(x_eps + std^2 s) / a`` (Tweedie), a proper
variational step from ``eps`` back to 0. It is a bound for any score, tight where the score is
exact and ``eps`` small, and an unbiased Monte Carlo estimate with a standard error of its own.

Both take a plain ``score_fn(x, t)``: discretely trained models are handled by the score
function built for them (``models.utils.get_score_fn(..., continuous=False)`` hands the network
integer noise levels), never by conditioning hard-coded here.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import losses
import ode_solvers
import sde_lib
from infra.registry import Registry

Array = jax.Array
LikelihoodFn = Callable[[Array, sde_lib.ScoreFn, Array], Tuple[Array, Array, Array]]
BoundFn = Callable[[Array, sde_lib.ScoreFn, Array], Tuple[Array, Array]]
BoundDrawFn = Callable[[Array, sde_lib.ScoreFn, Array], Array]
DriftFn = Callable[[Array], Array]
NoiseFn = Callable[[Array, Tuple[int, ...], jnp.dtype], Array]

# Probe distributions of the Hutchinson-Skilling trace estimate, ``draw(rng, shape, dtype)``;
# ``exact`` (None) computes the whole Jacobian trace instead.
HUTCHINSON_TYPES: Registry[Optional[NoiseFn]] = Registry("hutchinson_type")
HUTCHINSON_TYPES.add("rademacher", lambda rng, shape, dtype: jax.random.rademacher(
    rng, shape, dtype=dtype))
HUTCHINSON_TYPES.add("gaussian", lambda rng, shape, dtype: jax.random.normal(
    rng, shape, dtype=dtype))
HUTCHINSON_TYPES.add("exact", None)


def _drift_and_hutchinson_div(drift_fn: DriftFn, x: Array, noise: Array) -> Tuple[Array, Array]:
  """``v(x): [B, ...]`` and ``noise^T (dv/dx) noise: [B]`` in one forward-mode pass.

  Forward mode (``jvp``) gives the drift and ``J noise`` together, at about 2-3 forward passes
  and with the memory of a forward pass: no activations are kept for a backward sweep, so large
  batches fit. The authors' reverse mode (``vjp``, ``noise^T J``) gives the same estimate but
  stores every activation of the network at each evaluation.
  """
  drift, j_noise = jax.jvp(drift_fn, (x,), (noise,))
  return drift, sde_lib.sum_non_batch(noise * j_noise)


def drift_and_exact_div(drift_fn: DriftFn, x: Array) -> Tuple[Array, Array]:
  """``v(x): [B, ...]`` and the exact trace of each example's Jacobian, ``[B]``.

  ``D`` Jacobian-vector products of the batched drift with the coordinate vectors ``e_j`` (the
  same ``j`` for every example) give column ``j`` of every example's Jacobian, assuming the
  examples do not interact (true for a score model in eval mode). ``linearize`` evaluates the
  drift once; memory grows as ``D^2 B``, so this is for small ``D`` (tests, toys).
  """
  batch, dim = x.shape[0], int(np.prod(x.shape[1:]))
  drift, jvp_fn = jax.linearize(drift_fn, x)
  basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, batch, dim))
  columns = jax.vmap(jvp_fn)(basis.reshape((dim,) + x.shape)).reshape(dim, batch, dim)
  return drift, jnp.einsum("jbj->b", columns)


def get_likelihood_fn(sde: sde_lib.SDE, *, hutchinson_type: str = "rademacher",
                      rtol: float = 1e-5, atol: float = 1e-5, method: str = "tsit5",
                      eps: float = 1e-5, bpd_offset: float = 0.0, max_steps: int = 4096,
                      data_shape: Optional[Tuple[int, ...]] = None) -> LikelihoodFn:
  """Builds ``likelihood_fn(rng, score_fn, x) -> (bpd, z, nfe)``.

  Args:
    sde: the forward SDE; its ``reverse(score_fn, probability_flow=True)`` gives the ODE drift
      and its ``prior_logp`` the density at ``T``.
    hutchinson_type: ``'rademacher'`` or ``'gaussian'`` (Hutchinson-Skilling trace estimate with
      one noise vector per solve), or ``'exact'`` (full Jacobian trace; small ``D`` only).
    rtol, atol: tolerances of the PID step-size controller, applied to the joint state
      ``(x, integrated divergence)``. Tolerances for the whole batch are shared (one step size).
    method: an adaptive solver of :data:`ode_solvers.SOLVERS` (``tsit5``, ``dopri5``,
      ``dopri8``, ``bosh3``). ``dopri5``, the authors' RK45, takes fewer evaluations on networks
      at the same tolerances but lands further from the exact answer (``docs/likelihood.md``).
    eps: start time of the ODE; the result is ``log p_eps(x)``, as in the authors' code.
    bpd_offset: added to the bits/dim, e.g. ``dequantization.bits_offset``.
    max_steps: cap on attempted solver steps; a solve that fails returns NaN bits/dim.
    data_shape: if given, ``x.shape[1:]`` must equal it (catches a missing batch dimension).

  Returns:
    ``likelihood_fn(rng, score_fn, x)`` with ``rng`` a PRNG key (unused for ``'exact'``),
    ``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` and ``x: [B, ...]`` data at time ``eps``.
    It returns ``bpd: [B]`` (``-log p_eps(x) / (D ln 2) + bpd_offset`` with
    ``D = prod(x.shape[1:])``; NaN where the solver failed), ``z: [B, ...]`` (the latent at
    ``T``) and ``nfe`` (int scalar), the number of drift evaluations of the solve.

    ``nfe`` is counted from diffrax's statistics as :mod:`ode_solvers` explains (``1 + 6 *
    steps`` for Tsit5). Every evaluation runs the network once (plus its tangent for
    Hutchinson, or ``D`` tangents for ``'exact'``).
  """
  draw_noise = HUTCHINSON_TYPES.get(hutchinson_type)
  if not ode_solvers.SOLVERS.get(method).adaptive:
    raise ValueError(f"The likelihood needs an adaptive ODE solver, one of "
                     f"{', '.join(ode_solvers.adaptive_solver_names())}; got {method!r}.")
  if not 0.0 <= eps < sde.T:
    raise ValueError(f"eps must lie in [0, T={sde.T}), got {eps}.")
  if rtol <= 0 or atol <= 0:
    raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}.")

  def likelihood_fn(rng: Array, score_fn: sde_lib.ScoreFn,
                    x: Array) -> Tuple[Array, Array, Array]:
    _check_data_shape(x, data_shape)
    batch, dim = x.shape[0], int(np.prod(x.shape[1:]))

    def checked_score_fn(y: Array, t: Array) -> Array:
      # Shapes are static, so this costs nothing at run time; it catches a score that would
      # silently broadcast against the drift.
      score = score_fn(y, t)
      if score.shape != y.shape:
        raise ValueError(f"score_fn returned shape {score.shape} for input shape {y.shape}.")
      return score

    ode = sde.reverse(checked_score_fn, probability_flow=True)
    noise = None if draw_noise is None else draw_noise(rng, x.shape, x.dtype)

    def vector_field(t, state):
      y, _ = state
      time = jnp.full((batch,), t, dtype=y.dtype)
      drift_fn = lambda u: ode.sde(u, time)[0]
      if noise is None:
        drift, div = drift_and_exact_div(drift_fn, y)
      else:
        drift, div = _drift_and_hutchinson_div(drift_fn, y, noise)
      return drift, div

    (z, integrated_div), nfe = ode_solvers.solve(
        vector_field, (x, jnp.zeros((batch,), x.dtype)), eps, sde.T, method=method, rtol=rtol,
        atol=atol, max_steps=max_steps)
    logp = sde.prior_logp(z) + integrated_div
    bpd = -logp / (dim * np.log(2.0)) + bpd_offset
    return bpd, z, nfe

  return likelihood_fn


BOUND_TIME_SAMPLINGS = ("importance", "uniform")


def _check_data_shape(x: Array, data_shape: Optional[Tuple[int, ...]]) -> None:
  if x.ndim < 2:
    raise ValueError(f"x must be batch-first, [B, ...] with at least 2 dimensions; got shape "
                     f"{x.shape}. Add a batch dimension, e.g. x[None].")
  if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
    raise ValueError(f"x must have shape [B, *{tuple(data_shape)}], got {x.shape} "
                     "(is the batch dimension missing?).")


def get_bound_draw_fn(sde: sde_lib.SDE, *, eps: float = 1e-5,
                      time_sampling: str = "importance") -> BoundDrawFn:
  """Builds ``draw(rng, score_fn, x) -> nats: [B]``: one unbiased Monte Carlo estimate of the
  module docstring's bound on ``-log p(x)`` for each example of ``x: [B, ...]``.

  The estimate takes one time ``t`` for the integral (from :func:`losses.importance_times`'
  proposal ``q ~ g^2 / std^2``, weighted by ``1 / q(t)``, or uniform on ``[eps, T]``), one
  ``x(T)`` for the prior term and one ``x_eps`` for the decoder; the network runs twice. The
  divergence of the drift is the Hutchinson estimate with a Rademacher vector, exact for the
  affine drifts of every SDE here. Differentiable in ``x`` (a dequantizer trains through it).

  Args:
    sde: the forward SDE (``sde``, ``marginal_prob``, ``prior_logp``).
    eps: the smallest time, ``0 < eps < T``; the decoder bridges ``[0, eps]``.
    time_sampling: ``'importance'`` (the variance of ``g^2 / std^2 ~ 1 / t`` near 0 removed)
      or ``'uniform'``.
  """
  if time_sampling not in BOUND_TIME_SAMPLINGS:
    raise ValueError(f"The bound's time sampling must be one of "
                     f"{', '.join(BOUND_TIME_SAMPLINGS)}, got {time_sampling!r}.")
  if not 0.0 < eps < sde.T:
    raise ValueError(f"The bound needs 0 < eps < T={sde.T} (its decoder bridges [0, eps]), got "
                     f"eps={eps}.")
  proposal = losses.importance_times(sde, eps) if time_sampling == "importance" else None

  def one_draw(rng: Array, score_fn: sde_lib.ScoreFn, x: Array) -> Array:
    batch, dim = x.shape[0], int(np.prod(x.shape[1:]))
    t_rng, z_rng, probe_rng, prior_rng, dec_rng = jax.random.split(rng, 5)
    ones = jnp.ones((batch,), x.dtype)
    # The diffusion term at one time, divided by that time's density.
    if proposal is None:
      t = jax.random.uniform(t_rng, (batch,), x.dtype, eps, sde.T)
    else:
      t = proposal.sample(t_rng, batch).astype(x.dtype)
    mean, std = sde.marginal_prob(x, t)
    z = jax.random.normal(z_rng, x.shape, x.dtype)
    x_t = mean + sde_lib.batch_mul(std, z)
    score = score_fn(x_t, t)
    g = sde.sde(x_t, t)[1]
    probe = jax.random.rademacher(probe_rng, x.shape, dtype=x.dtype)
    div_f = sde_lib.sum_non_batch(probe * jax.jvp(lambda y: sde.sde(y, t)[0], (x_t,),
                                                  (probe,))[1])
    # g^2 (|s + z / std|^2 - |z / std|^2), written so that no 1 / std^2 is formed.
    fisher = sde_lib.sum_non_batch(jnp.square(sde_lib.batch_mul(std, score) + z)
                                   - jnp.square(z))
    if proposal is None:
      integrand = g ** 2 / std ** 2 * fisher - 2.0 * div_f
      diffusion = 0.5 * (sde.T - eps) * integrand
    else:
      # 1 / q(t) = Z std^2 / g^2.
      diffusion = 0.5 * proposal.normalizer * (fisher - 2.0 * std ** 2 / g ** 2 * div_f)
    # The prior term at one x(T).
    mean_end, std_end = sde.marginal_prob(x, sde.T * ones)
    x_end = mean_end + sde_lib.batch_mul(std_end, jax.random.normal(prior_rng, x.shape, x.dtype))
    prior = -sde.prior_logp(x_end)
    # The decoder from one x_eps, minus the entropy of p_0eps(. | x).
    a_eps, std_eps = sde.mean_coeff(eps * ones), sde.marginal_std(eps * ones)
    x_eps = sde_lib.batch_mul(a_eps, x) + sde_lib.batch_mul(
        std_eps, jax.random.normal(dec_rng, x.shape, x.dtype))
    decoded = sde_lib.batch_mul(1.0 / a_eps, x_eps + sde_lib.batch_mul(
        std_eps ** 2, score_fn(x_eps, eps * ones)))
    decoder_std = std_eps / a_eps
    decoder_nll = (0.5 * sde_lib.sum_non_batch(jnp.square(x - decoded)) / decoder_std ** 2
                   + 0.5 * dim * jnp.log(2.0 * np.pi * decoder_std ** 2))
    entropy = 0.5 * dim * (jnp.log(2.0 * np.pi * std_eps ** 2) + 1.0)
    return prior + diffusion + decoder_nll - entropy

  return one_draw


def get_bound_fn(sde: sde_lib.SDE, *, eps: float = 1e-5, num_draws: int = 1000,
                 time_sampling: str = "importance", bpd_offset: float = 0.0,
                 data_shape: Optional[Tuple[int, ...]] = None) -> BoundFn:
  """Builds ``bound_fn(rng, score_fn, x) -> (bpd, stderr)``: the module docstring's bound on
  ``-log p(x)`` in bits/dim, the mean of ``num_draws`` draws of :func:`get_bound_draw_fn`
  (one ``lax.map``, kept ``[num_draws, B]`` for their spread).

  Args:
    sde, eps, time_sampling: as in :func:`get_bound_draw_fn`.
    num_draws: Monte Carlo draws per example.
    bpd_offset: added to the bits/dim (``dequantization.bits_offset``).
    data_shape: if given, ``x.shape[1:]`` must equal it.

  Returns:
    ``bound_fn(rng, score_fn, x: [B, ...])`` -> ``bpd: [B]`` (bits/dim, ``+ bpd_offset``) and
    ``stderr: [B]`` (the draws' standard deviation over ``sqrt(num_draws)``: the Monte Carlo
    standard error of each example's estimate).
  """
  if num_draws < 2:
    raise ValueError(f"num_draws must be >= 2 (its standard error needs two), got {num_draws}.")
  one_draw = get_bound_draw_fn(sde, eps=eps, time_sampling=time_sampling)

  def bound_fn(rng: Array, score_fn: sde_lib.ScoreFn, x: Array) -> Tuple[Array, Array]:
    _check_data_shape(x, data_shape)
    dim = int(np.prod(x.shape[1:]))
    draws = jax.lax.map(lambda key: one_draw(key, score_fn, x),
                        jax.random.split(rng, num_draws))  # [num_draws, B]
    mean, spread = jnp.mean(draws, axis=0), jnp.std(draws, axis=0, ddof=1)
    to_bits = 1.0 / (dim * np.log(2.0))
    return mean * to_bits + bpd_offset, spread / np.sqrt(num_draws) * to_bits

  return bound_fn
