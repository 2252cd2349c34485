"""Data for the input-pipeline tests: where the real MNIST (and Fashion-MNIST) lie and MNIST's
class counts, IDX files written here, configs that name a data source, and batches collected
from a stream."""

import gzip
import os

import numpy as np
import pytest

from configs.default_configs import get_default_configs
from tests.runs import REPO

SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
MNIST_DIR = os.path.join(SHARED_DATA, "mnist")
FASHION_DIR = os.path.join(SHARED_DATA, "fashion_mnist")
# Class counts 0..9 of the official MNIST splits.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"real MNIST IDX files not found in {MNIST_DIR}")


def make_config(dataset="mnist", source="idx", data_dir="", image_size=28, num_channels=1,
                random_flip=False, dequantize=False, dim=0):
  """The default config reading ``dataset`` from ``source`` with these data fields."""
  config = get_default_configs()
  config.data.dataset = dataset
  config.data.source = source
  config.data.data_dir = data_dir
  config.data.image_size = image_size
  config.data.num_channels = num_channels
  config.data.random_flip = random_flip
  config.data.uniform_dequantization = dequantize
  config.data.dim = dim
  return config


def write_idx(path, array, magic=None, cut=0, extra=b""):
  """Writes uint8 ``array`` as IDX (gzipped if ``path`` ends in .gz).

  ``magic`` replaces the 4-byte magic number, ``cut`` drops trailing bytes, ``extra`` appends some.
  """
  header = bytes([0, 0, 8, array.ndim]) if magic is None else magic
  raw = header + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
  raw = raw[:len(raw) - cut] + extra
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(raw)


def collect(batches, n_batches=None):
  """The batches of ``batches`` (its first ``n_batches`` if given) in a list."""
  out = []
  for i, b in enumerate(batches):
    if n_batches is not None and i >= n_batches:
      break
    out.append(b)
  return out


def toy_config(name):
  """The config of the 2-D toy ``name``."""
  return make_config(name, "toy", image_size=0, dim=2)
