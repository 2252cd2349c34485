"""Training objectives, the optimizer and the pure train/eval steps.

Losses take a plain ``score_fn(x: [B, ...], t: [B]) -> [B, ...]`` (see ``sde_lib.ScoreFn``),
so the tests can plug in exact scores; :func:`get_loss_fn` builds that function from a
network with ``models.utils.get_score_fn``. Two objectives: continuous denoising score
matching for every SDE, and the discrete one (SMLD for VE, DDPM for VP) for SDEs with a
``discrete_chain``, written once on the chain's kernel ``sde.discrete_marginal``.

Each objective comes in two layers:

* ``*_losses(score_fn, sde, x, <time or level>, z, ...) -> [B]``: the per-example loss for
  given times (or noise levels) and standard-normal noise ``z``. Deterministic, so
  objectives can be compared on identical draws.
* ``*_loss(score_fn, sde, rng, x, ...) -> []``: draws the times/levels and the noise from
  ``rng`` and averages the per-example loss over the batch.

The noise-conditional classifier of classifier guidance has its objective here too: the
cross-entropy of its label on data perturbed by the same SDE (:func:`get_classifier_loss_fn`).

Losses are computed and reduced in (at least) float32 whatever dtype the model outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sde_lib
from models import predictions
from models import utils as mutils
from sde_lib import batch_mul

Array = jax.Array
Params = Any
Batch = Union[Array, Dict[str, Array]]
"""What a loss and a step take: images ``x: [B, ...]``, or ``{'image': x}`` with, for a
class-conditional network, ``'label': int [B]`` and, for a coupling (reflow), ``'noise': z``
shaped like ``x``: the noise each image is paired with, used instead of fresh noise."""
LossFn = Callable[[Params, Array, Batch], Array]
"""``loss_fn(params, rng, batch) -> scalar``."""
AuxLossFn = Callable[[Params, Array, Batch], Tuple[Array, Dict[str, Array]]]
"""``loss_fn(params, rng, batch) -> (scalar, {name: scalar})``: a loss and metrics beside it."""
StepFn = Callable[["TrainState", Batch], Tuple["TrainState", Any]]


# ----------------------------------------------------------------------------- train state


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a pytree, so it can be jitted and sharded.

  Attributes:
    step: number of optimizer updates applied so far, int32 scalar.
    params: the network parameters being optimized.
    opt_state: the optax optimizer state.
    ema_params: exponential moving average of ``params`` (what evaluation and sampling use).
    rng: PRNG key; each train step splits off the key it uses.
  """
  step: Array
  params: Params
  opt_state: optax.OptState
  ema_params: Params
  rng: Array


