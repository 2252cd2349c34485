"""Tests for ``datasets.lookup``: where data come from when ``config.data.data_dir`` is empty.

Nothing here reaches the network: every test runs with ``$SCORE_SDE_DOWNLOAD_PROBE`` at a closed
local port, ``$HOME`` and ``$TFDS_DATA_DIR`` pointing at empty folders, and TFDS's download
replaced by a failure; the download test replaces the probe and the download by fakes. The TFDS
tests (``-m tfds``) prepare real MNIST offline once per module (~30 s with the TensorFlow import).
"""

import collections
import gzip
import hashlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import datasets
from configs.default_configs import get_default_configs
from datasets import lookup
from datasets import readers
from datasets import tf_readers
from tests.runs import REPO

MNIST_DIR = os.path.join(REPO, "..", "shared", "data", "mnist")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# The lookup must answer an offline machine within this many seconds.
OFFLINE_BOUND_S = 15.0
# main.py's whole run, as the user types it: starting JAX, the config, the lookup (the data are
# asked for before the network is built). TFDS's own download retries would take minutes.
COMMAND_LINE_BOUND_S = 15.0

needs_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"real MNIST IDX files not found in {MNIST_DIR}")
needs_tfds_installed = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is None,
    reason="the TFDS places need tensorflow_datasets")
# The real TFDS preparation, kept before the autouse fixture replaces it by a failure.
_PREPARE_TFDS = tf_readers.prepare_tfds


def make_config(dataset="mnist", source="idx", data_dir="", image_size=28, num_channels=1):
  config = get_default_configs()
  config.data.update(dict(dataset=dataset, source=source, data_dir=data_dir,
                          image_size=image_size, num_channels=num_channels, random_flip=False,
                          uniform_dequantization=False))
  return config


