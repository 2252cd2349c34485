"""Training and evaluation: the loops, over objects that ``builders`` makes from the config.

Workdir layout (``train``)::

  workdir/checkpoints/        snapshots, one every ``snapshot_freq`` steps, all kept
  workdir/checkpoints-meta/   preemption checkpoint, every ``snapshot_freq_for_preemption`` steps
  workdir/samples/iter_<step>/sample.png, sample.npz   snapshot samples (EMA parameters)
  workdir/tensorboard/        TensorBoard event files (train/eval loss)
  workdir/train.log           the training log

``evaluate`` writes ``workdir/<eval_folder>/``: per-checkpoint bits/dim results saved batch by
batch (a preempted evaluation resumes), samples as ``.npz`` and PNG grids, and ``summary.json``.
Checkpoint index ``k`` (``eval.begin_ckpt``/``eval.end_ckpt``) means train step
``k * snapshot_freq``, as the authors numbered their checkpoints.

Devices: one mesh over all devices of all processes (:mod:`devices`); every process runs this
same code on its own slice of each global batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Dict, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import batching
import builders
import checkpoints
import datasets
import evaluation
import losses
import outputs
import toy_data
from devices import Devices, gather

Config = ml_collections.ConfigDict


# ----------------------------------------------------------------------------- train


def _crossed(step: int, n: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(step - n, step]``."""
  return freq > 0 and step // freq > (step - n) // freq


def stack_batches(iterator: Iterator[Dict[str, np.ndarray]], n: int, scaler) -> np.ndarray:
  """The next ``n`` batches of ``iterator``, scaled, as one float32 block ``[n, B, ...]``."""
  return np.stack([np.asarray(scaler(next(iterator)["image"]), np.float32) for _ in range(n)])


@contextlib.contextmanager
def _log_to_file(path: str):
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logging.getLogger().addHandler(handler)
  try:
    yield
  finally:
    logging.getLogger().removeHandler(handler)
    handler.close()


def train(config: Config, workdir: str) -> None:
  """Trains from scratch or resumes exactly from the newest checkpoint in ``workdir``."""
  outputs.check_writable(workdir)
  with _log_to_file(os.path.join(workdir, "train.log")):
    _train(config, workdir)


