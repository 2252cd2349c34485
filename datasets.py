"""Input pipelines: image data sets and 2-D toy distributions as host-side numpy batches.

What a batch is. :func:`get_dataset` returns a :class:`Batches`; iterating it yields dicts

* ``'image'``: float32 ``[local_B, H, W, C]`` with values in ``[0, 1]`` (images) or ``[local_B, 2]``
  (toys, roughly unit scale). Images are NOT scaled to ``[-1, 1]``: the caller applies
  :func:`get_data_scaler`, as the authors did.
* ``'label'``: int32 ``[local_B]``, the class index, or -1 where the data set has no labels and on padding rows.
* ``'mask'``: float32 ``[local_B]``, 1 for real examples and 0 for padding rows (whose image is all zeros).

``local_B = batch_size // process_count`` where ``batch_size`` is the GLOBAL batch. Global batch ``k`` is a
fixed list of examples; process ``p`` gets rows ``[p * local_B, (p + 1) * local_B)`` of it and reads only
those, so the process-local batches concatenated in process order are exactly the global batch.

Training streams (``train=True``) repeat forever and yield full batches only. They walk an endless
sequence of epochs, epoch ``e`` being the permutation ``default_rng([seed, e])`` of the split; a batch may
straddle two epochs, so no example is ever dropped. Evaluation passes (``train=False``) visit every example
of the split exactly once, in the split's stored order, in ``num_batches = ceil(N / batch_size)``
batches; the last one is padded with ``mask = 0`` rows so shapes stay static. ``start_batch=k`` resumes a
pass (or a stream) at global batch ``k``. (The authors' evaluation loader shuffled and dropped the remainder,
so each bits/dim pass saw a random ~92 % of the test set.)

Preprocessing (in this order). Images are decoded as uint8 ``[H, W, C]``; CelebA is centrally cropped
to 140 x 140 as by the authors, LSUN and other non-square images to their central square; images whose
side differs from ``config.data.image_size`` are resized with an antialiased filter (bilinear; bicubic for
LSUN, as the authors) and rounded back to uint8, so every source yields 8-bit data. Grayscale stays one
channel; ``config.data.num_channels`` must equal the data's channel count. Then, per example, with
randomness keyed by ``(seed, position of the example in the stream)`` (so batches do not depend on
``process_count`` or on prefetching):

* ``random_flip`` (train only): left-right flip with probability 1/2;
* pixel ``v`` in {0..255} becomes ``v / 255`` in [0, 1]; with ``uniform_dequantization`` it becomes
  ``(v + u) / 256`` with ``u ~ U[0, 1)`` drawn independently per pixel (the authors' ``(x * 255 + u) / 256``
  with ``x = v / 255``), a value in [0, 1) that float32 rounding may turn into exactly 1.0 for ``v = 255``.
  Dequantization applies to training AND evaluation batches, since bits/dim is only meaningful on
  dequantized 8-bit data. ``seed`` is ``get_dataset``'s ``shuffle_seed``: use another one per bits/dim
  repeat to redraw the noise.

Sources (``config.data.source``) and where they read (``config.data.data_dir``):

* ``'tfds'``: TensorFlow Datasets, ``tfds.builder(name, data_dir=data_dir or None)``. The split is
  preprocessed once and held in host memory as uint8 (MNIST 47 MB, CIFAR-10 150 MB, CelebA-64 2 GB),
  or memory-mapped from a ``.npy`` written to ``cache_dir`` when one is given (LSUN). Only this path
  imports TensorFlow, lazily. ``split='test'`` means TFDS ``'validation'`` for CelebA and LSUN (as the
  authors), ``'test'`` otherwise. LSUN is named ``'lsun/<category>'``, or ``'LSUN'`` with
  ``config.data.category`` (the authors' spelling).
* ``'idx'``: MNIST / Fashion-MNIST ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``data_dir``
  (or ``data_dir/<dataset>``), read with numpy alone (:func:`read_idx`).
* ``'cifar_python'``: the official CIFAR-10 python batches ``data_batch_1..5`` / ``test_batch``, from
  ``data_dir`` = the extracted ``cifar-10-batches-py`` folder, a folder containing it, or the
  ``cifar-10-python.tar.gz`` archive (or a folder containing that).
* ``'npz'``: a ``.npz`` file (``data_dir`` is the file, or a folder holding ``<dataset>.npz``) with uint8
  images ``[N, H, W]`` or ``[N, H, W, C]`` under key ``'train'`` / ``'test'`` or ``'x_train'`` / ``'x_test'``,
  and optional int labels ``[N]`` under ``'train_labels'`` / ``'test_labels'`` or ``'y_train'`` / ``'y_test'``.
  Any dataset name is accepted (the name of a known data set also selects its cropping).
* ``'tfrecords'``: the authors' FFHQ / CelebA-HQ TFRecords (:func:`load_tfrecords`), from
  ``config.data.tfrecords_path`` (or ``data_dir``), a file or a glob; one split serves as both 'train' and
  'test', as by the authors. Imports TensorFlow; ``cache_dir`` works as for TFDS.
* ``'toy'``: ``'swiss_roll'``, ``'gaussian_mixture'``, ``'checkerboard'`` (needs ``config.data.dim = 2``),
  sampled with numpy (:func:`sample_toy`). Training draws fresh samples per global batch, keyed by
  ``(seed, k)``; the ``'test'`` split is a fixed set of ``TOY_TEST_SIZE`` samples (same for every seed).
  Flips and dequantization do not apply: ``random_flip`` and ``uniform_dequantization`` must be False.
"""

