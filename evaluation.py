"""Sample-quality statistics that need no pretrained network."""

from __future__ import annotations

from typing import Dict

import numpy as np


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
