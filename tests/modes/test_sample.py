"""Sampling (``modes.sample``, ``python main.py --mode sample``): choosing a checkpoint and
refusing bad requests, and sampling the exact-score model without a checkpoint, where the
samplers must reproduce the toy mixture."""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

import builders
import run_lib
from configs.toy import gaussian_mixture_exact
from tests.oracles import TOY
from tests.runs import toy_config


def test_sample_chooses_a_checkpoint_and_reports_bad_requests(tmp_path):
  workdir = str(tmp_path)
  config = toy_config(**{"training.n_iters": 100, "training.snapshot_freq": 50,
                         "training.snapshot_freq_for_preemption": 25})
  run_lib.train(config, workdir)
  config.sampling.method = "ode"
  by_step = run_lib.sample(config, workdir, checkpoint="50", num_samples=10, num_frames=0)
  assert by_step["step"] == 50 and by_step["path"].endswith("step_50_ode-tsit5")
  by_path = run_lib.sample(config, workdir, checkpoint=os.path.join(workdir, "checkpoints", "100"),
                           num_samples=10, folder="other", num_frames=0)
  assert by_path["step"] == 100 and os.path.isdir(os.path.join(workdir, "other"))
  with np.load(os.path.join(by_step["path"], "sample.npz")) as saved:
    assert saved["samples"].shape == (10, 2)
  for kwargs, message in [(dict(checkpoint="70"), "available steps: [50, 100]"),
                          (dict(checkpoint=str(tmp_path / "nowhere")), "not a checkpoint"),
                          (dict(num_samples=0), "--num_samples must be >= 1")]:
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
      run_lib.sample(config, workdir, **{"num_samples": 10, "num_frames": 0, **kwargs})
  with pytest.raises(FileNotFoundError, match="train first"):
    run_lib.sample(config, str(tmp_path / "empty"), num_samples=10)


@pytest.mark.parametrize("mode", ["sample", "figures", "class_label"])
def test_a_missing_checkpoint_is_told_before_anything_is_built(tmp_path, monkeypatch, mode):
  def no_building(*args, **kwargs):
    raise AssertionError("built before the checkpoint was looked for")

  monkeypatch.setattr(builders, "init_state", no_building)
  config = toy_config()
  calls = {"sample": lambda: run_lib.sample(config, str(tmp_path), num_samples=4),
           "figures": lambda: run_lib.make_figures(config, str(tmp_path)),
           "class_label": lambda: run_lib.controlled_sample(
               toy_config(**{"model.num_classes": 8}), str(tmp_path), class_label="all",
               cfg_weight=1.0, num_samples=8)}
  with pytest.raises(FileNotFoundError, match="train first"):
    calls[mode]()


# ------------------------------------------------------------------ the exact score, no checkpoint

N_SAMPLES = 4000
# Per-mode std, relative: 4 standard errors of an RMS over 2 n_k coordinates (1 / sqrt(4 n_k),
# ~9 % at n_k ~ 500) plus 2 % for the samplers' bias (measured with 40 000 samples: Euler-
# Maruyama at 500 steps +1.0 %, the ODE +0.2 %).
STD_BIAS = 0.02


@pytest.mark.parametrize("method,folder", [("pc", "exact_pc-euler_maruyama-none"),
                                           ("ode", "exact_ode-tsit5")])
def test_sample_without_checkpoint_reproduces_the_mixture(tmp_path, method, folder):
  """The toy config's sampler (Euler-Maruyama, 500 steps, denoised) and the ODE sampler on the
  exact score: mode weights (each sample to its nearest mean) within 4 binomial standard errors
  (0.021) and per-mode std within the tolerance above of the denoised std
  ``s a(eps) s / sqrt(a^2 s^2 + std(eps)^2)`` (0.09945; E[x0 | x_eps] is a little narrower than
  the data)."""
  config = gaussian_mixture_exact.get_config()
  config.sampling.method = method
  result = run_lib.sample(config, str(tmp_path), num_samples=N_SAMPLES, num_frames=0)
  assert result["path"] == os.path.join(str(tmp_path), "sampled", folder) and result["step"] is None
  with open(os.path.join(result["path"], "sample.json")) as f:
    info = json.load(f)
  assert info["checkpoint"] is None and info["num_samples"] == N_SAMPLES
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
  with np.load(os.path.join(result["path"], "sample.npz")) as saved:
    x = saved["samples"]
  assert x.shape == (N_SAMPLES, 2)
  nearest = np.argmin(((x[:, None] - TOY.means[None]) ** 2).sum(-1), axis=1)
  weights = np.bincount(nearest, minlength=len(TOY.weights)) / N_SAMPLES
  assert np.all(np.abs(weights - TOY.weights) <= 4 * np.sqrt(TOY.weights * (1 - TOY.weights)
                                                              / N_SAMPLES)), weights
  sde, eps = builders.build_sde(config), jnp.full((1,), config.sampling.eps)
  a, std = float(sde.mean_coeff(eps)[0]), float(sde.marginal_std(eps)[0])
  for k, (mean, s) in enumerate(zip(TOY.means, TOY.stds)):
    xk = x[nearest == k]
    expected = s * a * s / np.sqrt(a**2 * s**2 + std**2)
    rms = np.sqrt(((xk - mean) ** 2).mean())
    assert abs(rms / expected - 1) <= 4 / np.sqrt(4 * len(xk)) + STD_BIAS, (k, rms, expected)


def test_sample_exact_score_refuses_a_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="has no parameters and reads no checkpoint"):
    run_lib.sample(gaussian_mixture_exact.get_config(), str(tmp_path), checkpoint="100")
