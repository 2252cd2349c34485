"""Numpy-only readers of whole image splits, and the crop/resize that fits them to a model.

Each reader returns a :class:`SplitData` of uint8 ``[N, H, W, C]`` images in the split's stored
order. Formats:

* IDX (MNIST, Fashion-MNIST): :func:`read_idx` reads one file, :func:`load_idx` a split.
* CIFAR-10 python batches: :func:`load_cifar_python`, through an unpickler that admits only
  containers and numpy arrays.
* npz: :func:`load_npz`.
* Folders of PNG / JPEG files (decoded with Pillow): :func:`list_image_folder` finds a split's
  files and class labels, :func:`load_image_folder` decodes them, cropping and resizing each.

Cropping and resizing (:func:`fit_images`): CelebA is centrally cropped to 140 x 140 as by the
authors, other non-square images to their central square; images whose side differs from the
wanted size are resized with an antialiased filter (bilinear; bicubic for LSUN, as the authors)
and rounded back to uint8, so every source yields 8-bit data. ``tf_readers`` does the same in
TensorFlow for the sources it reads.

Nothing here imports TensorFlow: reading local files must not pay for it.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "test")


class SplitData(NamedTuple):
  """A whole split held (or memory-mapped) on the host.

  Attributes:
    images: uint8 ``[N, H, W, C]`` (8-bit images) or float32 ``[N, D]`` (toys).
    labels: int32 ``[N]``, -1 where the data set has no labels.
  """
  images: np.ndarray
  labels: np.ndarray


def check_split(split: str) -> None:
  """Raises ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def _find_file(dirs: Sequence[str], names: Sequence[str]) -> Optional[str]:
  """The first existing ``dir/name``, trying each name in each dir in turn; None if none exists."""
  for d in dirs:
    for n in names:
      p = os.path.join(d, n)
      if os.path.isfile(p):
        return p
  return None


# ------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST).


def read_idx(path: str) -> np.ndarray:
  """Reads a uint8 IDX file (``.gz`` or raw) into an array shaped by its header (``[N, 28, 28]``).

  Raises:
    ValueError: naming the file, if it is unreadable, not uint8 IDX (bad magic number) or has more
      or fewer data bytes than its header promises.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise
  except (OSError, EOFError) as e:  # gzip raises EOFError on a truncated stream
    raise ValueError(f"Cannot read IDX file {path}: {e}. It is corrupt or truncated; "
                     f"download it again.") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
    magic = "0x" + raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
    raise ValueError(f"{path} is not a uint8 IDX file: bad magic number {magic} (expected "
                     f"0x0000080N, N the number of dimensions).")
  nd = raw[3]
  header = 4 + 4 * nd
  if len(raw) < header:
    raise ValueError(f"IDX file {path} is truncated inside its header.")
  shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=nd, offset=4))
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise ValueError(f"IDX file {path} has {len(raw) - header} data bytes but its header {shape} "
                     f"promises {expected}: it is truncated or corrupt; download it again.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_idx(data_dir: str, split: str, dataset: str = "mnist") -> SplitData:
  """Loads an MNIST-format split: images uint8 ``[N, 28, 28, 1]``, labels int32 ``[N]``.

  Looks in ``data_dir`` and ``data_dir/<dataset>`` for ``{train,t10k}-images-idx3-ubyte[.gz]`` and
  the matching ``labels-idx1`` file (the ``images.idx3-ubyte`` spelling is accepted too).
  """
  check_split(split)
  prefix = "train" if split == "train" else "t10k"
  dirs = [data_dir, os.path.join(data_dir, dataset)]
  arrays = []
  for kind, nd in (("images", 3), ("labels", 1)):
    stem = f"{prefix}-{kind}-idx{nd}-ubyte"
    alt = f"{prefix}-{kind}.idx{nd}-ubyte"
    path = _find_file(dirs, [stem + ".gz", stem, alt + ".gz", alt])
    if path is None:
      raise FileNotFoundError(
          f"IDX file {stem}.gz (or {stem}) not found in {data_dir!r} or {dirs[1]!r}: put the "
          f"official {dataset} files there and point config.data.data_dir at that folder, or use "
          f"config.data.source='tfds'.")
    array = read_idx(path)
    if array.ndim != nd:
      raise ValueError(f"IDX file {path} has {array.ndim} dimensions, expected {nd} for {kind}.")
    arrays.append(array)
  images, labels = arrays
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"IDX {split} split in {data_dir}: {images.shape[0]} images but "
                     f"{labels.shape[0]} labels.")
  return SplitData(images[..., None], labels.astype(np.int32))


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python batches.


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays, so a hostile file cannot run code."""

  def find_class(self, module: str, name: str) -> Any:
    # numpy's array reconstructor, whatever its module path in this numpy version.
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes under Python 3
    }
    if (module, name) not in allowed:
      raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch "
                                   f"file.")
    return allowed[(module, name)]


