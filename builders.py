"""Config -> objects: the one place a config becomes an SDE, a network, an optimizer, train and
eval steps, a sampler or a bits/dim function.

The modes (``modes/``), the command-line tools, the benchmarks and the experiments build
everything here, so a config means the same thing everywhere. The modules the objects come from
take explicit arguments and plain callables and never read a config (``sde_lib``, ``losses``,
``sampling``, ``fast_samplers``, ``ode_solvers``, ``likelihood``, ``controllable_generation``); a
network class reads its own ``config.model`` fields in ``from_config``, as in the authors' code.

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
likelihood_weighting, eps, label_dropout, objective,  built from it; the classifier's:
time_sampling, logit_normal_*``; ``model.ema_rate``   :func:`build_classifier_train_steps`
``model.prediction``                                  :func:`build_loss_fn`,
                                                      :func:`build_score_fn` (what the network
                                                      outputs: ``models.predictions``)
``sampling.*``                                        :func:`build_sampling_fn`
                                                      (:data:`SAMPLING_METHODS`);
                                                      :func:`sampler_tag` names it
``eval.hutchinson_type, rtol, atol``                  :func:`build_bpd_fn`
``eval.enable_bound, bound_num_draws,                 :func:`build_bound_fn` (enabled by
bound_time_sampling``                                 ``modes.evaluate``)
``eval.dequantization``; ``data.centered, num_bits``  :func:`build_dequantize_fn`,
                                                      :func:`bpd_offset_bits` (and
                                                      ``datasets.data_scalers``)
``dequantizer.*``                                     :func:`build_dequantizer`;
                                                      ``modes.train_dequantizer``
``data.*`` (source, dataset, files, augmentation)     ``datasets`` (``datasets/sources.py``)
``eval.sample_metrics, inception_weights, fid_stats,  ``evaluation.scorers``
mnist_classifier, inception_batch_size, is_splits,
kid_subsets, kid_subset_size``
``training.batch_size, n_iters, n_jitted_steps,       ``modes.training_loop`` (``modes.train``:
*_freq, snapshot_sampling``                           eval loss, snapshot samples)
``eval.batch_size, num_samples, *_ckpt, enable_*,     ``modes.evaluate``
bpd_*``; ``seed``
``reflow.*``                                          ``modes.reflow``
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
import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import controllable_generation
import datasets
import dequantization
import fast_samplers
import likelihood
import losses
import sampling
import sde_lib
from infra import checkpoints
from infra.devices import Devices
from infra.registry import Registry
from models import classifier as classifier_lib
from models import released
from models import utils as mutils
from models.dequantizer import Dequantizer
from models.exact_score import ExactScore

Array = jax.Array
Config = ml_collections.ConfigDict
Params = Any
Shape = Tuple[int, ...]


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
  x = jnp.zeros(datasets.input_shape(config), jnp.float32)
  labels = jnp.ones((1,), jnp.float32)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": params_rng, "dropout": dropout_rng}, x, labels, train=False)
  return model, variables["params"]


def abstract_model(config: Config) -> Tuple[nn.Module, Params]:
  """The network of ``config`` and its parameter tree as ``jax.ShapeDtypeStruct`` s (nothing is
  allocated or initialized, whatever the size); one-line ``ReleasedCheckpointError`` for the
  exact score, which has no parameters."""
  model = build_model(config)
  if is_exact_score(model):
    raise released.ReleasedCheckpointError("model.name = 'exact_score' has no parameters to load")
  shape = datasets.input_shape(config)
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(
      lambda x, y: model.init({"params": key, "dropout": key}, x, y, train=False),
      jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.float32))
  return model, variables["params"]


def noise_ladder(config: Config) -> released.NoiseLadder:
  """The noise ladder of ``config.model`` that the authors' PyTorch files record."""
  m = config.model
  return released.NoiseLadder(int(m.num_scales), float(m.sigma_min), float(m.sigma_max))


