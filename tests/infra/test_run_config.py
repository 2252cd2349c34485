"""The workdir's recorded config, the check a resume makes, and divergence never being saved."""

import json
import os

import numpy as np
import pytest

import run_lib
from infra import checkpoints
from infra import run_config
from tests.runs import final_state
from tests.runs import toy_config as app_toy_config

SHORT = {"training.n_iters": 50, "training.n_jitted_steps": 25, "training.log_freq": 25,
         "training.snapshot_freq": 50, "training.snapshot_freq_for_preemption": 25,
         "training.eval_freq": 25}


def toy_config(**overrides):
  return app_toy_config(**{**SHORT, **overrides})


def test_flatten_and_differences():
  recorded = run_config.flatten({"a": {"b": 1, "c": (1, 2)}, "eval": {"x": 1}, "seed": 0})
  assert recorded == {"a.b": 1, "a.c": [1, 2], "eval.x": 1, "seed": 0}
  current = dict(recorded, **{"a.b": 2, "eval.x": 3, "new.field": 1})
  # eval.* may change; a field on one side only is not a difference.
  assert run_config.differences(recorded, current, ("eval.",)) == ["a.b: 1 -> 2"]
  assert run_config.differences(recorded, current, ("eval.", "a.b")) == []
  assert run_config.differences(recorded, dict(recorded, **{"eval.xy": 1}), ("eval.x",)) == []


def test_resume_refuses_a_changed_model_sde_or_optimizer(tmp_path):
  workdir = str(tmp_path)
  run_lib.train(toy_config(), workdir)
  recorded = json.load(open(os.path.join(workdir, "config.json")))
  assert recorded["training.sde"] == "vpsde" and recorded["training.n_iters"] == 50
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))

  changed = toy_config(**{"training.n_iters": 100, "training.sde": "vesde",
                                   "optim.lr": 0.5})
  with pytest.raises(run_config.ConfigChangedError) as info:
    run_lib.train(changed, workdir)
  message = str(info.value)
  assert "\n" not in message
  assert "optim.lr: 0.001 -> 0.5" in message and "training.sde: 'vpsde' -> 'vesde'" in message
  assert "n_iters" not in message and "--allow_config_change" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before

  # Length, logging, snapshot frequencies and evaluation settings may change.
  run_lib.train(toy_config(**{"training.n_iters": 75, "training.log_freq": 5,
                                       "eval.batch_size": 100}), workdir)
  assert int(final_state(workdir).step) == 75

  # A deliberate change is accepted and recorded, so the next resume compares against it.
  lower_lr = toy_config(**{"training.n_iters": 100, "optim.lr": 5e-4})
  run_lib.train(lower_lr, workdir, allow_config_change=True)
  assert int(final_state(workdir).step) == 100
  assert json.load(open(os.path.join(workdir, "config.json")))["optim.lr"] == 5e-4


def test_a_fresh_start_records_its_config_even_over_an_unused_one(tmp_path):
  """No checkpoint yet: nothing was trained under the old record, so a new config replaces it."""
  workdir = str(tmp_path)
  run_config.save(workdir, toy_config(**{"optim.lr": 0.5}))
  run_lib.train(toy_config(), workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["optim.lr"] == 1e-3


def _forget_the_label_convention(workdir):
  """The workdir as this project recorded it before discrete models took the authors' labels."""
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  assert recorded.pop(run_config.DISCRETE_LABELS) == "authors"
  json.dump(recorded, open(path, "w"))


def test_a_discrete_ve_workdir_from_before_the_authors_labels_is_refused(tmp_path):
  ve, vp = str(tmp_path / "ve"), str(tmp_path / "vp")
  discrete = {"training.continuous": False, "model.num_scales": 50}
  run_lib.train(toy_config(**discrete, **{"training.sde": "vesde"}), ve)
  run_lib.train(toy_config(**discrete), vp)
  for workdir in (ve, vp):
    _forget_the_label_convention(workdir)
  more = {"training.n_iters": 75}
  for run in (lambda: run_lib.train(toy_config(**discrete, **more, **{"training.sde": "vesde"}),
                                    ve),
              lambda: run_lib.sample(toy_config(**discrete, **{"training.sde": "vesde"}), ve,
                                     num_samples=4, num_frames=0)):
    with pytest.raises(run_config.MirroredLabelsError, match="mirrored levels") as e:
      run()
    assert "\n" not in str(e.value)
  assert sorted(os.listdir(os.path.join(ve, "checkpoints"))) == ["50"]
  # A DDPM's labels stay ascending integers on its grid: its workdir is still read.
  run_lib.train(toy_config(**discrete, **more), vp)
  assert "75" in os.listdir(os.path.join(vp, "checkpoints"))


def test_diverging_run_saves_no_checkpoint(tmp_path):
  """The loss is logged only every 1000 steps, but every save checks the state: nothing is
  saved, and the message says a rerun starts afresh."""
  workdir = str(tmp_path)
  config = toy_config(**{"optim.lr": 1e9, "optim.warmup": 0,
                                  "training.log_freq": 1000, "training.n_iters": 100})
  with pytest.raises(FloatingPointError, match="diverged by step 25.*starts afresh"):
    run_lib.train(config, workdir)
  for name in ("checkpoints", "checkpoints-meta"):
    assert checkpoints.CheckpointStore(os.path.join(workdir, name)).all_steps() == []


def test_divergence_after_a_checkpoint_names_the_step_to_resume_from(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  run_lib.train(toy_config(), workdir)
  # The same run continued, but its update starts producing NaN after step 50.
  import builders  # pylint: disable=import-outside-toplevel
  real = builders.build_train_steps

  def poisoned(*args, **kwargs):
    steps = real(*args, **kwargs)
    def run(state, batch):
      state, loss = steps(state, batch)
      return state.replace(params=jax_tree_map(lambda x: x * np.nan, state.params)), loss
    return run

  monkeypatch.setattr(builders, "build_train_steps", poisoned)
  with pytest.raises(FloatingPointError, match="rerunning resumes from step 50"):
    run_lib.train(toy_config(**{"training.n_iters": 100, "training.log_freq": 1000}),
                  workdir)
  assert checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints-meta")).all_steps() == [50]


def jax_tree_map(fn, tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_map(fn, tree)
