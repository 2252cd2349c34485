"""NCSNv2 (Song & Ermon 2020) and NCSN v1 (Song & Ermon 2019): a dilated ResNet backbone feeding
a RefineNet decoder, ``[B, H, W, C] x labels [B] -> [B, H, W, C]``.

NCSNv2 is not told the noise level: its output is divided by sigma outside the network
(``scale_by_sigma``, see ``models.utils.get_score_fn``), so its ``labels`` are unused. NCSN v1
instead conditions every normalization on the noise-level index (conditional InstanceNorm++);
its labels are integer levels in ``[0, num_levels)`` passed as floats, label 0 the largest noise
(the authors' order, ``sde_lib.VESDE.discrete_label``).

Registered names: ``ncsnv2`` (depth chosen from the image size, like the authors'
``get_network``), ``ncsnv2_64``, ``ncsnv2_128``, ``ncsnv2_256`` (a fixed depth, the authors'
config names) and ``ncsn`` (v1).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from models import layers, normalization
from models.utils import register_model

# Per architecture, finest stage first: (channel multiplier, dilation) of each backbone stage,
# and the channel multiplier of the RefineBlock that consumes that stage. Every stage after the
# first starts with a 'down' residual block, which halves the resolution when its dilation is 1
# and otherwise keeps it (the dilation widens the receptive field instead).
_ARCHS: Dict[int, Dict[str, Tuple]] = {
    64: dict(stages=((1, 1), (2, 1), (2, 2), (2, 4)), refine=(1, 2, 2, 2)),
    128: dict(stages=((1, 1), (2, 1), (2, 1), (4, 2), (4, 4)), refine=(1, 1, 2, 2, 4)),
    256: dict(stages=((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4)),
              refine=(1, 1, 2, 2, 2, 4)),
}


def arch_for_image_size(image_size: int) -> int:
  """The authors' choice of depth: the 64-px network below 96 px, 128 up to 128, 256 up to 256."""
  if image_size < 96:
    return 64
  if image_size <= 128:
    return 128
  if image_size <= 256:
    return 256
  raise ValueError(f"No NCSNv2 architecture for {image_size}-px images (at most 256).")


def downsampling_factor(arch: int) -> int:
  """How much the backbone of ``arch`` shrinks the image: 2 ** (undilated 'down' stages)."""
  return 2 ** sum(1 for _, dilation in _ARCHS[arch]["stages"][1:] if dilation == 1)


