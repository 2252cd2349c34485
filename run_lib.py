"""Training and evaluation: reads the config and wires data, SDE, model, losses and samplers.

This is the one place (with ``main.py``) that reads configs. Everything below it takes explicit
arguments. Devices: one ``Mesh`` over all devices of all processes with a single ``data`` axis;
batches are sharded along their batch axis, the train state is replicated, and each process reads
only its own slice of every global batch. The same code runs on 1 CPU, 1 GPU, 8 GPUs or a TPU slice.

Workdir layout (``train``)::

  workdir/checkpoints/        snapshots, one every ``snapshot_freq`` steps, all kept
  workdir/checkpoints-meta/   preemption checkpoint, every ``snapshot_freq_for_preemption`` steps
  workdir/samples/iter_<step>/sample.png, sample.npz   snapshot samples (EMA parameters)
  workdir/tensorboard/        TensorBoard event files (train/eval loss)

``evaluate`` writes ``workdir/<eval_folder>/``: per-checkpoint bits/dim results saved batch by
batch (a preempted evaluation resumes), samples as ``.npz`` and PNG grids, and ``summary.json``.
Checkpoint index ``k`` (``eval.begin_ckpt``/``eval.end_ckpt``) means train step ``k * snapshot_freq``,
as the authors numbered their checkpoints.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import checkpoints
import datasets
import evaluation
import likelihood
import losses
import sampling
import sde_lib
from models import utils as mutils

Array = jax.Array


# ----------------------------------------------------------------------------- wiring


def build_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
  """The SDE named by ``config.training.sde`` with the config's schedule parameters."""
  sde_class = sde_lib.get_sde_class(config.training.sde)
  model = config.model
  if sde_class is sde_lib.VESDE:
    return sde_lib.VESDE(sigma_min=model.sigma_min, sigma_max=model.sigma_max, N=model.num_scales)
  return sde_class(beta_min=model.beta_min, beta_max=model.beta_max, N=model.num_scales)


def is_vector_data(config: ml_collections.ConfigDict) -> bool:
  return bool(config.data.get("dim", 0))


def data_scalers(config) -> Tuple[Callable, Callable]:
  """``(scaler, inverse_scaler)``: identity for vector (toy) data, which are not images."""
  if is_vector_data(config):
    return (lambda x: x), (lambda x: x)
  return (datasets.get_data_scaler(config.data.centered),
          datasets.get_data_inverse_scaler(config.data.centered))


class Devices:
  """The mesh and the two shardings used everywhere: replicated state, batch-sharded data."""

  def __init__(self, devices: Optional[Sequence[jax.Device]] = None):
    """Over ``devices`` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))
    self.stacked_batch = NamedSharding(self.mesh, P(None, "data"))
    self.count = len(devices)

  def check_batch(self, batch_size: int, what: str) -> None:
    if batch_size % self.count or batch_size % jax.process_count():
      raise ValueError(
          f"{what} ({batch_size}) must be divisible by the number of devices ({self.count}) and "
          f"processes ({jax.process_count()}); change it with --config.{what}=...")

  def put(self, tree: Any, sharding: Optional[NamedSharding] = None) -> Any:
    """``tree`` on the devices, replicated unless ``sharding`` says otherwise."""
    return jax.device_put(tree, self.replicated if sharding is None else sharding)

  def put_batch(self, local: np.ndarray, stacked: bool = False) -> Array:
    """This process's slice of a global batch -> a global array sharded over ``data``."""
    sharding = self.stacked_batch if stacked else self.batch
    return jax.make_array_from_process_local_data(sharding, local)

  def constrain(self, x: Array) -> Array:
    return jax.lax.with_sharding_constraint(x, self.batch)


def build_optimizer(config):
  optim = config.optim
  if optim.optimizer.lower() not in ("adam", "adamw"):
    raise ValueError(f"Unknown optimizer {optim.optimizer!r}; valid names are: Adam, AdamW.")
  return losses.get_optimizer(optim.lr, beta1=optim.beta1, eps=optim.eps,
                              weight_decay=optim.weight_decay, warmup=optim.warmup,
                              grad_clip=optim.grad_clip)


