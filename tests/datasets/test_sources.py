"""``datasets.sources``, the ``datasets`` entry point: ``config.data`` to the source that reads it
(scalers, unknown names listing the valid ones, channel counts), no TensorFlow outside the TFDS
path, and the 'folder' source through ``get_dataset``."""

import subprocess
import sys

import numpy as np
import pytest

import datasets
from configs.default_configs import get_default_configs
from datasets import readers
from tests.datasets.data_files import MNIST_DIR, make_config, needs_mnist, toy_config, write_idx
from tests.image_folders import folder_config, one_line, write_flat_folder
from tests.runs import REPO


def test_scalers_round_trip():
  x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  scaler, inverse = datasets.get_data_scaler(True), datasets.get_data_inverse_scaler(True)
  np.testing.assert_allclose(scaler(x), 2 * x - 1, atol=1e-7)
  assert scaler(x).min() == -1.0 and scaler(x).max() == 1.0
  np.testing.assert_allclose(inverse(scaler(x)), x, atol=1e-7)
  assert np.array_equal(datasets.get_data_scaler(False)(x), x)
  assert np.array_equal(datasets.get_data_inverse_scaler(False)(x), x)


def test_numpy_paths_never_import_tensorflow(tmp_path):
  write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28), np.uint8))
  write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.arange(3))
  np.savez(tmp_path / "d.npz", test=np.zeros((5, 8, 8), np.uint8))
  code = f"""
import sys
sys.path.insert(0, {REPO!r})
import datasets
from configs.default_configs import get_default_configs
c = get_default_configs()
c.data.update(dict(dataset='mnist', source='idx', data_dir={str(tmp_path)!r}, image_size=28,
                   num_channels=1, random_flip=False, uniform_dequantization=True))
next(iter(datasets.get_dataset(c, split='test', batch_size=2, train=False)))
c.data.update(dict(source='npz', data_dir={str(tmp_path / 'd.npz')!r}, image_size=8))
next(iter(datasets.get_dataset(c, split='test', batch_size=2, train=True)))
c.data.update(dict(dataset='checkerboard', source='toy', dim=2, uniform_dequantization=False))
next(iter(datasets.get_dataset(c, split='train', batch_size=4, train=True)))
alive = iter(datasets.get_dataset(c, split='train', batch_size=4, train=True))
next(alive)  # a prefetching iterator still alive at exit must not crash the interpreter
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))
assert not bad, bad
print('OK')
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_unknown_names_list_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
    datasets.get_dataset(make_config("imagenet", "tfds"), split="test", batch_size=2, train=False)
  with pytest.raises(ValueError, match="cifar_python, folder, idx, npz, tfds, tfrecords, toy"):
    datasets.get_dataset(make_config("mnist", "hdf5"), split="test", batch_size=2, train=False)
  with pytest.raises(ValueError, match="checkerboard, gaussian_mixture, swiss_roll"):
    datasets.get_dataset(toy_config("moons"), split="train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="valid sources for it: tfds, cifar_python, npz"):
    datasets.get_dataset(make_config("CIFAR10", "idx", str(tmp_path)), split="test", batch_size=2,
                         train=False)
  with pytest.raises(ValueError, match="train, test"):
    datasets.get_dataset(toy_config("checkerboard"), split="validation", batch_size=2, train=False)
  with pytest.raises(ValueError, match="source = 'toy'"):
    datasets.get_dataset(make_config("swiss_roll", "tfds"), split="train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="config.data.dim = 2"):
    datasets.get_dataset(make_config("swiss_roll", "toy"), split="train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="random_flip = False"):
    config = toy_config("swiss_roll")
    config.data.random_flip = True
    datasets.get_dataset(config, split="train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="data_dir"):
    datasets.get_dataset(make_config("mnist", "idx", ""), split="test", batch_size=2, train=False)
  with pytest.raises(ValueError, match="set config.data.tfrecords_path or config.data.data_dir"):
    datasets.get_dataset(make_config("ffhq", "tfrecords", "", image_size=256, num_channels=3),
                         split="train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="config.data.category"):
    datasets.get_dataset(make_config("LSUN", "tfds"), split="test", batch_size=2, train=False)


@needs_mnist
def test_num_channels_must_match_the_data():
  config = make_config(data_dir=MNIST_DIR, num_channels=3)
  with pytest.raises(ValueError, match=r"1 channel\(s\) but config.data.num_channels = 3"):
    datasets.get_dataset(config, split="test", batch_size=2, train=False)


# ------------------------------------------------------------------------------------------------
# The folder source.


def test_folder_source_through_get_dataset(tmp_path):
  write_flat_folder(str(tmp_path), 20)
  config = folder_config(tmp_path, holdout_fraction=0.25)
  assert datasets.num_examples(config, "train") == 15
  assert datasets.num_examples(config, "test") == 5
  batches = list(datasets.get_dataset(config, split="test", batch_size=4, train=False))
  assert len(batches) == 2 and sum(b["mask"].sum() for b in batches) == 5
  first = batches[0]
  assert first["image"].shape == (4, 8, 8, 3) and first["image"].dtype == np.float32
  assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0
  assert np.all(first["label"] == -1)
  expected = readers.load_image_folder(str(tmp_path), "test", 8, 3, 0.25).images
  got = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  assert np.array_equal(np.rint(got * 255).astype(np.uint8), expected)
  stream = iter(datasets.get_dataset(config, split="train", batch_size=8, train=True))
  assert next(stream)["image"].shape == (8, 8, 8, 3)

  # A config without data.holdout_fraction holds out 5 % (here 1 image); grayscale works too.
  config = get_default_configs()
  config.data.update(dict(source="folder", dataset="My Photos", data_dir=str(tmp_path),
                          image_size=6, num_channels=1))
  assert "holdout_fraction" not in config.data
  assert datasets.num_examples(config, "test") == 1
  assert datasets.load_split(config, "train").images.shape == (19, 6, 6, 1)


def test_folder_source_errors_through_datasets(tmp_path):
  config = folder_config("")
  with pytest.raises(ValueError, match="set config.data.data_dir") as info:
    datasets.load_split(config, "train")
  assert one_line(info)
  config = folder_config(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere") as info:
    datasets.num_examples(config, "test")
  assert one_line(info)
  with pytest.raises(ValueError, match="cannot be read from source 'folder'"):
    datasets.load_split(folder_config(tmp_path, dataset="cifar10"), "train")
