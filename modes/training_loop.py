"""The training loop, written once: a subclass says what is trained, this class how a run goes.

``--mode train`` (the score model, :mod:`modes.train`), ``--mode train_classifier`` (the
noise-conditional classifier of guidance, :mod:`modes.train_classifier`) and the experiments'
timed training run this loop; they differ only in the hooks below.

A run (:meth:`TrainingLoop.run`) in a workdir:

* Everything the config names is built by the subclass's constructor before the workdir is
  touched, so a bad value fails without leaving anything behind.
* It starts afresh or resumes exactly from the newest checkpoint of either store (the data
  stream continues at the restored step). The config is recorded at the first start
  (``config.json``) and a resume must match it (:mod:`infra.run_config`; ``allow_config_change``
  accepts a deliberate change).
* Steps run ``training.n_jitted_steps`` per compiled call (``builders.compile_train_steps``) up
  to ``training.n_iters``. Every ``training.log_freq`` steps the metrics of the last call are
  checked finite, logged and written to TensorBoard; every ``training.eval_freq`` steps
  :meth:`TrainingLoop.evaluate` runs; every ``training.snapshot_freq`` steps and at the last one
  a snapshot is saved (then :meth:`TrainingLoop.after_snapshot`), every
  ``training.snapshot_freq_for_preemption`` steps a preemption checkpoint.
* No checkpoint holds non-finite values: a diverged run stops with one ``FloatingPointError``
  line naming the step a rerun resumes from.
* SIGTERM or SIGINT stops after the current call with a preemption checkpoint
  (:class:`StopSignals`).

Workdir layout::

  workdir/checkpoints/        snapshots (infra.checkpoints.SNAPSHOTS), all kept unless
                              ``snapshots_to_keep`` says otherwise
  workdir/checkpoints-meta/   the preemption checkpoint (infra.checkpoints.PREEMPTION), newest only
  workdir/tensorboard/        TensorBoard event files of the logged metrics
  workdir/config.json         the config of the first start
  workdir/<log_file>          the training log (process 0)

Devices: one mesh over all devices of all processes (:mod:`infra.devices`); the state is
replicated and every process feeds its own slice of each global batch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import losses
from datasets import batching
from infra import checkpoints
from infra import logs
from infra import outputs
from infra import run_config
from infra.devices import Devices
from models import utils as mutils

Config = ml_collections.ConfigDict
Metrics = Dict[str, jax.Array]
"""``{name: [n]}``: a metric per step of one compiled call (``'loss'`` always among them)."""


def crossed(step: int, n: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(step - n, step]`` (a call of ``n`` steps that ended
  at ``step`` passed it)."""
  return freq > 0 and step // freq > (step - n) // freq


class StopSignals:
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

  def __enter__(self) -> "StopSignals":
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