def init_state(config, devices: Devices):
  """Model, optimizer and the replicated initial train state for ``config.seed``."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  model, params = mutils.init_model(init_rng, config)
  optimizer = build_optimizer(config)
  state = losses.init_train_state(state_rng, params, optimizer)
  return model, optimizer, devices.put(state)


def build_loss_fn(config, sde, model, train: bool):
  training = config.training
  return losses.get_loss_fn(sde, model, train=train, continuous=training.continuous,
                            reduce_mean=training.reduce_mean,
                            likelihood_weighting=training.likelihood_weighting, eps=training.eps)


def sample_shape(config, batch_size: int) -> Tuple[int, ...]:
  return mutils.input_shape(config, batch_size)


def build_sampler(config, sde, model, devices: Devices, batch_size: int):
  """``sample(rng, params) -> (samples, nfe)``, jitted, samples sharded over devices."""
  sampling_fn = sampling.get_sampling_fn(config, sde, sample_shape(config, batch_size),
                                         config.sampling.eps)
  continuous = config.training.continuous

  def sample(rng, params):
    score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=continuous)
    return sampling_fn(rng, lambda x, t: score_fn(devices.constrain(x), t))

  return jax.jit(sample, out_shardings=(devices.batch, None))


# ----------------------------------------------------------------------------- outputs


def save_image_grid(images: np.ndarray, path: str) -> None:
  """Saves ``images: [B, H, W, C]`` in [0, 1] as one PNG grid (``ceil(sqrt(B))`` per row)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  b, h, w, c = images.shape
  ncol = int(np.ceil(np.sqrt(b)))
  nrow = int(np.ceil(b / ncol))
  grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, ncol)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = image
  grid = (grid * 255.0).round().astype(np.uint8)
  image = Image.fromarray(grid[..., 0] if c == 1 else grid)
  with open(path + ".tmp", "wb") as f:
    image.save(f, format="PNG")
  os.replace(path + ".tmp", path)


def save_scatter(points: np.ndarray, path: str, reference: Optional[np.ndarray] = None) -> None:
  """Saves 2-D samples ``points: [N, 2]`` as a PNG density image (no plotting library needed)."""
  pts = np.asarray(points, np.float64)
  lim = np.percentile(np.abs(reference if reference is not None else pts), 99.5) * 1.2 + 1e-6
  hist, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=128, range=[[-lim, lim], [-lim, lim]])
  img = 1.0 - np.clip(hist / max(np.percentile(hist[hist > 0], 95), 1.0), 0.0, 1.0)
  save_image_grid(img[::-1, :, None][None], path)


def save_samples(samples: np.ndarray, directory: str, config, name: str = "sample",
                 reference: Optional[np.ndarray] = None) -> None:
  """Writes ``name.npz`` and a PNG (image grid, or a 2-D histogram for toy data)."""
  os.makedirs(directory, exist_ok=True)
  checkpoints.atomic_write_bytes(os.path.join(directory, name + ".npz"), _npz_bytes(samples=samples))
  png = os.path.join(directory, name + ".png")
  if is_vector_data(config):
    if samples.shape[-1] == 2:
      save_scatter(samples, png, reference)
  else:
    save_image_grid(samples[:64], png)


def _npz_bytes(**arrays) -> bytes:
  import io  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


class Summary:
  """TensorBoard scalars on process 0 (tensorboardX: writes event files without TensorFlow)."""

  def __init__(self, logdir: str):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.writer = SummaryWriter(logdir)

  def scalar(self, name: str, value: float, step: int) -> None:
    if self.writer is not None:
      self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


# ----------------------------------------------------------------------------- train


