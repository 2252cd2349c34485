"""Exact log-likelihoods (bits/dim) through the probability-flow ODE.

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

The ODE takes a plain ``score_fn(x, t)``: discretely trained models are handled by the score
function built for them (``models.utils.get_score_fn(..., continuous=False)`` hands the network
integer noise levels), never by conditioning hard-coded here.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import ode_solvers
import sde_lib
from infra.registry import Registry

Array = jax.Array
LikelihoodFn = Callable[[Array, sde_lib.ScoreFn, Array], Tuple[Array, Array, Array]]
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


def dequantization_offset(centered: bool, num_bits: int = 8) -> float:
  """Bits/dim to add to a model-space bits/dim to report it on dequantized ``num_bits`` data.

  Data were integers ``u in {0, ..., 2^b - 1}^D`` (``b = num_bits``), uniformly dequantized to
  ``w = u + U(0, 1)^D in [0, 2^b]^D``, and then scaled to the model's space
  ``y = lo + (hi - lo) w / 2^b``: ``[lo, hi] = [0, 1]`` (``centered=False``) or ``[-1, 1]``
  (``centered=True``). The map ``w -> y`` is affine with ``|dy/dw| = ((hi - lo) / 2^b)^D``, so

      p_w(w) = p_y(y) ((hi - lo) / 2^b)^D
      -log2 p_w(w) / D = -log2 p_y(y) / D + b - log2(hi - lo),

  i.e. the offset is ``b - log2(hi - lo)``: 8 for ``[0, 1]`` and 7 for ``[-1, 1]`` with 8-bit
  data. With ``w`` uniformly dequantized, Jensen's inequality gives
  ``-log2 P(u) <= E_U[-log2 p_w(u + U)]``, so the result is an upper bound on the discrete
  model's bits/dim -- the number papers report.

  Only valid for uniformly dequantized ``num_bits`` integer data: the continuous density of
  non-dequantized data can concentrate on the ``2^b`` levels, and its bits/dim can then go
  negative and means nothing.

  Returns:
    The offset in bits per dimension.
  """
  if num_bits < 1:
    raise ValueError(f"num_bits must be >= 1, got {num_bits}.")
  width = 2.0 if centered else 1.0
  return float(num_bits - math.log2(width))


def _drift_and_hutchinson_div(drift_fn: DriftFn, x: Array, noise: Array) -> Tuple[Array, Array]:
  """``v(x): [B, ...]`` and ``noise^T (dv/dx) noise: [B]`` in one forward-mode pass.

  Forward mode (``jvp``) gives the drift and ``J noise`` together, at about 2-3 forward passes
  and with the memory of a forward pass: no activations are kept for a backward sweep, so large
  batches fit. The authors' reverse mode (``vjp``, ``noise^T J``) gives the same estimate but
  stores every activation of the network at each evaluation.
  """
  drift, j_noise = jax.jvp(drift_fn, (x,), (noise,))
  return drift, sde_lib.sum_non_batch(noise * j_noise)


def _drift_and_exact_div(drift_fn: DriftFn, x: Array) -> Tuple[Array, Array]:
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
      ``dopri8``, ``bosh3``).
    eps: start time of the ODE; the result is ``log p_eps(x)``, as in the authors' code.
    bpd_offset: added to the bits/dim, e.g. :func:`dequantization_offset`.
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
    if x.ndim < 2:
      raise ValueError(f"x must be batch-first, [B, ...] with at least 2 dimensions; got shape "
                       f"{x.shape}. Add a batch dimension, e.g. x[None].")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
      raise ValueError(f"x must have shape [B, *{tuple(data_shape)}], got {x.shape} "
                       "(is the batch dimension missing?).")
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
        drift, div = _drift_and_exact_div(drift_fn, y)
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
