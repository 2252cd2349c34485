"""Tests for the input pipeline: ``readers`` (IDX, CIFAR-10 python, npz, crop/resize),
``tf_readers`` (TFDS on real MNIST, TFRecords), ``batching`` (exact-once evaluation, resumption,
process sharding, training streams, augmentation), ``toy_data`` and the ``datasets`` entry point.

Statistical tolerances are 5 standard errors of the tested statistic at the stated sample size.
The TFDS tests (``-m tfds``) prepare real MNIST offline once per module (~30 s with the TensorFlow
import).
"""

import collections
import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import datasets
from configs.default_configs import get_default_configs
from datasets import batching
from datasets import readers
from datasets import tf_readers
from datasets import toy_data

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO_ROOT, "..", "shared", "data")
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


def indexed_split(n, h=4, w=5, c=1):
  """Images ``[n, h, w, c]`` whose pixels (0, 0) and (0, 1) encode the example index, marked in
  row 1 so that a left-right flip is visible; labels i % 7."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 1, 0] = np.arange(n) // 256
  # Orientation marker: 255 at (1, 0) iff flipped.
  images[:, 1, 0, 0], images[:, 1, w - 1, 0] = 0, 255
  return readers.SplitData(images, (np.arange(n) % 7).astype(np.int32))


def decode_index(batch):
  """Example index of each row of a batch made from :func:`indexed_split` (no flips or noise)."""
  pixels = np.rint(batch["image"] * 255).astype(np.int64)
  return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]


def collect(batches, n_batches=None):
  out = []
  for i, b in enumerate(batches):
    if n_batches is not None and i >= n_batches:
      break
    out.append(b)
  return out


# ------------------------------------------------------------------------------------------------
# Scalers.


def test_scalers_round_trip():
  x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  scaler, inverse = datasets.get_data_scaler(True), datasets.get_data_inverse_scaler(True)
  np.testing.assert_allclose(scaler(x), 2 * x - 1, atol=1e-7)
  assert scaler(x).min() == -1.0 and scaler(x).max() == 1.0
  np.testing.assert_allclose(inverse(scaler(x)), x, atol=1e-7)
  assert np.array_equal(datasets.get_data_scaler(False)(x), x)
  assert np.array_equal(datasets.get_data_inverse_scaler(False)(x), x)


# ------------------------------------------------------------------------------------------------
# No TensorFlow outside the TFDS path.


def test_numpy_paths_never_import_tensorflow(tmp_path):
  write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28), np.uint8))
  write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.arange(3))
  np.savez(tmp_path / "d.npz", test=np.zeros((5, 8, 8), np.uint8))
  code = f"""
import sys
sys.path.insert(0, {REPO_ROOT!r})
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


# ------------------------------------------------------------------------------------------------
# IDX.


@needs_mnist
def test_idx_real_mnist_shapes_and_class_counts():
  for split, counts in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
    data = readers.load_idx(MNIST_DIR, split)
    n = sum(counts)
    assert data.images.shape == (n, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == np.int32
    assert np.bincount(data.labels, minlength=10).tolist() == counts
    assert data.images.min() == 0 and data.images.max() == 255
  # The published md5 of the decompressed test-image IDX, recomputed from what we read.
  header = bytes([0, 0, 8, 3]) + np.asarray([10000, 28, 28], ">u4").tobytes()
  images = readers.load_idx(MNIST_DIR, "test").images
  assert hashlib.md5(header + images.tobytes()).hexdigest() == "2646ac647ad5339dbf082846283269ea"


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_idx_real_fashion_mnist_class_counts():
  data = readers.load_idx(FASHION_DIR, "test", "fashion_mnist")
  assert data.images.shape == (10000, 28, 28, 1)
  assert np.bincount(data.labels).tolist() == [1000] * 10
  train_labels = readers.read_idx(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"))
  assert np.bincount(train_labels).tolist() == [6000] * 10


@needs_mnist
def test_idx_eval_pass_over_real_mnist_test_split():
  config = make_config(data_dir=MNIST_DIR)
  batches = datasets.get_dataset(config, split="test", batch_size=4096, train=False)
  assert batches.num_batches == 3 and len(batches) == 3 and batches.num_examples == 10000
  got = collect(batches)
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in got])
  assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
  assert all(b["image"].shape == (4096, 28, 28, 1) and b["image"].dtype == np.float32 for b in got)
  assert got[-1]["mask"].sum() == 10000 - 2 * 4096
  assert datasets.num_examples(config, "train") == 60000


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip_and_errors(tmp_path, gz):
  ext = ".gz" if gz else ""
  images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
  write_idx(str(tmp_path / f"train-images-idx3-ubyte{ext}"), images)
  write_idx(str(tmp_path / f"train-labels-idx1-ubyte{ext}"), np.arange(6) % 10)
  data = readers.load_idx(str(tmp_path), "train")
  assert np.array_equal(data.images[..., 0], images) and data.labels.tolist() == [0, 1, 2, 3, 4, 5]

  bad = str(tmp_path / f"bad{ext}")
  write_idx(bad, images, magic=bytes([0, 0, 9, 3]))  # 0x09: int8, not uint8
  with pytest.raises(ValueError, match="bad magic number"):
    readers.read_idx(bad)
  write_idx(bad, images, cut=5)
  with pytest.raises(ValueError, match="truncated"):
    readers.read_idx(bad)
  write_idx(bad, images, extra=b"\0")  # more data than the header promises
  with pytest.raises(ValueError, match=os.path.basename(bad) + ".*promises"):
    readers.read_idx(bad)

  with pytest.raises(FileNotFoundError,
                     match=r"t10k-images-idx3-ubyte\.gz.*config\.data\.data_dir"):
    readers.load_idx(str(tmp_path), "test")
  write_idx(str(tmp_path / f"t10k-images-idx3-ubyte{ext}"), images)
  write_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{ext}"), np.arange(5))
  with pytest.raises(ValueError, match="6 images but 5 labels"):
    readers.load_idx(str(tmp_path), "test")