from __future__ import annotations

import atexit
import codecs
import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import queue
import tarfile
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np

Batch = Dict[str, np.ndarray]

SOURCES = ("tfds", "idx", "cifar_python", "npz", "tfrecords", "toy")
SPLITS = ("train", "test")
TOY_DATASETS = ("swiss_roll", "gaussian_mixture", "checkerboard")
TOY_TEST_SIZE = 10_000
_TOY_TEST_SEED = 20210101  # fixed: the toy test set is the same for every training seed
# Salts that keep the random streams of different uses apart.
_SALT_EXAMPLE, _SALT_TOY = 1, 2


# ----------------------------------------------------------------------------------------------------------
# Scalers.


def get_data_scaler(centered: bool) -> Callable[[Any], Any]:
  """Maps data in [0, 1] to [-1, 1] if ``centered``, else the identity. Works on numpy and JAX arrays."""
  if centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(centered: bool) -> Callable[[Any], Any]:
  """Inverse of :func:`get_data_scaler`: back to [0, 1]."""
  if centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


# ----------------------------------------------------------------------------------------------------------
# Data-set registry.


@dataclasses.dataclass(frozen=True)
class _ImageSpec:
  tfds_name: str
  tfds_eval_split: str            # the TFDS split behind split='test'
  sources: Tuple[str, ...]
  crop: int = 0                   # central crop before resizing (CelebA: 140); 0: central square
  resize_method: str = "bilinear"


_IMAGE_DATASETS: Dict[str, _ImageSpec] = {
    "mnist": _ImageSpec("mnist", "test", ("tfds", "idx", "npz")),
    "fashion_mnist": _ImageSpec("fashion_mnist", "test", ("tfds", "idx", "npz")),
    "cifar10": _ImageSpec("cifar10", "test", ("tfds", "cifar_python", "npz")),
    "svhn": _ImageSpec("svhn_cropped", "test", ("tfds", "npz")),
    "celeba": _ImageSpec("celeb_a", "validation", ("tfds", "npz"), crop=140),
    "ffhq": _ImageSpec("", "", ("tfrecords", "npz")),
    "celebahq": _ImageSpec("", "", ("tfrecords", "npz")),
}
_VALID_IMAGE_NAMES = tuple(_IMAGE_DATASETS) + ("lsun/<category>", "lsun (with config.data.category)",
                                                "any name with source npz or tfrecords")


def _image_spec(name: str, source: str) -> _ImageSpec:
  if name in _IMAGE_DATASETS:
    spec = _IMAGE_DATASETS[name]
  elif name.startswith("lsun/") and len(name) > 5:
    spec = _ImageSpec(name, "validation", ("tfds",), resize_method="bicubic")
  elif source in ("npz", "tfrecords"):  # generic formats: any name
    return _ImageSpec("", "", (source,))
  else:
    raise ValueError(f"Unknown config.data.dataset {name!r} for source {source!r}; valid names: "
                     f"{', '.join(_VALID_IMAGE_NAMES)} (toys, with source 'toy': {', '.join(TOY_DATASETS)}).")
  if source not in spec.sources:
    raise ValueError(f"Dataset {name!r} cannot be read from source {source!r}; valid sources for it: "
                     f"{', '.join(spec.sources)}.")
  return spec


def _names(config) -> Tuple[str, str]:
  """Returns the lower-cased (dataset, source) of ``config.data``, validated."""
  name = str(config.data.dataset).lower()
  source = str(config.data.source).lower()
  if source not in SOURCES:
    raise ValueError(f"Unknown config.data.source {source!r}; valid sources: {', '.join(SOURCES)}.")
  if source == "toy":
    if name not in TOY_DATASETS:
      raise ValueError(f"Unknown toy dataset {name!r}; valid toy names: {', '.join(TOY_DATASETS)}.")
  elif name in TOY_DATASETS:
    raise ValueError(f"Dataset {name!r} is a toy: set config.data.source = 'toy'.")
  elif name == "lsun":  # the authors' spelling: dataset 'LSUN' plus config.data.category
    category = str(config.data.get("category", "") or "").lower()
    if not category:
      raise ValueError("LSUN needs a scene category: set config.data.category (e.g. 'bedroom') or "
                       "config.data.dataset = 'lsun/<category>'.")
    name = f"lsun/{category}"
  return name, source


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


class SplitData(NamedTuple):
  """A whole split held (or memory-mapped) on the host.

  ``images``: uint8 ``[N, H, W, C]`` (8-bit images) or float32 ``[N, D]`` (toys); ``labels``: int32 ``[N]``,
  -1 where the data set has no labels.
  """
  images: np.ndarray
  labels: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST).


