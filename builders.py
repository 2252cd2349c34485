"""Config -> objects: the one place a config becomes an SDE, a network, an optimizer, train and
eval steps, a sampler or a bits/dim function.

``run_lib`` (train, evaluate) and the benchmarks build everything here, so a config means the
same thing everywhere. The modules the objects come from take explicit arguments and plain
callables and never read a config (``sde_lib``, ``losses``, ``sampling``, ``ode_solvers``,
``likelihood``); a network class reads its own ``config.model`` fields in ``from_config``, as in
the authors' code.

Where each config field takes effect:

====================================================  ========================================
fields                                                read by
====================================================  ========================================
``training.sde``; ``model.num_scales`` and the SDE's  :func:`build_sde` (``N = num_scales``;
``model.sigma_min/sigma_max`` or ``beta_min/max``     other constructor arguments by name)
``model.*``; ``data.image_size, num_channels, dim``;  :func:`build_model` (the network's
``training.mixed_precision, remat``                   ``from_config``; dtype and remat here;
                                                      ``model.num_classes`` checked here)
``model.name = 'exact_score'``                        :func:`is_exact_score` (below)
``optim.*``                                           :func:`build_optimizer`
``training.continuous, reduce_mean,                   :func:`build_loss_fn` and the steps
likelihood_weighting, eps, label_dropout``;           built from it
``model.ema_rate``
``sampling.*``                                        :func:`build_sampling_fn`
                                                      (:data:`SAMPLING_METHODS`)
``eval.hutchinson_type, rtol, atol``                  :func:`build_bpd_fn`
``eval.sample_metrics, inception_weights, fid_stats,  :func:`build_sample_scorer`,
mnist_classifier, inception_batch_size, is_splits,    :func:`build_class_predictor`
kid_subsets, kid_subset_size``
``data.centered``                                     :func:`data_scalers`, :func:`build_bpd_fn`
``data.*`` (source, dataset, files, augmentation)     ``datasets.get_dataset``
``training.batch_size, n_iters, *_freq, ...``;        ``run_lib`` (the train loop, evaluation)
``eval.batch_size, num_samples, *_ckpt, ...``; ``seed``
====================================================  ========================================

The exact score (``model.name = 'exact_score'``, :class:`models.exact_score.ExactScore`) is the
closed-form score of the data (a toy Gaussian mixture): it has no parameters, so
:func:`init_model` gives it ``{}`` and every function here that takes ``params`` accepts that;
:func:`build_score_fn` (and with it :func:`build_sampler` and :func:`build_bpd_fn`) returns the
closed form, and :func:`build_loss_fn` refuses it (there is nothing to train).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import controllable_generation
import datasets
import evaluation
import exact_scores
import fast_samplers
import likelihood
import losses
import sampling
import sde_lib
from evaluation import eval_cache
from evaluation import inception
from evaluation import mnist_classifier
from infra import outputs
from infra.devices import Devices, batch_apply
from infra.registry import Registry
from models import classifier as classifier_lib
from models import utils as mutils
from models.exact_score import ExactScore

Array = jax.Array
Config = ml_collections.ConfigDict
Params = Any
Shape = Tuple[int, ...]


# ----------------------------------------------------------------------------- data


def is_vector_data(config: Config) -> bool:
  """Vector (toy) data ``[B, D]`` rather than images ``[B, H, W, C]``."""
  return bool(config.data.get("dim", 0))


def input_shape(config: Config, batch_size: int = 1) -> Shape:
  """``(B, H, W, C)`` for image data, ``(B, D)`` for vector (toy) data."""
  data = config.data
  if is_vector_data(config):
    return (batch_size, data.dim)
  return (batch_size, data.image_size, data.image_size, data.num_channels)


def data_scalers(config: Config) -> Tuple[Callable, Callable]:
  """``(scaler, inverse_scaler)`` between data space ([0, 1] images) and model space.

  Images go to [-1, 1] if ``data.centered``; vector (toy) data are not images and pass as they
  are.
  """
  if is_vector_data(config):
    return (lambda x: x), (lambda x: x)
  return (datasets.get_data_scaler(config.data.centered),
          datasets.get_data_inverse_scaler(config.data.centered))


# ----------------------------------------------------------------------------- SDE and model


def build_sde(config: Config) -> sde_lib.SDE:
  """The SDE named by ``training.sde``, its constructor arguments read from ``config.model``.

  ``N`` is ``model.num_scales``; every other argument is the ``config.model`` field of its name
  (``sigma_min``, ``beta_max``, ...), so a new SDE needs no change here.
  """
  sde_class = sde_lib.SDES.get(config.training.sde)
  kwargs = {}
  for name in inspect.signature(sde_class).parameters:
    field = "num_scales" if name == "N" else name
    if field not in config.model:
      raise ValueError(f"{sde_class.__name__} needs config.model.{field}; add it to the config.")
    kwargs[name] = config.model[field]
  return sde_class(**kwargs)


# The networks that read model.num_classes.
CLASS_CONDITIONAL = ("ncsnpp", "toy_mlp")


def is_exact_score(model: nn.Module) -> bool:
  """Whether ``model`` is the parameter-free closed-form score (``model.name = 'exact_score'``)."""
  return isinstance(model, ExactScore)


def build_model(config: Config) -> nn.Module:
  """The network named by ``model.name``, in bf16 if ``training.mixed_precision`` (parameters
  stay float32) and recomputing its blocks in the backward pass if ``training.remat``."""
  model = mutils.get_model(config.model.name)(config)
  requested = config.model.get("num_classes", 0)
  if requested and mutils.num_classes(model) != requested:
    raise ValueError(f"model.num_classes = {requested}: {config.model.name!r} has no class "
                     f"conditioning; class-conditional networks: {', '.join(CLASS_CONDITIONAL)}.")
  if is_exact_score(model):
    return model  # no network to run in bf16 or to recompute
  fields = {field.name for field in dataclasses.fields(model)}
  options = {}
  if config.training.get("mixed_precision", False):
    options["dtype"] = jnp.bfloat16
  if config.training.get("remat", False):
    if "remat" not in fields:
      raise ValueError(f"training.remat is implemented for the ncsnpp network only, not for "
                       f"{config.model.name!r}; set --config.training.remat=False.")
    options["remat"] = True
  return model.clone(**options) if options else model


def init_model(rng: Array, config: Config) -> Tuple[nn.Module, Params]:
  """Builds the network and initializes its parameters. Returns ``(model, params)``; the
  parameters of the exact score are ``{}``."""
  model = build_model(config)
  if is_exact_score(model):
    return model, {}
  params_rng, dropout_rng = jax.random.split(rng)
  x = jnp.zeros(input_shape(config), jnp.float32)
  labels = jnp.ones((1,), jnp.float32)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": params_rng, "dropout": dropout_rng}, x, labels, train=False)
  return model, variables["params"]


# ----------------------------------------------------------------------------- training

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
# One optimizer under the authors' two names: decoupled weight decay when optim.weight_decay > 0.
OPTIMIZERS.add("adam", losses.get_optimizer)
OPTIMIZERS.add("adamw", losses.get_optimizer)


def build_optimizer(config: Config) -> optax.GradientTransformation:
  optim = config.optim
  return OPTIMIZERS.get(optim.optimizer)(
      optim.lr, beta1=optim.beta1, eps=optim.eps, weight_decay=optim.weight_decay,
      warmup=optim.warmup, grad_clip=optim.grad_clip)


def init_state(config: Config, devices: Devices
               ) -> Tuple[nn.Module, optax.GradientTransformation, losses.TrainState]:
  """The network, the optimizer and the replicated initial train state for ``config.seed``."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model, params = init_model(init_rng, config)
  optimizer = build_optimizer(config)
  return model, optimizer, devices.put(losses.init_train_state(state_rng, params, optimizer))


