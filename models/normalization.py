"""Normalization layers of the DDPM and NCSN/NCSNv2 networks, for ``x: [B, H, W, C]``.

Statistics are computed in float32 whatever the input dtype and the result is cast back to the
layer's ``dtype``; parameters are float32. Per-channel parameters have shape ``[C]``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_EPS = 1e-5

NORMALIZATIONS = ("GroupNorm", "InstanceNorm", "InstanceNorm++", "VarianceNorm")
CONDITIONAL_NORMALIZATIONS = ("InstanceNorm++",)


def _near_one_init(key: Array, shape: tuple, dtype: Any = jnp.float32) -> Array:
  """``N(1, 0.02^2)``: the NCSN scale initialization (a plain ``1`` would tie all channels)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _instance_stats(x: Array) -> tuple:
  """Per-example, per-channel spatial mean and variance of ``x: [B, H, W, C]``, as ``[B, C]``."""
  return jnp.mean(x, axis=(1, 2)), jnp.var(x, axis=(1, 2))


def _instance_norm_plus(x: Array) -> tuple:
  """Instance-normalized ``x`` and the standardized channel means that InstanceNorm++ adds back.

  Instance normalization removes each channel's spatial mean, so the relative brightness of the
  channels (the colour of an image) is lost; InstanceNorm++ re-injects it as the channel means
  standardized across channels, ``means_plus: [B, C]``.
  """
  means, variances = _instance_stats(x)
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True)
  means_plus = (means - m) / jnp.sqrt(v + _EPS)
  h = (x - means[:, None, None, :]) / jnp.sqrt(variances[:, None, None, :] + _EPS)
  return h, means_plus


class VarianceNorm2d(nn.Module):
  """Divides each channel by its spatial standard deviation (the mean is kept)."""
  bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    channels = x.shape[-1]
    _, variances = _instance_stats(x)
    h = x / jnp.sqrt(variances[:, None, None, :] + _EPS)
    h = h * self.param("scale", _near_one_init, (channels,))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (channels,))
    return h.astype(self.dtype)


class InstanceNorm2d(nn.Module):
  """Instance normalization with a per-channel affine map."""
  bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    channels = x.shape[-1]
    means, variances = _instance_stats(x)
    h = (x - means[:, None, None, :]) / jnp.sqrt(variances[:, None, None, :] + _EPS)
    h = h * self.param("scale", nn.initializers.ones, (channels,))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (channels,))
    return h.astype(self.dtype)


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ (Song & Ermon 2019): ``gamma (IN(x) + alpha means_plus) + beta``."""
  bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    h, means_plus = _instance_norm_plus(x.astype(jnp.float32))
    alpha = self.param("alpha", _near_one_init, (channels,))
    gamma = self.param("gamma", _near_one_init, (channels,))
    h = (h + means_plus[:, None, None, :] * alpha) * gamma
    if self.bias:
      h = h + self.param("beta", nn.initializers.zeros, (channels,))
    return h.astype(self.dtype)


class ConditionalInstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ whose ``gamma, alpha, beta`` are looked up per class (NCSN v1).

  Called as ``norm(x: [B, H, W, C], y: [B])`` with integer-valued class indices ``y`` in
  ``[0, num_classes)`` (floats are rounded). An index outside that range yields NaN, not a
  silently clipped embedding.
  """
  num_classes: int
  bias: bool = True
  dtype: Any = jnp.float32

  def _embedding_init(self, key: Array, shape: tuple, dtype: Any = jnp.float32) -> Array:
    # Columns: gamma and alpha near one, then beta (if any) at zero.
    channels = shape[1] // (3 if self.bias else 2)
    scales = _near_one_init(key, (shape[0], 2 * channels), dtype)
    return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - 2 * channels), dtype)], -1)

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    channels = x.shape[-1]
    h, means_plus = _instance_norm_plus(x.astype(jnp.float32))
    n_params = 3 if self.bias else 2
    table = self.param("embedding", self._embedding_init,
                       (self.num_classes, n_params * channels))
    index = jnp.round(y).astype(jnp.int32)
    per_example = jnp.take(table, index, axis=0, mode="fill", fill_value=jnp.nan)
    gamma, alpha = per_example[:, :channels], per_example[:, channels:2 * channels]
    h = (h + means_plus[:, None, None, :] * alpha[:, None, None, :]) * gamma[:, None, None, :]
    if self.bias:
      h = h + per_example[:, None, None, 2 * channels:]
    return h.astype(self.dtype)


def get_normalization(name: str, conditional: bool = False, num_classes: Optional[int] = None,
                      num_groups: int = 32, dtype: Any = jnp.float32) -> Callable[[], nn.Module]:
  """A factory ``() -> normalization module`` for ``name`` (one of :data:`NORMALIZATIONS`).

  Args:
    name: ``GroupNorm``, ``InstanceNorm``, ``InstanceNorm++`` or ``VarianceNorm``.
    conditional: class-conditional normalization (only ``InstanceNorm++``); the module is then
      called as ``norm(x, y)`` with class indices ``y: [B]``.
    num_classes: number of classes (noise levels) of a conditional normalization.
    num_groups: groups of ``GroupNorm``; the channel count must be a multiple of it.
    dtype: output (computation) dtype; statistics are float32.
  """
  if conditional:
    if name != "InstanceNorm++":
      raise ValueError(f"Conditional normalization {name!r} is not available; valid names are: "
                       f"{', '.join(CONDITIONAL_NORMALIZATIONS)}.")
    if not num_classes or num_classes < 1:
      raise ValueError(f"A conditional normalization needs num_classes >= 1, got {num_classes}.")
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes, dtype=dtype)
  if name == "GroupNorm":
    return functools.partial(nn.GroupNorm, num_groups=num_groups, dtype=dtype,
                             param_dtype=jnp.float32)
  modules = {"InstanceNorm": InstanceNorm2d, "InstanceNorm++": InstanceNorm2dPlus,
             "VarianceNorm": VarianceNorm2d}
  if name not in modules:
    raise ValueError(f"Unknown normalization {name!r}; valid names are: "
                     f"{', '.join(NORMALIZATIONS)}.")
  return functools.partial(modules[name], dtype=dtype)
