"""The bf16 loss curves (``experiments/bf16_curves.py``): the windowed standard deviation, and
a short toy run whose bf16 curve matches the fp32 one."""

import numpy as np
import pytest

import configs
from configs.toy import gaussian_mixture
from experiments import bf16_curves


def test_window_std():
  curve = np.array([1.0, -1.0] * 5)
  assert bf16_curves.window_std(curve, 2) == pytest.approx(np.sqrt(2.0))
  ramp = np.arange(10.0)
  assert bf16_curves.window_std(ramp, 3) == pytest.approx(1.0)


def test_bf16_toy_curve_matches_fp32():
  """200 toy steps at batch 128, fp32 and bf16 from the same seed, data and noise.

  Tolerance: each step draws fresh times and noise, so the fp32 mean over the last 100 steps
  has standard error ``se = std / sqrt(100)``; a bf16 mean within ``3 se`` is indistinguishable
  from fp32 at the 0.3 % two-sided level even for independent noise (here the noise is shared,
  so bf16 lands much closer). bf16 must also differ from fp32 at all: an identical curve would
  mean mixed precision never reached the network.
  """
  config = configs.apply_overrides(gaussian_mixture.get_config(), (("training.batch_size", 128),))
  result = bf16_curves.run(config, 200, chunk=50, last=100)
  stats = result["stats"]
  assert abs(stats["last_mean_diff"]) <= 3.0 * stats["last_mean_stderr"], stats
  assert stats["mean_abs_diff"] > 0.0
  assert result["facts"]["bf16"]["model_dtype"] == "bfloat16"
  assert result["facts"]["fp32"]["model_dtype"] == "float32"
  fp32 = np.asarray(result["fp32"])
  assert np.all(np.isfinite(fp32)) and np.all(np.isfinite(result["bf16"]))
  assert stats["fp32_last_mean"] < np.mean(fp32[:20])  # training made progress