class TrainingLoop:
  """The loop over a :class:`losses.TrainState`; subclasses override the hooks.

  A subclass's constructor calls ``super().__init__(config, devices)`` and then builds what it
  trains, setting :attr:`model`, :attr:`state` (the initial, replicated state) and
  :attr:`num_classes`, before anything is written.

  Attributes:
    config: the run's config.
    devices: the device mesh.
    model: the network being trained.
    state: the current train state (replaced as training goes).
    scaler: data space -> model space (``datasets.data_scalers``).
    num_classes: the classes the network reads labels of (0: images only).
  """

  log_file = "train.log"
  """The training log's file name in the workdir."""
  snapshots_to_keep: Optional[int] = None
  """Snapshots kept in ``checkpoints/`` (None: all)."""
  may_change_on_resume = run_config.MAY_CHANGE_ON_RESUME
  """Config fields a resume accepts changed (``run_config.check``)."""

  def __init__(self, config: Config, devices: Optional[Devices] = None):
    self.config = config
    self.devices = devices or Devices()
    training = config.training
    self.devices.check_batch(training.batch_size, "training.batch_size")
    if training.n_jitted_steps < 1:
      raise ValueError("training.n_jitted_steps must be >= 1; set "
                       "--config.training.n_jitted_steps.")
    self.model: Any = None
    self.state: Optional[losses.TrainState] = None
    self.scaler: Any = lambda x: x
    self.num_classes = 0

  # --------------------------------------------------------------------------- hooks

  def batches(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    """This process's training batches (``datasets``' dicts), the first for step
    ``start_step + 1``."""
    raise NotImplementedError

  def start(self, step: int) -> None:
    """Once before the first step of a run that starts (or resumes) at ``step``."""

  def train_steps(self, state: losses.TrainState, batches: Any) -> Tuple[losses.TrainState,
                                                                         Metrics]:
    """``n`` steps on ``batches`` (leaves ``[n, B, ...]`` on the devices): ``(state, metrics)``."""
    raise NotImplementedError

  def describe_run(self) -> str:
    """What is trained, for the first log line (``Training <this> to step ...``)."""
    return (f"{self.config.model.name} ({self.num_params:,} parameters, "
            f"{self.config.training.sde})")

  def describe_metrics(self, metrics: Dict[str, float]) -> str:
    """The log line's text for the mean metrics of a call (``step 100: <this>``)."""
    return f"training loss {metrics['loss']:.4g}"

  def evaluate(self, step: int) -> Dict[str, float]:
    """Every ``training.eval_freq`` steps: ``{name: value}`` written to TensorBoard as
    ``eval/<name>``."""
    del step
    return {}

  def after_snapshot(self, step: int, workdir: str) -> None:
    """After the snapshot of ``step`` is saved."""

  def finish(self, workdir: str) -> Any:
    """After the last step (not after a stop): what :meth:`run` returns."""
    del workdir

  # --------------------------------------------------------------------------- the loop

  @property
  def num_params(self) -> int:
    return mutils.parameter_count(self.state.params)

  def next_steps(self, state: losses.TrainState, batches: Iterator[Dict[str, np.ndarray]],
                 n: int) -> Tuple[losses.TrainState, Metrics]:
    """``n`` steps on the next ``n`` batches of ``batches``, in one compiled call."""
    stacked = batching.stack_batches(batches, n, self.scaler, self.num_classes)
    return self.train_steps(state, self.devices.put_batch(stacked, stacked=True))

  def run(self, workdir: str, allow_config_change: bool = False) -> Any:
    """Trains from scratch or resumes from the newest checkpoint in ``workdir`` (module
    docstring); returns :meth:`finish`'s result, or None when stopped by a signal."""
    config, training = self.config, self.config.training
    snapshots = checkpoints.CheckpointStore(os.path.join(workdir, checkpoints.SNAPSHOTS),
                                            max_to_keep=self.snapshots_to_keep)
    preemption = checkpoints.CheckpointStore(os.path.join(workdir, checkpoints.PREEMPTION),
                                             max_to_keep=1)
    resuming = bool(snapshots.all_steps() or preemption.all_steps())
    if resuming:
      run_config.check(workdir, config, self.may_change_on_resume, allow_config_change)
    outputs.check_writable(workdir)
    first_process = jax.process_index() == 0
    with logs.to_file(os.path.join(workdir, self.log_file), enabled=first_process):
      restored = checkpoints.restore_latest([preemption, snapshots], self.state)
      if restored is not None:
        self.state = restored
      initial_step = int(jax.device_get(self.state.step))
      if first_process and (restored is None or allow_config_change
                            or run_config.load(workdir) is None):
        run_config.save(workdir, config)
      logging.info("%s %s to step %d, batch %d, on %d %s device(s).",
                   f"Resuming from step {initial_step}: training" if initial_step else "Training",
                   self.describe_run(), training.n_iters, training.batch_size,
                   jax.device_count(), jax.devices()[0].platform)
      batches = iter(self.batches(initial_step))
      self.start(initial_step)
      summary = outputs.Summary(os.path.join(workdir, "tensorboard"))
      progress = logs.Progress("train", training.n_iters, initial_step, enabled=first_process)
      step = last_saved = initial_step

      def save(store: checkpoints.CheckpointStore) -> None:
        nonlocal last_saved
        try:
          store.save(step, self.state)
        except checkpoints.NonFiniteStateError as e:
          resume = (f"rerunning resumes from step {last_saved}" if last_saved
                    else "no checkpoint was saved, so rerunning starts afresh")
          raise FloatingPointError(
              f"Training diverged by step {step}: {e}. Lower optim.lr or check the data "
              f"scaling; {resume}.") from e
        last_saved = step

      try:
        with StopSignals() as signals:
          while step < training.n_iters:
            n = min(training.n_jitted_steps, training.n_iters - step)
            self.state, metrics = self.next_steps(self.state, batches, n)
            step += n
            if crossed(step, n, training.log_freq):
              means = {name: float(jnp.mean(value)) for name, value in metrics.items()}
              if not np.isfinite(means["loss"]):
                raise FloatingPointError(
                    f"Training loss is {means['loss']} at step {step}; no checkpoint was written "
                    "for this step. Lower optim.lr or check the data scaling.")
              progress.update(n, **{name: f"{value:.4g}" for name, value in means.items()})
              progress.report("step %d: %s", step, self.describe_metrics(means))
              for name, value in means.items():
                summary.scalar(f"train/{name}", value, step)
            else:
              progress.update(n)
            if crossed(step, n, training.eval_freq):
              for name, value in self.evaluate(step).items():
                summary.scalar(f"eval/{name}", value, step)
            # Multi-process runs agree at logging steps, where the metrics are fetched anyway.
            stop = signals.requested(agree_now=crossed(step, n, training.log_freq))
            # The kept snapshot first: a crash between the two saves must not skip a snapshot.
            if crossed(step, n, training.snapshot_freq) or step == training.n_iters:
              save(snapshots)
              self.after_snapshot(step, workdir)
            if (crossed(step, n, training.snapshot_freq_for_preemption)
                or step == training.n_iters or stop):
              save(preemption)
            if stop and step < training.n_iters:
              logging.warning(
                  "Stopped by %s at step %d; the checkpoint is in %s. Run the same command to "
                  "resume.", signals.received, step, preemption.step_dir(step))
              return None
        if step >= training.n_iters:
          logging.info("Trained to step %d in %s; checkpoints in %s.", step, progress.elapsed(),
                       os.path.join(workdir, checkpoints.SNAPSHOTS))
        return self.finish(workdir)
      finally:
        progress.close()
        summary.close()
        snapshots.close()
        preemption.close()
