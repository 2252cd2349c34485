"""Noise-conditional classifiers ``log p_t(y | x(t))`` for classifier guidance.

A classifier is called like a score network, ``model.apply({'params': params}, x, labels,
train=train)`` with ``x: [B, H, W, C]`` the data perturbed by the SDE to time ``t`` and ``labels:
[B]`` the SDE's noise label ``sde.noise_label(t)`` (``sigma(t)`` for VE, ``999 t`` for VP and
sub-VP), and returns logits ``[B, num_classes]`` (float32). :func:`get_log_prob_fn` turns it into
the ``log_prob_fn(x, t)`` that ``controllable_generation.classifier_guided_score`` takes, so a
classifier sees the same noise label as the score network of the same SDE (the authors fed
theirs the marginal std, a VE noise scale, whatever the SDE).

:class:`WideResNet` is the authors' noise-conditional Wide ResNet (Zagoruyko & Komodakis 2016):
pre-activation residual blocks with GroupNorm (no batch statistics, so each example's gradient is
its own), parameter-free shortcuts (average pooling and zero-padded channels), and the noise
embedding added after each block's first convolution. Depth ``6 blocks_per_group + 4`` and width
``channel_multiplier``: WRN-28-10 (``blocks_per_group = 4``, ``channel_multiplier = 10``) is the
authors' CIFAR-10 classifier; a WRN-10-2 suits MNIST.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sde_lib
from models import layers, layerspp, normalization
from models.utils import register_model

Array = jax.Array
EMBEDDING_TYPES = ("fourier", "positional")

# Kaiming-normal in fan-out mode for the convolutions, as in the reference Wide ResNet.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _head_init(key: Array, shape: Any, dtype: Any = jnp.float32) -> Array:
  """``U[-1/sqrt(n), 1/sqrt(n))`` for the ``n`` outputs of the last layer, as the reference."""
  bound = 1.0 / np.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _group_norm_act(x: Array, dtype: Any, act: bool = True) -> Array:
  return normalization.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5,
                                 dtype=dtype)(x, jax.nn.relu if act else None)


def _shortcut(x: Array, out: Array, stride: int) -> Array:
  """``x`` brought to ``out``'s shape without parameters: average pooled with ``stride`` (padded
  like the strided convolution, so odd sizes match too) and zero-padded to its channels."""
  if stride > 1:
    x = nn.avg_pool(x, (stride, stride), (stride, stride), padding="SAME")
  if x.shape[-1] != out.shape[-1]:
    x = jnp.pad(x, [(0, 0)] * 3 + [(0, out.shape[-1] - x.shape[-1])])
  return x


class WideResNetBlock(nn.Module):
  """GN-ReLU-conv3x3 (stride), + Dense(swish(temb)), GN-ReLU-conv3x3, + shortcut.

  ``activate_before_residual``: the shortcut takes the activated input (the first block of the
  network, whose input is a bare convolution).
  """
  channels: int
  stride: int = 1
  activate_before_residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    h = _group_norm_act(x, self.dtype)
    if self.activate_before_residual:
      x = h
    h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding="SAME", use_bias=False,
                kernel_init=_conv_init, dtype=self.dtype)(h)
    h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.swish(temb))[:, None, None, :]
    h = _group_norm_act(h, self.dtype)
    h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                dtype=self.dtype)(h)
    return h + _shortcut(x, h, self.stride)


@register_model("wideresnet_noise_conditional")
class WideResNet(nn.Module):
  """``x: [B, H, W, C], labels: [B] -> logits [B, num_classes]``; see the module docstring.

  Attributes:
    num_classes: number of classes.
    blocks_per_group: residual blocks in each of the three groups (depth ``6 n + 4``).
    channel_multiplier: width ``k``; the groups have ``16 k``, ``32 k``, ``64 k`` channels at full,
      half and quarter resolution.
    embedding_type: ``'fourier'`` embeds ``log labels`` with random Fourier features (VE, whose
      labels are sigmas), ``'positional'`` embeds ``labels`` sinusoidally (VP, sub-VP: ``999 t``).
    fourier_scale: std of the Fourier frequencies.
    embedding_dim: ``d``; the noise embedding has ``2 d`` Fourier or ``d`` sinusoidal features,
      then two dense layers of width ``4 d``.
  """
  num_classes: int = 10
  blocks_per_group: int = 4
  channel_multiplier: int = 10
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  embedding_dim: int = 128
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "WideResNet":
    model = config.model
    embedding_type = model.embedding_type.lower()
    if embedding_type not in EMBEDDING_TYPES:
      raise ValueError(f"model.embedding_type must be one of {EMBEDDING_TYPES}, got "
                       f"{model.embedding_type!r}.")
    return cls(num_classes=model.num_classes, blocks_per_group=model.blocks_per_group,
               channel_multiplier=model.channel_multiplier, embedding_type=embedding_type,
               fourier_scale=model.get("fourier_scale", 16.0),
               embedding_dim=model.get("embedding_dim", 128))

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
    del train  # no dropout or batch statistics
    labels = labels.astype(jnp.float32)
    if self.embedding_type == "fourier":
      temb = layerspp.GaussianFourierProjection(self.embedding_dim,
                                                self.fourier_scale)(jnp.log(labels))
    else:
      temb = layers.get_timestep_embedding(labels, self.embedding_dim)
    temb = nn.Dense(4 * self.embedding_dim, dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.embedding_dim, dtype=self.dtype)(nn.swish(temb))
    # Per-image standardisation: inputs of every noise level reach the network at unit scale.
    size = np.prod(x.shape[1:])
    x = x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = x / jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(size))
    h = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                dtype=self.dtype)(x)
    for group, width in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_group):
        h = WideResNetBlock(width * self.channel_multiplier,
                            stride=2 if group > 0 and block == 0 else 1,
                            activate_before_residual=group == 0 and block == 0,
                            dtype=self.dtype)(h, temb)
    h = jnp.mean(_group_norm_act(h, self.dtype), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_head_init)(h)
    return logits.astype(jnp.float32)


def get_log_prob_fn(sde: sde_lib.SDE, model: nn.Module,
                    params: Any) -> Callable[[Array, Array], Array]:
  """``log_prob_fn(x: [B, ...], t: [B]) -> [B, num_classes]``, ``log p_t(y | x)`` of a classifier
  trained on ``sde`` (continuous times): the network is given ``sde.noise_label(t)``."""

  def log_prob_fn(x: Array, t: Array) -> Array:
    logits = model.apply({"params": params}, x, sde.noise_label(t), train=False)
    return jax.nn.log_softmax(logits, axis=-1)

  return log_prob_fn
