"""The variational dequantizer ``q(u | v)``: a conditional flow on ``(0, 1)^D``, uniform at start.

A draw: ``u0 ~ U(0, 1)^D``, ``z = logit(u0)``, ``num_couplings`` affine coupling layers on ``z``
(checkerboard masks of alternating parity; each layer's scale and shift come from a small
convolutional network of the other half of ``z`` and of features of the image ``v``), then
``u = sigmoid(z)``. Every map is a bijection of known Jacobian, so

    log q(u | v) = -sum log |du / du0|
                 = -sum [log sigmoid'(z_K) - log sigmoid'(z_0) + sum_k s_k].

The last convolution of every coupling starts at zero, so a fresh dequantizer is the identity
``u = u0``: exactly uniform dequantization, ``log q = 0``. Training (``--mode
train_dequantizer``) can only start from uniform's bound and move down.
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dequantization import TINY

Array = jax.Array


def checkerboard(height: int, width: int, parity: int) -> Array:
  """``[1, H, W, 1]`` mask, 1 where ``(i + j + parity)`` is even."""
  i, j = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return ((i + j + parity) % 2 == 0).astype(jnp.float32)[None, :, :, None]


def _log_sigmoid_derivative(z: Array) -> Array:
  """``log sigmoid'(z) = log sigmoid(z) + log sigmoid(-z)``, stable for large ``|z|``."""
  return jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)


class Coupling(nn.Module):
  """``z <- mask z + (1 - mask) (z exp(s) + b)``, ``(s, b)`` from ``mask z`` and the features;
  ``s = tanh(.)`` keeps each layer's scale within ``[1/e, e]``."""
  hidden: int
  parity: int

  @nn.compact
  def __call__(self, z: Array, features: Array) -> Tuple[Array, Array]:
    mask = checkerboard(z.shape[1], z.shape[2], self.parity)
    h = jnp.concatenate([z * mask, features], axis=-1)
    h = nn.swish(nn.Conv(self.hidden, (3, 3))(h))
    h = nn.swish(nn.Conv(self.hidden, (3, 3))(h))
    out = nn.Conv(2 * z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
    scale, shift = jnp.split(out, 2, axis=-1)
    scale = jnp.tanh(scale) * (1.0 - mask)
    z = z * mask + (1.0 - mask) * (z * jnp.exp(scale) + shift)
    return z, jnp.sum(scale, axis=(1, 2, 3))


class Dequantizer(nn.Module):
  """``(u0: [B, H, W, C] uniform, x: [B, H, W, C] the image in model space) -> (u, log q(u | x):
  [B])`` (module docstring).

  Attributes:
    hidden: channels of the convolutions.
    num_couplings: coupling layers (alternating checkerboard parity).
  """
  hidden: int = 32
  num_couplings: int = 4

  @nn.compact
  def __call__(self, u0: Array, x: Array) -> Tuple[Array, Array]:
    if u0.ndim != 4 or u0.shape != x.shape:
      raise ValueError(f"The dequantizer takes images [B, H, W, C] and noise of the same shape; "
                       f"got {x.shape} and {u0.shape}.")
    features = nn.swish(nn.Conv(self.hidden, (3, 3))(x))
    features = nn.swish(nn.Conv(self.hidden, (3, 3))(features))
    u0 = jnp.clip(u0, TINY, 1.0 - TINY)
    z = jnp.log(u0) - jnp.log1p(-u0)
    log_det = -jnp.sum(_log_sigmoid_derivative(z), axis=(1, 2, 3))
    for k in range(self.num_couplings):
      z, log_scale = Coupling(self.hidden, parity=k % 2)(z, features)
      log_det = log_det + log_scale
    log_det = log_det + jnp.sum(_log_sigmoid_derivative(z), axis=(1, 2, 3))
    return jax.nn.sigmoid(z), -log_det
