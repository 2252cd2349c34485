"""NCSN++ and DDPM++ (Song et al. 2021, appendix H): one U-Net whose options select either.

NCSN++ (VE configs): BigGAN residual blocks with FIR resampling, an input pyramid merged
residually (``progressive_input='residual'``), Fourier embedding of ``log sigma``, output divided
by sigma (``scale_by_sigma``, done by ``models.utils.get_score_fn``). DDPM++ (VP/sub-VP configs):
the same blocks without FIR or pyramids, sinusoidal embedding of ``999 t`` or the discrete level.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from models import layers
from models import layerspp
from models.utils import register_model

Array = jax.Array

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
RESBLOCK_TYPES = ("ddpm", "biggan")
EMBEDDING_TYPES = ("fourier", "positional")


def _check_choice(name: str, value: str, valid: Tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"Unknown {name} {value!r}; valid values are: {', '.join(valid)}.")


def check_image_size(height: int, width: int, num_resolutions: int) -> None:
  """Raises unless ``height`` and ``width`` survive ``num_resolutions - 1`` halvings exactly."""
  factor = 2 ** (num_resolutions - 1)
  if height % factor or width % factor:
    raise ValueError(
        f"Image size {height}x{width} is not divisible by 2^(num_resolutions - 1) = {factor} "
        f"(num_resolutions = len(ch_mult) = {num_resolutions}).")


@register_model("ncsnpp")
class NCSNpp(nn.Module):
  """``x: [B, H, W, C], labels: [B] -> [B, H, W, C]`` (float32), the raw network output.

  ``labels`` are sigma (``embedding_type='fourier'``, which embeds ``log sigma``), or whatever
  the positional embedding should see (``999 t`` or an integer noise level). Channel widths are
  ``nf * ch_mult[i]`` at resolution ``H / 2^i``; self-attention runs at the spatial sizes in
  ``attn_resolutions`` and once in the middle. Options (names as in the authors' configs):

  * ``resblock_type``: ``'ddpm'`` (resample with separate Up/Downsample layers) or ``'biggan'``
    (resampling residual blocks).
  * ``progressive``: output pyramid -- ``'none'``, ``'output_skip'`` (sum of upsampled per-level
    image predictions) or ``'residual'`` (upsampled features added to each level).
  * ``progressive_input``: input pyramid -- ``'none'``, ``'input_skip'`` (downsampled image merged
    by ``progressive_combine``: ``'sum'`` or ``'cat'``) or ``'residual'`` (conv-downsampled
    residual stream).
  * ``fir``: FIR (``fir_kernel``) instead of nearest/box resampling.
  * ``centered``: inputs already in [-1, 1]; otherwise ``2 x - 1`` is applied first.

  ``num_classes = K > 0`` makes the network class-conditional (``model.num_classes``): a learned
  embedding of ``class_labels: [B]`` in ``0 .. K`` is added to the noise-level embedding that
  every residual block receives; ``K``, the null label (also what ``class_labels=None`` means),
  is the unconditional model that label dropout trains beside the conditional ones. ``K = 0`` is
  the unconditional network, parameters unchanged.

  ``dtype`` is the computation dtype (bfloat16 for mixed precision); parameters are float32.
  ``remat``: each residual and attention block keeps only its inputs for the backward pass and
  recomputes its insides there (``flax.linen.remat``): less activation memory for about one more
  forward pass of compute. Parameters, outputs and gradients are those of ``remat=False``.
  """
  nf: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  init_scale: float = 0.0
  fourier_scale: float = 16.0
  embedding_type: str = "fourier"
  nonlinearity: str = "swish"
  centered: bool = False
  scale_by_sigma: bool = False
  num_classes: int = 0
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    # Fail on construction, long before tracing or compiling a large network.
    _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
    _check_choice("progressive", self.progressive, PROGRESSIVE)
    _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
    _check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
    _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
    layers.get_act(self.nonlinearity)
    if not self.ch_mult or self.num_res_blocks < 1 or self.nf < 4:
      raise ValueError("Need a non-empty ch_mult, num_res_blocks >= 1 and nf >= 4.")
    if self.num_classes and not self.conditional:
      raise ValueError("A class-conditional NCSN++ (num_classes > 0) adds its class embedding to "
                       "the noise-level embedding; set model.conditional = True.")
    super().__post_init__()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "NCSNpp":
    """Builds the network from the authors' config fields (``config.model``, ``config.data``)."""
    model, data = config.model, config.data
    embedding_type = model.embedding_type.lower()
    if embedding_type == "fourier" and not config.training.get("continuous", True):
      raise ValueError("Fourier embedding embeds log(sigma) and needs continuous training; "
                       "discrete (integer-level) models use embedding_type='positional'.")
    if model.get("attention_type", "ddpm").lower() != "ddpm":
      raise ValueError(f"Only attention_type='ddpm' exists, got {model.attention_type!r}.")
    if model.get("conv_size", 3) != 3:
      raise ValueError(f"NCSN++ uses 3x3 convolutions; conv_size={model.conv_size} is unsupported.")
    check_image_size(data.image_size, data.image_size, len(model.ch_mult))
    return cls(
        nf=model.nf, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
        attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
        resamp_with_conv=model.resamp_with_conv, conditional=model.conditional, fir=model.fir,
        fir_kernel=tuple(model.fir_kernel), skip_rescale=model.skip_rescale,
        resblock_type=model.resblock_type.lower(), progressive=model.progressive.lower(),
        progressive_input=model.progressive_input.lower(),
        progressive_combine=model.progressive_combine.lower(), init_scale=model.init_scale,
        fourier_scale=model.get("fourier_scale", 16.0), embedding_type=embedding_type,
        nonlinearity=model.get("nonlinearity", "swish"), centered=data.centered,
        scale_by_sigma=model.scale_by_sigma, num_classes=model.get("num_classes", 0))

  def _embed(self, labels: Array, class_labels: Optional[Array]) -> Optional[Array]:
    """``labels: [B]`` (noise levels), ``class_labels: [B]`` or None -> ``temb: [B, 4 nf]`` (None
    if not conditioned on the noise level)."""
    if self.embedding_type == "fourier":
      temb = layerspp.GaussianFourierProjection(
          embedding_size=self.nf, scale=self.fourier_scale)(jnp.log(labels.astype(jnp.float32)))
    else:
      temb = layers.get_timestep_embedding(labels.astype(jnp.float32), self.nf)
    if not self.conditional:
      return None
    act = layers.get_act(self.nonlinearity)
    temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), dtype=self.dtype)(act(temb))
    if self.num_classes:
      temb = temb + layers.ClassEmbedding(self.num_classes, 4 * self.nf, dtype=self.dtype)(
          class_labels, labels.shape[0])
    return temb

  def _head(self, h: Array, out_ch: int, init_scale: float) -> Array:
    """GN-act-conv3x3 to ``out_ch`` channels."""
    act = layers.get_act(self.nonlinearity)
    h = layerspp.group_norm(h.shape[-1], self.dtype)(h, act)
    return layers.ddpm_conv3x3(out_ch, init_scale=init_scale, dtype=self.dtype)(h)

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False,
               class_labels: Optional[Array] = None) -> Array:
    if x.ndim != 4 or labels.shape != x.shape[:1]:
      raise ValueError(f"Expected x: [B, H, W, C] and labels: [B]; got {x.shape}, {labels.shape}.")
    layers.check_class_labels(self.num_classes, class_labels)
    num_resolutions = len(self.ch_mult)
    check_image_size(x.shape[1], x.shape[2], num_resolutions)
    act = layers.get_act(self.nonlinearity)
    channels = x.shape[-1]
    dtype = self.dtype
    resample = dict(fir=self.fir, fir_kernel=self.fir_kernel, dtype=dtype)
    if self.resblock_type == "ddpm":
      block_kwargs = {}
      resblock_cls = layerspp.ResnetBlockDDPMpp
    else:
      block_kwargs = dict(fir=self.fir, fir_kernel=self.fir_kernel)
      resblock_cls = layerspp.ResnetBlockBigGANpp

    # Blocks are named as flax would name them unwrapped, so that remat leaves the parameter
    # tree (and checkpoints) unchanged.
    counts: Dict[str, int] = {}

    def named(cls, static_argnums=()):
      name = cls.__name__
      counts[name] = counts.get(name, 0) + 1
      block = nn.remat(cls, static_argnums=static_argnums) if self.remat else cls
      return functools.partial(block, name=f"{name}_{counts[name] - 1}")

    def resblock(**kwargs):
      # static: ``train`` (argument 3, counting self) is a Python bool.
      return named(resblock_cls, static_argnums=(3,))(
          act=act, dropout=self.dropout, init_scale=self.init_scale,
          skip_rescale=self.skip_rescale, dtype=dtype, **block_kwargs, **kwargs)

    def attn():
      return named(layerspp.AttnBlockpp)(init_scale=self.init_scale,
                                         skip_rescale=self.skip_rescale, dtype=dtype)

    temb = self._embed(labels, class_labels)
    if not self.centered:
      x = 2 * x - 1.0
    x = x.astype(dtype)

    # Downsampling path; hs keeps every activation for the skip connections.
    input_pyramid = x
    hs = [layers.ddpm_conv3x3(self.nf, dtype=dtype)(x)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resblock(out_ch=self.nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if i_level == num_resolutions - 1:
        break
      if self.resblock_type == "ddpm":
        h = layerspp.Downsample(with_conv=self.resamp_with_conv, **resample)(hs[-1])
      else:
        h = resblock(down=True)(hs[-1], temb, train)
      if self.progressive_input == "input_skip":
        input_pyramid = layerspp.Downsample(with_conv=False, **resample)(input_pyramid)
        h = layerspp.Combine(method=self.progressive_combine, dtype=dtype)(input_pyramid, h)
      elif self.progressive_input == "residual":
        input_pyramid = layerspp.Downsample(out_ch=h.shape[-1], with_conv=True,
                                            **resample)(input_pyramid)
        input_pyramid = layerspp.residual_sum(input_pyramid, h, self.skip_rescale)
        h = input_pyramid
      hs.append(h)

    h = hs[-1]
    h = resblock()(h, temb, train)
    h = attn()(h)
    h = resblock()(h, temb, train)

    # Upsampling path.
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = resblock(out_ch=self.nf * self.ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)

      if self.progressive == "output_skip":
        if pyramid is not None:
          pyramid = layerspp.Upsample(with_conv=False, **resample)(pyramid)
          pyramid = pyramid + self._head(h, channels, self.init_scale)
        else:
          pyramid = self._head(h, channels, self.init_scale)
      elif self.progressive == "residual":
        if pyramid is not None:
          pyramid = layerspp.Upsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
          pyramid = layerspp.residual_sum(pyramid, h, self.skip_rescale)
          h = pyramid
        else:
          pyramid = self._head(h, h.shape[-1], 1.0)

      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = layerspp.Upsample(with_conv=self.resamp_with_conv, **resample)(h)
        else:
          h = resblock(up=True)(h, temb, train)

    if hs:
      raise AssertionError("Unused skip connections; the U-Net is unbalanced.")
    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = self._head(h, channels, self.init_scale)
    return h.astype(jnp.float32)
