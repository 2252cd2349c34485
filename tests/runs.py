"""Toy runs of ``main.py`` for the end-to-end tests: the 2-D toy config made short, the command
that trains or evaluates it in a fresh process, the state a run ends in, and what its console and
workdir hold.

``REPO`` is the repository root: commands run there, as a user would run them."""

import os
import subprocess
import sys

import jax
import numpy as np

import builders
from configs.toy import gaussian_mixture
from infra import checkpoints
from infra.devices import Devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "toy", "gaussian_mixture.py")

# A short, fixed-seed toy run shared by the tests (flags for main.py; same values in-process).
OVERRIDES = {
    "training.n_iters": 600,
    "training.batch_size": 256,
    "training.n_jitted_steps": 25,
    "training.log_freq": 100,
    "training.eval_freq": 300,
    "training.snapshot_freq": 300,
    "training.snapshot_freq_for_preemption": 100,
    "training.snapshot_sampling": False,
    "model.nf": 64,
    "model.num_blocks": 2,
    "model.num_scales": 200,
    "model.ema_rate": 0.99,
    "eval.begin_ckpt": 1,
    "eval.batch_size": 2000,
    "eval.rtol": 1e-3,
    "eval.atol": 1e-3,
}


def toy_config(**extra):
  """The toy config with :data:`OVERRIDES` and then ``extra`` (``"section.field": value``)."""
  config = gaussian_mixture.get_config()
  for key, value in {**OVERRIDES, **extra}.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def run_main(workdir, mode="train", devices=1, extra=(), **overrides):
  """Runs main.py in a fresh process; returns the CompletedProcess."""
  return subprocess.run(main_command(workdir, mode, extra, **overrides), capture_output=True,
                        text=True, env=main_env(devices), cwd=REPO, timeout=600)


def main_command(workdir, mode="train", extra=(), config=CONFIG, **overrides):
  """The ``python main.py ...`` command line of a toy run (to run from :data:`REPO`)."""
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
  return [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
          f"--mode={mode}", *flags, *extra]


def main_env(devices):
  """The environment of a main.py subprocess: JAX on ``devices`` CPU devices, unbuffered."""
  environment = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  environment["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                              f" --xla_force_host_platform_device_count={devices}")
  return environment


def final_state(workdir, config=None):
  """The train state of the newest checkpoint in ``workdir`` (of the toy config by default)."""
  config = config or toy_config()
  devices = Devices()
  _, _, template = builders.init_state(config, devices)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  try:
    return store.restore(store.latest_step(), template)
  finally:
    store.close()


def assert_states_close(a, b, rtol=1e-5, atol=1e-6):
  """Train states ``a`` and ``b`` at the same step, with close parameters, EMA and optimizer
  state and the same rng."""
  assert int(a.step) == int(b.step)
  for name in ("params", "ema_params", "opt_state"):
    leaves_a = jax.tree_util.tree_leaves(getattr(a, name))
    leaves_b = jax.tree_util.tree_leaves(getattr(b, name))
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
  np.testing.assert_array_equal(np.asarray(jax.random.key_data(a.rng) if jax.dtypes.issubdtype(
      a.rng.dtype, jax.dtypes.prng_key) else a.rng), np.asarray(
          jax.random.key_data(b.rng) if jax.dtypes.issubdtype(b.rng.dtype, jax.dtypes.prng_key)
          else b.rng))


def dir_digest(path):
  """``{relative path: hash of its bytes}`` of every file under ``path``."""
  digest = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        digest[os.path.relpath(full, path)] = hash(f.read())
  return digest


def last_line(result):
  """The last non-blank line of a finished process's stderr ("" if none)."""
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


def recomputing(caplog, piece):
  """The logged lines saying that the evaluation piece ``piece`` (a file name) is recomputed."""
  return [r.getMessage() for r in caplog.records
          if piece in r.getMessage() and "recomputing" in r.getMessage()]
