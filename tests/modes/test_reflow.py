"""``--mode reflow`` on a short rectified-flow toy run: it draws the teacher's pairs once, starts
from the teacher, trains on the couplings in ``<workdir>/reflow`` and measures straightness;
pairs drawn with other settings, a sampler that cannot start from given ``x(T)`` and a missing
teacher are refused in one line."""

import json
import os

import numpy as np
import pytest

import run_lib
from configs.toy import rectified_flow_gaussian_mixture
from modes import reflow as reflow_mode
from tests import runs

_SHORT = {"n_iters": 40, "n_jitted_steps": 10, "log_freq": 10, "eval_freq": 20,
          "snapshot_freq": 40, "snapshot_freq_for_preemption": 20, "snapshot_sampling": False,
          "batch_size": 128}


def _config(**reflow):
  config = rectified_flow_gaussian_mixture.get_config()
  config.training.update(_SHORT)
  config.model.update(nf=32, num_blocks=1)
  config.reflow.update({"num_pairs": 512, "straightness_samples": 64, "straightness_steps": 20,
                        **reflow})
  config.eval.batch_size = 256
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  return config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  run_lib.train(_config(), workdir)
  return workdir


def test_reflow_starts_from_the_teacher_and_trains_on_its_pairs(teacher):
  config = _config()
  config.training.n_iters = 0
  before = run_lib.reflow(config, teacher)
  out = os.path.join(teacher, "reflow")
  # No step yet: the new flow is the teacher, measured on the same prior draws.
  assert before["reflow"] == before["teacher"] and before["teacher_step"] == 40
  with np.load(os.path.join(out, "pairs.npz")) as pairs:
    assert pairs["x0"].shape == pairs["noise"].shape == pairs["x_end"].shape == (512, 2)
    settings = json.loads(str(pairs["settings"]))
    np.testing.assert_allclose(0.01 * pairs["x0"] + 0.99 * pairs["noise"], pairs["x_end"],
                               rtol=1e-5, atol=1e-5)
  assert settings == {"teacher_step": 40, "num_pairs": 512, "sampler": "ode-tsit5", "seed": 0}
  config.training.n_iters = 40
  after = run_lib.reflow(config, teacher)  # resumes at step 0 with the same pairs
  assert after["teacher"] == before["teacher"]
  assert after["reflow"]["straightness"] < after["teacher"]["straightness"]
  with open(os.path.join(out, "straightness.json")) as f:
    assert json.load(f) == after
  assert os.path.isfile(os.path.join(out, "paths.png"))
  state = runs.final_state(out, config)
  assert int(state.step) == 40
  # Other pairs would change the run halfway: refused, nothing drawn.
  with pytest.raises(ValueError, match="holds pairs drawn with .* not .*num_pairs': 256"):
    reflow_mode.ReflowTraining(_config(num_pairs=256), teacher)


def test_reflow_refuses_the_pc_sampler_and_a_missing_teacher(tmp_path, teacher):
  config = _config()
  config.sampling.method = "pc"
  with pytest.raises(ValueError, match="use a sampler that starts from given x\\(T\\)"):
    run_lib.reflow(config, teacher)
  with pytest.raises(FileNotFoundError):
    run_lib.reflow(_config(), str(tmp_path))
  assert not os.listdir(tmp_path)