def read_idx(path: str) -> np.ndarray:
  """Reads a uint8 IDX file (``.gz`` or raw) into an array shaped by its header, e.g. ``[N, 28, 28]``.

  Raises ``ValueError`` naming the file if it is unreadable, not uint8 IDX (bad magic number) or has more
  or fewer data bytes than its header promises.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise
  except (OSError, EOFError) as e:  # gzip raises EOFError on a truncated stream
    raise ValueError(f"Cannot read IDX file {path}: {e}. It is corrupt or truncated; download it again.") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
    magic = "0x" + raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
    raise ValueError(f"{path} is not a uint8 IDX file: bad magic number {magic} (expected 0x0000080N, N the "
                     f"number of dimensions).")
  nd = raw[3]
  header = 4 + 4 * nd
  if len(raw) < header:
    raise ValueError(f"IDX file {path} is truncated inside its header.")
  shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=nd, offset=4))
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise ValueError(f"IDX file {path} has {len(raw) - header} data bytes but its header {shape} promises "
                     f"{expected}: it is truncated or corrupt; download it again.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_file(dirs: Sequence[str], names: Sequence[str]) -> Optional[str]:
  for d in dirs:
    for n in names:
      p = os.path.join(d, n)
      if os.path.isfile(p):
        return p
  return None


def load_idx(data_dir: str, split: str, dataset: str = "mnist") -> SplitData:
  """Loads an MNIST-format split: images uint8 ``[N, 28, 28, 1]``, labels int32 ``[N]``.

  Looks in ``data_dir`` and ``data_dir/<dataset>`` for ``{train,t10k}-images-idx3-ubyte[.gz]`` and the
  matching ``labels-idx1`` file (the ``images.idx3-ubyte`` spelling is accepted too).
  """
  _check_split(split)
  prefix = "train" if split == "train" else "t10k"
  dirs = [data_dir, os.path.join(data_dir, dataset)]
  arrays = []
  for kind, nd in (("images", 3), ("labels", 1)):
    stem = f"{prefix}-{kind}-idx{nd}-ubyte"
    alt = f"{prefix}-{kind}.idx{nd}-ubyte"
    path = _find_file(dirs, [stem + ".gz", stem, alt + ".gz", alt])
    if path is None:
      raise FileNotFoundError(
          f"IDX file {stem}.gz (or {stem}) not found in {data_dir!r} or {dirs[1]!r}: put the official "
          f"{dataset} files there and point config.data.data_dir at that folder, or use config.data.source='tfds'.")
    array = read_idx(path)
    if array.ndim != nd:
      raise ValueError(f"IDX file {path} has {array.ndim} dimensions, expected {nd} for {kind}.")
    arrays.append(array)
  images, labels = arrays
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"IDX {split} split in {data_dir}: {images.shape[0]} images but {labels.shape[0]} labels.")
  return SplitData(images[..., None], labels.astype(np.int32))


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches.


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays, so a hostile file cannot run code."""

  def find_class(self, module: str, name: str) -> Any:
    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's array reconstructor, whatever its module path
    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes under Python 3
    }
    if (module, name) not in allowed:
      raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch file.")
    return allowed[(module, name)]


def _cifar_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
  try:
    d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # noqa: BLE001 -- any unpickling failure means a bad file
    raise ValueError(f"Cannot read CIFAR-10 batch {where}: {e}") from e
  if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
    raise ValueError(f"CIFAR-10 batch {where} is not a dict with b'data' and b'labels'.")
  data = np.asarray(d[b"data"])
  labels = np.asarray(d[b"labels"], np.int32)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
    raise ValueError(f"CIFAR-10 batch {where}: expected uint8 data [N, 3072] and N labels, got "
                     f"{data.dtype} {data.shape} and {labels.shape}.")
  # Rows are channel-major (1024 R, 1024 G, 1024 B), each plane row-major.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_python(data_dir: str, split: str) -> SplitData:
  """Loads CIFAR-10 from the official python batches: images uint8 ``[N, 32, 32, 3]``, labels int32 ``[N]``."""
  _check_split(split)
  members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
  archive = None
  folder = None
  if os.path.isfile(data_dir):
    archive = data_dir
  elif os.path.isdir(data_dir):
    for cand in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
      if os.path.isfile(os.path.join(cand, members[0])):
        folder = cand
        break
    else:
      archive = _find_file([data_dir], ["cifar-10-python.tar.gz"])
  if folder is None and archive is None:
    raise FileNotFoundError(
        f"CIFAR-10 python batch {members[0]} not found in {data_dir!r}: point config.data.data_dir at the "
        f"extracted cifar-10-batches-py folder or at cifar-10-python.tar.gz, or use config.data.source='tfds'.")
  parts = []
  if folder is not None:
    for m in members:
      path = os.path.join(folder, m)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 python batch {path} is missing; extract the full archive again.")
      with open(path, "rb") as f:
        parts.append(_cifar_batch(f.read(), path))
  else:
    with tarfile.open(archive, "r:*") as tar:
      by_name = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      for m in members:
        if m not in by_name:
          raise FileNotFoundError(f"CIFAR-10 archive {archive} has no member {m}.")
        parts.append(_cifar_batch(tar.extractfile(by_name[m]).read(), f"{archive}:{m}"))
  return SplitData(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# ----------------------------------------------------------------------------------------------------------
# npz.

_NPZ_KEYS = {"train": (("train", "x_train"), ("train_labels", "y_train")),
             "test": (("test", "x_test"), ("test_labels", "y_test"))}


def load_npz(path: str, split: str, dataset: str = "") -> SplitData:
  """Loads a split from a ``.npz`` (keys in the module docstring): images uint8 ``[N, H, W, C]``."""
  _check_split(split)
  if os.path.isdir(path):
    path = os.path.join(path, f"{dataset}.npz")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file {path!r} not found: set config.data.data_dir to the .npz file or to a "
                            f"folder holding <dataset>.npz.")
  image_keys, label_keys = _NPZ_KEYS[split]
  with np.load(path, allow_pickle=False) as f:
    keys = list(f.keys())
    image_key = next((k for k in image_keys if k in keys), None)
    if image_key is None:
      raise ValueError(f"npz file {path} has no {split} images: expected key {' or '.join(image_keys)}, "
                       f"found {keys}.")
    images = f[image_key]
    label_key = next((k for k in label_keys if k in keys), None)
    labels = f[label_key] if label_key else np.full(images.shape[:1], -1)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"npz {path}[{image_key!r}]: expected uint8 [N, H, W] or [N, H, W, 1|3], got "
                     f"{images.dtype} {images.shape}.")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"npz {path}[{label_key!r}]: expected integer labels [{images.shape[0]}], got "
                     f"{labels.dtype} {labels.shape}.")
  return SplitData(images, labels.astype(np.int32))


