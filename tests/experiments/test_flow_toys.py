"""The toy flow table (``experiments/flow_toys.py``): samples drawn from the data itself score
near zero and the prior's far above, each with a standard error over chunks; straightness records
are tabulated."""

import json
import os

import numpy as np
import pytest

from datasets import toy_data
from experiments import flow_toys


def _run(workdir, samples, nfe, straightness=None):
  step_dir = os.path.join(workdir, "eval_ode", "step_100")
  os.makedirs(step_dir)
  np.savez(os.path.join(step_dir, "samples_0.npz"), samples=samples)
  with open(os.path.join(workdir, "eval_ode", "summary.json"), "w") as f:
    json.dump({"100": {"sampling_nfe": nfe, "bpd": None}}, f)
  if straightness:
    with open(os.path.join(workdir, "straightness.json"), "w") as f:
      json.dump(straightness, f)


def test_data_scores_near_zero_and_the_prior_far_above(tmp_path):
  data_run, prior_run = str(tmp_path / "data"), str(tmp_path / "prior")
  _run(data_run, toy_data.sample_toy("checkerboard", 2000, seed=1), 10.0,
       {"teacher": {"straightness": 0.4, "straightness_se": 0.01},
        "reflow": {"straightness": 0.001, "straightness_se": 0.0001}})
  _run(prior_run, np.random.default_rng(2).normal(size=(2000, 2)), 1.0)
  stem = flow_toys.main(["--dataset", "checkerboard", "--run", f"data={data_run}",
                         "--run", f"prior={prior_run}", "--folders", "eval_ode,euler_1",
                         "--chunks", "4", "--out", str(tmp_path / "out")])
  with open(stem + ".json") as f:
    record = json.load(f)
  data, prior = record["rows"]
  assert (data["run"], prior["run"], data["nfe"]) == ("data", "prior", 10.0)
  assert data["energy_distance"] < 0.01 < 0.015 < prior["energy_distance"]
  assert data["chunk_energy_distance_se"] > 0
  assert prior["chunk_energy_distance"] - data["chunk_energy_distance"] > 3 * (
      prior["chunk_energy_distance_se"] + data["chunk_energy_distance_se"])
  assert list(record["straightness"]) == ["data"]
  with open(stem + ".md") as f:
    assert "| data | 0.4 ± 0.01 | 0.001 ± 0.0001 |" in f.read()


def test_bad_runs_are_refused(tmp_path):
  with pytest.raises(ValueError, match="--run takes label=workdir"):
    flow_toys.main(["--dataset", "checkerboard", "--run", "nolabel", "--out", str(tmp_path)])
