"""Training and evaluation: the loops, over objects that ``builders`` makes from the config.

Workdir layout (``train``)::

  workdir/checkpoints/        snapshots, one every ``snapshot_freq`` steps, all kept
  workdir/checkpoints-meta/   preemption checkpoint, every ``snapshot_freq_for_preemption`` steps
  workdir/samples/iter_<step>/sample.png, sample.npz   snapshot samples (EMA parameters)
  workdir/tensorboard/        TensorBoard event files (train/eval loss)
  workdir/config.json         the config of the first start (resumes are checked against it)
  workdir/train.log           the training log (process 0)

``sample`` writes ``workdir/<folder>/step_<step>_<sampler>/``: samples from one checkpoint.

``evaluate`` writes ``workdir/<eval_folder>/``: per-checkpoint bits/dim results saved batch by
batch (a preempted evaluation resumes), samples as ``.npz`` and PNG grids, and ``summary.json``.
Checkpoint index ``k`` (``eval.begin_ckpt``/``eval.end_ckpt``) means train step
``k * snapshot_freq``, as the authors numbered their checkpoints.

Devices: one mesh over all devices of all processes (:mod:`devices`); every process runs this
same code on its own slice of each global batch.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import builders
import classifier_training
import controllable_generation
import datasets
import evaluation
import figures
import losses
import released_checkpoints
from datasets import batching
from datasets import toy_data
from evaluation import eval_cache
from infra import checkpoints
from infra import logs
from infra import outputs
from infra import run_config
from infra.devices import Devices, gather
from models import utils as mutils

Config = ml_collections.ConfigDict
Array = jax.Array


# ----------------------------------------------------------------------------- train


def _crossed(step: int, n: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(step - n, step]``."""
  return freq > 0 and step // freq > (step - n) // freq


