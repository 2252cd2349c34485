"""The FID Inception network in Flax: TF's ``inception-2015-12-05`` graph, as pytorch-fid builds it.

FID, KID and the Inception Score are defined with this network, not torchvision's Inception v3:
its head has 1008 logits, it has no auxiliary head, the pooling branch of the InceptionA/C and
first InceptionE blocks is a 3x3 average pool that does not count padding, and the last block's
pooling branch is a 3x3 max pool. Every convolution is followed by BatchNorm (eps 0.001, running
statistics: inference only) and a ReLU. The FID features are the 2048-d average of the last
block ("pool_3").

The parameters are pytorch-fid's (``pt_inception-2015-12-05-6726825d.pth``, TF's weights in a
torch state dict), a one-time download the user makes. The module's parameter tree mirrors the
state dict's key names (``Mixed_5b.branch1x1.conv.weight`` -> ``params/Mixed_5b/branch1x1/conv/
kernel``), so :func:`params_from_state_dict` needs no renaming table. :func:`load_inception`
reads the ``.pth`` through torch when torch is installed, or an ``.npz`` of the same keys that
the converter writes once where torch is::

  python -m inception --convert pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

Inputs: :func:`inception_features` takes images ``[B, H, W, C]`` in [0, 1] (``C`` = 1 or 3),
resizes them to 299x299 as pytorch-fid does and scales them to [-1, 1]; the network itself
(:class:`InceptionV3`) takes ``[B, H, W, 3]`` in [-1, 1] with ``H, W >= 75``.
"""

from __future__ import annotations

import io
import os
from typing import Callable, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from infra import outputs
from infra.devices import Devices, batch_apply

Variables = Dict[str, Dict]

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
# The smallest input the network's unpadded strided layers reduce to a 1x1 map.
MIN_INPUT_SIZE = 75
COMMAND = "python -m inception"
# The parameters' precision on accelerators: full float32 (no TF32 or bfloat16 passes), so the
# features do not depend on the device's default matmul precision.
_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
  """Convolution without bias, BatchNorm (eps 0.001, running statistics), ReLU.

  ``padding`` is symmetric zero padding ``(rows, columns)``, as torch's ``Conv2d`` takes it.
  """
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides,
                padding=[(p, p) for p in self.padding], use_bias=False, precision=_PRECISION,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """TF's 3x3 stride-1 SAME average pool: the padded zeros are not counted in the mean."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and average-pool branches (``224 + pool_features``)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction: strided 3x3, double 3x3 and max-pool branches."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions (``channels_7x7`` inside), 768 channels out."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction: 3x3, 7x7-then-3x3 (both strided) and max-pool branches."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 convolutions, 2048 channels out.

  ``max_pool``: the pooling branch is a 3x3 max pool (the graph's last block) instead of the
  average pool without padding (its first).
  """
  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception: ``x: [B, H, W, 3]`` in [-1, 1], ``H, W >= 75`` -> ``(pool_3: [B, 2048],
  logits: [B, 1008])``. At 299x299 the blocks' maps are 35x35 (Mixed_5*), 17x17 (Mixed_6*) and
  8x8 (Mixed_7*)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool_3 = x.mean(axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="fc")(pool_3)
    return pool_3, logits


# ------------------------------------------------------------------------------------------------
# Inputs: resizing and scaling.


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The ``[out_size, in_size]`` matrix of pytorch-fid's 1-D bilinear resize.

  torch's ``interpolate(mode="bilinear", align_corners=False)`` without antialiasing: output
  pixel ``i`` samples the input at ``(i + 1/2) in_size / out_size - 1/2`` (half-pixel centres),
  clamped to ``[0, in_size - 1]``, from its two neighbours. (TF1's ``resize_bilinear``, which the
  authors' TF-GAN Inception used, samples at ``i in_size / out_size`` instead; its FIDs differ
  slightly from these.)
  """
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """``images: [B, H, W, C]`` -> ``[B, size, size, C]`` by pytorch-fid's bilinear resize
  (:func:`bilinear_matrix`, separably: rows, then columns); the identity when ``H = W = size``."""
  _, height, width, _ = images.shape
  rows = jnp.asarray(bilinear_matrix(height, size), images.dtype)
  cols = jnp.asarray(bilinear_matrix(width, size), images.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, images, cols, precision=_PRECISION)


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """``images: [B, H, W, C]`` in [0, 1], ``C`` = 1 or 3 -> the network's input ``[B, size, size,
  3]`` in [-1, 1]: grey images repeated to 3 channels, resized (:func:`resize_bilinear`), then
  scaled by ``2 x - 1`` as pytorch-fid does. FID is defined at ``size = 299``."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception features need images [B, H, W, 1 or 3], got shape "
                     f"{images.shape}")
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return 2.0 * resize_bilinear(images, size) - 1.0


def inception_features(variables: Variables, images: jax.Array, size: int = INPUT_SIZE
                       ) -> Tuple[jax.Array, jax.Array]:
  """``(pool_3: [B, 2048], logits: [B, 1008])`` of ``images: [B, H, W, C]`` in [0, 1] (any size,
  ``C`` = 1 or 3; :func:`preprocess`). Jittable; ``variables`` from :func:`load_inception`.
  ``size``: the network's input side, 299 for FID (at least :data:`MIN_INPUT_SIZE`; smaller
  sizes give other features, cheaper: for tests)."""
  return InceptionV3().apply(variables, preprocess(images, size))