def load_released(config: Config, path: str, *, ema: bool = True
                  ) -> Tuple[nn.Module, released.Released]:
  """``(model, released)``: one of the authors' released files (Flax ``checkpoint_<k>`` or
  PyTorch ``checkpoint_<k>.pth``, :mod:`models.released`) as parameters of ``config``'s network,
  the EMA ones unless ``ema`` is False.

  Raises:
    models.released.ReleasedCheckpointError: in one line, for a file that cannot be read or does
      not fit the config's network.
    FloatingPointError: for a file holding non-finite values.
  """
  model, template = abstract_model(config)
  loaded = released.load(path, model, template, datasets.input_shape(config), ema=ema,
                         ladder=noise_ladder(config))
  bad = checkpoints.non_finite_leaves(loaded.params)
  if bad:
    raise FloatingPointError(f"{path} holds non-finite values ({bad[0]}).")
  return model, loaded


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
                            label_dropout=training.get("label_dropout", 0.0),
                            prediction=config.model.get("prediction", ""),
                            objective=training.get("objective", "dsm"),
                            time_sampling=training.get("time_sampling", "uniform"),
                            logit_normal=(training.get("logit_normal_mean", 0.0),
                                          training.get("logit_normal_std", 1.0)))


def _replicated_like(state: losses.TrainState, devices: Devices) -> Any:
  """The sharding pytree of a replicated ``state``."""
  return jax.tree_util.tree_map(lambda _: devices.replicated, state)


def build_train_step(config: Config, sde: sde_lib.SDE, model: nn.Module,
                     optimizer: optax.GradientTransformation) -> losses.StepFn:
  """The pure ``train_step(state, batch: [B, ...]) -> (state, loss)``."""
  return losses.get_step_fn(build_loss_fn(config, sde, model, train=True), optimizer,
                            train=True, ema_rate=config.model.ema_rate)


def compile_train_steps(step_fn: Callable[..., Tuple[losses.TrainState, Any]],
                        state: losses.TrainState, devices: Devices, frozen: Optional[Params] = None
                        ) -> Callable[..., Tuple[losses.TrainState, Any]]:
  """``steps(state, batches) -> (state, metrics)``, compiled, state donated: ``n`` calls of the
  pure ``step_fn(state, batch) -> (state, metrics)`` on ``batches``, a ``losses.Batch`` of ``n``
  stacked batches (leaves ``[n, B, ...]``, sharded along ``B``); ``metrics`` gets a leading
  ``[n]`` axis.

  ``frozen``: parameters every step reads and none changes (a fixed score model), replicated
  and passed to the compiled program as an argument, ``step_fn(state, batch, frozen)``, rather
  than baked into it as constants.

  ``state`` is read for its structure only. On accelerators the ``n`` steps are one compiled
  ``lax.scan`` (``training.n_jitted_steps`` per call). XLA:CPU runs convolutions inside a loop
  about 8x slower than outside one (DDPM++ on MNIST, 2 cores: 3.3 s vs 0.43 s per step), so on
  CPU each step is its own call of one compiled step -- the same arithmetic, in the same order
  -- which takes its batch out of the stack itself, on the devices that hold it.
  """
  state_sharding = _replicated_like(state, devices)
  extra = () if frozen is None else (jax.device_put(frozen, devices.replicated),)
  extra_sharding = (devices.replicated,) * len(extra)

  def bound(*frozen_args):
    return (lambda s, b: step_fn(s, b, *frozen_args)) if frozen_args else step_fn

  if jax.default_backend() != "cpu":
    multi = jax.jit(lambda state, batches, *f: losses.get_multi_step_fn(bound(*f))(state,
                                                                                   batches),
                    in_shardings=(state_sharding, devices.stacked_batch) + extra_sharding,
                    out_shardings=(state_sharding, devices.replicated), donate_argnums=0)
    return lambda state, batches: multi(state, batches, *extra)

  def train_step(state, batches, i, *f):
    """Step ``i`` on batch ``i`` of ``batches``."""
    return bound(*f)(state, jax.tree_util.tree_map(
        lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False), batches))

  single = jax.jit(train_step, in_shardings=(state_sharding, devices.stacked_batch,
                                             devices.replicated) + extra_sharding,
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)

  def steps(state, batches):
    metrics = []
    for i in range(jax.tree_util.tree_leaves(batches)[0].shape[0]):
      state, step_metrics = single(state, batches, np.int32(i), *extra)
      # One step in flight at a time: XLA:CPU's in-process collectives can deadlock when the
      # launches of consecutive multi-device steps interleave on its few launcher threads.
      jax.block_until_ready(state)
      metrics.append(step_metrics)
    return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)

  return steps