def test_truncated_gzip_is_a_clear_error(tmp_path):
  path = str(tmp_path / "x-images-idx3-ubyte.gz")
  write_idx(path, np.random.default_rng(2).integers(0, 256, (50, 28, 28), dtype=np.uint8))
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="corrupt or truncated"):
    readers.read_idx(path)


# ------------------------------------------------------------------------------------------------
# TFDS on real MNIST, prepared offline.


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


# ------------------------------------------------------------------------------------------------
# Evaluation passes.


@pytest.mark.parametrize("n,batch_size", [(103, 20), (40, 20), (7, 16)])
def test_eval_visits_every_example_once_in_stored_order(n, batch_size):
  data = indexed_split(n)
  batches = batching.make_batches(data, batch_size=batch_size, train=False, prefetch=2)
  assert batches.num_batches == -(-n // batch_size)
  got = collect(batches)
  assert len(got) == batches.num_batches
  for b in got:
    assert b["image"].shape == (batch_size, 4, 5, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
    pad = b["mask"] == 0
    assert np.all(b["image"][pad] == 0) and np.all(b["label"][pad] == -1)
  index = np.concatenate([decode_index(b)[b["mask"] > 0] for b in got])
  assert index.tolist() == list(range(n))  # each once, in stored order
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in got])
  assert np.array_equal(labels, data.labels)
  images = np.concatenate([b["image"][b["mask"] > 0] for b in got])
  assert np.array_equal(np.rint(images * 255).astype(np.uint8), data.images)
  assert sum(b["mask"].sum() for b in got) == n
  again = collect(batching.make_batches(data, batch_size=batch_size, train=False, prefetch=0))
  assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(got, again))


