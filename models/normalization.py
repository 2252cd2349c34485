"""Normalization layers of the score networks, for ``x: [B, H, W, C]``.

Statistics are computed in float32 whatever the input dtype and the result is cast back to the
layer's ``dtype``; parameters are float32. Per-channel parameters have shape ``[C]``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import ad_checkpoint

Array = jax.Array
Activation = Callable[[Array], Array]
_EPS = 1e-5
_STATISTICS = "group_norm_statistics"

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


def _per_group(per_channel: Array, num_groups: int) -> Array:
  """``[B, C] -> [B, G]``: sums over the channels of each group."""
  batch, channels = per_channel.shape
  return per_channel.reshape(batch, num_groups, channels // num_groups).sum(-1)


def _group_stats(x: Array, num_groups: int) -> Tuple[Array, Array]:
  """Per-example, per-group mean and variance of ``x: [B, ..., C]``.

  Returns ``(mean, var)``, each ``[B, G]`` float32, with ``var = E[x^2] - E[x]^2`` clipped at 0
  (``flax.linen.GroupNorm``'s default "fast variance"). The sums are taken per channel first:
  two reductions over space, the tensor-sized work, then small sums over each group's channels.
  """
  spatial = tuple(range(1, x.ndim - 1))
  count = x.size // (x.shape[0] * num_groups)
  mean = _per_group(jnp.sum(x, axis=spatial), num_groups) / count
  mean_sq = _per_group(jnp.sum(jnp.square(x), axis=spatial), num_groups) / count
  return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def group_norm(x: Array, scale: Array, bias: Array, num_groups: int, epsilon: float,
               act: Optional[Activation], dtype: Any) -> Array:
  """``act(GroupNorm(x))`` for ``x: [B, ..., C]``, normalizing over all but the batch axis.

  Args:
    x: input; statistics and the affine map are computed in float32.
    scale, bias: per-channel affine parameters, ``[C]``.
    num_groups: groups of channels sharing statistics; must divide ``C``.
    epsilon: added to the variance.
    act: an elementwise activation applied to the result in ``dtype``, or None.
    dtype: dtype of the result.

  The same function as ``act(flax.linen.GroupNorm(num_groups, epsilon, dtype=dtype)(x))`` to
  float32 round-off, in fewer passes over memory. After the statistics (two reductions) the
  whole map is ``act(x * a + b)`` with per-example, per-channel ``a, b: [B, C]``, so its
  derivative is two more reductions and ``dx = dy * a + x * c + d`` with ``[B, C]``
  coefficients again. On a CPU, where each elementwise pass is a trip through memory,
  differentiation keeps only ``x`` and the ``[B, G]`` statistics and recomputes the one
  elementwise pass, where autodiff of flax's layer stores the normalized map and the
  activation's intermediates: a DDPM++ training step is faster and needs a third less memory.
  Elsewhere (XLA:GPU fuses the stored form into fewer kernels) it stores as autodiff does.
  """

  def normalize(x, scale, bias):
    x32 = x.astype(jnp.float32)
    mean, var = _group_stats(x32, num_groups)
    mean = ad_checkpoint.checkpoint_name(mean, _STATISTICS)
    rstd = ad_checkpoint.checkpoint_name(jax.lax.rsqrt(var + epsilon), _STATISTICS)
    group_size = x.shape[-1] // num_groups
    a = jnp.repeat(rstd, group_size, axis=1) * scale
    b = bias - jnp.repeat(mean, group_size, axis=1) * a
    shape = x.shape[:1] + (1,) * (x.ndim - 2) + x.shape[-1:]
    y = (x32 * a.reshape(shape) + b.reshape(shape)).astype(dtype)
    return y if act is None else act(y)

  # On a CPU each stored map is memory traffic and memory: derivatives keep x and the statistics
  # and recompute the rest. A GPU fuses the recomputation poorly (about 10 % more kernels in a
  # DDPM++ train step) and gains no memory from it, so it stores as autodiff does.
  policy = jax.checkpoint_policies.save_only_these_names(_STATISTICS)
  return jax.lax.platform_dependent(x, scale, bias, default=normalize,
                                    cpu=jax.checkpoint(normalize, policy=policy))


class GroupNorm(nn.Module):
  """GroupNorm (Wu & He 2018) with an optional activation fused in: ``norm(x, act=None)``.

  Parameters ``scale`` (ones) and ``bias`` (zeros), ``[C]``, as ``flax.linen.GroupNorm``'s, so
  checkpoints and converted weights are interchangeable; see :func:`group_norm` for why it is
  not that module. ``dtype`` None gives float32 results.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, act: Optional[Activation] = None) -> Array:
    channels = x.shape[-1]
    if self.num_groups <= 0 or channels % self.num_groups:
      raise ValueError(f"GroupNorm with {self.num_groups} groups needs a channel count "
                       f"divisible by it, got {channels} channels.")
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    dtype = jnp.promote_types(x.dtype, jnp.float32) if self.dtype is None else self.dtype
    return group_norm(x, scale, bias, self.num_groups, self.epsilon, act, jnp.dtype(dtype))


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
    return functools.partial(GroupNorm, num_groups=num_groups, dtype=dtype)
  modules = {"InstanceNorm": InstanceNorm2d, "InstanceNorm++": InstanceNorm2dPlus,
             "VarianceNorm": VarianceNorm2d}
  if name not in modules:
    raise ValueError(f"Unknown normalization {name!r}; valid names are: "
                     f"{', '.join(NORMALIZATIONS)}.")
  return functools.partial(modules[name], dtype=dtype)