def init_train_state(rng: Array, params: Params,
                     optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 whose EMA starts as a copy of ``params``."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree_util.tree_map(jnp.array, params), rng=rng)


# ----------------------------------------------------------------------------- optimizer


def get_lr_schedule(lr: float, warmup: int) -> optax.Schedule:
  """``lr(k) = lr * min(k / warmup, 1)`` for the ``k``-th update (``k = 0, 1, ...``).

  As in the authors' optimization manager the step count is the number of updates already
  applied, so the very first update has learning rate 0. ``warmup <= 0`` means constant ``lr``.
  """
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """``optax.clip_by_global_norm``, the norm taken in one reduction over all leaves.

  optax reduces each leaf on its own: one kernel per parameter array, 553 of the 3,831 kernels
  of a DDPM++ train step on a GPU. Over the concatenated leaves XLA fuses the sum into a
  few kernels (3,278 per step; XLA:GPU's memory estimate unchanged). Same arithmetic up to
  summation order: above ``max_norm`` every leaf is scaled by ``max_norm / norm``.
  """

  def update_fn(updates, state, params=None):
    del params
    leaves = jax.tree_util.tree_leaves(updates)
    flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
    norm = jnp.sqrt(jnp.sum(jnp.square(flat)))
    keep = norm < max_norm
    return jax.tree_util.tree_map(
        lambda g: jnp.where(keep, g, g / norm.astype(g.dtype) * max_norm), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def get_optimizer(lr: float, *, beta1: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.0,
                  warmup: int = 5000, grad_clip: float = 1.0) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam (decoupled-weight-decay AdamW if ``weight_decay > 0``).

  Args:
    lr: peak learning rate, reached after ``warmup`` updates (see :func:`get_lr_schedule`).
    beta1: Adam's first-moment decay (``beta2`` is 0.999, as in the paper).
    eps: Adam's denominator epsilon.
    weight_decay: decoupled weight decay, applied as ``-lr(k) * weight_decay * param``.
    warmup: number of linear-warmup updates.
    grad_clip: maximum global gradient norm; a negative value disables clipping.
  """
  schedule = get_lr_schedule(lr, warmup)
  if weight_decay > 0:
    adam = optax.adamw(schedule, b1=beta1, b2=0.999, eps=eps, weight_decay=weight_decay)
  else:
    adam = optax.adam(schedule, b1=beta1, b2=0.999, eps=eps)
  if grad_clip < 0:
    return adam
  return optax.chain(clip_by_global_norm(grad_clip), adam)


# ----------------------------------------------------------------------------- objectives


def _loss_dtype(x: Array) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)


def _reduce(x: Array, reduce_mean: bool) -> Array:
  """Sum (or mean) of ``x: [B, ...]`` over the non-batch dimensions, ``[B]``."""
  flat = x.reshape(x.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce_mean else jnp.sum(flat, axis=-1)


def dsm_losses(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Array, t: Array, z: Array, *,
               reduce_mean: bool = False, likelihood_weighting: bool = False) -> Array:
  """Per-example continuous denoising score matching at given times, ``[B]``.

  With ``x_t = mean(x, t) + std(t) z`` the loss is ``lambda(t) ||score(x_t, t) + z / std(t)||^2``
  with ``lambda = std^2`` (the paper's default) or ``lambda = g(t)^2`` (likelihood weighting).

  Args:
    x: clean data ``[B, ...]``.
    t: times ``[B]`` in ``(0, T]``.
    z: standard-normal noise shaped like ``x``.
  """
  dtype = _loss_dtype(x)
  x, z, t = x.astype(dtype), z.astype(dtype), t.astype(dtype)
  mean, std = sde.marginal_prob(x, t)
  score = score_fn(mean + batch_mul(std, z), t).astype(dtype)
  if likelihood_weighting:
    g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
    return g2 * _reduce(jnp.square(score + batch_mul(1.0 / std, z)), reduce_mean)
  # std^2 ||score + z/std||^2 written as ||std score + z||^2, which stays finite as std -> 0.
  return _reduce(jnp.square(batch_mul(std, score) + z), reduce_mean)


def discrete_losses(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Array, levels: Array,
                    z: Array, *, reduce_mean: bool = False) -> Array:
  """Per-example loss of the discrete chain ``||s_i score(a_i x + s_i z, t_i) + z||^2``, ``[B]``.

  ``(a_i, s_i) = sde.discrete_marginal(i)`` and ``t_i = sde.discrete_time(i)``, the time a
  network's conditioning maps back to level ``i``. For VE (``a_i = 1``, ``s_i = sigma_i``) this
  is the NCSN loss ``sigma_i^2 ||score + z / sigma_i||^2``; for VP, with an eps-predicting
  network (score ``-eps_theta / s_i``), DDPM's ``||eps_theta - z||^2``.

  Args:
    x: clean data ``[B, ...]``.
    levels: integer noise levels ``i: [B]`` in ``{0, ..., N-1}``.
    z: standard-normal noise shaped like ``x``.
  """
  dtype = _loss_dtype(x)
  x, z = x.astype(dtype), z.astype(dtype)
  a, s = (c.astype(dtype) for c in sde.discrete_marginal(levels))
  perturbed = batch_mul(a, x) + batch_mul(s, z)
  score = score_fn(perturbed, sde.discrete_time(levels).astype(dtype)).astype(dtype)
  return _reduce(jnp.square(batch_mul(s, score) + z), reduce_mean)


OutputFn = Callable[[Array, Array], Array]
"""``output_fn(x: [B, ...], t: [B]) -> [B, ...]``: a network's raw output at time ``t``."""


def regression_losses(output_fn: OutputFn, prediction: predictions.Prediction, sde: sde_lib.SDE,
                      x: Array, t: Array, z: Array, *, reduce_mean: bool = False) -> Array:
  """Per-example plain regression of the network's prediction target, ``[B]``:
  ``|out(x_t, t) - target|^2`` with ``x_t = a x + std z`` and the target of ``prediction``
  (flow matching's ``|v - (z - x)|^2`` for the velocity on the linear path, DDPM's simple loss
  for the noise). It equals :func:`dsm_losses` with weighting ``prediction.dsm_weight``.

  Args:
    x: clean data ``[B, ...]``.
    t: times ``[B]`` in ``(0, T]``.
    z: standard-normal noise shaped like ``x``.
  """
  dtype = _loss_dtype(x)
  x, z, t = x.astype(dtype), z.astype(dtype), t.astype(dtype)
  c = predictions.coefficients(sde, t)
  out = output_fn(batch_mul(c.a, x) + batch_mul(c.std, z), t).astype(dtype)
  return _reduce(jnp.square(out - prediction.target(x, z, c)), reduce_mean)


TIME_SAMPLINGS = ("uniform", "logit_normal", "importance")


class ImportanceTimes(NamedTuple):
  """The proposal ``q(t) = (g(t)^2 / std(t)^2) / Z`` on ``[eps, T]`` of likelihood-weighted
  training with importance sampling (Song, Durkan, Murray & Ermon 2021), tabulated: ``cdf``
  at ``times`` (``[n]`` each, float64) and ``Z = normalizer``.

  Under it the likelihood-weighted loss ``E_{t ~ U}[g^2 |score + z / std|^2]`` equals
  ``Z / (T - eps) E_{t ~ q}[|std score + z|^2]``: the paper's ``std^2``-weighted loss at times
  drawn from ``q``, times a constant. Every draw has the same weight, so the variance that
  ``g^2 / std^2 ~ 1 / t`` gives the plain estimator near ``t = 0`` is gone. VE's ``g^2 / std^2``
  is constant: its proposal is uniform.
  """
  times: np.ndarray
  cdf: np.ndarray
  normalizer: float

  def sample(self, rng: Array, batch: int) -> Array:
    """``t: [batch]`` from ``q``, by inverting the table (linear interpolation)."""
    u = jax.random.uniform(rng, (batch,))
    return jnp.interp(u, jnp.asarray(self.cdf, u.dtype), jnp.asarray(self.times, u.dtype))


def importance_times(sde: sde_lib.SDE, eps: float, num_points: int = 100_001) -> ImportanceTimes:
  """:class:`ImportanceTimes` of any SDE here on ``[eps, T]``, tabulated from its own ``g`` and
  ``std``: the density on a grid geometric in the distance to each end (where it may grow as
  ``1 / t`` and, for rectified flow, ``1 / (T - t)``), integrated by the trapezoidal rule in
  float64. Runs eagerly on the host (also inside a ``jit`` trace)."""
  end = float(sde.T)
  if not 0.0 < eps < end:
    raise ValueError(f"Importance sampling of t needs 0 < eps < T, got eps={eps}, T={end}.")
  half, tiny = 0.5 * (end - eps), 1e-12 * end
  offsets = np.geomspace(tiny, half, num_points // 2) - tiny
  times = np.unique(np.clip(np.concatenate([eps + offsets, end - offsets]), eps, end))
  with jax.ensure_compile_time_eval():
    t = jnp.asarray(times, jnp.asarray(0.0).dtype)
    g2 = np.asarray(sde.sde(jnp.zeros((len(times), 1), t.dtype), t)[1], np.float64) ** 2
    std2 = np.asarray(sde.marginal_std(t), np.float64) ** 2
  density = g2 / std2
  cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1])
                                                * np.diff(times))])
  return ImportanceTimes(times, cumulative / cumulative[-1], float(cumulative[-1]))


