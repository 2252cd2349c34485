"""infra/compilation_cache.py: where the persistent compilation cache goes, and that a process
configured with it writes compiled programs there (and none when it is off)."""

import os
import subprocess
import sys

from infra import compilation_cache
from tests.runs import REPO

_COMPILE = """
import sys
import jax, jax.numpy as jnp
from infra import compilation_cache
compilation_cache.configure(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum())
"""


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
  assert compilation_cache.default_dir() == str(tmp_path / "mine")
  monkeypatch.delenv(compilation_cache.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.default_dir() == str(tmp_path / "xdg" / "score_sde_jax" / "jax")


def test_a_configured_process_writes_its_programs_and_none_when_off(tmp_path):
  def run(setting):
    result = subprocess.run([sys.executable, "-c", _COMPILE, setting], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

  folder = tmp_path / "cache"
  run(str(folder))
  assert any(name.startswith("jit_") for name in os.listdir(folder))
  # Off: nothing is written, not even to the default folder.
  before = set(os.listdir(folder))
  env_default = tmp_path / "default"
  result = subprocess.run([sys.executable, "-c", _COMPILE, "none"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, compilation_cache.ENV: str(env_default)})
  assert result.returncode == 0, result.stderr[-2000:]
  assert not env_default.exists() and set(os.listdir(folder)) == before