# ----------------------------------------------------------------------------------------------------------
# Cropping and resizing of numpy-sourced images (TFDS does the same in TensorFlow).


def _crop_box(h: int, w: int, crop: int) -> Tuple[int, int, int]:
  size = crop if crop else min(h, w)
  if size > min(h, w):
    raise ValueError(f"Cannot central-crop {size} pixels from {h} x {w} images.")
  return (h - size) // 2, (w - size) // 2, size


def fit_images(images: np.ndarray, image_size: int, *, crop: int = 0, method: str = "bilinear",
               chunk: int = 1024) -> np.ndarray:
  """Central crop (``crop`` pixels, else the central square) and antialiased resize to ``image_size``.

  ``images``: uint8 ``[N, H, W, C]``; returns uint8 ``[N, image_size, image_size, C]`` (rounded), the input
  itself when nothing is to be done. Uses ``jax.image.resize`` on the host CPU.
  """
  n, h, w, c = images.shape
  top, left, size = _crop_box(h, w, crop)
  if (top, left, size) != (0, 0, h) or size != w:
    images = images[:, top:top + size, left:left + size]
  if size == image_size:
    return images
  import jax  # pylint: disable=g-import-not-at-top -- only needed when resizing
  jax_method = {"bilinear": "linear", "bicubic": "cubic"}[method]
  out = np.empty((n, image_size, image_size, c), np.uint8)
  with jax.default_device(jax.devices("cpu")[0]):
    for i in range(0, n, chunk):
      x = jax.numpy.asarray(images[i:i + chunk], jax.numpy.float32)
      y = jax.image.resize(x, (x.shape[0], image_size, image_size, c), jax_method, antialias=True)
      out[i:i + chunk] = np.clip(np.rint(np.asarray(y)), 0, 255).astype(np.uint8)
  return out


# ----------------------------------------------------------------------------------------------------------
# TFDS (the only path that imports TensorFlow).


def _import_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
  except RuntimeError:
    pass  # TF already initialised its devices; nothing to change then
  return tf, tfds


def _tfds_help(name: str) -> str:
  return (f"point config.data.data_dir at local files with config.data.source='idx' (MNIST/Fashion-MNIST), "
          f"'cifar_python' (CIFAR-10) or 'npz', or prepare TFDS offline: "
          f"datasets.prepare_tfds({name!r}, data_dir, manual_dir=<folder with the official files>).")


