"""The front door (``main.py``): the commands exactly as a user types them, the console they
print, the default workdir, and a bad config file or override refused in one line."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import main
from tests.runs import CONFIG, REPO, dir_digest, main_env

# The toy config made cheap to train and evaluate; the commands are otherwise as written.
QUICK = ["--config.training.batch_size=32", "--config.model.nf=32", "--config.model.num_blocks=1",
         "--config.eval.bpd_num_examples=200", "--config.eval.batch_size=200",
         "--config.eval.num_samples=200", "--config.eval.rtol=1e-3", "--config.eval.atol=1e-3"]
# Console lines of this project: "HH:MM:SS message".
PROJECT_LINE = re.compile(r"^\d\d:\d\d:\d\d \S")


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
  """A folder laid out like the repository root (main.py, configs/) to run commands from, so that
  the default workdir ``runs/...`` lands in it."""
  root = tmp_path_factory.mktemp("user")
  for name in ("main.py", "configs"):
    os.symlink(os.path.join(REPO, name), root / name)
  return root


def run_literal(cwd, *args):
  """``python main.py --config configs/toy/gaussian_mixture.py <args>`` run from ``cwd``."""
  command = [sys.executable, "main.py", "--config", "configs/toy/gaussian_mixture.py", *args]
  return subprocess.run(command, cwd=cwd, env=main_env(1), capture_output=True, text=True,
                        timeout=600)


@pytest.fixture(scope="module")
def trained(user_dir):
  """The literal train command with the config's 4000 steps (so the default job's console is
  what this shows), on a cheaper batch and network."""
  result = run_literal(user_dir, "--mode", "train", *QUICK)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_train_eval_sample_pair_up_without_workdir(user_dir, trained):
  workdir = user_dir / "runs" / "toy" / "gaussian_mixture"
  assert "Workdir: runs/toy/gaussian_mixture" in trained.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4000"]

  evaluated = run_literal(user_dir, "--mode", "eval", *QUICK)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  summary = json.loads((workdir / "eval" / "summary.json").read_text())
  assert list(summary) == ["4000"] and np.isfinite(summary["4000"]["bpd"])
  # One readable line per evaluated checkpoint.
  (line,) = [l for l in evaluated.stderr.splitlines() if " step 4000: test loss " in l]
  assert "bits/dim" in line and "200 samples" in line and "MMD to data" in line

  before = dir_digest(workdir / "checkpoints")
  sampled = run_literal(user_dir, "--mode", "sample", "--num_samples", "50", *QUICK)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  out = workdir / "sampled" / "step_4000_pc-euler_maruyama-none"
  with np.load(out / "sample.npz") as saved:
    assert saved["samples"].shape == (50, 2) and np.all(np.isfinite(saved["samples"]))
    assert float(saved["nfe"]) == 501.0
  assert (out / "sample.png").stat().st_size > 0
  info = json.loads((out / "sample.json").read_text())
  assert info["step"] == 4000 and info["nfe"] == 501.0 and info["num_samples"] == 50
  assert "50 samples, 501 network evaluations each, in " in sampled.stderr
  with Image.open(out / "process.gif") as gif:  # the reverse process, --num_frames 40
    assert gif.format == "GIF" and gif.n_frames == 40
  assert (out / "samples_vs_data.png").stat().st_size > 0
  assert (workdir / "eval" / "step_4000" / "samples.png").stat().st_size > 0
  assert dir_digest(workdir / "checkpoints") == before  # sampling writes nothing there


def test_console_is_short_and_only_the_projects(trained, user_dir):
  evaluated = run_literal(user_dir, "--mode", "eval", *QUICK)  # reuses the saved pieces
  for result in (trained, evaluated):
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines and all(PROJECT_LINE.match(l) for l in lines), lines
  total = len((trained.stdout + trained.stderr + evaluated.stdout +
               evaluated.stderr).strip().splitlines())
  assert total < 60, total
  # Without a terminal, training reports progress in plain lines: done/total, rate, time left.
  progress = [l for l in trained.stderr.splitlines() if "training loss" in l]
  assert len(progress) == 20 and "(4000/4000 steps, " in progress[-1] and " left)" in progress[-1]


def test_default_workdir_follows_the_config_path():
  assert main.default_workdir("configs/vpsde_mnist.py") == "runs/vpsde_mnist"
  assert main.default_workdir("./configs/toy/swiss_roll.py") == "runs/toy/swiss_roll"
  assert main.default_workdir("/x/configs/vp/cifar10_ddpmpp.py") == "runs/vp/cifar10_ddpmpp"
  assert main.default_workdir("../experiments/mine.py") == "runs/mine"


_BAD_CONFIGS = {
    "syntax.py": "def get_config(:\n",
    "raises.py": "def get_config():\n  raise RuntimeError('no such experiment')\n",
    "empty.py": "x = 1\n",
}


@pytest.mark.parametrize("config, flags, expected", [
    ("missing.py", [], "cannot load config '{dir}/missing.py': FileNotFoundError"),
    ("syntax.py", [], "cannot load config '{dir}/syntax.py': SyntaxError: invalid syntax"),
    ("raises.py", [], "RuntimeError: no such experiment. Pass a config file that defines"),
    ("empty.py", [], "has no attribute 'get_config'"),
    (CONFIG, ["--config.training.bogus=1"], "--config.training.bogus: training has no field "
     "'bogus' (its fields: batch_size,"),
    (CONFIG, ["--config.trainin.lr=1"], "the config has no field 'trainin'"),
    (CONFIG, ["--config.training.batch_size=abc"], "--config.training.batch_size=abc"),
    (CONFIG, ["stray"], "unexpected arguments 'stray'"),
    (CONFIG, [f"--classifier_config={REPO}/configs/classifier/vpsde_mnist_wrn.py",
              "--classifier_config.model.bogus=1"],
     "--classifier_config.model.bogus: model has no field 'bogus' (its fields: beta_max,"),
])
def test_bad_config_or_override_gives_one_line_error(tmp_path, config, flags, expected):
  for name, text in _BAD_CONFIGS.items():
    (tmp_path / name).write_text(text)
  config = os.path.join(str(tmp_path), config)
  workdir = tmp_path / "w"
  command = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
             "--mode=train", *flags]
  result = subprocess.run(command, capture_output=True, text=True, env=main_env(1), cwd=REPO,
                          timeout=120)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
  assert expected.format(dir=tmp_path) in lines[0], lines[0]
  assert not workdir.exists()