def closed_port():
  """A local TCP port nobody listens on (connecting is refused at once)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def link_files(source_dir, folder, names=MNIST_FILES):
  os.makedirs(folder, exist_ok=True)
  for name in names:
    os.symlink(os.path.abspath(os.path.join(source_dir, name)), os.path.join(folder, name))


def write_idx_split(folder, n):
  """Four tiny IDX files of ``n`` examples, labels all ``n``: tells which folder was read."""
  os.makedirs(folder, exist_ok=True)
  for prefix in ("train", "t10k"):
    for kind, array in (("images", np.zeros((n, 28, 28), np.uint8)),
                        ("labels", np.full((n,), n, np.uint8))):
      header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
      nd = array.ndim
      with gzip.open(os.path.join(folder, f"{prefix}-{kind}-idx{nd}-ubyte.gz"), "wb") as f:
        f.write(header + array.tobytes())


def lookup_lines(caplog):
  return [r.getMessage() for r in caplog.records if r.module == "lookup"]


def digest(image):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture(autouse=True)
def nowhere_and_offline(monkeypatch, tmp_path):
  """No data root, empty TFDS folders, an unreachable download host and no downloads."""
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.delenv(lookup.ENV_DATA_DIR, raising=False)
  monkeypatch.delenv(lookup.ENV_TFDS_DATA_DIR, raising=False)
  monkeypatch.setenv(lookup.ENV_PROBE, f"127.0.0.1:{closed_port()}")

  def no_download(*args, **kwargs):
    raise AssertionError(f"a test tried to download: prepare_tfds{args}")
  monkeypatch.setattr(tf_readers, "prepare_tfds", no_download)


# ------------------------------------------------------------------------------------------------
# 1. $SCORE_SDE_DATA_DIR.


@needs_mnist
@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_data_root_serves_the_idx_files_without_data_dir(tmp_path, monkeypatch, layout):
  root = tmp_path / "root"
  folder = root / "mnist" if layout == "subfolder" else root
  link_files(MNIST_DIR, folder)
  monkeypatch.setenv(lookup.ENV_DATA_DIR, str(root))
  assert lookup.locate("mnist", "idx", "mnist", "idx") == ("idx", str(folder))
  found = datasets.load_split(make_config(), "test")
  explicit = datasets.load_split(make_config(data_dir=MNIST_DIR), "test")
  assert np.array_equal(found.images, explicit.images)
  assert np.array_equal(found.labels, explicit.labels)
  # Source 'tfds' without data_dir takes them too: the numpy readers read MNIST.
  assert np.array_equal(datasets.load_split(make_config(source="tfds"), "test").images,
                        explicit.images)
  assert datasets.num_examples(make_config(), "train") == 60000


def test_data_root_subfolder_comes_before_files_in_the_root(tmp_path, monkeypatch):
  root = tmp_path / "root"
  write_idx_split(str(root), 3)
  write_idx_split(str(root / "fashion_mnist"), 5)
  monkeypatch.setenv(lookup.ENV_DATA_DIR, str(root))
  assert datasets.load_split(make_config("fashion_mnist"), "test").labels.tolist() == [5] * 5
  assert datasets.load_split(make_config("mnist"), "train").labels.tolist() == [3] * 3


@needs_mnist
def test_where_the_data_came_from_is_logged_once(tmp_path, monkeypatch, caplog):
  root = tmp_path / "root"
  link_files(MNIST_DIR, root / "mnist")
  monkeypatch.setenv(lookup.ENV_DATA_DIR, str(root))
  config = make_config()
  with caplog.at_level(logging.INFO):
    for split, train in (("train", True), ("test", False)):
      next(iter(datasets.get_dataset(config, split=split, batch_size=8, train=train, prefetch=0)))
    assert datasets.num_examples(config, "test") == 10000
  assert lookup_lines(caplog) == [
      f"MNIST: IDX files in {root / 'mnist'} (from ${lookup.ENV_DATA_DIR})"]


@needs_mnist
def test_explicit_data_dir_and_the_other_sources_are_unchanged(tmp_path, monkeypatch, caplog):
  root = tmp_path / "root"
  write_idx_split(str(root / "mnist"), 3)  # what the lookup would find
  monkeypatch.setenv(lookup.ENV_DATA_DIR, str(root))
  with caplog.at_level(logging.INFO):
    data = datasets.load_split(make_config(data_dir=MNIST_DIR), "test")
  assert np.bincount(data.labels).tolist() == MNIST_TEST_COUNTS and not lookup_lines(caplog)
  with pytest.raises(ValueError, match=r"^config.data.source='npz' reads local files: set "
                                       r"config.data.data_dir.$"):
    datasets.load_split(make_config(source="npz"), "test")
  with pytest.raises(ValueError, match="set config.data.tfrecords_path or config.data.data_dir"):
    datasets.load_split(make_config("ffhq", "tfrecords", image_size=256, num_channels=3), "train")


# ------------------------------------------------------------------------------------------------
# 2. TFDS's prepared data.


@pytest.mark.tfds
def test_prepared_tfds_data_found_without_data_dir(tfds_mnist_dir, tmp_path, monkeypatch, caplog):
  monkeypatch.setenv(lookup.ENV_TFDS_DATA_DIR, tfds_mnist_dir)
  monkeypatch.setenv(lookup.ENV_DATA_DIR, "")
  config = make_config()  # source 'idx' asked for; read as 'tfds' where TFDS's data are found
  with caplog.at_level(logging.INFO):
    got = datasets.load_split(config, "test")
    assert datasets.num_examples(config, "train") == 60000  # from TFDS's metadata
  assert lookup_lines(caplog) == [
      f"MNIST: TFDS's prepared mnist in {tfds_mnist_dir} (from ${lookup.ENV_TFDS_DATA_DIR})"]
  assert lookup.locate("mnist", "idx", "mnist", "idx") == ("tfds", tfds_mnist_dir)
  idx = readers.load_idx(MNIST_DIR, "test")
  assert got.images.shape == idx.images.shape and got.images.dtype == np.uint8
  # TFDS stores the examples in another order: all labels as a multiset, some images as pairs.
  assert np.bincount(got.labels).tolist() == MNIST_TEST_COUNTS
  pairs = collections.Counter((digest(x), int(y)) for x, y in zip(idx.images, idx.labels))
  assert all(pairs[(digest(x), int(y))] for x, y in zip(got.images[:300], got.labels[:300]))

  # TFDS's default folder, ~/tensorflow_datasets, when $TFDS_DATA_DIR is unset.
  monkeypatch.delenv(lookup.ENV_TFDS_DATA_DIR)
  default = os.path.join(os.environ["HOME"], "tensorflow_datasets")
  os.symlink(tfds_mnist_dir, default)
  assert lookup.locate("mnist", "tfds", "mnist", "idx") == ("tfds", default)


@pytest.mark.tfds
def test_data_root_comes_before_prepared_tfds_data(tfds_mnist_dir, tmp_path, monkeypatch):
  root = tmp_path / "root"
  link_files(MNIST_DIR, root / "mnist")
  monkeypatch.setenv(lookup.ENV_DATA_DIR, str(root))
  monkeypatch.setenv(lookup.ENV_TFDS_DATA_DIR, tfds_mnist_dir)
  assert lookup.locate("mnist", "tfds", "mnist", "idx") == ("idx", str(root / "mnist"))
  got = datasets.load_split(make_config(source="tfds"), "test")
  idx = readers.load_idx(MNIST_DIR, "test")  # the IDX files' own order: they were read
  assert np.array_equal(got.images, idx.images) and np.array_equal(got.labels, idx.labels)


# ------------------------------------------------------------------------------------------------
# 3. The download.


@pytest.mark.tfds
def test_download_when_the_network_answers(tfds_mnist_dir, tmp_path, monkeypatch, caplog):
  tfds_dir = str(tmp_path / "tfds")
  monkeypatch.setenv(lookup.ENV_TFDS_DATA_DIR, tfds_dir)
  probed, downloads = [], []

  def reachable(host, port, timeout):
    probed.append((host, port, timeout))
    return True

  def fake_download(name, data_dir=None, manual_dir=None):
    # What TFDS's download_and_prepare leaves: MNIST prepared from the IDX files.
    downloads.append((name, data_dir, manual_dir))
    shutil.copytree(os.path.join(tfds_mnist_dir, "mnist"), os.path.join(data_dir, "mnist"))

  monkeypatch.setattr(lookup, "network_reachable", reachable)
  monkeypatch.setattr(tf_readers, "prepare_tfds", fake_download)
  config = make_config()
  with caplog.at_level(logging.INFO):
    data = datasets.load_split(config, "test")
    assert datasets.num_examples(config, "train") == 60000
  port = int(os.environ[lookup.ENV_PROBE].rpartition(":")[2])
  assert probed == [("127.0.0.1", port, lookup.PROBE_TIMEOUT_S)]
  assert downloads == [("mnist", tfds_dir, None)]
  assert np.bincount(data.labels).tolist() == MNIST_TEST_COUNTS
  assert lookup_lines(caplog) == [f"MNIST: not found locally; TFDS downloads and prepares mnist "
                                  f"into {tfds_dir} (${lookup.ENV_TFDS_DATA_DIR})"]


@needs_tfds_installed
def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(lookup, "network_reachable", lambda host, port, timeout: True)

  def forbidden(name, data_dir=None, manual_dir=None):
    raise RuntimeError("HTTP Error 403: Forbidden\nmore detail")
  monkeypatch.setattr(tf_readers, "prepare_tfds", forbidden)
  with pytest.raises(lookup.DataNotFoundError) as info:
    datasets.load_split(make_config(), "test")
  message = str(info.value)
  assert "\n" not in message and "download of mnist" in message and "403: Forbidden" in message


@needs_tfds_installed
def test_probe_asks_the_download_host_its_proxy_or_the_override(monkeypatch):
  probed = []
  monkeypatch.setattr(lookup, "network_reachable",
                      lambda host, port, timeout: probed.append((host, port)) or False)
  for name in PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(name.upper(), raising=False)
  monkeypatch.delenv(lookup.ENV_PROBE)

  def probe(dataset, numpy_source="idx"):
    with pytest.raises(lookup.DataNotFoundError):
      lookup.locate(dataset, "tfds", dataset, numpy_source)
    return probed.pop()

  assert probe("mnist") == ("storage.googleapis.com", 443)
  assert probe("fashion_mnist") == ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)
  assert probe("cifar10", "cifar_python") == ("www.cs.toronto.edu", 443)
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  assert probe("mnist") == ("proxy.example", 3128)
  monkeypatch.setenv("no_proxy", "storage.googleapis.com")
  assert probe("mnist") == ("storage.googleapis.com", 443)
  monkeypatch.setenv(lookup.ENV_PROBE, "10.1.2.3:9")
  assert probe("mnist") == ("10.1.2.3", 9)
  monkeypatch.setenv(lookup.ENV_PROBE, "nonsense")
  with pytest.raises(ValueError, match="SCORE_SDE_DOWNLOAD_PROBE='nonsense' is not host:port"):
    lookup.locate("mnist", "idx", "mnist", "idx")


# ------------------------------------------------------------------------------------------------
# 4. Nowhere and offline.


@needs_tfds_installed
@pytest.mark.parametrize("dataset,source,expected", [
    ("mnist", "idx", ["--config.data.data_dir=<folder>", "train-images-idx3-ubyte.gz",
                      "t10k-labels-idx1-ubyte.gz", "https://storage.googleapis.com/cvdf-datasets",
                      "manual_dir=<a folder with those files>"]),
    ("mnist", "tfds", ["--config.data.source=idx --config.data.data_dir=<folder>"]),
    ("cifar10", "cifar_python", ["cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/",
                                 "manual_dir=<a folder with cifar-10-binary.tar.gz>"]),
])
def test_nowhere_and_offline_is_one_line_naming_every_way(tmp_path, monkeypatch, dataset, source,
                                                          expected):
  monkeypatch.setenv(lookup.ENV_TFDS_DATA_DIR, str(tmp_path / "empty"))
  channels, size = (3, 32) if dataset == "cifar10" else (1, 28)
  config = make_config(dataset, source, image_size=size, num_channels=channels)
  start = time.monotonic()
  with pytest.raises(lookup.DataNotFoundError) as info:
    datasets.get_dataset(config, split="train", batch_size=8, train=True)
  assert time.monotonic() - start < OFFLINE_BOUND_S
  message = str(info.value)
  assert isinstance(info.value, ValueError) and "\n" not in message
  assert "could not be reached" in message  # the probe was asked, and said offline
  for way in ["SCORE_SDE_DATA_DIR=<root>", f"<root>/{dataset}", "TFDS_DATA_DIR=<dir>",
              "data_dir", *expected]:
    assert way in message, (way, message)


def test_without_tensorflow_datasets_its_places_are_skipped_and_said_so(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed

  def not_asked(host, port, timeout):
    raise AssertionError("the probe is only for a TFDS download")
  monkeypatch.setattr(lookup, "network_reachable", not_asked)
  with pytest.raises(lookup.DataNotFoundError,
                     match="TensorFlow Datasets is not installed, so neither prepared TFDS data"):
    datasets.load_split(make_config(), "test")


def test_command_line_offline_and_nowhere_fails_fast_in_one_line(tmp_path):
  env = dict(os.environ, HOME=str(tmp_path / "home"), TFDS_DATA_DIR=str(tmp_path / "empty"),
             JAX_PLATFORMS="cpu")
  env.pop(lookup.ENV_DATA_DIR, None)
  workdir = tmp_path / "w"
  command = [sys.executable, "main.py", "--config", "configs/vpsde_mnist.py", "--mode", "train",
             "--workdir", str(workdir)]
  start = time.monotonic()
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
  elapsed = time.monotonic() - start
  last = (result.stderr.strip().splitlines() or [""])[-1]
  assert result.returncode != 0 and last.startswith("error: No MNIST data found"), result.stderr
  assert "SCORE_SDE_DATA_DIR" in last and "--config.data.data_dir" in last
  assert not workdir.exists()
  assert elapsed < COMMAND_LINE_BOUND_S, elapsed