def prepare_tfds(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> None:
  """Runs TFDS ``download_and_prepare`` for the TFDS builder ``name``, offline when ``manual_dir`` holds the
  official files (e.g. the four MNIST ``.gz`` files)."""
  _, tfds = _import_tf()
  builder = tfds.builder(name, data_dir=data_dir or None)
  kwargs = {}
  if manual_dir:
    kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(**kwargs)


def _tfds_builder(name: str, data_dir: str):
  """A prepared TFDS builder; downloads and prepares it first if needed (offline, TFDS retries the download
  for a few minutes before it fails)."""
  _, tfds = _import_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
      builder.download_and_prepare()
  except Exception as e:  # noqa: BLE001 -- any TFDS failure gets the same advice
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise RuntimeError(f"TFDS dataset {name!r} is not prepared in data_dir={data_dir or '<TFDS default>'} "
                       f"and could not be prepared ({type(e).__name__}: {first_line}); {_tfds_help(name)}") from e
  return builder


def _tf_fit(tf, image, image_size: int, crop: int, method: str):
  """TensorFlow twin of :func:`fit_images` for one uint8 ``[H, W, C]`` image (sizes may be dynamic)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  size = tf.constant(crop) if crop else tf.minimum(h, w)
  top, left = (h - size) // 2, (w - size) // 2
  image = image[top:top + size, left:left + size]

  def resize():
    x = tf.image.resize(image, (image_size, image_size), method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)

  return tf.cond(tf.equal(size, image_size), lambda: image, resize)


def _cache_paths(cache_dir: Optional[str], tag: str) -> Optional[Tuple[str, str]]:
  if not cache_dir:
    return None
  return os.path.join(cache_dir, tag + "-images.npy"), os.path.join(cache_dir, tag + "-labels.npy")


def _read_cache(paths: Optional[Tuple[str, str]]) -> Optional[SplitData]:
  if paths and os.path.isfile(paths[0]) and os.path.isfile(paths[1]):
    return SplitData(np.load(paths[0], mmap_mode="r"), np.load(paths[1]))
  return None


def _materialize(batches: Iterator[Tuple[np.ndarray, np.ndarray]], n: int, where: str,
                 cache: Optional[Tuple[str, str]]) -> SplitData:
  """Stacks ``n`` examples arriving as (uint8 ``[b, H, W, C]``, int32 ``[b]``) batches into host memory, or
  into a ``.npy`` at ``cache[0]`` (labels at ``cache[1]``) that is then memory-mapped."""
  images: Optional[np.ndarray] = None
  labels = np.empty((n,), np.int32)
  tmp = ""
  i = 0
  for x, y in batches:
    if images is None:
      shape = (n,) + tuple(x.shape[1:])
      if cache:
        os.makedirs(os.path.dirname(cache[0]) or ".", exist_ok=True)
        tmp = f"{cache[0]}.{uuid.uuid4().hex}.tmp"  # unique even across hosts sharing the folder
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
      else:
        images = np.empty(shape, np.uint8)
    if i + len(x) > n:
      raise RuntimeError(f"{where} yielded more than the {n} examples it announced.")
    images[i:i + len(x)] = x
    labels[i:i + len(x)] = y
    i += len(x)
  if images is None or i != n:
    raise RuntimeError(f"{where} yielded {i} examples, expected {n}.")
  if cache:
    images.flush()
    del images
    np.save(tmp + ".npy", labels)
    os.replace(tmp + ".npy", cache[1])
    os.replace(tmp, cache[0])  # atomic: concurrent processes never see a partial cache
    return _read_cache(cache)
  return SplitData(images, labels)


def load_tfds(spec: _ImageSpec, split: str, data_dir: str, image_size: int,
              cache_dir: Optional[str] = None) -> SplitData:
  """Reads a TFDS split in stored order, cropped/resized to uint8 ``[N, image_size, image_size, C]``.

  With ``cache_dir`` the images are written once to ``cache_dir`` as ``.npy`` and memory-mapped.
  """
  _check_split(split)
  tfds_split = "train" if split == "train" else spec.tfds_eval_split
  cache = _cache_paths(cache_dir, f"{spec.tfds_name.replace('/', '_')}-{tfds_split}-{image_size}")
  cached = _read_cache(cache)
  if cached is not None:
    return cached
  tf, tfds = _import_tf()
  builder = _tfds_builder(spec.tfds_name, data_dir)
  has_labels = "label" in builder.info.features

  def preprocess(d):
    image = _tf_fit(tf, d["image"], image_size, spec.crop, spec.resize_method)
    label = tf.cast(d["label"], tf.int32) if has_labels else tf.constant(-1, tf.int32)
    return image, label

  ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
  return _materialize(tfds.as_numpy(ds), builder.info.splits[tfds_split].num_examples,
                      f"TFDS {spec.tfds_name}/{tfds_split}", cache)


def load_tfrecords(path: str, split: str, image_size: int, crop: int = 0,
                   cache_dir: Optional[str] = None) -> SplitData:
  """Reads the authors' FFHQ / CelebA-HQ TFRecords: one record per image with features ``shape`` (int64
  ``[3]``, C, H, W) and ``data`` (the raw uint8 CHW bytes). Returns uint8 ``[N, image_size, image_size, C]``
  (central square, antialiased resize), labels -1.

  ``path`` is a file or a glob. The files hold one split, used for both ``'train'`` and ``'test'`` (as the
  authors did).
  """
  _check_split(split)
  tf, _ = _import_tf()
  files = sorted(tf.io.gfile.glob(path)) if path else []
  if not files:
    raise FileNotFoundError(f"No TFRecord file matches {path!r}: set config.data.tfrecords_path (or "
                            f"config.data.data_dir) to the file or a glob of the files.")
  tag = f"tfrecords-{hashlib.sha1(','.join(os.path.abspath(f) for f in files).encode()).hexdigest()[:12]}"
  cache = _cache_paths(cache_dir, f"{tag}-{image_size}")
  cached = _read_cache(cache)
  if cached is not None:
    return cached
  n = sum(1 for _ in tf.data.TFRecordDataset(files))  # records carry no count; one cheap pass

  def parse(record):
    sample = tf.io.parse_single_example(record, {"shape": tf.io.FixedLenFeature([3], tf.int64),
                                                 "data": tf.io.FixedLenFeature([], tf.string)})
    image = tf.transpose(tf.reshape(tf.io.decode_raw(sample["data"], tf.uint8), sample["shape"]), (1, 2, 0))
    return _tf_fit(tf, image, image_size, crop, "bilinear"), tf.constant(-1, tf.int32)

  ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _materialize(ds.batch(64).as_numpy_iterator(), n, f"TFRecords {path}", cache)


# ----------------------------------------------------------------------------------------------------------
# Toy 2-D distributions.

_SWISS_ROLL_SCALE = 1.0 / 7.0     # brings the roll (radius 4.7..14.1) to roughly unit std
_SWISS_ROLL_NOISE = 0.05          # std of the isotropic Gaussian noise, after scaling
_MIXTURE_COMPONENTS = 8
_MIXTURE_STD = 0.1
_MIXTURE_RADIUS = float(np.sqrt(2.0 * (1.0 - _MIXTURE_STD**2)))  # per-coordinate variance exactly 1
_CHECKER_HALF_WIDTH = float(np.sqrt(3.0))  # board [-w, w]^2: per-coordinate variance w^2/3 = 1


def sample_toy(name: str, n: int, seed: int) -> np.ndarray:
  """Draws ``n`` points of the 2-D toy distribution ``name`` (case-insensitive), float32 ``[n, 2]``, from
  ``numpy.random.default_rng(seed)``; the distributions are described in :func:`_sample_toy`."""
  return _sample_toy(str(name).lower(), n, np.random.default_rng(seed))[0]


def _sample_toy(name: str, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Draws ``n`` points of a 2-D toy distribution: returns float32 ``[n, 2]`` and int32 labels ``[n]``.

  * ``swiss_roll``: ``s * (t cos t, t sin t) + N(0, 0.05^2 I)``, ``t = 1.5 pi (1 + 2u)``, ``u ~ U[0, 1)``,
    ``s = 1/7``; label -1.
  * ``gaussian_mixture``: 8 equal-weight Gaussians (std 0.1) on a circle of radius ``sqrt(2 (1 - 0.1^2))``
    at angles ``2 pi k / 8``: mean 0, per-coordinate variance exactly 1; label = component ``k``.
  * ``checkerboard``: uniform on the 8 dark cells of a 4 x 4 board on ``[-sqrt 3, sqrt 3]^2`` (cell
    ``(i, j)``, counted from the lower left, is dark when ``i + j`` is even): each coordinate is marginally
    ``U[-sqrt 3, sqrt 3]`` (mean 0, variance 1); label -1.
  """
  if name == "swiss_roll":
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = _SWISS_ROLL_SCALE * np.stack([t * np.cos(t), t * np.sin(t)], -1)
    x = x + _SWISS_ROLL_NOISE * rng.standard_normal((n, 2))
    labels = np.full(n, -1)
  elif name == "gaussian_mixture":
    labels = rng.integers(0, _MIXTURE_COMPONENTS, n)
    angle = 2.0 * np.pi * labels / _MIXTURE_COMPONENTS
    x = _MIXTURE_RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1) + _MIXTURE_STD * rng.standard_normal((n, 2))
  elif name == "checkerboard":
    # A dark cell: column i uniform in 0..3, row j of the same parity among the two candidates.
    i = rng.integers(0, 4, n)
    j = 2 * rng.integers(0, 2, n) + (i % 2)
    cell = np.stack([i, j], -1) + rng.random((n, 2))  # in [0, 4)^2
    x = (cell / 2.0 - 1.0) * _CHECKER_HALF_WIDTH
    labels = np.full(n, -1)
  else:
    raise ValueError(f"Unknown toy dataset {name!r}; valid toy names: {', '.join(TOY_DATASETS)}.")
  return x.astype(np.float32), labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------
