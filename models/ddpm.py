"""The DDPM U-Net (Ho et al. 2020), as used by Song et al. 2021 for DDPM/SMLD/VP/sub-VP training.

``[B, H, W, C] x labels [B] -> [B, H, W, C]``. With a VP/sub-VP SDE the output predicts the noise;
with SMLD (``scale_by_sigma``) it is a score times sigma (see ``models.utils.get_score_fn``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from models import layers, normalization
from models.utils import register_model


@register_model("ddpm")
class DDPM(nn.Module):
  """U-Net with ``len(ch_mult)`` resolutions, ``num_res_blocks`` residual blocks per resolution,
  self-attention at the resolutions in ``attn_resolutions``, and a sinusoidal embedding of the
  labels added in every residual block (when ``conditional``).

  ``H`` and ``W`` must be multiples of ``2 ** (len(ch_mult) - 1)``. Inputs in ``[0, 1]``
  (``centered=False``) are mapped to ``[-1, 1]`` first.
  """
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  nonlinearity: str = "swish"
  normalization: str = "GroupNorm"
  num_groups: int = 32
  centered: bool = False
  scale_by_sigma: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    # Fail on a bad option when the model is built, not deep inside tracing.
    layers.get_act(self.nonlinearity)
    normalization.get_normalization(self.normalization)
    if not self.ch_mult or self.num_res_blocks < 1 or self.nf < 1:
      raise ValueError("DDPM needs nf >= 1, a non-empty ch_mult and num_res_blocks >= 1, got "
                       f"nf={self.nf}, ch_mult={self.ch_mult}, "
                       f"num_res_blocks={self.num_res_blocks}.")
    if self.normalization == "GroupNorm" and self.nf % self.num_groups:
      raise ValueError(f"GroupNorm with {self.num_groups} groups needs nf divisible by it, got "
                       f"nf={self.nf}.")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DDPM":
    model = config.model
    return cls(nf=model.nf, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
               attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
               resamp_with_conv=model.resamp_with_conv, conditional=model.conditional,
               nonlinearity=model.nonlinearity, normalization=model.normalization,
               num_groups=model.get("num_groups", 32), centered=config.data.centered,
               scale_by_sigma=model.scale_by_sigma)

  def _check_input(self, x: jax.Array, labels: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"DDPM expects images [B, H, W, C], got shape {x.shape}.")
    factor = 2 ** (len(self.ch_mult) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"DDPM with {len(self.ch_mult)} resolutions needs H and W divisible by "
                       f"{factor}, got {x.shape[1]}x{x.shape[2]}.")
    if labels.shape != x.shape[:1]:
      raise ValueError(f"labels must have shape [B] = {x.shape[:1]}, got {labels.shape}.")

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    """``x: [B, H, W, C]``, ``labels: [B]`` (time steps or noise levels) -> float32 ``x``-shaped."""
    self._check_input(x, labels)
    act = layers.get_act(self.nonlinearity)
    normalize = normalization.get_normalization(self.normalization, num_groups=self.num_groups,
                                                dtype=self.dtype)
    nf, dtype = self.nf, self.dtype
    num_resolutions = len(self.ch_mult)

    def resnet_block(h, out_ch=None):
      return layers.ResnetBlockDDPM(act=act, normalize=normalize, out_ch=out_ch,
                                    dropout=self.dropout, dtype=dtype)(h, temb, train)

    def attn_block(h):
      return layers.AttnBlock(normalize=normalize, dtype=dtype)(h)

    if self.conditional:
      temb = layers.get_timestep_embedding(labels, nf)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init(), dtype=dtype)(temb)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init(), dtype=dtype)(act(temb))
    else:
      temb = None

    h = x if self.centered else 2 * x - 1.0
    h = h.astype(dtype)

    # Downsampling path; every intermediate map is kept for a skip connection.
    hs = [layers.ddpm_conv3x3(nf, dtype=dtype)(h)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resnet_block(hs[-1], nf * self.ch_mult[i_level])
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dtype)(hs[-1]))

    h = resnet_block(hs[-1])
    h = attn_block(h)
    h = resnet_block(h)

    # Upsampling path: one more block per level than going down, to consume the downsample skips.
    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = resnet_block(jnp.concatenate([h, hs.pop()], axis=-1), nf * self.ch_mult[i_level])
      if h.shape[1] in self.attn_resolutions:
        h = attn_block(h)
      if i_level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dtype)(h)

    h = act(normalize()(h))
    h = layers.ddpm_conv3x3(x.shape[-1], init_scale=0.0, dtype=dtype)(h)
    return h.astype(jnp.float32)
