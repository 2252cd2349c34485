"""A time-conditioned residual MLP for vector (2-D toy) data ``x: [B, D]``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from models import layers
from models.utils import register_model


@register_model("toy_mlp")
class ToyMLP(nn.Module):
  """``[B, D] x labels [B] -> [B, D]``: sinusoidal label embedding, ``num_blocks`` residual
  blocks of width ``nf`` with the embedding added in each block."""
  nf: int = 128
  num_blocks: int = 3
  act: str = "swish"
  embedding_scale: float = 1.0
  scale_by_sigma: bool = False
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ToyMLP":
    model = config.model
    return cls(nf=model.nf, num_blocks=model.num_blocks, act=model.get("nonlinearity", "swish"),
               embedding_scale=model.get("embedding_scale", 1.0),
               scale_by_sigma=model.get("scale_by_sigma", False))

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    act = layers.get_act(self.act)
    temb = layers.get_timestep_embedding(labels * self.embedding_scale, self.nf)
    temb = nn.Dense(self.nf, dtype=self.dtype)(act(nn.Dense(self.nf, dtype=self.dtype)(temb)))
    h = nn.Dense(self.nf, dtype=self.dtype)(x)
    for _ in range(self.num_blocks):
      residual = nn.Dense(self.nf, dtype=self.dtype)(act(h) + temb)
      h = h + nn.Dense(self.nf, dtype=self.dtype, kernel_init=nn.initializers.zeros)(act(residual))
    return nn.Dense(x.shape[-1], dtype=self.dtype)(act(h)).astype(jnp.float32)
