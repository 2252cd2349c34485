"""Where ``config.data`` leads: the sources that read each data set, whole splits, batch streams
and the scalers (the package docstring says what a batch is).

Preprocessing (in this order). Images are decoded as uint8 ``[H, W, C]``, centrally cropped and
resized to ``config.data.image_size`` (``readers.fit_images``), so every source yields 8-bit data.
Grayscale stays one channel; ``config.data.num_channels`` must equal the data's channel count.
Then, per example: ``random_flip`` (train only) and the map to [0, 1], ``v / 255`` or, with
``uniform_dequantization`` (training AND evaluation), ``(v + u) / 256``; ``get_dataset``'s
``shuffle_seed`` keys that randomness, so use another one per bits/dim repeat to redraw the noise.

Sources (``config.data.source``, registered in :data:`_SOURCES`) and where they read
(``config.data.data_dir``):

* ``'tfds'``: TensorFlow Datasets, ``tfds.builder(name, data_dir=data_dir)``
  (``tf_readers.load_tfds``), held in host memory or memory-mapped from ``cache_dir``.
  ``split='test'`` means TFDS ``'validation'`` for CelebA and LSUN (as the authors), ``'test'``
  otherwise. LSUN is named ``'lsun/<category>'``, or ``'LSUN'`` with ``config.data.category`` (the
  authors' spelling).
* ``'idx'``: MNIST / Fashion-MNIST IDX files in ``data_dir`` or ``data_dir/<dataset>``
  (``readers.load_idx``).
* ``'cifar_python'``: the official CIFAR-10 python batches, extracted or as the archive
  (``readers.load_cifar_python``).
* ``'npz'``: a ``.npz`` file, ``data_dir`` or ``data_dir/<dataset>.npz`` (``readers.load_npz``).
  Any dataset name is accepted (the name of a known data set also selects its cropping).
* ``'tfrecords'``: the authors' FFHQ / CelebA-HQ TFRecords (``tf_readers.load_tfrecords``), from
  ``config.data.tfrecords_path`` (or ``data_dir``), a file or a glob; one split serves as both
  'train' and 'test', as by the authors. ``cache_dir`` works as for TFDS.
* ``'folder'``: PNG / JPEG files below ``data_dir`` (``readers.load_image_folder``), decoded as
  grayscale or RGB by ``num_channels`` (1 or 3), each cropped to its central square and resized.
  Splits: ``train/`` and ``test/`` (or ``val/``, ``validation/``) subfolders if present, else
  ``config.data.holdout_fraction`` (default 0.05, at least one image) held out as 'test'; class
  subfolders give labels. Any dataset name is accepted.
* ``'toy'``: the distributions of ``toy_data`` (needs ``config.data.dim = 2``). Training draws fresh
  samples per global batch, keyed by ``(seed, k)``; the ``'test'`` split is a fixed set of
  ``toy_data.TOY_TEST_SIZE`` samples (same for every seed). Flips and dequantization do not apply:
  ``random_flip`` and ``uniform_dequantization`` must be False.

Without ``data_dir``, sources ``'tfds'``, ``'idx'`` and ``'cifar_python'`` get their data from
``lookup``: ``$SCORE_SDE_DATA_DIR``, then TFDS's prepared data, then a TFDS download when the
network answers, else one line naming every way to provide them. The place found may be read by
another source than the one asked for (``'idx'`` asked, TFDS's prepared MNIST found). The other
sources need ``data_dir`` (or ``tfrecords_path``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import ml_collections

import dequantization
from datasets import batching
from datasets import lookup
from datasets import readers
from datasets import tf_readers
from datasets import toy_data
from infra.registry import Registry

Config = ml_collections.ConfigDict

# ------------------------------------------------------------------------------------------------
# Shapes and scalers.


def is_vector_data(config: Config) -> bool:
  """Vector (toy) data ``[B, D]`` (``config.data.dim > 0``) rather than images ``[B, H, W, C]``."""
  return bool(config.data.get("dim", 0))


def input_shape(config: Config, batch_size: int = 1) -> Tuple[int, ...]:
  """``(B, H, W, C)`` for image data, ``(B, D)`` for vector (toy) data."""
  data = config.data
  if is_vector_data(config):
    return (batch_size, data.dim)
  return (batch_size, data.image_size, data.image_size, data.num_channels)


def data_scalers(config: Config) -> Tuple[Callable[[Any], Any], Callable[[Any], Any]]:
  """``(scaler, inverse_scaler)`` between data space ([0, 1] images) and model space.

  Images go to [-1, 1] if ``data.centered``; vector (toy) data are not images and pass as they
  are.
  """
  if is_vector_data(config):
    return (lambda x: x), (lambda x: x)
  return get_data_scaler(config.data.centered), get_data_inverse_scaler(config.data.centered)


def get_data_scaler(centered: bool) -> Callable[[Any], Any]:
  """Maps data in [0, 1] to [-1, 1] if ``centered``, else the identity (numpy or JAX arrays)."""
  if centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(centered: bool) -> Callable[[Any], Any]:
  """Inverse of :func:`get_data_scaler`: back to [0, 1]."""
  if centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


# ------------------------------------------------------------------------------------------------
# Image data sets.


@dataclasses.dataclass(frozen=True)
class _ImageSpec:
  """How one image data set is read and preprocessed.

  Attributes:
    tfds_name: its TFDS builder; empty where TFDS does not serve it.
    tfds_eval_split: the TFDS split behind ``split='test'``.
    sources: the ``config.data.source`` values that can read it.
    crop: central crop before resizing (CelebA: 140); 0: the central square.
    resize_method: ``'bilinear'`` or ``'bicubic'``.
  """
  tfds_name: str
  tfds_eval_split: str
  sources: Tuple[str, ...]
  crop: int = 0
  resize_method: str = "bilinear"

  def tfds_split(self, split: str) -> str:
    """The TFDS split behind our ``split`` ('train' | 'test')."""
    return "train" if split == "train" else self.tfds_eval_split


_IMAGE_DATASETS: Dict[str, _ImageSpec] = {
    "mnist": _ImageSpec("mnist", "test", ("tfds", "idx", "npz")),
    "fashion_mnist": _ImageSpec("fashion_mnist", "test", ("tfds", "idx", "npz")),
    "cifar10": _ImageSpec("cifar10", "test", ("tfds", "cifar_python", "npz")),
    "svhn": _ImageSpec("svhn_cropped", "test", ("tfds", "npz")),
    "celeba": _ImageSpec("celeb_a", "validation", ("tfds", "npz"), crop=140),
    "ffhq": _ImageSpec("", "", ("tfrecords", "npz")),
    "celebahq": _ImageSpec("", "", ("tfrecords", "npz")),
}


def _image_spec(name: str, source: str) -> _ImageSpec:
  """The spec of image data set ``name`` read from ``source``; ValueError if it cannot be."""
  if name in _IMAGE_DATASETS:
    spec = _IMAGE_DATASETS[name]
  elif name.startswith("lsun/") and len(name) > 5:
    spec = _ImageSpec(name, "validation", ("tfds",), resize_method="bicubic")
  elif _SOURCES.get(source).any_dataset:
    return _ImageSpec("", "", (source,))
  else:
    generic = " or ".join(n for n, s in _SOURCES.items() if s.any_dataset)
    valid = tuple(_IMAGE_DATASETS) + ("lsun/<category>", "lsun (with config.data.category)",
                                      f"any name with source {generic}")
    raise ValueError(f"Unknown config.data.dataset {name!r} for source {source!r}; valid names: "
                     f"{', '.join(valid)} (toys, with source 'toy': "
                     f"{', '.join(toy_data.TOYS.names())}).")
  if source not in spec.sources:
    raise ValueError(f"Dataset {name!r} cannot be read from source {source!r}; valid sources for "
                     f"it: {', '.join(spec.sources)}.")
  return spec


# ------------------------------------------------------------------------------------------------
# Data sources.


class _Request(NamedTuple):
  """One split of one data set, as ``config.data`` asks a source for it."""
  name: str                     # lower-cased dataset ('lsun/<category>' for LSUN)
  spec: Optional[_ImageSpec]    # None for the toys
  split: str                    # 'train' | 'test'
  path: str                     # where the files are (see _Source.location); '' if none is set
  image_size: int
  cache_dir: Optional[str]
  num_channels: int = 0         # channels to decode to, for sources that convert ('folder')
  holdout_fraction: float = readers.DEFAULT_HOLDOUT_FRACTION  # 'folder' without a test/ folder


@dataclasses.dataclass(frozen=True)
class _Source:
  """A ``config.data.source``: how it reads a split, and what :func:`load_split` does around it.

  Attributes:
    read: ``read(request)`` -> the whole split in stored order, images uint8 ``[N, H, W, C]``
      (toys: float32 ``[N, 2]``).
    location: the ``config.data`` fields naming where its files are; the first one set wins.
    needs_location: it reads local files, so one of ``location`` must be set (TFDS has a default
      folder of its own).
    fits_images: it crops and resizes itself (in TensorFlow, or image by image for a folder of
      differently sized files); otherwise :func:`load_split` does, with ``readers.fit_images``.
    any_dataset: a generic format, accepting any ``config.data.dataset`` name.
    count: ``count(request)`` -> the number of examples, from metadata without reading the split;
      None: the split is loaded and counted.
    images: False for sampled 2-D points (the toys): no image spec, channels, resizing, flips or
      dequantization, and the training split is an endless stream.
  """
  read: Callable[[_Request], readers.SplitData]
  location: Tuple[str, ...] = ("data_dir",)
  needs_location: bool = True
  fits_images: bool = False
  any_dataset: bool = False
  count: Optional[Callable[[_Request], int]] = None
  images: bool = True


def _read_tfds(r: _Request) -> readers.SplitData:
  return tf_readers.load_tfds(r.spec.tfds_name, r.spec.tfds_split(r.split), r.path, r.image_size,
                              crop=r.spec.crop, method=r.spec.resize_method, cache_dir=r.cache_dir)


def _count_tfds(r: _Request) -> int:
  return tf_readers.tfds_num_examples(r.spec.tfds_name, r.spec.tfds_split(r.split), r.path)


def _read_toy(r: _Request) -> readers.SplitData:
  if r.split == "train":
    raise ValueError("The toy training split is an endless stream: use "
                     "get_dataset(..., train=True).")
  return readers.SplitData(*toy_data.fixed_test_set(r.name))


_SOURCES: Registry[_Source] = Registry("config.data.source")
_SOURCES.add("tfds", _Source(_read_tfds, needs_location=False, fits_images=True, count=_count_tfds))
_SOURCES.add("idx", _Source(lambda r: readers.load_idx(r.path, r.split, r.name)))
_SOURCES.add("cifar_python", _Source(lambda r: readers.load_cifar_python(r.path, r.split)))
_SOURCES.add("npz", _Source(lambda r: readers.load_npz(r.path, r.split, r.name), any_dataset=True))
_SOURCES.add("tfrecords", _Source(
    lambda r: tf_readers.load_tfrecords(r.path, r.split, r.image_size, r.spec.crop, r.cache_dir),
    location=("tfrecords_path", "data_dir"), fits_images=True, any_dataset=True))
_SOURCES.add("toy", _Source(_read_toy, location=(), needs_location=False, images=False))
_SOURCES.add("folder", _Source(
    lambda r: readers.load_image_folder(r.path, r.split, r.image_size, r.num_channels,
                                        r.holdout_fraction),
    fits_images=True, any_dataset=True,
    count=lambda r: len(readers.list_image_folder(r.path, r.split, r.holdout_fraction)[0])))


# ------------------------------------------------------------------------------------------------
# Configuration.


def _names(config: Config) -> Tuple[str, str]:
  """Returns the lower-cased (dataset, source) of ``config.data``, validated."""
  name = str(config.data.dataset).lower()
  source = str(config.data.source).lower()
  if not _SOURCES.get(source).images:
    toy_data.TOYS.get(name)  # raises, listing the toys, for an unknown one
  elif name in toy_data.TOYS:
    raise ValueError(f"Dataset {name!r} is a toy: set config.data.source = 'toy'.")
  elif name == "lsun":  # the authors' spelling: dataset 'LSUN' plus config.data.category
    category = str(config.data.get("category", "") or "").lower()
    if not category:
      raise ValueError("LSUN needs a scene category: set config.data.category (e.g. 'bedroom') or "
                       "config.data.dataset = 'lsun/<category>'.")
    name = f"lsun/{category}"
  return name, source


def _image_request(config: Config, name: str, source: str, split: str,
                   cache_dir: Optional[str]) -> Tuple[str, _Request]:
  """The source that reads ``split`` of image data set ``name``, and the request to it.

  Where ``config.data`` names no folder, :func:`lookup.locate` finds one for the data sets
  it can obtain (sources 'tfds' and the numpy ones it knows), possibly read by another source
  than the one asked for.

  Returns:
    ``(source, request)``.

  Raises:
    ValueError: naming the field to set, where no folder is named and the lookup does not apply;
      :class:`lookup.DataNotFoundError` where it applies and finds nothing.
  """
  spec = _image_spec(name, source)
  entry = _SOURCES.get(source)
  values = (str(config.data.get(field, "") or "") for field in entry.location)
  path = next((v for v in values if v), "")
  if not path and (source == "tfds" or source in lookup.NUMPY_SOURCES):
    numpy_source = next((s for s in spec.sources if s in lookup.NUMPY_SOURCES), "")
    source, path = lookup.locate(name, source, spec.tfds_name, numpy_source)
  elif entry.needs_location and not path:
    fields = " or ".join(f"config.data.{f}" for f in entry.location)
    raise ValueError(f"config.data.source={source!r} reads local files: set {fields}.")
  holdout = float(config.data.get("holdout_fraction", readers.DEFAULT_HOLDOUT_FRACTION))
  return source, _Request(name, spec, split, path, int(config.data.image_size), cache_dir,
                          int(config.data.num_channels), holdout)


def load_split(config: Config, split: str, *, cache_dir: Optional[str] = None) -> readers.SplitData:
  """Loads and preprocesses (crop/resize, channel check) the whole ``split`` of ``config.data``.

  Returns:
    images uint8 ``[N, image_size, image_size, C]`` (toys: float32 ``[N, 2]``), labels int32
    ``[N]``. For toys only ``split='test'`` is a finite set (``toy_data.TOY_TEST_SIZE`` fixed
    samples); training toys are sampled on the fly by :func:`get_dataset`.
  """
  readers.check_split(split)
  name, source = _names(config)
  if not _SOURCES.get(source).images:
    return _SOURCES.get(source).read(_Request(name, None, split, "", 0, cache_dir))
  source, request = _image_request(config, name, source, split, cache_dir)
  entry = _SOURCES.get(source)
  data = entry.read(request)
  if data.images.shape[0] == 0:
    raise ValueError(f"The {split} split of {name!r} ({source}) is empty.")
  channels = data.images.shape[-1]
  if channels != int(config.data.num_channels):
    raise ValueError(f"{name!r} images have {channels} channel(s) but config.data.num_channels = "
                     f"{config.data.num_channels}; set it to {channels}.")
  if not entry.fits_images:
    spec = request.spec
    images = readers.fit_images(data.images, request.image_size, crop=spec.crop,
                                method=spec.resize_method)
    data = readers.SplitData(images, data.labels)
  return data


def num_examples(config: Config, split: str) -> int:
  """Number of examples in ``split`` (one evaluation pass visits each once)."""
  readers.check_split(split)
  name, source = _names(config)
  if _SOURCES.get(source).images:
    source, request = _image_request(config, name, source, split, None)
    count = _SOURCES.get(source).count
    if count is not None:
      return count(request)
  return load_split(config, split).labels.shape[0]


def get_dataset(config: Config, *, split: str, batch_size: int, train: bool,
                process_index: int = 0, process_count: int = 1, shuffle_seed: int = 0,
                start_batch: int = 0, prefetch: int = 2,
                cache_dir: Optional[str] = None) -> batching.Batches:
  """Batches of ``split`` ('train' | 'test') of the data set named by ``config.data``.

  Args:
    config: reads ``config.data`` (dataset, source, data_dir, image_size, num_channels,
      random_flip, uniform_dequantization, num_bits, dim).
    split: 'train' or 'test'.
    batch_size: GLOBAL batch size, a multiple of ``process_count``.
    train: True: shuffled endless stream of full batches, with random flips if enabled. False: one
      pass in stored order over every example exactly once, the last batch padded (``mask = 0``).
    process_index, process_count: this process and the number of processes
      (``jax.process_index()``...).
    shuffle_seed: non-negative int seeding the training order, flips and dequantization noise (use
      a different one per bits/dim repeat to redraw the noise).
    start_batch: first global batch to produce (resuming a stream or an evaluation pass).
    prefetch: batches computed ahead on a background thread (0: none).
    cache_dir: TFDS and TFRecords only: where to keep the preprocessed split as a memory-mapped
      ``.npy``.

  Returns:
    :class:`batching.Batches` yielding ``{'image': float32 [local_B, H, W, C] in [0, 1] (toys:
    [local_B, 2]), 'label': int32 [local_B], 'mask': float32 [local_B]}``.
  """
  readers.check_split(split)
  name, source = _names(config)
  flip = bool(config.data.random_flip)
  dequantize = bool(config.data.uniform_dequantization)
  if not _SOURCES.get(source).images:
    if int(config.data.dim) != 2:
      raise ValueError(f"Toy {name!r} is 2-D: set config.data.dim = 2 (got {config.data.dim}).")
    if flip or dequantize:
      raise ValueError("Toy data are 2-D points: set config.data.random_flip = False and "
                       "config.data.uniform_dequantization = False.")
    if split == "train":
      return batching.make_sampled_batches(
          functools.partial(toy_data.sample_with_labels, name), batch_size=batch_size,
          process_index=process_index, process_count=process_count, seed=shuffle_seed,
          start_batch=start_batch, prefetch=prefetch)
  data = load_split(config, split, cache_dir=cache_dir)
  num_bits = int(config.data.get("num_bits", 8))
  dequantization.check_num_bits(num_bits)
  return batching.make_batches(data, batch_size=batch_size, train=train,
                               process_index=process_index, process_count=process_count,
                               seed=shuffle_seed, random_flip=flip,
                               uniform_dequantization=dequantize, start_batch=start_batch,
                               prefetch=prefetch, num_bits=num_bits)
