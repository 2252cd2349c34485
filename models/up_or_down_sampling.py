"""FIR up/down-sampling of NHWC images (StyleGAN2's ``upfirdn``), built from XLA convolutions.

``upfirdn_2d`` is one depthwise ``lax.conv_general_dilated``: zero insertion is the input
dilation, padding is the convolution padding and dropping pixels is the window stride. The FIR
filter is a constant depthwise kernel cast to the input's dtype, so every op here runs in
bfloat16 as well as float32 and lowers to a (grouped) convolution on GPU -- no gathers, no
Python loops over pixels.

Conventions follow StyleGAN2: a 1-D filter ``k`` means the separable ``outer(k, k)``; filters
are normalized to sum to one and scaled by ``gain * factor**2`` when upsampling, so a constant
image stays constant (times ``gain``) away from the borders; pixels outside the image are zero.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[Any]) -> np.ndarray:
  """``k``: ``[n]`` (separable) or ``[n, n]`` taps -> square ``[n, n]`` filter summing to one."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR filter must be 1-D or square 2-D, got shape {k.shape}.")
  total = k.sum()
  if total == 0:
    raise ValueError("FIR filter taps sum to zero; cannot normalize.")
  return (k / total).astype(np.float32)


def upfirdn_2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0,
               pad1: int = 0) -> Array:
  """Upsample by zero insertion, pad, convolve with the FIR filter ``k``, keep every ``down``-th.

  Same as scipy's ``upfirdn`` applied per channel along H then W (for separable ``k``):
  ``x: [B, H, W, C]``, ``k: [n, n]`` -> ``[B, (H*up + pad0 + pad1 - n) // down + 1, ..., C]``
  in ``x.dtype``. Pads must be non-negative.
  """
  if min(up, down) < 1 or min(pad0, pad1) < 0:
    raise ValueError(f"Need up, down >= 1 and pads >= 0; got {up}, {down}, {pad0}, {pad1}.")
  channels = x.shape[-1]
  # lax convolutions are correlations: flip the filter to convolve.
  taps = np.ascontiguousarray(k[::-1, ::-1])
  kernel = jnp.asarray(np.tile(taps[:, :, None, None], (1, 1, 1, channels)), dtype=x.dtype)
  # Input dilation yields H*up - (up - 1) samples; upfirdn's zero insertion also trails the last
  # pixel with up - 1 zeros, which the extra end padding restores.
  pad = (pad0, pad1 + up - 1)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(down, down), padding=(pad, pad), lhs_dilation=(up, up),
      dimension_numbers=_DIMS, feature_group_count=channels)


def upsample_2d(x: Array, k: Optional[Sequence[Any]] = None, factor: int = 2,
                gain: float = 1.0) -> Array:
  """``[B, H, W, C] -> [B, H*factor, W*factor, C]`` with FIR filter ``k`` (default: nearest)."""
  kernel = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = kernel.shape[0] - factor
  return upfirdn_2d(x, kernel, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Optional[Sequence[Any]] = None, factor: int = 2,
                  gain: float = 1.0) -> Array:
  """``[B, H, W, C] -> [B, H//factor, W//factor, C]`` with FIR filter ``k`` (default: box)."""
  kernel = setup_kernel([1] * factor if k is None else k) * gain
  p = kernel.shape[0] - factor
  return upfirdn_2d(x, kernel, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling ``[B, H, W, C] -> [B, H*factor, W*factor, C]``."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Average pooling over ``factor x factor`` blocks: ``[B, H, W, C] -> [B, H/f, W/f, C]``."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  return x.mean(axis=(2, 4))


def upsample_conv_2d(x: Array, w: Array, k: Optional[Sequence[Any]] = None, factor: int = 2,
                     gain: float = 1.0) -> Array:
  """Fused zero-insertion upsampling, convolution with ``w: [n, n, C, O]`` and FIR filtering.

  A transposed convolution (stride ``factor``, full output) followed by one FIR pass that crops
  back to ``[B, H*factor, W*factor, O]``; padding happens once, as in StyleGAN2, so the result
  differs from ``conv(upsample_2d(x))`` only within a few pixels of the border.
  """
  conv_size = w.shape[0]
  kernel = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = (kernel.shape[0] - factor) - (conv_size - 1)
  full = (conv_size - 1, conv_size - 1)
  x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=(full, full),
                                   lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
  return upfirdn_2d(x, kernel, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: Array, w: Array, k: Optional[Sequence[Any]] = None, factor: int = 2,
                       gain: float = 1.0) -> Array:
  """Fused FIR filtering and strided convolution with ``w: [n, n, C, O]``.

  ``x: [B, H, W, C] -> [B, H // factor, W // factor, O]``.
  """
  conv_size = w.shape[0]
  kernel = setup_kernel([1] * factor if k is None else k) * gain
  p = (kernel.shape[0] - factor) + (conv_size - 1)
  x = upfirdn_2d(x, kernel, pad0=(p + 1) // 2, pad1=p // 2)
  return jax.lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                      dimension_numbers=_DIMS)


class Conv2d(nn.Module):
  """Square convolution with optional fused FIR up- or down-sampling by 2 (StyleGAN2's ``Conv2d``).

  ``[B, H, W, C] -> [B, H', W', fmaps]`` with ``H' = 2H`` (up), ``H // 2`` (down) or ``H``.
  Parameters ``weight: [kernel, kernel, C, fmaps]`` and ``bias: [fmaps]`` stay float32; the
  computation runs in ``dtype``.
  """
  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.up and self.down:
      raise ValueError("Conv2d cannot both upsample and downsample.")
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f"Conv2d needs an odd kernel size, got {self.kernel}.")
    w = self.param("weight", self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
    x, w = x.astype(self.dtype), w.astype(self.dtype)
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                       dimension_numbers=_DIMS)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.fmaps,))
      x = x + b.astype(self.dtype)
    return x
