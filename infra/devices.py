"""The device mesh: where arrays live, how batches are sharded and gathered.

One ``Mesh`` over all devices of all processes with a single ``data`` axis: batches are sharded
along their batch axis, the train state is replicated, and each process feeds only its own
slice of every global batch. The same code runs on 1 CPU, 1 GPU, 8 GPUs or a TPU slice; no
``pmap``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Array = jax.Array


class Devices:
  """The mesh and its shardings: replicated state, batch-sharded data.

  Attributes:
    mesh: the ``Mesh`` with one axis, ``data``.
    replicated: sharding of the train state and other replicated values.
    batch: sharding of ``[B, ...]`` arrays along ``B``.
    stacked_batch: sharding of ``[n, B, ...]`` blocks of ``n`` batches along ``B``.
    count: number of devices.
  """

  def __init__(self, devices: Optional[Sequence[jax.Device]] = None):
    """Over ``devices`` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))
    self.stacked_batch = NamedSharding(self.mesh, P(None, "data"))
    self.count = len(devices)

  def check_batch(self, batch_size: int, what: str) -> None:
    """Raises a one-line ``ValueError`` unless ``batch_size`` splits evenly over the mesh."""
    if batch_size % self.count or batch_size % jax.process_count():
      raise ValueError(
          f"{what} ({batch_size}) must be divisible by the number of devices ({self.count}) and "
          f"processes ({jax.process_count()}); change it with --config.{what}=...")

  def round_batch(self, n: int) -> int:
    """``n`` rounded down to a multiple of the device count (at least one per device)."""
    return max(self.count, (n // self.count) * self.count)

  def put(self, tree: Any, sharding: Optional[NamedSharding] = None) -> Any:
    """``tree`` on the devices, replicated unless ``sharding`` says otherwise."""
    return jax.device_put(tree, self.replicated if sharding is None else sharding)

  def put_batch(self, local: Any, stacked: bool = False) -> Any:
    """This process's slice of a global batch (an array or a dict of arrays with the same batch
    dimension) -> global arrays sharded over ``data``."""
    sharding = self.stacked_batch if stacked else self.batch
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, a), local)

  def constrain(self, x: Array) -> Array:
    """Inside a jitted function: keep ``x: [B, ...]`` sharded along ``B``."""
    return jax.lax.with_sharding_constraint(x, self.batch)


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch of ``batch_size`` (each process feeds its own slice,
  in process order)."""
  local = batch_size // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def gather(x: Array) -> np.ndarray:
  """A sharded global array as one host numpy array (on every process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def batch_apply(fn: Callable[[Any, Array], Any], params: Any, devices: Devices
                ) -> Callable[[Mapping[str, np.ndarray]], Tuple[np.ndarray, ...]]:
  """``fn(params, x) -> (outputs [B, ...], ...)`` jitted over a global batch, as a host function.

  The returned ``apply(batch)`` takes this process's part of a global batch, ``{'image':
  [local_B, ...], 'mask': [local_B]}`` (``mask`` optional; rows with ``mask = 0`` are padding),
  shards the images over the mesh with ``params`` replicated, and returns every output for the
  whole global batch on the host (each process gets all of it), padding rows dropped, float64.
  """
  params = devices.put(params)
  forward = jax.jit(fn, out_shardings=devices.batch)

  def apply(batch: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
    out = forward(params, devices.put_batch(np.asarray(batch["image"], np.float32)))
    keep = slice(None)
    if "mask" in batch:
      keep = gather(devices.put_batch(np.asarray(batch["mask"], np.float32))) > 0
    return tuple(np.asarray(gather(y), np.float64)[keep] for y in out)

  return apply
