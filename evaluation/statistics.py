"""Sample-quality statistics: two-sample tests on raw samples, and metrics on classifier features.

The first need no pretrained network (energy distance, MMD). The second take features or logits
of a classifier, ``[N, F]`` / ``[N, K]`` NumPy arrays, and compute in float64 on the host: the
Frechet distance (FID with Inception features), the Kernel Inception Distance and the Inception
Score. :func:`reference_statistics` runs a (jitted, sharded) feature function over batches of
images, resumably, and :func:`save_statistics` / :func:`load_statistics` keep a data set's
reference statistics in an ``.npz`` (the authors' ``pool_3``-only files read too).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from evaluation import eval_cache
from infra import outputs


def energy_distance(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> float:
  """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` of samples ``x: [N, ...]``, ``y: [M, ...]``.

  Zero iff the two distributions are equal (Szekely & Rizzo); the V-statistic estimate used here
  is biased upwards by ``O(1/N)``, so compare values computed with equal sample sizes. At most
  ``max_points`` of each sample are used (the cost is quadratic).
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)[:max_points]
  y = np.asarray(y, np.float64).reshape(len(y), -1)[:max_points]

  def mean_dist(a, b):
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return float(np.sqrt(np.maximum(sq, 0.0)).mean())

  return 2.0 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0),
            max_points: int = 2000) -> float:
  """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels.

  ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths`` (in data units), so both fine
  structure (narrow modes) and coarse shape count. ``x: [N, ...]``, ``y: [M, ...]``; at most
  ``max_points`` of each are used. The estimate is zero in expectation iff the distributions agree.
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)[:max_points]
  y = np.asarray(y, np.float64).reshape(len(y), -1)[:max_points]

  def kernel(a, b):
    sq = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
    return sum(np.exp(-sq / (2.0 * h * h)) for h in bandwidths)

  n, m = len(x), len(y)
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) /
               (m * (m - 1)) - 2.0 * kxy.mean())


def two_sample_statistics(samples: np.ndarray, data: np.ndarray,
                          prior: np.ndarray) -> Dict[str, float]:
  """Energy distance and MMD of ``samples`` to ``data``, and of ``prior`` samples to ``data``.

  The prior's values are the reference a trained model must beat. All three arrays ``[N, ...]``
  should have the same ``N`` (both statistics are biased by ``O(1/N)``).
  """
  return {"energy_distance": energy_distance(samples, data),
          "prior_energy_distance": energy_distance(prior, data),
          "mmd": mmd_rbf(samples, data), "prior_mmd": mmd_rbf(prior, data)}


# FID is biased upwards by O(1/n); published numbers use 50,000 samples, so fewer are not
# comparable with them (only with values computed from the same n).
FID_REFERENCE_SAMPLES = 50_000


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Mean ``[F]`` and unbiased covariance ``[F, F]`` (``np.cov``, ``rowvar=False``) of
  ``features: [N, F]``, ``N >= 2``, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"feature_statistics needs features [N, F] with N >= 2, got shape "
                     f"{features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix; round-off negative eigenvalues
  count as zero."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
  return (eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of two Gaussians.

  ``mu: [F]``, ``sigma: [F, F]``. Computed on the host in float64, in TF-GAN's symmetric form:
  the trace of ``(S1 S2)^(1/2)`` is that of ``(S1^(1/2) S2 S1^(1/2))^(1/2)``, a symmetric positive
  semi-definite matrix, so both square roots come from symmetric eigendecompositions. That
  form has real eigenvalues even when a covariance is singular (fewer samples than features),
  so no imaginary part arises and no diagonal offset is needed: eigenvalues that round-off made
  slightly negative count as zero. The result is clipped at zero for the same reason.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"frechet_distance needs mu [F] and sigma [F, F] of one F, got "
                     f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
  root1 = _symmetric_sqrt(sigma1)
  product = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
  trace_sqrt = np.sqrt(np.maximum(eigenvalues, 0.0)).sum()
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(value, 0.0))


def frechet_distance_of_features(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
  """``frechet_distance(*feature_statistics(features), mu, sigma)`` for ``features: [N, F]``.

  With ``N <= F`` (an evaluation of fewer samples than features) the sample covariance is
  ``S1 = A^T A / (N - 1)`` of rank ``< N`` (``A`` the centred features), and the nonzero
  eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` are those of the ``N x N`` matrix
  ``A S2 A^T / (N - 1)``: the same value from one small eigendecomposition instead of two
  ``F x F`` ones (seconds instead of a minute for 2048-d features on a CPU).
  """
  features = np.asarray(features, np.float64)
  n, f = features.shape
  if n > f:
    return frechet_distance(*feature_statistics(features), mu, sigma)
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.shape != (f,) or sigma.shape != (f, f):
    raise ValueError(f"frechet_distance_of_features needs mu [{f}] and sigma [{f}, {f}], got "
                     f"{mu.shape}, {sigma.shape}")
  mean = features.mean(axis=0)
  centred = features - mean
  small = centred @ sigma @ centred.T / (n - 1)
  trace_sqrt = np.sqrt(np.maximum(np.linalg.eigvalsh((small + small.T) / 2.0), 0.0)).sum()
  diff = mean - mu
  value = diff @ diff + (centred * centred).sum() / (n - 1) + np.trace(sigma) - 2.0 * trace_sqrt
  return float(max(value, 0.0))


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """KID's kernel ``k(x, y) = (x.y / d + 1)^3`` between rows of ``a: [N, d]``, ``b: [M, d]``."""
  return (a @ b.T / a.shape[1] + 1.0) ** 3


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, *,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> Tuple[float, float]:
  """Kernel Inception Distance: unbiased squared MMD with the cubic polynomial kernel.

  ``features1: [N, F]``, ``features2: [M, F]``. Each of ``num_subsets`` subsets draws
  ``subset_size`` rows (clipped to ``min(N, M)``) of each set without replacement (NumPy
  generator seeded with ``seed``); the unbiased estimate leaves the kernel's diagonal out of the
  within-set means. Unlike FID it has no bias in the sample size.

  Returns:
    The mean and standard deviation of the subsets' estimates.
  """
  x = np.asarray(features1, np.float64)
  y = np.asarray(features2, np.float64)
  size = min(subset_size, len(x), len(y))
  if size < 2:
    raise ValueError(f"KID needs at least 2 rows in each set, got {len(x)} and {len(y)}")
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    a = x[rng.choice(len(x), size, replace=False)]
    b = y[rng.choice(len(y), size, replace=False)]
    kxx, kyy = _polynomial_kernel(a, a), _polynomial_kernel(b, b)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1))
    estimates.append(within - 2.0 * _polynomial_kernel(a, b).mean())
  return float(np.mean(estimates)), float(np.std(estimates))