# Loading a split by config.


def load_split(config, split: str, *, cache_dir: Optional[str] = None) -> SplitData:
  """Loads and preprocesses (crop/resize, channel check) the whole ``split`` named by ``config.data``.

  For toys only ``split='test'`` is a finite set (``TOY_TEST_SIZE`` fixed samples); training toys are
  sampled on the fly by :func:`get_dataset`.
  """
  _check_split(split)
  name, source = _names(config)
  if source == "toy":
    if split == "train":
      raise ValueError("The toy training split is an endless stream: use get_dataset(..., train=True).")
    return SplitData(*_sample_toy(name, TOY_TEST_SIZE, np.random.default_rng(_TOY_TEST_SEED)))
  spec = _image_spec(name, source)
  data_dir = str(config.data.data_dir or "")
  image_size = int(config.data.image_size)
  if source == "tfrecords":
    data_dir = str(config.data.get("tfrecords_path", "") or data_dir)
  if source != "tfds" and not data_dir:
    raise ValueError(f"config.data.source={source!r} reads local files: set config.data.data_dir"
                     f"{' (or config.data.tfrecords_path)' if source == 'tfrecords' else ''}.")
  if source == "tfds":
    data = load_tfds(spec, split, data_dir, image_size, cache_dir)
  elif source == "tfrecords":
    data = load_tfrecords(data_dir, split, image_size, spec.crop, cache_dir)
  elif source == "idx":
    data = load_idx(data_dir, split, name)
  elif source == "cifar_python":
    data = load_cifar_python(data_dir, split)
  else:
    data = load_npz(data_dir, split, name)
  if data.images.shape[0] == 0:
    raise ValueError(f"The {split} split of {name!r} ({source}) is empty.")
  channels = data.images.shape[-1]
  if channels != int(config.data.num_channels):
    raise ValueError(f"{name!r} images have {channels} channel(s) but config.data.num_channels = "
                     f"{config.data.num_channels}; set it to {channels}.")
  if source not in ("tfds", "tfrecords"):  # those two crop and resize in TensorFlow
    data = SplitData(fit_images(data.images, image_size, crop=spec.crop, method=spec.resize_method), data.labels)
  return data


