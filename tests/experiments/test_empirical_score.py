"""The model-free sampler benchmark (``experiments/empirical_score.py``) on real MNIST images:
every case is tabulated with its NFE, the exact-score references land where exact sampling does,
and ``--rgb32`` builds 32x32x3 images from three padded digits."""

import json
import os

import numpy as np
import pytest

from configs import apply_overrides, load_config
from experiments import empirical_score
from tests.conftest import MNIST_DIR

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"real MNIST IDX files not found in {MNIST_DIR}")


def test_every_sampler_is_scored_and_the_adaptive_ode_lands_as_exact_sampling(tmp_path):
  stem = empirical_score.main([
      "--config", "configs/vpsde_mnist.py", "--override", f"data.data_dir={MNIST_DIR}",
      "--override", "model.num_scales=100", "--num_images", "6", "--num_samples", "32",
      "--nfe", "4", "--out", str(tmp_path)])
  with open(stem + ".json") as f:
    record = json.load(f)
  got = {row["sampler"]: row for row in record["rows"]}
  assert list(got)[-4:] == ["edm_heun", "pc", "ode", "pc_paper"] and len(got) == 12
  assert all(got[name]["nfe"] == 4 for name in list(got)[:8]) and got["edm_heun"]["nfe"] == 4
  assert got["pc"]["nfe"] == 100 and got["pc_paper"]["nfe"] == 200
  assert all(row["finite"] for row in record["rows"])
  # The adaptive ODE is exact to its tolerance: x(eps) / a is an image plus sigma(eps) noise.
  ode = got["ode"]
  assert abs(ode["noise_mean"] - record["noise_exact"]) < 0.02 and ode["reached"] == 1.0
  assert ode["coverage"] >= 5 / 6  # exact sampling reaches all 6 images with probability 0.997
  assert record["noise_exact"] == pytest.approx(1.0, abs=1e-3)
  assert ode["same_image_as_ode"] == 1.0 and got["pc"]["same_image_as_ode"] is None
  # From the same x(T), a 4-step solver follows the flow map to the ODE's image for most samples.
  assert got["unipc_2"]["same_image_as_ode"] >= 0.75
  with open(stem + ".md") as f:
    table = [line for line in f.read().splitlines() if line.startswith("| ")]
  assert len(table) == len(record["rows"]) + 1


def test_rgb32_stacks_three_padded_digits():
  config = apply_overrides(load_config("configs/vpsde_mnist.py"),
                           [("data.data_dir", MNIST_DIR)])
  gray = empirical_score.training_images(config, 6, rgb32=False)
  rgb = empirical_score.training_images(config, 2, rgb32=True)
  assert rgb.shape == (2, 32, 32, 3) and gray.shape == (6, 28, 28, 1)
  np.testing.assert_array_equal(rgb[1, 2:30, 2:30, 2], gray[5, ..., 0])
  assert np.all(rgb[:, :2] == 0) and np.all(rgb[:, :, 30:] == 0)


def test_nearest_distances_find_the_nearest_image():
  images = np.random.default_rng(0).uniform(size=(5, 4, 4, 1))
  samples = images[[3, 1]] + 0.01
  distance, index = empirical_score.nearest_distances(samples, images)
  np.testing.assert_array_equal(index, [3, 1])
  np.testing.assert_allclose(distance, 0.01, rtol=1e-6)