def build_train_steps(config: Config, sde: sde_lib.SDE, model: nn.Module,
                      optimizer: optax.GradientTransformation, state: losses.TrainState,
                      devices: Devices) -> Callable[..., Tuple[losses.TrainState, Array]]:
  """The score model's ``steps(state, batches) -> (state, losses: [n])``
  (:func:`compile_train_steps` of :func:`build_train_step`)."""
  return compile_train_steps(build_train_step(config, sde, model, optimizer), state, devices)


def build_classifier_train_steps(config: Config, sde: sde_lib.SDE, model: nn.Module,
                                 optimizer: optax.GradientTransformation,
                                 state: losses.TrainState, devices: Devices
                                 ) -> Callable[..., Tuple[losses.TrainState, Any]]:
  """A noise-conditional classifier's ``steps(state, batches) -> (state, {'loss', 'accuracy'}:
  [n] each)`` on ``{'image', 'label'}`` batches: cross-entropy on data perturbed by the SDE to
  ``t ~ U(training.eps, T)`` (``losses.get_classifier_loss_fn``), EMA at ``model.ema_rate``."""
  step = losses.get_step_fn(losses.get_classifier_loss_fn(sde, model, config.training.eps),
                            optimizer, train=True, ema_rate=config.model.ema_rate, has_aux=True)
  return compile_train_steps(step, state, devices)


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
                                     continuous=config.training.continuous,
                                     prediction=config.model.get("prediction", ""))
    return lambda x, t: score_fn(devices.constrain(x), t)

  return score_fn_of


SamplerFactory = Callable[[sde_lib.SDE, Shape, Config, Optional[int], int], sampling.SampleFn]
SAMPLING_METHODS: Registry[SamplerFactory] = Registry("sampling method")
"""``sampling.method`` -> ``factory(sde, shape, config.sampling, num_steps, num_frames) ->
sample``; ``sample(rng, score_fn)``, and for every method but ``pc`` also ``sample(rng,
score_fn, z)`` from given ``x(T) = z``."""


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
  return ode_sample


def _schedule(cfg: Config) -> fast_samplers.Schedule:
  """``sampling.schedule``: empty (the method's own), a name or comma-separated times."""
  return fast_samplers.parse_schedule(cfg.schedule) if cfg.schedule else None


def _fast_sampler(get_sampler: Callable[..., Callable[..., sampling.SampleOutput]],
                  own_fields: Callable[[Config], Dict[str, Any]]) -> SamplerFactory:
  """The factory of a fast sampler (``fast_samplers.get_*_sampler``): the settings they share,
  ``steps`` (or the factory's ``num_steps``), ``schedule`` (empty: the sampler's own), ``rho``,
  ``eps``, ``noise_removal``, and the ones ``own_fields(config.sampling)`` names."""

  def factory(sde: sde_lib.SDE, shape: Shape, cfg: Config, num_steps: Optional[int],
              num_frames: int) -> sampling.SampleFn:
    sample = get_sampler(sde, shape, num_steps=cfg.steps if num_steps is None else num_steps,
                         schedule=_schedule(cfg), rho=cfg.rho, eps=cfg.eps,
                         denoise=cfg.noise_removal, num_frames=num_frames, **own_fields(cfg))
    return sample

  return factory


