"""Evaluation pieces on disk record what produced them (eval_cache), and run_lib.evaluate reuses
a piece only when it was computed with the same settings; on the 2-D toy, in-process."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import run_lib
from evaluation import eval_cache
from infra import checkpoints
from infra import outputs
from modes import evaluate
from tests.test_app import final_state, toy_config

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


def _recomputing(caplog, piece):
  return [r.getMessage() for r in caplog.records
          if piece in r.getMessage() and "recomputing" in r.getMessage()]


# ----------------------------------------------------------------------------- eval_cache


SETTINGS = {"checkpoint.digest": "0badf00d", "eval.batch_size": 1000, "eval.rtol": 1e-5,
            "model.ch_mult": (1, 2, 2), "sampling.method": "pc", "training.continuous": True,
            "data.cache_dir": None}


def test_settings_round_trip(tmp_path):
  cache = eval_cache.EvalCache(str(tmp_path))
  bpd = np.linspace(0.0, 1.0, 7, dtype=np.float32)
  cache.save("bpd_repeat0_batch0", SETTINGS, bpd=bpd, nfe=np.asarray(38))
  loaded = cache.load("bpd_repeat0_batch0", dict(SETTINGS), ("bpd", "nfe"))
  np.testing.assert_array_equal(loaded["bpd"], bpd)
  assert int(loaded["nfe"]) == 38
  # A tuple reads back as a list: the comparison is on the JSON form.
  assert cache.load("bpd_repeat0_batch0", {**SETTINGS, "model.ch_mult": [1, 2, 2]},
                    ("bpd",)) is not None
  with np.load(cache.path("bpd_repeat0_batch0")) as saved:
    assert json.loads(str(saved[eval_cache.SETTINGS_KEY]))["eval.batch_size"] == 1000


def test_save_samples_records_settings_and_draws_a_picture(tmp_path):
  cache = eval_cache.EvalCache(str(tmp_path))
  samples = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
  cache.save_samples("samples_0", SETTINGS, samples, nfe=np.asarray(20))
  assert os.path.exists(tmp_path / "samples_0.png")
  loaded = cache.load("samples_0", SETTINGS, ("samples", "nfe"))
  np.testing.assert_array_equal(loaded["samples"], samples)


def test_other_settings_return_none_and_log_one_line_naming_them(tmp_path, caplog):
  cache = eval_cache.EvalCache(str(tmp_path))
  cache.save("samples_0", SETTINGS, samples=np.zeros((4, 2)), nfe=np.asarray(1))
  with caplog.at_level(logging.INFO):
    assert cache.load("samples_0", {**SETTINGS, "eval.batch_size": 2000},
                      ("samples", "nfe")) is None
  lines = _recomputing(caplog, "samples_0.npz")
  assert len(lines) == 1, caplog.text
  assert "eval.batch_size=1000 (now 2000)" in lines[0]
  assert "sampling.method" not in lines[0]

  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert cache.load("samples_0", {**SETTINGS, "eval.atol": 1e-3}, ("samples",)) is None
  assert "eval.atol=unset (now 0.001)" in _recomputing(caplog, "samples_0.npz")[0]


def test_files_without_settings_or_keys_are_recomputed(tmp_path, caplog):
  cache = eval_cache.EvalCache(str(tmp_path))
  assert cache.load("bpd_repeat0_batch0", SETTINGS, ("bpd",)) is None  # absent: silent
  outputs.save_npz(cache.path("bpd_repeat0_batch0"), bpd=np.zeros(3), nfe=np.asarray(1))
  with caplog.at_level(logging.INFO):
    assert cache.load("bpd_repeat0_batch0", SETTINGS, ("bpd", "nfe")) is None
  assert "no recorded settings" in caplog.text
  cache.save("bpd_repeat0_batch1", SETTINGS, bpd=np.zeros(3))
  assert cache.load("bpd_repeat0_batch1", SETTINGS, ("bpd", "nfe")) is None


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  eval_cache.EvalCache(str(tmp_path)).save("samples_0", SETTINGS, samples=np.zeros((4, 2)))
  assert not os.listdir(tmp_path)


def test_non_json_settings_are_refused(tmp_path):
  with pytest.raises(TypeError, match="eval.rtol"):
    eval_cache.EvalCache(str(tmp_path)).save("x", {"eval.rtol": object()}, a=np.zeros(1))


def test_tree_digest_tells_parameters_apart():
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  same = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  nudged = {"dense": {"kernel": jnp.ones((3, 2)).at[0, 0].set(1.0 + 1e-7), "bias": jnp.zeros(2)}}
  reshaped = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(2)}}
  digest = eval_cache.tree_digest(params)
  assert len(digest) == 8 and digest == eval_cache.tree_digest(same)
  assert digest != eval_cache.tree_digest(nudged)
  assert digest != eval_cache.tree_digest(reshaped)


# ----------------------------------------------------------------------------- run_lib.evaluate


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
  assert "eval.batch_size=1000 (now 500)" in _recomputing(caplog, "bpd_repeat0_batch0.npz")[0]
  assert "eval.sampling_batch_size=1000 (now 500)" in _recomputing(caplog, "samples_0.npz")[0]
  on_disk = outputs.load_json(os.path.join(workdir, "eval", "summary.json"))
  assert on_disk["50"]["settings"] == again["settings"]


def test_changed_tolerance_or_sampler_recomputes_only_what_depends_on_it(workdir, first,
                                                                        monkeypatch, caplog):
  bpd_calls = _count_calls(monkeypatch, "build_bpd_fn")
  sample_calls = _count_calls(monkeypatch, "build_sampler")

  with caplog.at_level(logging.INFO):
    rtol = run_lib.evaluate(eval_config(**{"eval.rtol": 1e-4}), workdir, "eval")["50"]
  assert len(bpd_calls) == 2 and not sample_calls  # both bits/dim batches, no sampling batch
  assert "eval.rtol=0.001 (now 0.0001)" in _recomputing(caplog, "bpd_repeat0_batch1.npz")[0]
  assert rtol["settings"]["eval.rtol"] == 1e-4
  assert rtol["sampling_nfe"] == first["sampling_nfe"]

  caplog.clear()
  with caplog.at_level(logging.INFO):
    ode = run_lib.evaluate(eval_config(**{"eval.rtol": 1e-4, "sampling.method": "ode",
                                          "sampling.ode_rtol": 1e-3, "sampling.ode_atol": 1e-3}),
                           workdir, "eval")["50"]
  assert len(bpd_calls) == 2 and len(sample_calls) == 1
  assert 'sampling.method="pc" (now "ode")' in _recomputing(caplog, "samples_0.npz")[0]
  assert ode["bpd"] == rtol["bpd"]
  assert ode["sampling_nfe"] != first["sampling_nfe"]


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
