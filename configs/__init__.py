"""Experiment configs (one file per experiment, each with ``get_config()``) and their loader.

``main.py`` loads a config file through ml_collections' ``--config`` flag, whose
``--config.a.b=value`` flags override fields; scripts (the benchmarks) load one with
:func:`load_config` and override fields with :func:`apply_overrides`, the same way.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Sequence, Tuple

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file ``path``.

  ``path`` is absolute or relative to the working directory or, failing that, to the repository
  root (``configs/vpsde_mnist.py`` works from anywhere).
  """
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(_REPO, path)
  spec = importlib.util.spec_from_file_location("config_file", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[Tuple[str, Any]]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted ``key = value`` pairs set.

  A key the config lacks raises ``KeyError``: a typo must not go unnoticed into the records.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"Override {key!r}: the config has no such field.")
    node[leaf] = value
  return config


def parse_override(text: str) -> Tuple[str, Any]:
  """``'a.b=value'`` -> ``('a.b', value)``: a Python literal if it parses as one, else the text."""
  key, _, value = text.partition("=")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value
