"""``--mode train``: trains the score model of a config, or resumes it (:func:`train`).

The loop, the workdir layout and what a resume checks are :mod:`modes.training_loop`'s; this
module says what is trained: the network of ``config.model`` with the objective of
``config.training`` (``builders.build_train_steps``) on ``config.data``, the test loss of the EMA
parameters every ``training.eval_freq`` steps (``eval/loss`` in TensorBoard), and with
``training.snapshot_sampling`` samples of every snapshot (``samples/iter_<step>/sample.png`` and
``.npz``, EMA parameters, the sampler of ``config.sampling``).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Iterator, Optional, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
import losses
from datasets import batching
from infra import outputs
from infra.devices import Devices, gather
from models import utils as mutils
from modes import Options
from modes.training_loop import Metrics, TrainingLoop

Config = ml_collections.ConfigDict


class ScoreTraining(TrainingLoop):
  """Training of the score model of ``config`` (module docstring).

  Attributes (besides :class:`TrainingLoop`'s):
    sde: the SDE of ``config.training.sde``.
  """

  def __init__(self, config: Config, devices: Optional[Devices] = None):
    super().__init__(config, devices)
    training = config.training
    self.sde = builders.build_sde(config)
    # The data before the network: a missing data set is reported without waiting for the model.
    self._train_data, self._eval_data = self.load_data()
    self.model, optimizer, self.state = builders.init_state(config, self.devices)
    self.num_classes = mutils.num_classes(self.model)
    self.scaler, self._inverse_scaler = datasets.data_scalers(config)
    if self.num_classes:  # labels checked before any write
      batching.model_batch(self._train_data.batch(0), self.scaler, self.num_classes)
    self._steps = builders.build_train_steps(config, self.sde, self.model, optimizer, self.state,
                                             self.devices)
    self._eval_step = builders.build_eval_step(config, self.sde, self.model, optimizer,
                                               self.state, self.devices)
    # Built even when unused so that a bad sampler name fails now, not at the first snapshot.
    self._sampler = builders.build_sampler(config, self.sde, self.model, self.devices,
                                           self.devices.round_batch(min(training.batch_size, 64)))
    self._eval_batches: Optional[Iterator[Dict[str, np.ndarray]]] = None

  def load_data(self) -> Tuple[batching.Batches, batching.Batches]:
    """This process's training stream and test stream (one test batch per evaluation) of
    ``config.data``."""
    config = self.config
    stream = dict(batch_size=config.training.batch_size, train=True,
                  process_index=jax.process_index(), process_count=jax.process_count())
    return (datasets.get_dataset(config, split="train", shuffle_seed=config.seed, **stream),
            datasets.get_dataset(config, split="test", shuffle_seed=config.seed + 1, **stream))

  def batches(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    return iter(self._train_data.starting_at(start_step))

  def start(self, step: int) -> None:
    # One test batch per evaluation, continuing the stream a fresh run would have used.
    self._eval_batches = iter(self._eval_data.starting_at(
        step // max(self.config.training.eval_freq, 1)))

  def train_steps(self, state: losses.TrainState, batches) -> Tuple[losses.TrainState, Metrics]:
    state, step_losses = self._steps(state, batches)
    return state, {"loss": step_losses}

  def evaluate(self, step: int) -> Dict[str, float]:
    batch = batching.model_batch(next(self._eval_batches), self.scaler, self.num_classes)
    _, loss = self._eval_step(self.state, self.devices.put_batch(batch))
    return {"loss": float(loss)}

  def after_snapshot(self, step: int, workdir: str) -> None:
    """Samples with the EMA parameters into ``samples/iter_<step>/`` (skipped if non-finite)."""
    if not self.config.training.snapshot_sampling:
      return
    samples, _ = self._sampler(jax.random.fold_in(jax.random.PRNGKey(self.config.seed), step),
                               self.state.ema_params)
    samples = np.asarray(self._inverse_scaler(gather(samples)))
    if not np.all(np.isfinite(samples)):
      # Training goes on (its checkpoint is saved); only the snapshot's picture is lost.
      logging.warning("Snapshot samples at step %d are non-finite (sampling.method=%s: the "
                      "network diverged, or the ODE solver hit its step cap); not saved.",
                      step, self.config.sampling.method)
    elif jax.process_index() == 0:
      outputs.save_samples(samples, os.path.join(workdir, "samples", f"iter_{step}"))


def train(config: Config, workdir: str, allow_config_change: bool = False) -> None:
  """Trains from scratch or resumes exactly from the newest checkpoint in ``workdir``
  (:class:`ScoreTraining`, :mod:`modes.training_loop`).

  Raises:
    ValueError: a bad config value, found before the workdir is touched, or a config that differs
      from the one the workdir was trained with (``run_config.ConfigChangedError``).
    FloatingPointError: training diverged (nothing non-finite was saved).
  """
  ScoreTraining(config).run(workdir, allow_config_change)


def run(config: Config, workdir: str, options: Options) -> None:
  """``--mode train``."""
  train(config, workdir, allow_config_change=options.allow_config_change)
