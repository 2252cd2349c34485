"""Host-side batching: order, process sharding, augmentation and prefetching of numpy batches.

A :class:`Batches` yields dicts ``{'image': float32 [local_B, ...], 'label': int32 [local_B],
'mask': float32 [local_B]}`` (``datasets`` describes them). ``local_B = batch_size //
process_count`` where ``batch_size`` is the GLOBAL batch. Global batch ``k`` is a fixed list of
examples; process ``p`` gets rows ``[p * local_B, (p + 1) * local_B)`` of it and reads only those,
so the process-local batches concatenated in process order are exactly the global batch.

Training streams (``train=True``) repeat forever and yield full batches only. They walk an endless
sequence of epochs, epoch ``e`` being the permutation ``default_rng([seed, e])`` of the split; a
batch may straddle two epochs, so no example is ever dropped. Evaluation passes (``train=False``)
visit every example of the split exactly once, in the split's stored order, in ``num_batches =
ceil(N / batch_size)`` batches; the last one is padded with ``mask = 0`` rows (image all zeros,
label -1) so shapes stay static. ``start_batch=k`` resumes a pass (or a stream) at global batch
``k``. (The authors' evaluation loader shuffled and dropped the remainder, so each bits/dim pass
saw a random ~92 % of the test set.)

Per example, with randomness keyed by ``(seed, position of the example in the stream)`` (so
batches do not depend on ``process_count`` or on prefetching):

* ``random_flip`` (train only): left-right flip with probability 1/2;
* pixel ``v`` in {0..255} keeps its ``b = data.num_bits`` top bits (``v >> (8 - b)``, 8 by
  default) and becomes ``v / (2^b - 1)`` in [0, 1]; with ``uniform_dequantization`` it becomes
  ``(v + u) / 2^b`` with ``u ~ U[0, 1)`` drawn independently per pixel (the authors' ``(x * 255 +
  u) / 256`` with ``x = v / 255``), a value in [0, 1) that float32 rounding may turn into exactly
  1.0 for ``v = 2^b - 1``. Dequantization applies to every batch made with it; bits/dim
  (``--mode eval``) reads its batches without it and dequantizes them itself, as
  ``eval.dequantization`` says.

Sampled data (the toys) have no stored split: :func:`make_sampled_batches` draws global batch
``k`` afresh from ``(seed, k)``.
"""

from __future__ import annotations

import atexit
import functools
import queue
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from datasets.readers import SplitData

Batch = Dict[str, np.ndarray]
# sample(n, rng) -> (float32 [n, D] points, int32 [n] labels).
Sampler = Callable[[int, np.random.Generator], Tuple[np.ndarray, np.ndarray]]

# Salts that keep the random streams of different uses apart.
_SALT_EXAMPLE, _SALT_SAMPLED = 1, 2


class Batches:
  """Process-local batches of one split; iterate it, or get batch ``k`` directly with :meth:`batch`.

  Attributes:
    batch_size: the global batch size; ``local_batch_size = batch_size // process_count``.
    num_batches: batches in one evaluation pass, ``ceil(num_examples / batch_size)``; None for
      (endless) training streams.
    num_examples: examples in the split (None for sampled training streams, which are endless).
    start_batch: the global batch index iteration starts at.
  """

  def __init__(self, produce: Callable[[int], Batch], *, batch_size: int, local_batch_size: int,
               num_batches: Optional[int], num_examples: Optional[int], start_batch: int,
               prefetch: int):
    self._produce = produce
    self.batch_size = batch_size
    self.local_batch_size = local_batch_size
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.start_batch = start_batch
    self._prefetch = prefetch

  def starting_at(self, k: int) -> "Batches":
    """The same batches, iteration starting at global batch ``k`` (resuming a stream)."""
    return Batches(self._produce, batch_size=self.batch_size,
                   local_batch_size=self.local_batch_size, num_batches=self.num_batches,
                   num_examples=self.num_examples, start_batch=k, prefetch=self._prefetch)

  def batch(self, k: int) -> Batch:
    """This process's part of global batch ``k`` (deterministic; no prefetching)."""
    if k < 0 or (self.num_batches is not None and k >= self.num_batches):
      raise IndexError(f"Batch {k} out of range [0, {self.num_batches}).")
    return self._produce(k)

  def __len__(self) -> int:
    """Batches left from ``start_batch`` in an evaluation pass."""
    if self.num_batches is None:
      raise TypeError("A training stream is endless and has no length.")
    return max(self.num_batches - self.start_batch, 0)

  def __iter__(self) -> Iterator[Batch]:
    if self.num_batches is None:
      ks: Iterator[int] = iter(_count_from(self.start_batch))
    else:
      ks = iter(range(self.start_batch, self.num_batches))
    if self._prefetch <= 0:
      return map(self._produce, ks)
    return _prefetch(self._produce, ks, self._prefetch)


