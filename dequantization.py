"""Dequantization: discrete images as inputs of a continuous density, and bits/dim of the
discrete data on their own integer scale.

Images are integers ``v in {0, ..., L - 1}^D``, ``L = 2^num_bits`` levels, stored in data space as
``v / (L - 1)`` in [0, 1] and scaled to the model's space by ``datasets.data_scalers``
(``[lo, hi] = [0, 1]``, or ``[-1, 1]`` with ``data.centered``). A continuous density ``p`` is
evaluated at ``y = lo + (hi - lo) (v + u) / L`` with ``u in [0, 1)^D`` drawn from ``q(u | v)``:

* ``'uniform'``: ``q = U[0, 1)^D``;
* ``'variational'``: a learned conditional flow (``models.dequantizer``; Ho et al.'s Flow++,
  trained to maximise the bound as Song et al.'s ScoreFlow did);
* ``'none'``: no noise, the density at the grid points ``y = lo + (hi - lo) v / (L - 1)``
  themselves. That is the continuous density of continuous data (the toys); for images it can
  exceed any discrete probability and its bits/dim can go negative: it bounds nothing.

With dequantization, Jensen's inequality gives the bound reported as bits/dim,

    -log2 P(v) <= E_q[-log2 p_w(v + u) + log2 q(u | v)],
    p_w(w) = p(y) ((hi - lo) / L)^D,

so in bits per dimension the model-space value gets :func:`bits_offset`,
``num_bits - log2(hi - lo)``: 8 for 8-bit data in [0, 1], 7 in [-1, 1], 4 for 5-bit data in
[-1, 1]. Every reported number is thus on the integer scale of ``L`` levels, whatever the data's
scaling. For ``'none'`` the same change of variables is made from ``v / (L - 1)``, offset
``log2(L - 1) - log2(hi - lo)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
Flow = Callable[[Array, Array], Tuple[Array, Array]]
"""``flow(u0, x) -> (u, log q(u | x): [B])``: a variational dequantizer with its parameters bound
(``functools.partial(models.dequantizer.Dequantizer().apply, params)``)."""
KINDS = ("none", "uniform", "variational")

# Uniform noise is drawn in [TINY, 1 - TINY]: the flow works on logit(u), finite there. The
# density of the clipped draw differs from U[0, 1) by at most 2e-6 per dimension.
TINY = 1e-6


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"eval.dequantization must be one of {', '.join(KINDS)}, got {kind!r}.")


def check_num_bits(num_bits: int) -> None:
  if not 1 <= num_bits <= 8:
    raise ValueError(f"data.num_bits must be in 1..8 (images are stored as 8-bit), got "
                     f"{num_bits}.")


def num_levels(num_bits: int) -> int:
  """``L = 2^num_bits``."""
  check_num_bits(num_bits)
  return 2 ** int(num_bits)


def bits_offset(kind: str, centered: bool, num_bits: int = 8) -> float:
  """Bits/dim added to a model-space bits/dim to state it on the integer scale of ``2^num_bits``
  levels (module docstring); ``centered``: the model's space is [-1, 1], else [0, 1]."""
  check_kind(kind)
  levels = num_levels(num_bits)
  width = 2.0 if centered else 1.0
  scale = levels - 1 if kind == "none" else levels
  return float(math.log2(scale) - math.log2(width))


def to_levels(images: Array, num_bits: int) -> Array:
  """Data-space images ``v / (L - 1)`` -> the integers ``v`` (as floats), rounded."""
  return jnp.round(images * (num_levels(num_bits) - 1))


def uniform_noise(rng: Array, shape: Tuple[int, ...], dtype=jnp.float32) -> Array:
  """``u ~ U[TINY, 1 - TINY]^shape``: uniform dequantization's noise."""
  return jax.random.uniform(rng, shape, dtype, TINY, 1.0 - TINY)


def dequantized(levels: Array, u: Array, num_bits: int) -> Array:
  """``(v + u) / L``: the dequantized image in data space, [0, 1)."""
  return (levels + u) / num_levels(num_bits)


def dequantize(rng: Array, images: Array, *, kind: str, num_bits: int,
               scaler: Callable[[Array], Array], flow: Optional[Flow] = None
               ) -> Tuple[Array, Array]:
  """Data-space ``images: [B, ...]`` (``v / (L - 1)``) -> ``(y, log_q)``: the model-space points
  a density is evaluated at (``scaler`` maps data to model space) and ``log q(u | v): [B]``
  (nats), for ``kind`` of :data:`KINDS` (``'variational'`` needs ``flow``, which gets the noise
  and the model-space image)."""
  check_kind(kind)
  no_log_q = jnp.zeros((images.shape[0],), jnp.float32)
  if kind == "none":
    return scaler(images), no_log_q
  levels = to_levels(images, num_bits)
  u = uniform_noise(rng, images.shape)
  if kind == "uniform":
    return scaler(dequantized(levels, u, num_bits)), no_log_q
  if flow is None:
    raise ValueError("Variational dequantization needs its flow (a trained dequantizer).")
  u, log_q = flow(u, scaler(images))
  return scaler(dequantized(levels, u, num_bits)), log_q


def get_loss_fn(dequantizer: Any, nll_fn: Callable[[Array, Array], Array], *, num_bits: int,
                scaler: Callable[[Array], Array], offset: float
                ) -> Callable[[Any, Array, Array], Tuple[Array, Dict[str, Array]]]:
  """The variational dequantizer's objective, ``loss_fn(params, rng, images) -> (bits/dim,
  {'log_q': mean log q in bits/dim})``: the batch mean of

      (nll_fn(rng, y) + log q(u | v)) / (D ln 2) + offset,   (y, log q) from :func:`dequantize`,

  the bound on ``-log2 P(v) / D`` that training minimises over the flow's parameters.

  Args:
    dequantizer: the flow's module (``models.dequantizer.Dequantizer``).
    nll_fn: ``nll_fn(rng, y: [B, ...]) -> [B]`` nats, an unbiased estimate of (or a bound on) the
      model's ``-log p(y)``, differentiable in ``y`` (``likelihood.get_bound_draw_fn`` with the
      score model's parameters bound).
    num_bits, scaler: the data's bits and data -> model space.
    offset: ``bits_offset('variational', ...)``.
  """

  def loss_fn(params: Any, rng: Array, images: Array) -> Tuple[Array, Dict[str, Array]]:
    dq_rng, nll_rng = jax.random.split(rng)
    y, log_q = dequantize(dq_rng, images, kind="variational", num_bits=num_bits, scaler=scaler,
                          flow=functools.partial(dequantizer.apply, params))
    to_bits = 1.0 / (math.prod(images.shape[1:]) * math.log(2.0))
    bits = (nll_fn(nll_rng, y) + log_q) * to_bits + offset
    return jnp.mean(bits), {"log_q": jnp.mean(log_q) * to_bits}

  return loss_fn