def _cifar_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
  """One pickled batch file -> uint8 images ``[N, 32, 32, 3]`` and int32 labels ``[N]``."""
  try:
    d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # noqa: BLE001 -- any unpickling failure means a bad file
    raise ValueError(f"Cannot read CIFAR-10 batch {where}: {e}") from e
  if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
    raise ValueError(f"CIFAR-10 batch {where} is not a dict with b'data' and b'labels'.")
  data = np.asarray(d[b"data"])
  labels = np.asarray(d[b"labels"], np.int32)
  if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
      or data.shape[0] != labels.shape[0]):
    raise ValueError(f"CIFAR-10 batch {where}: expected uint8 data [N, 3072] and N labels, got "
                     f"{data.dtype} {data.shape} and {labels.shape}.")
  # Rows are channel-major (1024 R, 1024 G, 1024 B), each plane row-major.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_python(data_dir: str, split: str) -> SplitData:
  """Loads CIFAR-10 from the official python batches ``data_batch_1..5`` / ``test_batch``.

  ``data_dir`` is the extracted ``cifar-10-batches-py`` folder, a folder containing it, or the
  ``cifar-10-python.tar.gz`` archive (or a folder containing that). Returns images uint8
  ``[N, 32, 32, 3]`` and labels int32 ``[N]``.
  """
  check_split(split)
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
        f"CIFAR-10 python batch {members[0]} not found in {data_dir!r}: point "
        f"config.data.data_dir at the extracted cifar-10-batches-py folder or at "
        f"cifar-10-python.tar.gz, or use config.data.source='tfds'.")
  parts = []
  if folder is not None:
    for m in members:
      path = os.path.join(folder, m)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 python batch {path} is missing; extract the full "
                                f"archive again.")
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


# ------------------------------------------------------------------------------------------------
# npz.

# split -> (keys tried for the images, keys tried for the labels), first found wins.
_NPZ_KEYS = {"train": (("train", "x_train"), ("train_labels", "y_train")),
             "test": (("test", "x_test"), ("test_labels", "y_test"))}


def load_npz(path: str, split: str, dataset: str = "") -> SplitData:
  """Loads a split from a ``.npz``: images uint8 ``[N, H, W, C]``, labels int32 ``[N]``.

  ``path`` is the file, or a folder holding ``<dataset>.npz``. The file holds uint8 images
  ``[N, H, W]`` or ``[N, H, W, C]`` (C = 1 or 3) under ``'train'`` / ``'test'`` or ``'x_train'`` /
  ``'x_test'``, and optional integer labels ``[N]`` under ``'train_labels'`` / ``'test_labels'`` or
  ``'y_train'`` / ``'y_test'`` (labels -1 without them).
  """
  check_split(split)
  if os.path.isdir(path):
    path = os.path.join(path, f"{dataset}.npz")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz file {path!r} not found: set config.data.data_dir to the .npz "
                            f"file or to a folder holding <dataset>.npz.")
  image_keys, label_keys = _NPZ_KEYS[split]
  with np.load(path, allow_pickle=False) as f:
    keys = list(f.keys())
    image_key = next((k for k in image_keys if k in keys), None)
    if image_key is None:
      raise ValueError(f"npz file {path} has no {split} images: expected key "
                       f"{' or '.join(image_keys)}, found {keys}.")
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


# ------------------------------------------------------------------------------------------------
# Folders of image files.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_HOLDOUT_FRACTION = 0.05
# A folder with train/ is pre-split: its test split is the first of these that exists.
_TEST_FOLDERS = ("test", "val", "validation")
_PIL_MODES = {1: "L", 3: "RGB"}
# Pillow's integer modes of 16-bit grayscale files; it clips them at 255 when converting to 8 bits.
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _find_images(root: str) -> List[str]:
  """'/'-separated paths relative to ``root`` of the image files below it, sorted.

  Extensions are matched case-insensitively; hidden files and folders (names starting with '.',
  such as macOS's ``._x.jpg`` companions or ``.ipynb_checkpoints``) are skipped. ValueError if
  there are none.
  """
  found = []
  for folder, subfolders, names in os.walk(root):
    subfolders[:] = [d for d in subfolders if not d.startswith(".")]
    prefix = os.path.relpath(folder, root).replace(os.sep, "/")
    for name in names:
      if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(name if prefix == "." else f"{prefix}/{name}")
  if not found:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}, any letter case) found in "
                     f"{root!r} or its subfolders: add some there, or point "
                     f"config.data.data_dir at the folder that holds them.")
  return sorted(found)