def make_feature_fn(variables: Variables, devices: Devices
                    ) -> Callable[[Mapping[str, np.ndarray]], Tuple[np.ndarray, np.ndarray]]:
  """A jitted ``feature_fn(batch) -> (pool_3: [n, 2048], logits: [n, 1008])`` on ``devices``.

  ``batch``: this process's part of a global batch, ``{'image': [local_B, H, W, C] in [0, 1],
  'mask': [local_B]}`` (``mask`` optional; rows with ``mask = 0`` are padding). The images are
  sharded over the mesh's batch axis, ``variables`` replicated; the result is the whole global
  batch's features on the host, padding rows dropped, float64 (:func:`devices.batch_apply`).
  """
  return batch_apply(inception_features, variables, devices)


# ------------------------------------------------------------------------------------------------
# Parameters: pytorch-fid's state dict <-> the Flax tree.


def _abstract_variables() -> Variables:
  """The variables' shapes and dtypes (``jax.eval_shape``: nothing is computed)."""
  x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), x)


def _torch_name(collection: str, path: Tuple[str, ...]) -> str:
  """The state-dict key of the Flax leaf ``collection/path``: torch calls a conv or dense
  ``kernel`` and a BatchNorm ``scale`` its ``weight``, and the BatchNorm statistics
  ``running_mean`` / ``running_var``."""
  leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight",
          ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
          ("batch_stats", "var"): "running_var"}[collection, path[-1]]
  return ".".join(path[:-1] + (leaf,))


def _torch_layout(flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The torch shape of a Flax leaf: convolutions are OIHW (Flax HWIO), dense weights (out, in)
  (Flax (in, out)); vectors are the same."""
  if len(flax_shape) == 4:
    height, width, fan_in, fan_out = flax_shape
    return fan_out, fan_in, height, width
  return tuple(reversed(flax_shape))


def _flax_layout(array: np.ndarray) -> np.ndarray:
  """The inverse of :func:`_torch_layout` on an array."""
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  return array.T if array.ndim == 2 else array


def state_dict_shapes() -> Dict[str, Tuple[int, ...]]:
  """The pytorch-fid state-dict keys this module reads, each with its torch shape (BatchNorm's
  ``num_batches_tracked`` counters, which nothing reads, left out)."""
  flat = traverse_util.flatten_dict(_abstract_variables())
  return {_torch_name(path[0], path[1:]): _torch_layout(leaf.shape)
          for path, leaf in flat.items()}


def params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> Variables:
  """Flax variables ``{'params': ..., 'batch_stats': ...}`` (float32 numpy) from pytorch-fid's
  state dict, its own key names: conv weights OIHW -> HWIO, ``fc.weight`` (out, in) -> (in, out).

  Raises:
    ValueError: in one line, naming the first missing key, unexpected key or wrong shape.
  """
  flat = traverse_util.flatten_dict(_abstract_variables())
  names = {_torch_name(path[0], path[1:]): path for path in flat}
  given = [k for k in state_dict if not k.endswith("num_batches_tracked")]
  missing = [k for k in names if k not in state_dict]
  unexpected = [k for k in given if k not in names]
  if missing or unexpected:
    first = (f"missing key {missing[0]!r}" if missing else
             f"unexpected key {unexpected[0]!r}")
    raise ValueError(f"not pytorch-fid's FID Inception state dict: {first} ({len(missing)} "
                     f"missing, {len(unexpected)} unexpected of {len(names)} keys)")
  variables = {}
  for name, path in names.items():
    value = np.asarray(state_dict[name], np.float32)
    expected = _torch_layout(flat[path].shape)
    if value.shape != expected:
      raise ValueError(f"not pytorch-fid's FID Inception state dict: {name!r} has shape "
                       f"{value.shape}, expected {expected}")
    variables[path] = _flax_layout(value)
  return traverse_util.unflatten_dict(variables)


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  """The state dict of a torch ``.pth`` as numpy arrays (needs torch >= 1.13)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel -- optional, for .pth files only
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (pip install torch); or convert it once where torch is "
        f"installed: {COMMAND} --convert {path} --out inception_fid.npz, and use the .npz") from e
  # weights_only: a state dict is tensors only; refuse pickled code.
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """pytorch-fid's state dict from a ``.pth`` (through torch) or from the converter's ``.npz``.

  Raises:
    FileNotFoundError / ValueError / ImportError: in one line, saying what to do.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no Inception weights at {path}: download pytorch-fid's "
        f"pt_inception-2015-12-05-6726825d.pth (its release assets) and give its path, or the "
        f".npz that {COMMAND} --convert makes of it")
  if path.endswith((".pth", ".pt")):
    return _read_torch(path)
  if path.endswith(".npz"):
    with np.load(path) as saved:
      return {k: saved[k] for k in saved.files}
  raise ValueError(f"Inception weights {path}: expected a torch .pth or the .npz that "
                   f"{COMMAND} --convert writes")


def load_inception(path: str) -> Variables:
  """The FID Inception's variables from a pytorch-fid ``.pth`` or its converted ``.npz``."""
  return params_from_state_dict(read_state_dict(path))


def save_state_dict(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Atomically writes ``state_dict`` as an ``.npz`` keyed by its names (float32), after
  checking it is the FID Inception's; :func:`load_inception` reads it without torch."""
  params_from_state_dict(state_dict)
  buffer = io.BytesIO()
  # Uncompressed: trained weights do not compress, and zlib would take most of the time.
  np.savez(buffer, **{k: np.asarray(v, np.float32) for k, v in state_dict.items()
                      if not k.endswith("num_batches_tracked")})
  outputs.atomic_write_bytes(path, buffer.getvalue())
