"""``datasets.tf_readers``, the only TensorFlow users: TFDS on real MNIST prepared offline equals
the IDX reader's data, TensorFlow's crop and resize equal the numpy ones, the authors' TFRecords
are read, and a TFDS failure is one line with advice.

These tests (``-m tfds``) prepare real MNIST offline once (the session fixture
``tfds_mnist_dir``, ~30 s with the TensorFlow import): keep every test that needs it here.
"""

import collections
import hashlib

import numpy as np
import pytest

import datasets
from datasets import readers
from datasets import tf_readers
from tests.datasets.data_files import MNIST_DIR, MNIST_TEST_COUNTS, collect, make_config


@pytest.mark.tfds
def test_tfds_mnist_equals_idx_reader(tfds_mnist_dir, tmp_path):
  tfds_config = make_config(source="tfds", data_dir=tfds_mnist_dir)
  via_tfds = datasets.load_split(tfds_config, "test")
  via_idx = readers.load_idx(MNIST_DIR, "test")
  assert via_tfds.images.shape == (10000, 28, 28, 1) and via_tfds.images.dtype == np.uint8
  assert np.bincount(via_tfds.labels).tolist() == MNIST_TEST_COUNTS

  # TFDS reorders examples when it prepares a split, so compare (image, label) pairs as multisets.
  def pairs(data):
    return collections.Counter((hashlib.sha1(x.tobytes()).hexdigest(), int(y))
                               for x, y in zip(data.images, data.labels))
  assert pairs(via_tfds) == pairs(via_idx)
  assert datasets.num_examples(tfds_config, "train") == 60000
  assert datasets.num_examples(tfds_config, "test") == 10000

  # An evaluation pass through get_dataset reads the split again, in the same (stored) order,
  # once; with a cache_dir the preprocessed split is then memory-mapped from there.
  cache_dir = str(tmp_path / "cache")
  passes = collect(datasets.get_dataset(tfds_config, split="test", batch_size=3000, train=False,
                                        cache_dir=cache_dir))
  cached = datasets.load_split(tfds_config, "test", cache_dir=cache_dir)
  assert isinstance(cached.images, np.memmap)
  assert np.array_equal(cached.images, via_tfds.images)
  assert np.array_equal(cached.labels, via_tfds.labels)
  assert len(passes) == 4 and passes[-1]["mask"].sum() == 1000
  images = np.concatenate([b["image"][b["mask"] > 0] for b in passes])
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in passes])
  assert np.array_equal(np.rint(images * 255).astype(np.uint8), via_tfds.images)
  assert np.array_equal(labels, via_tfds.labels)


@pytest.mark.tfds
def test_tensorflow_crop_and_resize_equal_the_numpy_ones():
  pytest.importorskip("tensorflow_datasets")
  # pylint: disable=protected-access
  tf, _ = tf_readers._import_tf()
  rng = np.random.default_rng(12)
  images = rng.integers(0, 256, (3, 218, 178, 3), dtype=np.uint8)  # CelebA's size
  for size, crop, method in ((64, 140, "bilinear"), (32, 0, "bicubic"), (178, 0, "bilinear")):
    ours = readers.fit_images(images, size, crop=crop, method=method)
    theirs = np.stack([tf_readers._tf_fit(tf, tf.constant(x), size, crop, method).numpy()
                       for x in images])
    # Same filter; float differences can only flip a rounding (measured: 1e-4 of the pixels).
    diff = np.abs(ours.astype(int) - theirs)
    assert ours.shape == (3, size, size, 3) and diff.max() <= 1 and np.mean(diff > 0) < 1e-3
  assert np.array_equal(readers.fit_images(images, 140, crop=140), images[:, 39:179, 19:159])


@pytest.mark.tfds
def test_tfrecords_reader(tmp_path):
  """The authors' FFHQ / CelebA-HQ records: features 'shape' = (C, H, W) and 'data' = CHW bytes."""
  pytest.importorskip("tensorflow_datasets")
  tf, _ = tf_readers._import_tf()  # pylint: disable=protected-access
  # HWC, not square.
  images = np.random.default_rng(14).integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
  path = str(tmp_path / "faces.tfrecords")
  with tf.io.TFRecordWriter(path) as writer:
    for image in images:
      chw = image.transpose(2, 0, 1)
      feature = {"shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(chw.shape))),
                 "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()]))}
      example = tf.train.Example(features=tf.train.Features(feature=feature))
      writer.write(example.SerializeToString())
  config = make_config("CelebAHQ", "tfrecords", image_size=10, num_channels=3)
  config.data.tfrecords_path = path
  got = datasets.load_split(config, "train")
  assert np.array_equal(got.images, images[:, 1:11]) and np.all(got.labels == -1)  # central square
  config.data.image_size = 4
  cache_dir = str(tmp_path / "cache")
  batches = datasets.get_dataset(config, split="test", batch_size=4, train=False,
                                 cache_dir=cache_dir)
  assert batches.num_examples == 5 and batches.num_batches == 2
  first = batches.batch(0)["image"]
  ours = readers.fit_images(images, 4)
  assert first.shape == (4, 4, 4, 3)
  assert np.abs(np.rint(first * 255) - ours[:4]).max() <= 1
  assert isinstance(datasets.load_split(config, "test", cache_dir=cache_dir).images, np.memmap)
  config.data.tfrecords_path = str(tmp_path / "absent-*.tfrecords")
  with pytest.raises(FileNotFoundError, match="config.data.tfrecords_path"):
    datasets.load_split(config, "train")


@pytest.mark.tfds
def test_tfds_failure_is_one_line_with_advice(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  config = make_config(dataset="LSUN", source="tfds", data_dir=str(tmp_path), image_size=64,
                       num_channels=3)
  config.data.category = "no_such_category"  # the authors' spelling of lsun/no_such_category
  with pytest.raises(RuntimeError) as info:
    datasets.get_dataset(config, split="test", batch_size=4, train=False)
  message = str(info.value)
  assert "\n" not in message
  assert "config.data.data_dir" in message and "config.data.source='idx'" in message
  assert "manual_dir" in message and "lsun/no_such_category" in message