def _class_labels(pools: Sequence[List[str]]) -> List[np.ndarray]:
  """int32 labels per pool of relative paths: the index of each file's first-level folder among
  the sorted names of all first-level folders of all pools, if every file of every pool lies in
  one (so train and test agree on the indices); else all -1."""
  if not all("/" in f for pool in pools for f in pool):
    return [np.full(len(pool), -1, np.int32) for pool in pools]
  classes = sorted({f.split("/", 1)[0] for pool in pools for f in pool})
  index = {name: i for i, name in enumerate(classes)}
  return [np.array([index[f.split("/", 1)[0]] for f in pool], np.int32) for pool in pools]


def _held_out(files: Sequence[str], fraction: float, root: str) -> np.ndarray:
  """bool ``[N]``: which of ``files`` (paths relative to ``root``) form the held-out test split.

  ``k = max(1, round(fraction * N))`` files, those with the smallest SHA-256 of their relative
  path: deterministic, independent of the listing order, and adding or removing a file moves at
  most one other file between the splits.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.holdout_fraction must lie strictly between 0 and 1, got "
                     f"{fraction}.")
  n = len(files)
  k = max(1, int(fraction * n + 0.5))
  if k >= n:
    raise ValueError(f"Image folder {root!r} has {n} image(s): too few to hold out {k} for the "
                     f"test split (config.data.holdout_fraction = {fraction}) and keep at least "
                     f"one for training; add images, lower the fraction, or provide train/ and "
                     f"test/ subfolders.")
  keys = [hashlib.sha256(f.encode("utf-8")).digest() for f in files]
  test = np.zeros(n, bool)
  test[sorted(range(n), key=keys.__getitem__)[:k]] = True
  return test


def list_image_folder(path: str, split: str,
                      holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
                      ) -> Tuple[List[str], np.ndarray]:
  """The files and labels of ``split`` of a folder of images, without decoding them.

  Files: ``.png``, ``.jpg`` and ``.jpeg`` (any letter case) anywhere below the split's folder,
  hidden ones skipped, in the order of their relative paths. Splits:

  * ``path/train/`` and the first of ``path/test/``, ``path/val/``, ``path/validation/`` when
    both exist (anything else in ``path`` is ignored);
  * otherwise one pool, ``path/train/`` if it exists, else ``path`` itself, of which
    ``k = max(1, round(holdout_fraction * N))`` images are held out as 'test' (those with the
    smallest SHA-256 of their path relative to the pool: deterministic, independent of the
    listing order, and adding or removing one file moves at most one other between the splits)
    and the rest are 'train'. Each split keeps the sorted order.

  Labels: when every image lies inside a first-level subfolder of its split's folder (class
  folders, ``cats/001.png``), the index of that subfolder's name among all of them sorted (the
  same indices in both splits); otherwise -1.

  Args:
    path: the folder (``config.data.data_dir``).
    split: 'train' or 'test'.
    holdout_fraction: the fraction of a single pool held out for 'test', in (0, 1).

  Returns:
    ``(files, labels)``: the paths (``path`` joined with the relative path) and int32 ``[N]``.

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: if it is not a folder, holds no images, or too few to hold out a test split.
  """
  check_split(split)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Image folder {path!r} not found: set config.data.data_dir to a "
                            f"folder of {', '.join(IMAGE_EXTENSIONS)} files.")
  if not os.path.isdir(path):
    raise ValueError(f"config.data.data_dir {path!r} is a file; the 'folder' source reads a "
                     f"folder of {', '.join(IMAGE_EXTENSIONS)} files.")
  train_dir = os.path.join(path, "train")
  test_dir = next((os.path.join(path, d) for d in _TEST_FOLDERS
                   if os.path.isdir(os.path.join(path, d))), None)
  if os.path.isdir(train_dir) and test_dir is not None:
    roots = (train_dir, test_dir)
    pools = [_find_images(root) for root in roots]
    labels = _class_labels(pools)
    i = SPLITS.index(split)
    return [os.path.join(roots[i], f) for f in pools[i]], labels[i]
  root = train_dir if os.path.isdir(train_dir) else path
  pool = _find_images(root)
  (labels,) = _class_labels([pool])
  keep = _held_out(pool, holdout_fraction, root)
  if split == "train":
    keep = ~keep
  return [os.path.join(root, f) for f, k in zip(pool, keep) if k], labels[keep]


def _decode_image(path: str, mode: str) -> np.ndarray:
  """One image file as uint8 ``[H, W, C]``, upright (EXIF orientation applied) in Pillow ``mode``.

  16-bit grayscale is first scaled to 8 bits (``round(v / 257)``), which Pillow's own conversion
  would clip instead.

  Raises:
    ValueError: naming the file and Pillow's reason, if it cannot be decoded.
  """
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top -- image folders only
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image, np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
      pixels = np.asarray(image.convert(mode))
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise ValueError(f"Cannot decode image {path}: {reason}. The file is corrupt or not an "
                     f"image; repair or remove it.") from e
  return pixels[..., None] if pixels.ndim == 2 else pixels


def load_image_folder(path: str, split: str, image_size: int, num_channels: int,
                      holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> SplitData:
  """Decodes ``split`` of a folder of PNG / JPEG images (see :func:`list_image_folder`).

  Each file is decoded with Pillow as grayscale ('L', ``num_channels = 1``) or RGB (3), whatever
  its own mode (palette and alpha as Pillow converts them, 16-bit grayscale scaled), turned
  upright by its EXIF orientation, then cropped to its central square and resized to
  ``image_size`` by :func:`fit_images` (antialiased bilinear, rounded to uint8), one image at a
  time into a preallocated array, since sizes differ. Images that are already ``image_size``
  pixels square are copied as they are; the resize is compiled once per distinct square side
  (about half a second on a CPU), so a folder of many differently sized images loads faster once
  resized ahead of time.

  Args:
    path: the folder (``config.data.data_dir``).
    split: 'train' or 'test'.
    image_size: the side of the result, pixels.
    num_channels: 1 (grayscale) or 3 (RGB).
    holdout_fraction: see :func:`list_image_folder`.

  Returns:
    images uint8 ``[N, image_size, image_size, num_channels]`` and labels int32 ``[N]``, in the
    order of :func:`list_image_folder`.

  Raises:
    FileNotFoundError, ValueError: as :func:`list_image_folder`; ValueError for a channel count
      other than 1 or 3, and naming the file for one that cannot be decoded.
  """
  if num_channels not in _PIL_MODES:
    raise ValueError(f"Image folders are read as grayscale or RGB: set config.data.num_channels "
                     f"to 1 or 3 (got {num_channels}).")
  if image_size < 1:
    raise ValueError(f"config.data.image_size must be >= 1, got {image_size}.")
  files, labels = list_image_folder(path, split, holdout_fraction)
  images = np.empty((len(files), image_size, image_size, num_channels), np.uint8)
  for i, file in enumerate(files):
    images[i] = fit_images(_decode_image(file, _PIL_MODES[num_channels])[None], image_size)[0]
  return SplitData(images, labels)


# ------------------------------------------------------------------------------------------------
# Cropping and resizing.


def _crop_box(h: int, w: int, crop: int) -> Tuple[int, int, int]:
  """``(top, left, size)`` of the central ``crop`` x ``crop`` square (0: the largest one)."""
  size = crop if crop else min(h, w)
  if size > min(h, w):
    raise ValueError(f"Cannot central-crop {size} pixels from {h} x {w} images.")
  return (h - size) // 2, (w - size) // 2, size


def fit_images(images: np.ndarray, image_size: int, *, crop: int = 0, method: str = "bilinear",
               chunk: int = 1024) -> np.ndarray:
  """Central crop (``crop`` pixels, else the central square) and antialiased resize.

  Args:
    images: uint8 ``[N, H, W, C]``.
    image_size: the side of the result.
    crop: side of the central crop taken before resizing; 0: the central square.
    method: ``'bilinear'`` or ``'bicubic'``.
    chunk: images resized at once, bounding the float32 working memory.

  Returns:
    uint8 ``[N, image_size, image_size, C]`` (rounded); the input itself when nothing is to be
    done. Resizes with ``jax.image.resize`` on the host CPU.
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
