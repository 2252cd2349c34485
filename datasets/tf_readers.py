"""Readers that need TensorFlow: TensorFlow Datasets and the authors' FFHQ / CelebA-HQ TFRecords.

This is the only module that imports TensorFlow, and it does so lazily, inside the functions that
read: importing it is free, and the numpy readers (``readers``) never pay for TensorFlow.

A split is read once in stored order, cropped and resized in TensorFlow (:func:`_tf_fit`, the twin
of ``readers.fit_images``) to uint8 ``[N, image_size, image_size, C]``, and held in host memory
(MNIST 47 MB, CIFAR-10 150 MB, CelebA-64 2 GB), or written once to a ``.npy`` in ``cache_dir`` and
memory-mapped from there when one is given (LSUN).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import uuid
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from datasets.readers import SplitData, check_split


@contextlib.contextmanager
def _start_up_lines_hidden() -> Iterator[None]:
  """Hides what is written to file descriptor 2 while the block runs, unless it raises.

  Importing TensorFlow prints C++ notices (absl's pre-initialisation warning, oneDNN's) that
  ignore ``TF_CPP_MIN_LOG_LEVEL``; they are shown only when the import fails, to explain it.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      os.write(2, sink.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _import_tf() -> Tuple[Any, Any]:
  """Imports ``(tensorflow, tensorflow_datasets)``, keeping TensorFlow off the GPUs."""
  # TensorFlow's C++ start-up INFO and WARNING lines are noise on a console showing our log; a
  # value the user set wins.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _start_up_lines_hidden():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
  except RuntimeError:
    pass  # TF already initialised its devices; nothing to change then
  return tf, tfds


# ------------------------------------------------------------------------------------------------
# TensorFlow Datasets.


def _tfds_help(name: str) -> str:
  return (f"point config.data.data_dir at local files with config.data.source='idx' "
          f"(MNIST/Fashion-MNIST), 'cifar_python' (CIFAR-10) or 'npz', or prepare TFDS offline: "
          f"tf_readers.prepare_tfds({name!r}, data_dir, manual_dir=<folder with the official "
          f"files>).")


def prepare_tfds(name: str, data_dir: Optional[str] = None,
                 manual_dir: Optional[str] = None) -> None:
  """Runs TFDS ``download_and_prepare`` for the TFDS builder ``name``.

  Works offline when ``manual_dir`` holds the official files (e.g. the four MNIST ``.gz`` files).
  """
  _, tfds = _import_tf()
  builder = tfds.builder(name, data_dir=data_dir or None)
  kwargs = {}
  if manual_dir:
    kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(**kwargs)


def tfds_is_prepared(name: str, data_dir: str) -> bool:
  """Whether TFDS builder ``name``, in the version this TFDS reads, is prepared in ``data_dir``.

  Downloads nothing.
  """
  _, tfds = _import_tf()
  return bool(tfds.builder(name, data_dir=data_dir).is_prepared())


def _tfds_builder(name: str, data_dir: str) -> Any:
  """A prepared TFDS builder; downloads and prepares it first if needed.

  Raises:
    RuntimeError: in one line with advice, if it cannot be prepared (offline, TFDS retries the
      download for a few minutes before it fails).
  """
  _, tfds = _import_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
      builder.download_and_prepare()
  except Exception as e:  # noqa: BLE001 -- any TFDS failure gets the same advice
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise RuntimeError(f"TFDS dataset {name!r} is not prepared in data_dir="
                       f"{data_dir or '<TFDS default>'} and could not be prepared "
                       f"({type(e).__name__}: {first_line}); {_tfds_help(name)}") from e
  return builder


def tfds_num_examples(name: str, split: str, data_dir: str) -> int:
  """Examples in the TFDS split ``split`` of builder ``name``, from its metadata alone."""
  return _tfds_builder(name, data_dir).info.splits[split].num_examples


def load_tfds(name: str, split: str, data_dir: str, image_size: int, *, crop: int = 0,
              method: str = "bilinear", cache_dir: Optional[str] = None) -> SplitData:
  """Reads a TFDS split in stored order, cropped and resized.

  Args:
    name: the TFDS builder, e.g. ``'mnist'``, ``'lsun/bedroom'``.
    split: the TFDS split name (``'train'``, ``'test'``, ``'validation'``).
    data_dir: the TFDS data folder; empty: the TFDS default.
    image_size, crop, method: as for ``readers.fit_images``.
    cache_dir: if given, the images are written there once as ``.npy`` and memory-mapped.

  Returns:
    images uint8 ``[N, image_size, image_size, C]``, labels int32 ``[N]`` (-1 without labels).
  """
  cache = _cache_paths(cache_dir, f"{name.replace('/', '_')}-{split}-{image_size}")
  cached = _read_cache(cache)
  if cached is not None:
    return cached
  tf, tfds = _import_tf()
  builder = _tfds_builder(name, data_dir)
  has_labels = "label" in builder.info.features

  def preprocess(d):
    image = _tf_fit(tf, d["image"], image_size, crop, method)
    label = tf.cast(d["label"], tf.int32) if has_labels else tf.constant(-1, tf.int32)
    return image, label

  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
  return _materialize(tfds.as_numpy(ds), builder.info.splits[split].num_examples,
                      f"TFDS {name}/{split}", cache)


# ------------------------------------------------------------------------------------------------
# TFRecords.


def load_tfrecords(path: str, split: str, image_size: int, crop: int = 0,
                   cache_dir: Optional[str] = None) -> SplitData:
  """Reads the authors' FFHQ / CelebA-HQ TFRecords.

  One record per image, with features ``shape`` (int64 ``[3]``: C, H, W) and ``data`` (the raw
  uint8 CHW bytes). ``path`` is a file or a glob. The files hold one split, used for both
  ``'train'`` and ``'test'`` (as the authors did). ``cache_dir`` works as for :func:`load_tfds`.

  Returns:
    images uint8 ``[N, image_size, image_size, C]`` (central square, or central ``crop``, then an
    antialiased bilinear resize), labels int32 ``[N]``, all -1.
  """
  check_split(split)
  tf, _ = _import_tf()
  files = sorted(tf.io.gfile.glob(path)) if path else []
  if not files:
    raise FileNotFoundError(f"No TFRecord file matches {path!r}: set config.data.tfrecords_path "
                            f"(or config.data.data_dir) to the file or a glob of the files.")
  digest = hashlib.sha1(",".join(os.path.abspath(f) for f in files).encode()).hexdigest()
  cache = _cache_paths(cache_dir, f"tfrecords-{digest[:12]}-{image_size}")
  cached = _read_cache(cache)
  if cached is not None:
    return cached
  n = sum(1 for _ in tf.data.TFRecordDataset(files))  # records carry no count; one cheap pass

  def parse(record):
    features = {"shape": tf.io.FixedLenFeature([3], tf.int64),
                "data": tf.io.FixedLenFeature([], tf.string)}
    sample = tf.io.parse_single_example(record, features)
    chw = tf.reshape(tf.io.decode_raw(sample["data"], tf.uint8), sample["shape"])
    image = tf.transpose(chw, (1, 2, 0))
    return _tf_fit(tf, image, image_size, crop, "bilinear"), tf.constant(-1, tf.int32)

  ds = tf.data.TFRecordDataset(files)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _materialize(ds.batch(64).as_numpy_iterator(), n, f"TFRecords {path}", cache)


# ------------------------------------------------------------------------------------------------
# Shared: crop/resize in TensorFlow, and stacking a split into memory or a .npy cache.


def _tf_fit(tf: Any, image: Any, image_size: int, crop: int, method: str) -> Any:
  """TensorFlow twin of ``readers.fit_images`` for one uint8 ``[H, W, C]`` image.

  Sizes may be dynamic (images of one TFDS split may differ in size); returns uint8
  ``[image_size, image_size, C]``.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  size = tf.constant(crop) if crop else tf.minimum(h, w)
  top, left = (h - size) // 2, (w - size) // 2
  image = image[top:top + size, left:left + size]

  def resize():
    x = tf.image.resize(image, (image_size, image_size), method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)

  return tf.cond(tf.equal(size, image_size), lambda: image, resize)


def _cache_paths(cache_dir: Optional[str], tag: str) -> Optional[Tuple[str, str]]:
  """The ``(images, labels)`` ``.npy`` paths of the split named ``tag``; None without a cache."""
  if not cache_dir:
    return None
  return os.path.join(cache_dir, tag + "-images.npy"), os.path.join(cache_dir, tag + "-labels.npy")


def _read_cache(paths: Optional[Tuple[str, str]]) -> Optional[SplitData]:
  """The cached split, images memory-mapped; None if it is not (completely) cached."""
  if paths and os.path.isfile(paths[0]) and os.path.isfile(paths[1]):
    return SplitData(np.load(paths[0], mmap_mode="r"), np.load(paths[1]))
  return None


def _materialize(batches: Iterator[Tuple[np.ndarray, np.ndarray]], n: int, where: str,
                 cache: Optional[Tuple[str, str]]) -> SplitData:
  """Stacks ``n`` examples arriving as (uint8 ``[b, H, W, C]``, int32 ``[b]``) batches.

  Into host memory, or into a ``.npy`` at ``cache[0]`` (labels at ``cache[1]``) that is then
  memory-mapped.
  """
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