class NCSNv2(nn.Module):
  """NCSNv2 (``num_levels == 0``) or NCSN v1 (``num_levels > 0`` noise levels) of depth ``arch``
  (64/128/256).

  ``H`` and ``W`` must be multiples of :func:`downsampling_factor` ``(arch)``. Inputs in ``[0, 1]``
  (``centered=False``) are mapped to ``[-1, 1]`` first. NCSN v1 (as in the authors' code) exists
  only with the 64 architecture and a conditional ``InstanceNorm++``.
  """
  nf: int = 128
  arch: int = 64
  nonlinearity: str = "elu"
  normalization: str = "InstanceNorm++"
  interpolation: str = "bilinear"
  num_levels: int = 0
  num_groups: int = 32
  centered: bool = False
  scale_by_sigma: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    # Fail on a bad option when the model is built, not deep inside tracing.
    if self.arch not in _ARCHS:
      raise ValueError(f"Unknown NCSNv2 arch {self.arch}; valid values are: {sorted(_ARCHS)}.")
    if self.num_levels and self.arch != 64:
      raise ValueError(f"NCSN v1 (num_levels > 0) has only the 64 architecture, got {self.arch}.")
    if self.interpolation not in ("bilinear", "nearest_neighbor"):
      raise ValueError(f"Unknown interpolation {self.interpolation!r}; valid names are: "
                       "bilinear, nearest_neighbor.")
    layers.get_act(self.nonlinearity)
    self._normalizer()

  def _normalizer(self):
    conditional = self.num_levels > 0
    return normalization.get_normalization(
        self.normalization, conditional=conditional,
        num_classes=self.num_levels if conditional else None, num_groups=self.num_groups,
        dtype=self.dtype)

  def _check_input(self, x: jax.Array, labels: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"NCSNv2 expects images [B, H, W, C], got shape {x.shape}.")
    factor = downsampling_factor(self.arch)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"NCSNv2 arch {self.arch} needs H and W divisible by {factor}, got "
                       f"{x.shape[1]}x{x.shape[2]}.")
    if labels.shape != x.shape[:1]:
      raise ValueError(f"labels must have shape [B] = {x.shape[:1]}, got {labels.shape}.")

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    """``x: [B, H, W, C]``, ``labels: [B]`` -> ``[B, H, W, C]`` float32. ``train`` is unused
    (no dropout or batch statistics); ``labels`` are used by NCSN v1 only."""
    del train
    self._check_input(x, labels)
    act = layers.get_act(self.nonlinearity)
    normalizer = self._normalizer()
    y = labels if self.num_levels else None
    nf, dtype = self.nf, self.dtype
    arch = _ARCHS[self.arch]

    def residual_block(h, out_ch, resample=None, dilation=1):
      return layers.ResidualBlock(out_ch, normalizer, resample=resample, act=act,
                                  dilation=dilation, dtype=dtype)(h, y)

    h = x if self.centered else 2 * x - 1.0
    h = layers.ncsn_conv(nf, x.shape[-1], dtype=dtype)(h.astype(dtype))

    # Backbone: two residual blocks per stage; the second one's output feeds the decoder.
    features = []
    for i, (mult, dilation) in enumerate(arch["stages"]):
      h = residual_block(h, mult * nf, resample=None if i == 0 else "down", dilation=dilation)
      h = residual_block(h, mult * nf, dilation=dilation)
      features.append(h)

    # RefineNet decoder, coarsest stage first; each block fuses a stage with the coarser result.
    h = None
    for i in reversed(range(len(features))):
      inputs = [features[i]] if h is None else [features[i], h]
      h = layers.RefineBlock(features[i].shape[1:3], arch["refine"][i] * nf, act=act,
                             interpolation=self.interpolation, start=h is None, end=i == 0,
                             normalizer=normalizer if self.num_levels else None,
                             dtype=dtype)(inputs, y)

    h = act(normalizer()(h) if y is None else normalizer()(h, y))
    h = layers.ncsn_conv(x.shape[-1], h.shape[-1], dtype=dtype)(h)
    return h.astype(jnp.float32)


def _common_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  model = config.model
  return dict(nf=model.nf, nonlinearity=model.nonlinearity, normalization=model.normalization,
              interpolation=model.get("interpolation", "bilinear"),
              num_groups=model.get("num_groups", 32), centered=config.data.centered,
              scale_by_sigma=model.scale_by_sigma)


@register_model("ncsnv2")
def ncsnv2_from_config(config: ml_collections.ConfigDict) -> NCSNv2:
  """NCSNv2 whose depth suits ``config.data.image_size`` (see :func:`arch_for_image_size`)."""
  return NCSNv2(arch=arch_for_image_size(config.data.image_size), **_common_kwargs(config))


@register_model("ncsnv2_64")
def ncsnv2_64_from_config(config: ml_collections.ConfigDict) -> NCSNv2:
  return NCSNv2(arch=64, **_common_kwargs(config))


@register_model("ncsnv2_128")
def ncsnv2_128_from_config(config: ml_collections.ConfigDict) -> NCSNv2:
  return NCSNv2(arch=128, **_common_kwargs(config))


@register_model("ncsnv2_256")
def ncsnv2_256_from_config(config: ml_collections.ConfigDict) -> NCSNv2:
  return NCSNv2(arch=256, **_common_kwargs(config))


@register_model("ncsn")
def ncsn_from_config(config: ml_collections.ConfigDict) -> NCSNv2:
  """NCSN v1: one conditional-normalization class per noise level, ``model.num_scales`` of them
  (the authors' module read a ``num_classes`` their configs lacked)."""
  if config.training.continuous:
    raise ValueError("NCSN v1 is conditioned on integer noise levels; set "
                     "training.continuous = False.")
  return NCSNv2(arch=64, num_levels=config.model.num_scales, **_common_kwargs(config))