def _count_from(start: int) -> Iterator[int]:
  k = start
  while True:
    yield k
    k += 1


def _prefetch(produce: Callable[[int], Batch], ks: Iterator[int], depth: int) -> Iterator[Batch]:
  """Yields ``produce(k)`` for ``k`` in ``ks``, computed ``depth`` ahead on a daemon thread."""
  q: "queue.Queue[Tuple[str, Any]]" = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item: Tuple[str, Any]) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work() -> None:
    try:
      for k in ks:
        if not put(("batch", produce(k))):
          return
      put(("end", None))
    except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which re-raises it
      put(("error", e))

  thread = threading.Thread(target=work, daemon=True)

  def shutdown() -> None:
    # Waits for the worker to finish its current batch: a daemon thread still running numpy code
    # when the interpreter finalizes can abort the process.
    stop.set()
    while thread.is_alive():
      try:
        while True:
          q.get_nowait()  # frees a worker blocked on a full queue
      except queue.Empty:
        pass
      thread.join(timeout=0.1)

  thread.start()
  # For iterators still alive at exit (atexit runs before daemon threads stop).
  atexit.register(shutdown)
  try:
    while True:
      kind, item = q.get()
      if kind == "end":
        return
      if kind == "error":
        raise item
      yield item
  finally:
    atexit.unregister(shutdown)
    shutdown()


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"Need 0 <= process_index ({process_index}) < process_count "
                     f"({process_count}).")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"The global batch size {batch_size} must be a positive multiple of the "
                     f"process count {process_count}.")
  return batch_size // process_count


def _to_float(images: np.ndarray, positions: np.ndarray, flips: bool, dequantize: bool,
              seed: int, num_bits: int = 8) -> np.ndarray:
  """uint8 ``[b, H, W, C]`` -> float32 in [0, 1], reduced to ``2^num_bits`` levels, flipped /
  dequantized per example.

  The noise of row ``r`` is keyed by ``(seed, positions[r])``; float data (toys) pass through
  unchanged.
  """
  if images.dtype != np.uint8:
    return images.astype(np.float32)
  if num_bits < 8:
    images = images >> (8 - num_bits)
  levels = np.float32(2 ** num_bits)
  out = np.empty(images.shape, np.float32)
  for r, (image, pos) in enumerate(zip(images, positions)):
    rng = np.random.default_rng([seed, _SALT_EXAMPLE, int(pos)])
    if flips and rng.random() < 0.5:
      image = image[:, ::-1]
    if dequantize:
      out[r] = (image + rng.random(image.shape, np.float32)) / levels
    else:
      out[r] = image / (levels - 1)
  return out


