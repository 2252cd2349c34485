"""End-to-end tests of training (``modes.train``, ``python main.py --mode train``) on the 2-D
toy: it learns, compiles each program once, matches across devices, stops on signals with a
checkpoint and resumes exactly, and fails in one line on bad input, write failures and
incompatible or corrupted checkpoints. ``reference_run`` (``tests/modes/conftest.py``) is an
uninterrupted run to compare with."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import builders
import run_lib
from tests.runs import (REPO, assert_states_close, dir_digest, final_state, last_line,
                        main_command, main_env, run_main, toy_config)


def test_toy_trains_and_evaluates(tmp_path):
  """Training learns the data (a two-sample statistic beats the prior's) and eval writes outputs."""
  workdir = str(tmp_path)
  config = toy_config(**{"training.snapshot_sampling": True})
  run_lib.train(config, workdir)
  assert os.path.exists(os.path.join(workdir, "samples", "iter_600", "sample.png"))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))

  config.eval.num_samples = 1000
  summary = run_lib.evaluate(config, workdir, "eval")
  assert set(summary) == {"300", "600"}
  final = summary["600"]
  # The toy's modes are narrow (std 0.1) but its mean and covariance equal the prior's, so the
  # multi-scale kernel MMD is the discriminating statistic: the prior scores ~0.23, this short run
  # ~0.07, the full 4000-step toy config ~0.014.
  assert final["mmd"] < 0.5 * final["prior_mmd"], final
  assert final["energy_distance"] < final["prior_energy_distance"], final
  assert np.isfinite(final["bpd"]) and final["bpd_count"] > 0
  assert np.isfinite(final["loss"])
  on_disk = json.load(open(os.path.join(workdir, "eval", "summary.json")))
  assert on_disk["600"]["bpd"] == pytest.approx(final["bpd"])
  assert os.path.exists(os.path.join(workdir, "eval", "step_600", "samples_0.npz"))

  # A second evaluation resumes from the saved per-batch results and reproduces them exactly,
  # the samples' NFE included (every batch comes from disk this time).
  again = run_lib.evaluate(config, workdir, "eval")
  assert again["600"]["bpd"] == final["bpd"]
  assert again["600"]["sampling_nfe"] == final["sampling_nfe"] > 0


def test_non_finite_snapshot_samples_are_skipped_and_training_goes_on(tmp_path, monkeypatch,
                                                                      caplog):
  def nan_sampler(*args, **kwargs):
    del args, kwargs
    return lambda rng, params: (np.full((64, 2), np.nan, np.float32), 0)

  monkeypatch.setattr(builders, "build_sampler", nan_sampler)
  config = toy_config(**{"training.n_iters": 50, "training.snapshot_freq": 50,
                         "training.snapshot_sampling": True})
  with caplog.at_level(logging.WARNING):
    run_lib.train(config, str(tmp_path))
  assert "Snapshot samples at step 50 are non-finite" in caplog.text
  assert int(final_state(str(tmp_path), config).step) == 50
  assert not os.path.exists(os.path.join(str(tmp_path), "samples", "iter_50"))


def test_training_compiles_each_program_once(tmp_path):
  """Three snapshots with sampling, six evaluations, seven logged losses: the train step, the
  eval step and the sampler are each compiled once (new parameters are arguments, not
  constants), so a long run pays compilation once."""
  records = []
  handler = logging.Handler()
  handler.emit = lambda record: records.append(record.getMessage())
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    run_lib.train(toy_config(**{"training.n_iters": 30, "training.n_jitted_steps": 5,
                                "training.log_freq": 5, "training.eval_freq": 5,
                                "training.snapshot_freq": 10, "training.snapshot_sampling": True,
                                "training.snapshot_freq_for_preemption": 10,
                                "model.num_scales": 10}), str(tmp_path))
  finally:
    jax.config.update("jax_log_compiles", False)
    jax_logger.removeHandler(handler)
  compiled = [m.split()[1] for m in records if m.startswith("Compiling ")]
  for name in ("jit(train_step)", "jit(eval_step)", "jit(sample)"):
    assert compiled.count(name) == 1, (name, compiled)
  assert sorted(os.listdir(tmp_path / "samples")) == ["iter_10", "iter_20", "iter_30"]