def _crossed(step: int, n: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(step - n, step]``."""
  return freq > 0 and step // freq > (step - n) // freq


def stack_batches(iterator: Iterator[Dict[str, np.ndarray]], n: int, scaler) -> np.ndarray:
  """The next ``n`` batches of ``iterator``, scaled, as one float32 block ``[n, B, ...]``."""
  return np.stack([np.asarray(scaler(next(iterator)["image"]), np.float32) for _ in range(n)])


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains from scratch or resumes exactly from the newest checkpoint in ``workdir``."""
  checkpoints.check_writable(workdir)
  devices = Devices()
  training = config.training
  devices.check_batch(training.batch_size, "training.batch_size")
  if training.n_jitted_steps < 1:
    raise ValueError("training.n_jitted_steps must be >= 1.")
  sde = build_sde(config)
  model, optimizer, state = init_state(config, devices)
  snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  preemption = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints-meta"), max_to_keep=1)
  restored = checkpoints.restore_latest([preemption, snapshots], state)
  if restored is not None:
    state = restored
  initial_step = int(jax.device_get(state.step))
  if initial_step:
    logging.info("Resuming from step %d.", initial_step)

  scaler, inverse_scaler = data_scalers(config)
  train_iter = iter(datasets.get_dataset(config, split="train", batch_size=training.batch_size,
                                    train=True, process_index=jax.process_index(),
                                    process_count=jax.process_count(), shuffle_seed=config.seed,
                                    start_batch=initial_step))
  eval_iter = iter(datasets.get_dataset(config, split="test", batch_size=training.batch_size,
                                   train=True, process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   shuffle_seed=config.seed + 1,
                                   start_batch=initial_step // max(training.eval_freq, 1)))

  state_sharding = jax.tree_util.tree_map(lambda _: devices.replicated, state)
  train_step = losses.get_step_fn(build_loss_fn(config, sde, model, train=True), optimizer,
                                  train=True, ema_rate=config.model.ema_rate)
  train_steps = compile_train_steps(train_step, state_sharding, devices)
  eval_step = jax.jit(losses.get_step_fn(build_loss_fn(config, sde, model, train=False), optimizer,
                                         train=False, ema_rate=config.model.ema_rate),
                      in_shardings=(state_sharding, devices.batch),
                      out_shardings=(state_sharding, devices.replicated))
  # Built even when unused so that a bad sampler name fails now, not at the first snapshot.
  sampler = build_sampler(config, sde, model, devices,
                          _round_to(min(training.batch_size, 64), devices.count))

  summary = Summary(os.path.join(workdir, "tensorboard"))
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
            save_samples(samples, os.path.join(workdir, "samples", f"iter_{step}"), config)
      if _crossed(step, n, training.snapshot_freq_for_preemption) or step == training.n_iters:
        preemption.save(step, state)
  finally:
    progress.close()
    summary.close()
    snapshots.close()
    preemption.close()


def compile_train_steps(train_step, state_sharding, devices: Devices):
  """``steps(state, batches: [n, B, ...]) -> (state, losses: [n])``, the state donated.

  On accelerators the ``n`` steps are one compiled ``lax.scan`` (``training.n_jitted_steps``
  per call). XLA:CPU runs convolutions inside a loop about 8x slower than outside one (DDPM++
  on MNIST, 2 cores: 3.3 s vs 0.43 s per step), so on CPU each step is its own call of one
  compiled step -- the same arithmetic, in the same order.
  """
  if jax.default_backend() != "cpu":
    return jax.jit(losses.get_multi_step_fn(train_step),
                   in_shardings=(state_sharding, devices.stacked_batch),
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)
  single = jax.jit(train_step, in_shardings=(state_sharding, devices.batch),
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)

  def steps(state, batches):
    step_losses = []
    for i in range(batches.shape[0]):
      state, loss = single(state, batches[i])
      step_losses.append(loss)
    return state, jnp.stack(step_losses)

  return steps


def _round_to(n: int, multiple: int) -> int:
  return max(multiple, (n // multiple) * multiple)


def gather(x: Array) -> np.ndarray:
  """A sharded global array as one host numpy array (on every process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _progress_bar(total: int, initial: int):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0 or not os.isatty(2))


# ----------------------------------------------------------------------------- evaluate


def evaluate(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = "eval") -> Dict:
  """Evaluates every snapshot in ``[eval.begin_ckpt, eval.end_ckpt]``; returns the summary."""
  eval_dir = os.path.join(workdir, eval_folder)
  checkpoints.check_writable(eval_dir)
  devices = Devices()
  ev = config.eval
  devices.check_batch(ev.batch_size, "eval.batch_size")
  sde = build_sde(config)
  model, _, template = init_state(config, devices)
  snapshots = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  freq = config.training.snapshot_freq
  steps = [s for s in snapshots.all_steps() if ev.begin_ckpt * freq <= s <= ev.end_ckpt * freq]
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint with index in [{ev.begin_ckpt}, {ev.end_ckpt}] (steps "
        f"{ev.begin_ckpt * freq}..{ev.end_ckpt * freq}) under {workdir}/checkpoints; available steps: "
        f"{snapshots.all_steps() or 'none'}. Train first or set --config.eval.begin_ckpt/end_ckpt.")

  summary_path = os.path.join(eval_dir, "summary.json")
  summary = checkpoints.load_json(summary_path) if os.path.exists(summary_path) else {}
  scaler, inverse_scaler = data_scalers(config)
  for step in steps:
    state = snapshots.restore(step, template)
    params = state.ema_params
    ckpt_dir = os.path.join(eval_dir, f"step_{step}")
    os.makedirs(ckpt_dir, exist_ok=True)
    result: Dict[str, Any] = {"step": step}
    if ev.enable_loss:
      result["loss"] = _eval_loss(config, sde, model, state, devices, scaler)
    if ev.enable_bpd:
      result.update(_eval_bpd(config, sde, model, params, devices, ckpt_dir, step))
    if ev.enable_sampling:
      result.update(_eval_samples(config, sde, model, params, devices, inverse_scaler, ckpt_dir,
                                  step))
    logging.info("checkpoint at step %d: %s", step, result)
    summary[str(step)] = result
    if jax.process_index() == 0:
      checkpoints.save_json(summary_path, summary)
  snapshots.close()
  return summary


def _eval_batches(config, split: str, batch_size: int, **kwargs):
  return datasets.get_dataset(config, split=split, batch_size=batch_size, train=False,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), **kwargs)


def _eval_loss(config, sde, model, state, devices, scaler) -> float:
  """Mean DSM loss (EMA parameters) over every example of the test split, once each."""
  loss_fn = build_loss_fn(config, sde, model, train=False)

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


def bpd_offset_bits(config) -> float:
  """Bits/dim added for uniform dequantization of 8-bit images; 0 for continuous vector data."""
  if is_vector_data(config):
    return 0.0
  return likelihood.dequantization_offset(config.data.centered)


def build_bpd_fn(config, sde, model, devices: Devices) -> Callable:
  """``bpd_fn(rng, params, images) -> (bpd: [B], nfe)``, jitted; ``images`` in [0, 1].

  Image data are 8-bit, so each example is uniformly dequantized here, ``(255 x + u) / 256`` with
  ``u ~ U[0, 1)`` drawn from ``rng``, and the dequantization offset is added: the result is the
  bits/dim of the dequantized discrete data (the paper's CIFAR-10 number). Vector (toy) data are
  continuous: their bits/dim is that of the continuous density, with no offset.
  """
  ev = config.eval
  vector = is_vector_data(config)
  likelihood_fn = likelihood.get_likelihood_fn(sde, hutchinson_type=ev.hutchinson_type,
                                               rtol=ev.rtol, atol=ev.atol,
                                               bpd_offset=bpd_offset_bits(config))
  scaler, _ = data_scalers(config)
  continuous = config.training.continuous

  @functools.partial(jax.jit, out_shardings=(devices.batch, None))
  def bpd_fn(rng, params, images):
    dq_rng, rng = jax.random.split(rng)
    if not vector:
      images = (images * 255.0 + jax.random.uniform(dq_rng, images.shape)) / 256.0
    score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=continuous)
    bpd, _, nfe = likelihood_fn(rng, lambda x, t: score_fn(devices.constrain(x), t),
                                scaler(images))
    return bpd, nfe

  return bpd_fn


def _eval_bpd(config, sde, model, params, devices, ckpt_dir, step) -> Dict[str, Any]:
  """Bits/dim (:func:`build_bpd_fn`) over every example of ``eval.bpd_dataset``, repeated.

  ``eval.bpd_num_repeats`` passes; ``eval.bpd_num_examples > 0`` restricts each to the first that
  many examples of the split's fixed order (a quick, reproducible subset; 0 means all). Per-batch
  results are saved, so a preempted evaluation resumes where it stopped.
  """
  ev = config.eval
  bpd_fn = build_bpd_fn(config, sde, model, devices)
  base = jax.random.PRNGKey(config.seed + 3)
  limit = int(ev.get("bpd_num_examples", 0) or 0)
  all_bpd, all_nfe = [], []
  for repeat in range(ev.bpd_num_repeats):
    for k, batch in enumerate(_eval_batches(config, ev.bpd_dataset, ev.batch_size)):
      if limit and k * ev.batch_size >= limit:
        break
      path = os.path.join(ckpt_dir, f"bpd_repeat{repeat}_batch{k}.npz")
      if os.path.exists(path):
        saved = np.load(path)
        bpd, nfe = saved["bpd"], saved["nfe"]
      else:
        rng = jax.random.fold_in(jax.random.fold_in(base, repeat), k)
        images = devices.put_batch(np.asarray(batch["image"], np.float32))
        bpd, nfe = bpd_fn(rng, params, images)
        mask = np.asarray(gather(devices.put_batch(batch["mask"]))) > 0
        bpd = np.asarray(gather(bpd))[mask]
        nfe = np.asarray(nfe)
        if jax.process_index() == 0:
          checkpoints.atomic_write_bytes(path, _npz_bytes(bpd=bpd, nfe=nfe))
      if limit:
        bpd = bpd[:limit - k * ev.batch_size]
      all_bpd.append(bpd)
      all_nfe.append(float(nfe))
  bpd = np.concatenate(all_bpd)
  logging.info("step %d: bits/dim %.4f over %d evaluations", step, bpd.mean(), bpd.size)
  return {"bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / np.sqrt(bpd.size)),
          "bpd_count": int(bpd.size), "bpd_mean_nfe": float(np.mean(all_nfe)),
          "bpd_dataset": ev.bpd_dataset, "bpd_offset_bits": bpd_offset_bits(config)}


def _eval_samples(config, sde, model, params, devices, inverse_scaler, ckpt_dir,
                  step) -> Dict[str, Any]:
  """Draws ``eval.num_samples`` samples in batches (saved one ``.npz`` per batch, resumable)."""
  ev = config.eval
  batch_size = _round_to(min(ev.batch_size, ev.num_samples), devices.count)
  sampler = build_sampler(config, sde, model, devices, batch_size)
  num_batches = -(-ev.num_samples // batch_size)
  base = jax.random.PRNGKey(config.seed + 4)
  collected, nfe = [], 0
  for k in range(num_batches):
    name = f"samples_{k}"
    path = os.path.join(ckpt_dir, name + ".npz")
    if os.path.exists(path):
      collected.append(np.load(path)["samples"])
      continue
    samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(base, step), k), params)
    samples = np.asarray(inverse_scaler(gather(samples)))
    if not np.all(np.isfinite(samples)):
      raise FloatingPointError(
          f"Sampling the step-{step} checkpoint gave non-finite values (sampling.method="
          f"{config.sampling.method}: the network diverged, or the ODE solver hit its step cap); "
          "nothing was saved for this batch.")
    if jax.process_index() == 0:
      save_samples(samples, ckpt_dir, config, name)
    collected.append(samples)
  samples = np.concatenate(collected)[:ev.num_samples]
  result: Dict[str, Any] = {"num_samples": int(len(samples)), "sampling_nfe": int(nfe)}
  if is_vector_data(config):
    # A two-sample statistic against fresh data, and the prior's as a reference point.
    data = datasets.sample_toy(config.data.dataset, len(samples), seed=config.seed + 5)
    prior = np.asarray(sde.prior_sampling(jax.random.PRNGKey(config.seed + 6), samples.shape))
    result["energy_distance"] = evaluation.energy_distance(samples, data)
    result["prior_energy_distance"] = evaluation.energy_distance(prior, data)
    result["mmd"] = evaluation.mmd_rbf(samples, data)
    result["prior_mmd"] = evaluation.mmd_rbf(prior, data)
  return result