def build_loss_fn(config: Config, sde: sde_lib.SDE, model: nn.Module,
                  train: bool) -> losses.LossFn:
  """The loss of ``model``'s parameters; one-line ``ValueError`` for the exact score."""
  if is_exact_score(model):
    raise ValueError("model.name = 'exact_score' is the closed-form score of the data: it has no "
                     "parameters to train or evaluate a loss of; draw samples with --mode sample "
                     "(no checkpoint needed).")
  training = config.training
  return losses.get_loss_fn(sde, model, train=train, continuous=training.continuous,
                            reduce_mean=training.reduce_mean,
                            likelihood_weighting=training.likelihood_weighting, eps=training.eps,
                            label_dropout=training.get("label_dropout", 0.0))


def _replicated_like(state: losses.TrainState, devices: Devices) -> Any:
  """The sharding pytree of a replicated ``state``."""
  return jax.tree_util.tree_map(lambda _: devices.replicated, state)


def build_train_step(config: Config, sde: sde_lib.SDE, model: nn.Module,
                     optimizer: optax.GradientTransformation) -> losses.StepFn:
  """The pure ``train_step(state, batch: [B, ...]) -> (state, loss)``."""
  return losses.get_step_fn(build_loss_fn(config, sde, model, train=True), optimizer,
                            train=True, ema_rate=config.model.ema_rate)


