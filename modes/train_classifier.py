"""``--mode train_classifier``: trains the noise-conditional classifier of classifier guidance.

``python main.py --config configs/classifier/vpsde_mnist_wrn.py --mode train_classifier
--workdir W`` (or ``python -m classifier_training --config ... --workdir W``) trains the
classifier of ``config.model`` (``models.classifier``) on the labelled data of ``config.data``
perturbed by the SDE of ``config.training.sde``, built exactly as for the score model it is to
guide: each example gets ``t ~ U(training.eps, T)`` and ``x(t) = a(t) x + std(t) z``, and the
classifier, given ``sde.noise_label(t)``, learns its label by cross-entropy
(``losses.get_classifier_loss_fn``). The loop and the workdir are :mod:`modes.training_loop`'s
(checkpoints, resume, config record, signals), the log is ``classifier_train.log`` and the last
two snapshots are kept; at the end, the test accuracy of the EMA parameters at
``eval.classifier_times`` goes to ``W/classifier_eval.json``. :func:`load_classifier` gives
``(model, params)`` back, and ``models.classifier.get_log_prob_fn`` the ``log_prob_fn(x, t)`` of
guidance.

Config fields read: ``training.{sde, eps, batch_size, n_iters, n_jitted_steps, log_freq,
snapshot_freq, snapshot_freq_for_preemption}``, ``model.*`` (the classifier and the SDE's
parameters), ``data.*``, ``optim.*``, ``seed``, and ``eval.{batch_size, classifier_times}``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import builders
import datasets
import losses
import sde_lib
from infra import checkpoints
from infra import outputs
from infra import run_config
from infra.devices import Devices
from models import utils as mutils
from modes import Options
from modes.training_loop import Metrics, TrainingLoop

Config = ml_collections.ConfigDict
Params = Any
REPORT = "classifier_eval.json"


def accuracy_at_times(sde: sde_lib.SDE, model: Any, params: Params, rng: jax.Array,
                      images: jax.Array, labels: jax.Array, times: Sequence[float]) -> np.ndarray:
  """Accuracy ``[len(times)]`` on ``images: [B, ...]`` (model space) perturbed to each time."""
  fn = jax.jit(lambda key, t: losses.classifier_cross_entropy(
      model, params, sde, losses.perturb(sde, key, images, t), t, labels)[1].mean())
  keys = jax.random.split(rng, len(times))
  return np.array([float(fn(key, jnp.full((images.shape[0],), t, jnp.float32)))
                   for key, t in zip(keys, times)])


def _test_batch(config: Config, n: int) -> Tuple[np.ndarray, np.ndarray]:
  """The first ``n`` test examples (data space) and their labels."""
  batch = datasets.get_dataset(config, split="test", batch_size=n, train=False,
                               prefetch=0).batch(0)
  keep = batch["mask"] > 0
  return batch["image"][keep], batch["label"][keep]


class ClassifierTraining(TrainingLoop):
  """Training of the noise-conditional classifier of ``config`` (module docstring)."""

  log_file = "classifier_train.log"
  snapshots_to_keep = 2

  def __init__(self, config: Config, devices: Optional[Devices] = None):
    super().__init__(config, devices)
    training = config.training
    self.sde = builders.build_sde(config)
    self._train_data = datasets.get_dataset(
        config, split="train", batch_size=training.batch_size, train=True,
        shuffle_seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())
    self.model, optimizer, self.state = builders.init_state(config, self.devices)
    self.num_classes = mutils.num_classes(self.model)
    self.scaler, _ = datasets.data_scalers(config)
    self._steps = builders.build_classifier_train_steps(config, self.sde, self.model, optimizer,
                                                        self.state, self.devices)

  def batches(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    return iter(self._train_data.starting_at(start_step))

  def train_steps(self, state: losses.TrainState, batches) -> Tuple[losses.TrainState, Metrics]:
    return self._steps(state, batches)

  def describe_metrics(self, metrics: Dict[str, float]) -> str:
    return (f"loss {metrics['loss']:.4f}, accuracy on noisy training data "
            f"{metrics['accuracy']:.3f}")

  def finish(self, workdir: str) -> Dict[str, Any]:
    """The test accuracy of the EMA parameters at ``eval.classifier_times``, written to
    ``classifier_eval.json``."""
    config = self.config
    images, labels = _test_batch(config, config.eval.batch_size)
    times = list(config.eval.classifier_times)
    accuracy = accuracy_at_times(self.sde, self.model, self.state.ema_params,
                                 jax.random.PRNGKey(config.seed),
                                 jnp.asarray(self.scaler(images)), jnp.asarray(labels), times)
    report = {"step": int(self.state.step), "times": times, "test_accuracy": accuracy.tolist(),
              "num_test_examples": int(labels.shape[0])}
    logging.info("test accuracy (EMA) at t = %s: %s", times, np.round(accuracy, 3).tolist())
    if jax.process_index() == 0:
      outputs.save_json(os.path.join(workdir, REPORT), report)
    return report


def train(config: Config, workdir: str, allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (or resumes) the classifier of ``config`` in ``workdir``; returns the final report
  ``{'step', 'times', 'test_accuracy', 'num_test_examples'}`` (also ``classifier_eval.json``).

  The config is recorded in ``workdir`` at the first start; a resume, and every later
  :func:`load_classifier`, must match it (``allow_config_change`` accepts a deliberate change
  and records the new config).
  """
  return ClassifierTraining(config).run(workdir, allow_config_change)


def load_classifier(config: Config, workdir: str, allow_config_change: bool = False
                    ) -> Tuple[Any, Params]:
  """``(model, ema_params)`` of the newest classifier checkpoint in ``workdir``.

  Raises:
    ValueError: if ``workdir`` holds no classifier checkpoint, or (``run_config.check``) its
      recorded config differs from ``config`` in a field that defines the trained classifier
      and ``allow_config_change`` is False.
  """
  run_config.check(workdir, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model, params = builders.init_model(init_rng, config)
  target = losses.init_train_state(state_rng, params, builders.build_optimizer(config))
  with checkpoints.CheckpointStore(os.path.join(workdir, checkpoints.SNAPSHOTS),
                                   writer=False) as store:
    state = checkpoints.restore_latest([store], target)
  if state is None:
    raise ValueError(f"No classifier checkpoint in {workdir}/{checkpoints.SNAPSHOTS}; train one "
                     f"with python main.py --config CONFIG --mode train_classifier --workdir "
                     f"{workdir}.")
  return model, state.ema_params


def run(config: Config, workdir: str, options: Options) -> Dict[str, Any]:
  """``--mode train_classifier``."""
  return train(config, workdir, allow_config_change=options.allow_config_change)
