"""Where a measured result comes from: the device, library versions and host load that the speed
benchmarks and the experiments record in the header of every result file."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, Optional

import diffrax
import flax
import jax
import jaxlib
import numpy as np
import optax

from infra.devices import Devices


def environment(devices: Optional[Devices] = None) -> Dict[str, Any]:
  """Device (default: what JAX sees), library versions and host load, for a result header."""
  devices = Devices() if devices is None else devices
  device = devices.mesh.devices.flat[0]
  return {
      "device": {"device_kind": device.device_kind, "platform": device.platform,
                 "count": devices.count, "process_count": jax.process_count()},
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "flax": flax.__version__, "optax": optax.__version__,
                   "diffrax": diffrax.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
      "host": {"cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
      # The compiler's flags change which kernels run (infra.cpu_runtime), so a time needs them.
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def device_slug(kind: str) -> str:
  """A device kind as a file-name part (``"NVIDIA H100 80GB HBM3"`` ->
  ``nvidia_h100_80gb_hbm3``)."""
  return "".join(c if c.isalnum() else "_" for c in kind.lower()).strip("_") or "device"