def test_four_devices_match_one_device(tmp_path, reference_run):
  workdir = str(tmp_path)
  result = run_main(workdir, devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_states_close(final_state(workdir), final_state(reference_run), rtol=1e-4, atol=1e-5)

  # Sampling, bits/dim and the bound run sharded over the four devices.
  result = run_main(workdir, mode="eval", devices=4,
                    **{"eval.num_samples": 400, "eval.batch_size": 200, "eval.begin_ckpt": 2,
                       "eval.bpd_num_examples": 400, "eval.enable_bound": True,
                       "eval.bound_num_draws": 20})
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "eval", "summary.json")))
  assert np.isfinite(summary["600"]["bpd"]) and np.isfinite(summary["600"]["bound"])
  assert summary["600"]["num_samples"] == 400 and summary["600"]["bpd_count"] == 400
  assert summary["600"]["bound_count"] == 400


def _wait_for_preemption_checkpoint(proc, workdir, at_least):
  """Waits until ``checkpoints-meta`` holds a step >= ``at_least`` (the run is mid-way)."""
  meta = os.path.join(workdir, "checkpoints-meta")
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.isdir(meta) and any(d.isdigit() and int(d) >= at_least for d in os.listdir(meta)):
      return
    if proc.poll() is not None:
      pytest.fail(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.02)
  pytest.fail("training made no progress")