def test_eval_resume_gives_the_suffix():
  data = indexed_split(103)
  full = collect(batching.make_batches(data, batch_size=20, train=False))
  resumed = batching.make_batches(data, batch_size=20, train=False, start_batch=3)
  assert len(resumed) == 3
  rest = collect(resumed)
  assert len(rest) == 3
  for a, b in zip(full[3:], rest):
    for key in ("image", "label", "mask"):
      assert np.array_equal(a[key], b[key])
  assert np.array_equal(resumed.batch(4)["image"], full[4]["image"])
  with pytest.raises(IndexError):
    resumed.batch(6)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(train, process_count):
  data = indexed_split(50)
  kwargs = dict(batch_size=8, train=train, seed=3, random_flip=train, uniform_dequantization=True)
  whole = batching.make_batches(data, **kwargs)
  shards = [batching.make_batches(data, process_index=p, process_count=process_count, **kwargs)
            for p in range(process_count)]
  assert shards[0].local_batch_size == 8 // process_count
  for k in range(whole.num_batches or 15):  # 15 training batches span 2.4 epochs
    parts = [s.batch(k) for s in shards]
    for key in ("image", "label", "mask"):
      assert np.array_equal(np.concatenate([p[key] for p in parts]), whole.batch(k)[key])
  with pytest.raises(ValueError, match="multiple of the process count"):
    batching.make_batches(data, batch_size=9, train=train, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    batching.make_batches(data, batch_size=8, train=train, process_index=2, process_count=2)


# ------------------------------------------------------------------------------------------------
# Training streams.


def test_train_stream_epochs_are_permutations_and_deterministic():
  n, batch_size = 50, 16
  data = indexed_split(n)
  stream = batching.make_batches(data, batch_size=batch_size, train=True, seed=7)
  assert stream.num_batches is None
  got = collect(stream, 13)  # 208 examples: 4 full epochs and a bit
  assert all(b["image"].shape == (batch_size, 4, 5, 1) and np.all(b["mask"] == 1) for b in got)
  index = np.concatenate([decode_index(b) for b in got])
  epochs = [index[e * n:(e + 1) * n] for e in range(4)]
  for order in epochs:
    assert sorted(order.tolist()) == list(range(n))  # each epoch: every example exactly once
  assert all(not np.array_equal(epochs[0], e) for e in epochs[1:])  # reshuffled every epoch
  assert not np.array_equal(epochs[0], np.arange(n))
  same = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=7), 13)
  assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(got, same))
  other = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=8), 4)
  assert not np.array_equal(np.concatenate([decode_index(b) for b in other]), index[:64])
  resumed = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=7,
                                          start_batch=5), 3)
  assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(got[5:8], resumed))


def test_random_flip_only_when_enabled_and_only_in_training():
  n = 2000
  data = indexed_split(n, h=3, w=6)
  originals = data.images.astype(np.float32) / 255

  def flipped_fraction(**kwargs):
    flips = []
    for b in collect(batching.make_batches(data, batch_size=100, seed=1, **kwargs), 20):
      for image in b["image"]:
        flipped = image[1, 0, 0] == 1.0
        oriented = image[:, ::-1] if flipped else image
        expected = originals[int(decode_index({"image": oriented[None]})[0])]
        assert np.array_equal(oriented, expected)  # the example itself, mirrored or not
        flips.append(flipped)
    assert len(flips) == n
    return np.mean(flips)

  assert abs(flipped_fraction(train=True, random_flip=True) - 0.5) < 5 * np.sqrt(0.25 / n)
  assert flipped_fraction(train=True, random_flip=False) == 0
  assert flipped_fraction(train=False, random_flip=True) == 0


def test_uniform_dequantization_range_and_distribution():
  data = indexed_split(64, h=8, w=8)
  batches = batching.make_batches(data, batch_size=64, train=False, uniform_dequantization=True,
                                  seed=5)
  x = batches.batch(0)["image"]
  # The added noise, exactly (x * 256 is exact in float32).
  u = x.astype(np.float64) * 256 - data.images
  n = u.size  # 4096 pixels
  assert 0.0 <= x.min() and x.max() <= 1.0
  assert u.min() >= 0.0 and u.max() <= 1.0
  # U[0, 1): mean 1/2 (std 1/sqrt(12 n)), variance 1/12 (std sqrt(1/180 / n)).
  assert abs(u.mean() - 0.5) < 5 / np.sqrt(12 * n)
  assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / n)
  assert np.histogram(u, bins=4, range=(0, 1))[0].min() > n / 4 - 5 * np.sqrt(n * 3 / 16)
  # Same seed: same noise; another seed: new noise (e.g. for another bits/dim repeat).
  def noisy(seed):
    return batching.make_batches(data, batch_size=64, train=False, uniform_dequantization=True,
                                 seed=seed).batch(0)["image"]
  assert np.array_equal(noisy(5), x)
  assert not np.array_equal(noisy(6), x)
  plain = batching.make_batches(data, batch_size=64, train=False).batch(0)["image"]
  assert np.array_equal(plain * np.float32(255), data.images.astype(np.float32))


def test_prefetch_matches_direct_batches_and_propagates_errors():
  data = indexed_split(30)
  direct = batching.make_batches(data, batch_size=4, train=True, prefetch=0)
  ahead = batching.make_batches(data, batch_size=4, train=True, prefetch=3)
  for k, b in enumerate(collect(ahead, 10)):
    assert np.array_equal(b["image"], direct.batch(k)["image"])

  def produce(k):
    if k == 2:
      raise RuntimeError("boom")
    return {"k": k}
  failing = batching.Batches(produce, batch_size=1, local_batch_size=1, num_batches=5,
                             num_examples=5, start_batch=0, prefetch=2)
  it = iter(failing)
  assert next(it) == {"k": 0} and next(it) == {"k": 1}
  with pytest.raises(RuntimeError, match="boom"):
    next(it)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python batches and npz.


