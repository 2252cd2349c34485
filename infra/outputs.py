"""What a run writes besides checkpoints: atomic files, JSON, npz, PNG pictures, TensorBoard.

Every file is written atomically (a temporary file in the same directory, fsynced, renamed over
the target), so a reader -- or a resumed run -- sees either the old file or the whole new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

ENV_CACHE = "SCORE_SDE_CACHE"
"""The environment variable naming :func:`cache_root`."""


def check_writable(path: str) -> None:
  """Creates directory ``path`` if needed and checks a file can be written in it.

  Raises:
    PermissionError: naming the directory, if it cannot be created or written to.
  """
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as e:
    raise PermissionError(
        f"directory {path!r} is not writable ({type(e).__name__}: {e.strerror or e}); "
        "choose another workdir or fix its permissions") from e


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` so readers see either the old file or the whole new one.

  Writes a temporary file in the same directory, fsyncs it and renames it over ``path``;
  creates missing parent directories. The file gets the usual mode (``0666`` less the umask).

  Raises:
    OSError: naming ``path`` and what to do, if it cannot be written (a full disk, say).
  """
  directory = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      error = OSError(f"cannot write {path} ({e.strerror or e}); free disk space or fix the "
                      "directory's permissions, then rerun (finished results are kept)")
      error.errno = e.errno
      raise error from e
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _json_default(obj: Any) -> Any:
  """JSON encoding of NumPy/JAX scalars and arrays (as numbers and nested lists)."""
  if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(obj).tolist()
  raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def cache_root() -> str:
  """The folder of things computed once and reused across workdirs (the MNIST classifier, FID
  reference statistics): ``$SCORE_SDE_CACHE``, else ``~/.cache/score-sde-jax``."""
  return (os.environ.get(ENV_CACHE) or
          os.path.join(os.path.expanduser("~"), ".cache", "score-sde-jax"))


def save_json(path: str, obj: Any) -> None:
  """Atomically writes ``obj`` as indented JSON (NumPy/JAX arrays become lists)."""
  text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
  atomic_write_bytes(path, text.encode("utf-8"))


def load_json(path: str) -> Any:
  """Reads a JSON file written by :func:`save_json`."""
  with open(path, "r", encoding="utf-8") as f:
    return json.load(f)


def save_npz(path: str, **arrays: np.ndarray) -> None:
  """Atomically writes ``arrays`` as a compressed ``.npz``."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: str, keys: Sequence[str]) -> Optional[Dict[str, np.ndarray]]:
  """The arrays ``keys`` of the ``.npz`` at ``path``, or None if it is absent or lacks one."""
  if not os.path.exists(path):
    return None
  with np.load(path) as saved:
    if not all(key in saved for key in keys):
      return None
    return {key: saved[key] for key in keys}


def save_image_grid(images: np.ndarray, path: str, ncol: Optional[int] = None) -> None:
  """Saves ``images: [B, H, W, C]`` in [0, 1] as one PNG grid, ``ncol`` per row (default
  ``ceil(sqrt(B))``)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  b, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(b)))
  nrow = int(np.ceil(b / ncol))
  grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, ncol)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = image
  grid = (grid * 255.0).round().astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(buffer, format="PNG")
  atomic_write_bytes(path, buffer.getvalue())


def _density_image(points: np.ndarray, lim: float) -> np.ndarray:
  """A 128 x 128 histogram of ``points: [N, 2]`` over ``[-lim, lim]^2``, dark where dense."""
  hist, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=128,
                              range=[[-lim, lim], [-lim, lim]])
  filled = hist[hist > 0]  # empty when every point lies outside the axes
  scale = max(np.percentile(filled, 95), 1.0) if filled.size else 1.0
  img = 1.0 - np.clip(hist / scale, 0.0, 1.0)
  return img[::-1, :, None]


def save_scatter(points: np.ndarray, path: str, reference: Optional[np.ndarray] = None) -> None:
  """Saves 2-D samples ``points: [N, 2]`` as a PNG density image (no plotting library needed).

  With ``reference: [M, 2]`` (the data) the PNG shows two panels on the same axes, the
  reference on the left and the points on the right, spanning 1.2 times the 99.5th percentile of
  ``|reference|``; without, one panel spanning that of the points.
  """
  pts = np.asarray(points, np.float64)
  ref = None if reference is None else np.asarray(reference, np.float64)
  lim = np.percentile(np.abs(ref if ref is not None else pts), 99.5) * 1.2 + 1e-6
  panels = [_density_image(pts, lim)] if ref is None else [_density_image(ref, lim),
                                                           _density_image(pts, lim)]
  save_image_grid(np.stack(panels), path)


def save_samples(samples: np.ndarray, directory: str, name: str = "sample",
                 reference: Optional[np.ndarray] = None, **extra: Any) -> None:
  """Writes ``name.npz`` (``samples`` and ``extra``) and a picture of them, ``name.png``.

  ``samples`` in data space: images ``[B, H, W, C]`` in [0, 1] (a grid of the first 64), or
  vectors ``[B, D]`` (a 2-D histogram when ``D == 2``, beside ``reference``'s if given; no
  picture otherwise).
  """
  os.makedirs(directory, exist_ok=True)
  save_npz(os.path.join(directory, name + ".npz"), samples=samples, **extra)
  png = os.path.join(directory, name + ".png")
  if samples.ndim == 2:
    if samples.shape[-1] == 2:
      save_scatter(samples, png, reference)
  else:
    save_image_grid(samples[:64], png)


class Summary:
  """TensorBoard scalars on process 0 (tensorboardX: writes event files without TensorFlow)."""

  def __init__(self, logdir: str):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.writer = SummaryWriter(logdir)

  def scalar(self, name: str, value: float, step: int) -> None:
    if self.writer is not None:
      self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
