"""Image folders written by the tests (PNG and JPEG files of random pixels) and the config of the
'folder' data source (``configs/image_folder.py``) that reads them."""

import os

import numpy as np
from PIL import Image

from configs import image_folder


def write_image(path, pixels, format=None):  # pylint: disable=redefined-builtin
  """Writes uint8 ``pixels`` ``[H, W, C]`` (C = 1: grayscale) to ``path``, making its folders."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format=format)


def random_pixels(rng, h, w, c=3):
  """Uniformly random uint8 pixels ``[h, w, c]`` drawn from ``rng``."""
  return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def write_flat_folder(root, n, size=(12, 8)):
  """``n`` RGB PNGs ``img_000.png``... directly in ``root``; returns their pixels by name."""
  rng = np.random.default_rng(n)
  pixels = {}
  for i in range(n):
    name = f"img_{i:03d}.png"
    pixels[name] = random_pixels(rng, *size)
    write_image(os.path.join(root, name), pixels[name])
  return pixels


def folder_config(data_dir, image_size=8, num_channels=3, **data):
  """``configs/image_folder.py`` reading ``data_dir`` at ``image_size``, with ``data`` fields."""
  config = image_folder.get_config()
  config.data.data_dir = str(data_dir)
  config.data.image_size = image_size
  config.data.num_channels = num_channels
  config.data.update(data)
  return config


def one_line(error):
  """Whether the message of a ``pytest.raises`` error is a single line."""
  return "\n" not in str(error.value)
