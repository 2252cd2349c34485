"""Noise schedules suggested by the data (Song & Ermon 2020, "Improved Techniques for Training
Score-Based Generative Models", Techniques 1, 2 and 4, and their VP / sub-VP counterparts).

``python -m noise_schedule --config configs/image_folder.py --config.data.data_dir=DIR
[--config.a.b=v ...] [--max_examples 10000]`` (``noise_schedule/__main__.py``) reads the training
split as training would see it (``datasets.load_split``, scaled to the model's space by
``datasets.get_data_scaler``) and prints ready-to-paste overrides, each with its reason. This
module is the math, on plain numbers and numpy arrays. ``D`` is the number of values per example
(``H * W * C``).

VE (SMLD levels ``sigma_max = sigma_1 > ... > sigma_L = sigma_min``):

* Technique 1, ``model.sigma_max``: the largest Euclidean distance between two training examples
  (:func:`max_pairwise_distance`), so that at the largest noise the perturbed distributions of
  any two examples overlap and Langevin dynamics can move between them.
* Technique 2, ``model.num_scales``: a geometric ladder whose ratio ``gamma = sigma_{i-1} /
  sigma_i`` satisfies ``Phi(sqrt(2D) (gamma - 1) + 3 gamma) - Phi(sqrt(2D) (gamma - 1) - 3 gamma)
  = 1/2`` (:func:`geometric_ratio`; ``Phi`` the standard normal CDF): at level ``i``, ``x ~ N(0,
  sigma_i^2 I)`` has ``||x|| ~ N(sqrt(D) sigma_i, sigma_i^2 / 2)`` nearly, and half of that mass
  must lie in level ``i - 1``'s shell, within three of its standard deviations ``sigma_{i-1} /
  sqrt(2)`` of its typical norm ``sqrt(D) sigma_{i-1}``. ``L`` is the fewest levels from
  ``sigma_min`` whose ratio is at most that ``gamma`` (:func:`num_noise_levels`). A solution
  exists for ``D >= 5`` only. ``model.sigma_min`` is the config's: the paper does not derive it
  (its configs use 0.01). On CIFAR-10 (``D = 3072``, 50 to 0.01) this gives ``gamma = 1.0398``
  and ``L = 220``. The authors' configs use about 5 % more levels (CIFAR-10 232, CelebA 500, LSUN
  bedroom 1086, FFHQ 2311), at which the formula's overlap is 0.566-0.567 for every one of them;
  score_sde's VE configs use 1000 levels, which only adds overlap.
* Technique 4, ``sampling.snr``: annealed Langevin dynamics takes ``T`` steps ``x <- x + a_i
  score + sqrt(2 a_i) z`` at level ``i`` with ``a_i = epsilon sigma_i^2 / sigma_L^2``. For data
  concentrated at a point, the score at level ``i`` is ``-x / sigma_i^2``, so each step is
  ``x <- (1 - u) x + sqrt(2 a_i) z`` with ``u = epsilon / sigma_L^2``, and starting from the
  previous level, ``x ~ N(0, gamma^2 sigma_i^2 I)``, the variance after ``T`` steps is ``s_T^2 =
  c^T (gamma^2 sigma_i^2 - v) + v`` with ``c = (1 - u)^2``, ``v = 2 a_i / (1 - c)``, i.e.
  ``s_T^2 / sigma_i^2 = (1 - u)^{2T} (gamma^2 - 1 / (1 - u/2)) + 1 / (1 - u/2)``
  (:func:`variance_ratio`), the same at every level. It exceeds 1 for every ``0 < u < 1``
  (too little mixing for small ``u``, the discretization's bias ``1 / (1 - u/2)`` for large), so
  "as close to 1 as possible" is its minimum over ``epsilon`` (:func:`langevin_epsilon`). On the
  authors' NCSNv2 ladders this reproduces their ``epsilon`` within 2 %: 6.2e-6 for CIFAR-10
  (``T = 5``), 3.3e-6 for CelebA (5), 1.8e-6 for LSUN bedroom (3) and 9e-7 for FFHQ (3); their
  LSUN church step, 4.9e-6 (``T = 4``), is twice this rule's 2.3e-6.
  As ``sampling.snr``: the ``ald`` corrector steps ``e = 2 alpha (snr sigma(t))^2`` with ``alpha
  = 1`` for VE, so ``e = a_i`` exactly when ``snr = sqrt(epsilon / 2) / sigma_L = sqrt(u / 2)``
  (:func:`snr_for_epsilon`); the ``langevin`` corrector's ``e = 2 alpha (snr ||z|| /
  ||score||)^2`` is the same step where ``||score|| ~ ||z|| / sigma_i``, as in the model above.
  ``T`` is ``sampling.n_steps_each``. The criterion assumes each level starts from the previous
  level's distribution, as in corrector-only sampling (``sampling.predictor = none``); with a
  predictor, which already moves the samples between levels, the number is a reference point.

VP and sub-VP (``beta(t) = beta_min + t (beta_max - beta_min)`` on ``[0, 1]``, ``alpha_bar(t) =
exp(-int_0^t beta)``; the marginal of ``x_0`` has mean ``sqrt(alpha_bar) x_0`` and std
``sqrt(1 - alpha_bar)`` (VP) or ``1 - alpha_bar`` (sub-VP)):

* ``model.beta_max`` carries Technique 1 over: in VE it makes the largest separation between two
  examples, ``d``, one noise std at ``t = 1``. Here the separation at ``t = 1`` is
  ``sqrt(alpha_bar(1)) d``; asking it to equal the marginal std gives ``alpha_bar(1) = 1 / (1 +
  d^2)`` for VP and ``sqrt(alpha_bar(1)) = 2 / (d + sqrt(d^2 + 4))`` for sub-VP, and since
  ``int_0^1 beta = (beta_min + beta_max) / 2``, ``beta_max = -2 log alpha_bar(1) - beta_min``
  (:func:`vp_beta_max`, :func:`subvp_beta_max`; at least ``beta_min``). For CIFAR-10 in [-1, 1]
  (``d`` about 100) both give about 18.3, next to the authors' 20.
* ``model.num_scales`` and ``sampling.snr`` are not derived: Technique 2's ratio argument does
  hold in the rescaled variable ``x / sqrt(alpha_bar(t))``, whose noise is ``sqrt(1 /
  alpha_bar(t) - 1)``, but the samplers' grid is uniform in ``t``, on which that noise is not
  geometric: near ``t = eps`` it grows like ``sqrt(t)``, so the bound would be set by the first
  step above ``sampling.eps`` (about 12 000 steps for CIFAR-10), a property of the grid rather
  than of the data, and the VP predictors (Euler-Maruyama, reverse diffusion, DDPM's ancestral
  step) do not rely on Langevin mixing between levels. Technique 4 needs one ratio between all
  levels, which this grid does not have either.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np



# ------------------------------------------------------------------------------------------------
# Technique 1: the largest noise.


def max_pairwise_distance(x: np.ndarray, block: int = 1024) -> float:
  """The largest Euclidean distance between two rows of ``x``, exactly.

  Squared distances ``|a|^2 + |b|^2 - 2 a.b`` are formed in float64 for one ``block x block``
  tile of pairs at a time (each pair once), so memory stays ``O(block * (block + D))`` and the
  cost is ``N^2 D`` multiply-adds. Integer data (uint8 pixels) give exact squared distances.

  Args:
    x: ``[N, D]`` numbers, ``N >= 2``.
    block: rows per tile.

  Returns:
    ``max_{i < j} ||x_i - x_j||``, in the units of ``x``.
  """
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"max_pairwise_distance needs [N, D] with N >= 2, got shape {x.shape}.")
  n = x.shape[0]
  squares = np.empty(n, np.float64)
  for i in range(0, n, block):
    rows = x[i:i + block].astype(np.float64)
    squares[i:i + block] = np.einsum("nd,nd->n", rows, rows)
  largest = 0.0
  for i in range(0, n, block):
    rows = x[i:i + block].astype(np.float64)
    for j in range(i, n, block):
      cols = rows if j == i else x[j:j + block].astype(np.float64)
      tile = squares[i:i + block, None] + squares[None, j:j + block] - 2.0 * (rows @ cols.T)
      largest = max(largest, float(tile.max()))
  return math.sqrt(largest)


# ------------------------------------------------------------------------------------------------
# Technique 2: the number of levels.


def level_overlap(gamma: float, dim: int) -> float:
  """``Phi(sqrt(2D) (gamma - 1) + 3 gamma) - Phi(sqrt(2D) (gamma - 1) - 3 gamma)``.

  The probability (to the normal approximation of the norm) that the norm of ``x ~ N(0, sigma_i^2
  I)`` falls within ``3 sigma_{i-1} / sqrt(2)`` of ``sqrt(D) sigma_{i-1}``, the typical norm at the
  level above, ``sigma_{i-1} = gamma sigma_i`` (Technique 2 asks for 1/2).
  """
  shift = math.sqrt(2.0 * dim) * (gamma - 1.0)
  return 0.5 * (math.erf((shift + 3.0 * gamma) / math.sqrt(2.0))
                - math.erf((shift - 3.0 * gamma) / math.sqrt(2.0)))


def geometric_ratio(dim: int, overlap: float = 0.5) -> float:
  """The ratio ``gamma > 1`` at which :func:`level_overlap` equals ``overlap``, by bisection.

  Raises:
    ValueError: for ``D < 5``: there ``sqrt(2D) <= 3`` and the overlap never falls to 1/2.
  """
  if dim < 5:
    raise ValueError(f"Technique 2 needs D >= 5 values per example (got {dim}): for fewer the "
                     f"overlap of adjacent levels never falls to {overlap}.")
  lo, step = 1.0, 1.0
  while level_overlap(1.0 + step, dim) > overlap:
    lo, step = 1.0 + step, 2.0 * step
  hi = 1.0 + step
  while hi - lo > 1e-15 * hi:
    mid = 0.5 * (lo + hi)
    if mid in (lo, hi):
      break
    if level_overlap(mid, dim) > overlap:
      lo = mid
    else:
      hi = mid
  return lo


def num_noise_levels(sigma_min: float, sigma_max: float, dim: int) -> int:
  """Technique 2's ``L``: the fewest geometric levels from ``sigma_max`` down to ``sigma_min``
  whose ratio ``(sigma_max / sigma_min)^(1 / (L - 1))`` is at most :func:`geometric_ratio`."""
  if not 0.0 < sigma_min < sigma_max:
    raise ValueError(f"Technique 2 needs 0 < sigma_min < sigma_max, got sigma_min = {sigma_min}, "
                     f"sigma_max = {sigma_max}.")
  gamma = geometric_ratio(dim)
  return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma))


def ladder_ratio(sigma_min: float, sigma_max: float, num_levels: int) -> float:
  """The ratio ``sigma_{i-1} / sigma_i`` of ``num_levels >= 2`` geometric levels."""
  return (sigma_max / sigma_min) ** (1.0 / (num_levels - 1))


# ------------------------------------------------------------------------------------------------
# Technique 4: the Langevin step.


def variance_ratio(epsilon: float, sigma_min: float, gamma: float, n_steps: int) -> float:
  """``s_T^2 / sigma_i^2 = (1 - u)^{2T} (gamma^2 - 1 / (1 - u/2)) + 1 / (1 - u/2)``, ``u =
  epsilon / sigma_min^2``: the variance reached by ``T = n_steps`` Langevin steps at any level,
  relative to the level's own (the module docstring derives it). Needs ``0 < u < 1``.

  Formed as ``1 + bias (1 - (1 - u)^{2T}) + (1 - u)^{2T} (gamma^2 - 1)``, with ``bias = 1 / (1 -
  u/2) - 1``, so that its distance from 1 stays accurate for small ``u`` and ``gamma - 1``.
  """
  u = epsilon / sigma_min**2
  if not 0.0 < u < 1.0:
    raise ValueError(f"variance_ratio needs 0 < epsilon / sigma_min^2 < 1, got {u}.")
  log_decay = 2 * n_steps * math.log1p(-u)
  bias = 0.5 * u / (1.0 - 0.5 * u)
  return 1.0 - bias * math.expm1(log_decay) + math.exp(log_decay) * (gamma - 1.0) * (gamma + 1.0)


def langevin_epsilon(sigma_min: float, gamma: float, n_steps: int) -> float:
  """Technique 4's ``epsilon``: the minimizer of :func:`variance_ratio` (always > 1).

  Searched over ``u = epsilon / sigma_min^2`` in ``(0, 1)`` (the minimum lies there: for ``1 <=
  u < 2`` the ratio is at least 2, just below ``u = 1`` it is under 2, and from ``u = 2`` on the
  steps diverge), on a logarithmic grid and then by golden-section search around the grid's best
  point.
  """
  if n_steps < 1 or gamma <= 1.0:
    raise ValueError(f"Technique 4 needs n_steps >= 1 and gamma > 1, got {n_steps}, {gamma}.")

  def excess(log_u: float) -> float:
    return variance_ratio(math.exp(log_u) * sigma_min**2, sigma_min, gamma, n_steps) - 1.0

  grid = np.linspace(math.log(1e-12), math.log1p(-1e-9), 2001)
  k = int(np.argmin([excess(g) for g in grid]))
  lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
  return math.exp(_golden_section(excess, lo, hi)) * sigma_min**2


def _golden_section(f: Callable[[float], float], lo: float, hi: float) -> float:
  """The minimizer of ``f`` on ``[lo, hi]``, assumed unimodal there."""
  inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
  a, b = lo + (1 - inv_phi) * (hi - lo), lo + inv_phi * (hi - lo)
  fa, fb = f(a), f(b)
  for _ in range(200):
    if fa < fb:
      hi, b, fb = b, a, fa
      a = lo + (1 - inv_phi) * (hi - lo)
      fa = f(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + inv_phi * (hi - lo)
      fb = f(b)
  return 0.5 * (lo + hi)


def snr_for_epsilon(epsilon: float, sigma_min: float) -> float:
  """``sampling.snr`` whose corrector step equals Technique 4's: ``sqrt(epsilon / 2) /
  sigma_min`` (the ``ald`` corrector exactly; see the module docstring)."""
  return math.sqrt(0.5 * epsilon) / sigma_min


# ------------------------------------------------------------------------------------------------
# VP and sub-VP.


def vp_beta_max(max_distance: float, beta_min: float) -> float:
  """``beta_max`` with ``sqrt(alpha_bar(1)) d = sqrt(1 - alpha_bar(1))`` for the VP SDE, i.e.
  ``alpha_bar(1) = 1 / (1 + d^2)``; at least ``beta_min``."""
  return max(beta_min, 2.0 * math.log1p(max_distance**2) - beta_min)


def subvp_beta_max(max_distance: float, beta_min: float) -> float:
  """``beta_max`` with ``sqrt(alpha_bar(1)) d = 1 - alpha_bar(1)`` for the sub-VP SDE, i.e.
  ``sqrt(alpha_bar(1)) = 2 / (d + sqrt(d^2 + 4))``; at least ``beta_min``."""
  root = 2.0 / (max_distance + math.sqrt(max_distance**2 + 4.0))
  return max(beta_min, -4.0 * math.log(root) - beta_min)


# ------------------------------------------------------------------------------------------------
# All of them.


class Schedule(NamedTuple):
  """The suggestions for one data set (the module docstring gives each criterion).

  Attributes:
    max_distance: the largest distance between two examples, in the model's space.
    dim: D, values per example.
    sigma_min: the config's smallest VE noise (not derived).
    sigma_max: Technique 1, ``max_distance``.
    num_scales: Technique 2's number of levels L.
    gamma: the ratio of those L levels (at most the ratio at which adjacent levels overlap 1/2).
    n_steps: T, Langevin steps per level.
    epsilon: Technique 4's step.
    variance_ratio: :func:`variance_ratio` at that step (> 1; the closer to 1 the better).
    snr: ``epsilon`` as ``sampling.snr``.
    beta_min: the config's ``beta_min`` (not derived).
    vp_beta_max, subvp_beta_max: ``beta_max`` for the VP and sub-VP SDEs.
  """
  max_distance: float
  dim: int
  sigma_min: float
  sigma_max: float
  num_scales: int
  gamma: float
  n_steps: int
  epsilon: float
  variance_ratio: float
  snr: float
  beta_min: float
  vp_beta_max: float
  subvp_beta_max: float


def schedule(max_distance: float, dim: int, *, sigma_min: float, beta_min: float,
             n_steps: int) -> Schedule:
  """Every suggestion, from the largest distance between examples and their dimension ``D``."""
  num_scales = num_noise_levels(sigma_min, max_distance, dim)
  gamma = ladder_ratio(sigma_min, max_distance, num_scales)
  epsilon = langevin_epsilon(sigma_min, gamma, n_steps)
  ratio = variance_ratio(epsilon, sigma_min, gamma, n_steps)
  return Schedule(max_distance=max_distance, dim=dim, sigma_min=sigma_min,
                  sigma_max=max_distance, num_scales=num_scales, gamma=gamma, n_steps=n_steps,
                  epsilon=epsilon, variance_ratio=ratio, snr=snr_for_epsilon(epsilon, sigma_min),
                  beta_min=beta_min,
                  vp_beta_max=vp_beta_max(max_distance, beta_min),
                  subvp_beta_max=subvp_beta_max(max_distance, beta_min))
