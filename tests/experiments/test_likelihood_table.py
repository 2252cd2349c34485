"""experiments/likelihood_table.py: the toys' known entropies and the table of eval summaries."""

import json
import math
import os

import numpy as np
import pytest

from experiments import likelihood_table


def test_known_entropies():
  """Checkerboard: log2(6) / 2 exactly. The mixture's components lie 10.8 standard deviations
  apart, so its entropy is that of one of them plus log 8, to far below the Monte Carlo error."""
  assert likelihood_table.known_entropy_bits("checkerboard") == (math.log2(6.0) / 2.0, 0.0)
  bits, stderr = likelihood_table.known_entropy_bits("gaussian_mixture", num_samples=200_000)
  separated = (math.log(8) + math.log(2 * math.pi * math.e * 0.1 ** 2)) / (2 * math.log(2))
  assert 0 < stderr < 0.01 and abs(bits - separated) < 4 * stderr
  with pytest.raises(ValueError, match="checkerboard, gaussian_mixture"):
    likelihood_table.known_entropy_bits("swiss_roll")


def _write_run(folder, result, bpd):
  os.makedirs(folder / "step_4000")
  with open(folder / "summary.json", "w") as f:
    json.dump({"100": {"bpd": 9.0}, "4000": result}, f)
  np.savez(folder / "step_4000" / "bpd_repeat0_batch0.npz", bpd=bpd[:2])
  np.savez(folder / "step_4000" / "bpd_repeat0_batch1.npz", bpd=bpd[2:])


def test_table_of_summaries_and_paired_differences(tmp_path):
  folder = tmp_path / "run" / "eval_likelihood"
  result = {"bpd": 1.5, "bpd_stderr": 0.01, "bpd_count": 2000, "bpd_mean_nfe": 400.0,
            "bound": 1.6, "bound_stderr": 0.02, "bound_mc_stderr": 0.001, "bound_count": 2000,
            "bound_num_draws": 1000, "bpd_scale": "continuous data"}
  base = np.array([1.0, 2.0, 3.0, 4.0])
  _write_run(folder, result, base)
  other = tmp_path / "other" / "eval_likelihood"
  _write_run(other, {**result, "bpd": 1.4}, base - np.array([0.1, 0.2, 0.1, 0.2]))
  stem = likelihood_table.main(["--run", f"lw={folder}", "--run", f"x={other}", "--dataset",
                                "checkerboard", "--out", str(tmp_path / "out")])
  with open(stem + ".md") as f:
    table = f.read()
  assert ("| lw | 4000 | 1.5000 ± 0.0100 | 400 | 1.6000 ± 0.0200 | 0.0010 | - | - | 2000 |"
          in table)
  # Differences -0.1, -0.2, -0.1, -0.2 in the saved order: mean -0.15, s.e. 0.0577 / 2.
  assert ("| x | 4000 | 1.4000 ± 0.0100 | 400 | 1.6000 ± 0.0200 | 0.0010 | "
          "-0.1500 ± 0.0289 | - |" in table)
  assert "Data entropy (checkerboard): 1.2925" in table
  with pytest.raises(FileNotFoundError, match="run --mode eval"):
    likelihood_table.main(["--run", f"x={tmp_path / 'none'}", "--out", str(tmp_path / "out")])
