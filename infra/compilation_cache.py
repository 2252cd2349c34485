"""JAX's persistent compilation cache: programs compiled once are kept on disk, so the next run of
the same command (a resume, an evaluation of another checkpoint, a second sampling run) loads
them instead of compiling again.

``main.py`` turns it on for every mode (``--compilation_cache``): by default in the user's cache,
``$SCORE_SDE_COMPILATION_CACHE`` or else ``$XDG_CACHE_HOME/score_sde_jax/jax`` (``~/.cache/...``),
shared by all workdirs; ``--compilation_cache=DIR`` puts it elsewhere and
``--compilation_cache=none`` turns it off. JAX keys each entry by the program, the compiler
options, the devices and the versions of jax and jaxlib, so a changed program or an upgrade
compiles afresh; only programs that took at least a second to compile are kept (JAX's default).
"""

from __future__ import annotations

import os
from typing import Optional

import jax

ENV = "SCORE_SDE_COMPILATION_CACHE"
OFF = "none"


def default_dir() -> str:
  """``$SCORE_SDE_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/score_sde_jax/jax`` (``XDG_CACHE_HOME``
  defaulting to ``~/.cache``)."""
  if os.environ.get(ENV):
    return os.environ[ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "score_sde_jax", "jax")


def configure(setting: str = "") -> Optional[str]:
  """Turns the cache on in ``setting`` (a folder; ``''``: :func:`default_dir`) or off
  (``'none'``); returns the folder used, or None. Call before anything is compiled."""
  if setting.strip().lower() == OFF:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  path = os.path.abspath(os.path.expanduser(setting or default_dir()))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  return path
