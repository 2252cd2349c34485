"""A time-conditioned residual MLP for vector (2-D toy) data ``x: [B, D]``."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from models import layers
from models.utils import register_model


@register_model("toy_mlp")
class ToyMLP(nn.Module):
  """``[B, D] x labels [B] -> [B, D]``: sinusoidal label embedding, ``num_blocks`` residual
  blocks of width ``nf`` with the embedding added in each block.

  With ``num_classes = K > 0`` the network is also class-conditional: ``class_labels: [B]`` in
  ``0 .. K`` select a learned embedding added to the noise-level embedding, ``K`` (the default
  when ``class_labels`` is None) being the null label of the unconditional model that
  classifier-free guidance trains by label dropout. ``num_classes = 0`` is the unconditional
  network, with the same parameters as before classes existed.
  """
  nf: int = 128
  num_blocks: int = 3
  act: str = "swish"
  embedding_scale: float = 1.0
  scale_by_sigma: bool = False
  num_classes: int = 0
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ToyMLP":
    model = config.model
    return cls(nf=model.nf, num_blocks=model.num_blocks, act=model.get("nonlinearity", "swish"),
               embedding_scale=model.get("embedding_scale", 1.0),
               scale_by_sigma=model.get("scale_by_sigma", False),
               num_classes=model.get("num_classes", 0))

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False,
               class_labels: Optional[jax.Array] = None) -> jax.Array:
    act = layers.get_act(self.act)
    temb = layers.get_timestep_embedding(labels * self.embedding_scale, self.nf)
    temb = nn.Dense(self.nf, dtype=self.dtype)(act(nn.Dense(self.nf, dtype=self.dtype)(temb)))
    layers.check_class_labels(self.num_classes, class_labels)
    if self.num_classes:
      temb = temb + layers.ClassEmbedding(self.num_classes, self.nf, dtype=self.dtype)(
          class_labels, x.shape[0])
    h = nn.Dense(self.nf, dtype=self.dtype)(x)
    for _ in range(self.num_blocks):
      residual = nn.Dense(self.nf, dtype=self.dtype)(act(h) + temb)
      h = h + nn.Dense(self.nf, dtype=self.dtype, kernel_init=nn.initializers.zeros)(act(residual))
    return nn.Dense(x.shape[-1], dtype=self.dtype)(act(h)).astype(jnp.float32)