def make_batches(data: SplitData, *, batch_size: int, train: bool, process_index: int = 0,
                 process_count: int = 1, seed: int = 0, random_flip: bool = False,
                 uniform_dequantization: bool = False, start_batch: int = 0,
                 prefetch: int = 2, num_bits: int = 8) -> Batches:
  """Batches over an in-memory split (see the module docstring for order, sharding, augmentation).

  Args:
    data: the split; images uint8 ``[N, H, W, C]`` or float ``[N, D]``.
    batch_size: the GLOBAL batch size, a multiple of ``process_count``.
    train: True: endless shuffled stream of full batches; False: one padded pass in stored order.
    process_index, process_count: this process and the number of processes.
    seed: a non-negative int fixing the training order and all per-example noise.
    random_flip: left-right flips in training (8-bit images only).
    uniform_dequantization: ``(v + u) / 2^b`` instead of ``v / (2^b - 1)`` (8-bit images only).
    start_batch: the first global batch produced.
    prefetch: batches computed ahead on a background thread (0: none).
    num_bits: images keep their ``b = num_bits`` most significant bits, ``v >> (8 - b)``.

  Returns:
    :class:`Batches` of ``{'image': float32 [local_B, ...], 'label': int32 [local_B],
    'mask': float32 [local_B]}``.
  """
  local_b = _local_batch_size(batch_size, process_index, process_count)
  n = data.labels.shape[0]
  if n == 0:
    raise ValueError("Cannot batch an empty split.")
  if data.images.dtype != np.uint8 and (random_flip or uniform_dequantization):
    raise ValueError("random_flip and uniform_dequantization apply to 8-bit images only; disable "
                     "them (config.data.random_flip / config.data.uniform_dequantization) for "
                     "vector data.")
  offsets = np.arange(process_index * local_b, (process_index + 1) * local_b)

  @functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)

  def produce(k: int) -> Batch:
    positions = k * batch_size + offsets
    if train:
      epochs, within = np.divmod(positions, n)
      index = np.empty_like(positions)
      for e in np.unique(epochs):
        index[epochs == e] = permutation(int(e))[within[epochs == e]]
      mask = np.ones(local_b, bool)
    else:
      mask = positions < n
      index = np.where(mask, positions, 0)
    images = _to_float(data.images[index], positions, train and random_flip,
                       uniform_dequantization, seed, num_bits)
    labels = np.where(mask, data.labels[index], -1).astype(np.int32)
    images[~mask] = 0.0
    return {"image": images, "label": labels, "mask": mask.astype(np.float32)}

  return Batches(produce, batch_size=batch_size, local_batch_size=local_b,
                 num_batches=None if train else -(-n // batch_size), num_examples=n,
                 start_batch=start_batch, prefetch=prefetch)


def make_sampled_batches(sample: Sampler, *, batch_size: int, process_index: int = 0,
                         process_count: int = 1, seed: int = 0, start_batch: int = 0,
                         prefetch: int = 2) -> Batches:
  """An endless training stream of freshly sampled batches (the toys' training split).

  Args:
    sample: ``sample(n, rng)`` draws ``n`` points: float32 ``[n, D]`` and int32 labels ``[n]``.
    batch_size, process_index, process_count, start_batch, prefetch: as for
      :func:`make_batches`.
    seed: global batch ``k`` is drawn from ``default_rng([seed, salt, k])``.

  Returns:
    :class:`Batches` of ``{'image': float32 [local_B, D], 'label': int32 [local_B],
    'mask': ones float32 [local_B]}``.
  """
  local_b = _local_batch_size(batch_size, process_index, process_count)
  lo = process_index * local_b

  def produce(k: int) -> Batch:
    # Drawn per global batch and sliced, so the global batch does not depend on process_count.
    x, labels = sample(batch_size, np.random.default_rng([seed, _SALT_SAMPLED, k]))
    return {"image": x[lo:lo + local_b], "label": labels[lo:lo + local_b],
            "mask": np.ones(local_b, np.float32)}

  return Batches(produce, batch_size=batch_size, local_batch_size=local_b, num_batches=None,
                 num_examples=None, start_batch=start_batch, prefetch=prefetch)


# ------------------------------------------------------------------------------------------------
# What the model reads.


def model_batch(batch: Batch, scaler: Callable[[np.ndarray], np.ndarray],
                num_classes: int = 0) -> Any:
  """A data batch as a loss or a train step takes it (``losses.Batch``): the scaled float32
  images, with their labels (``{'image', 'label'}``) for a network of ``num_classes`` classes.
  Padding rows (``mask = 0``) get the null label ``num_classes``.

  Raises:
    ValueError: if a real example's label is not a class of the network (e.g. -1: the data set
      has no labels).
  """
  images = np.asarray(scaler(batch["image"]), np.float32)
  if not num_classes:
    return images
  labels = np.asarray(batch["label"], np.int32)
  real = np.asarray(batch.get("mask", np.ones(len(labels))), bool)
  bad = real & ((labels < 0) | (labels >= num_classes))
  if bad.any():
    found = ("the data set has no labels" if labels[bad][0] < 0
             else f"the data have label {labels[bad].max()}")
    raise ValueError(f"model.num_classes = {num_classes} asks for class labels 0..."
                     f"{num_classes - 1}, but {found}; use labelled data or "
                     "--config.model.num_classes=0.")
  return {"image": images, "label": np.where(real, labels, num_classes).astype(np.int32)}


def stack_batches(batches: Iterator[Batch], n: int, scaler: Callable[[np.ndarray], np.ndarray],
                  num_classes: int = 0) -> Any:
  """The next ``n`` batches of ``batches`` as :func:`model_batch` gives them, stacked: leaves
  ``[n, B, ...]`` (the input of ``n`` train steps in one call)."""
  parts = [model_batch(next(batches), scaler, num_classes) for _ in range(n)]
  if isinstance(parts[0], dict):
    return {name: np.stack([part[name] for part in parts]) for name in parts[0]}
  return np.stack(parts)


def padded_batches(arrays: Dict[str, np.ndarray], batch_size: int) -> Iterator[Batch]:
  """In-memory ``arrays`` (one leading size ``N``) as global batches of ``batch_size``: the last
  one padded with copies of its first row, so every batch has the compiled shape, and a
  ``'mask'`` (1 for real rows, 0 for padding) added to each."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    batch = {}
    for name, array in arrays.items():
      chunk = array[start:start + batch_size]
      pad = np.repeat(chunk[:1], batch_size - len(chunk), axis=0)
      batch[name] = np.concatenate([chunk, pad])
    real = min(batch_size, n - start)
    batch["mask"] = (np.arange(batch_size) < real).astype(np.float32)
    yield batch