def sample_times(rng: Array, batch: int, sde: sde_lib.SDE, eps: float,
                 time_sampling: str = "uniform",
                 logit_normal: Tuple[float, float] = (0.0, 1.0),
                 proposal: Optional[ImportanceTimes] = None) -> Array:
  """Training times ``t: [batch]`` in ``[eps, T]``: ``'uniform'``; ``'logit_normal'`` (Esser et
  al. 2024): ``t = eps + (T - eps) sigmoid(m + s n)``, ``n ~ N(0, 1)``, ``(m, s) =
  logit_normal``, which puts more of the training at intermediate noise levels; or
  ``'importance'``: from ``proposal`` (default :func:`importance_times`), which only the
  likelihood-weighted loss is defined with (:func:`sde_loss` weights it)."""
  if time_sampling == "uniform":
    return jax.random.uniform(rng, (batch,), minval=eps, maxval=sde.T)
  if time_sampling == "logit_normal":
    mean, std = logit_normal
    u = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
    return eps + (sde.T - eps) * u
  if time_sampling == "importance":
    return (proposal or importance_times(sde, eps)).sample(rng, batch)
  raise ValueError(f"training.time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got "
                   f"{time_sampling!r}.")


def _times_and_noise(rng: Array, sde: sde_lib.SDE, x: Array, z: Optional[Array], eps: float,
                     time_sampling: str, logit_normal: Tuple[float, float],
                     proposal: Optional[ImportanceTimes] = None) -> Tuple[Array, Array]:
  """``(t, z)`` of a continuous loss: times from :func:`sample_times`, and fresh standard-normal
  noise unless ``z`` is given (a coupling)."""
  t_rng, z_rng = jax.random.split(rng)
  t = sample_times(t_rng, x.shape[0], sde, eps, time_sampling, logit_normal, proposal)
  if z is None:
    z = jax.random.normal(z_rng, x.shape, _loss_dtype(x))
  return t, z