def write_cifar(root, sizes):
  """Writes synthetic CIFAR-10 batches in the official format (protocol-2 pickles, bytes keys)."""
  folder = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(folder)
  rng = np.random.default_rng(4)
  truth = {}
  for name, n in sizes.items():
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(batch, f, protocol=2)
    truth[name] = (data, labels)
  archive = os.path.join(root, "cifar-10-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  return folder, archive, truth


def test_cifar_python_reader(tmp_path):
  sizes = {f"data_batch_{i}": i + 1 for i in range(1, 6)}
  sizes["test_batch"] = 3
  folder, archive, truth = write_cifar(str(tmp_path / "src"), sizes)
  os.makedirs(tmp_path / "tar_only")
  os.rename(archive, tmp_path / "tar_only" / "cifar-10-python.tar.gz")
  archive = str(tmp_path / "tar_only" / "cifar-10-python.tar.gz")
  train_names = [f"data_batch_{i}" for i in range(1, 6)]
  for split, names in (("train", train_names), ("test", ["test_batch"])):
    data_rows = np.concatenate([truth[m][0] for m in names])
    labels = sum((truth[m][1] for m in names), [])
    for where in (folder, str(tmp_path / "src"), archive, str(tmp_path / "tar_only")):
      got = readers.load_cifar_python(where, split)
      assert got.images.shape == (len(labels), 32, 32, 3) and got.images.dtype == np.uint8
      assert got.labels.tolist() == labels
      # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32 x 32 plane.
      for ch in range(3):
        assert np.array_equal(got.images[:, 5, 7, ch], data_rows[:, ch * 1024 + 5 * 32 + 7])
  config = make_config("cifar10", "cifar_python", folder, image_size=32, num_channels=3,
                       random_flip=True)
  batch = next(iter(datasets.get_dataset(config, split="train", batch_size=5, train=True)))
  assert batch["image"].shape == (5, 32, 32, 3)
  config.data.num_channels = 1
  with pytest.raises(ValueError, match="3 channel"):
    datasets.get_dataset(config, split="train", batch_size=5, train=True)
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    readers.load_cifar_python(str(tmp_path), "test")


class _Hostile:
  def __reduce__(self):
    return (os.getcwd, ())


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  os.makedirs(folder)
  with open(folder / "test_batch", "wb") as f:
    pickle.dump({b"data": _Hostile(), b"labels": []}, f, protocol=2)
  with pytest.raises(ValueError, match="refusing to unpickle"):
    readers.load_cifar_python(str(folder), "test")


def test_npz_reader(tmp_path):
  rng = np.random.default_rng(6)
  gray = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
  np.savez(tmp_path / "gray.npz", train=gray, train_labels=np.arange(5), test=gray[:2])
  got = readers.load_npz(str(tmp_path / "gray.npz"), "train")
  assert got.images.shape == (5, 8, 8, 1) and np.array_equal(got.images[..., 0], gray)
  assert got.labels.tolist() == [0, 1, 2, 3, 4]
  assert readers.load_npz(str(tmp_path / "gray.npz"), "test").labels.tolist() == [-1, -1]

  color = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
  np.savez(tmp_path / "mine.npz", x_train=color, y_train=np.arange(4), x_test=color,
           y_test=np.arange(4))
  # data_dir is the folder, holding <dataset>.npz.
  config = make_config("mine", "npz", str(tmp_path), image_size=6, num_channels=3)
  batches = datasets.get_dataset(config, split="test", batch_size=3, train=False)
  got = collect(batches)
  assert np.array_equal(np.rint(got[0]["image"] * 255).astype(np.uint8), color[:3])

  np.savez(tmp_path / "bad.npz", images=gray)
  with pytest.raises(ValueError, match=r"expected key train or x_train.*found \['images'\]"):
    readers.load_npz(str(tmp_path / "bad.npz"), "train")
  np.savez(tmp_path / "float.npz", train=gray.astype(np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    readers.load_npz(str(tmp_path / "float.npz"), "train")
  with pytest.raises(FileNotFoundError, match="npz file"):
    readers.load_npz(str(tmp_path / "absent.npz"), "train")


def test_npz_crop_and_resize(tmp_path):
  rng = np.random.default_rng(8)
  wide = rng.integers(0, 256, (3, 10, 16, 1), dtype=np.uint8)
  np.savez(tmp_path / "wide.npz", test=wide)
  config = make_config("wide", "npz", str(tmp_path / "wide.npz"), image_size=10, num_channels=1)
  got = datasets.load_split(config, "test")
  assert np.array_equal(got.images, wide[:, :, 3:13])  # the central square
  flat = np.full((2, 16, 16, 3), 77, np.uint8)
  flat[1] = 200
  np.savez(tmp_path / "flat.npz", test=flat)
  config = make_config("flat", "npz", str(tmp_path / "flat.npz"), image_size=8, num_channels=3)
  got = datasets.load_split(config, "test")
  assert got.images.shape == (2, 8, 8, 3) and got.images.dtype == np.uint8
  assert np.all(got.images[0] == 77) and np.all(got.images[1] == 200)


# ------------------------------------------------------------------------------------------------
# Toys.


def toy_config(name):
  return make_config(name, "toy", image_size=0, dim=2)


@pytest.mark.parametrize("name", toy_data.TOYS.names())
def test_toy_streams_are_seeded_and_sharded(name):
  config = toy_config(name)
  stream = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1)
  got = collect(stream, 3)
  assert all(b["image"].shape == (64, 2) and b["image"].dtype == np.float32 for b in got)
  assert all(np.all(b["mask"] == 1) and b["label"].dtype == np.int32 for b in got)
  assert not np.array_equal(got[0]["image"], got[1]["image"])
  same = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1)
  assert np.array_equal(same.batch(2)["image"], got[2]["image"])
  other = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=2)
  assert not np.array_equal(other.batch(0)["image"], got[0]["image"])
  halves = [datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1,
                                 process_index=p, process_count=2).batch(1)["image"]
            for p in range(2)]
  assert np.array_equal(np.concatenate(halves), got[1]["image"])
  test = datasets.get_dataset(config, split="test", batch_size=4096, train=False, shuffle_seed=9)
  assert test.num_examples == toy_data.TOY_TEST_SIZE and test.num_batches == 3
  again = datasets.get_dataset(config, split="test", batch_size=4096, train=False, shuffle_seed=1)
  assert np.array_equal(test.batch(0)["image"], again.batch(0)["image"])  # a fixed test set


