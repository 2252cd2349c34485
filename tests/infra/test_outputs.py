"""``outputs``: atomic files, JSON, npz and pictures written by runs."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from infra import outputs


def test_check_writable(tmp_path):
  good = tmp_path / "work" / "dir"
  outputs.check_writable(str(good))
  assert good.is_dir() and os.listdir(good) == []
  blocker = tmp_path / "file"
  blocker.write_text("x")
  # A directory under a regular file cannot be created, even by root.
  bad = str(blocker / "sub")
  with pytest.raises(PermissionError, match="not writable") as info:
    outputs.check_writable(bad)
  assert repr(bad) in str(info.value)


def test_atomic_writes_and_json(tmp_path):
  path = str(tmp_path / "eval" / "summary.json")
  obj = {"bpd": np.float32(3.25), "per_batch": np.array([1.5, 2.0]), "n": 3,
         "scalar": jnp.float32(0.5)}
  outputs.save_json(path, obj)
  assert outputs.load_json(path) == {"bpd": 3.25, "per_batch": [1.5, 2.0], "n": 3,
                                     "scalar": 0.5}
  outputs.atomic_write_bytes(path, b"new")
  with open(path, "rb") as f:
    assert f.read() == b"new"
  # A failed write leaves the old content and no temporary file behind.
  with pytest.raises(TypeError):
    outputs.save_json(path, {"bad": object()})
  with pytest.raises(TypeError):
    outputs.atomic_write_bytes(path, "not bytes")
  with open(path, "rb") as f:
    assert f.read() == b"new"
  assert os.listdir(tmp_path / "eval") == ["summary.json"]


def test_written_files_get_the_usual_mode(tmp_path):
  """Temporary files are private; the renamed result must be readable like any other file."""
  old = os.umask(0o022)
  try:
    outputs.save_json(str(tmp_path / "a.json"), {})
    outputs.save_npz(str(tmp_path / "a.npz"), x=np.zeros(2))
    outputs.save_image_grid(np.zeros((1, 2, 2, 1)), str(tmp_path / "a.png"))
  finally:
    os.umask(old)
  for name in ("a.json", "a.npz", "a.png"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


def test_write_failure_names_the_file(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  path = str(blocker / "summary.json")
  with pytest.raises(OSError, match=f"cannot write {path} .*free disk space") as info:
    outputs.save_json(path, {})
  assert info.value.errno is not None


def test_npz_round_trip_and_missing_keys(tmp_path):
  path = str(tmp_path / "batch.npz")
  assert outputs.load_npz(path, ("samples",)) is None
  outputs.save_npz(path, samples=np.arange(6.0).reshape(2, 3), nfe=np.int32(7))
  loaded = outputs.load_npz(path, ("samples", "nfe"))
  np.testing.assert_array_equal(loaded["samples"], np.arange(6.0).reshape(2, 3))
  assert int(loaded["nfe"]) == 7
  # A file without a requested key counts as absent (its result is recomputed).
  assert outputs.load_npz(path, ("samples", "bpd")) is None
  assert os.listdir(tmp_path) == ["batch.npz"]


def test_image_grid_layout_and_values(tmp_path):
  """Five 3x2 RGB images: a 3-column, 2-row grid with 2-pixel black borders, exact pixels."""
  images = np.zeros((5, 3, 2, 3), np.float32)
  images[1] = 1.0
  images[4, ..., 0] = 0.5
  path = str(tmp_path / "grid.png")
  outputs.save_image_grid(images, path)
  grid = np.asarray(Image.open(path))
  assert grid.shape == (2 * (3 + 2) + 2, 3 * (2 + 2) + 2, 3)
  np.testing.assert_array_equal(grid[2:5, 6:8], 255)          # image 1: row 0, column 1
  np.testing.assert_array_equal(grid[7:10, 6:8, 0], 128)      # image 4: row 1, column 1
  assert grid[:2].max() == 0 and grid[:, :2].max() == 0       # borders


def test_save_samples_writes_npz_and_picture(tmp_path):
  points = np.random.default_rng(0).standard_normal((500, 2)).astype(np.float32)
  outputs.save_samples(points, str(tmp_path / "toy"), nfe=np.int32(3))
  assert sorted(os.listdir(tmp_path / "toy")) == ["sample.npz", "sample.png"]
  assert int(outputs.load_npz(str(tmp_path / "toy" / "sample.npz"), ("nfe",))["nfe"]) == 3
  histogram = np.asarray(Image.open(tmp_path / "toy" / "sample.png"))
  assert histogram.shape == (128 + 4, 128 + 4) and histogram.min() < 128  # dark where points are
  images = np.full((70, 4, 4, 1), 0.5, np.float32)
  outputs.save_samples(images, str(tmp_path / "img"), name="s")
  grid = np.asarray(Image.open(tmp_path / "img" / "s.png"))
  assert grid.shape == (8 * 6 + 2, 8 * 6 + 2)  # the first 64 images, 8 x 8
