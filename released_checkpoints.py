"""``python -m released_checkpoints --config CONFIG --checkpoint FILE --workdir W [--raw]``: one of
the authors' released checkpoints written into a workdir as an ordinary checkpoint, so that
``main.py --mode eval/sample`` and every sampler use it unchanged (:func:`convert`).

Reading the files is :mod:`models.released`'s (``builders.load_released`` for a config);
``--mode sample``, ``figures`` and ``eval`` also read them directly with ``--checkpoint=FILE``.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

import builders
import datasets
import losses
from infra import checkpoints
from infra import logs
from infra import run_config
from infra.commands import one_line_errors
from models import released

FLAGS = flags.FLAGS


def convert(config: ml_collections.ConfigDict, path: str, workdir: str, *,
            ema: bool = True) -> str:
  """Writes the released checkpoint ``path`` as the checkpoint of its step in ``workdir``.

  The train state is the one training would have written: ``params`` the raw parameters,
  ``ema_params`` the EMA ones (the raw ones too if ``ema`` is False), a fresh optimizer state
  (the authors' Adam moments are not carried over), the config's seed for ``rng``; the
  config is recorded as ``workdir/config.json``. Everything is read and checked before the
  first write, so a failure leaves ``workdir`` as it was.

  Returns:
    The step directory written (``workdir/checkpoints/<step>``).

  Raises:
    models.released.ReleasedCheckpointError: the file cannot be read or does not fit the config,
      or ``workdir`` already holds checkpoints.
  """
  for name in (checkpoints.SNAPSHOTS, checkpoints.PREEMPTION):
    with checkpoints.CheckpointStore(os.path.join(workdir, name), writer=False) as store:
      if store.all_steps():
        raise released.ReleasedCheckpointError(
            f"{store.directory} already holds step(s) {store.all_steps()}; convert into a "
            "fresh workdir")
  run_config.check(workdir, config, run_config.MAY_CHANGE_IN_EVAL)
  model, template = builders.abstract_model(config)
  raw, averaged = released.load_raw_and_ema(path, model, template, datasets.input_shape(config),
                                            ema=ema, ladder=builders.noise_ladder(config))
  state_rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]
  train_state = losses.init_train_state(state_rng, raw.params,
                                        builders.build_optimizer(config)).replace(
      step=jnp.asarray(raw.step, jnp.int32),
      ema_params=averaged.params)
  with checkpoints.CheckpointStore(os.path.join(workdir, checkpoints.SNAPSHOTS)) as store:
    store.save(raw.step, train_state)
    written = store.step_dir(raw.step)
  run_config.save(workdir, config)
  return written


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
  logs.configure_console()
  with one_line_errors():
    written = convert(FLAGS.config, FLAGS.checkpoint, FLAGS.workdir, ema=not FLAGS.raw)
  print(f"wrote {written} ({'raw' if FLAGS.raw else 'EMA'} parameters for sampling)")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.",
                                  lock_config=False)
  flags.DEFINE_string("checkpoint", None, "The released file: checkpoint_<k> (Flax msgpack) or "
                      "checkpoint_<k>.pth (PyTorch).")
  flags.DEFINE_string("workdir", None, "Workdir to write checkpoints/<step> and config.json "
                      "into; must hold no checkpoints yet.")
  flags.DEFINE_bool("raw", False, "Sample with the raw parameters instead of the EMA ones.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)
