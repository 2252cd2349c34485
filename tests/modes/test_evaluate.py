"""Evaluation (``modes.evaluate``, ``python main.py --mode eval``): which checkpoints it
evaluates, non-finite samples and snapshots, evaluation pieces on disk reused only when computed
with the same settings (on the 2-D toy, in-process), and a tiny train and evaluate run of
``configs/image_folder.py`` on a folder with FID / IS / KID from random Inception weights."""

import functools
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import evaluation
import run_lib
from evaluation import inception
from infra import checkpoints
from infra import outputs
from modes import evaluate
from tests.image_folders import folder_config, write_flat_folder
from tests.inception_weights import random_state_dict
from tests.runs import final_state, recomputing, toy_config


def test_non_finite_samples_stop_evaluation_and_are_not_saved(tmp_path, reference_run,
                                                              monkeypatch):
  """A sampler that fails on the device (NaN, e.g. an ODE solve at its step cap) must not leave
  NaN samples behind that a resumed evaluation would take as done."""
  def nan_sampler(*args, **kwargs):
    del args, kwargs
    return lambda rng, params: (np.full((5000, 2), np.nan, np.float32), 0)

  monkeypatch.setattr(builders, "build_sampler", nan_sampler)
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run, workdir)
  with pytest.raises(FloatingPointError, match="non-finite"):
    run_lib.evaluate(toy_config(), workdir, "eval_nan")
  assert not os.path.exists(os.path.join(workdir, "eval_nan", "step_300", "samples_0.npz"))


