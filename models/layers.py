"""Shared building blocks of the score networks (DDPM-style convolutions, inits, embeddings)."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def get_act(name: str) -> Callable[[jax.Array], jax.Array]:
  """Activation by name: ``elu``, ``relu``, ``lrelu`` (slope 0.2), ``swish``/``silu``."""
  acts = {
      "elu": nn.elu,
      "relu": nn.relu,
      "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
      "swish": nn.swish,
      "silu": nn.swish,
  }
  if name.lower() not in acts:
    raise ValueError(f"Unknown activation {name!r}; valid names are: {', '.join(sorted(acts))}.")
  return acts[name.lower()]


def default_init(scale: float = 1.0) -> Initializer:
  """DDPM's variance-scaling init (fan_avg, uniform); ``scale == 0`` means 1e-10."""
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def ddpm_conv1x1(out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Conv:
  """1x1 convolution with DDPM initialization."""
  return nn.Conv(out_planes, (1, 1), strides=(stride, stride), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype)


def ddpm_conv3x3(out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Conv:
  """3x3 'SAME' convolution with DDPM initialization."""
  return nn.Conv(out_planes, (3, 3), strides=(stride, stride), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype)


class NIN(nn.Module):
  """Network-in-network: a per-pixel dense layer over the channel axis, ``[..., C] -> [..., num_units]``."""
  num_units: int
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_dim = x.shape[-1]
    W = self.param("W", default_init(self.init_scale), (in_dim, self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    y = jnp.einsum("...c,cu->...u", x.astype(self.dtype), W.astype(self.dtype))
    return y + b.astype(self.dtype)


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                           max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of ``timesteps: [B]`` (any real values) as ``[B, embedding_dim]``."""
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [B], got {timesteps.shape}.")
  half_dim = embedding_dim // 2
  scale = math.log(max_positions) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -scale)
  emb = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb
