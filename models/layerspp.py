"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, appendix H): Fourier noise embedding,
skip combiners, self-attention, (FIR) resamplers and the DDPM / BigGAN residual blocks.

All blocks take ``x: [B, H, W, C]`` and compute in ``dtype`` (parameters and normalization
statistics stay float32). GroupNorm uses ``min(C // 4, 32)`` groups, as the authors did.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models import normalization
from models import up_or_down_sampling as updown

Array = jax.Array
Activation = Callable[[Array], Array]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def group_norm(channels: int, dtype: Any) -> normalization.GroupNorm:
  """The authors' GroupNorm for ``channels`` feature maps (eps 1e-6, float32 statistics);
  called as ``norm(x, act)`` it applies the activation too, in the same pass."""
  return normalization.GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6, dtype=dtype)


def residual_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
  # Rescaling by 1/sqrt(2) keeps the variance of the residual stream from growing with depth.
  return (x + h) * _INV_SQRT2 if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar: ``x: [B] -> [B, 2 * embedding_size]`` (float32).

  The frequencies ``W ~ N(0, scale^2)`` are stored as a parameter (as the authors did, so
  checkpoints carry them) but never trained: gradients are stopped. The features are computed in
  float32 whatever the model's dtype, since ``2 pi W x`` reaches hundreds of radians.
  """
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    W = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    proj = x.astype(jnp.float32)[:, None] * W[None, :] * (2 * math.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
  """Merges a pyramid image ``x`` into features ``y``: 1x1 conv of ``x`` to ``y``'s channels,
  then ``'sum'`` (``[..., C_y]``) or ``'cat'`` (``[..., 2 C_y]``)."""
  method: str = "cat"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    h = layers.ddpm_conv1x1(y.shape[-1], dtype=self.dtype)(x)
    if self.method == "cat":
      return jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
    if self.method == "sum":
      return h + y
    raise ValueError(f"Unknown combine method {self.method!r}; valid: 'cat', 'sum'.")


class AttnBlockpp(nn.Module):
  """Single-head self-attention over all ``H W`` positions (DDPM's block), residual output."""
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    B, H, W, C = x.shape
    h = group_norm(C, self.dtype)(x)
    q = layers.NIN(C, dtype=self.dtype)(h).reshape(B, H * W, C)
    k = layers.NIN(C, dtype=self.dtype)(h).reshape(B, H * W, C)
    v = layers.NIN(C, dtype=self.dtype)(h).reshape(B, H * W, C)
    # Logits and softmax in float32: bf16 logits over HW positions lose the small differences.
    logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) * C ** -0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", weights, v).reshape(B, H, W, C)
    h = layers.NIN(C, init_scale=self.init_scale, dtype=self.dtype)(h)
    return residual_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """``[B, H, W, C] -> [B, 2H, 2W, out_ch]``: nearest (+ 3x3 conv) or FIR (+ fused 3x3 conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError("Upsample without a convolution cannot change the channel count.")
    if self.fir:
      if self.with_conv:
        return updown.Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel,
                             kernel_init=layers.default_init(), dtype=self.dtype)(x)
      return updown.upsample_2d(x, self.fir_kernel, factor=2)
    h = updown.naive_upsample_2d(x, factor=2)
    if self.with_conv:
      h = layers.ddpm_conv3x3(out_ch, dtype=self.dtype)(h)
    return h


class Downsample(nn.Module):
  """``[B, H, W, C] -> [B, H/2, W/2, out_ch]``: average pool / strided 3x3 conv, or FIR
  (+ fused 3x3 conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError("Downsample without a convolution cannot change the channel count.")
    if self.fir:
      if self.with_conv:
        return updown.Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel,
                             kernel_init=layers.default_init(), dtype=self.dtype)(x)
      return updown.downsample_2d(x, self.fir_kernel, factor=2)
    if self.with_conv:
      # 'SAME' with stride 2 pads one pixel at the bottom/right only (TF/Flax convention).
      return layers.ddpm_conv3x3(out_ch, stride=2, dtype=self.dtype)(x)
    return updown.naive_downsample_2d(x, factor=2)


def _add_time_bias(h: Array, temb: Optional[Array], act: Activation, dtype: Any) -> Array:
  """Adds a per-channel bias projected from the conditioning embedding ``temb: [B, E]``."""
  if temb is None:
    return h
  bias = nn.Dense(h.shape[-1], kernel_init=layers.default_init(), dtype=dtype)(act(temb))
  return h + bias[:, None, None, :]


class ResnetBlockDDPMpp(nn.Module):
  """DDPM's residual block: GN-act-conv, + time bias, GN-act-dropout-conv (init ``init_scale``);
  the shortcut is a NIN when the channel count changes. ``[B, H, W, C] -> [B, H, W, out_ch]``."""
  act: Activation
  out_ch: Optional[int] = None
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = group_norm(C, self.dtype)(x, self.act)
    h = layers.ddpm_conv3x3(out_ch, dtype=self.dtype)(h)
    h = _add_time_bias(h, temb, self.act, self.dtype)
    h = group_norm(out_ch, self.dtype)(h, self.act)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = layers.ddpm_conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype)(h)
    if C != out_ch:
      x = layers.NIN(out_ch, dtype=self.dtype)(x)
    return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN's residual block, optionally resampling by 2 (``up`` or ``down``) on both paths
  after the first GN-act: ``[B, H, W, C] -> [B, H', W', out_ch]``; the shortcut is a 1x1 conv
  whenever the shape changes."""
  act: Activation
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  dtype: Any = jnp.float32

  def _resample(self, x: Array) -> Array:
    if self.up:
      if self.fir:
        return updown.upsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_upsample_2d(x, factor=2)
    if self.down:
      if self.fir:
        return updown.downsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_downsample_2d(x, factor=2)
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    if self.up and self.down:
      raise ValueError("A residual block cannot both upsample and downsample.")
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = group_norm(C, self.dtype)(x, self.act)
    h = self._resample(h)
    x = self._resample(x)
    h = layers.ddpm_conv3x3(out_ch, dtype=self.dtype)(h)
    h = _add_time_bias(h, temb, self.act, self.dtype)
    h = group_norm(out_ch, self.dtype)(h, self.act)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = layers.ddpm_conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype)(h)
    if C != out_ch or self.up or self.down:
      x = layers.ddpm_conv1x1(out_ch, dtype=self.dtype)(x)
    return residual_sum(x, h, self.skip_rescale)