def build_train_steps(config: Config, sde: sde_lib.SDE, model: nn.Module,
                      optimizer: optax.GradientTransformation, state: losses.TrainState,
                      devices: Devices) -> Callable[..., Tuple[losses.TrainState, Array]]:
  """``steps(state, batches) -> (state, losses: [n])``, compiled, state donated; ``batches`` is a
  ``losses.Batch`` of ``n`` stacked batches (leaves ``[n, B, ...]``).

  ``state`` is read for its structure only. On accelerators the ``n`` steps are one compiled
  ``lax.scan`` (``training.n_jitted_steps`` per call). XLA:CPU runs convolutions inside a loop
  about 8x slower than outside one (DDPM++ on MNIST, 2 cores: 3.3 s vs 0.43 s per step), so on
  CPU each step is its own call of one compiled step -- the same arithmetic, in the same order.
  """
  train_step = build_train_step(config, sde, model, optimizer)
  state_sharding = _replicated_like(state, devices)
  if jax.default_backend() != "cpu":
    return jax.jit(losses.get_multi_step_fn(train_step),
                   in_shardings=(state_sharding, devices.stacked_batch),
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)
  single = jax.jit(train_step, in_shardings=(state_sharding, devices.batch),
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)

  def steps(state, batches):
    step_losses = []
    for i in range(jax.tree_util.tree_leaves(batches)[0].shape[0]):
      state, loss = single(state, jax.tree_util.tree_map(lambda b, i=i: b[i], batches))
      step_losses.append(loss)
    return state, jnp.stack(step_losses)

  return steps


def build_eval_step(config: Config, sde: sde_lib.SDE, model: nn.Module,
                    optimizer: optax.GradientTransformation, state: losses.TrainState,
                    devices: Devices) -> losses.StepFn:
  """``eval_step(state, batch) -> (state, loss)`` of the EMA parameters, jitted."""
  state_sharding = _replicated_like(state, devices)
  eval_step = losses.get_step_fn(build_loss_fn(config, sde, model, train=False), optimizer,
                                 train=False, ema_rate=config.model.ema_rate)
  return jax.jit(eval_step, in_shardings=(state_sharding, devices.batch),
                 out_shardings=(state_sharding, devices.replicated))


# ----------------------------------------------------------------------------- sampling


def build_score_fn(config: Config, sde: sde_lib.SDE, model: nn.Module,
                   devices: Devices) -> Callable[[Params], sde_lib.ScoreFn]:
  """``params -> score_fn(x, t)`` of the network in evaluation mode, inputs kept batch-sharded
  (``training.continuous`` picks continuous or integer-level conditioning). For the exact score
  it is the closed form at continuous ``t``, whatever ``params`` (``{}``) and
  ``training.continuous``."""

  def score_fn_of(params: Params) -> sde_lib.ScoreFn:
    if is_exact_score(model):
      score_fn = model.score_fn(sde)
    else:
      score_fn = mutils.get_score_fn(sde, model, params, train=False,
                                     continuous=config.training.continuous)
    return lambda x, t: score_fn(devices.constrain(x), t)

  return score_fn_of


SamplerFactory = Callable[[sde_lib.SDE, Shape, Config, Optional[int], int], sampling.SampleFn]
SAMPLING_METHODS: Registry[SamplerFactory] = Registry("sampling method")
"""``sampling.method`` -> ``factory(sde, shape, config.sampling, num_steps, num_frames) ->
sample``."""


@SAMPLING_METHODS.register("pc")
def _pc_sampler(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
                num_frames: int) -> sampling.SampleFn:
  """Predictor-corrector: ``predictor``, ``corrector``, ``snr``, ``n_steps_each``,
  ``probability_flow``, ``noise_removal``, ``eps``; ``num_steps`` (default ``sde.N``) steps."""
  return sampling.get_pc_sampler(sde, shape, cfg.predictor, cfg.corrector, snr=cfg.snr,
                                 n_steps=cfg.n_steps_each, probability_flow=cfg.probability_flow,
                                 denoise=cfg.noise_removal, eps=cfg.eps, num_steps=num_steps,
                                 num_frames=num_frames)


@SAMPLING_METHODS.register("ode")
def _ode_sampler(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
                 num_frames: int) -> sampling.SampleFn:
  """Probability-flow ODE: ``ode_solver``, ``ode_rtol``, ``ode_atol``, ``noise_removal``,
  ``eps``; ``num_steps`` (default ``sde.N``) for the fixed-step solvers."""
  ode_sample = sampling.get_ode_sampler(sde, shape, rtol=cfg.ode_rtol, atol=cfg.ode_atol,
                                        method=cfg.ode_solver, eps=cfg.eps,
                                        denoise=cfg.noise_removal, num_steps=num_steps,
                                        num_frames=num_frames)
  return lambda rng, score_fn: ode_sample(rng, score_fn)


