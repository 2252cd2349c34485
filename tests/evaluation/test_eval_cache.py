"""Evaluation pieces on disk record the settings that produced them (``evaluation.eval_cache``):
a piece is read back only for the same settings, and the difference is logged in one line."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import eval_cache
from infra import outputs
from tests.runs import recomputing

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
  lines = recomputing(caplog, "samples_0.npz")
  assert len(lines) == 1, caplog.text
  assert "eval.batch_size=1000 (now 2000)" in lines[0]
  assert "sampling.method" not in lines[0]

  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert cache.load("samples_0", {**SETTINGS, "eval.atol": 1e-3}, ("samples",)) is None
  assert "eval.atol=unset (now 0.001)" in recomputing(caplog, "samples_0.npz")[0]


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
