"""Training noise-conditional classifiers for classifier guidance.

``python -m classifier_training --config CONFIG --workdir W`` trains the classifier of
``config.model`` (``models.classifier``) on the labelled data of ``config.data`` perturbed by the
SDE of ``config.training.sde`` (built by ``builders.build_sde``, exactly as for the score model
the classifier is to guide): each example gets ``t ~ U(training.eps, T)`` and ``x(t) = a(t) x +
std(t) z``, and the classifier, given ``sde.noise_label(t)``, is trained by cross-entropy on its
label. Checkpoints (``losses.TrainState``; guidance uses ``ema_params``) go to
``W/checkpoints/<step>``; the final test accuracy at a few times to ``W/classifier_eval.json``.
:func:`load_classifier` gives ``(model, params)`` back, and ``models.classifier.get_log_prob_fn``
the ``log_prob_fn(x, t)`` of guidance.

Config fields read: ``training.{sde, eps, batch_size, n_iters, log_freq, snapshot_freq}``,
``model.*`` (the classifier and the SDE's parameters), ``data.*``, ``optim.*``, ``seed``, and
``eval.classifier_times`` (times of the accuracy report).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import builders
import datasets
import losses
import sde_lib
from infra import checkpoints
from infra import logs
from infra import run_config
from sde_lib import batch_mul

Array = jax.Array
Params = Any
ClassifierLossFn = Callable[[Params, Array, Array, Array], Tuple[Array, Array]]
"""``loss_fn(params, rng, images: [B, ...], labels: [B]) -> (loss, accuracy)``, scalars."""


def perturb(sde: sde_lib.SDE, rng: Array, x: Array, t: Array) -> Array:
  """``x(t) = a(t) x + std(t) z``, ``z ~ N(0, I)``: ``x: [B, ...]`` perturbed to ``t: [B]``."""
  mean, std = sde.marginal_prob(x, t)
  return mean + batch_mul(std, jax.random.normal(rng, x.shape, x.dtype))


def classifier_cross_entropy(model: Any, params: Params, sde: sde_lib.SDE, x_t: Array, t: Array,
                             labels: Array) -> Tuple[Array, Array]:
  """Cross-entropy ``[B]`` and correctness ``[B]`` (1.0 / 0.0) of the classifier on ``x_t: [B,
  ...]`` at times ``t: [B]`` against ``labels: [B]``."""
  logits = model.apply({"params": params}, x_t, sde.noise_label(t), train=False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return nll, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def get_classifier_loss_fn(sde: sde_lib.SDE, model: Any, eps: float = 1e-5) -> ClassifierLossFn:
  """The training objective: mean cross-entropy on data perturbed to ``t ~ U(eps, T)``."""

  def loss_fn(params: Params, rng: Array, images: Array,
              labels: Array) -> Tuple[Array, Array]:
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (images.shape[0],), minval=eps, maxval=sde.T)
    nll, correct = classifier_cross_entropy(model, params, sde, perturb(sde, z_rng, images, t), t,
                                            labels)
    return jnp.mean(nll), jnp.mean(correct)

  return loss_fn


def get_train_step(loss_fn: ClassifierLossFn, optimizer: optax.GradientTransformation,
                   ema_rate: float) -> Callable[..., Tuple[losses.TrainState, Array, Array]]:
  """A pure ``step(state, images, labels) -> (state, loss, accuracy)``: a gradient step of
  ``loss_fn`` and the EMA update ``ema <- ema_rate ema + (1 - ema_rate) params``."""

  def step(state: losses.TrainState, images: Array,
           labels: Array) -> Tuple[losses.TrainState, Array, Array]:
    rng, step_rng = jax.random.split(state.rng)
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_rng,
                                                                         images, labels)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, rng=rng), loss, accuracy

  return step


def accuracy_at_times(sde: sde_lib.SDE, model: Any, params: Params, rng: Array, images: Array,
                      labels: Array, times: Sequence[float]) -> np.ndarray:
  """Accuracy ``[len(times)]`` on ``images: [B, ...]`` (model space) perturbed to each time."""
  fn = jax.jit(lambda key, t: classifier_cross_entropy(
      model, params, sde, perturb(sde, key, images, t), t, labels)[1].mean())
  keys = jax.random.split(rng, len(times))
  return np.array([float(fn(key, jnp.full((images.shape[0],), t, jnp.float32)))
                   for key, t in zip(keys, times)])


def _state_target(config: Any) -> Tuple[Any, optax.GradientTransformation, losses.TrainState]:
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model, params = builders.init_model(init_rng, config)
  optimizer = builders.build_optimizer(config)
  return model, optimizer, losses.init_train_state(state_rng, params, optimizer)


def load_classifier(config: Any, workdir: str, allow_config_change: bool = False
                    ) -> Tuple[Any, Params]:
  """``(model, ema_params)`` of the newest classifier checkpoint in ``workdir``.

  Raises:
    ValueError: if ``workdir`` holds no classifier checkpoint, or (``run_config.check``) its
      recorded config differs from ``config`` in a field that defines the trained classifier
      and ``allow_config_change`` is False.
  """
  run_config.check(workdir, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
  model, _, target = _state_target(config)
  with checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), writer=False) as store:
    state = checkpoints.restore_latest([store], target)
  if state is None:
    raise ValueError(f"No classifier checkpoint in {workdir}/checkpoints; train one with "
                     f"python -m classifier_training --config CONFIG --workdir {workdir}.")
  return model, state.ema_params


def _test_batch(config: Any, n: int) -> Tuple[np.ndarray, np.ndarray]:
  """The first ``n`` test examples (data space) and their labels."""
  batch = datasets.get_dataset(config, split="test", batch_size=n, train=False,
                               prefetch=0).batch(0)
  keep = batch["mask"] > 0
  return batch["image"][keep], batch["label"][keep]


def train(config: Any, workdir: str, allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (or resumes) the classifier of ``config`` in ``workdir``; returns the final report
  ``{'step', 'times', 'test_accuracy'}`` (also written to ``classifier_eval.json``).

  The config is recorded in ``workdir`` (``run_config``) at the first start; a resume, and every
  later :func:`load_classifier`, must match it (``allow_config_change`` accepts a deliberate
  change and records the new config).
  """
  training = config.training
  run_config.check(workdir, config, run_config.MAY_CHANGE_ON_RESUME, allow_config_change)
  sde = builders.build_sde(config)
  model, optimizer, state = _state_target(config)
  scaler, _ = builders.data_scalers(config)
  os.makedirs(workdir, exist_ok=True)
  if allow_config_change or run_config.load(workdir) is None:
    run_config.save(workdir, config)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  with store, logs.to_file(os.path.join(workdir, "classifier_train.log")):
    state = checkpoints.restore_latest([store], state) or state
    start = int(state.step)
    step_fn = jax.jit(get_train_step(get_classifier_loss_fn(sde, model, training.eps), optimizer,
                                     config.model.ema_rate), donate_argnums=0)
    batches = datasets.get_dataset(config, split="train", batch_size=training.batch_size,
                                   train=True, shuffle_seed=config.seed, start_batch=start)
    logging.info("Training classifier %s (%d parameters) on noisy %s (%s) from step %d to %d.",
                 config.model.name, sum(np.size(p) for p in jax.tree_util.tree_leaves(
                     state.params)), config.data.dataset, training.sde, start, training.n_iters)
    iterator = iter(batches)
    for step in range(start + 1, training.n_iters + 1):
      batch = next(iterator)
      state, loss, accuracy = step_fn(state, jnp.asarray(scaler(batch["image"])),
                                      jnp.asarray(batch["label"]))
      if step % training.log_freq == 0 or step == training.n_iters:
        logging.info("step %d: loss %.4f, accuracy on noisy training data %.3f", step,
                     float(loss), float(accuracy))
      if step % training.snapshot_freq == 0 or step == training.n_iters:
        store.save(step, state)
    images, labels = _test_batch(config, config.eval.batch_size)
    times = list(config.eval.classifier_times)
    accuracy = accuracy_at_times(sde, model, state.ema_params, jax.random.PRNGKey(config.seed),
                                 jnp.asarray(scaler(images)), jnp.asarray(labels), times)
    report = {"step": int(state.step), "times": times, "test_accuracy": accuracy.tolist(),
              "num_test_examples": int(labels.shape[0])}
    logging.info("test accuracy (EMA) at t = %s: %s", times, np.round(accuracy, 3).tolist())
  with open(os.path.join(workdir, "classifier_eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
  logs.configure_console()
  try:
    train(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.allow_config_change)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Classifier config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for the classifier's checkpoints and logs.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Resume although fields that define the classifier differ from the workdir's "
                    "recorded config.json; the new config is recorded.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