@SAMPLING_METHODS.register("ddim")
def _ddim_sampler(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
                  num_frames: int) -> sampling.SampleFn:
  """DDIM: ``eta``, ``schedule`` (empty: ``quadratic_t``), ``rho``, ``noise_removal``, ``eps``;
  ``num_steps`` (default ``sampling.steps``) steps."""
  sample = fast_samplers.get_ddim_sampler(
      sde, shape, eta=cfg.eta, num_steps=cfg.steps if num_steps is None else num_steps,
      schedule=cfg.schedule or None, rho=cfg.rho, eps=cfg.eps, denoise=cfg.noise_removal,
      num_frames=num_frames)
  return lambda rng, score_fn: sample(rng, score_fn)


@SAMPLING_METHODS.register("dpm_solver")
def _dpm_solver_sampler(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
                        num_frames: int) -> sampling.SampleFn:
  """DPM-Solver++: ``order``, ``multistep``, ``schedule`` (empty: ``logsnr``), ``rho``,
  ``noise_removal``, ``eps``; ``num_steps`` (default ``sampling.steps``) steps."""
  sample = fast_samplers.get_dpm_solver_sampler(
      sde, shape, order=cfg.order, multistep=cfg.multistep,
      num_steps=cfg.steps if num_steps is None else num_steps, schedule=cfg.schedule or None,
      rho=cfg.rho, eps=cfg.eps, denoise=cfg.noise_removal, num_frames=num_frames)
  return lambda rng, score_fn: sample(rng, score_fn)


@SAMPLING_METHODS.register("edm_heun")
def _edm_heun_sampler(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
                      num_frames: int) -> sampling.SampleFn:
  """EDM's Heun sampler: ``s_churn``, ``s_min``, ``s_max``, ``s_noise``, ``schedule`` (empty:
  ``karras``), ``rho``, ``noise_removal``, ``eps``; ``num_steps`` (default ``sampling.steps``)
  steps of two evaluations."""
  sample = fast_samplers.get_edm_heun_sampler(
      sde, shape, s_churn=cfg.s_churn, s_min=cfg.s_min, s_max=cfg.s_max, s_noise=cfg.s_noise,
      num_steps=cfg.steps if num_steps is None else num_steps, schedule=cfg.schedule or None,
      rho=cfg.rho, eps=cfg.eps, denoise=cfg.noise_removal, num_frames=num_frames)
  return lambda rng, score_fn: sample(rng, score_fn)


def build_sampling_fn(config: Config, sde: sde_lib.SDE, shape: Shape,
                      num_steps: Optional[int] = None, num_frames: int = 0) -> sampling.SampleFn:
  """``sample(rng, score_fn) -> (x: shape, nfe)`` of ``sampling.method``, not jitted.

  ``num_steps`` overrides the number of steps (default ``sde.N``, i.e. ``model.num_scales``).
  ``num_frames = K > 0`` adds the sampler's :class:`sampling.Trajectory` (``K`` frames from ``T``
  to the end; ``sampling``'s docstring gives the frame times): ``(x, nfe, trajectory)``.
  """
  factory = SAMPLING_METHODS.get(config.sampling.method)
  return factory(sde, shape, config.sampling, num_steps, num_frames)


def build_sampler(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                  batch_size: int, num_steps: Optional[int] = None, num_frames: int = 0
                  ) -> Callable[[Array, Params], sampling.SampleOutput]:
  """``sample(rng, params) -> (samples: [batch_size, ...], nfe)``, jitted, samples sharded.

  Samples are in model space (apply :func:`data_scalers`' inverse for data space). The
  parameters are an argument, so new parameters do not recompile. With ``num_frames = K > 0``
  it returns ``(samples, nfe, trajectory)``: ``trajectory.t: [K]`` replicated and
  ``trajectory.x: [K, batch_size, ...]`` (model space) sharded along its batch axis like the
  samples; ``devices.gather`` reads either on the host.
  """
  sampling_fn = build_sampling_fn(config, sde, input_shape(config, batch_size), num_steps,
                                  num_frames)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def sample(rng, params):
    return sampling_fn(rng, score_fn_of(params))

  out_shardings = (devices.batch, None)
  if num_frames:
    out_shardings += (sampling.Trajectory(t=devices.replicated, x=devices.stacked_batch),)
  return jax.jit(sample, out_shardings=out_shardings)


def build_ode_codec(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                    num_frames: int = 0) -> Tuple[Callable[[Params, Array], Tuple[Array, Array]],
                                                  Callable[..., sampling.SampleOutput]]:
  """The probability-flow ODE as an encoder and its decoder, jitted: ``encode(params, x) ->
  (z, nfe)`` integrates from ``sampling.eps`` to ``T`` and ``decode(params, z) -> (x, nfe)``
  back, with ``sampling.ode_solver``, ``ode_rtol`` and ``ode_atol`` and no final denoising (so
  that decoding inverts encoding). ``x, z: [B, ...]`` in model space, any batch size.
  ``num_frames = K > 0``: ``decode`` also returns its :class:`sampling.Trajectory`."""
  cfg = config.sampling
  solver = dict(rtol=cfg.ode_rtol, atol=cfg.ode_atol, method=cfg.ode_solver, eps=cfg.eps)
  encoder = sampling.get_ode_encoder(sde, **solver)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def encode(params, x):
    return encoder(score_fn_of(params), x)

  def decode(params, z):
    ode_sample = sampling.get_ode_sampler(sde, z.shape, denoise=False, num_frames=num_frames,
                                          **solver)
    return ode_sample(None, score_fn_of(params), z)

  return jax.jit(encode), jax.jit(decode)