# Each fast sampler's own sampling.* fields (their meaning: fast_samplers' get_*_sampler).
SAMPLING_METHODS.add("ddim", _fast_sampler(fast_samplers.get_ddim_sampler,
                                           lambda cfg: dict(eta=cfg.eta)))
SAMPLING_METHODS.add("dpm_solver", _fast_sampler(
    fast_samplers.get_dpm_solver_sampler,
    lambda cfg: dict(order=cfg.order, multistep=cfg.multistep)))
SAMPLING_METHODS.add("unipc", _fast_sampler(
    fast_samplers.get_unipc_sampler,
    lambda cfg: dict(order=cfg.order, variant=cfg.unipc_variant, corrector=cfg.unipc_corrector,
                     predictor=cfg.unipc_predictor)))
SAMPLING_METHODS.add("ipndm", _fast_sampler(fast_samplers.get_ipndm_sampler,
                                            lambda cfg: dict(order=cfg.order)))
SAMPLING_METHODS.add("edm_heun", _fast_sampler(
    fast_samplers.get_edm_heun_sampler,
    lambda cfg: dict(s_churn=cfg.s_churn, s_min=cfg.s_min, s_max=cfg.s_max,
                     s_noise=cfg.s_noise)))


def build_sampling_fn(config: Config, sde: sde_lib.SDE, shape: Shape,
                      num_steps: Optional[int] = None, num_frames: int = 0) -> sampling.SampleFn:
  """``sample(rng, score_fn) -> (x: shape, nfe)`` of ``sampling.method``, not jitted.

  ``num_steps`` overrides the number of steps (default ``sde.N``, i.e. ``model.num_scales``).
  ``num_frames = K > 0`` adds the sampler's :class:`sampling.Trajectory` (``K`` frames from ``T``
  to the end; ``sampling``'s docstring gives the frame times): ``(x, nfe, trajectory)``.
  """
  factory = SAMPLING_METHODS.get(config.sampling.method)
  return factory(sde, shape, config.sampling, num_steps, num_frames)


def sampler_tag(config: Config) -> str:
  """The sampler ``config.sampling`` names, for folder names and messages (``pc-euler_maruyama-
  none``, ``ode-tsit5``, ``ddim-eta0-20steps``, ``dpm_solver-2m-20steps``,
  ``edm_heun-churn0-18steps``, ``unipc-2bh1-10steps``, ``ipndm-4-10steps``; a list of times
  ``...-9listedsteps``)."""
  sampling_config = config.sampling
  method = str(sampling_config.method).lower()
  if method == "pc":
    return f"pc-{sampling_config.predictor}-{sampling_config.corrector}".lower()
  if method == "ode":
    return f"ode-{sampling_config.ode_solver}".lower()
  schedule = _schedule(sampling_config)
  steps = (f"{sampling_config.steps}steps" if schedule is None or isinstance(schedule, str)
           else f"{len(schedule) - 1}listedsteps")
  if method == "ddim":
    return f"ddim-eta{sampling_config.eta:g}-{steps}"
  if method == "dpm_solver":
    return (f"dpm_solver-{sampling_config.order}{'m' if sampling_config.multistep else 's'}-"
            f"{steps}")
  if method == "edm_heun":
    return f"edm_heun-churn{sampling_config.s_churn:g}-{steps}"
  if method == "unipc":
    corrected = "" if sampling_config.unipc_corrector else "-nocorrector"
    predictor = "" if sampling_config.unipc_predictor == "unip" else "-dpm_solver++"
    return (f"unipc-{sampling_config.order}{sampling_config.unipc_variant}{predictor}"
            f"{corrected}-{steps}")
  if method == "ipndm":
    return f"ipndm-{sampling_config.order}-{steps}"
  return method