def _train(config: Config, workdir: str) -> None:
  devices = Devices()
  training = config.training
  devices.check_batch(training.batch_size, "training.batch_size")
  if training.n_jitted_steps < 1:
    raise ValueError("training.n_jitted_steps must be >= 1.")
  sde = builders.build_sde(config)
  model, optimizer, state = builders.init_state(config, devices)
  snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  preemption = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints-meta"), max_to_keep=1)
  restored = checkpoints.restore_latest([preemption, snapshots], state)
  if restored is not None:
    state = restored
  initial_step = int(jax.device_get(state.step))
  if initial_step:
    logging.info("Resuming from step %d.", initial_step)

  scaler, inverse_scaler = builders.data_scalers(config)
  stream = dict(batch_size=training.batch_size, train=True, process_index=jax.process_index(),
                process_count=jax.process_count())
  train_iter = iter(datasets.get_dataset(config, split="train", shuffle_seed=config.seed,
                                         start_batch=initial_step, **stream))
  eval_iter = iter(datasets.get_dataset(
      config, split="test", shuffle_seed=config.seed + 1,
      start_batch=initial_step // max(training.eval_freq, 1), **stream))

  train_steps = builders.build_train_steps(config, sde, model, optimizer, state, devices)
  eval_step = builders.build_eval_step(config, sde, model, optimizer, state, devices)
  # Built even when unused so that a bad sampler name fails now, not at the first snapshot.
  sampler = builders.build_sampler(config, sde, model, devices,
                                   devices.round_batch(min(training.batch_size, 64)))

  summary = outputs.Summary(os.path.join(workdir, "tensorboard"))
  progress = _progress_bar(training.n_iters, initial_step)
  step = initial_step
  try:
    while step < training.n_iters:
      n = min(training.n_jitted_steps, training.n_iters - step)
      batch = devices.put_batch(stack_batches(train_iter, n, scaler), stacked=True)
      state, loss_values = train_steps(state, batch)
      step += n
      progress.update(n)
      if _crossed(step, n, training.log_freq):
        loss = float(jnp.mean(loss_values))
        if not np.isfinite(loss):
          raise FloatingPointError(
              f"Training loss is {loss} at step {step}; no checkpoint was written for this step. "
              "Lower optim.lr or check the data scaling.")
        progress.set_postfix(loss=f"{loss:.4g}")
        logging.info("step %d, training loss %.6g", step, loss)
        summary.scalar("train/loss", loss, step)
      if _crossed(step, n, training.eval_freq):
        eval_batch = devices.put_batch(np.asarray(scaler(next(eval_iter)["image"]), np.float32))
        _, eval_loss = eval_step(state, eval_batch)
        summary.scalar("eval/loss", float(eval_loss), step)
      # The kept snapshot first: a crash between the two saves must not skip a snapshot.
      if _crossed(step, n, training.snapshot_freq) or step == training.n_iters:
        snapshots.save(step, state)
        if training.snapshot_sampling:
          samples, _ = sampler(jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                               state.ema_params)
          samples = np.asarray(inverse_scaler(gather(samples)))
          if not np.all(np.isfinite(samples)):
            # Training goes on (its checkpoint is saved); only the snapshot's picture is lost.
            logging.warning("Snapshot samples at step %d are non-finite (sampling.method=%s: "
                            "the network diverged, or the ODE solver hit its step cap); not "
                            "saved.", step, config.sampling.method)
          elif jax.process_index() == 0:
            outputs.save_samples(samples, os.path.join(workdir, "samples", f"iter_{step}"))
      if _crossed(step, n, training.snapshot_freq_for_preemption) or step == training.n_iters:
        preemption.save(step, state)
  finally:
    progress.close()
    summary.close()
    snapshots.close()
    preemption.close()


def _progress_bar(total: int, initial: int):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0 or not os.isatty(2))


# ----------------------------------------------------------------------------- evaluate


def evaluate(config: Config, workdir: str, eval_folder: str = "eval") -> Dict:
  """Evaluates every snapshot in ``[eval.begin_ckpt, eval.end_ckpt]``; returns the summary."""
  eval_dir = os.path.join(workdir, eval_folder)
  outputs.check_writable(eval_dir)
  devices = Devices()
  ev = config.eval
  devices.check_batch(ev.batch_size, "eval.batch_size")
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  freq = config.training.snapshot_freq
  steps = [s for s in snapshots.all_steps() if ev.begin_ckpt * freq <= s <= ev.end_ckpt * freq]
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint with index in [{ev.begin_ckpt}, {ev.end_ckpt}] (steps "
        f"{ev.begin_ckpt * freq}..{ev.end_ckpt * freq}) under {workdir}/checkpoints; available "
        f"steps: {snapshots.all_steps() or 'none'}. Train first or set "
        "--config.eval.begin_ckpt/end_ckpt.")

  summary_path = os.path.join(eval_dir, "summary.json")
  summary = outputs.load_json(summary_path) if os.path.exists(summary_path) else {}
  for step in steps:
    state = snapshots.restore(step, template)
    ckpt_dir = os.path.join(eval_dir, f"step_{step}")
    os.makedirs(ckpt_dir, exist_ok=True)
    result: Dict[str, Any] = {"step": step}
    if ev.enable_loss:
      result["loss"] = _eval_loss(config, sde, model, state, devices)
    if ev.enable_bpd:
      result.update(_eval_bpd(config, sde, model, state.ema_params, devices, ckpt_dir, step))
    if ev.enable_sampling:
      result.update(_eval_samples(config, sde, model, state.ema_params, devices, ckpt_dir, step))
    logging.info("checkpoint at step %d: %s", step, result)
    summary[str(step)] = result
    if jax.process_index() == 0:
      outputs.save_json(summary_path, summary)
  snapshots.close()
  return summary


def _eval_batches(config: Config, split: str, batch_size: int) -> batching.Batches:
  """One pass over every example of ``split`` in stored order (this process's slices)."""
  return datasets.get_dataset(config, split=split, batch_size=batch_size, train=False,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())


def _eval_loss(config: Config, sde, model, state: losses.TrainState, devices: Devices) -> float:
  """Mean DSM loss (EMA parameters) over every example of the test split, once each."""
  loss_fn = builders.build_loss_fn(config, sde, model, train=False)
  scaler, _ = builders.data_scalers(config)

  @jax.jit
  def batch_losses(params, rng, x):
    return losses.per_example_losses(loss_fn, params, rng, x)

  rng = jax.random.PRNGKey(config.seed + 2)
  total, count = 0.0, 0.0
  for k, batch in enumerate(_eval_batches(config, "test", config.eval.batch_size)):
    x = devices.put_batch(np.asarray(scaler(batch["image"]), np.float32))
    per_example = np.asarray(gather(batch_losses(state.ema_params, jax.random.fold_in(rng, k), x)))
    mask = np.asarray(gather(devices.put_batch(batch["mask"])))
    total += float((per_example * mask).sum())
    count += float(mask.sum())
  return total / max(count, 1.0)


def _eval_bpd(config: Config, sde, model, params, devices: Devices, ckpt_dir: str,
              step: int) -> Dict[str, Any]:
  """Bits/dim (``builders.build_bpd_fn``) over every example of ``eval.bpd_dataset``, repeated.

  ``eval.bpd_num_repeats`` passes; ``eval.bpd_num_examples > 0`` restricts each to the first that
  many examples of the split's fixed order (a quick, reproducible subset; 0 means all). Per-batch
  results are saved, so a preempted evaluation resumes where it stopped.
  """
  ev = config.eval
  bpd_fn = builders.build_bpd_fn(config, sde, model, devices)
  base = jax.random.PRNGKey(config.seed + 3)
  limit = int(ev.get("bpd_num_examples", 0) or 0)
  all_bpd, all_nfe = [], []
  for repeat in range(ev.bpd_num_repeats):
    for k, batch in enumerate(_eval_batches(config, ev.bpd_dataset, ev.batch_size)):
      if limit and k * ev.batch_size >= limit:
        break
      path = os.path.join(ckpt_dir, f"bpd_repeat{repeat}_batch{k}.npz")
      saved = outputs.load_npz(path, ("bpd", "nfe"))
      if saved is not None:
        bpd, nfe = saved["bpd"], saved["nfe"]
      else:
        rng = jax.random.fold_in(jax.random.fold_in(base, repeat), k)
        images = devices.put_batch(np.asarray(batch["image"], np.float32))
        bpd, nfe = bpd_fn(rng, params, images)
        mask = np.asarray(gather(devices.put_batch(batch["mask"]))) > 0
        bpd = np.asarray(gather(bpd))[mask]
        nfe = np.asarray(nfe)
        if jax.process_index() == 0:
          outputs.save_npz(path, bpd=bpd, nfe=nfe)
      if limit:
        bpd = bpd[:limit - k * ev.batch_size]
      all_bpd.append(bpd)
      all_nfe.append(float(nfe))
  bpd = np.concatenate(all_bpd)
  logging.info("step %d: bits/dim %.4f over %d evaluations", step, bpd.mean(), bpd.size)
  return {"bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / np.sqrt(bpd.size)),
          "bpd_count": int(bpd.size), "bpd_mean_nfe": float(np.mean(all_nfe)),
          "bpd_dataset": ev.bpd_dataset, "bpd_offset_bits": builders.bpd_offset_bits(config)}


def _eval_samples(config: Config, sde, model, params, devices: Devices, ckpt_dir: str,
                  step: int) -> Dict[str, Any]:
  """Draws ``eval.num_samples`` samples in batches (saved one ``.npz`` per batch, resumable).

  Each batch's file keeps its NFE, so a resumed evaluation reports the same ``sampling_nfe``
  (the mean over batches) as an uninterrupted one.
  """
  ev = config.eval
  batch_size = devices.round_batch(min(ev.batch_size, ev.num_samples))
  sampler = builders.build_sampler(config, sde, model, devices, batch_size)
  _, inverse_scaler = builders.data_scalers(config)
  base = jax.random.PRNGKey(config.seed + 4)
  collected, nfes = [], []
  for k in range(-(-ev.num_samples // batch_size)):
    name = f"samples_{k}"
    saved = outputs.load_npz(os.path.join(ckpt_dir, name + ".npz"), ("samples", "nfe"))
    if saved is not None:
      samples, nfe = saved["samples"], saved["nfe"]
    else:
      samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(base, step), k), params)
      samples, nfe = np.asarray(inverse_scaler(gather(samples))), np.asarray(nfe)
      if not np.all(np.isfinite(samples)):
        raise FloatingPointError(
            f"Sampling the step-{step} checkpoint gave non-finite values (sampling.method="
            f"{config.sampling.method}: the network diverged, or the ODE solver hit its step "
            "cap); nothing was saved for this batch.")
      if jax.process_index() == 0:
        outputs.save_samples(samples, ckpt_dir, name, nfe=nfe)
    collected.append(samples)
    nfes.append(float(nfe))
  samples = np.concatenate(collected)[:ev.num_samples]
  result: Dict[str, Any] = {"num_samples": int(len(samples)),
                            "sampling_nfe": float(np.mean(nfes))}
  if builders.is_vector_data(config):
    # Two-sample statistics against fresh data, and the prior's as a reference point.
    data = toy_data.sample_toy(config.data.dataset, len(samples), seed=config.seed + 5)
    prior = np.asarray(sde.prior_sampling(jax.random.PRNGKey(config.seed + 6), samples.shape))
    result.update(evaluation.two_sample_statistics(samples, data, prior))
  return result
