"""Test-wide setup: import the project from the repository root, float32 JAX on CPU."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests compile many small programs and run each briefly: cheaper XLA compilation (about 3x
# less compile time on CPU) matters more than the speed of the compiled code.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()


def pytest_configure(config):
  config.addinivalue_line("markers", "tfds: prepares real MNIST with TFDS offline (~20-60 s)")