def build_sampler(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                  batch_size: int, num_steps: Optional[int] = None, num_frames: int = 0
                  ) -> Callable[[Array, Params], sampling.SampleOutput]:
  """``sample(rng, params) -> (samples: [batch_size, ...], nfe)``, jitted, samples sharded.

  Samples are in model space (apply :func:`datasets.data_scalers`' inverse for data space). The
  parameters are an argument, so new parameters do not recompile. With ``num_frames = K > 0``
  it returns ``(samples, nfe, trajectory)``: ``trajectory.t: [K]`` replicated and
  ``trajectory.x: [K, batch_size, ...]`` (model space) sharded along its batch axis like the
  samples; ``devices.gather`` reads either on the host.
  """
  sampling_fn = build_sampling_fn(config, sde, datasets.input_shape(config, batch_size), num_steps,
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
  cfg = config.sampling
  colorize = controllable_generation.get_pc_colorizer(
      sde, cfg.predictor, cfg.corrector, num_channels=int(config.data.num_channels),
      snr=cfg.snr, n_steps=cfg.n_steps_each, probability_flow=cfg.probability_flow,
      denoise=cfg.noise_removal, eps=cfg.eps)
  score_fn_of = build_score_fn(config, sde, model, devices)

  def run(rng, params, gray):
    return colorize(rng, score_fn_of(params), gray)

  return _jit_batch_sharded(run, devices)


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
  sampling_fn = build_sampling_fn(config, sde, datasets.input_shape(config, batch_size), num_steps)
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
  sampling_fn = build_sampling_fn(config, sde, datasets.input_shape(config, batch_size), num_steps)
  continuous = config.training.continuous

  def sample(rng, params, labels, weight):
    conditional = controllable_generation.get_conditional_score_fn(
        sde, model, params, continuous, config.model.get("prediction", ""))

    def constrained(x, t, y):
      return conditional(devices.constrain(x), t, y)

    guided = controllable_generation.classifier_free_guided_score(
        constrained, controllable_generation.unconditional_score_fn(constrained, classes),
        labels, weight)
    return sampling_fn(rng, guided)

  return _jit_batch_sharded(sample, devices)


# ----------------------------------------------------------------------------- likelihood


def bpd_offset_bits(config: Config) -> float:
  """Bits/dim added to a model-space value to state it on the data's integer scale
  (``dequantization.bits_offset`` of ``eval.dequantization``, ``data.centered, num_bits``); 0
  for continuous vector data."""
  if datasets.is_vector_data(config):
    return 0.0
  return dequantization.bits_offset(config.eval.dequantization, config.data.centered,
                                    int(config.data.get("num_bits", 8)))


def build_dequantizer(config: Config) -> Dequantizer:
  """The variational dequantizer of ``config.dequantizer`` (``hidden``, ``num_couplings``)."""
  return Dequantizer(hidden=int(config.dequantizer.hidden),
                     num_couplings=int(config.dequantizer.num_couplings))


def build_dequantize_fn(config: Config, dequantizer_params: Optional[Params] = None
                        ) -> Callable[[Array, Array], Tuple[Array, Array]]:
  """``dequantize(rng, images) -> (y, log_q)``: data-space ``images: [B, ...]`` (``v / (L -
  1)``) -> the model-space points ``y`` a density is evaluated at and ``log q(u | v): [B]``
  (nats; 0 but for the variational dequantizer), as ``eval.dequantization`` says
  (:mod:`dequantization`).

  Raises:
    ValueError: for an unknown kind, a kind other than ``'none'`` on vector data, or
      ``'variational'`` without ``dequantizer_params``.
  """
  kind = config.eval.dequantization
  dequantization.check_kind(kind)
  if datasets.is_vector_data(config) and kind != "none":
    raise ValueError(f"Vector data are continuous: eval.dequantization must be 'none', got "
                     f"{kind!r}; set --config.eval.dequantization=none.")
  if kind == "variational" and dequantizer_params is None:
    raise ValueError("eval.dequantization = 'variational' needs a trained dequantizer: run "
                     "--mode train_dequantizer on this workdir first, or use 'uniform'.")
  scaler, _ = datasets.data_scalers(config)
  flow = (functools.partial(build_dequantizer(config).apply, dequantizer_params)
          if kind == "variational" else None)
  return functools.partial(dequantization.dequantize, kind=kind,
                           num_bits=int(config.data.get("num_bits", 8)), scaler=scaler,
                           flow=flow)


def _bits(log_q: Array, images: Array) -> Array:
  """Nats ``[B]`` -> bits per dimension of ``images``."""
  return log_q / (np.prod(images.shape[1:]) * np.log(2.0))


def build_bpd_fn(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                 dequantizer_params: Optional[Params] = None
                 ) -> Callable[[Array, Params, Array], Tuple[Array, Array]]:
  """``bpd_fn(rng, params, images) -> (bpd: [B], nfe)``, jitted; ``images`` in data space.

  Through the probability-flow ODE (``likelihood.get_likelihood_fn``, ``eval.hutchinson_type,
  rtol, atol, ode_solver``) at the points :func:`build_dequantize_fn` gives, ``+ log q`` for the
  variational dequantizer, on the integer scale of the data (:func:`bpd_offset_bits`): for images
  the bits/dim of the discrete data (the paper's CIFAR-10 number); vector (toy) data are
  continuous, with no offset.
  """
  ev = config.eval
  dequantize = build_dequantize_fn(config, dequantizer_params)
  likelihood_fn = likelihood.get_likelihood_fn(sde, hutchinson_type=ev.hutchinson_type,
                                               rtol=ev.rtol, atol=ev.atol,
                                               method=ev.ode_solver,
                                               bpd_offset=bpd_offset_bits(config))
  score_fn_of = build_score_fn(config, sde, model, devices)

  @functools.partial(jax.jit, out_shardings=(devices.batch, None))
  def bpd_fn(rng, params, images):
    dq_rng, rng = jax.random.split(rng)
    y, log_q = dequantize(dq_rng, images)
    bpd, _, nfe = likelihood_fn(rng, score_fn_of(params), y)
    return bpd + _bits(log_q, images), nfe

  return bpd_fn


def build_bound_fn(config: Config, sde: sde_lib.SDE, model: nn.Module, devices: Devices,
                   dequantizer_params: Optional[Params] = None
                   ) -> Callable[[Array, Params, Array], Tuple[Array, Array]]:
  """``bound_fn(rng, params, images) -> (bpd: [B], stderr: [B])``, jitted: the SDE's likelihood
  bound (``likelihood.get_bound_fn``, ``eval.bound_num_draws, bound_time_sampling``, from
  ``training.eps``) at the same dequantized points and on the same scale as :func:`build_bpd_fn`;
  ``stderr`` is each example's Monte Carlo standard error."""
  ev = config.eval
  dequantize = build_dequantize_fn(config, dequantizer_params)
  bound = likelihood.get_bound_fn(sde, eps=float(config.training.eps),
                                  num_draws=int(ev.bound_num_draws),
                                  time_sampling=ev.bound_time_sampling,
                                  bpd_offset=bpd_offset_bits(config))
  score_fn_of = build_score_fn(config, sde, model, devices)

  @functools.partial(jax.jit, out_shardings=(devices.batch, devices.batch))
  def bound_fn(rng, params, images):
    dq_rng, rng = jax.random.split(rng)
    y, log_q = dequantize(dq_rng, images)
    bpd, stderr = bound(rng, score_fn_of(params), y)
    return bpd + _bits(log_q, images), stderr

  return bound_fn
