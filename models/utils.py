"""Model registry and the bridge from a network's output to a score function.

Every network is a Flax linen module called as ``model.apply({'params': params}, x, labels,
train=train, rngs={'dropout': key})`` with ``x: [B, H, W, C]`` (or ``[B, D]`` for toys) and
``labels: [B]`` -- the noise-level conditioning -- and returns an array shaped like ``x``.
Networks output the raw quantity they were trained to predict; :func:`get_score_fn` turns it
into a score, asking the SDE for its conventions (``sde.noise_label``, ``sde.prediction``,
``sde.discrete_marginal``), so the conversions live in one place. With the SDEs' own
predictions:

====================  ===========================  ==========================================
SDE, training         labels given the model       score from the output ``out``
====================  ===========================  ==========================================
VE, continuous        ``sigma(t)``                 ``out / sigma(t)`` if ``scale_by_sigma`` else
                                                   ``out``
VE, discrete (SMLD)   ``k = round((1 - t)(N-1))``  ``out / sigma_i``, ``i = N - 1 - k``, if
                                                   ``scale_by_sigma`` else ``out``
VP/sub-VP, cont.      ``999 t``                    ``-out / std(t)`` (``out`` predicts the noise)
VP, discrete (DDPM)   ``t (N-1)``, not rounded     ``-out / sqrt(1 - alpha_bar_i)``,
                                                   ``i = floor(t (N-1))``
====================  ===========================  ==========================================

A continuously trained network may predict something else, named by ``model.prediction``
(noise, score, data, velocity or v; :mod:`models.predictions` holds every conversion).

(``T = 1``; ``sigma_i`` ascends with ``i``.) The discrete labels are the authors': their SMLD
noise ladder descends, so label 0 is ``sigma_max`` (:meth:`sde_lib.VESDE.discrete_label`), and
their DDPM networks take the unrounded step. Networks trained here and the authors' released
ones are therefore conditioned alike.

A module opts into VE sigma scaling with a boolean attribute ``scale_by_sigma``, and into class
conditioning with ``num_classes = K > 0`` (:func:`num_classes`): it is then also called with
``class_labels: [B]`` int in ``0 .. K``, ``K`` (or ``class_labels=None``) being the null label of
the unconditional model. Networks are
built from a config by ``builders.build_model``, through the factories registered here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

import sde_lib
from infra.registry import Registry
from models import predictions

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ModelFactory = Callable[[Any], nn.Module]
"""``factory(config) -> nn.Module``: a module's ``from_config`` classmethod, or a function."""

MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[Any], Any]:
  """Registers a model under ``name`` (``config.model.name``).

  Decorates either a module class with a ``from_config(config)`` classmethod, or a
  function ``config -> nn.Module``.
  """

  def decorator(obj):
    MODELS.add(name, getattr(obj, "from_config", obj))
    return obj

  return decorator


def get_model(name: str) -> ModelFactory:
  """The factory ``config -> nn.Module`` registered as ``name`` (case-insensitive)."""
  return MODELS.get(name)


def num_classes(model: nn.Module) -> int:
  """The number of classes a class-conditional network is conditioned on; 0 if unconditional."""
  return int(getattr(model, "num_classes", 0) or 0)


def parameter_count(params: Any) -> int:
  """The number of scalars in a parameter tree (any pytree of arrays or shape structs)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def get_model_fn(model: nn.Module, params: Any, train: bool = False,
                 rng: Optional[Array] = None, class_labels: Optional[Array] = None) -> ModelFn:
  """``model_fn(x, labels) -> output``; ``rng`` drives dropout and is required when training.
  ``class_labels: [B]`` condition a class-conditional network (None: its null label)."""
  if train and rng is None:
    raise ValueError("get_model_fn(train=True) needs an rng for dropout.")
  kwargs = {} if class_labels is None else {"class_labels": class_labels}

  def model_fn(x: Array, labels: Array) -> Array:
    rngs = {"dropout": rng} if train else None
    return model.apply({"params": params}, x, labels, train=train, rngs=rngs, **kwargs)

  return model_fn


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, params: Any, train: bool = False,
                 continuous: bool = True, rng: Optional[Array] = None,
                 class_labels: Optional[Array] = None,
                 prediction: Optional[str] = None) -> sde_lib.ScoreFn:
  """``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` from a network, per the table above; with
  ``class_labels: [B]`` the class-conditional score of a class-conditional network.
  ``prediction`` names what the network outputs (``models.predictions``; None or ``''``: the
  SDE's convention, ``sde.prediction``)."""
  model_fn = get_model_fn(model, params, train=train, rng=rng, class_labels=class_labels)
  return score_fn_from_model_fn(sde, model_fn, continuous,
                                scale_by_sigma=getattr(model, "scale_by_sigma", False),
                                prediction=prediction)


def score_fn_from_model_fn(sde: sde_lib.SDE, model_fn: ModelFn, continuous: bool,
                           scale_by_sigma: bool = False,
                           prediction: Optional[str] = None) -> sde_lib.ScoreFn:
  """The conversion of :func:`get_score_fn` for any ``model_fn(x, labels)``.

  Raises:
    ValueError: for ``continuous=False`` with an SDE that has no discrete noise levels, or with
      a prediction other than the SDE's own (the discrete chains define only theirs).
  """
  name = prediction or sde.prediction
  if not continuous:
    if sde.discrete_chain is None:
      raise ValueError(f"A discretely trained network needs an SDE with discrete noise levels "
                       f"({' or '.join(sde_lib.discrete_chain_sdes())}), got "
                       f"{type(sde).__name__}; set continuous=True.")
    if name.lower() != sde.prediction:
      raise ValueError(f"model.prediction = {name!r}: a discretely trained {type(sde).__name__} "
                       f"network predicts {sde.prediction!r}; set continuous=True for another.")
  converter = predictions.get_prediction(name, scale_by_sigma)

  def score_fn(x: Array, t: Array) -> Array:
    if continuous:
      labels = sde.noise_label(t)
      if converter.needs_derivatives:
        c = predictions.coefficients(sde, t)
      else:
        c = predictions.Coefficients(sde.mean_coeff(t), sde.marginal_std(t), None, None)
    else:
      std = sde.discrete_marginal(sde.discrete_level(t))[1]
      labels, c = sde.discrete_label(t), predictions.Coefficients(None, std, None, None)
    out = model_fn(x, labels).astype(x.dtype)
    return converter.score(out, x, c)

  return score_fn
