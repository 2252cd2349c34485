"""``datasets.toy_data``: the 2-D toy streams are seeded and sharded, with a fixed test set, and
the toy distributions have their exact moments and support.

Statistical tolerances are 5 standard errors of the tested statistic at the stated sample size.
"""

import numpy as np
import pytest

import datasets
from datasets import toy_data
from tests.datasets.data_files import collect, toy_config


@pytest.mark.parametrize("name", toy_data.TOYS.names())
def test_toy_streams_are_seeded_and_sharded(name):
  config = toy_config(name)
  stream = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1)
  got = collect(stream, 3)
  assert all(b["image"].shape == (64, 2) and b["image"].dtype == np.float32 for b in got)
  assert all(np.all(b["mask"] == 1) and b["label"].dtype == np.int32 for b in got)
  assert not np.array_equal(got[0]["image"], got[1]["image"])
  same = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1)
  assert np.array_equal(same.batch(2)["image"], got[2]["image"])
  other = datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=2)
  assert not np.array_equal(other.batch(0)["image"], got[0]["image"])
  halves = [datasets.get_dataset(config, split="train", batch_size=64, train=True, shuffle_seed=1,
                                 process_index=p, process_count=2).batch(1)["image"]
            for p in range(2)]
  assert np.array_equal(np.concatenate(halves), got[1]["image"])
  test = datasets.get_dataset(config, split="test", batch_size=4096, train=False, shuffle_seed=9)
  assert test.num_examples == toy_data.TOY_TEST_SIZE and test.num_batches == 3
  again = datasets.get_dataset(config, split="test", batch_size=4096, train=False, shuffle_seed=1)
  assert np.array_equal(test.batch(0)["image"], again.batch(0)["image"])  # a fixed test set


def moments_close(x, mean, var):
  """Sample mean / variance of each column within 5 standard errors of the exact values."""
  n = x.shape[0]
  centered = x - x.mean(0)
  var_se = np.sqrt((np.mean(centered**4, 0) - np.var(x, 0)**2) / n)
  return (np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
          and np.all(np.abs(np.var(x, 0) - var) < 5 * var_se))


def test_toy_distributions_moments_and_support():
  n = 20000
  rng = np.random.default_rng(11)
  # pylint: disable=protected-access
  x, labels = toy_data.sample_with_labels("gaussian_mixture", n, rng)
  assert moments_close(x, np.zeros(2), np.ones(2))
  assert set(np.unique(labels)) == set(range(8))
  angles = np.pi * labels / 4
  centres = np.sqrt(2 * (1 - 0.01)) * np.stack([np.cos(angles), np.sin(angles)], -1)
  assert np.abs(x - centres).max() < 6 * 0.1  # each point near its own component's centre

  x, labels = toy_data.sample_with_labels("checkerboard", n, rng)
  assert moments_close(x, np.zeros(2), np.ones(2))
  assert np.all(np.abs(x) <= np.sqrt(3)) and np.all(labels == -1)
  cell = np.floor((x / np.sqrt(3) + 1) * 2).astype(int)  # 4 x 4 cells on [-sqrt 3, sqrt 3]^2
  assert np.all((cell.sum(1) % 2) == 0)
  dark_counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
  assert dark_counts.min() > n / 8 * 0.9

  x = toy_data.sample_toy("Swiss_Roll", n, seed=13)  # the public form: case-insensitive, seeded
  assert x.shape == (n, 2) and x.dtype == np.float32
  assert np.array_equal(x, toy_data.sample_toy("swiss_roll", n, seed=13))
  # Exact moments by quadrature over u ~ U[0, 1) (midpoint rule, 10^6 nodes), plus the noise
  # variance.
  u = (np.arange(10**6) + 0.5) / 10**6
  t = 1.5 * np.pi * (1 + 2 * u)
  clean = np.stack([t * np.cos(t), t * np.sin(t)], -1) / 7
  assert moments_close(x, clean.mean(0), clean.var(0) + 0.05**2)
  assert 0.3 < np.std(x) < 3  # roughly unit scale
