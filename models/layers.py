"""Shared building blocks of the score networks (DDPM-style convolutions, inits, embeddings)."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from infra.registry import Registry

Initializer = Callable[..., jax.Array]


ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry("activation")
ACTIVATIONS.add("elu", nn.elu)
ACTIVATIONS.add("relu", nn.relu)
ACTIVATIONS.add("lrelu", lambda x: nn.leaky_relu(x, negative_slope=0.2))
ACTIVATIONS.add("swish", nn.swish)
ACTIVATIONS.add("silu", nn.swish)


def get_act(name: str) -> Callable[[jax.Array], jax.Array]:
  """Activation by name: ``elu``, ``relu``, ``lrelu`` (slope 0.2), ``swish``/``silu``."""
  return ACTIVATIONS.get(name)


def default_init(scale: float = 1.0) -> Initializer:
  """DDPM's variance-scaling init (fan_avg, uniform); ``scale == 0`` means 1e-10."""
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def ddpm_conv1x1(out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Conv:
  """1x1 convolution with DDPM initialization."""
  return nn.Conv(out_planes, (1, 1), strides=(stride, stride), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype)


def ddpm_conv3x3(out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Any = jnp.float32) -> nn.Conv:
  """3x3 'SAME' convolution with DDPM initialization."""
  return nn.Conv(out_planes, (3, 3), strides=(stride, stride), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype)


class NIN(nn.Module):
  """Network-in-network: a per-pixel dense layer, ``[..., C] -> [..., num_units]``."""
  num_units: int
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_dim = x.shape[-1]
    W = self.param("W", default_init(self.init_scale), (in_dim, self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    y = jnp.einsum("...c,cu->...u", x.astype(self.dtype), W.astype(self.dtype))
    return y + b.astype(self.dtype)


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                           max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of ``timesteps: [B]`` (any real values) as ``[B, embedding_dim]``."""
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [B], got {timesteps.shape}.")
  half_dim = embedding_dim // 2
  scale = math.log(max_positions) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -scale)
  emb = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class ClassEmbedding(nn.Module):
  """``class_labels: [B]`` int in ``0 .. num_classes`` -> ``[B, features]``, a learned vector per
  class plus one for the null label ``num_classes``: the unconditional model that
  classifier-free guidance trains by label dropout (Ho & Salimans 2022). ``class_labels=None``
  means the null label for every example of a batch of ``batch_size``.
  """
  num_classes: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, class_labels: Optional[jax.Array], batch_size: int) -> jax.Array:
    if class_labels is None:
      class_labels = jnp.full((batch_size,), self.num_classes, jnp.int32)
    elif class_labels.shape != (batch_size,):
      raise ValueError(f"class_labels must have shape [B] = ({batch_size},), got "
                       f"{class_labels.shape}.")
    # flax's nn.Embed initialisation (std 1 / sqrt(features)); mode='clip': an index can never
    # read past the table (jnp.take's default gives NaN there).
    table = self.param("embedding", nn.linear.default_embed_init,
                       (self.num_classes + 1, self.features))
    return jnp.take(table, class_labels.astype(jnp.int32), axis=0, mode="clip").astype(self.dtype)


def check_class_labels(num_classes: int, class_labels: Optional[jax.Array]) -> None:
  """Raises if ``class_labels`` are given to an unconditional network (``num_classes = 0``)."""
  if class_labels is not None and not num_classes:
    raise ValueError("class_labels given to an unconditional network; a class-conditional one "
                     "has model.num_classes > 0.")


# --- DDPM U-Net blocks (Ho et al. 2020) ---------------------------------------------------------


class AttnBlock(nn.Module):
  """Residual self-attention over the ``H W`` positions of ``x: [B, H, W, C]`` (one head).

  ``normalize`` is a factory ``() -> module`` (see ``models.normalization.get_normalization``).
  The output projection starts at ~zero, so the block starts as the identity.
  """
  normalize: Callable[[], nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, H, W, C = x.shape
    h = self.normalize()(x)
    q = NIN(C, dtype=self.dtype)(h)
    k = NIN(C, dtype=self.dtype)(h)
    v = NIN(C, dtype=self.dtype)(h)
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k).reshape(B, H, W, H * W) * (C ** -0.5)
    # Softmax in float32: bf16 logits lose the small differences that decide the weights.
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    h = jnp.einsum("bhwHW,bHWc->bhwc", w.reshape(B, H, W, H, W), v)
    return x + NIN(C, init_scale=0.0, dtype=self.dtype)(h)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling ``[B, H, W, C] -> [B, 2H, 2W, C]``, then optionally a conv."""
  with_conv: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      h = ddpm_conv3x3(x.shape[-1], dtype=self.dtype)(h)
    return h


class Downsample(nn.Module):
  """2x downsampling ``[B, H, W, C] -> [B, H/2, W/2, C]``: stride-2 3x3 conv or 2x2 average pool.

  ``H`` and ``W`` must be even (the U-Net's skip connections need the sizes to round-trip).
  """
  with_conv: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, H, W, C = x.shape
    if H % 2 or W % 2:
      raise ValueError(f"Downsample needs even spatial sizes, got {H}x{W}.")
    if self.with_conv:
      return ddpm_conv3x3(C, stride=2, dtype=self.dtype)(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block ``[B, H, W, C] -> [B, H, W, out_ch]`` with an additive time embedding.

  ``temb: [B, E]`` (or None) is projected to a per-channel bias. The second conv starts at ~zero,
  so the block starts as (a projection of) the identity.
  """
  act: Callable[[jax.Array], jax.Array]
  normalize: Callable[[], nn.Module]
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = self.act(self.normalize()(x))
    h = ddpm_conv3x3(out_ch, dtype=self.dtype)(h)
    if temb is not None:
      bias = nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(self.act(temb))
      h = h + bias[:, None, None, :]
    h = self.act(self.normalize()(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = ddpm_conv3x3(out_ch, init_scale=0.0, dtype=self.dtype)(h)
    if C != out_ch:
      x = (ddpm_conv3x3(out_ch, dtype=self.dtype)(x) if self.conv_shortcut
           else NIN(out_ch, dtype=self.dtype)(x))
    return x + h


# --- NCSN / NCSNv2 RefineNet blocks (Song & Ermon 2019, 2020) -----------------------------------
# The NCSN papers used PyTorch's default initialization, uniform(+-1/sqrt(fan_in)) for both kernel
# and bias; ``ncsn_conv*`` reproduce it. Blocks take an optional ``normalizer`` factory and labels
# ``y``: NCSNv2 blocks are unnormalized (RefineNet) or use unconditional norms; NCSN (v1) blocks
# normalize with a class-conditional norm called as ``norm(h, y)``.


def _symmetric_uniform(bound: float) -> Initializer:
  def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def ncsn_conv(out_planes: int, in_planes: int, kernel_size: int = 3, stride: int = 1,
              bias: bool = True, dilation: int = 1, init_scale: float = 1.0,
              dtype: Any = jnp.float32) -> nn.Conv:
  """'SAME' ``kernel_size`` convolution, PyTorch's default init (``in_planes`` sets its fan-in)."""
  init_scale = 1e-10 if init_scale == 0 else init_scale
  bound = math.sqrt(init_scale / (in_planes * kernel_size ** 2))
  return nn.Conv(out_planes, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=_symmetric_uniform(bound), bias_init=_symmetric_uniform(bound),
                 dtype=dtype)


def _normalize(normalizer: Callable[[], nn.Module], x: jax.Array,
               y: Optional[jax.Array]) -> jax.Array:
  norm = normalizer()
  return norm(x) if y is None else norm(x, y)


class CRPBlock(nn.Module):
  """Chained residual pooling: ``n_stages`` of (pool 5x5 -> conv), each summed into the output.

  Unnormalized with max pooling (NCSNv2), or, given a ``normalizer``, normalized before an
  average pool (NCSN v1).
  """
  features: int
  n_stages: int
  act: Callable[[jax.Array], jax.Array] = nn.elu
  normalizer: Optional[Callable[[], nn.Module]] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
    x = self.act(x)
    path = x
    for _ in range(self.n_stages):
      if self.normalizer is None:
        path = nn.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
      else:
        path = _normalize(self.normalizer, path, y)
        path = nn.avg_pool(path, (5, 5), strides=(1, 1), padding="SAME")
      path = ncsn_conv(self.features, path.shape[-1], bias=False, dtype=self.dtype)(path)
      x = path + x
    return x


class RCUBlock(nn.Module):
  """Residual conv units: ``n_blocks`` residual blocks of ``n_stages`` x ([norm] -> act -> conv)."""
  features: int
  n_blocks: int
  n_stages: int
  act: Callable[[jax.Array], jax.Array] = nn.elu
  normalizer: Optional[Callable[[], nn.Module]] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        if self.normalizer is not None:
          x = _normalize(self.normalizer, x, y)
        x = self.act(x)
        x = ncsn_conv(self.features, x.shape[-1], bias=False, dtype=self.dtype)(x)
      x = x + residual
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: ([norm] -> conv -> resize to ``shape``) of each input, summed."""
  shape: Tuple[int, int]
  features: int
  interpolation: str = "bilinear"
  normalizer: Optional[Callable[[], nn.Module]] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: Optional[jax.Array] = None) -> jax.Array:
    methods = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}
    if self.interpolation not in methods:
      raise ValueError(f"Unknown interpolation {self.interpolation!r}; valid names are: "
                       f"{', '.join(methods)}.")
    total = None
    for x in xs:
      h = x if self.normalizer is None else _normalize(self.normalizer, x, y)
      h = ncsn_conv(self.features, h.shape[-1], dtype=self.dtype)(h)
      if h.shape[1:3] != tuple(self.shape):
        h = jax.image.resize(h, (h.shape[0], *self.shape, h.shape[-1]),
                             methods[self.interpolation]).astype(h.dtype)
      total = h if total is None else total + h
    return total


class RefineBlock(nn.Module):
  """RefineNet block: RCU on each input -> fuse at ``output_shape`` -> CRP -> RCU.

  ``xs`` are a backbone feature map and (unless ``start``) the coarser refined map; the output has
  ``output_shape`` spatial size and ``features`` channels. A ``start`` block takes a single input
  and skips the fusion; an ``end`` block refines with three RCU blocks instead of one.
  """
  output_shape: Tuple[int, int]
  features: int
  act: Callable[[jax.Array], jax.Array] = nn.elu
  interpolation: str = "bilinear"
  start: bool = False
  end: bool = False
  normalizer: Optional[Callable[[], nn.Module]] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: Optional[jax.Array] = None) -> jax.Array:
    common = dict(act=self.act, normalizer=self.normalizer, dtype=self.dtype)
    hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, **common)(x, y) for x in xs]
    if self.start:
      if len(hs) != 1:
        raise ValueError(f"A start RefineBlock takes one input, got {len(hs)}.")
      h = hs[0]
    else:
      h = MSFBlock(tuple(self.output_shape), self.features, interpolation=self.interpolation,
                   normalizer=self.normalizer, dtype=self.dtype)(hs, y)
    h = CRPBlock(self.features, n_stages=2, **common)(h, y)
    return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, **common)(h, y)


class ConvMeanPool(nn.Module):
  """Convolution then 2x2 mean pooling, ``[B, H, W, C] -> [B, H/2, W/2, output_dim]``."""
  output_dim: int
  kernel_size: int = 3
  biases: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, H, W, _ = x.shape
    if H % 2 or W % 2:
      raise ValueError(f"ConvMeanPool needs even spatial sizes, got {H}x{W}.")
    h = ncsn_conv(self.output_dim, x.shape[-1], self.kernel_size, bias=self.biases,
                  dtype=self.dtype)(x)
    return nn.avg_pool(h, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class ResidualBlock(nn.Module):
  """Pre-activation residual block of the NCSN/NCSNv2 ResNet backbone, ``C -> output_dim`` channels.

  ``resample='down'`` halves the resolution (conv + mean pool) when ``dilation == 1``; with
  ``dilation > 1`` it keeps the resolution and widens the receptive field with dilated convs
  instead (the NCSN design for the coarse stages). ``normalization`` is a factory; pass labels
  ``y`` when it is class-conditional (NCSN v1).
  """
  output_dim: int
  normalization: Callable[[], nn.Module]
  resample: Optional[str] = None
  act: Callable[[jax.Array], jax.Array] = nn.elu
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
    if self.resample not in (None, "down"):
      raise ValueError(f"Unknown resample {self.resample!r}; valid values are None and 'down'.")
    C = x.shape[-1]
    dil = self.dilation
    h = self.act(_normalize(self.normalization, x, y))
    if self.resample == "down":
      h = ncsn_conv(C, C, dilation=dil, dtype=self.dtype)(h)
      h = self.act(_normalize(self.normalization, h, y))
      if dil > 1:
        h = ncsn_conv(self.output_dim, C, dilation=dil, dtype=self.dtype)(h)
        shortcut = ncsn_conv(self.output_dim, C, dilation=dil, dtype=self.dtype)(x)
      else:
        h = ConvMeanPool(self.output_dim, dtype=self.dtype)(h)
        shortcut = ConvMeanPool(self.output_dim, kernel_size=1, dtype=self.dtype)(x)
    else:
      if self.output_dim == C:
        shortcut = x
      else:
        # A dilated block projects with a dilated 3x3 conv, an undilated one with a 1x1 conv.
        shortcut = ncsn_conv(self.output_dim, C, 3 if dil > 1 else 1, dilation=dil,
                             dtype=self.dtype)(x)
      h = ncsn_conv(self.output_dim, C, dilation=dil, dtype=self.dtype)(h)
      h = self.act(_normalize(self.normalization, h, y))
      h = ncsn_conv(self.output_dim, self.output_dim, dilation=dil, dtype=self.dtype)(h)
    return h + shortcut