def moments_close(x, mean, var):
  """Sample mean / variance of each column within 5 standard errors of the exact values."""
  n = x.shape[0]
  centered = x - x.mean(0)
  var_se = np.sqrt((np.mean(centered**4, 0) - np.var(x, 0)**2) / n)
  return (np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
          and np.all(np.abs(np.var(x, 0) - var) < 5 * var_se))


def test_toy_distributions_moments_and_support():
  n = 20000
  rng = np.random.default_rng(11)
  # pylint: disable=protected-access
  x, labels = toy_data.sample_with_labels("gaussian_mixture", n, rng)
  assert moments_close(x, np.zeros(2), np.ones(2))
  assert set(np.unique(labels)) == set(range(8))
  angles = np.pi * labels / 4
  centres = np.sqrt(2 * (1 - 0.01)) * np.stack([np.cos(angles), np.sin(angles)], -1)
  assert np.abs(x - centres).max() < 6 * 0.1  # each point near its own component's centre

  x, labels = toy_data.sample_with_labels("checkerboard", n, rng)
  assert moments_close(x, np.zeros(2), np.ones(2))
  assert np.all(np.abs(x) <= np.sqrt(3)) and np.all(labels == -1)
  cell = np.floor((x / np.sqrt(3) + 1) * 2).astype(int)  # 4 x 4 cells on [-sqrt 3, sqrt 3]^2
  assert np.all((cell.sum(1) % 2) == 0)
  dark_counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
  assert dark_counts.min() > n / 8 * 0.9

  x = toy_data.sample_toy("Swiss_Roll", n, seed=13)  # the public form: case-insensitive, seeded
  assert x.shape == (n, 2) and x.dtype == np.float32
  assert np.array_equal(x, toy_data.sample_toy("swiss_roll", n, seed=13))
  # Exact moments by quadrature over u ~ U[0, 1) (midpoint rule, 10^6 nodes), plus the noise
  # variance.
  u = (np.arange(10**6) + 0.5) / 10**6
  t = 1.5 * np.pi * (1 + 2 * u)
  clean = np.stack([t * np.cos(t), t * np.sin(t)], -1) / 7
  assert moments_close(x, clean.mean(0), clean.var(0) + 0.05**2)
  assert 0.3 < np.std(x) < 3  # roughly unit scale


# ------------------------------------------------------------------------------------------------
# Names and configuration errors.


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
