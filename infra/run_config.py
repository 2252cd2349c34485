"""The config a training run records in its workdir, and the check every later run makes.

A run's first start writes ``workdir/config.json``. A resumed run (or an evaluation) compares its
config with it: a field that changes what is trained -- the model, SDE, loss, data, optimizer or
seed -- must be unchanged, so that the checkpoints keep meaning what they meant. Fields that only
say how long to train, how often to log, save or sample, and how to evaluate may change
(:data:`MAY_CHANGE_ON_RESUME`); an evaluation may in addition use another seed or numerics
(:data:`MAY_CHANGE_IN_EVAL`). ``allow_change=True`` accepts a deliberate change and records the new
config.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections

from infra import outputs

RECORD = "config.json"

# Dotted field names, or section prefixes ending in ".".
MAY_CHANGE_ON_RESUME = (
    "training.n_iters", "training.n_jitted_steps", "training.log_freq", "training.eval_freq",
    "training.snapshot_freq", "training.snapshot_freq_for_preemption",
    "training.snapshot_sampling", "training.remat", "data.data_dir", "sampling.", "eval.",
    "reflow.straightness_samples", "reflow.straightness_steps", "dequantizer.",
)
MAY_CHANGE_IN_EVAL = MAY_CHANGE_ON_RESUME + (
    "seed", "optim.", "training.batch_size", "training.mixed_precision", "training.reduce_mean",
    "training.likelihood_weighting", "training.eps", "training.label_dropout",
    "training.time_sampling", "training.logit_normal_mean", "training.logit_normal_std",
    "reflow.", "data.random_flip",
    "data.uniform_dequantization",
)


# Written beside the config fields: discrete models take the authors' noise-level labels (for
# SMLD, label 0 is sigma_max). A discrete VE workdir recorded without it was trained on the
# mirrored labels, which no checkpoint of it can be read with now.
DISCRETE_LABELS = "record.discrete_labels"
_AUTHORS_LABELS = "authors"


class ConfigChangedError(ValueError):
  """The config differs from the workdir's recorded one in a field that must not change."""


class MirroredLabelsError(ValueError):
  """The workdir's discrete VE model was trained with noise-level labels mirrored against the
  authors' (before they were adopted), so reading it now would condition it on wrong levels."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``, values as JSON would store them (tuples as lists)."""
  flat: Dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = json.loads(json.dumps(value))
  return flat


def section(config: ml_collections.ConfigDict, name: str) -> Dict[str, Any]:
  """The fields of ``config.<name>`` as ``{"<name>.<field>": value}`` (:func:`flatten`)."""
  return flatten(config[name].to_dict(), f"{name}.")


def _may_change(name: str, allowed: Sequence[str]) -> bool:
  return any(name == a or (a.endswith(".") and name.startswith(a)) for a in allowed)


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                allowed: Sequence[str] = ()) -> List[str]:
  """``'field: recorded -> current'`` for each flat field that differs and may not change.

  A field present on one side only (a config written by another version of this project)
  is not a difference: its absence says nothing about its value.
  """
  return [f"{name}: {recorded[name]!r} -> {current[name]!r}"
          for name in sorted(set(recorded) & set(current))
          if recorded[name] != current[name] and not _may_change(name, allowed)]


def load(workdir: str) -> Optional[Dict[str, Any]]:
  """The flat recorded config of ``workdir``, or None if it has none."""
  path = os.path.join(workdir, RECORD)
  return outputs.load_json(path) if os.path.exists(path) else None


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records ``config`` (flat, sorted JSON) as the workdir's config."""
  record = flatten(config.to_dict())
  record[DISCRETE_LABELS] = _AUTHORS_LABELS
  outputs.save_json(os.path.join(workdir, RECORD), record)


def check(workdir: str, config: ml_collections.ConfigDict, allowed: Sequence[str],
          allow_change: bool = False) -> List[str]:
  """Compares ``config`` with the one recorded in ``workdir``; returns the differences.

  Args:
    workdir: the run's directory (read only).
    config: the config of this run.
    allowed: fields that may differ (:data:`MAY_CHANGE_ON_RESUME` or :data:`MAY_CHANGE_IN_EVAL`).
    allow_change: accept differences (they are logged) instead of refusing.

  Returns:
    The differing fields (empty if none, or if the workdir records no config).

  Raises:
    ConfigChangedError: naming every differing field, unless ``allow_change``.
    MirroredLabelsError: for a discrete VE workdir trained on the old, mirrored labels.
  """
  recorded = load(workdir)
  if recorded is None:
    return []
  if (recorded.get("training.sde") == "vesde" and recorded.get("training.continuous") is False
      and recorded.get(DISCRETE_LABELS) != _AUTHORS_LABELS):
    raise MirroredLabelsError(
        f"{workdir} holds a discretely trained VE (SMLD) model trained before discrete models "
        "took the authors' noise-level labels (label 0 = sigma_max, not sigma_min): its "
        "checkpoints would now be conditioned on mirrored levels. Train it again in a fresh "
        "--workdir.")
  diffs = differences(recorded, flatten(config.to_dict()), allowed)
  if diffs and not allow_change:
    raise ConfigChangedError(
        f"the config differs from the one {workdir} was trained with ({RECORD}): "
        f"{'; '.join(diffs)}. Use the recorded values, a fresh --workdir, or "
        "--allow_config_change to continue with the change deliberately.")
  for diff in diffs:
    logging.warning("config change accepted (--allow_config_change): %s", diff)
  return diffs
