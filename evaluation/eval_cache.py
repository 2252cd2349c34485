"""Per-piece evaluation results on disk, each recording the settings that produced it.

An evaluation is long (bits/dim ODE solves, thousands of samples), so ``modes.evaluate`` saves
it piece by piece (one batch of one repeat) and a re-run reuses the pieces already done. A piece
is only the same result if everything that produced it is the same: the parameters, the batch
it covered, the solver and its tolerances, the seed... Each piece's ``.npz`` therefore stores
those *settings* next to its arrays, a flat dict of JSON values with dotted names::

  {"checkpoint.digest": "5d41402a", "eval.batch_size": 1000, "eval.rtol": 1e-5, ...}

and :meth:`EvalCache.load` returns a piece only if its stored settings equal the requested ones.
Otherwise it logs one line naming what changed and returns None, so the caller recomputes the
piece and overwrites it. Files written without settings (an older layout) are recomputed too.

Which settings matter is the caller's business (``modes.evaluate`` reads the config); this module
takes plain dicts.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from infra import outputs

Settings = Mapping[str, Any]

# The npz entry holding a piece's settings: a 0-d str array of their JSON (sorted keys).
SETTINGS_KEY = "settings"
_UNSET = object()
# Differences named in full in a log line; the rest are counted.
_MAX_LISTED = 6


def canonical(settings: Settings) -> Dict[str, Any]:
  """``settings`` as they read back from disk (tuples become lists, ...), to compare them.

  Raises:
    TypeError: naming the first value that is not JSON-serialisable.
  """
  for name, value in settings.items():
    try:
      json.dumps(value)
    except TypeError as e:
      raise TypeError(f"evaluation setting {name}={value!r} is not JSON-serialisable") from e
  return json.loads(json.dumps(dict(settings), sort_keys=True))


def tree_digest(tree: Any) -> str:
  """A CRC-32 (8 hex digits) of every leaf's path, dtype, shape and bytes, in tree order.

  Computed on the host from one replica of each leaf, so every process of a replicated tree gets
  the same digest; the leaves must be fully addressable (replicated or local).
  """
  crc = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
      leaf = leaf.addressable_data(0)
    value = np.ascontiguousarray(np.asarray(leaf))
    header = f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape};"
    crc = zlib.crc32(header.encode("utf-8"), crc)
    crc = zlib.crc32(value.view(np.uint8).reshape(-1), crc)
  return f"{crc:08x}"


def differences(stored: Settings, requested: Settings) -> List[str]:
  """``name=old (now new)`` for each setting whose value differs (``unset`` where absent)."""
  def show(values: Settings, name: str) -> str:
    return json.dumps(values[name]) if name in values else "unset"

  return [f"{name}={show(stored, name)} (now {show(requested, name)})"
          for name in sorted(set(stored) | set(requested))
          if stored.get(name, _UNSET) != requested.get(name, _UNSET)]


class EvalCache:
  """The evaluation pieces of one directory, ``<directory>/<name>.npz``.

  Args:
    directory: where the pieces are; created on the first save.
  """

  def __init__(self, directory: str):
    self.directory = directory

  def __repr__(self) -> str:
    return f"EvalCache({self.directory!r})"

  def path(self, name: str) -> str:
    """The file of piece ``name``."""
    return os.path.join(self.directory, name + ".npz")

  def load(self, name: str, settings: Settings,
           keys: Sequence[str]) -> Optional[Dict[str, np.ndarray]]:
    """The arrays ``keys`` of piece ``name`` if it was computed with exactly ``settings``.

    Returns:
      ``{key: array}``, or None when the piece is absent, lacks a key, has no recorded settings
      or recorded other ones; the last two are logged (one line, naming the differing settings
      with their old and new values).
    """
    path = self.path(name)
    if not os.path.exists(path):
      return None
    recorded = outputs.load_npz(path, (SETTINGS_KEY,))
    stored = _parse(recorded[SETTINGS_KEY]) if recorded is not None else None
    if stored is None:
      logging.info("%s has no recorded settings (an older layout): recomputing", path)
      return None
    changed = differences(stored, canonical(settings))
    if changed:
      listed = ", ".join(changed[:_MAX_LISTED])
      more = f" and {len(changed) - _MAX_LISTED} more" if len(changed) > _MAX_LISTED else ""
      logging.info("%s was computed with %s%s: recomputing", path, listed, more)
      return None
    arrays = outputs.load_npz(path, keys)
    if arrays is None:
      logging.info("%s lacks one of %s: recomputing", path, ", ".join(keys))
    return arrays

  def save(self, name: str, settings: Settings, **arrays: np.ndarray) -> None:
    """Writes piece ``name``: ``arrays`` and ``settings`` (process 0 only; atomic)."""
    if jax.process_index() == 0:
      outputs.save_npz(self.path(name), **_with_settings(settings, arrays))

  def save_samples(self, name: str, settings: Settings, samples: np.ndarray,
                   **extra: np.ndarray) -> None:
    """Writes piece ``name`` with :func:`outputs.save_samples` (``name.npz`` and a picture,
    ``name.png``), ``settings`` among its arrays (process 0 only)."""
    if jax.process_index() == 0:
      outputs.save_samples(samples, self.directory, name, **_with_settings(settings, extra))


def _with_settings(settings: Settings, arrays: Mapping[str, Any]) -> Dict[str, Any]:
  if SETTINGS_KEY in arrays:
    raise ValueError(f"an evaluation piece cannot hold an array named {SETTINGS_KEY!r}")
  text = json.dumps(canonical(settings), sort_keys=True)
  return {**arrays, SETTINGS_KEY: np.asarray(text)}


def _parse(stored: np.ndarray) -> Optional[Dict[str, Any]]:
  """The settings dict of a stored 0-d str array; None if it is not one."""
  try:
    value = json.loads(str(stored[()]))
  except (TypeError, ValueError, IndexError):
    return None
  return value if isinstance(value, dict) else None
