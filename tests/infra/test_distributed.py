"""Multi-process runs of main.py on localhost: two CPU processes with one device each.

They exercise :mod:`infra.distributed` for real: a coordinator on a free port, Gloo collectives
between subprocesses. On two idle cores a two-process toy run takes about as long as one process
with two devices (~30 s); under load, Gloo's per-step all-reduce makes it several times slower.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.runs import REPO, assert_states_close, final_state, main_command, main_env

# Cluster managers JAX detects, and our own variables: none may leak in from the environment.
_CLUSTER_ENV_PREFIXES = ("SCORE_SDE_", "SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR",
                         "KUBERNETES_")


def _clean_env(devices=1, **extra):
  env = {k: v for k, v in main_env(devices).items() if not k.startswith(_CLUSTER_ENV_PREFIXES)}
  env.update(extra)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, logdir, extra=(), count=2, **overrides):
  """Starts ``count`` processes of one run (new coordinator port); stderr goes to files."""
  port = _free_port()
  procs = []
  for i in range(count):
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}",
             f"--process_id={i}", *extra]
    # A file, not a pipe: nobody reads it while the run goes on, and a full pipe would block.
    with open(os.path.join(logdir, f"process{i}.stderr"), "w") as stderr:
      procs.append(subprocess.Popen(main_command(workdir, extra=flags, **overrides), cwd=REPO,
                                    env=_clean_env(), stdout=subprocess.DEVNULL, stderr=stderr))
  return procs


def _stderr(logdir, i):
  with open(os.path.join(logdir, f"process{i}.stderr")) as f:
    return f.read()


def _run(workdir, extra, env, timeout=600):
  return subprocess.run(main_command(workdir, extra=extra), capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=timeout)


def _last_line(text):
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _kill_all(procs):
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
  for proc in procs:
    proc.wait()


def _steps(workdir, store="checkpoints-meta"):
  """Steps of the complete checkpoints in ``workdir/store``."""
  path = os.path.join(workdir, store)
  return [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


def _wait_for_preemption_checkpoint(procs, workdir, logdir, at_least, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(step >= at_least for step in _steps(workdir)):
      return
    for i, proc in enumerate(procs):
      if proc.poll() is not None:
        _kill_all(procs)
        pytest.fail(f"process {i} exited early ({proc.returncode}): {_stderr(logdir, i)[-2000:]}")
    time.sleep(0.02)
  _kill_all(procs)
  pytest.fail(f"no preemption checkpoint >= {at_least} within {timeout} s")


@pytest.fixture(scope="module")
def two_device_reference(tmp_path_factory):
  """An uninterrupted single-process run of the toy config over two devices."""
  workdir = str(tmp_path_factory.mktemp("two_devices"))
  result = _run(workdir, [], _clean_env(devices=2))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_two_processes_stop_resume_and_match_one_process(tmp_path, two_device_reference):
  """SIGTERM to one process stops both at the same step with a checkpoint; later both are
  killed and restarted: the result equals one process over as many devices (each process
  feeds its half of every global batch), and train.log holds each line once."""
  workdir, logdir = str(tmp_path / "run"), str(tmp_path)
  # Longer than the reference so that the interruptions land mid-run; the last launch restores
  # its length.
  procs = _launch(workdir, logdir, **{"training.n_iters": 100000})
  _wait_for_preemption_checkpoint(procs, workdir, logdir, at_least=200)
  procs[1].send_signal(signal.SIGTERM)
  try:
    codes = [proc.wait(timeout=120) for proc in procs]
  finally:
    _kill_all(procs)
  assert codes == [0, 0], [_stderr(logdir, i)[-2000:] for i in range(2)]
  lines = [_last_line(_stderr(logdir, i)) for i in range(2)]
  assert "Stopped by SIGTERM at step" in lines[1], lines
  assert "Stopped by a peer's stop signal at step" in lines[0], lines
  stopped_at = {int(line.split(" at step ")[1].split(";")[0]) for line in lines}
  assert len(stopped_at) == 1 and max(_steps(workdir)) == stopped_at.pop()

  procs = _launch(workdir, logdir, **{"training.n_iters": 100000})
  _wait_for_preemption_checkpoint(procs, workdir, logdir,
                                  at_least=(max(_steps(workdir)) // 100 + 1) * 100)
  _kill_all(procs)
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
  killed_at = max(_steps(workdir))
  assert 300 <= killed_at < 600, killed_at
  newest = max(_steps(workdir) + _steps(workdir, "checkpoints"))

  procs = _launch(workdir, logdir)
  try:
    for i, proc in enumerate(procs):
      assert proc.wait(timeout=600) == 0, _stderr(logdir, i)[-3000:]
  finally:
    _kill_all(procs)
  assert f"Resuming from step {newest}" in _stderr(logdir, 0)
  assert_states_close(final_state(workdir), final_state(two_device_reference))
  with open(os.path.join(workdir, "train.log")) as f:
    log = f.read().splitlines()
  assert sum("Resuming from step" in line for line in log) == 2, log
  assert len([l for l in log if "training loss" in l]) == len(
      {l.split(" INFO ")[1] for l in log if "training loss" in l})


def test_survivor_exits_soon_after_its_peer_is_killed(tmp_path):
  """Process 1 killed: the survivor's collective fails at once and its exit watchdog ends it
  after ``peer_timeout_s / 2`` with one line; if the survivor was waiting in a barrier of the
  coordination service instead, JAX's heartbeat check aborts it after ``peer_timeout_s``.
  (Process 0, the coordinator, killed: JAX aborts the others at once, by itself.)"""
  victim, peer_timeout_s = 1, 10
  workdir, logdir = str(tmp_path / "run"), str(tmp_path)
  procs = _launch(workdir, logdir, extra=[f"--peer_timeout_s={peer_timeout_s}"],
                  **{"training.n_iters": 100000})
  try:
    _wait_for_preemption_checkpoint(procs, workdir, logdir, at_least=100)
    procs[victim].kill()
    killed = time.time()
    survivor = procs[1 - victim]
    returncode = survivor.wait(timeout=peer_timeout_s + 60)
    elapsed = time.time() - killed
  finally:
    _kill_all(procs)
  stderr = _stderr(logdir, 1 - victim)
  assert returncode != 0, stderr[-3000:]
  # Detection takes at most the heartbeat timeout; the rest is slack for a loaded machine.
  assert elapsed < peer_timeout_s + 10, (elapsed, stderr[-3000:])
  if returncode == 1:
    assert _last_line(stderr).startswith(f"error: process {1 - victim} of 2: not every process "
                                         "reached the end of the run"), stderr[-3000:]
  else:
    assert returncode == -signal.SIGABRT, stderr[-3000:]


@pytest.mark.parametrize("extra, env, expected", [
    (["--multihost"], {}, "no cluster manager detected"),
    (["--num_processes=2", "--process_id=0"], {},
     "missing: --coordinator_address (or SCORE_SDE_COORDINATOR_ADDRESS)"),
    ([], {"SCORE_SDE_NUM_PROCESSES": "2"},
     "missing: --coordinator_address (or SCORE_SDE_COORDINATOR_ADDRESS), --process_id"),
    (["--multihost", "--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"],
     {}, "must be host:port"),
    (["--multihost", "--coordinator_address=127.0.0.1:1234", "--num_processes=2",
      "--process_id=2"], {}, "--process_id must be in [0, 1]"),
])
def test_missing_or_bad_process_settings_give_one_line_error(tmp_path, extra, env, expected):
  result = _run(str(tmp_path / "w"), extra, _clean_env(**env), timeout=120)
  assert result.returncode != 0
  line = _last_line(result.stderr)
  assert line.startswith("error: ") and expected in line, result.stderr[-2000:]
  if "no cluster manager" in expected:
    assert "--coordinator_address=host:port --num_processes=N --process_id=i" in line


def test_process_whose_peers_never_come_gives_one_line_error(tmp_path):
  flags = [f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2",
           "--process_id=1", "--init_timeout_s=2"]
  start = time.time()
  result = _run(str(tmp_path / "w"), flags, _clean_env(), timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]
  assert _last_line(result.stderr).startswith("error: could not join the multi-process run at "
                                              "127.0.0.1:"), result.stderr[-2000:]
  assert time.time() - start < 60
