"""The sampler comparison at a fixed NFE (``experiments/sampler_nfe.py``) tabulates every case
with its exact NFE, and a workdir without checkpoints is told so in one line."""

import json
import os
import subprocess
import sys

from tests.runs import REPO, main_env


def test_sampler_nfe_benchmark_tabulates_every_case(tmp_path):
  from experiments import sampler_nfe  # pylint: disable=import-outside-toplevel
  stem = sampler_nfe.main(["--config", "configs/toy/gaussian_mixture_exact.py", "--nfe", "6",
                           "--num_samples", "64", "--override", "model.num_scales=50",
                           "--out", str(tmp_path)])
  with open(stem + ".json") as f:
    record = json.load(f)
  got = {row["sampler"]: row for row in record["rows"]}
  one_evaluation_a_step = ["ddim", "dpm_solver_2m", "dpm_solver_3m", "dpm_solver_2m_unic",
                           "dpm_solver_3m_unic", "unipc_2", "unipc_3", "ipndm_4"]
  assert list(got) == one_evaluation_a_step + ["edm_heun", "pc", "ode"]
  assert [got[name]["nfe"] for name in one_evaluation_a_step] == [6] * 8
  assert got["edm_heun"]["nfe"] == 5 and got["pc"]["nfe"] == 51
  assert got["ode"]["nfe"] > 6 and all(row["finite"] for row in record["rows"])
  assert record["step"] is None and os.path.exists(stem + ".md")
  with open(stem + ".md") as f:
    table = [line for line in f.read().splitlines() if line.startswith("| ")]
  assert len(table) == len(record["rows"]) + 1  # the header and a row per case


def test_a_workdir_without_checkpoints_is_told_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.sampler_nfe", "--config",
       "configs/toy/gaussian_mixture.py", "--workdir", str(tmp_path), "--out", str(tmp_path)],
      capture_output=True, text=True, env=main_env(1), cwd=REPO, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: No checkpoint in ")
