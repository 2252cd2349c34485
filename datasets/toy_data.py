"""2-D toy distributions, sampled with numpy.

Each distribution is a sampler ``(n, rng) -> (points [n, 2], labels [n])`` registered in
:data:`TOYS` by name; :func:`sample_with_labels` looks one up and fixes the dtypes. All have
roughly unit scale:

* ``swiss_roll``: ``s * (t cos t, t sin t) + N(0, 0.05^2 I)``, ``t = 1.5 pi (1 + 2u)``,
  ``u ~ U[0, 1)``, ``s = 1/7``; label -1.
* ``gaussian_mixture``: 8 equal-weight Gaussians (std 0.1) on a circle of radius
  ``sqrt(2 (1 - 0.1^2))`` at angles ``2 pi k / 8``: mean 0, per-coordinate variance exactly 1;
  label = component ``k``.
* ``checkerboard``: uniform on the 8 dark cells of a 4 x 4 board on ``[-sqrt 3, sqrt 3]^2`` (cell
  ``(i, j)``, counted from the lower left, is dark when ``i + j`` is even): each coordinate is
  marginally ``U[-sqrt 3, sqrt 3]`` (mean 0, variance 1); label -1.

A toy has no stored training split: training batches are drawn on the fly
(``batching.make_sampled_batches``). Its ``'test'`` split (:func:`fixed_test_set`) is a fixed set
of :data:`TOY_TEST_SIZE` samples, the same for every training seed.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from datasets.batching import Sampler
from infra.registry import Registry

# Each entry: sampler(n, rng) -> (points [n, 2], labels [n]); sample_with_labels fixes dtypes.
TOYS: Registry[Sampler] = Registry("toy dataset")

TOY_TEST_SIZE = 10_000
_TOY_TEST_SEED = 20210101  # fixed: the toy test set is the same for every training seed

_SWISS_ROLL_SCALE = 1.0 / 7.0     # brings the roll (radius 4.7..14.1) to roughly unit std
_SWISS_ROLL_NOISE = 0.05          # std of the isotropic Gaussian noise, after scaling
_MIXTURE_COMPONENTS = 8
_MIXTURE_STD = 0.1
_MIXTURE_RADIUS = float(np.sqrt(2.0 * (1.0 - _MIXTURE_STD**2)))  # per-coordinate variance 1
_CHECKER_HALF_WIDTH = float(np.sqrt(3.0))  # board [-w, w]^2: per-coordinate variance w^2/3 = 1


@TOYS.register("swiss_roll")
def _swiss_roll(n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
  x = _SWISS_ROLL_SCALE * np.stack([t * np.cos(t), t * np.sin(t)], -1)
  x = x + _SWISS_ROLL_NOISE * rng.standard_normal((n, 2))
  return x, np.full(n, -1)


def gaussian_mixture_parameters() -> Tuple[np.ndarray, float]:
  """The 'gaussian_mixture' toy: ``(means [8, 2], std)`` of its equally weighted isotropic
  components (means on a circle, per-coordinate variance 1 overall)."""
  angle = 2.0 * np.pi * np.arange(_MIXTURE_COMPONENTS) / _MIXTURE_COMPONENTS
  return _MIXTURE_RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1), _MIXTURE_STD


@TOYS.register("gaussian_mixture")
def _gaussian_mixture(n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  labels = rng.integers(0, _MIXTURE_COMPONENTS, n)
  means, std = gaussian_mixture_parameters()
  return means[labels] + std * rng.standard_normal((n, 2)), labels


@TOYS.register("checkerboard")
def _checkerboard(n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  # A dark cell: column i uniform in 0..3, row j of the same parity among the two candidates.
  i = rng.integers(0, 4, n)
  j = 2 * rng.integers(0, 2, n) + (i % 2)
  cell = np.stack([i, j], -1) + rng.random((n, 2))  # in [0, 4)^2
  return (cell / 2.0 - 1.0) * _CHECKER_HALF_WIDTH, np.full(n, -1)


def sample_with_labels(name: str, n: int,
                       rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Draws ``n`` points of the toy ``name`` (any case): float32 ``[n, 2]`` and int32 labels ``[n]``.

  Raises:
    ValueError: listing the valid names, if ``name`` is not a registered toy.
  """
  x, labels = TOYS.get(name)(n, rng)
  return x.astype(np.float32), labels.astype(np.int32)


def sample_toy(name: str, n: int, seed: int) -> np.ndarray:
  """Draws ``n`` points of the toy ``name`` (any case) from ``default_rng(seed)``.

  Returns:
    float32 ``[n, 2]``.
  """
  return sample_with_labels(name, n, np.random.default_rng(seed))[0]


def fixed_test_set(name: str) -> Tuple[np.ndarray, np.ndarray]:
  """The fixed ``'test'`` split of the toy ``name``.

  Returns:
    float32 points ``[TOY_TEST_SIZE, 2]`` and int32 labels ``[TOY_TEST_SIZE]``.
  """
  return sample_with_labels(name, TOY_TEST_SIZE, np.random.default_rng(_TOY_TEST_SEED))
