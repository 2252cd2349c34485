"""The front door: the commands exactly as a user types them, the sample mode, the console."""

import importlib
import json
import logging
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import builders
import datasets
import main
import run_lib
from infra import logs
from models import utils as mutils
from modes import make_figures
from tests.test_app import REPO, _dir_digest, _env, toy_config

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
  return subprocess.run(command, cwd=cwd, env=_env(1), capture_output=True, text=True,
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

  before = _dir_digest(workdir / "checkpoints")
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
  assert _dir_digest(workdir / "checkpoints") == before  # sampling writes nothing there


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


def test_sample_chooses_a_checkpoint_and_reports_bad_requests(tmp_path):
  workdir = str(tmp_path)
  config = toy_config(**{"training.n_iters": 100, "training.snapshot_freq": 50,
                         "training.snapshot_freq_for_preemption": 25})
  run_lib.train(config, workdir)
  config.sampling.method = "ode"
  by_step = run_lib.sample(config, workdir, checkpoint="50", num_samples=10, num_frames=0)
  assert by_step["step"] == 50 and by_step["path"].endswith("step_50_ode-tsit5")
  by_path = run_lib.sample(config, workdir, checkpoint=os.path.join(workdir, "checkpoints", "100"),
                           num_samples=10, folder="other", num_frames=0)
  assert by_path["step"] == 100 and os.path.isdir(os.path.join(workdir, "other"))
  with np.load(os.path.join(by_step["path"], "sample.npz")) as saved:
    assert saved["samples"].shape == (10, 2)
  for kwargs, message in [(dict(checkpoint="70"), "available steps: [50, 100]"),
                          (dict(checkpoint=str(tmp_path / "nowhere")), "not a checkpoint"),
                          (dict(num_samples=0), "--num_samples must be >= 1")]:
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
      run_lib.sample(config, workdir, **{"num_samples": 10, "num_frames": 0, **kwargs})
  with pytest.raises(FileNotFoundError, match="train first"):
    run_lib.sample(config, str(tmp_path / "empty"), num_samples=10)


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


def test_checkpoint_index_counts_snapshot_intervals():
  assert [run_lib.checkpoint_index(s, 100) for s in (100, 200, 130, 1, 99)] == [1, 2, 2, 1, 1]


def test_default_workdir_follows_the_config_path():
  assert main.default_workdir("configs/vpsde_mnist.py") == "runs/vpsde_mnist"
  assert main.default_workdir("./configs/toy/swiss_roll.py") == "runs/toy/swiss_roll"
  assert main.default_workdir("/x/configs/vp/cifar10_ddpmpp.py") == "runs/vp/cifar10_ddpmpp"
  assert main.default_workdir("../experiments/mine.py") == "runs/mine"


@pytest.mark.parametrize("name", ["vpsde_mnist", "vesde_mnist", "subvpsde_mnist",
                                  "vpsde_discrete_mnist", "subvpsde_pc_mnist",
                                  "vpsde_mnist_conditional"])
def test_mnist_configs_build(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  sde = builders.build_sde(config)
  model = builders.build_model(config)
  shape = datasets.input_shape(config, 2)
  assert shape == (2, 28, 28, 1)
  variables = jax.eval_shape(lambda: builders.init_model(jax.random.PRNGKey(0), config)[1])
  assert sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables)) > 10 ** 6
  assert builders.build_sampling_fn(config, sde, shape) is not None and model is not None
  if name == "vpsde_discrete_mnist":
    assert not config.training.continuous and sde.N == 1000
    assert builders.sampler_tag(config) == "pc-ancestral_sampling-none"
  if name == "subvpsde_pc_mnist":
    assert builders.sampler_tag(config) == "pc-reverse_diffusion-langevin"
  if name == "vpsde_mnist_conditional":
    assert mutils.num_classes(model) == 10 and "ClassEmbedding_0" in variables


def test_sampler_tags_tell_samplers_and_their_steps_apart():
  config = toy_config()
  tags = set()
  for fields in (dict(method="pc"), dict(method="ode"), dict(method="ddim"),
                 dict(method="ddim", eta=1.0), dict(method="ddim", steps=10),
                 dict(method="dpm_solver"), dict(method="dpm_solver", multistep=False),
                 dict(method="dpm_solver", order=3), dict(method="edm_heun"),
                 dict(method="edm_heun", s_churn=40.0)):
    tags.add(builders.sampler_tag(make_figures._with_sampling(config, **fields)))
  assert len(tags) == 10
  three_m = make_figures._with_sampling(config, method="dpm_solver", order=3)
  assert builders.sampler_tag(three_m) == "dpm_solver-3m-20steps"


def test_progress_reports_plain_lines_without_a_terminal(caplog, monkeypatch):
  monkeypatch.setattr(os, "isatty", lambda fd: False)
  with caplog.at_level(logging.INFO):
    progress = logs.Progress("train", 10, initial=4)
    progress.update(3)
    progress.report("step %d: loss %.2f", 7, 0.5)
    progress.close()
  (line,) = caplog.messages
  assert line.startswith("step 7: loss 0.50 (7/10 steps, ") and line.endswith(" left)")


def test_console_lines_read_time_then_message():
  formatter = logs._ConsoleFormatter()  # pylint: disable=protected-access
  info = logging.LogRecord("x", logging.INFO, __file__, 1, "step %d", (3,), None)
  warning = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", (), None)
  assert re.fullmatch(r"\d\d:\d\d:\d\d step 3", formatter.format(info))
  assert re.fullmatch(r"\d\d:\d\d:\d\d warning: careful", formatter.format(warning))


def test_figures_mode_draws_every_figure_from_the_exact_score(tmp_path):
  """No checkpoint: the exact score of the toy mixture; every figure is a valid file."""
  config = importlib.import_module("configs.toy.gaussian_mixture_exact").get_config()
  config.model.num_scales = 50
  config.eval.batch_size = 200
  paths = run_lib.make_figures(config, str(tmp_path), num_frames=6)
  assert sorted(paths) == ["comparison", "encoder", "marginals", "process_ode-tsit5",
                           "process_pc-euler_maruyama-none",
                           "process_pc-reverse_diffusion-langevin", "trajectories"]
  for name, path in paths.items():
    assert os.path.dirname(path) == str(tmp_path / "figures" / "exact")
    with Image.open(path) as image:
      assert image.format == ("GIF" if name.startswith("process") else "PNG")
      if image.format == "GIF":
        assert image.n_frames == 6
      assert min(image.size) > 300
