"""``--mode train_dequantizer`` and the likelihoods of ``--mode eval`` on a tiny image model:
the dequantizer trains beside a fixed score model, resumes, refuses what it must, and the
evaluation reads it; the bound is reported beside the ODE's bits/dim on the same examples."""

import os
import shutil

import numpy as np
import pytest

import run_lib
from infra import outputs
from infra import run_config
from modes import train_dequantizer
from tests.image_folders import folder_config, one_line, write_flat_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step score model on 8x8 grayscale images, and its config."""
  root = tmp_path_factory.mktemp("dequantizer")
  write_flat_folder(str(root / "images"), 24, size=(8, 8))
  config = folder_config(root / "images", num_channels=3, holdout_fraction=0.25)
  config.training.update(dict(n_iters=4, batch_size=8, n_jitted_steps=1, log_freq=2,
                              eval_freq=100, snapshot_freq=4, snapshot_freq_for_preemption=4,
                              snapshot_sampling=False, likelihood_weighting=True,
                              time_sampling="importance"))
  config.model.update(dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                           num_scales=4, dropout=0.0))
  config.eval.update(dict(begin_ckpt=1, end_ckpt=1, batch_size=4, enable_sampling=False,
                          enable_loss=False, enable_bpd=True, enable_bound=True,
                          bpd_num_examples=4, bpd_num_repeats=1, rtol=1e-2, atol=1e-2,
                          bound_num_draws=8))
  config.dequantizer.update(dict(hidden=8, num_couplings=2, n_iters=6, batch_size=4, warmup=0))
  workdir = str(root / "run")
  run_lib.train(config, workdir)
  return config, workdir


def test_trains_resumes_and_reports(trained):
  config, workdir = trained
  report = run_lib.train_dequantizer(config, workdir)
  out = os.path.join(workdir, "dequantizer")
  assert os.path.isdir(os.path.join(out, "checkpoints", "6"))
  assert report == outputs.load_json(os.path.join(out, "dequantizer_eval.json"))
  bound = report["bound_bits_per_dim"]
  assert report["score_step"] == 4 and report["num_test_images"] == 4
  assert all(np.isfinite(bound[k]["mean"]) and bound[k]["stderr"] > 0 for k in bound)
  # The score model's own checkpoints are untouched: the dequantizer lives in its folder.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  # Resuming at the end trains nothing more and reports again.
  again = run_lib.train_dequantizer(config, workdir)
  assert again["step"] == 6
  # Its own architecture may not change under it.
  changed = config.copy_and_resolve_references()
  changed.dequantizer.hidden = 16
  with pytest.raises(run_config.ConfigChangedError, match="dequantizer.hidden") as error:
    run_lib.train_dequantizer(changed, workdir)
  assert one_line(error)


def test_eval_reports_both_likelihoods_with_either_dequantizer(trained):
  config, workdir = trained
  run_lib.train_dequantizer(config, workdir)
  uniform = run_lib.evaluate(config, workdir, "eval_uniform")["4"]
  for key in ("bpd", "bound", "bound_stderr", "bound_mc_stderr"):
    assert np.isfinite(uniform[key]), key
  assert uniform["bound_count"] == uniform["bpd_count"] == 4
  assert uniform["bpd_scale"] == "8-bit data (256 levels), uniform dequantization"
  assert uniform["bpd_offset_bits"] == 7.0  # [-1, 1] data
  variational = config.copy_and_resolve_references()
  variational.eval.dequantization = "variational"
  result = run_lib.evaluate(variational, workdir, "eval_variational")["4"]
  assert np.isfinite(result["bpd"]) and np.isfinite(result["bound"])
  assert "variational dequantization" in result["bpd_scale"]
  assert "dequantizer.digest" in result["settings"]
  line = run_lib.describe_result(result)
  assert "bound" in line and "Monte Carlo part" in line and "variational" in line


def test_pipeline_dequantization_is_not_applied_twice(trained):
  """Bits/dim dequantizes its own batches: ``data.uniform_dequantization`` (training's) changes
  nothing in it."""
  config, workdir = trained
  plain = config.copy_and_resolve_references()
  plain.eval.enable_bound = False
  noisy = plain.copy_and_resolve_references()
  noisy.data.uniform_dequantization = True
  a = run_lib.evaluate(plain, workdir, "eval_plain")["4"]["bpd"]
  b = run_lib.evaluate(noisy, workdir, "eval_noisy")["4"]["bpd"]
  assert a == b


def test_refusals_are_one_line(trained, tmp_path):
  config, workdir = trained
  variational = config.copy_and_resolve_references()
  variational.eval.dequantization = "variational"
  no_dequantizer = str(tmp_path / "copy")
  shutil.copytree(workdir, no_dequantizer, ignore=shutil.ignore_patterns("dequantizer"))
  with pytest.raises(FileNotFoundError, match="train_dequantizer") as error:
    run_lib.evaluate(variational, no_dequantizer, "eval")
  assert one_line(error)
  with pytest.raises(FileNotFoundError, match="No dequantizer") as error:
    train_dequantizer.load_dequantizer(config, str(tmp_path))
  assert one_line(error)
  bad = config.copy_and_resolve_references()
  bad.eval.dequantization = "logistic"
  with pytest.raises(ValueError, match="none, uniform, variational") as error:
    run_lib.evaluate(bad, workdir, "eval_bad")
  assert one_line(error)
  with pytest.raises(FileNotFoundError, match="No checkpoint") as error:
    run_lib.train_dequantizer(config, str(tmp_path / "untrained"))
  assert one_line(error)