# ----------------------------------------------------------------------------- controlled sampling


def check_replacement_sampler(config: Config, task: str) -> None:
  """Replacement (inpainting, colorization) is built on the PC loop: one-line error otherwise."""
  if str(config.sampling.method).lower() != "pc":
    raise ValueError(f"{task} runs the predictor-corrector sampler; set "
                     f"--config.sampling.method=pc (got {config.sampling.method!r}; any "
                     "predictor and corrector work).")


def _jit_batch_sharded(fn: Callable[..., Tuple[Array, Array]], devices: Devices) -> Callable:
  return jax.jit(fn, out_shardings=(devices.batch, None))


def build_inpainter(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices
                    ) -> Callable[[Array, Params, Array, Array], Tuple[Array, Array]]:
  """``inpaint(rng, params, data, mask) -> (x, nfe)``, jitted, ``x`` batch-sharded.

  ``controllable_generation.get_pc_inpainter`` with ``config.sampling``'s predictor, corrector,
  ``snr``, ``n_steps_each``, ``probability_flow``, ``noise_removal`` and ``eps`` over ``sde.N``
  steps. ``data: [B, ...]`` in model space, ``mask: [B, ...]`` 1 where ``data`` is known; ``x``
  equals ``data`` there. Parameters and data are arguments: one compilation per batch shape.
  """
  check_replacement_sampler(config, "Inpainting")
  cfg = config.sampling
  inpaint = controllable_generation.get_pc_inpainter(
      sde, cfg.predictor, cfg.corrector, snr=cfg.snr, n_steps=cfg.n_steps_each,
      probability_flow=cfg.probability_flow, denoise=cfg.noise_removal, eps=cfg.eps)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def run(rng, params, data, mask):
    return inpaint(rng, score_fn_of(params), data, mask)

  return _jit_batch_sharded(run, devices)


def build_colorizer(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices
                    ) -> Callable[[Array, Params, Array], Tuple[Array, Array]]:
  """``colorize(rng, params, gray) -> (x, nfe)``, jitted, ``x`` batch-sharded.

  ``controllable_generation.get_pc_colorizer`` with the settings :func:`build_inpainter` reads;
  ``gray: [B, H, W, C]`` in model space, of which only the grey component (the channel mean) is
  read; ``x`` has that grey component and sampled colour.
  """
  check_replacement_sampler(config, "Colorization")
  cfg = config.sampling
  colorize = controllable_generation.get_pc_colorizer(
      sde, cfg.predictor, cfg.corrector, num_channels=int(config.data.num_channels),
      snr=cfg.snr, n_steps=cfg.n_steps_each, probability_flow=cfg.probability_flow,
      denoise=cfg.noise_removal, eps=cfg.eps)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def run(rng, params, gray):
    return colorize(rng, score_fn_of(params), gray)

  return _jit_batch_sharded(run, devices)


def sde_settings(config: Config) -> dict:
  """What ``x(t)`` and the noise label depend on: ``training.sde``, the SDE's constructor fields
  of ``config.model`` except ``num_scales`` (a continuous-time model is used at any number of
  steps), ``data.centered`` and the data's shape."""
  sde_class = sde_lib.SDES.get(config.training.sde)
  fields = [name for name in inspect.signature(sde_class).parameters if name != "N"]
  return {"training.sde": str(config.training.sde).lower(),
          **{f"model.{name}": config.model.get(name) for name in fields},
          "data.centered": bool(config.data.centered), "shape": list(input_shape(config)[1:])}


def check_classifier_config(config: Config, classifier_config: Config) -> None:
  """Raises a one-line ``ValueError`` unless the classifier of ``classifier_config`` was trained on
  the ``x(t)`` the score model of ``config`` samples (same :func:`sde_settings`)."""
  ours, theirs = sde_settings(config), sde_settings(classifier_config)
  changed = [f"{name}: {theirs.get(name)!r} (classifier) vs {ours.get(name)!r} (score model)"
             for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name)]
  if changed:
    raise ValueError(f"the classifier config does not fit the score model: {'; '.join(changed)}; "
                     "train the classifier with the score model's SDE, data scaling and shape.")


