"""The score model's training loop (:class:`modes.train.ScoreTraining`) in timed intervals, for
the experiments that measure training: the clock runs only while steps run, so evaluations in
between (bits/dim probes) do not count as training time."""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from infra.devices import Devices
from modes.train import ScoreTraining


class TimedTraining(ScoreTraining):
  """:class:`ScoreTraining` stepped by :meth:`run_until` instead of run in a workdir: the same
  data stream, state, compiled steps and ``training.n_jitted_steps`` as ``main.py --mode
  train``, no checkpoints. Steady-state throughput counts the intervals after the first, which
  holds the compilation; the first call is timed alone.

  Attributes:
    step: the step of :attr:`state`.
    train_s: seconds spent in the intervals; first_call_s: the first call's (compiling).
    losses: the training loss of every step so far, float64 ``[step]``.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices: Optional[Devices] = None):
    super().__init__(config, devices)
    self._stream = self.batches(0)
    self.step, self.train_s, self.first_call_s = 0, 0.0, None
    self.losses = np.zeros((0,), np.float64)
    self._steady_s, self._steady_images = 0.0, 0

  @property
  def images_per_s(self) -> Optional[float]:
    """Training images per second after compilation; None before a steady interval."""
    return self._steady_images / self._steady_s if self._steady_s else None

  def run_until(self, stop_at: int) -> float:
    """Trains to step ``stop_at``; returns the interval's mean loss (``FloatingPointError`` if
    it is not finite)."""
    training = self.config.training
    start, interval, first = time.perf_counter(), [], self.step
    while self.step < stop_at:
      n = min(training.n_jitted_steps, stop_at - self.step)
      self.state, metrics = self.next_steps(self.state, self._stream, n)
      interval.append(metrics["loss"])
      if self.step == 0:
        jax.block_until_ready(self.state)
        self.first_call_s = time.perf_counter() - start
      self.step += n
    jax.block_until_ready(self.state)
    elapsed = time.perf_counter() - start
    self.train_s += elapsed
    if first > 0:  # steady state: no compilation inside
      self._steady_s += elapsed
      self._steady_images += (self.step - first) * training.batch_size
    step_losses = np.asarray(jax.device_get(jnp.concatenate(interval)), np.float64)
    self.losses = np.concatenate([self.losses, step_losses])
    loss = float(step_losses.mean())
    if not np.isfinite(loss):
      raise FloatingPointError(f"Training loss is {loss} at step {self.step}.")
    return loss