def model_batch(batch: Dict[str, np.ndarray], scaler, num_classes: int = 0) -> Any:
  """A data batch as the loss takes it (``losses.Batch``): the scaled float32 images, with their
  labels (``{'image', 'label'}``) for a class-conditional network of ``num_classes`` classes.
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


def stack_batches(iterator: Iterator[Dict[str, np.ndarray]], n: int, scaler,
                  num_classes: int = 0) -> Any:
  """The next ``n`` batches of ``iterator`` as :func:`model_batch` gives them, stacked: leaves
  ``[n, B, ...]``."""
  parts = [model_batch(next(iterator), scaler, num_classes) for _ in range(n)]
  return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *parts)


class _StopSignals:
  """SIGTERM and SIGINT during training: the first asks the loop to stop at the end of the
  current step (it then saves a preemption checkpoint); a second one exits at once.

  Cloud schedulers send SIGTERM shortly before they preempt a machine; Ctrl-C sends SIGINT.
  Handlers can only be installed from the main thread; elsewhere (a training thread) this does
  nothing. In a multi-process run the processes agree at the next logging step
  (``training.log_freq``): all stop there once any has been signalled.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[str] = None
    self._previous: Dict[int, Any] = {}

  def __enter__(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      os.write(2, f"error: second {name}: exiting now, without saving.\n".encode())
      os._exit(128 + signum)
    self.received = name
    logging.warning("%s received: stopping after this step and saving a checkpoint "
                    "(send it again to exit at once).", name)

  def requested(self, agree_now: bool) -> bool:
    """Whether this process has been signalled; multi-process: whether any has, asked only when
    ``agree_now`` (every process passes the same value), since agreeing waits for the step in
    flight on every process and would stall the pipeline if done at every step."""
    if jax.process_count() == 1:
      return self.received is not None
    if not agree_now:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if self.received is None and np.any(flags):
      self.received = "a peer's stop signal"
    return bool(np.any(flags))


def train(config: Config, workdir: str, allow_config_change: bool = False) -> None:
  """Trains from scratch or resumes exactly from the newest checkpoint in ``workdir``.

  Everything the config names is built before the workdir is touched, so a bad value fails
  without leaving anything behind. The config is recorded in the workdir at the first start and
  a resume must match it (:mod:`run_config`; ``allow_config_change`` accepts a deliberate
  change). No checkpoint holds non-finite values: a diverged run stops with a
  ``FloatingPointError`` instead of saving. SIGTERM or SIGINT stops after the current step with a
  preemption checkpoint (see :class:`_StopSignals`).
  """
  devices = Devices()
  training = config.training
  devices.check_batch(training.batch_size, "training.batch_size")
  if training.n_jitted_steps < 1:
    raise ValueError("training.n_jitted_steps must be >= 1; set --config.training.n_jitted_steps.")
  sde = builders.build_sde(config)
  # The data before the network: a missing data set is reported without waiting for the model.
  stream = dict(batch_size=training.batch_size, train=True, process_index=jax.process_index(),
                process_count=jax.process_count())
  train_data = datasets.get_dataset(config, split="train", shuffle_seed=config.seed, **stream)
  eval_data = datasets.get_dataset(config, split="test", shuffle_seed=config.seed + 1, **stream)
  model, optimizer, state = builders.init_state(config, devices)
  num_classes = mutils.num_classes(model)
  scaler, inverse_scaler = builders.data_scalers(config)
  if num_classes:
    model_batch(train_data.batch(0), scaler, num_classes)  # labels checked before any write
  train_steps = builders.build_train_steps(config, sde, model, optimizer, state, devices)
  eval_step = builders.build_eval_step(config, sde, model, optimizer, state, devices)
  # Built even when unused so that a bad sampler name fails now, not at the first snapshot.
  sampler = builders.build_sampler(config, sde, model, devices,
                                   devices.round_batch(min(training.batch_size, 64)))

  snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  preemption = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints-meta"), max_to_keep=1)
  resuming = bool(snapshots.all_steps() or preemption.all_steps())
  if resuming:
    run_config.check(workdir, config, run_config.MAY_CHANGE_ON_RESUME, allow_config_change)
  outputs.check_writable(workdir)
  with logs.to_file(os.path.join(workdir, "train.log"), enabled=jax.process_index() == 0):
    restored = checkpoints.restore_latest([preemption, snapshots], state)
    if restored is not None:
      state = restored
    initial_step = int(jax.device_get(state.step))
    if jax.process_index() == 0 and (restored is None or allow_config_change
                                     or run_config.load(workdir) is None):
      run_config.save(workdir, config)
    logging.info("%s %s (%s parameters, %s) to step %d, batch %d, on %d %s device(s).",
                 f"Resuming from step {initial_step}: training" if initial_step else "Training",
                 config.model.name, f"{_parameter_count(state.params):,}", config.training.sde,
                 training.n_iters, training.batch_size, jax.device_count(),
                 jax.devices()[0].platform)
    train_iter = iter(train_data.starting_at(initial_step))
    eval_iter = iter(eval_data.starting_at(initial_step // max(training.eval_freq, 1)))
    summary = outputs.Summary(os.path.join(workdir, "tensorboard"))
    progress = logs.Progress("train", training.n_iters, initial_step,
                             enabled=jax.process_index() == 0)
    step = last_saved = initial_step

    def save(store: checkpoints.CheckpointStore) -> None:
      nonlocal last_saved
      try:
        store.save(step, state)
      except checkpoints.NonFiniteStateError as e:
        resume = (f"rerunning resumes from step {last_saved}" if last_saved
                  else "no checkpoint was saved, so rerunning starts afresh")
        raise FloatingPointError(
            f"Training diverged by step {step}: {e}. Lower optim.lr or check the data "
            f"scaling; {resume}.") from e
      last_saved = step

    try:
      with _StopSignals() as signals:
        while step < training.n_iters:
          n = min(training.n_jitted_steps, training.n_iters - step)
          batch = devices.put_batch(stack_batches(train_iter, n, scaler, num_classes),
                                    stacked=True)
          state, loss_values = train_steps(state, batch)
          step += n
          if _crossed(step, n, training.log_freq):
            loss = float(jnp.mean(loss_values))
            if not np.isfinite(loss):
              raise FloatingPointError(
                  f"Training loss is {loss} at step {step}; no checkpoint was written for this "
                  "step. Lower optim.lr or check the data scaling.")
            progress.update(n, loss=f"{loss:.4g}")
            progress.report("step %d: training loss %.4g", step, loss)
            summary.scalar("train/loss", loss, step)
          else:
            progress.update(n)
          if _crossed(step, n, training.eval_freq):
            eval_batch = devices.put_batch(model_batch(next(eval_iter), scaler, num_classes))
            _, eval_loss = eval_step(state, eval_batch)
            summary.scalar("eval/loss", float(eval_loss), step)
          # Multi-process runs agree at logging steps, where the loss is fetched anyway.
          stop = signals.requested(agree_now=_crossed(step, n, training.log_freq))
          # The kept snapshot first: a crash between the two saves must not skip a snapshot.
          if _crossed(step, n, training.snapshot_freq) or step == training.n_iters:
            save(snapshots)
            if training.snapshot_sampling:
              _snapshot_samples(config, sampler, state, step, inverse_scaler, workdir)
          if (_crossed(step, n, training.snapshot_freq_for_preemption)
              or step == training.n_iters or stop):
            save(preemption)
          if stop and step < training.n_iters:
            logging.warning(
                "Stopped by %s at step %d; the checkpoint is in %s. Run the same command to "
                "resume.", signals.received, step, preemption.step_dir(step))
            break
      if step >= training.n_iters:
        logging.info("Trained to step %d in %s; checkpoints in %s.", step, progress.elapsed(),
                     os.path.join(workdir, "checkpoints"))
    finally:
      progress.close()
      summary.close()
      snapshots.close()
      preemption.close()


def _snapshot_samples(config: Config, sampler, state: losses.TrainState, step: int,
                      inverse_scaler, workdir: str) -> None:
  """Samples with the EMA parameters into ``samples/iter_<step>/`` (skipped if non-finite)."""
  samples, _ = sampler(jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                       state.ema_params)
  samples = np.asarray(inverse_scaler(gather(samples)))
  if not np.all(np.isfinite(samples)):
    # Training goes on (its checkpoint is saved); only the snapshot's picture is lost.
    logging.warning("Snapshot samples at step %d are non-finite (sampling.method=%s: the "
                    "network diverged, or the ODE solver hit its step cap); not saved.",
                    step, config.sampling.method)
  elif jax.process_index() == 0:
    outputs.save_samples(samples, os.path.join(workdir, "samples", f"iter_{step}"))


def _parameter_count(params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


# ----------------------------------------------------------------------------- evaluate


# config.eval fields that pick which checkpoints and pieces run, or how many pieces a summary
# aggregates, without changing any piece; eval.batch_size and eval.bpd_dataset are recorded on
# their own (the batch size used, the split and its size). Every other eval field is taken to
# change bits/dim, so a new likelihood option invalidates saved pieces until it is listed here.
_EVAL_SELECTION_FIELDS = frozenset({
    "begin_ckpt", "end_ckpt", "enable_loss", "enable_bpd", "enable_sampling", "num_samples",
    "bpd_num_repeats", "bpd_num_examples", "batch_size", "bpd_dataset"})


def evaluate(config: Config, workdir: str, eval_folder: str = "eval",
             allow_config_change: bool = False, checkpoint: Optional[str] = None) -> Dict:
  """Evaluates every snapshot in ``[eval.begin_ckpt, eval.end_ckpt]``; returns the summary.

  With ``checkpoint``, the path of one of the authors' released files (:mod:`released_checkpoints`:
  Flax ``checkpoint_<k>`` or PyTorch ``checkpoint_<k>.pth``), that file alone is evaluated, its
  EMA parameters under its step, into ``<workdir>/<eval_folder>``; the workdir needs no
  checkpoints and no ``config.json`` (the file is checked against the config's network instead).

  The summary (also ``<eval_folder>/summary.json``) maps each step to its results and the
  ``"settings"`` they were computed with. Bits/dim and samples are saved piece by piece under
  ``<eval_folder>/step_<step>/`` with the settings that produced each piece (:mod:`eval_cache`):
  a re-run with the same settings reuses them, one with other settings (batch size, sampler,
  tolerances, a retrained checkpoint, ...) recomputes them. A snapshot holding non-finite values
  is skipped with a warning and gets no summary entry.

  The config must match the one the workdir was trained with in every field that defines the
  trained model (:data:`run_config.MAY_CHANGE_IN_EVAL` lists those that may differ);
  ``allow_config_change`` accepts a deliberate difference.

  Raises:
    ValueError: a bad eval or sampling setting, found before any checkpoint is evaluated, or a
      config change (:class:`run_config.ConfigChangedError`).
    FileNotFoundError: no checkpoint in the range.
  """
  if checkpoint is None:
    run_config.check(workdir, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
  elif not os.path.isfile(str(checkpoint)):
    raise FileNotFoundError(f"--checkpoint {checkpoint!r}: --mode eval takes one of the authors' "
                            "released files (checkpoint_<k> or checkpoint_<k>.pth); it evaluates "
                            "a workdir's own checkpoints without --checkpoint.")
  eval_dir = os.path.join(workdir, eval_folder)
  outputs.check_writable(eval_dir)
  devices = Devices()
  ev = config.eval
  devices.check_batch(ev.batch_size, "eval.batch_size")
  _check_eval_counts(config)
  sde = builders.build_sde(config)
  bpd_examples = datasets.num_examples(config, ev.bpd_dataset) if ev.enable_bpd else 0
  model, _, template = builders.init_state(config, devices)
  # Built once, up front: a bad hutchinson_type, split or sampling.method fails before the long
  # passes, and new parameters reuse the compiled programs.
  bpd_fn = builders.build_bpd_fn(config, sde, model, devices) if ev.enable_bpd else None
  batch_losses = _build_eval_losses(config, sde, model) if ev.enable_loss else None
  sampler, sample_batch, scorer = None, 0, None
  if ev.enable_sampling:
    sample_batch = devices.round_batch(min(ev.batch_size, ev.num_samples))
    sampler = builders.build_sampler(config, sde, model, devices, sample_batch)
    scorer, why_not = builders.build_sample_scorer(config, devices)
    if why_not:
      logging.warning("%s", why_not)

  if checkpoint is not None:
    released = _load_released(config, str(checkpoint), model, template)
    snapshots = None
    steps = [released.step]
    logging.info("Evaluating the authors' step-%d checkpoint %s (%s) into %s.", released.step,
                 checkpoint, released.format, eval_dir)
  else:
    snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                            max_to_keep=None, writer=False)
    steps = _snapshot_steps(config, workdir, snapshots)
    logging.info("Evaluating %d checkpoint(s) in %s (steps %s) into %s.", len(steps),
                 os.path.join(workdir, "checkpoints"), ", ".join(map(str, steps)), eval_dir)

  summary_path = os.path.join(eval_dir, "summary.json")
  summary = outputs.load_json(summary_path) if os.path.exists(summary_path) else {}
  try:
    for step in steps:
      state = (template.replace(ema_params=released.params) if snapshots is None else
               snapshots.restore(step, template))
      bad = checkpoints.non_finite_leaves(state)
      if bad:
        more = f" and {len(bad) - 1} more leaves" if len(bad) > 1 else ""
        logging.warning("Skipping the checkpoint at step %d: it holds non-finite values (%s%s).",
                        step, bad[0], more)
        # An entry left from an earlier evaluation would describe another checkpoint.
        if summary.pop(str(step), None) is not None and jax.process_index() == 0:
          outputs.save_json(summary_path, summary)
        continue
      cache = eval_cache.EvalCache(os.path.join(eval_dir, f"step_{step}"))
      shared = _network_settings(config, step, eval_cache.tree_digest(state.ema_params))
      settings = dict(shared)
      result: Dict[str, Any] = {"step": step}
      if ev.enable_loss:
        result["loss"] = _eval_loss(config, batch_losses, state.ema_params, devices,
                                    mutils.num_classes(model))
        settings.update(_loss_settings(config))
      if ev.enable_bpd:
        bpd_settings = {**shared, **_bpd_settings(config, bpd_examples)}
        result.update(_eval_bpd(config, bpd_fn, bpd_examples, state.ema_params, devices, cache,
                                bpd_settings, step))
        settings.update({**bpd_settings, "eval.bpd_num_repeats": ev.bpd_num_repeats,
                         "eval.bpd_num_examples": _bpd_limit(config)})
      if ev.enable_sampling:
        sample_settings = {**shared, **_sample_settings(config, sample_batch)}
        result.update(_eval_samples(config, sde, sampler, sample_batch, state.ema_params, cache,
                                    sample_settings, step, scorer))
        settings.update({**sample_settings, "eval.num_samples": ev.num_samples,
                         **(scorer.settings if scorer else {})})
      logging.info("step %d: %s", step, describe_result(result))
      result["settings"] = eval_cache.canonical(settings)
      summary[str(step)] = result
      if jax.process_index() == 0:
        outputs.save_json(summary_path, summary)
  finally:
    if snapshots is not None:
      snapshots.close()
  return summary


def _snapshot_steps(config: Config, workdir: str,
                    snapshots: checkpoints.CheckpointStore) -> List[int]:
  """The steps of the snapshots with index in ``[eval.begin_ckpt, eval.end_ckpt]``."""
  ev, freq = config.eval, config.training.snapshot_freq
  steps = [s for s in snapshots.all_steps()
           if ev.begin_ckpt <= checkpoint_index(s, freq) <= ev.end_ckpt]
  if not steps:
    snapshots.close()
    raise FileNotFoundError(
        f"No checkpoint with index in [{ev.begin_ckpt}, {ev.end_ckpt}] (steps "
        f"{max(ev.begin_ckpt - 1, 0) * freq + 1}..{ev.end_ckpt * freq}) under "
        f"{workdir}/checkpoints; available steps: {snapshots.all_steps() or 'none'}. Train "
        "first or set --config.eval.begin_ckpt/end_ckpt.")
  return steps


def fid_stats(config: Config, workdir: str) -> str:
  """Computes the FID reference statistics of the config's training split; returns their path.

  Every training image once, in stored order, without augmentation or dequantization, through
  the Inception network ``eval.inception_weights`` configures: the features' mean and
  covariance and the ``pool_3`` activations KID needs, written to ``builders.fid_stats_path``
  (``eval.fid_stats``, else the cache) with the settings they depend on in a ``.json`` beside
  them, which evaluation checks. Features are cached per batch under ``<workdir>/fid_stats``,
  so an interrupted run resumes.

  Raises:
    ValueError: in one line, when no Inception weights are configured or the data are vectors.
  """
  if builders.is_vector_data(config):
    raise ValueError("--mode fid_stats: FID statistics are for images; this config's data are "
                     f"vectors (data.dim = {config.data.dim}).")
  devices = Devices()
  feature_fn, inception_settings = builders.build_inception_features(config, devices)
  path = builders.fid_stats_path(config)
  outputs.check_writable(os.path.dirname(os.path.abspath(path)))
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.data.random_flip, plain.data.uniform_dequantization = False, False
  batch_size = devices.round_batch(int(config.eval.batch_size))
  batches = _eval_batches(plain, "train", batch_size)
  settings = builders.reference_settings_of(config, inception_settings)
  logging.info("FID reference statistics of %s's training split (%d examples, batches of %d) "
               "into %s.", config.data.dataset, datasets.num_examples(plain, "train"), batch_size,
               path)
  start = time.monotonic()
  stats = evaluation.reference_statistics(
      feature_fn, batches, cache=eval_cache.EvalCache(os.path.join(workdir, "fid_stats")),
      settings={**settings, "eval.batch_size": batch_size}, name="train")
  if jax.process_index() == 0:
    evaluation.save_statistics(path, {k: stats[k] for k in ("mu", "sigma", "pool_3")})
    outputs.save_json(os.path.splitext(path)[0] + ".json", settings)
  logging.info("%d images in %.0f s: %s", len(stats["pool_3"]), time.monotonic() - start, path)
  return path


def checkpoint_index(step: int, snapshot_freq: int) -> int:
  """The index ``k`` of the snapshot at ``step`` (``eval.begin_ckpt``/``end_ckpt`` count these):
  ``step = k * snapshot_freq`` as the authors numbered them, and a final step that is not a
  multiple (``training.n_iters`` of any value) belongs to the interval it ends, ``ceil``."""
  return -(-step // max(snapshot_freq, 1))


def describe_result(result: Dict[str, Any]) -> str:
  """One line for a person: an evaluated checkpoint's loss, bits/dim and sample statistics."""
  parts = []
  if "loss" in result:
    parts.append(f"test loss {result['loss']:.4g}")
  if "bpd" in result:
    parts.append(f"{result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim "
                 f"({result['bpd_count']} {result['bpd_dataset']} examples, "
                 f"{result['bpd_mean_nfe']:.0f} NFE)")
  if "num_samples" in result:
    samples = f"{result['num_samples']} samples ({result['sampling_nfe']:.0f} NFE)"
    if "mmd" in result:
      samples += (f", MMD to data {result['mmd']:.4f} (prior {result['prior_mmd']:.4f}), "
                  f"energy distance {result['energy_distance']:.4f} "
                  f"(prior {result['prior_energy_distance']:.4f})")
    if "fid" in result:
      samples += f", FID {result['fid']:.2f}, IS {result['inception_score']:.2f}"
      if "kid" in result:
        samples += f", KID {result['kid']:.4f}"
    if "mnist_fd" in result:
      samples += (f", MNIST classifier: FD {result['mnist_fd']:.3f}, KID "
                  f"{result['mnist_kid']:.4f}, IS {result['mnist_is']:.2f}, class KL from "
                  f"uniform {result['mnist_class_kl_from_uniform']:.3f}")
    parts.append(samples)
  return "; ".join(parts) if parts else "nothing enabled in config.eval"


class _PieceProgress:
  """Progress over the pieces (batches) an evaluation computes: a bar on a terminal, else about
  ten plain lines per pass (and none for a pass of one piece)."""

  def __init__(self, what: str, total: int):
    self._what = what
    self._progress = logs.Progress(what, total, unit="batch", enabled=jax.process_index() == 0)
    self._every = max(1, -(-total // 10)) if total > 1 else total + 1

  def update(self, status: str) -> None:
    self._progress.update(1)
    done, total = self._progress.done, self._progress.total
    if done % self._every == 0 or (done == total and total > 1):
      self._progress.report("%s: %s", self._what, status)

  def close(self) -> None:
    self._progress.close()


def _check_eval_counts(config: Config) -> None:
  """One-line ValueErrors for counts that would leave an enabled evaluation with nothing."""
  ev = config.eval
  if ev.enable_sampling and ev.num_samples < 1:
    raise ValueError(f"eval.num_samples must be >= 1 to evaluate samples, got {ev.num_samples}; "
                     "set --config.eval.num_samples=... (or set "
                     "--config.eval.enable_sampling=False).")
  if ev.enable_bpd and ev.bpd_num_repeats < 1:
    raise ValueError(f"eval.bpd_num_repeats must be >= 1 to evaluate bits/dim, got "
                     f"{ev.bpd_num_repeats}; set --config.eval.bpd_num_repeats=... (or set "
                     "--config.eval.enable_bpd=False).")
  if ev.enable_bpd and _bpd_limit(config) < 0:
    raise ValueError(f"eval.bpd_num_examples must be >= 0 (0: the whole split), got "
                     f"{_bpd_limit(config)}.")


def _bpd_limit(config: Config) -> int:
  """``eval.bpd_num_examples``: bits/dim over only the first that many examples; 0: all."""
  return int(config.eval.get("bpd_num_examples", 0) or 0)


def _section(config: Config, name: str) -> Dict[str, Any]:
  """The fields of ``config.<name>`` as ``{"<name>.<field>": value}``."""
  return run_config.flatten(config[name].to_dict(), f"{name}.")


def _network_settings(config: Config, step: int, digest: str) -> Dict[str, Any]:
  """What every result of the checkpoint at ``step`` depends on: its EMA parameters (``digest``,
  :func:`eval_cache.tree_digest`), the network and SDE they are run in, the data and the seed."""
  training = config.training
  return {"checkpoint.step": step, "checkpoint.digest": digest,
          "training.sde": training.sde, "training.continuous": training.continuous,
          # bf16 activations change every output of the network.
          "training.mixed_precision": bool(training.get("mixed_precision", False)),
          **_section(config, "model"), **_section(config, "data"), "seed": config.seed}


def _loss_settings(config: Config) -> Dict[str, Any]:
  """The fields the evaluation loss reads beyond :func:`_network_settings`."""
  training = config.training
  return {"training.reduce_mean": training.reduce_mean,
          "training.likelihood_weighting": training.likelihood_weighting,
          "training.eps": training.eps, "eval.batch_size": config.eval.batch_size}


def _bpd_settings(config: Config, num_examples: int) -> Dict[str, Any]:
  """Bits/dim settings beyond :func:`_network_settings`: the likelihood fields of ``config.eval``
  (``hutchinson_type``, ``rtol``, ``atol``, ...), the split, its size and the batch size."""
  ev = config.eval
  likelihood = {name: value for name, value in _section(config, "eval").items()
                if name.split(".")[1] not in _EVAL_SELECTION_FIELDS}
  return {**likelihood, "eval.batch_size": ev.batch_size, "eval.bpd_dataset": ev.bpd_dataset,
          "eval.bpd_dataset_size": num_examples}


def _sample_settings(config: Config, batch_size: int) -> Dict[str, Any]:
  """Sampling settings beyond :func:`_network_settings`: ``config.sampling`` and the batch size
  the sampler runs (``eval.batch_size`` capped by ``eval.num_samples``)."""
  return {**_section(config, "sampling"), "eval.sampling_batch_size": batch_size}


def _eval_batches(config: Config, split: str, batch_size: int) -> batching.Batches:
  """One pass over every example of ``split`` in stored order (this process's slices)."""
  return datasets.get_dataset(config, split=split, batch_size=batch_size, train=False,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())


def _build_eval_losses(config: Config, sde, model) -> Callable[[Any, Array, Array], Array]:
  """``batch_losses(params, rng, x) -> [B]`` per-example DSM losses, jitted once per evaluation
  so that every checkpoint reuses the compiled program."""
  loss_fn = builders.build_loss_fn(config, sde, model, train=False)
  return jax.jit(functools.partial(losses.per_example_losses, loss_fn))


def _eval_loss(config: Config, batch_losses, params, devices: Devices, num_classes: int) -> float:
  """Mean DSM loss of ``params`` (the EMA parameters) over every example of the test split, once
  each (class-conditional: given its label); ``batch_losses`` is :func:`_build_eval_losses`'."""
  scaler, _ = builders.data_scalers(config)
  rng = jax.random.PRNGKey(config.seed + 2)
  total, count = 0.0, 0.0
  for k, batch in enumerate(_eval_batches(config, "test", config.eval.batch_size)):
    x = devices.put_batch(model_batch(batch, scaler, num_classes))
    per_example = np.asarray(gather(batch_losses(params, jax.random.fold_in(rng, k), x)))
    mask = np.asarray(gather(devices.put_batch(batch["mask"])))
    total += float((per_example * mask).sum())
    count += float(mask.sum())
  return total / max(count, 1.0)


def _eval_bpd(config: Config, bpd_fn, num_examples: int, params, devices: Devices,
              cache: eval_cache.EvalCache, settings: eval_cache.Settings,
              step: int) -> Dict[str, Any]:
  """Bits/dim over every example of ``eval.bpd_dataset``, repeated, in batches of
  ``eval.batch_size``.

  ``eval.bpd_num_repeats`` passes; ``eval.bpd_num_examples > 0`` restricts each to the first that
  many examples of the split's fixed order (a quick, reproducible subset; 0 means all). Each batch
  of each pass is one piece of ``cache``, ``bpd_repeat{r}_batch{k}`` (its bits/dim per example and
  its NFE), so a preempted evaluation resumes where it stopped.

  Args:
    bpd_fn: ``builders.build_bpd_fn``'s ``bpd_fn(rng, params, images: [B, ...]) -> (bpd: [B],
      nfe)``.
    num_examples: the number of examples in the split.
    settings: what every piece depends on; each piece adds its repeat and batch index.
  """
  ev = config.eval
  limit = _bpd_limit(config)
  covered = min(num_examples, limit) if limit else num_examples
  pieces = [(repeat, k) for repeat in range(ev.bpd_num_repeats)
            for k in range(-(-covered // ev.batch_size))]

  def piece(repeat: int, k: int):
    return (f"bpd_repeat{repeat}_batch{k}",
            {**settings, "piece.repeat": repeat, "piece.batch_index": k})

  # Every process decides what to reuse before any piece is (re)written: the computation is
  # collective, so a piece one process computes, all must.
  done = {p: cache.load(*piece(*p), ("bpd", "nfe")) for p in pieces}
  base = jax.random.PRNGKey(config.seed + 3)
  batches = None
  todo = [p for p in pieces if done[p] is None]
  progress = _PieceProgress(f"step {step} bits/dim", len(todo))
  for repeat, k in todo:
    if batches is None:
      batches = _eval_batches(config, ev.bpd_dataset, ev.batch_size)
    batch = batches.batch(k)
    rng = jax.random.fold_in(jax.random.fold_in(base, repeat), k)
    images = devices.put_batch(np.asarray(batch["image"], np.float32))
    bpd, nfe = bpd_fn(rng, params, images)
    mask = np.asarray(gather(devices.put_batch(batch["mask"]))) > 0
    done[repeat, k] = {"bpd": np.asarray(gather(bpd))[mask], "nfe": np.asarray(nfe)}
    cache.save(*piece(repeat, k), **done[repeat, k])
    so_far = np.concatenate([done[p]["bpd"] for p in todo if done[p] is not None])
    progress.update(f"{so_far.mean():.4f} so far")
  progress.close()
  # The last batch may reach past eval.bpd_num_examples: only the examples before it count.
  bpd = np.concatenate([done[r, k]["bpd"][:covered - k * ev.batch_size] for r, k in pieces])
  nfe = [float(done[p]["nfe"]) for p in pieces]
  return {"bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / np.sqrt(bpd.size)),
          "bpd_count": int(bpd.size), "bpd_mean_nfe": float(np.mean(nfe)),
          "bpd_dataset": ev.bpd_dataset, "bpd_offset_bits": builders.bpd_offset_bits(config)}


def _eval_samples(config: Config, sde, sampler, batch_size: int, params,
                  cache: eval_cache.EvalCache, settings: eval_cache.Settings, step: int,
                  scorer: Optional[builders.SampleScorer] = None) -> Dict[str, Any]:
  """Draws ``eval.num_samples`` samples in batches, each one piece of ``cache``, ``samples_{k}``
  (the samples in data space, ``[batch_size, ...]``, their NFE and a picture), resumable; then
  the ``scorer``'s sample-quality numbers (:func:`_score_samples`).

  Each piece keeps its NFE, so a resumed evaluation reports the same ``sampling_nfe`` (the mean
  over batches) as an uninterrupted one.

  Args:
    sampler: ``builders.build_sampler``'s ``sample(rng, params) -> (samples: [batch_size, ...],
      nfe)``, in model space.
    settings: what every piece depends on; each piece adds its batch index.
    scorer: ``builders.build_sample_scorer``'s, or None for no FID-like numbers.
  """
  ev = config.eval
  _, inverse_scaler = builders.data_scalers(config)
  pieces = range(-(-ev.num_samples // batch_size))

  def piece(k: int):
    return f"samples_{k}", {**settings, "piece.batch_index": k}

  # As in _eval_bpd: every process decides what to reuse before any piece is rewritten.
  done: Dict[int, Optional[Dict[str, np.ndarray]]] = {
      k: cache.load(*piece(k), ("samples", "nfe")) for k in pieces}
  base = jax.random.PRNGKey(config.seed + 4)
  todo = [k for k in pieces if done[k] is None]
  progress = _PieceProgress(f"step {step} sampling", len(todo))
  for k in todo:
    samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(base, step), k), params)
    samples, nfe = np.asarray(inverse_scaler(gather(samples))), np.asarray(nfe)
    if not np.all(np.isfinite(samples)):
      raise FloatingPointError(
          f"Sampling the step-{step} checkpoint gave non-finite values (sampling.method="
          f"{config.sampling.method}: the network diverged, or the ODE solver hit its step "
          "cap); nothing was saved for this batch.")
    cache.save_samples(*piece(k), samples, nfe=nfe)
    done[k] = {"samples": samples, "nfe": nfe}
    progress.update(f"{float(nfe):.0f} NFE")
  progress.close()
  samples = np.concatenate([done[k]["samples"] for k in pieces])[:ev.num_samples]
  result: Dict[str, Any] = {"num_samples": int(len(samples)),
                            "sampling_nfe": float(np.mean([float(done[k]["nfe"]) for k in pieces]))}
  picture = os.path.join(cache.directory, "samples.png")
  # Drawn again only with new samples: an unchanged re-run rewrites nothing.
  if jax.process_index() == 0 and figures.available() and (todo or not os.path.exists(picture)):
    tag, reference = sampler_tag(config), _data_reference(config, 2000)
    title = figures.run_title(step, tag, result["sampling_nfe"])
    if reference is not None:
      figures.toy_samples_vs_data(samples, reference, picture, title=title)
    else:
      figures.sampler_comparison([(tag, samples[:64], result["sampling_nfe"])], picture,
                                 title=title)
  if builders.is_vector_data(config):
    # Two-sample statistics against fresh data, and the prior's as a reference point.
    data = toy_data.sample_toy(config.data.dataset, len(samples), seed=config.seed + 5)
    prior = np.asarray(sde.prior_sampling(jax.random.PRNGKey(config.seed + 6), samples.shape))
    result.update(evaluation.two_sample_statistics(samples, data, prior))
  if scorer is not None:
    result.update(_score_samples(scorer, samples, batch_size, cache, settings))
  return result


def _score_samples(scorer: builders.SampleScorer, samples: np.ndarray, batch_size: int,
                   cache: eval_cache.EvalCache, settings: eval_cache.Settings) -> Dict[str, Any]:
  """The scorer's numbers for ``samples: [N, H, W, C]`` in [0, 1], read at their 8-bit levels
  (what their PNGs hold and what FID is defined on; the authors truncated, this rounds).

  The features are computed in global batches of ``batch_size`` (each process feeds its slice)
  and cached per batch beside the samples (``<scorer.name>_batch<k>``), so an interrupted
  evaluation resumes and a re-run with the same samples and network reuses them.
  """
  images = np.round(np.clip(samples, 0.0, 1.0) * 255.0) / 255.0
  local = batch_size // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  batches = []
  for start in range(0, len(images), batch_size):
    padded = np.zeros((batch_size,) + images.shape[1:], np.float32)
    mask = np.zeros(batch_size, np.float32)
    chunk = images[start:start + batch_size]
    padded[:len(chunk)], mask[:len(chunk)] = chunk, 1.0
    batches.append({"image": padded[rows], "mask": mask[rows]})
  stats = evaluation.reference_statistics(scorer.feature_fn, batches, cache=cache,
                                          settings={**settings, **scorer.settings},
                                          name=scorer.name)
  metrics = scorer.metrics(stats["pool_3"], stats["logits"])
  if "fid_warning" in metrics:
    logging.warning("%s", metrics["fid_warning"])
  return metrics


# ----------------------------------------------------------------------------- sample


def sampler_tag(config: Config) -> str:
  """The sampler ``config.sampling`` names, for folder names and messages (``pc-euler_maruyama-
  none``, ``ode-tsit5``, ``ddim-eta0-20steps``, ``dpm_solver-2m-20steps``,
  ``edm_heun-churn0-18steps``)."""
  sampling = config.sampling
  method = str(sampling.method).lower()
  if method == "pc":
    return f"pc-{sampling.predictor}-{sampling.corrector}".lower()
  if method == "ode":
    return f"ode-{sampling.ode_solver}".lower()
  steps = f"{sampling.steps}steps"
  if method == "ddim":
    return f"ddim-eta{sampling.eta:g}-{steps}"
  if method == "dpm_solver":
    return f"dpm_solver-{sampling.order}{'m' if sampling.multistep else 's'}-{steps}"
  if method == "edm_heun":
    return f"edm_heun-churn{sampling.s_churn:g}-{steps}"
  return method


def _find_checkpoint(workdir: str, checkpoint: Optional[str]
                     ) -> Tuple[checkpoints.CheckpointStore, int, str]:
  """The store and step of ``checkpoint`` (None: the newest in ``workdir``; a step; or a path to
  a step directory), and the workdir that trained it; FileNotFoundError naming what exists."""
  if checkpoint and not str(checkpoint).isdigit():
    path = os.path.abspath(str(checkpoint).rstrip(os.sep))
    step_name, store_dir = os.path.basename(path), os.path.dirname(path)
    if not step_name.isdigit() or not os.path.isdir(path):
      raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a checkpoint directory "
                              "(<workdir>/checkpoints/<step>); pass one, or a step number.")
    store = checkpoints.CheckpointStore(store_dir, writer=False)
    if int(step_name) not in store.all_steps():
      store.close()
      raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a complete checkpoint; "
                              f"complete steps there: {store.all_steps() or 'none'}.")
    return store, int(step_name), os.path.dirname(store_dir)
  stores = [checkpoints.CheckpointStore(os.path.join(workdir, name), writer=False)
            for name in ("checkpoints", "checkpoints-meta")]
  available = {step: store for store in reversed(stores) for step in store.all_steps()}
  step = int(checkpoint) if checkpoint else max(available, default=None)
  chosen = available.get(step)
  for store in stores:
    if store is not chosen:
      store.close()
  if not available:
    raise FileNotFoundError(f"No checkpoint under {workdir}: train first (--mode train with the "
                            "same --config and --workdir), or pass --checkpoint=<path>.")
  if chosen is None:
    raise FileNotFoundError(f"No checkpoint of step {step} under {workdir}; available steps: "
                            f"{sorted(available)}.")
  return chosen, step, workdir


class _Parameters(NamedTuple):
  """What a sampling run samples with: the EMA parameters of a checkpoint, or the exact score's
  ``{}``; ``step`` is the checkpoint's (None for the exact score), ``name`` says which in
  messages and ``folder`` in output paths (``step_<step>`` or ``exact``)."""
  params: Any
  step: Optional[int]
  name: str
  folder: str

  @property
  def title(self) -> Union[int, str]:
    """What figure titles name (:func:`figures.run_title`'s ``step``)."""
    return "exact score" if self.step is None else self.step


def _sampling_parameters(config: Config, workdir: str, checkpoint: Optional[str],
                         allow_config_change: bool, model: Any,
                         template: losses.TrainState) -> _Parameters:
  """The parameters of ``model`` that ``--mode sample`` and ``--mode figures`` use (see
  :func:`sample`)."""
  if builders.is_exact_score(model):
    if checkpoint:
      raise ValueError("--checkpoint: model.name = 'exact_score' has no parameters and reads no "
                       "checkpoint; drop --checkpoint.")
    return _Parameters(template.ema_params, None, f"the exact score of {config.data.dataset}",
                       "exact")
  if checkpoint and os.path.isfile(str(checkpoint)):
    released = _load_released(config, str(checkpoint), model, template)
    return _Parameters(released.params, released.step,
                       f"the authors' step-{released.step} checkpoint {checkpoint} "
                       f"({released.format})", f"released_step_{released.step}")
  store, step, trained_in = _find_checkpoint(workdir, checkpoint)
  try:
    run_config.check(trained_in, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
    state = store.restore(step, template)
  finally:
    store.close()
  bad = checkpoints.non_finite_leaves(state)
  if bad:
    raise FloatingPointError(f"The checkpoint of step {step} holds non-finite values "
                             f"({bad[0]}); sample another with --checkpoint=<step>.")
  return _Parameters(state.ema_params, step, f"the step-{step} checkpoint ({store.step_dir(step)})",
                     f"step_{step}")


def _load_released(config: Config, path: str, model: Any,
                   template: losses.TrainState) -> released_checkpoints.Released:
  """The EMA parameters of one of the authors' released files (Flax ``checkpoint_<k>`` or
  PyTorch ``checkpoint_<k>.pth``) for ``model``; a file that does not fit the config is refused
  in one line (:mod:`released_checkpoints`). Non-finite values are refused like a snapshot's."""
  released = released_checkpoints.load(path, model, template.ema_params,
                                       builders.input_shape(config))
  bad = checkpoints.non_finite_leaves(released.params)
  if bad:
    raise FloatingPointError(f"{path} holds non-finite values ({bad[0]}).")
  return released


def _data_reference(config: Config, n: int) -> Optional[np.ndarray]:
  """Toys: ``n`` fresh data points to draw beside samples; None for images."""
  if not builders.is_vector_data(config):
    return None
  return toy_data.sample_toy(config.data.dataset, n, seed=config.seed + 5)


def sample(config: Config, workdir: str, *, checkpoint: Optional[str] = None,
           num_samples: int = 64, folder: str = "sampled", num_frames: int = 40,
           allow_config_change: bool = False) -> Dict[str, Any]:
  """Draws ``num_samples`` samples (EMA parameters) with the sampler ``config.sampling`` names.

  Writes ``<workdir>/<folder>/step_<step>_<sampler>/``: ``sample.{png,npz}`` (toys: the PNG
  shows the data beside the samples; ``samples_vs_data.png`` overlays them), ``sample.json``
  (NFE, timing, settings) and ``process.gif``, the reverse process of the first batch in
  ``num_frames`` frames (up to 64 images of it). Never writes into the checkpoint directories,
  so it can run while training goes on. Different samples: another ``config.seed``.

  The exact score (``model.name = 'exact_score'``) has no parameters and reads no checkpoint:
  it samples into ``<workdir>/<folder>/exact_<sampler>/`` (``sample.json`` records ``"step":
  null, "checkpoint": null``), and no ``config.json`` is consulted, since nothing was trained.

  Args:
    checkpoint: None for the newest checkpoint of ``workdir`` (snapshot or preemption), a step
      number, or the path of a step directory (``<other workdir>/checkpoints/<step>``); must be
      None for the exact score.
    num_samples: how many; drawn in batches of at most ``eval.batch_size``.
    num_frames: frames of ``process.gif`` (the sampler keeps ``num_frames x batch`` states);
      0: no animation.

  Returns:
    ``{"step", "num_samples", "nfe", "seconds", "first_batch_seconds", "path"}``.

  Raises:
    FileNotFoundError: no such checkpoint. ValueError: a bad count or sampler, a checkpoint
    given for the exact score, or a config that differs from the one the checkpoint was trained
    with (see :func:`evaluate`).
  """
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  batch_size = devices.round_batch(min(config.eval.batch_size, num_samples))
  sampler = builders.build_sampler(config, sde, model, devices, batch_size)
  animated = (builders.build_sampler(config, sde, model, devices, batch_size,
                                     num_frames=num_frames) if num_frames else None)
  chosen = _sampling_parameters(config, workdir, checkpoint, allow_config_change, model,
                                template)
  tag = sampler_tag(config)
  out_dir = os.path.join(workdir, folder, f"{chosen.folder}_{tag}")
  outputs.check_writable(out_dir)
  logging.info("Sampling %d from %s with %s, batch %d.", num_samples, chosen.name, tag,
               batch_size)
  _, inverse_scaler = builders.data_scalers(config)
  base = jax.random.PRNGKey(config.seed)
  progress = _PieceProgress("sampling", -(-num_samples // batch_size))
  batches, nfes, first_batch_seconds, trajectory = [], [], 0.0, None
  start = time.monotonic()
  for k in range(-(-num_samples // batch_size)):
    if k == 0 and animated is not None:
      # The same draw as the plain sampler's (same key); only the frames are kept besides.
      samples, nfe, trajectory = animated(jax.random.fold_in(base, k), chosen.params)
    else:
      samples, nfe = sampler(jax.random.fold_in(base, k), chosen.params)
    batches.append(np.asarray(inverse_scaler(gather(samples))))
    nfes.append(float(nfe))
    if k == 0:
      first_batch_seconds = time.monotonic() - start  # includes compiling the sampler
    progress.update(f"{nfes[-1]:.0f} NFE")
  progress.close()
  seconds = time.monotonic() - start
  samples = np.concatenate(batches)[:num_samples]
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError(f"Sampling {chosen.name} with {tag} gave non-finite values (the "
                             "network diverged, or the ODE solver hit its step cap); nothing was "
                             "saved.")
  reference = _data_reference(config, max(num_samples, 2000))
  result = {"step": chosen.step, "num_samples": int(num_samples), "nfe": float(np.mean(nfes)),
            "seconds": seconds, "first_batch_seconds": first_batch_seconds, "path": out_dir}
  if jax.process_index() == 0:
    outputs.save_samples(samples, out_dir, reference=reference, nfe=np.mean(nfes),
                         step=-1 if chosen.step is None else chosen.step)
    outputs.save_json(os.path.join(out_dir, "sample.json"),
                      {**result, "checkpoint": None if chosen.step is None else chosen.name,
                       "settings": eval_cache.canonical(_section(config, "sampling"))})
    title = figures.run_title(chosen.title, tag, result["nfe"])
    if not figures.available():
      logging.warning("matplotlib is not installed: no process.gif or samples_vs_data.png "
                      "(pip install matplotlib).")
    elif reference is not None:
      figures.toy_samples_vs_data(samples, reference, os.path.join(out_dir, "samples_vs_data.png"),
                                  title=title)
    if trajectory is not None and figures.available():
      frames = np.asarray(inverse_scaler(gather(trajectory.x)))
      frames = frames if reference is not None else frames[:, :64]  # points: all; images: 64
      figures.process_animation(frames, np.asarray(trajectory.t),
                                os.path.join(out_dir, "process.gif"), title=title,
                                reference=reference)
  timing = (f"{seconds:.1f} s, compiling included" if len(batches) == 1 else
            f"{seconds:.1f} s ({len(batches)} batches; the first, compiling included: "
            f"{first_batch_seconds:.1f} s)")
  logging.info("%d samples, %.0f network evaluations each, in %s: %s", num_samples,
               result["nfe"], timing, os.path.join(out_dir, "sample.png"))
  return result


# ----------------------------------------------------------------------------- controlled sampling

INPAINT_REGIONS = ("left_half", "right_half", "top_half", "bottom_half", "center")
"""``--inpaint`` regions: the part of each image that is sampled (the rest is kept)."""


def inpainting_mask(region: str, image_size: int) -> np.ndarray:
  """``[H, W, 1]`` float32, 1 where the pixel is known and 0 in ``region`` (to be inpainted):
  a half of the image, or ``'center'``, the central square of half the side."""
  if region not in INPAINT_REGIONS:
    raise ValueError(f"--inpaint={region!r}: choose one of {', '.join(INPAINT_REGIONS)}.")
  s, half = int(image_size), int(image_size) // 2
  known = np.ones((s, s, 1), np.float32)
  rows, cols = {"left_half": (slice(None), slice(0, half)),
                "right_half": (slice(None), slice(half, s)),
                "top_half": (slice(0, half), slice(None)),
                "bottom_half": (slice(half, s), slice(None)),
                "center": (slice(s // 4, s // 4 + half), slice(s // 4, s // 4 + half))}[region]
  known[rows, cols] = 0.0
  return known


def _controlled_task(config: Config, inpaint: Optional[str], colorize: bool,
                     class_label: Optional[Union[int, str]], classifier_config: Optional[Config],
                     classifier_workdir: Optional[str], guidance_scale: Optional[float],
                     cfg_weight: Optional[float]) -> str:
  """Which task the flags ask for (``'inpaint'``, ``'colorize'``, ``'guidance'`` -- classifier
  guidance -- or ``'cfg'`` -- classifier-free guidance of a class-conditional model); one-line
  ``ValueError`` for a combination that asks for none, several, or a task's missing input."""
  tasks = [name for name, given in (("--inpaint", inpaint is not None), ("--colorize", colorize),
                                    ("--class_label", class_label is not None)) if given]
  if len(tasks) != 1:
    raise ValueError(f"controlled sampling takes exactly one of --inpaint, --colorize and "
                     f"--class_label, got {', '.join(tasks) if tasks else 'none'}.")
  classifier_flags = [name for name, given in (
      ("--classifier_config", classifier_config is not None),
      ("--classifier_workdir", classifier_workdir),
      ("--guidance_scale", guidance_scale is not None)) if given]
  guidance_flags = classifier_flags + (["--cfg_weight"] if cfg_weight is not None else [])
  if tasks[0] != "--class_label":
    if guidance_flags:
      raise ValueError(f"{', '.join(guidance_flags)} only apply to guided sampling "
                       "(--class_label=K).")
    if inpaint is not None and inpaint not in INPAINT_REGIONS:
      raise ValueError(f"--inpaint={inpaint!r}: choose one of {', '.join(INPAINT_REGIONS)}.")
    return tasks[0][2:]
  if isinstance(class_label, str) and class_label != "all":
    raise ValueError(f"--class_label={class_label!r}: give a class index or 'all'.")
  if guidance_scale is not None and guidance_scale < 0:
    raise ValueError(f"--guidance_scale must be >= 0, got {guidance_scale}.")
  if cfg_weight is not None and cfg_weight < 0:
    raise ValueError(f"--cfg_weight must be >= 0, got {cfg_weight}.")
  if classifier_flags:
    if cfg_weight is not None:
      raise ValueError("--cfg_weight (classifier-free guidance) and the classifier flags "
                       "(classifier guidance) exclude each other; give one of them.")
    if classifier_config is None or not classifier_workdir:
      raise ValueError("classifier guidance needs the classifier: --classifier_config=CONFIG (the "
                       "config it was trained with) and --classifier_workdir=W (its workdir).")
    return "guidance"
  if not config.model.get("num_classes", 0):
    raise ValueError("--class_label needs a noise-conditional classifier (--classifier_config, "
                     "--classifier_workdir) or a class-conditional score model (trained with "
                     "--config.model.num_classes=K) for classifier-free guidance (--cfg_weight).")
  return "cfg"


def guidance_labels(class_label: Union[int, str], num_classes: int, n: int) -> np.ndarray:
  """``int32 [n]``: ``class_label`` for every sample, or with ``'all'`` the classes in turn
  (sample ``i`` of class ``i mod num_classes``); one-line ``ValueError`` for a class the model
  does not have."""
  if class_label == "all":
    return (np.arange(n) % num_classes).astype(np.int32)
  if not 0 <= int(class_label) < num_classes:
    raise ValueError(f"--class_label={class_label}: the model has classes 0...{num_classes - 1}.")
  return np.full((n,), int(class_label), np.int32)


def _process_rows(n: int) -> slice:
  """This process's rows of a global batch of ``n``."""
  local = n // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def _padded_batches(arrays: Dict[str, np.ndarray], batch_size: int
                    ) -> Iterator[Dict[str, np.ndarray]]:
  """``arrays`` (same leading size) in global batches of ``batch_size``, the last one padded
  with copies of its first row, so that every batch has the compiled shape."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    batch = {}
    for name, array in arrays.items():
      chunk = array[start:start + batch_size]
      pad = np.repeat(chunk[:1], batch_size - len(chunk), axis=0)
      batch[name] = np.concatenate([chunk, pad])
    yield batch


def _side_by_side(*images: np.ndarray) -> np.ndarray:
  """``[N, H, W, C]`` images (each ``C`` 1 or the common count) as ``[N, H, k W, C]`` panels."""
  channels = max(image.shape[-1] for image in images)
  return np.concatenate([np.broadcast_to(image, image.shape[:-1] + (channels,))
                         for image in images], axis=2)


def controlled_sample(config: Config, workdir: str, *, inpaint: Optional[str] = None,
                      colorize: bool = False, class_label: Optional[Union[int, str]] = None,
                      classifier_config: Optional[Config] = None,
                      classifier_workdir: Optional[str] = None,
                      guidance_scale: Optional[float] = None, cfg_weight: Optional[float] = None,
                      checkpoint: Optional[str] = None, num_samples: int = 64,
                      folder: str = "sampled", allow_config_change: bool = False
                      ) -> Dict[str, Any]:
  """Inpainting, colorization or guided sampling with one checkpoint (EMA parameters).

  Exactly one task (one-line ``ValueError`` otherwise):

  * ``inpaint = region`` (:data:`INPAINT_REGIONS`): the first ``num_samples`` test images with
    ``region`` sampled by ``controllable_generation.get_pc_inpainter`` and the rest kept exactly;
    writes ``grid.png`` (per image: the masked input, the mask -- white where known -- and the
    result) and ``sample.npz`` (``data``, ``mask``, ``samples``, ``labels``; data space).
  * ``colorize``: grey versions (channel mean) of the first ``num_samples`` test images
    coloured by ``get_pc_colorizer``; the result's channel mean is the input's (up to float
    rounding). RGB (``C >= 2``) image data only. ``grid.png``: grey input, result, original;
    ``sample.npz``: ``gray``, ``samples``, ``data``, ``labels``.
  * ``class_label = K`` (or ``'all'``: sample ``i`` of class ``i mod num_classes``),
    ``num_samples`` samples of class ``K``, by either

    - classifier guidance (``classifier_config`` and ``classifier_workdir`` given): the
      model's score (of a class-conditional model: its unconditional one) plus ``guidance_scale``
      (default 1: Bayes' rule) times the gradient of the noise-conditional classifier's
      ``log p_t(K | x)`` (its EMA parameters, ``classifier_training.load_classifier``), which
      must have been trained on the score model's SDE, data scaling and image shape
      (``builders.check_classifier_config``); or
    - classifier-free guidance of a class-conditional model (``model.num_classes > 0``), weight
      ``cfg_weight`` (default 0: the conditional model as trained; ``builders.build_cfg_sampler``).

    Any ``sampling.method``. ``grid.png``: the samples; ``sample.npz``: ``samples``, ``labels``.
    For MNIST the MNIST classifier reads every sample (``builders.build_class_predictor``):
    ``requested_class_rate``, the fraction it sees as the requested digit, is in the result,
    ``sample.json`` and the console, and ``sample.npz`` has its ``predicted`` labels.

  Inpainting and colorization run the PC sampler of ``config.sampling`` (``method = 'pc'``, any
  predictor and corrector, ``sde.N`` steps). Outputs go to ``<workdir>/<folder>/<step>_<task>_
  <sampler>/`` (``<step>`` as :func:`sample`'s folders, ``<task>`` e.g. ``inpaint-left_half``,
  ``colorize``, ``class3-scale1``, ``classall-cfg2``), with ``sample.json`` (NFE per sample,
  time, settings); never into the checkpoint directories. Batches of ``eval.batch_size``, one
  compilation.

  Returns:
    ``{"step", "task", "num_samples", "nfe", "seconds", "path"}`` (and
    ``requested_class_rate`` where the classes were checked).
  """
  task = _controlled_task(config, inpaint, colorize, class_label, classifier_config,
                          classifier_workdir, guidance_scale, cfg_weight)
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  guided = task in ("guidance", "cfg")
  if not guided and builders.is_vector_data(config):
    raise ValueError(f"--{task} works on images; this config's data are vectors (data.dim = "
                     f"{config.data.dim}).")
  if not guided:
    builders.check_replacement_sampler(config, {"inpaint": "Inpainting",
                                                "colorize": "Colorization"}[task])
  channels = builders.input_shape(config)[-1]
  if task == "colorize" and channels < 2:
    raise ValueError(f"--colorize needs colour (RGB) images; this config's have {channels} "
                     "channel (data.num_channels).")
  scale = 1.0 if guidance_scale is None else float(guidance_scale)
  weight = 0.0 if cfg_weight is None else float(cfg_weight)
  if task == "guidance":
    builders.check_classifier_config(config, classifier_config)
    classes = int(classifier_config.model.num_classes)
  elif task == "cfg":
    classes = int(config.model.num_classes)
  if guided:
    labels = guidance_labels(class_label, classes, num_samples)
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  scaler, inverse_scaler = builders.data_scalers(config)
  label = {"inpaint": f"inpaint-{inpaint}", "colorize": "colorize",
           "guidance": f"class{class_label}-scale{scale:g}",
           "cfg": f"class{class_label}-cfg{weight:g}"}[task]
  if task == "guidance":
    classifier_model, classifier_params = classifier_training.load_classifier(
        classifier_config, classifier_workdir, allow_config_change)
  if guided:
    inputs = {"labels": labels}
    predict_class, unchecked = builders.build_class_predictor(config)
  else:
    test = datasets.load_split(config, "test")
    if num_samples > len(test.labels):
      logging.warning("The test split has %d images: %s the first %d, not %d.", len(test.labels),
                      "inpainting" if task == "inpaint" else "colorizing", len(test.labels),
                      num_samples)
      num_samples = len(test.labels)
    data = test.images[:num_samples].astype(np.float32) / 255.0
    inputs = {"data": data, "labels": test.labels[:num_samples].astype(np.int32)}
    if task == "inpaint":
      mask = inpainting_mask(inpaint, config.data.image_size)
      inputs["mask"] = np.broadcast_to(mask, data.shape).astype(np.float32)
    else:
      inputs["gray"] = np.asarray(controllable_generation.to_gray(data))
  batch_size = devices.round_batch(min(config.eval.batch_size, num_samples))
  if task == "inpaint":
    inpainter = builders.build_inpainter(config, sde, model, devices)
    run = lambda rng, params, b: inpainter(rng, params, devices.put_batch(scaler(b["data"])),
                                           devices.put_batch(b["mask"]))
  elif task == "colorize":
    colorizer = builders.build_colorizer(config, sde, model, devices)
    run = lambda rng, params, b: colorizer(rng, params, devices.put_batch(scaler(b["gray"])))
  elif task == "guidance":
    guided_sampler = builders.build_guided_sampler(config, sde, model, devices, batch_size,
                                                   classifier_model)
    classifier_params = devices.put(classifier_params)
    run = lambda rng, params, b: guided_sampler(rng, params, classifier_params,
                                                devices.put_batch(b["labels"]), jnp.float32(scale))
  else:
    cfg_sampler = builders.build_cfg_sampler(config, sde, model, devices, batch_size)
    run = lambda rng, params, b: cfg_sampler(rng, params, devices.put_batch(b["labels"]),
                                             jnp.float32(weight))
  chosen = _sampling_parameters(config, workdir, checkpoint, allow_config_change, model,
                                template)
  tag = sampler_tag(config)
  out_dir = os.path.join(workdir, folder, f"{chosen.folder}_{label}_{tag}")
  outputs.check_writable(out_dir)
  logging.info("%s: %d from %s with %s, batch %d.", label, num_samples, chosen.name, tag,
               batch_size)
  base = jax.random.PRNGKey(config.seed)
  rows = _process_rows(batch_size)
  num_batches = -(-num_samples // batch_size)
  progress = _PieceProgress(label, num_batches)
  results, nfes = [], []
  start = time.monotonic()
  for k, batch in enumerate(_padded_batches(inputs, batch_size)):
    x, nfe = run(jax.random.fold_in(base, k), chosen.params,
                 {name: array[rows] for name, array in batch.items()})
    results.append(np.asarray(inverse_scaler(gather(x))))
    nfes.append(float(nfe))
    progress.update(f"{nfes[-1]:.0f} NFE")
  progress.close()
  seconds = time.monotonic() - start
  samples = np.concatenate(results)[:num_samples]
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError(f"{label} from {chosen.name} with {tag} gave non-finite values; "
                             "nothing was saved.")
  result = {"step": chosen.step, "task": label, "num_samples": int(num_samples),
            "nfe": float(np.mean(nfes)), "seconds": seconds, "path": out_dir}
  picture = os.path.join(out_dir, "samples_vs_data.png" if builders.is_vector_data(config)
                         else "grid.png")
  predicted = None
  if guided and predict_class is not None:
    predicted = predict_class(samples)
    result["requested_class_rate"] = float(np.mean(predicted == inputs["labels"][:num_samples]))
    logging.info("%s: %.1f %% of the samples are of the requested class (by %s).", label,
                 100 * result["requested_class_rate"],
                 "the exact posterior" if builders.is_vector_data(config)
                 else "the MNIST classifier")
  elif guided:
    logging.info("%s: %s.", label, unchecked)
  if jax.process_index() == 0:
    if task == "inpaint":
      arrays = {"data": inputs["data"], "mask": inputs["mask"]}
      grid = _side_by_side(inputs["data"] * inputs["mask"], inputs["mask"], samples)
    elif task == "colorize":
      arrays = {"gray": inputs["gray"], "data": inputs["data"]}
      grid = _side_by_side(inputs["gray"], samples, inputs["data"])
    else:
      arrays, grid = ({} if predicted is None else {"predicted": predicted}), samples
    outputs.save_npz(os.path.join(out_dir, "sample.npz"), samples=samples,
                     labels=inputs["labels"][:num_samples], **arrays)
    if builders.is_vector_data(config):
      if figures.available():
        figures.toy_samples_vs_data(samples, _data_reference(config, max(num_samples, 2000)),
                                    picture, title=figures.run_title(chosen.title, label,
                                                                     result["nfe"]))
    elif class_label == "all":  # one class per column, as many rows as fit in 100 images
      outputs.save_image_grid(grid[:classes * max(1, 100 // classes)], picture, ncol=classes)
    else:
      outputs.save_image_grid(grid[:64], picture)
    settings = {**_section(config, "sampling"), "task": label, "eval.batch_size": batch_size}
    if task == "cfg":
      settings.update({"class_label": class_label, "cfg_weight": weight})
    elif task == "guidance":
      settings.update({"class_label": class_label, "guidance_scale": scale,
                       "classifier_workdir": os.path.abspath(classifier_workdir),
                       **run_config.flatten(classifier_config.model.to_dict(),
                                            "classifier.model.")})
    outputs.save_json(os.path.join(out_dir, "sample.json"),
                      {**result, "checkpoint": None if chosen.step is None else chosen.name,
                       "settings": eval_cache.canonical(settings)})
  logging.info("%s: %d results, %.0f network evaluations each, in %.1f s (compiling included): "
               "%s", label, num_samples, result["nfe"], seconds, picture)
  return result


# ----------------------------------------------------------------------------- figures

# The samplers compared by --mode figures: (name, config.sampling overrides).
_COMPARED_SAMPLERS = (
    ("Euler-Maruyama", dict(method="pc", predictor="euler_maruyama", corrector="none")),
    ("PC (reverse diffusion + Langevin)", dict(method="pc", predictor="reverse_diffusion",
                                               corrector="langevin")),
    ("probability-flow ODE", dict(method="ode")),
)


def _with_sampling(config: Config, **fields: Any) -> Config:
  """A copy of ``config`` with ``config.sampling`` fields replaced."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.sampling.update(fields)
  return copy


def _slerp(a: np.ndarray, b: np.ndarray, m: int) -> np.ndarray:
  """``m`` points from ``a`` to ``b`` along the great circle (latents are near-Gaussian, so their
  norm stays typical along the path). ``a, b: [...]`` -> ``[m, ...]``."""
  cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  w = np.linspace(0.0, 1.0, m)
  if omega < 1e-6:
    return np.stack([(1 - v) * a + v * b for v in w])
  return np.stack([(np.sin((1 - v) * omega) * a + np.sin(v * omega) * b) / np.sin(omega)
                   for v in w])


def _pixels(shape: Tuple[int, ...]) -> Tuple[Tuple[Tuple[int, ...], ...], Tuple[str, ...]]:
  """A few coordinates of one example to follow over time, and their names."""
  if len(shape) == 1:
    return tuple((i,) for i in range(shape[0])), tuple(f"x{i + 1}" for i in range(shape[0]))
  h, w = shape[0], shape[1]
  at = ((h // 2, w // 2), (h // 4, w // 2), (3 * h // 4, w // 2), (h // 2, w // 4))
  return tuple((r, c, 0) for r, c in at), tuple(f"pixel ({r}, {c})" for r, c in at)


def make_figures(config: Config, workdir: str, *, checkpoint: Optional[str] = None,
                 folder: str = "figures", num_frames: int = 40,
                 allow_config_change: bool = False) -> Dict[str, str]:
  """Pictures of the process for one checkpoint (or the exact score, see :func:`sample`).

  Writes ``<workdir>/<folder>/<step_<step> | exact>/``:

  * ``comparison.png``: prior noise, Euler-Maruyama, PC (reverse diffusion + Langevin) and the
    probability-flow ODE side by side, each titled with its NFE (toys: over the data);
  * ``trajectories.png``: ``x(t)`` of a few pixels (toys: both coordinates) for the
    Euler-Maruyama and the ODE sampler from the same three prior draws, with ``+-std(t)`` of the
    SDE's perturbation kernel;
  * ``process_<sampler>.gif``: the reverse process of each compared sampler, ``num_frames``
    frames;
  * ``encoder.png``: the ODE as an encoder: test examples, their latents, the decoded latents
    (the largest round-trip error in data space in the title) and a decoded spherical
    interpolation between two latents;
  * toys: ``marginals.png``, the data perturbed to ``p_t`` at several ``t``.

  The samplers take their other settings (steps, snr, tolerances) from ``config.sampling``.

  Returns:
    ``{figure name: path}``.
  """
  if not figures.available():
    raise ValueError("--mode figures draws with matplotlib, which is not installed: "
                     "pip install matplotlib.")
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  chosen = _sampling_parameters(config, workdir, checkpoint, allow_config_change, model,
                                template)
  out_dir = os.path.join(workdir, folder, chosen.folder)
  outputs.check_writable(out_dir)
  logging.info("Figures of %s into %s.", chosen.name, out_dir)
  vector = builders.is_vector_data(config)
  batch = devices.round_batch(min(config.eval.batch_size, 2000 if vector else 64))
  _, inverse_scaler = builders.data_scalers(config)
  reference = _data_reference(config, 2000)
  rng = jax.random.PRNGKey(config.seed)
  paths: Dict[str, str] = {}

  def draw(name: str, filename: str, figure: Any, *args: Any, **kwargs: Any) -> None:
    """Every process computes (the samplers are collective); the first one draws."""
    paths[name] = os.path.join(out_dir, filename)
    if jax.process_index() == 0:
      figure(*args, path=paths[name], **kwargs)

  def to_data(x) -> np.ndarray:
    return np.asarray(inverse_scaler(gather(x)))

  panels = [("prior noise", to_data(sde.prior_sampling(rng, builders.input_shape(config, batch))),
             None)]
  trajectories = {}
  for name, fields in _COMPARED_SAMPLERS:
    sampler_config = _with_sampling(config, **fields)
    sampler = builders.build_sampler(sampler_config, sde, model, devices, batch,
                                     num_frames=num_frames)
    samples, nfe, trajectory = sampler(rng, chosen.params)  # one key: the same prior draws
    panels.append((name, to_data(samples), float(nfe)))
    trajectories[name] = trajectory
    tag = sampler_tag(sampler_config)
    frames = to_data(trajectory.x)
    draw(f"process_{tag}", f"process_{tag}.gif", figures.process_animation,
         frames if vector else frames[:, :64], np.asarray(trajectory.t),
         title=figures.run_title(chosen.title, name, float(nfe)), reference=reference)
  draw("comparison", "comparison.png", figures.sampler_comparison, panels,
       title=figures.run_title(chosen.title), reference=reference)

  # The ODE from the Euler-Maruyama run's first prior draws (its frame 0).
  draws = 3
  sde_run = trajectories["Euler-Maruyama"]
  sde_frames = np.asarray(gather(sde_run.x))[:, :draws]
  encode, decode = builders.build_ode_codec(config, sde, model, devices)
  _, decode_frames = builders.build_ode_codec(config, sde, model, devices, num_frames=num_frames)
  _, _, ode_run = decode_frames(chosen.params, jnp.asarray(sde_frames[0]))
  coords, labels = _pixels(builders.input_shape(config)[1:])
  pick = lambda frames: np.stack([frames[(slice(None), slice(None)) + c] for c in coords], -1)
  sde_t = np.asarray(sde_run.t)
  draw("trajectories", "trajectories.png", figures.coordinate_trajectories,
       sde_t, pick(sde_frames), pick(np.asarray(ode_run.x)),
       np.asarray(sde.marginal_std(jnp.asarray(sde_t))),
       title=figures.run_title(chosen.title, "Euler-Maruyama and the ODE, model space"),
       ode_t=np.asarray(ode_run.t), labels=labels)

  if vector:
    x = np.asarray(toy_data.sample_toy(config.data.dataset, 8, seed=config.seed + 7), np.float32)
  else:
    x = datasets.load_split(config, "test").images[:8].astype(np.float32) / 255.0
  scaler, _ = builders.data_scalers(config)
  z, _ = encode(chosen.params, jnp.asarray(scaler(x)))
  x_rec, _ = decode(chosen.params, z)
  interpolation, _ = decode(chosen.params, jnp.asarray(_slerp(np.asarray(z[0]), np.asarray(z[1]),
                                                               8)))
  error = float(np.max(np.abs(np.asarray(inverse_scaler(x_rec)) - x)))
  logging.info("ODE round trip data -> latent -> data: largest error %.2e (data space).", error)
  draw("encoder", "encoder.png", figures.encoder_figure,
       x, np.asarray(z), np.asarray(inverse_scaler(x_rec)),
       np.asarray(inverse_scaler(interpolation)),
       title=figures.run_title(chosen.title, "probability-flow ODE encoder"), roundtrip_error=error)

  if vector:
    times = [config.sampling.eps] + [f * sde.T for f in (0.1, 0.25, 0.5, 1.0)]
    noise = np.random.default_rng(config.seed).standard_normal(reference.shape)
    at = jnp.asarray(times, jnp.float32)
    perturbed = [a * reference + std * noise for a, std in
                 zip(np.asarray(sde.mean_coeff(at)), np.asarray(sde.marginal_std(at)))]
    draw("marginals", "marginals.png", figures.toy_marginals, times, perturbed,
         title=f"{config.data.dataset} perturbed by the {config.training.sde} SDE")
  for name, path in sorted(paths.items()):
    logging.info("%s: %s", name, path)
  return paths