def num_examples(config, split: str) -> int:
  """Number of examples in ``split`` (one evaluation pass visits each once)."""
  name, source = _names(config)
  if source == "toy":
    return load_split(config, split).labels.shape[0]
  if source == "tfds":
    _check_split(split)
    spec = _image_spec(name, source)
    builder = _tfds_builder(spec.tfds_name, str(config.data.data_dir or ""))
    return builder.info.splits["train" if split == "train" else spec.tfds_eval_split].num_examples
  return load_split(config, split).labels.shape[0]


# ----------------------------------------------------------------------------------------------------------
# Batching.


def _prefetch(produce: Callable[[int], Batch], ks: Iterator[int], depth: int) -> Iterator[Batch]:
  """Yields ``produce(k)`` for ``k`` in ``ks``, computed ``depth`` batches ahead by a daemon thread."""
  q: "queue.Queue[Tuple[str, Any]]" = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item: Tuple[str, Any]) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work() -> None:
    try:
      for k in ks:
        if not put(("batch", produce(k))):
          return
      put(("end", None))
    except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which re-raises it
      put(("error", e))

  thread = threading.Thread(target=work, daemon=True)

  def shutdown() -> None:
    # Waits for the worker to finish its current batch: a daemon thread still running numpy code when the
    # interpreter finalizes can abort the process.
    stop.set()
    while thread.is_alive():
      try:
        while True:
          q.get_nowait()  # frees a worker blocked on a full queue
      except queue.Empty:
        pass
      thread.join(timeout=0.1)

  thread.start()
  atexit.register(shutdown)  # for iterators still alive at exit (atexit runs before daemon threads stop)
  try:
    while True:
      kind, item = q.get()
      if kind == "end":
        return
      if kind == "error":
        raise item
      yield item
  finally:
    atexit.unregister(shutdown)
    shutdown()


class Batches:
  """Process-local batches of one split; iterate it, or get batch ``k`` directly with :meth:`batch`.

  Attributes:
    batch_size: the global batch size; ``local_batch_size = batch_size // process_count``.
    num_batches: batches in one evaluation pass, ``ceil(num_examples / batch_size)``; None for (endless)
      training streams.
    num_examples: examples in the split (None for toy training streams, which are endless).
    start_batch: the global batch index iteration starts at.
  """

  def __init__(self, produce: Callable[[int], Batch], *, batch_size: int, local_batch_size: int,
               num_batches: Optional[int], num_examples: Optional[int], start_batch: int, prefetch: int):
    self._produce = produce
    self.batch_size = batch_size
    self.local_batch_size = local_batch_size
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.start_batch = start_batch
    self._prefetch = prefetch

  def batch(self, k: int) -> Batch:
    """This process's part of global batch ``k`` (deterministic; no prefetching)."""
    if k < 0 or (self.num_batches is not None and k >= self.num_batches):
      raise IndexError(f"Batch {k} out of range [0, {self.num_batches}).")
    return self._produce(k)

  def __len__(self) -> int:
    """Batches left from ``start_batch`` in an evaluation pass."""
    if self.num_batches is None:
      raise TypeError("A training stream is endless and has no length.")
    return max(self.num_batches - self.start_batch, 0)

  def __iter__(self) -> Iterator[Batch]:
    if self.num_batches is None:
      ks: Iterator[int] = iter(_count_from(self.start_batch))
    else:
      ks = iter(range(self.start_batch, self.num_batches))
    if self._prefetch <= 0:
      return map(self._produce, ks)
    return _prefetch(self._produce, ks, self._prefetch)


def _count_from(start: int) -> Iterator[int]:
  k = start
  while True:
    yield k
    k += 1


def _to_float(images: np.ndarray, positions: np.ndarray, flips: bool, dequantize: bool, seed: int) -> np.ndarray:
  """uint8 ``[b, H, W, C]`` -> float32 in [0, 1], with per-example flip / dequantization noise keyed by
  ``(seed, position)``; float toy data pass through unchanged."""
  if images.dtype != np.uint8:
    return images.astype(np.float32)
  out = np.empty(images.shape, np.float32)
  for r, (image, pos) in enumerate(zip(images, positions)):
    rng = np.random.default_rng([seed, _SALT_EXAMPLE, int(pos)])
    if flips and rng.random() < 0.5:
      image = image[:, ::-1]
    if dequantize:
      out[r] = (image + rng.random(image.shape, np.float32)) / np.float32(256.0)
    else:
      out[r] = image / np.float32(255.0)
  return out