def sde_loss(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, rng: Array, x: Array, *,
             reduce_mean: bool = False, likelihood_weighting: bool = False,
             eps: float = 1e-5, time_sampling: str = "uniform",
             logit_normal: Tuple[float, float] = (0.0, 1.0), z: Optional[Array] = None,
             proposal: Optional[ImportanceTimes] = None) -> Array:
  """Continuous DSM (:func:`dsm_losses`) at times from :func:`sample_times`, averaged over the
  batch. With ``time_sampling = 'importance'`` (likelihood weighting only) it is the
  likelihood-weighted loss estimated at times from ``proposal`` (:class:`ImportanceTimes`):
  same expectation as with uniform times, far smaller variance.

  Args:
    x: clean data ``[B, ...]``.
    eps: smallest time; the kernel's std vanishes at ``t = 0`` for VP / sub-VP.
    z: the noise paired with ``x`` (a coupling, as reflow trains on); None: drawn afresh.
    proposal: the importance proposal (default :func:`importance_times`).
  """
  if time_sampling == "importance":
    if not likelihood_weighting:
      raise ValueError("training.time_sampling = 'importance' samples t for the "
                       "likelihood-weighted loss; set training.likelihood_weighting = True.")
    proposal = proposal or importance_times(sde, eps)
  t, z = _times_and_noise(rng, sde, x, z, eps, time_sampling, logit_normal, proposal)
  if time_sampling == "importance":
    scale = proposal.normalizer / (sde.T - eps)
    return scale * jnp.mean(dsm_losses(score_fn, sde, x, t, z, reduce_mean=reduce_mean))
  return jnp.mean(dsm_losses(score_fn, sde, x, t, z, reduce_mean=reduce_mean,
                             likelihood_weighting=likelihood_weighting))


def regression_loss(output_fn: OutputFn, prediction: predictions.Prediction, sde: sde_lib.SDE,
                    rng: Array, x: Array, *, reduce_mean: bool = False, eps: float = 1e-5,
                    time_sampling: str = "uniform", logit_normal: Tuple[float, float] = (0.0, 1.0),
                    z: Optional[Array] = None) -> Array:
  """:func:`regression_losses` at times from :func:`sample_times`, averaged over the batch (the
  same draws from ``rng`` as :func:`sde_loss`; ``z`` likewise)."""
  t, z = _times_and_noise(rng, sde, x, z, eps, time_sampling, logit_normal)
  return jnp.mean(regression_losses(output_fn, prediction, sde, x, t, z,
                                    reduce_mean=reduce_mean))


