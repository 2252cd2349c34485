"""Model registry and the bridge from a network's output to a score function.

Every network is a Flax linen module called as ``model.apply({'params': params}, x, labels,
train=train, rngs={'dropout': key})`` with ``x: [B, H, W, C]`` (or ``[B, D]`` for toys) and
``labels: [B]`` -- the noise-level conditioning -- and returns an array shaped like ``x``.
Networks output the raw quantity they were trained to predict; :func:`get_score_fn` turns it
into a score, so the conversions live in one place:

====================  =======================  ==========================================
SDE, training         labels given the model   score from the output ``out``
====================  =======================  ==========================================
VE, continuous        ``sigma(t)``             ``out / sigma(t)`` if ``scale_by_sigma`` else ``out``
VE, discrete (SMLD)   ``i = round(t (N-1))``   ``out / sigma_i`` if ``scale_by_sigma`` else ``out``
VP/sub-VP, cont.      ``999 t``                ``-out / std(t)``   (``out`` predicts the noise)
VP, discrete (DDPM)   ``i = round(t (N-1))``   ``-out / sqrt(1 - alpha_bar_i)``
====================  =======================  ==========================================

A module opts into VE sigma scaling with a boolean attribute ``scale_by_sigma``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import sde_lib
from sde_lib import batch_mul

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ModelFactory = Callable[[ml_collections.ConfigDict], nn.Module]

_MODELS: Dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[Any], Any]:
  """Registers a model under ``name``.

  Decorates either a module class with a ``from_config(config)`` classmethod, or a
  function ``config -> nn.Module``.
  """

  def decorator(obj):
    key = name.lower()
    if key in _MODELS:
      raise ValueError(f"A model named {name!r} is already registered.")
    _MODELS[key] = getattr(obj, "from_config", obj)
    return obj

  return decorator


def _ensure_models_imported() -> None:
  # Importing the modules runs their @register_model decorators.
  import models.all_models  # pylint: disable=import-outside-toplevel,unused-import


def registered_models() -> Tuple[str, ...]:
  _ensure_models_imported()
  return tuple(sorted(_MODELS))


def get_model(name: str) -> ModelFactory:
  """The factory ``config -> nn.Module`` registered as ``name`` (case-insensitive)."""
  _ensure_models_imported()
  key = name.lower()
  if key not in _MODELS:
    raise ValueError(
        f"Unknown model {name!r}; valid names are: {', '.join(sorted(_MODELS))}.")
  return _MODELS[key]


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the network named by ``config.model.name`` from the config."""
  model = get_model(config.model.name)(config)
  if config.training.get("remat", False) and not getattr(model, "remat", False):
    raise ValueError(f"training.remat is implemented for the ncsnpp network only, not for "
                     f"{config.model.name!r}; set --config.training.remat=False.")
  return model


def input_shape(config: ml_collections.ConfigDict, batch_size: int = 1) -> Tuple[int, ...]:
  """``(B, H, W, C)`` for image data, ``(B, D)`` for vector (toy) data."""
  data = config.data
  if data.get("dim", None):
    return (batch_size, data.dim)
  return (batch_size, data.image_size, data.image_size, data.num_channels)


def init_model(rng: Array, config: ml_collections.ConfigDict) -> Tuple[nn.Module, Any]:
  """Creates the model and initializes its parameters. Returns ``(model, params)``."""
  model = create_model(config)
  params_rng, dropout_rng = jax.random.split(rng)
  x = jnp.zeros(input_shape(config), jnp.float32)
  labels = jnp.ones((1,), jnp.float32)
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": params_rng, "dropout": dropout_rng}, x, labels, train=False)
  return model, variables["params"]


def get_model_fn(model: nn.Module, params: Any, train: bool = False,
                 rng: Optional[Array] = None) -> ModelFn:
  """``model_fn(x, labels) -> output``; ``rng`` drives dropout and is required when training."""
  if train and rng is None:
    raise ValueError("get_model_fn(train=True) needs an rng for dropout.")

  def model_fn(x: Array, labels: Array) -> Array:
    rngs = {"dropout": rng} if train else None
    return model.apply({"params": params}, x, labels, train=train, rngs=rngs)

  return model_fn


def _discrete_level(sde: sde_lib.SDE, t: Array) -> Array:
  """Integer noise level ``round(t / T * (N - 1))`` of a discretely trained model."""
  return jnp.round(t / sde.T * (sde.N - 1)).astype(jnp.int32)


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, params: Any, train: bool = False,
                 continuous: bool = True, rng: Optional[Array] = None) -> sde_lib.ScoreFn:
  """``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` from a network, per the table above."""
  model_fn = get_model_fn(model, params, train=train, rng=rng)
  return score_fn_from_model_fn(sde, model_fn, continuous,
                                scale_by_sigma=getattr(model, "scale_by_sigma", False))


def score_fn_from_model_fn(sde: sde_lib.SDE, model_fn: ModelFn, continuous: bool,
                           scale_by_sigma: bool = False) -> sde_lib.ScoreFn:
  """The conversion of :func:`get_score_fn` for any ``model_fn(x, labels)``."""
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    if continuous or isinstance(sde, sde_lib.subVPSDE):

      def score_fn(x, t):
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
        return batch_mul(-1.0 / std, model_fn(x, t * 999).astype(x.dtype))
    else:

      def score_fn(x, t):
        level = _discrete_level(sde, t)
        std = sde.discrete_marginal(level)[1]
        return batch_mul(-1.0 / std, model_fn(x, level.astype(jnp.float32)).astype(x.dtype))

  elif isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t):
      if continuous:
        sigma = sde.sigma(t)
        labels = sigma
      else:
        level = _discrete_level(sde, t)
        sigma = sde.discrete_sigmas()[level]
        labels = level.astype(jnp.float32)
      out = model_fn(x, labels).astype(x.dtype)
      return batch_mul(1.0 / sigma, out) if scale_by_sigma else out

  else:
    raise ValueError(f"No score conversion for SDE class {type(sde).__name__}.")
  return score_fn