def make_batches(data: SplitData, *, batch_size: int, train: bool, process_index: int = 0,
                 process_count: int = 1, seed: int = 0, random_flip: bool = False,
                 uniform_dequantization: bool = False, start_batch: int = 0, prefetch: int = 2) -> Batches:
  """Batches over an in-memory split (see the module docstring for order, sharding and augmentation).

  ``seed`` (a non-negative int) fixes the training order and all per-example noise.
  """
  local_b = _local_batch_size(batch_size, process_index, process_count)
  n = data.labels.shape[0]
  if n == 0:
    raise ValueError("Cannot batch an empty split.")
  if data.images.dtype != np.uint8 and (random_flip or uniform_dequantization):
    raise ValueError("random_flip and uniform_dequantization apply to 8-bit images only; disable them "
                     "(config.data.random_flip / config.data.uniform_dequantization) for vector data.")
  offsets = np.arange(process_index * local_b, (process_index + 1) * local_b)

  @functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)

  def produce(k: int) -> Batch:
    positions = k * batch_size + offsets
    if train:
      epochs, within = np.divmod(positions, n)
      index = np.empty_like(positions)
      for e in np.unique(epochs):
        index[epochs == e] = permutation(int(e))[within[epochs == e]]
      mask = np.ones(local_b, bool)
    else:
      mask = positions < n
      index = np.where(mask, positions, 0)
    images = _to_float(data.images[index], positions, train and random_flip, uniform_dequantization, seed)
    labels = np.where(mask, data.labels[index], -1).astype(np.int32)
    images[~mask] = 0.0
    return {"image": images, "label": labels, "mask": mask.astype(np.float32)}

  return Batches(produce, batch_size=batch_size, local_batch_size=local_b,
                 num_batches=None if train else -(-n // batch_size), num_examples=n,
                 start_batch=start_batch, prefetch=prefetch)


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"Need 0 <= process_index ({process_index}) < process_count ({process_count}).")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"The global batch size {batch_size} must be a positive multiple of the process count "
                     f"{process_count}.")
  return batch_size // process_count


def _toy_stream(name: str, *, batch_size: int, process_index: int, process_count: int, seed: int,
                start_batch: int, prefetch: int) -> Batches:
  local_b = _local_batch_size(batch_size, process_index, process_count)
  lo = process_index * local_b

  def produce(k: int) -> Batch:
    # Drawn per global batch and sliced, so the global batch does not depend on process_count.
    x, labels = _sample_toy(name, batch_size, np.random.default_rng([seed, _SALT_TOY, k]))
    return {"image": x[lo:lo + local_b], "label": labels[lo:lo + local_b],
            "mask": np.ones(local_b, np.float32)}

  return Batches(produce, batch_size=batch_size, local_batch_size=local_b, num_batches=None,
                 num_examples=None, start_batch=start_batch, prefetch=prefetch)


def get_dataset(config, *, split: str, batch_size: int, train: bool, process_index: int = 0,
                process_count: int = 1, shuffle_seed: int = 0, start_batch: int = 0, prefetch: int = 2,
                cache_dir: Optional[str] = None) -> Batches:
  """Batches of ``split`` ('train' | 'test') of the data set named by ``config.data``.

  Args:
    config: reads ``config.data`` (dataset, source, data_dir, image_size, num_channels, random_flip,
      uniform_dequantization, dim).
    split: 'train' or 'test'.
    batch_size: GLOBAL batch size, a multiple of ``process_count``.
    train: True: shuffled endless stream of full batches, with random flips if enabled. False: one pass in
      stored order over every example exactly once, the last batch padded (``mask = 0``).
    process_index, process_count: this process and the number of processes (``jax.process_index()``...).
    shuffle_seed: non-negative int seeding the training order, flips and dequantization noise (use a
      different one per bits/dim repeat to redraw the noise).
    start_batch: first global batch to produce (resuming a stream or an evaluation pass).
    prefetch: batches computed ahead on a background thread (0: none).
    cache_dir: TFDS only: where to keep the preprocessed split as a memory-mapped ``.npy``.

  Returns:
    :class:`Batches` yielding ``{'image': float32 [local_B, H, W, C] in [0, 1] (toys: [local_B, 2]),
    'label': int32 [local_B], 'mask': float32 [local_B]}``.
  """
  _check_split(split)
  name, source = _names(config)
  flip = bool(config.data.random_flip)
  dequantize = bool(config.data.uniform_dequantization)
  if source == "toy":
    if int(config.data.dim) != 2:
      raise ValueError(f"Toy {name!r} is 2-D: set config.data.dim = 2 (got {config.data.dim}).")
    if flip or dequantize:
      raise ValueError("Toy data are 2-D points: set config.data.random_flip = False and "
                       "config.data.uniform_dequantization = False.")
    if split == "train":
      return _toy_stream(name, batch_size=batch_size, process_index=process_index, process_count=process_count,
                         seed=shuffle_seed, start_batch=start_batch, prefetch=prefetch)
  data = load_split(config, split, cache_dir=cache_dir)
  return make_batches(data, batch_size=batch_size, train=train, process_index=process_index,
                      process_count=process_count, seed=shuffle_seed, random_flip=flip,
                      uniform_dequantization=dequantize, start_batch=start_batch, prefetch=prefetch)