def build_guided_sampler(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                         batch_size: int, classifier_model: nn.Module,
                         num_steps: Optional[int] = None
                         ) -> Callable[[Array, Params, Params, Array, Array],
                                       sampling.SampleOutput]:
  """``sample(rng, params, classifier_params, labels: [batch_size], scale) -> (x, nfe)``, jitted.

  Any ``sampling.method`` of :func:`build_sampling_fn` (``num_steps`` as there), driven by
  ``controllable_generation.classifier_guided_score``: the model's score plus ``scale`` (a
  scalar argument, so every scale runs the same compiled program) times ``grad_x log p_t(labels |
  x)`` of the noise-conditional classifier, which is given the SDE's own noise label
  (``models.classifier.get_log_prob_fn``). ``nfe`` counts guided score evaluations (each one
  score and one classifier gradient). ``x`` in model space, batch-sharded.
  """
  sampling_fn = build_sampling_fn(config, sde, input_shape(config, batch_size), num_steps)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def sample(rng, params, classifier_params, labels, scale):
    log_prob_fn = classifier_lib.get_log_prob_fn(sde, classifier_model, classifier_params)
    guided = controllable_generation.classifier_guided_score(score_fn_of(params), log_prob_fn,
                                                             labels, scale)
    return sampling_fn(rng, guided)

  return _jit_batch_sharded(sample, devices)


def build_cfg_sampler(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                      batch_size: int, num_steps: Optional[int] = None
                      ) -> Callable[[Array, Params, Array, Array], sampling.SampleOutput]:
  """``sample(rng, params, labels: [batch_size], weight) -> (x, nfe)``, jitted: classifier-free
  guidance of a class-conditional network (``model.num_classes > 0``, trained with label
  dropout), ``(1 + weight) s(x, t, labels) - weight s(x, t)``, the unconditional score being
  the network given its null label (``controllable_generation.classifier_free_guided_score``).

  ``weight`` is a traced scalar, so every weight runs the same compiled program, which evaluates
  both scores (``weight = 0``, the conditional model, included). Any ``sampling.method``;
  ``nfe`` counts guided score evaluations (each two network evaluations). ``x`` in model space,
  batch-sharded.
  """
  classes = mutils.num_classes(model)
  if not classes:
    raise ValueError("classifier-free guidance needs a class-conditional model "
                     "(model.num_classes > 0, trained with labels).")
  sampling_fn = build_sampling_fn(config, sde, input_shape(config, batch_size), num_steps)
  continuous = config.training.continuous

  def sample(rng, params, labels, weight):
    conditional = controllable_generation.get_conditional_score_fn(sde, model, params,
                                                                   continuous)

    def constrained(x, t, y):
      return conditional(devices.constrain(x), t, y)

    guided = controllable_generation.classifier_free_guided_score(
        constrained, controllable_generation.unconditional_score_fn(constrained, classes),
        labels, weight)
    return sampling_fn(rng, guided)

  return _jit_batch_sharded(sample, devices)


# ----------------------------------------------------------------------------- likelihood


def bpd_offset_bits(config: Config) -> float:
  """Bits/dim added for uniform dequantization of 8-bit images; 0 for continuous vector data."""
  if is_vector_data(config):
    return 0.0
  return likelihood.dequantization_offset(config.data.centered)