def discrete_loss(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, rng: Array, x: Array, *,
                  reduce_mean: bool = False) -> Array:
  """The discrete loss (:func:`discrete_losses`) with ``i ~ U{0..N-1}``, averaged over the batch."""
  level_rng, z_rng = jax.random.split(rng)
  levels = jax.random.randint(level_rng, (x.shape[0],), 0, sde.N)
  z = jax.random.normal(z_rng, x.shape, _loss_dtype(x))
  return jnp.mean(discrete_losses(score_fn, sde, x, levels, z, reduce_mean=reduce_mean))


def drop_labels(rng: Array, labels: Array, dropout: float, num_classes: int) -> Array:
  """Label dropout for classifier-free guidance: each of ``labels: [B]`` is replaced, with
  probability ``dropout``, by the null label ``num_classes`` (the unconditional model)."""
  drop = jax.random.bernoulli(rng, dropout, labels.shape)
  return jnp.where(drop, num_classes, labels).astype(jnp.int32)


# The label-dropout key is folded out of the step's key, so the dropout and noise keys of a
# class-conditional loss are those of an unconditional one.
_LABEL_DROPOUT_STREAM = 2


OBJECTIVES = ("dsm", "regression")


def get_loss_fn(sde: sde_lib.SDE, model: Any, *, train: bool, continuous: bool = True,
                reduce_mean: bool = False, likelihood_weighting: bool = False,
                eps: float = 1e-5, label_dropout: float = 0.0, prediction: Optional[str] = None,
                objective: str = "dsm", time_sampling: str = "uniform",
                logit_normal: Tuple[float, float] = (0.0, 1.0)) -> LossFn:
  """``loss_fn(params, rng, batch) -> scalar`` for a network ``model``.

  ``continuous`` selects the continuous objectives; otherwise the SDE's discrete chain's (SMLD
  for VE, DDPM for VP). Continuous: ``objective = 'dsm'`` is denoising score matching on the
  score the network's ``prediction`` converts to (weighted by ``std^2``, or ``g^2`` with
  ``likelihood_weighting``), ``'regression'`` the plain regression of the prediction itself
  (:func:`regression_losses`; flow matching for ``'velocity'``), each at times drawn by
  ``time_sampling`` (``'importance'``: the likelihood-weighted DSM loss estimated by
  importance sampling, :class:`ImportanceTimes`). ``rng`` is split into a dropout key and a
  noise key.

  A class-conditional network (``models.utils.num_classes(model) = K > 0``) takes ``batch =
  {'image': x, 'label': y}`` and learns the score of ``p(x | y)``; with ``train=True`` each label
  is first replaced by the null label ``K`` with probability ``label_dropout``
  (:func:`drop_labels`), so that the same network also learns the unconditional score that
  classifier-free guidance needs. Evaluation (``train=False``) is the conditional loss.

  Raises:
    ValueError: for a discrete objective with an SDE that has no discrete chain, or with
      likelihood weighting, regression or a time sampling (which only the continuous objectives
      define); for likelihood weighting with regression; for an unknown objective or time
      sampling; for a ``label_dropout`` outside [0, 1), or one given to an unconditional network.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"training.objective must be one of {', '.join(OBJECTIVES)}, got "
                     f"{objective!r}.")
  if time_sampling not in TIME_SAMPLINGS:
    raise ValueError(f"training.time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got "
                     f"{time_sampling!r}.")
  if objective == "regression" and likelihood_weighting:
    raise ValueError("training.objective = 'regression' has its own weighting (that of "
                     "model.prediction); set training.likelihood_weighting = False, or use "
                     "training.objective = 'dsm'.")
  if time_sampling == "importance" and not (likelihood_weighting and objective == "dsm"):
    raise ValueError("training.time_sampling = 'importance' samples t for the "
                     "likelihood-weighted score matching loss; set "
                     "training.likelihood_weighting = True and training.objective = 'dsm'.")
  if not continuous:
    if likelihood_weighting or objective != "dsm" or time_sampling != "uniform":
      raise ValueError("likelihood_weighting, training.objective = 'regression' and "
                       "training.time_sampling are only defined for the continuous objectives "
                       "(continuous=True).")
    if sde.discrete_chain is None:
      raise ValueError(
          f"Discrete training (continuous=False) is only defined for "
          f"{' and '.join(sde_lib.discrete_chain_sdes())}, got {type(sde).__name__}; use "
          f"continuous=True.")
  classes = mutils.num_classes(model)
  converter = predictions.get_prediction(prediction or sde.prediction,
                                         getattr(model, "scale_by_sigma", False))
  proposal = importance_times(sde, eps) if time_sampling == "importance" else None
  if not 0.0 <= label_dropout < 1.0:
    raise ValueError(f"training.label_dropout must be in [0, 1), got {label_dropout}.")

  def loss_fn(params: Params, rng: Array, batch: Batch) -> Array:
    dropout_rng, noise_rng = jax.random.split(rng)
    x, class_labels, z = batch, None, None
    if isinstance(batch, dict):
      x, z = batch["image"], batch.get("noise")
      if z is not None and not continuous:
        raise ValueError("coupled (image, noise) batches need a continuous objective.")
    if classes:
      if not isinstance(batch, dict):
        raise TypeError("a class-conditional network (num_classes > 0) is trained on "
                        "{'image': x, 'label': y} batches, got an array.")
      class_labels = batch["label"].astype(jnp.int32)
      if train and label_dropout > 0:
        class_labels = drop_labels(jax.random.fold_in(rng, _LABEL_DROPOUT_STREAM), class_labels,
                                   label_dropout, classes)
    if objective == "regression":
      model_fn = mutils.get_model_fn(model, params, train=train, rng=dropout_rng,
                                     class_labels=class_labels)
      return regression_loss(lambda x_t, t: model_fn(x_t, sde.noise_label(t)), converter, sde,
                             noise_rng, x, reduce_mean=reduce_mean, eps=eps,
                             time_sampling=time_sampling, logit_normal=logit_normal, z=z)
    score_fn = mutils.get_score_fn(sde, model, params, train=train, continuous=continuous,
                                   rng=dropout_rng, class_labels=class_labels,
                                   prediction=prediction)
    if continuous:
      return sde_loss(score_fn, sde, noise_rng, x, reduce_mean=reduce_mean,
                      likelihood_weighting=likelihood_weighting, eps=eps,
                      time_sampling=time_sampling, logit_normal=logit_normal, z=z,
                      proposal=proposal)
    return discrete_loss(score_fn, sde, noise_rng, x, reduce_mean=reduce_mean)

  return loss_fn


def batch_size_of(batch: Batch) -> int:
  """``B`` of a :data:`Batch` (every leaf is ``[B, ...]``)."""
  return jax.tree_util.tree_leaves(batch)[0].shape[0]


def per_example_losses(loss_fn: LossFn, params: Params, rng: Array, batch: Batch) -> Array:
  """``[B]`` losses of ``loss_fn`` on each example of ``batch`` (a :data:`Batch`) alone.

  Example ``b`` gets the key ``jax.random.split(rng, B)[b]``, so its loss does not depend on the
  rest of the batch (e.g. padding examples, which the caller can then mask out).
  """
  keys = jax.random.split(rng, batch_size_of(batch))
  return jax.vmap(lambda key, example: loss_fn(
      params, key, jax.tree_util.tree_map(lambda a: a[None], example)))(keys, batch)


# ----------------------------------------------------------------------------- classifier


def perturb(sde: sde_lib.SDE, rng: Array, x: Array, t: Array) -> Array:
  """``x(t) = a(t) x + std(t) z``, ``z ~ N(0, I)``: ``x: [B, ...]`` perturbed to ``t: [B]``."""
  mean, std = sde.marginal_prob(x, t)
  return mean + batch_mul(std, jax.random.normal(rng, x.shape, x.dtype))


def classifier_cross_entropy(model: Any, params: Params, sde: sde_lib.SDE, x_t: Array, t: Array,
                             labels: Array) -> Tuple[Array, Array]:
  """Cross-entropy ``[B]`` and correctness ``[B]`` (1.0 / 0.0) of a noise-conditional classifier
  (``models.classifier``) on ``x_t: [B, ...]`` at times ``t: [B]`` against ``labels: [B]``; the
  classifier is given the SDE's noise label of ``t``."""
  logits = model.apply({"params": params}, x_t, sde.noise_label(t), train=False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return nll, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def get_classifier_loss_fn(sde: sde_lib.SDE, model: Any, eps: float = 1e-5) -> AuxLossFn:
  """The objective of a noise-conditional classifier: ``loss_fn(params, rng, {'image': x,
  'label': y}) -> (mean cross-entropy, {'accuracy': mean correctness})`` on ``x`` perturbed to
  ``t ~ U(eps, T)`` (:func:`perturb`), for :func:`get_step_fn` with ``has_aux=True``."""

  def loss_fn(params: Params, rng: Array, batch: Dict[str, Array]
              ) -> Tuple[Array, Dict[str, Array]]:
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (images.shape[0],), minval=eps, maxval=sde.T)
    nll, correct = classifier_cross_entropy(model, params, sde, perturb(sde, z_rng, images, t), t,
                                            labels)
    return jnp.mean(nll), {"accuracy": jnp.mean(correct)}

  return loss_fn


