"""``--mode train_dequantizer``: the variational dequantizer of a trained score model.

``python main.py --config C --mode train_dequantizer --workdir W`` reads the newest snapshot of
``W`` (or ``--checkpoint``), whose EMA parameters stay fixed, and trains in ``W/dequantizer/``
the flow ``q(u | v)`` of :mod:`models.dequantizer` (``dequantizer.hidden, num_couplings``) to
minimise the bound on the training images' discrete bits/dim,
``E_q[B(y) + log q(u | v)] / (D ln 2) + offset`` (:func:`dequantization.get_loss_fn`, ``B`` one
draw per image of ``likelihood.get_bound_draw_fn``: importance-sampled times from
``training.eps``), as Song et al.'s ScoreFlow trained its Flow++ dequantizer after the score
model. The flow starts as uniform dequantization, so training starts from uniform's bound.

The loop is :mod:`modes.training_loop`'s with the ``dequantizer`` section standing in for the
training fields: ``dequantizer.n_iters`` steps of ``dequantizer.batch_size`` training images (no
``data.uniform_dequantization``: the flow makes the noise), Adam at ``dequantizer.lr`` after
``dequantizer.warmup`` steps, clipped at ``optim.grad_clip``, EMA at ``dequantizer.ema_rate``;
checkpoints, exact resume, ``config.json`` (a resume refuses a changed ``dequantizer`` field),
log ``dequantizer_train.log``. At the end ``dequantizer_eval.json``: on the first
``eval.batch_size`` test images (at most 256), the bound in bits/dim with uniform and with the
trained dequantizer from the same draws (16 per image), and their paired difference, each with
its standard error.

``--mode eval --config.eval.dequantization=variational`` then reads it (:func:`load_dequantizer`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import builders
import datasets
import dequantization
import likelihood
import losses
from infra import checkpoints
from infra import outputs
from infra import run_config
from infra.devices import Devices
from modes import Options
from modes import parameters
from modes.training_loop import Metrics, TrainingLoop

Config = ml_collections.ConfigDict
Params = Any
SUBDIR = "dequantizer"
REPORT = "dequantizer_eval.json"
_REPORT_IMAGES, _REPORT_DRAWS = 256, 16


def _loop_config(config: Config) -> Config:
  """``config`` with the training fields the loop reads taken from ``config.dequantizer``, and
  the data as the flow sees them (not dequantized)."""
  loop = ml_collections.ConfigDict(config.to_dict())
  deq = config.dequantizer
  loop.training.n_iters = int(deq.n_iters)
  loop.training.batch_size = int(deq.batch_size)
  loop.training.snapshot_freq = int(deq.n_iters)
  loop.data.uniform_dequantization = False
  return loop


def _initial_state(config: Config) -> Tuple[Any, Any, losses.TrainState]:
  """The dequantizer of ``config``, its optimizer (``dequantizer.lr, warmup``, clipped at
  ``optim.grad_clip``) and its state at step 0 (uniform dequantization)."""
  deq = config.dequantizer
  model = builders.build_dequantizer(config)
  image_shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = model.init(init_rng, jnp.full(image_shape, 0.5), jnp.zeros(image_shape))
  optimizer = losses.get_optimizer(float(deq.lr), warmup=int(deq.warmup),
                                   grad_clip=float(config.optim.grad_clip))
  return model, optimizer, losses.init_train_state(state_rng, params, optimizer)


class DequantizerTraining(TrainingLoop):
  """Training of the variational dequantizer of a fixed score model (module docstring).

  Attributes (besides :class:`TrainingLoop`'s):
    score: the score model's :class:`modes.parameters.Parameters`.
  """

  log_file = "dequantizer_train.log"
  snapshots_to_keep = 2
  may_change_on_resume = tuple(f for f in run_config.MAY_CHANGE_ON_RESUME if f != "dequantizer.")

  def __init__(self, config: Config, score_workdir: str, checkpoint: Optional[str] = None,
               devices: Optional[Devices] = None):
    if datasets.is_vector_data(config):
      raise ValueError("--mode train_dequantizer dequantizes images; vector (toy) data are "
                       "continuous and need none.")
    super().__init__(_loop_config(config), devices)
    config = self.config
    deq = config.dequantizer
    if deq.n_iters < 1 or deq.batch_size < 1:
      raise ValueError("dequantizer.n_iters and dequantizer.batch_size must be >= 1.")
    self.sde = builders.build_sde(config)
    self._train_data = datasets.get_dataset(
        config, split="train", batch_size=deq.batch_size, train=True, shuffle_seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    score_model, _, score_template = builders.init_state(config, self.devices)
    if builders.is_exact_score(score_model):
      raise ValueError("--mode train_dequantizer needs a trained network; model.name = "
                       "'exact_score' has no checkpoint.")
    parameters.check_available(config, score_workdir, checkpoint, False)
    self.score = parameters.sampling_parameters(config, score_workdir, checkpoint, False,
                                                score_model, score_template)
    self.model, optimizer, state = _initial_state(config)
    self.state = jax.device_put(state, self.devices.replicated)
    # Images stay in data space: the loss needs their integer levels.
    self.scaler = lambda x: x
    self._score_fn_of = builders.build_score_fn(config, self.sde, score_model, self.devices)
    self._draw = likelihood.get_bound_draw_fn(self.sde, eps=float(config.training.eps))
    self._num_bits = int(config.data.get("num_bits", 8))
    self._data_scaler, _ = datasets.data_scalers(config)
    self._offset = dequantization.bits_offset("variational", config.data.centered,
                                              self._num_bits)

    def loss_fn(params: Params, rng: jax.Array, batch: Dict[str, Any]):
      score_fn = self._score_fn_of(batch["score_params"])
      objective = dequantization.get_loss_fn(
          self.model, lambda key, y: self._draw(key, score_fn, y), num_bits=self._num_bits,
          scaler=self._data_scaler, offset=self._offset)
      return objective(params, rng, batch["images"])

    step = losses.get_step_fn(loss_fn, optimizer, train=True, ema_rate=float(deq.ema_rate),
                              has_aux=True)
    self._steps = builders.compile_train_steps(
        lambda state, images, score_params: step(state, {"images": images,
                                                         "score_params": score_params}),
        self.state, self.devices, frozen=self.score.params)

  def describe_run(self) -> str:
    return f"the variational dequantizer ({self.num_params:,} parameters) of {self.score.name}"

  def batches(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    return iter(self._train_data.starting_at(start_step))

  def train_steps(self, state: losses.TrainState, batches) -> Tuple[losses.TrainState, Metrics]:
    return self._steps(state, batches)

  def describe_metrics(self, metrics: Dict[str, float]) -> str:
    return (f"bound {metrics['loss']:.4f} bits/dim (log q {metrics['log_q']:.4f} bits/dim; 0 is "
            "uniform)")

  def finish(self, workdir: str) -> Dict[str, Any]:
    """The bound with uniform and with the trained dequantizer on test images (module
    docstring), written to ``dequantizer_eval.json``."""
    config = self.config
    count = min(int(config.eval.batch_size), _REPORT_IMAGES)
    batch = datasets.get_dataset(config, split="test", batch_size=count, train=False,
                                 prefetch=0).batch(0)
    images = jnp.asarray(batch["image"][batch["mask"] > 0])
    score_fn = self._score_fn_of(self.score.params)
    flow = functools.partial(self.model.apply, self.state.ema_params)

    @functools.partial(jax.jit, static_argnames="kind")
    def bits(rng, kind):
      dq_rng, nll_rng = jax.random.split(rng)
      y, log_q = dequantization.dequantize(dq_rng, images, kind=kind, num_bits=self._num_bits,
                                           scaler=self._data_scaler, flow=flow)
      nats = self._draw(nll_rng, score_fn, y) + log_q
      return nats / (np.prod(images.shape[1:]) * np.log(2.0)) + self._offset

    keys = jax.random.split(jax.random.PRNGKey(config.seed + 5), _REPORT_DRAWS)
    # Same keys: the same times, noise and uniform draws for both, so the difference is paired.
    uniform = np.mean([np.asarray(bits(k, "uniform")) for k in keys], axis=0)
    variational = np.mean([np.asarray(bits(k, "variational")) for k in keys], axis=0)

    def mean_stderr(x: np.ndarray) -> Dict[str, float]:
      return {"mean": float(x.mean()), "stderr": float(x.std(ddof=1) / np.sqrt(x.size))}

    report = {"step": int(self.state.step), "score_step": self.score.step,
              "num_test_images": int(images.shape[0]), "draws_per_image": _REPORT_DRAWS,
              "bound_bits_per_dim": {"uniform": mean_stderr(uniform),
                                     "variational": mean_stderr(variational),
                                     "variational_minus_uniform":
                                         mean_stderr(variational - uniform)}}
    logging.info("Bound on %d test images: uniform %.4f, variational %.4f bits/dim (difference "
                 "%.4f ± %.4f).", images.shape[0], uniform.mean(), variational.mean(),
                 (variational - uniform).mean(), report["bound_bits_per_dim"][
                     "variational_minus_uniform"]["stderr"])
    if jax.process_index() == 0:
      outputs.save_json(os.path.join(workdir, REPORT), report)
    return report


def train_dequantizer(config: Config, workdir: str, checkpoint: Optional[str] = None,
                      allow_config_change: bool = False) -> Optional[Dict[str, Any]]:
  """Trains (or resumes) the variational dequantizer of ``workdir``'s score model in
  ``workdir/dequantizer``; returns the final report (``dequantizer_eval.json``), or None when
  stopped by a signal."""
  return DequantizerTraining(config, workdir, checkpoint).run(os.path.join(workdir, SUBDIR),
                                                              allow_config_change)


def load_dequantizer(config: Config, workdir: str) -> Tuple[Params, Dict[str, Any]]:
  """``(ema_params, info)`` of the newest dequantizer trained in ``workdir/dequantizer``;
  ``info``: its step and the score model's step it was trained against.

  Raises:
    FileNotFoundError: none was trained there.
    ValueError: its recorded ``dequantizer`` fields differ from ``config``'s.
  """
  directory = os.path.join(workdir, SUBDIR)
  store_path = os.path.join(directory, checkpoints.SNAPSHOTS)
  if not os.path.isdir(store_path):
    raise FileNotFoundError(f"No dequantizer in {directory}: train one with python main.py "
                            f"--config CONFIG --mode train_dequantizer --workdir {workdir}.")
  run_config.check(directory, _loop_config(config), ("dequantizer.n_iters", "eval.", "sampling.",
                                                     "training.", "optim.", "data.data_dir"))
  _, _, template = _initial_state(config)
  with checkpoints.CheckpointStore(store_path, writer=False) as store:
    state = checkpoints.restore_latest([store], template)
  if state is None:
    raise FileNotFoundError(f"No dequantizer checkpoint in {store_path}; train one with "
                            f"--mode train_dequantizer --workdir {workdir}.")
  report_path = os.path.join(directory, REPORT)
  report = outputs.load_json(report_path) if os.path.exists(report_path) else {}
  return state.ema_params, {"step": int(state.step), "score_step": report.get("score_step")}


def run(config: Config, workdir: str, options: Options) -> Optional[Dict[str, Any]]:
  """``--mode train_dequantizer``."""
  return train_dequantizer(config, workdir, options.checkpoint, options.allow_config_change)