def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path, reference_run):
  """SIGTERM (a scheduler's preemption notice): the step in flight finishes, a preemption
  checkpoint is written at that step and the run exits 0 saying how to resume. Then the resumed
  run is killed outright (SIGKILL) after its next preemption checkpoint. Resumed once more, it
  ends exactly where an uninterrupted run does."""
  workdir = str(tmp_path)
  # Longer than the reference so that the interruptions land mid-run; the last run restores the
  # original length.
  long_run = main_command(workdir, **{"training.n_iters": 100000})
  proc = subprocess.Popen(long_run, cwd=REPO, env=main_env(1), text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for_preemption_checkpoint(proc, workdir, 200)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  last = [l for l in stderr.splitlines() if l.strip()][-1]
  assert "Stopped by SIGTERM at step" in last and "Run the same command to resume" in last, last
  stopped_at = int(last.split(" at step ")[1].split(";")[0])
  assert 200 <= stopped_at < 500
  assert os.listdir(os.path.join(workdir, "checkpoints-meta")) == [str(stopped_at)]
  assert "Traceback" not in stderr

  proc = subprocess.Popen(long_run, cwd=REPO, env=main_env(1), text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for_preemption_checkpoint(proc, workdir, (stopped_at // 100 + 1) * 100)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints-meta"))
                  if d.isdigit())
  assert stopped_at < killed_at < 600, killed_at

  result = run_main(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming from step {killed_at}" in result.stderr
  assert_states_close(final_state(workdir), final_state(reference_run))


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path, monkeypatch, caplog):
  """SIGINT (Ctrl-C) arriving mid-run, in-process: the run returns at the end of that chunk of
  steps with a preemption checkpoint there, and a resume starts from it."""
  real = builders.build_train_steps

  def interrupting(*args, **kwargs):
    steps = real(*args, **kwargs)
    def run(state, batch):
      state, loss = steps(state, batch)
      if int(state.step) == 50:
        os.kill(os.getpid(), signal.SIGINT)
      return state, loss
    return run

  monkeypatch.setattr(builders, "build_train_steps", interrupting)
  workdir = str(tmp_path)
  config = toy_config(**{"training.n_iters": 200, "training.snapshot_freq": 200})
  # What the process had (a test runner's worker may ignore SIGINT): training must restore it.
  before = signal.getsignal(signal.SIGINT)
  with caplog.at_level(logging.INFO):
    run_lib.train(config, workdir)
  assert "SIGINT received: stopping after this step" in caplog.text
  assert "Stopped by SIGINT at step 50" in caplog.text
  assert os.listdir(os.path.join(workdir, "checkpoints-meta")) == ["50"]
  assert signal.getsignal(signal.SIGINT) == before  # handler restored
  monkeypatch.setattr(builders, "build_train_steps", real)
  with caplog.at_level(logging.INFO):
    run_lib.train(toy_config(**{"training.n_iters": 75, "training.snapshot_freq": 200}), workdir)
  assert "Resuming from step 50" in caplog.text
  assert int(final_state(workdir).step) == 75


def test_second_signal_exits_at_once(tmp_path):
  workdir = str(tmp_path)
  # Long compiled chunks: the first signal is honoured only at the end of one, ~seconds away.
  proc = subprocess.Popen(main_command(workdir, **{"training.n_jitted_steps": 1000,
                                                   "training.n_iters": 100000,
                                                   "training.snapshot_freq_for_preemption": 1000}),
                          cwd=REPO, env=main_env(1), text=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  _wait_for_preemption_checkpoint(proc, workdir, 1000)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert stderr.strip().splitlines()[-1] == "error: second SIGTERM: exiting now, without saving."
  # What was saved before is intact: the next run resumes from it.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints-meta"))
                 if d.isdigit())
  assert steps and steps[-1] % 1000 == 0


def _with_file_size_limit(command, kilobytes):
  """``command`` run so that writing a file past ``kilobytes`` fails (EFBIG), as on a full disk
  (``ulimit -f``: no root needed; Python ignores the SIGXFSZ that comes with it)."""
  return ["bash", "-c", f'ulimit -f {kilobytes} && exec "$@"', "bash", *command]


def test_write_failures_give_one_line_and_keep_what_was_saved(tmp_path, reference_run):
  """Checkpoint data files (~0.1 MB here) and sample files cannot be written: one line, not
  orbax's worker-thread tracebacks, and the checkpoints already there still resume."""
  workdir = str(tmp_path / "w")
  shutil.copytree(reference_run, workdir)
  before = dir_digest(os.path.join(workdir, "checkpoints"))
  result = subprocess.run(_with_file_size_limit(main_command(workdir, **{"training.n_iters": 900}),
                                                20), cwd=REPO, env=main_env(1),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines()
           if l.strip() and not re.match(r"\d\d:\d\d:\d\d (?!warning|error)", l)]
  assert len(lines) == 1 and lines[0].startswith("error: saving step"), result.stderr[-3000:]
  assert dir_digest(os.path.join(workdir, "checkpoints")) == before

  result = subprocess.run(_with_file_size_limit(main_command(workdir, mode="eval",
                                                             **{"eval.enable_bpd": False}), 1),
                          cwd=REPO, env=main_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  last = last_line(result)
  assert last.startswith("error: cannot write ") and "free disk space" in last, \
      result.stderr[-3000:]
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override, expected", [
    ({"training.sde": "brownian"},
     "Unknown SDE 'brownian'; valid names are: ousde, rectified_flow, sigmapowersde, subvpsde, "
     "vesde, vpsde"),
    ({"model.name": "unet9000"}, "Unknown model 'unet9000'; valid names are:"),
    ({"sampling.predictor": "rk4"}, "Unknown predictor"),
    ({"data.dataset": "imagenet21k"}, "imagenet21k"),
    ({"data.source": "idx", "data.dataset": "mnist", "data.data_dir": "/nonexistent/mnist",
      "data.dim": 0, "data.image_size": 28, "data.num_channels": 1}, "/nonexistent/mnist"),
])
def test_bad_input_gives_one_line_error(tmp_path, override, expected):
  workdir = tmp_path / "w"
  result = run_main(str(workdir), **override)
  assert result.returncode != 0
  assert last_line(result).startswith("error: ") and expected in last_line(result), \
      result.stderr[-2000:]
  assert not workdir.exists(), "a bad value must fail before the workdir is created"


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main(str(blocker / "workdir"))
  assert result.returncode != 0
  assert last_line(result).startswith("error: ") and "workdir" in last_line(result).lower() \
      or str(blocker) in last_line(result), result.stderr[-2000:]


def test_incompatible_or_corrupted_checkpoint_leaves_files_intact(tmp_path, reference_run):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference_run, workdir)
  before = dir_digest(workdir)

  # A config with a different network is refused by the recorded config and, even when the
  # change is allowed, cannot restore this workdir's checkpoints.
  result = run_main(workdir, **{"model.nf": 32})
  assert result.returncode != 0
  assert last_line(result).startswith("error: the config differs"), result.stderr[-2000:]
  assert "model.nf: 64 -> 32" in last_line(result)
  result = run_main(workdir, extra=["--allow_config_change"], **{"model.nf": 32})
  assert result.returncode != 0
  assert last_line(result).startswith("error: "), result.stderr[-2000:]
  assert "shape" in last_line(result)
  after = dir_digest(workdir)
  assert {k: v for k, v in after.items() if "checkpoints" in k} == \
      {k: v for k, v in before.items() if "checkpoints" in k}

  # A corrupted snapshot is reported by evaluation; nothing else is touched.
  snapshot = os.path.join(workdir, "checkpoints", "600")
  for root, _, files in os.walk(snapshot):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, "r+b") as f:
          f.truncate(16)
  corrupted = dir_digest(os.path.join(workdir, "checkpoints", "300"))
  result = run_main(workdir, mode="eval", **{"eval.begin_ckpt": 2, "eval.end_ckpt": 2})
  assert result.returncode != 0
  assert last_line(result).startswith("error: "), result.stderr[-2000:]
  assert dir_digest(os.path.join(workdir, "checkpoints", "300")) == corrupted
