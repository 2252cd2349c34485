"""Test-wide setup: import the project from the repository root, float32 JAX on CPU."""

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Data lookups act offline (a closed local port answers the reachability probe): no test may
# download a data set, whatever the machine's network.
os.environ.setdefault("SCORE_SDE_DOWNLOAD_PROBE", "127.0.0.1:9")
# Nothing a test computes once (the MNIST classifier, FID statistics) lands in, or is read from,
# the user's cache; no user's Inception weights either.
os.environ["SCORE_SDE_CACHE"] = tempfile.mkdtemp(prefix="score_sde_test_cache_")
os.environ.pop("SCORE_SDE_INCEPTION_WEIGHTS", None)
# Tests compile many small programs and run each briefly: cheaper XLA compilation (about 3x
# less compile time on CPU) matters more than the speed of the compiled code.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()


def pytest_configure(config):
  config.addinivalue_line("markers", "tfds: prepares real MNIST with TFDS offline (~20-60 s)")


MNIST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir,
                         "shared", "data", "mnist")


@pytest.fixture(scope="session")
def tfds_mnist_dir(tmp_path_factory):
  """TFDS's MNIST prepared offline from the real IDX files in ``MNIST_DIR``, once per session
  (~30 s), without asking TFDS's bucket either."""
  if not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"real MNIST IDX files not found in {MNIST_DIR}")
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  config = tfds.download.DownloadConfig(manual_dir=MNIST_DIR, try_download_gcs=False)
  tfds.builder("mnist", data_dir=data_dir).download_and_prepare(download_config=config)
  return data_dir