# ----------------------------------------------------------------------------- steps


def _ema_update(ema: Params, params: Params, ema_rate: float) -> Params:
  """``ema_rate * ema + (1 - ema_rate) * params``, computed in float32, stored in ema's dtype."""

  def one(e, p):
    e32, p32 = e.astype(jnp.float32), p.astype(jnp.float32)
    return (ema_rate * e32 + (1.0 - ema_rate) * p32).astype(e.dtype)

  return jax.tree_util.tree_map(one, ema, params)


# Stream index of the evaluation key, so eval noise never reuses a training key.
_EVAL_STREAM = 1


def get_step_fn(loss_fn: Union[LossFn, AuxLossFn], optimizer: optax.GradientTransformation, *,
                train: bool, ema_rate: float, has_aux: bool = False) -> StepFn:
  """A pure, jittable ``step_fn(state, batch) -> (state, loss)`` (``batch``: a :data:`Batch`).

  ``train=True``: splits ``state.rng`` (keeping one half as the next state's key), takes a
  gradient step on ``loss_fn`` at ``state.params``, then updates the EMA with the *new*
  params, ``ema <- ema_rate * ema + (1 - ema_rate) * params``, and increments ``step``.

  ``train=False``: returns ``state`` unchanged and the loss of ``state.ema_params`` with noise
  from ``fold_in(state.rng, 1)`` -- a key no train step uses. Eval noise is thus a function
  of the state; pass ``state.replace(rng=key)`` to draw different noise.

  ``has_aux``: ``loss_fn`` is an :data:`AuxLossFn`, and the step returns ``(state, {'loss': loss,
  **metrics})`` instead of the bare loss.
  """

  def value(params: Params, rng: Array, batch: Batch) -> Tuple[Array, Dict[str, Array]]:
    out = loss_fn(params, rng, batch)
    return out if has_aux else (out, {})

  def result(loss: Array, metrics: Dict[str, Array]) -> Any:
    loss = loss.astype(jnp.float32)
    return {"loss": loss, **metrics} if has_aux else loss

  def train_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Any]:
    rng, step_rng = jax.random.split(state.rng)
    (loss, metrics), grads = jax.value_and_grad(value, has_aux=True)(state.params, step_rng,
                                                                     batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=_ema_update(state.ema_params, params, ema_rate), rng=rng)
    return new_state, result(loss, metrics)

  def eval_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Any]:
    loss, metrics = value(state.ema_params, jax.random.fold_in(state.rng, _EVAL_STREAM), batch)
    return state, result(loss, metrics)

  return train_step if train else eval_step


def get_multi_step_fn(step_fn: StepFn) -> Callable[[TrainState, Batch], Tuple[TrainState, Any]]:
  """``multi_step(state, batches) -> (state, losses: [n])``, ``n`` steps in a scan; ``batches``
  is a :data:`Batch` whose leaves are stacked ``[n, B, ...]`` (a step's metrics dict gives
  ``{name: [n]}``)."""

  def multi_step(state: TrainState, batches: Batch) -> Tuple[TrainState, Any]:
    return jax.lax.scan(step_fn, state, batches)

  return multi_step
