"""Which parameters a sampling mode runs (``--mode sample``, ``figures``, controlled sampling):
what ``--checkpoint`` names, resolved.

* a workdir checkpoint: the newest step of either store (``--checkpoint`` unset), a step number,
  or the path of a step directory of another workdir; its EMA parameters, after checking that
  the config is the one that workdir was trained with (:mod:`infra.run_config`);
* one of the authors' released files (a path to a file: Flax ``checkpoint_<k>`` or PyTorch
  ``checkpoint_<k>.pth``, ``builders.load_released``), its EMA parameters;
* nothing for the exact score (``model.name = 'exact_score'``), which has no parameters.

Non-finite parameters are refused in one line in every case.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional, Tuple, Union

import ml_collections

import builders
import losses
from infra import checkpoints
from infra import run_config

Config = ml_collections.ConfigDict


class Parameters(NamedTuple):
  """What a sampling run samples with.

  Attributes:
    params: the EMA parameters of a checkpoint, or the exact score's ``{}``.
    step: the checkpoint's step (None for the exact score).
    name: which parameters, in messages.
    folder: which parameters, in output paths (``step_<step>``, ``released_step_<step>`` or
      ``exact``).
  """
  params: Any
  step: Optional[int]
  name: str
  folder: str

  @property
  def title(self) -> Union[int, str]:
    """What figure titles name (:func:`figures.run_title`'s ``step``)."""
    return "exact score" if self.step is None else self.step


def check_available(config: Config, workdir: str, checkpoint: Optional[str],
                    allow_config_change: bool) -> None:
  """What :func:`sampling_parameters` will find, checked before anything is built (a network of
  100 M parameters takes a while to initialize, a sample metric's classifier minutes to train):
  a one-line ``FileNotFoundError`` for a checkpoint that does not exist, a ``ValueError`` for a
  config the workdir was not trained with."""
  if config.model.name == "exact_score" or (checkpoint and os.path.isfile(str(checkpoint))):
    return
  store, _ = _workdir_checkpoint(config, workdir, checkpoint, allow_config_change)
  store.close()


def _workdir_checkpoint(config: Config, workdir: str, checkpoint: Optional[str],
                        allow_config_change: bool) -> Tuple[checkpoints.CheckpointStore, int]:
  """``(store, step)`` of the workdir checkpoint ``checkpoint`` names, once the config is known
  to be the one it was trained with; the caller closes the store."""
  store, step, trained_in = checkpoints.find_checkpoint(workdir, checkpoint)
  try:
    run_config.check(trained_in, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
  except ValueError:
    store.close()
    raise
  return store, step


def sampling_parameters(config: Config, workdir: str, checkpoint: Optional[str],
                        allow_config_change: bool, model: Any,
                        template: losses.TrainState) -> Parameters:
  """The parameters of ``model`` that ``checkpoint`` names (module docstring); ``template`` is
  the replicated initial state they are restored into.

  Raises:
    FileNotFoundError: no such checkpoint (the message names what exists).
    ValueError: a checkpoint given for the exact score, a config that differs from the one the
      checkpoint was trained with, or a released file that does not fit the config's network.
    FloatingPointError: the parameters hold non-finite values.
  """
  if builders.is_exact_score(model):
    if checkpoint:
      raise ValueError("--checkpoint: model.name = 'exact_score' has no parameters and reads no "
                       "checkpoint; drop --checkpoint.")
    return Parameters(template.ema_params, None, f"the exact score of {config.data.dataset}",
                      "exact")
  if checkpoint and os.path.isfile(str(checkpoint)):
    _, released = builders.load_released(config, str(checkpoint))
    return Parameters(released.params, released.step,
                      f"the authors' step-{released.step} checkpoint {checkpoint} "
                      f"({released.format})", f"released_step_{released.step}")
  store, step = _workdir_checkpoint(config, workdir, checkpoint, allow_config_change)
  try:
    state = store.restore(step, template)
  finally:
    store.close()
  bad = checkpoints.non_finite_leaves(state)
  if bad:
    raise FloatingPointError(f"The checkpoint of step {step} holds non-finite values "
                             f"({bad[0]}); sample another with --checkpoint=<step>.")
  return Parameters(state.ema_params, step, f"the step-{step} checkpoint ({store.step_dir(step)})",
                    f"step_{step}")