def build_bpd_fn(config: Config, sde: sde_lib.SDE, model: nn.Module,
                 devices: Devices) -> Callable[[Array, Params, Array], Tuple[Array, Array]]:
  """``bpd_fn(rng, params, images) -> (bpd: [B], nfe)``, jitted; ``images`` in data space.

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
  score_fn_of = build_score_fn(config, sde, model, devices)

  @functools.partial(jax.jit, out_shardings=(devices.batch, None))
  def bpd_fn(rng, params, images):
    dq_rng, rng = jax.random.split(rng)
    if not vector:
      images = (images * 255.0 + jax.random.uniform(dq_rng, images.shape)) / 256.0
    bpd, _, nfe = likelihood_fn(rng, score_fn_of(params), scaler(images))
    return bpd, nfe

  return bpd_fn


# ----------------------------------------------------------------------------- sample quality

SAMPLE_METRICS = ("auto", "inception", "mnist_classifier", "none")
ENV_INCEPTION_WEIGHTS = "SCORE_SDE_INCEPTION_WEIGHTS"


class SampleScorer(NamedTuple):
  """How an evaluation scores image samples (``eval.sample_metrics``).

  Attributes:
    name: ``'inception'`` or ``'mnist_classifier'``; also the name of the cached feature pieces.
    feature_fn: ``batch -> (features: [n, F], logits: [n, K])`` of a process-local batch
      ``{'image': [local_B, H, W, C] in [0, 1], 'mask': [local_B]}``, padding rows dropped
      (``evaluation.reference_statistics``' ``feature_fn``).
    metrics: ``(features, logits) -> {name: value}`` against the reference statistics.
    settings: what the features depend on besides the samples (the network's weights), for
      ``eval_cache``.
  """
  name: str
  feature_fn: Callable[[Any], Tuple[Any, Any]]
  metrics: Callable[[Any, Any], dict]
  settings: dict


def _sample_metrics_kind(config: Config) -> str:
  kind = str(config.eval.sample_metrics).lower()
  if kind not in SAMPLE_METRICS:
    raise ValueError(f"eval.sample_metrics = {config.eval.sample_metrics!r}; choose one of "
                     f"{', '.join(SAMPLE_METRICS)}.")
  if kind == "auto" and not is_vector_data(config):
    return "mnist_classifier" if _is_mnist(config) else "inception"
  return "none" if kind == "auto" else kind


def _is_mnist(config: Config) -> bool:
  """Whether the data are 28 x 28 MNIST digits (what the MNIST classifier reads)."""
  return (not is_vector_data(config) and str(config.data.dataset).lower() == "mnist"
          and input_shape(config)[1:] == (28, 28, 1))


def inception_weights_path(config: Config) -> str:
  """``eval.inception_weights``, else ``$SCORE_SDE_INCEPTION_WEIGHTS``; "" when neither is set."""
  return str(config.eval.inception_weights or os.environ.get(ENV_INCEPTION_WEIGHTS, ""))


def fid_stats_path(config: Config) -> str:
  """``eval.fid_stats``, else the cache's ``fid_stats/<dataset>_<H>x<W>x<C>_train.npz`` that
  ``--mode fid_stats`` writes."""
  if config.eval.fid_stats:
    return str(config.eval.fid_stats)
  _, h, w, c = input_shape(config)
  return os.path.join(outputs.cache_root(), "fid_stats",
                      f"{str(config.data.dataset).lower()}_{h}x{w}x{c}_train.npz")


def file_digest(path: str) -> str:
  """SHA-256 of a file's bytes (first 16 hex digits): which weights a cached result used."""
  sha = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      sha.update(block)
  return sha.hexdigest()[:16]


def _chunked(feature_fn, chunk: int):
  """``feature_fn`` over a local batch in pieces of at most ``chunk`` rows (memory: the
  Inception network holds 299 x 299 activations per image)."""

  def chunked(batch):
    n = len(batch["image"])
    mask = batch.get("mask", np.ones(n, np.float32))
    parts = [feature_fn({"image": batch["image"][i:i + chunk], "mask": mask[i:i + chunk]})
             for i in range(0, n, chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  return chunked


def build_inception_features(config: Config, devices: Devices) -> Tuple[Callable, dict]:
  """The Inception ``feature_fn`` (chunks of ``eval.inception_batch_size``) and its settings.

  Raises:
    ValueError: in one line saying how to configure the weights, when none are configured.
  """
  weights = inception_weights_path(config)
  if not weights:
    raise ValueError(
        "no Inception weights configured: download pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth and pass --config.eval.inception_weights=PATH (or "
        f"set {ENV_INCEPTION_WEIGHTS}); without torch, convert it once where torch is installed: "
        f"{inception.COMMAND} --convert PATH --out inception_fid.npz")
  chunk = devices.round_batch(int(config.eval.inception_batch_size))
  feature_fn = inception.make_feature_fn(inception.load_inception(weights), devices)
  return _chunked(feature_fn, chunk), {"metrics.inception_weights": file_digest(weights)}


def build_sample_scorer(config: Config, devices: Devices) -> Tuple[Optional[SampleScorer], str]:
  """``(scorer, "")``, or ``(None, why)`` with one line saying why samples get no quality
  numbers and how to get them (never an exception for a missing optional file).

  ``eval.sample_metrics``: ``'inception'`` (FID / IS / KID against :func:`fid_stats_path`, with
  ``eval.is_splits``, ``kid_subsets``, ``kid_subset_size``), ``'mnist_classifier'`` (the MNIST
  classifier's Frechet distance, KID, class histogram and Inception-Score analogue against the
  test split; the classifier is trained on first use, ``eval.mnist_classifier`` or the cache),
  ``'auto'`` (the classifier for 28 x 28 MNIST, Inception for other images, nothing for
  vectors) or ``'none'``.
  """
  ev = config.eval
  kind = _sample_metrics_kind(config)
  if kind == "none":
    return None, ""
  kid = dict(kid_subsets=int(ev.kid_subsets), kid_subset_size=int(ev.kid_subset_size),
             seed=int(config.seed))
  if kind == "mnist_classifier":
    # Several processes would each train and write the same file: only a single one trains.
    try:
      trained = mnist_classifier.load_or_train(
          str(ev.mnist_classifier), lambda split: datasets.load_split(config, split),
          train_if_missing=jax.process_count() == 1)
    except FileNotFoundError as e:
      return None, f"MNIST sample metrics not computed: {e}"
    params = trained.params
    test = datasets.load_split(config, "test").images
    reference = mnist_classifier.reference_statistics(params, test)
    feature_fn = batch_apply(mnist_classifier.features_and_logits, params, devices)
    return SampleScorer(
        kind, feature_fn,
        lambda f, l: mnist_classifier.metrics_from_features(
            f, l, reference, num_splits=_splits(ev, l), **kid),
        {"metrics.mnist_classifier": eval_cache.tree_digest(params)}), ""
  try:
    feature_fn, settings = build_inception_features(config, devices)
  except ValueError as e:
    return None, f"FID/IS/KID not computed: {e}"
  stats_path = fid_stats_path(config)
  if not os.path.isfile(stats_path):
    return None, (f"FID/IS/KID not computed: no reference statistics at {stats_path}; compute "
                  "them once with --mode fid_stats (same --config), or pass the authors' "
                  "--config.eval.fid_stats=cifar10_stats.npz")
  reference = evaluation.load_statistics(stats_path)
  recorded = reference_settings(stats_path)
  if recorded is not None and recorded != reference_settings_of(config, settings):
    changed = eval_cache.differences(recorded, reference_settings_of(config, settings))
    return None, (f"FID/IS/KID not computed: the reference statistics {stats_path} were computed "
                  f"with other settings ({'; '.join(changed)}); recompute them with --mode "
                  "fid_stats")
  return SampleScorer(
      kind, feature_fn,
      lambda f, l: evaluation.inception_metrics(f, l, reference, num_splits=_splits(ev, l),
                                                **kid),
      settings), ""


def build_class_predictor(config: Config) -> Tuple[Optional[Callable[[np.ndarray], np.ndarray]],
                                                   str]:
  """``(predict, "")`` with ``predict(x: [N, ...] in data space) -> int [N]``, the class a
  classifier of the data sees in each example, or ``(None, why)``: what a guided sample of class
  ``k`` is checked against. It exists for 28 x 28 MNIST (the MNIST classifier of
  ``eval.mnist_classifier`` or the cache, 99.3 % test accuracy; trained on first use; images
  read at their 8-bit levels) and for the toy mixtures (the exact posterior over components,
  which are the toys' classes). ``eval.sample_metrics = 'none'`` turns the check off."""
  if _sample_metrics_kind(config) == "none" and not is_vector_data(config):
    return None, "classes of the samples not checked (eval.sample_metrics = 'none')"
  if is_vector_data(config):
    if str(config.data.dataset).lower() not in exact_scores.MIXTURE_TOYS:
      return None, ("no classifier to check the samples' classes (MNIST and the toys "
                    f"{', '.join(exact_scores.MIXTURE_TOYS)})")
    # At t = 0 the VP marginal is the data: the exact classifier of the mixture's components.
    log_posterior = exact_scores.gaussian_mixture_log_posterior(
        sde_lib.VPSDE(), *exact_scores.toy_mixture(config.data.dataset))
    return (lambda x: np.argmax(np.asarray(log_posterior(jnp.asarray(x), jnp.zeros(len(x)))),
                                axis=-1).astype(np.int32)), ""
  if not _is_mnist(config):
    return None, "no classifier to check the samples' classes (MNIST and the mixture toys)"
  try:
    trained = mnist_classifier.load_or_train(
        str(config.eval.mnist_classifier), lambda split: datasets.load_split(config, split),
        train_if_missing=jax.process_count() == 1)
  except FileNotFoundError as e:
    return None, f"classes of the samples not checked: {e}"

  def predict(images: np.ndarray) -> np.ndarray:
    images = np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0  # what the PNGs hold
    _, logits = mnist_classifier.batched_features_and_logits(trained.params, images)
    return np.argmax(logits, axis=-1).astype(np.int32)

  return predict, ""


def _splits(ev: Config, logits) -> int:
  """``eval.is_splits``, at most one split per sample (a short evaluation still gets a score)."""
  return max(1, min(int(ev.is_splits), len(logits)))


def reference_settings_of(config: Config, inception_settings: dict) -> dict:
  """What FID reference statistics depend on: the data set, its split and image size, how the
  images were fitted, and the Inception weights."""
  data = config.data
  return eval_cache.canonical({
      "data.dataset": str(data.dataset).lower(), "data.source": str(data.get("source", "")),
      "data.image_size": int(data.image_size), "data.num_channels": int(data.num_channels),
      "split": "train", **inception_settings})


def reference_settings(stats_path: str) -> Optional[dict]:
  """The settings ``--mode fid_stats`` recorded beside ``stats_path`` (None for a file it did
  not write, such as the authors' ``cifar10_stats.npz``)."""
  info = os.path.splitext(stats_path)[0] + ".json"
  return outputs.load_json(info) if os.path.isfile(info) else None