def test_eval_finds_the_final_checkpoint_and_leaves_one_being_written(tmp_path):
  workdir = str(tmp_path)
  config = toy_config(**{"training.n_iters": 130, "training.snapshot_freq": 100,
                         "eval.enable_bpd": False, "eval.num_samples": 100})
  run_lib.train(config, workdir)
  # A checkpoint another process is writing right now: orbax's temporary directory.
  writing = os.path.join(workdir, "checkpoints", "200.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(writing, "state"))
  summary = run_lib.evaluate(config, workdir)
  assert sorted(summary, key=int) == ["100", "130"]  # 130 = n_iters, not a multiple of 100
  assert os.path.isdir(writing)
  config.eval.begin_ckpt = config.eval.end_ckpt = 2
  assert list(run_lib.evaluate(config, workdir, eval_folder="only_last")) == ["130"]


def test_a_workdir_without_checkpoints_is_told_so_before_anything_is_built(tmp_path,
                                                                            monkeypatch):
  def no_building(*args, **kwargs):
    raise AssertionError("built before the checkpoints were listed")

  monkeypatch.setattr(builders, "init_state", no_building)
  with pytest.raises(FileNotFoundError, match="No checkpoint with index in .*Train first"):
    run_lib.evaluate(toy_config(), str(tmp_path))


def test_checkpoint_index_counts_snapshot_intervals():
  assert [run_lib.checkpoint_index(s, 100) for s in (100, 200, 130, 1, 99)] == [1, 2, 2, 1, 1]


# ----------------------------------------------------------------------- reusing evaluation pieces

# A tiny training run (one snapshot, at step 50) and a quick evaluation of it: bits/dim of the
# first 2000 toy test points, 1000 samples, 20 sampler steps. The loss pass is off (not cached).
TRAIN = {
    "training.n_iters": 50,
    "training.snapshot_freq": 50,
    "training.snapshot_freq_for_preemption": 50,
    "training.log_freq": 25,
    "training.eval_freq": 50,
    "model.num_scales": 20,
}
EVAL = {
    **TRAIN,
    "eval.enable_loss": False,
    "eval.batch_size": 1000,
    "eval.num_samples": 1000,
    "eval.bpd_num_examples": 2000,
}


def eval_config(**extra):
  return toy_config(**{**EVAL, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A trained workdir and its evaluation with :func:`eval_config`'s settings, in ``eval/``."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  run_lib.train(toy_config(**TRAIN), workdir)
  summary = run_lib.evaluate(eval_config(), workdir, "eval")
  return workdir, summary


@pytest.fixture
def workdir(trained, tmp_path):
  """A private copy of the trained and evaluated workdir."""
  path = str(tmp_path / "run")
  shutil.copytree(trained[0], path)
  return path


@pytest.fixture
def first(trained):
  """The summary entry of the evaluation in ``workdir``'s ``eval/``."""
  return trained[1]["50"]


def _count_calls(monkeypatch, builder_name):
  """Counts the calls of the functions ``builders.<builder_name>`` builds from now on."""
  calls = []
  build = getattr(builders, builder_name)

  def counting_builder(*args, **kwargs):
    fn = build(*args, **kwargs)

    def counted(*fn_args):
      calls.append(1)
      return fn(*fn_args)

    return counted

  monkeypatch.setattr(builders, builder_name, counting_builder)
  return calls


def _key_results(entry):
  return {k: entry[k] for k in ("bpd", "bpd_count", "num_samples", "sampling_nfe")}


def test_another_batch_size_in_the_same_folder_matches_a_fresh_evaluation(workdir, first,
                                                                          caplog):
  assert first["bpd_count"] == 2000 and first["num_samples"] == 1000
  with caplog.at_level(logging.INFO):
    again = run_lib.evaluate(eval_config(**{"eval.batch_size": 500}), workdir, "eval")["50"]
  fresh = run_lib.evaluate(eval_config(**{"eval.batch_size": 500}), workdir, "fresh")["50"]
  assert _key_results(again) == _key_results(fresh)
  assert again["bpd_count"] == 2000 and again["num_samples"] == 1000
  assert again == fresh  # every statistic, and the settings recorded with them
  assert fresh["settings"]["eval.batch_size"] == 500
  assert fresh["settings"]["eval.sampling_batch_size"] == 500
  assert "eval.batch_size=1000 (now 500)" in recomputing(caplog, "bpd_repeat0_batch0.npz")[0]
  assert "eval.sampling_batch_size=1000 (now 500)" in recomputing(caplog, "samples_0.npz")[0]
  on_disk = outputs.load_json(os.path.join(workdir, "eval", "summary.json"))
  assert on_disk["50"]["settings"] == again["settings"]


def test_changed_tolerance_or_sampler_recomputes_only_what_depends_on_it(workdir, first,
                                                                        monkeypatch, caplog):
  bpd_calls = _count_calls(monkeypatch, "build_bpd_fn")
  sample_calls = _count_calls(monkeypatch, "build_sampler")

  with caplog.at_level(logging.INFO):
    rtol = run_lib.evaluate(eval_config(**{"eval.rtol": 1e-4}), workdir, "eval")["50"]
  assert len(bpd_calls) == 2 and not sample_calls  # both bits/dim batches, no sampling batch
  assert "eval.rtol=0.001 (now 0.0001)" in recomputing(caplog, "bpd_repeat0_batch1.npz")[0]
  assert rtol["settings"]["eval.rtol"] == 1e-4
  assert rtol["sampling_nfe"] == first["sampling_nfe"]

  caplog.clear()
  with caplog.at_level(logging.INFO):
    ode = run_lib.evaluate(eval_config(**{"eval.rtol": 1e-4, "sampling.method": "ode",
                                          "sampling.ode_rtol": 1e-3, "sampling.ode_atol": 1e-3}),
                           workdir, "eval")["50"]
  assert len(bpd_calls) == 2 and len(sample_calls) == 1
  assert 'sampling.method="pc" (now "ode")' in recomputing(caplog, "samples_0.npz")[0]
  assert ode["bpd"] == rtol["bpd"]
  assert ode["sampling_nfe"] != first["sampling_nfe"]


def test_changed_likelihood_solver_recomputes_bits_per_dim(workdir, first, monkeypatch, caplog):
  bpd_calls = _count_calls(monkeypatch, "build_bpd_fn")
  assert first["settings"]["eval.ode_solver"] == "tsit5"
  with caplog.at_level(logging.INFO):
    dopri5 = run_lib.evaluate(eval_config(**{"eval.ode_solver": "dopri5"}), workdir,
                              "eval")["50"]
  assert len(bpd_calls) == 2
  assert 'eval.ode_solver="tsit5" (now "dopri5")' in recomputing(caplog,
                                                                 "bpd_repeat0_batch1.npz")[0]
  assert dopri5["settings"]["eval.ode_solver"] == "dopri5"
  assert dopri5["sampling_nfe"] == first["sampling_nfe"]
  # Same model and tolerances, another solver: close, not equal.
  assert dopri5["bpd"] != first["bpd"] and abs(dopri5["bpd"] - first["bpd"]) < 0.05


def test_unchanged_rerun_reuses_every_piece(workdir, first, monkeypatch):
  step_dir = os.path.join(workdir, "eval", "step_50")
  pieces = {name: os.stat(os.path.join(step_dir, name)).st_mtime_ns
            for name in os.listdir(step_dir)}
  assert {"bpd_repeat0_batch0.npz", "bpd_repeat0_batch1.npz", "samples_0.npz"} <= set(pieces)

  def refuse(*args, **kwargs):
    raise AssertionError("a saved piece was recomputed")

  monkeypatch.setattr(builders, "build_bpd_fn", lambda *args, **kwargs: refuse)
  monkeypatch.setattr(builders, "build_sampler", lambda *args, **kwargs: refuse)
  # Settings that only select what runs do not invalidate anything.
  again = run_lib.evaluate(eval_config(**{"eval.end_ckpt": 7}), workdir, "eval")["50"]
  assert again == first
  assert {name: os.stat(os.path.join(step_dir, name)).st_mtime_ns
          for name in os.listdir(step_dir)} == pieces


@pytest.mark.parametrize("override, expected", [
    ({"sampling.method": "plms"}, "Unknown sampling method 'plms'"),
    ({"eval.hutchinson_type": "bernoulli"}, "hutchinson_type"),
    ({"eval.bpd_dataset": "validation"}, "Unknown split 'validation'"),
    ({"eval.num_samples": 0}, "eval.num_samples must be >= 1"),
    ({"eval.bpd_num_repeats": 0}, "eval.bpd_num_repeats must be >= 1"),
])
def test_bad_settings_fail_before_the_loss_pass(workdir, monkeypatch, override, expected):
  def no_loss_pass(*args, **kwargs):
    raise AssertionError("the loss pass ran before the settings were checked")

  monkeypatch.setattr(evaluate, "_eval_loss", no_loss_pass)
  with pytest.raises(ValueError, match=expected) as error:
    run_lib.evaluate(eval_config(**{"eval.enable_loss": True, **override}), workdir, "eval")
  assert "\n" not in str(error.value)


def test_non_finite_snapshot_is_skipped_and_the_others_are_evaluated(workdir, monkeypatch,
                                                                     caplog):
  config = eval_config(**{"eval.end_ckpt": 2})
  state = final_state(workdir, config)
  poisoned = state.replace(
      step=state.step + 50,
      ema_params=jax.tree_util.tree_map(lambda x: x * jnp.nan, state.ema_params))
  bad = checkpoints.non_finite_leaves(poisoned)
  assert bad
  with monkeypatch.context() as patch:
    # CheckpointStore.save refuses non-finite states; this one stands for a damaged snapshot.
    patch.setattr(checkpoints, "non_finite_leaves", lambda tree: [])
    with checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints")) as store:
      store.save(100, poisoned)
  # An entry from an earlier evaluation of another checkpoint 100 must not survive.
  outputs.save_json(os.path.join(workdir, "eval", "summary.json"), {"100": {"bpd": 1.0}})

  with caplog.at_level(logging.WARNING):
    summary = run_lib.evaluate(config, workdir, "eval")
  assert set(summary) == {"50"} and np.isfinite(summary["50"]["bpd"])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "step 100" in r.getMessage()]
  assert len(warnings) == 1 and bad[0] in warnings[0], caplog.text
  assert set(outputs.load_json(os.path.join(workdir, "eval", "summary.json"))) == {"50"}
  assert not os.path.exists(os.path.join(workdir, "eval", "step_100"))


# ----------------------------------------------------------------------------- an image folder


def test_trains_and_evaluates_on_a_folder(tmp_path, caplog, monkeypatch):
  """configs/image_folder.py with a tiny network: 4 steps, one snapshot, then its loss, bits/dim
  and samples."""
  write_flat_folder(str(tmp_path / "images"), 20, size=(8, 10))
  config = folder_config(tmp_path / "images", holdout_fraction=0.2)
  # No evaluation during training (eval_freq > n_iters): one compilation fewer.
  config.training.update(dict(n_iters=4, batch_size=8, n_jitted_steps=1, log_freq=2,
                              eval_freq=100, snapshot_freq=4, snapshot_freq_for_preemption=4,
                              snapshot_sampling=False))
  config.model.update(dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                           num_scales=4, dropout=0.0))
  config.eval.update(dict(begin_ckpt=1, end_ckpt=1, batch_size=8, num_samples=8, enable_bpd=True,
                          bpd_num_examples=2, rtol=1e-2, atol=1e-2))
  config.sampling.update(dict(ode_rtol=1e-2, ode_atol=1e-2))
  workdir = str(tmp_path / "run")
  run_lib.train(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  summary = run_lib.evaluate(config, workdir)
  assert list(summary) == ["4"]
  result = summary["4"]
  assert np.isfinite(result["loss"]) and np.isfinite(result["bpd"])
  assert result["bpd_count"] == 2
  assert os.path.exists(os.path.join(workdir, "eval", "step_4", "samples_0.npz"))
  assert "fid" not in result  # no Inception weights configured: a warning, no crash

  # FID / IS / KID with (random) Inception weights: reference statistics once, then in eval.
  # The network at its smallest input (75 px, not FID's 299): the same code path, 16x cheaper.
  monkeypatch.setattr(inception, "inception_features",
                      functools.partial(inception.inception_features, size=75))
  weights = str(tmp_path / "inception.npz")
  inception.save_state_dict(weights, random_state_dict())
  config.eval.update(dict(inception_weights=weights, fid_stats=str(tmp_path / "stats.npz"),
                          enable_bpd=False, enable_loss=False, kid_subset_size=4))
  assert run_lib.fid_stats(config, workdir) == str(tmp_path / "stats.npz")
  reference = evaluation.load_statistics(str(tmp_path / "stats.npz"))
  assert reference["pool_3"].shape == (16, 2048)  # every training image once
  result = run_lib.evaluate(config, workdir, "eval_fid")["4"]
  assert result["fid"] > 0 and result["fid_num_samples"] == 8
  assert "FID from 8 samples" in result["fid_warning"]
  assert np.isfinite(result["kid"]) and result["kid_subset_size"] == 4
  assert 1.0 <= result["inception_score"] <= 1008.0
  piece = os.path.join(workdir, "eval_fid", "step_4", "inception_batch0.npz")
  written = os.path.getmtime(piece)
  assert run_lib.evaluate(config, workdir, "eval_fid")["4"]["fid"] == result["fid"]
  assert os.path.getmtime(piece) == written  # the features were reused, not recomputed
  # Statistics of other weights are never compared with these samples' features.
  inception.save_state_dict(weights, random_state_dict(seed=1))
  with caplog.at_level(logging.WARNING):
    again = run_lib.evaluate(config, workdir, "eval_fid")["4"]
  assert "fid" not in again and "computed with other settings" in caplog.text
