"""Controllable generation: inpainting, colorization, classifier and classifier-free guidance.

Everything here drives the samplers of :mod:`sampling` through the same plain
``score_fn(x: [B, ...], t: [B]) -> [B, ...]``, with ``t in [eps, T]`` in the SDE's own time.

Replacement sampling (:func:`get_pc_inpainter`, :func:`get_pc_colorizer`)
-------------------------------------------------------------------------
The known part of the data is a set of coordinates of an orthonormal "latent" view of ``x``:
the pixels themselves for inpainting, the grey channel of an orthonormal colour transform for
colorization (:func:`colour_decoupling`). The PC loop is :func:`sampling.get_pc_sampler`'s (the
same predictor and corrector classes, time grid, predictor-then-corrector order, one
``lax.scan`` and NFE count), with the known coordinates replaced, at every time ``t`` the loop
holds, by a forward-PERTURBED copy of the data, ``a(t) data + std(t) z`` (``sde.marginal_prob``;
an orthonormal transform keeps the noise isotropic), so the state is always a draw of the
perturbed data at ``t`` in its known part:

* at initialisation, ``x(T)``: the prior draw in the unknown part, the data perturbed to ``T``
  in the known part (the authors started the known part from the clean data, a sample from the
  wrong marginal at ``T``);
* after each predictor step ``t_i -> t_{i+1}`` a fresh perturbation to ``t_{i+1}`` replaces the
  known part, and the corrector's ``n_steps`` Langevin steps at ``t_{i+1}`` each end with that
  same perturbed copy put back, so the corrector is Langevin on the unknown part of ``p_t`` with
  the known part held fixed, i.e. it targets ``p_t(x_unknown | x_known)``.

Denoising (``denoise=True``) is the Tweedie step of the final state ``x(eps)``,
``E[x(0) | x(eps)]`` (:func:`sampling.tweedie_denoise`), of which the unknown part is kept; the
authors built their "denoised" output from the sample after its noise had been added, so the
unknown part was not denoised. With or without denoising, the known part of the output is the
data itself (exact for inpainting; up to float rounding of the orthonormal transform for
colorization).

Replacement is an approximation: it samples ``p_t(x_u | x_k)`` with a known part ``x_k`` freshly
perturbed at every step, not the exact conditional reverse process of ``p_0(x_u | x_k = data)``.
Measured on correlated Gaussian data against the closed-form conditional (the tests): with the
predictor alone the unknown part stays near its marginal (mean error ~1.0 for a conditional mean
1.5 away), and the error falls with the corrector's ``n_steps`` (16 Langevin steps per step, 50
steps: 0.04 VE, 0.14 sub-VP, 0.29 VP), so inpainting wants a corrector.

Guidance (:func:`classifier_guided_score`, :func:`classifier_free_guided_score`)
-------------------------------------------------------------------------------
Both return a plain ``score_fn(x, t)``, so every sampler (:func:`sampling.get_pc_sampler`,
:func:`sampling.get_ode_sampler`, the inpainter) runs on it unchanged:

* classifier guidance, ``score(x, t) + scale grad_x log p_t(y | x)``, from a noise-conditional
  classifier ``log_prob_fn(x, t)`` that receives the SDE's own time ``t`` (a network wrapper maps
  it to the SDE's noise label, as ``models.utils.get_score_fn`` does for score networks; the
  authors fed their classifier the marginal std as a "VE noise scale" whatever the SDE). With
  ``scale = 1`` and exact ingredients it is Bayes' rule, the score of ``p_t(x | y)``.
* classifier-free guidance, ``(1 + w) s(x, t, y) - w s(x, t)`` (Ho & Salimans 2022), from a
  class-conditional and an unconditional score; ``w = 0`` is the conditional model, ``w > 0``
  sharpens it towards ``p(x | y)^(1 + w) / p(x)^w``. Each guided evaluation costs one
  conditional and one unconditional evaluation, so a sampler's reported NFE counts guided score
  evaluations (half the network evaluations).

Class-conditional score networks (``model.num_classes = K > 0``: NCSN++/DDPM++ and the toy MLP,
called with ``class_labels``) give both scores of classifier-free guidance from one set of
parameters: :func:`get_conditional_score_fn`, the unconditional one being the null label ``K``
(:func:`unconditional_score_fn`), trained together by label dropout (``losses.get_loss_fn``
with ``label_dropout``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

import sampling
import sde_lib
from models import utils as mutils
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
LogProbFn = Callable[[Array, Array], Array]
"""``log_prob_fn(x: [B, ...], t: [B]) -> [B, num_classes]``: log p_t(y | x) (or logits)."""
ConditionalScoreFn = Callable[[Array, Array, Array], Array]
"""``score_fn(x: [B, ...], t: [B], labels: [B] int) -> [B, ...]``: grad_x log p_t(x | y)."""
InpaintFn = Callable[[Array, ScoreFn, Array, Array], sampling.SampleOutput]
"""``inpaint(rng, score_fn, data: [B, ...], mask) -> (x, nfe)`` (``(x, nfe, trajectory)``)."""
ColorizeFn = Callable[[Array, ScoreFn, Array], sampling.SampleOutput]
"""``colorize(rng, score_fn, gray: [B, H, W, C]) -> (x, nfe)`` (``(x, nfe, trajectory)``)."""


# --------------------------------------------------------------------------- guidance


def classifier_guided_score(score_fn: ScoreFn, log_prob_fn: LogProbFn, labels: Array,
                            scale: float = 1.0) -> ScoreFn:
  """``score_fn(x, t) + scale grad_x log p_t(labels | x)`` as a plain ``score_fn(x, t)``.

  Args:
    score_fn: the unconditional score, ``(x: [B, ...], t: [B]) -> [B, ...]``.
    log_prob_fn: the noise-conditional classifier, ``(x, t) -> [B, num_classes]``, called with
      the sampler's ``x`` and time ``t`` (not a noise scale). Log-probabilities or logits: they
      are normalised with ``log_softmax`` here (which leaves log-probabilities unchanged).
    labels: int ``[B]``, the class each example is drawn from.
    scale: guidance scale; 1 is Bayes' rule, larger values sharpen.

  The classifier must treat the examples of a batch independently (no batch statistics), so
  the gradient of the summed log-probabilities is each example's own gradient.
  """
  labels = jnp.asarray(labels, jnp.int32)

  def guided_score_fn(x: Array, t: Array) -> Array:

    def log_prob_of_labels(y: Array) -> Array:
      log_probs = jax.nn.log_softmax(log_prob_fn(y, t).astype(jnp.float32), axis=-1)
      return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    grad = jax.grad(log_prob_of_labels)(x)
    return score_fn(x, t) + scale * grad.astype(x.dtype)

  return guided_score_fn


def classifier_free_guided_score(conditional_score_fn: ConditionalScoreFn,
                                 unconditional_score_fn: ScoreFn, labels: Array,
                                 guidance_weight: Union[float, Array]) -> ScoreFn:
  """``(1 + w) s(x, t, labels) - w s(x, t)`` as a plain ``score_fn(x, t)``.

  Args:
    conditional_score_fn: ``(x: [B, ...], t: [B], labels: [B]) -> [B, ...]``.
    unconditional_score_fn: ``(x, t) -> [B, ...]`` (for a model trained with label dropout, the
      conditional model given its null label).
    labels: int ``[B]``.
    guidance_weight: ``w >= 0``: a Python number (``w = 0`` is the conditional score alone, the
      unconditional one then not evaluated) or a traced scalar (one compiled sampler for every
      ``w``; both scores always evaluated).
  """
  if isinstance(guidance_weight, (int, float)) and guidance_weight < 0:
    raise ValueError(f"guidance_weight must be >= 0, got {guidance_weight}.")
  labels = jnp.asarray(labels, jnp.int32)
  w = guidance_weight

  def guided_score_fn(x: Array, t: Array) -> Array:
    conditional = conditional_score_fn(x, t, labels)
    if isinstance(w, (int, float)) and w == 0:
      return conditional
    weight = jnp.asarray(w, x.dtype)
    return (1.0 + weight) * conditional - weight * unconditional_score_fn(x, t)

  return guided_score_fn


# --------------------------------------------------------------------------- class-conditional


def get_conditional_score_fn(sde: sde_lib.SDE, model: Any, params: Any, continuous: bool = True,
                             prediction: Optional[str] = None) -> ConditionalScoreFn:
  """``score_fn(x, t, labels)`` of a class-conditional network (``num_classes > 0``, called with
  ``class_labels``), converted to a score as ``models.utils.get_score_fn`` converts any network;
  ``labels = model.num_classes`` (the null label) gives its unconditional score."""

  def score_fn(x: Array, t: Array, labels: Array) -> Array:
    return mutils.get_score_fn(sde, model, params, continuous=continuous,
                               class_labels=labels, prediction=prediction)(x, t)

  return score_fn


def unconditional_score_fn(conditional_score_fn: ConditionalScoreFn,
                           num_classes: int) -> ScoreFn:
  """``score_fn(x, t)`` of a class-conditional score given the null label ``num_classes``."""

  def score_fn(x: Array, t: Array) -> Array:
    return conditional_score_fn(x, t, jnp.full((x.shape[0],), num_classes, jnp.int32))

  return score_fn


# --------------------------------------------------------------------------- colour


def colour_decoupling(num_channels: int) -> np.ndarray:
  """An orthonormal ``[C, C]`` matrix ``M`` whose first column is ``1 / sqrt(C)``.

  ``y = x M`` (per pixel, ``x: [..., C]``) puts the grey component ``sum_c x_c / sqrt(C)`` in
  channel 0 and the colour in channels ``1 .. C - 1``; ``x = y M^T`` inverts it. For ``C = 3`` it
  spans the same grey/colour subspaces as the authors' fixed matrix (its colour columns may be
  rotated within their plane, which changes nothing: the colour is sampled as a whole).
  """
  if num_channels < 2:
    raise ValueError(f"Colorization needs at least 2 channels, got {num_channels}.")
  # Gram-Schmidt (QR) of [ones, e_1, ..., e_{C-1}]: the first column is the grey direction.
  basis = np.concatenate([np.ones((num_channels, 1)), np.eye(num_channels)[:, :-1]], axis=1)
  q, r = np.linalg.qr(basis)
  return q * np.sign(np.diag(r))[None]


def to_gray(x: Array) -> Array:
  """The grey image of ``x: [B, H, W, C]``, its channel mean repeated over the ``C`` channels
  (the part of ``x`` that :func:`get_pc_colorizer` keeps)."""
  return jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)


# --------------------------------------------------------------------------- replacement


def _replacement_sampler(sde: sde_lib.SDE, predictor: str, corrector: str, *, snr: float,
                         n_steps: int, probability_flow: bool, denoise: bool, eps: float,
                         num_steps: Optional[int], num_frames: int,
                         latent: Optional[np.ndarray]):
  """``sample(rng, score_fn, known, mask)`` of the module docstring's replacement sampler.

  ``known, mask: [B, ...]`` live in the latent view ``y = x latent`` (last axis; the pixels
  themselves if ``latent`` is None); ``mask`` is boolean, True where ``known`` is observed.
  """
  predictor_cls, corrector_cls = sampling.PREDICTORS.get(predictor), sampling.CORRECTORS.get(
      corrector)
  predictor_cls.check(sde, probability_flow)
  num_steps = sde.N if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if n_steps < 0:
    raise ValueError(f"n_steps must be >= 0, got {n_steps}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T = {sde.T}), got {eps}.")
  num_frames = sampling.check_num_frames(num_frames, num_steps + 1)
  frame_index = sampling.pc_frame_indices(num_steps, num_frames) if num_frames else None
  slots = sampling.frame_slots(frame_index, num_steps) if num_frames else None

  def to_latent(x: Array) -> Array:
    return x if latent is None else jnp.einsum("...i,ij->...j", x, jnp.asarray(latent, x.dtype))

  def from_latent(y: Array) -> Array:
    return y if latent is None else jnp.einsum("...j,ij->...i", y, jnp.asarray(latent, y.dtype))

  def sample(rng: Array, score_fn: ScoreFn, known: Array, mask: Array) -> sampling.SampleOutput:
    batch = known.shape[0]
    pred = predictor_cls(sde, score_fn, probability_flow)
    # One Langevin step per update, so the known part can be put back after each of them.
    corr = corrector_cls(sde, score_fn, snr, 1)
    run_corrector = corr.score_evals > 0 and n_steps > 0

    def perturbed_known(key: Array, t: Array) -> Array:
      mean, std = sde.marginal_prob(known, t)
      return mean + batch_mul(std, jax.random.normal(key, known.shape, known.dtype))

    def replace(x: Array, known_t: Array) -> Array:
      return from_latent(jnp.where(mask, known_t, to_latent(x)))

    prior_rng, init_rng, loop_rng = jax.random.split(rng, 3)
    times = jnp.linspace(sde.T, eps, num_steps + 1, dtype=known.dtype)
    x = replace(sde.prior_sampling(prior_rng, known.shape).astype(known.dtype),
                perturbed_known(init_rng, jnp.full((batch,), times[0])))

    def pc_step(x, inputs):
      key, t, t_next = inputs
      pred_rng, known_rng, corr_rng = jax.random.split(key, 3)
      t, t_next = jnp.full((batch,), t), jnp.full((batch,), t_next)
      x, _ = pred.update(pred_rng, x, t, t_next)
      known_t = perturbed_known(known_rng, t_next)
      x = replace(x, known_t)
      if run_corrector:

        def corrector_step(x, step_rng):
          x, _ = corr.update(step_rng, x, t_next)
          return replace(x, known_t), None

        x, _ = jax.lax.scan(corrector_step, x, jax.random.split(corr_rng, n_steps))
      return x

    keys = jax.random.split(loop_rng, num_steps)
    x, frames = sampling.scan_with_frames(pc_step, x, (keys, times[:-1], times[1:]), slots,
                                          first=x)
    if denoise:
      x = sampling.tweedie_denoise(sde, score_fn, x, jnp.full((batch,), times[-1]))
    # The known part of the output is the clean data, the unknown part the (denoised) sample.
    x = replace(x, known)
    nfe = num_steps * (pred.score_evals + (n_steps * corr.score_evals if run_corrector else 0))
    nfe += int(denoise)
    if num_frames:
      return x, nfe, sampling.Trajectory(times[frame_index], frames.at[-1].set(x))
    return x, nfe

  return sample


INPAINT_REGIONS = ("left_half", "right_half", "top_half", "bottom_half", "center")
"""Named regions of an image to inpaint (:func:`inpainting_mask`)."""


def inpainting_mask(region: str, image_size: int) -> np.ndarray:
  """``[H, W, 1]`` float32 (``H = W = image_size``), 1 where the pixel is known and 0 in
  ``region`` (to be inpainted): a half of the image, or ``'center'``, the central square of half
  the side.

  Raises:
    ValueError: for a region not in :data:`INPAINT_REGIONS`.
  """
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


def get_pc_inpainter(sde: sde_lib.SDE, predictor: str, corrector: str, *, snr: float = 0.16,
                     n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
                     eps: float = 1e-3, num_steps: Optional[int] = None,
                     num_frames: int = 0) -> InpaintFn:
  """A PC inpainter ``inpaint(rng, score_fn, data, mask) -> (x, nfe)`` (module docstring).

  Arguments as :func:`sampling.get_pc_sampler` (``n_steps`` Langevin steps per predictor step,
  each followed by the replacement of the known part). ``inpaint`` takes

    data: ``[B, ...]`` in model space; only its known entries are read.
    mask: broadcastable to ``data``, 1 (or True) where the entry is known, 0 where it is to be
      inpainted.

  and returns ``x: [B, ...]``, equal to ``data`` wherever ``mask`` is 1, and
  ``nfe = num_steps (predictor + n_steps corrector evaluations) + denoise``. With ``num_frames =
  K`` it also returns a :class:`sampling.Trajectory` (frame 0 the initial state, known part
  perturbed to ``T``; frame ``K - 1`` the returned ``x``). Not jitted, like the samplers.
  """
  sample = _replacement_sampler(sde, predictor, corrector, snr=snr, n_steps=n_steps,
                                probability_flow=probability_flow, denoise=denoise, eps=eps,
                                num_steps=num_steps, num_frames=num_frames, latent=None)

  def inpaint(rng: Array, score_fn: ScoreFn, data: Array, mask: Array) -> sampling.SampleOutput:
    data = jnp.asarray(data)
    return sample(rng, score_fn, data, jnp.broadcast_to(jnp.asarray(mask) != 0, data.shape))

  return inpaint


def get_pc_colorizer(sde: sde_lib.SDE, predictor: str, corrector: str, *, num_channels: int = 3,
                     snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
                     denoise: bool = True, eps: float = 1e-3, num_steps: Optional[int] = None,
                     num_frames: int = 0) -> ColorizeFn:
  """A PC colorizer ``colorize(rng, score_fn, gray) -> (x, nfe)`` (module docstring).

  Arguments as :func:`get_pc_inpainter`; ``num_channels = C >= 2``. ``colorize`` takes ``gray:
  [B, H, W, C]`` in model space: a grey image repeated over its channels (:func:`to_gray`), or
  any image, of which only the grey component ``sum_c x_c / sqrt(C)`` (channel 0 of
  :func:`colour_decoupling`) is read. It returns ``x: [B, H, W, C]`` with that grey component
  and sampled colour, the NFE and, with ``num_frames``, the :class:`sampling.Trajectory`.
  """
  latent = colour_decoupling(num_channels)
  sample = _replacement_sampler(sde, predictor, corrector, snr=snr, n_steps=n_steps,
                                probability_flow=probability_flow, denoise=denoise, eps=eps,
                                num_steps=num_steps, num_frames=num_frames, latent=latent)

  def colorize(rng: Array, score_fn: ScoreFn, gray: Array) -> sampling.SampleOutput:
    gray = jnp.asarray(gray)
    if gray.shape[-1] != num_channels:
      raise ValueError(f"The colorizer was built for {num_channels} channels, got an image of "
                       f"shape {gray.shape}.")
    known = jnp.einsum("...i,ij->...j", gray, jnp.asarray(latent, gray.dtype))
    return sample(rng, score_fn, known, jnp.broadcast_to(jnp.arange(num_channels) == 0,
                                                         gray.shape))

  return colorize