def inception_score(logits: np.ndarray, *, num_splits: int = 10) -> Tuple[float, float]:
  """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of classifier ``logits: [N, K]``.

  ``p(y|x)`` is the softmax of the logits (float64); the rows are cut into ``num_splits``
  contiguous parts (``np.array_split``), each with its own marginal ``p(y)``.

  Returns:
    The mean and standard deviation of the parts' scores.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < num_splits:
    raise ValueError(f"inception_score needs logits [N, K] with N >= num_splits={num_splits}, "
                     f"got shape {logits.shape}")
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, num_splits):
    p = np.exp(part)
    # log p(y) as a log-sum-exp: a class whose probabilities all underflow stays finite.
    top = part.max(axis=0)
    log_marginal = top + np.log(np.exp(part - top).mean(axis=0))
    scores.append(np.exp((p * (part - log_marginal)).sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


def fid_sample_warning(n: int) -> Optional[str]:
  """A one-line warning when FID comes from ``n`` < 50,000 samples; None otherwise."""
  if n >= FID_REFERENCE_SAMPLES:
    return None
  return (f"FID from {n} samples is biased upwards and not comparable with published values "
          f"(computed from {FID_REFERENCE_SAMPLES}); compare it only with FIDs from {n} samples")


# A feature function: one batch ``{'image': [B, H, W, C] in [0, 1], 'mask': [B]}`` -> the
# classifier's ``(features: [n, F], logits: [n, K])`` on the host for its n real (mask > 0) rows.
FeatureFn = Callable[[Mapping[str, np.ndarray]], Tuple[np.ndarray, np.ndarray]]
# The keys of a statistics file (:func:`save_statistics`); the authors' files hold ``pool_3`` only.
STATISTICS_KEYS = ("mu", "sigma", "pool_3", "logits")


def reference_statistics(feature_fn: FeatureFn, batches: Iterable[Mapping[str, np.ndarray]], *,
                         cache: Optional[eval_cache.EvalCache] = None,
                         settings: Optional[eval_cache.Settings] = None,
                         name: str = "features") -> Dict[str, np.ndarray]:
  """Features and logits of every image in ``batches``, and the features' Gaussian.

  ``feature_fn`` is typically jitted and sharded (``inception.make_feature_fn``). With a
  ``cache``, batch ``k``'s features are piece ``{name}_batch{k}`` recorded with ``settings`` plus
  its index, so an interrupted pass resumes at the first batch it had not finished (every
  process decides what to reuse before any piece is written; ``batches`` must then have a
  ``len``).

  Returns:
    ``{'mu': [F], 'sigma': [F, F]}`` (float64, :func:`feature_statistics`), ``'pool_3': [N, F]``
    (the features, for KID) and ``'logits': [N, K]``, both float32.
  """
  done: Dict[int, Optional[Dict[str, np.ndarray]]] = {}
  if cache is not None:
    done = {k: cache.load(*_piece(name, settings, k), ("pool_3", "logits"))
            for k in range(len(batches))}
  pools, logits = [], []
  for k, batch in enumerate(batches):
    piece = done.get(k)
    if piece is None:
      features, batch_logits = feature_fn(batch)
      piece = {"pool_3": np.asarray(features, np.float32),
               "logits": np.asarray(batch_logits, np.float32)}
      if cache is not None:
        cache.save(*_piece(name, settings, k), **piece)
    pools.append(piece["pool_3"])
    logits.append(piece["logits"])
  if not pools:
    raise ValueError("reference_statistics got no batches")
  pool_3, all_logits = np.concatenate(pools), np.concatenate(logits)
  mu, sigma = feature_statistics(pool_3)
  return {"mu": mu, "sigma": sigma, "pool_3": pool_3, "logits": all_logits}


def _piece(name: str, settings: Optional[eval_cache.Settings], k: int):
  return f"{name}_batch{k}", {**(settings or {}), "piece.batch_index": k}


def save_statistics(path: str, stats: Mapping[str, np.ndarray]) -> None:
  """Atomically writes ``stats`` (any of ``mu``, ``sigma``, ``pool_3``, ``logits``) to ``path``
  as an ``.npz``; the activations as float32, the Gaussian as float64."""
  unknown = sorted(set(stats) - set(STATISTICS_KEYS))
  if unknown:
    raise ValueError(f"statistics have keys {', '.join(STATISTICS_KEYS)}; got {unknown[0]!r}")
  outputs.save_npz(path, **{k: np.asarray(v, np.float64 if k in ("mu", "sigma") else np.float32)
                            for k, v in stats.items()})


def load_statistics(path: str) -> Dict[str, np.ndarray]:
  """Reference statistics from an ``.npz``: :func:`save_statistics`' layout, the authors'
  (``pool_3`` activations only, e.g. ``cifar10_stats.npz``) or pytorch-fid's (``mu``, ``sigma``).

  Returns:
    ``mu`` and ``sigma`` (computed from ``pool_3`` when the file lacks them), float64, and
    ``pool_3`` / ``logits`` when the file has them (KID needs ``pool_3``).

  Raises:
    ValueError: in one line, when the file has neither ``mu`` and ``sigma`` nor ``pool_3``.
  """
  with np.load(path) as saved:
    stats = {k: saved[k] for k in STATISTICS_KEYS if k in saved.files}
    found = saved.files
  if "pool_3" in stats and not ("mu" in stats and "sigma" in stats):
    stats["mu"], stats["sigma"] = feature_statistics(stats["pool_3"])
  if "mu" not in stats or "sigma" not in stats:
    raise ValueError(f"{path} holds no reference statistics: expected 'pool_3' activations or "
                     f"'mu' and 'sigma', found {', '.join(found) or 'nothing'}")
  stats["mu"] = np.asarray(stats["mu"], np.float64)
  stats["sigma"] = np.asarray(stats["sigma"], np.float64)
  return stats


def inception_metrics(pool_3: np.ndarray, logits: np.ndarray, reference: Mapping[str, np.ndarray],
                      *, num_splits: int = 10, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, seed: int = 0) -> Dict[str, Any]:
  """FID, KID and Inception Score of samples' ``pool_3: [N, F]`` and ``logits: [N, K]`` against
  ``reference`` (:func:`load_statistics`), each with the number of samples it used.

  KID is reported only when ``reference`` has ``pool_3`` activations; ``fid_warning`` only when
  ``N`` < 50,000 (:func:`fid_sample_warning`).
  """
  n = len(pool_3)
  result: Dict[str, Any] = {
      "fid": frechet_distance_of_features(pool_3, reference["mu"], reference["sigma"]),
      "fid_num_samples": n}
  warning = fid_sample_warning(n)
  if warning is not None:
    result["fid_warning"] = warning
  result["inception_score"], result["inception_score_std"] = inception_score(
      logits, num_splits=num_splits)
  result["inception_score_num_samples"] = int(len(logits))
  if "pool_3" in reference:
    result["kid"], result["kid_std"] = kernel_inception_distance(
        pool_3, reference["pool_3"], num_subsets=kid_subsets, subset_size=kid_subset_size,
        seed=seed)
    result["kid_num_samples"] = n
    result["kid_subset_size"] = min(kid_subset_size, n, len(reference["pool_3"]))
  return result
