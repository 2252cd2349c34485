"""The ScoreNet of Song's score-SDE tutorial: a small time-conditioned U-Net for 28 x 28 images.

``[B, 28, 28, C] x t [B] -> [B, 28, 28, C]``. Spatial sizes 28 -> 26 -> 12 -> 5 -> 2 on the way
down (3 x 3 convolutions without padding, the first with stride 1, then stride 2) and back up
through transposed convolutions with skip concatenations. The time ``t`` (the SDE's noise label:
``t`` itself for the tutorial's SDE) is embedded by fixed Gaussian random Fourier features and a
dense layer; a dense projection of the embedding is added at every level.

The tutorial divides the network's output by ``std(t)``. Here the module returns the output
before that division and sets ``scale_by_sigma``, so ``models.utils.get_score_fn`` divides by
the SDE's ``marginal_std(t)``: the score is the tutorial's, and the division uses the SDE the
model is run with rather than a copy of its formula.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models import normalization
from models.utils import register_model

# The tutorial's GroupNorm (PyTorch's default epsilon).
_GROUP_NORM_EPS = 1e-5
_IMAGE_SIZE = 28


def fourier_frequencies(embed_dim: int, scale: float, seed: int) -> np.ndarray:
  """The fixed frequencies ``W ~ N(0, scale^2)``, ``[embed_dim // 2]``, of the random Fourier
  features: a function of ``seed`` alone, so the same config always gives the same network (they
  are not trained, and not stored in the parameters)."""
  return scale * np.random.default_rng(seed).standard_normal(embed_dim // 2)


def gaussian_fourier_features(t: jax.Array, frequencies: np.ndarray) -> jax.Array:
  """``[sin(2 pi t W), cos(2 pi t W)]``, ``[B, 2 len(W)]``, for ``t: [B]``."""
  angles = 2.0 * np.pi * t[:, None] * jnp.asarray(frequencies, jnp.float32)[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


@register_model("tutorial_scorenet")
class TutorialScoreNet(nn.Module):
  """The tutorial's U-Net; ``channels`` per level (4 levels), GroupNorm with 4 groups at the
  first encoder level and 32 elsewhere, swish, no biases in the convolutions but the last.

  Attributes:
    channels: feature maps at the four resolutions (26, 12, 5, 2 pixels).
    embed_dim: size of the time embedding (an even number).
    fourier_scale: standard deviation of the fixed Fourier frequencies.
    fourier_seed: seed of the fixed Fourier frequencies (:func:`fourier_frequencies`).
  """
  channels: Sequence[int] = (32, 64, 128, 256)
  embed_dim: int = 256
  fourier_scale: float = 30.0
  fourier_seed: int = 0
  scale_by_sigma: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if len(self.channels) != 4 or self.embed_dim % 2:
      raise ValueError(f"TutorialScoreNet needs 4 channel counts and an even embed_dim, got "
                       f"channels={tuple(self.channels)}, embed_dim={self.embed_dim}.")
    for count, groups in zip(self.channels, (4, 32, 32, 32)):
      if count % groups:
        raise ValueError(f"TutorialScoreNet's GroupNorm needs channels divisible by (4, 32, 32, "
                         f"32), got channels={tuple(self.channels)}.")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "TutorialScoreNet":
    model = config.model
    return cls(channels=tuple(model.channels), embed_dim=model.embed_dim,
               fourier_scale=model.fourier_scale, fourier_seed=model.fourier_seed)

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    """``x: [B, 28, 28, C]``, ``labels: [B]`` (time ``t in [eps, 1]``) -> ``[B, 28, 28, C]``,
    the score times ``std(t)``. ``train`` is accepted for the common interface (no dropout)."""
    del train
    if x.shape[1:3] != (_IMAGE_SIZE, _IMAGE_SIZE):
      raise ValueError(f"TutorialScoreNet's strides fit {_IMAGE_SIZE} x {_IMAGE_SIZE} images, "
                       f"got {x.shape[1]} x {x.shape[2]}.")
    c1, c2, c3, c4 = self.channels
    frequencies = fourier_frequencies(self.embed_dim, self.fourier_scale, self.fourier_seed)
    embed = nn.swish(nn.Dense(self.embed_dim, dtype=self.dtype)(
        gaussian_fourier_features(labels.astype(jnp.float32), frequencies)))

    def level(h: jax.Array, groups: int) -> jax.Array:
      """Adds the level's projection of the embedding, then GroupNorm and swish."""
      h = h + nn.Dense(h.shape[-1], dtype=self.dtype)(embed)[:, None, None, :]
      return normalization.GroupNorm(num_groups=groups, epsilon=_GROUP_NORM_EPS,
                                     dtype=self.dtype)(h, nn.swish)

    def conv(features: int, stride: int) -> nn.Conv:
      return nn.Conv(features, (3, 3), strides=(stride, stride), padding="VALID", use_bias=False,
                     dtype=self.dtype)

    def up(h: jax.Array, features: int, stride: int, output_padding: int = 0,
           use_bias: bool = False) -> jax.Array:
      """PyTorch's ``ConvTranspose2d`` without padding: ``(n - 1) stride + 3 + output_padding``
      pixels; the output padding is a row and column no input reaches (zero, no bias there)."""
      h = nn.ConvTranspose(features, (3, 3), strides=(stride, stride), padding="VALID",
                           use_bias=use_bias, dtype=self.dtype)(h)
      pad = ((0, 0), (0, output_padding), (0, output_padding), (0, 0))
      return jnp.pad(h, pad) if output_padding else h

    h1 = level(conv(c1, 1)(x.astype(self.dtype)), 4)            # [B, 26, 26, c1]
    h2 = level(conv(c2, 2)(h1), 32)                             # [B, 12, 12, c2]
    h3 = level(conv(c3, 2)(h2), 32)                             # [B, 5, 5, c3]
    h4 = level(conv(c4, 2)(h3), 32)                             # [B, 2, 2, c4]
    h = level(up(h4, c3, 2), 32)                                # [B, 5, 5, c3]
    h = level(up(jnp.concatenate([h, h3], -1), c2, 2, 1), 32)   # [B, 12, 12, c2]
    h = level(up(jnp.concatenate([h, h2], -1), c1, 2, 1), 32)   # [B, 26, 26, c1]
    # The tutorial's last transposed convolution keeps PyTorch's default bias.
    h = up(jnp.concatenate([h, h1], -1), x.shape[-1], 1, use_bias=True)  # [B, 28, 28, C]
    return h.astype(jnp.float32)
