"""Command line: ``python main.py --config CONFIG --workdir DIR --mode train|eval``.

Config fields can be overridden on the command line, e.g. ``--config.training.batch_size=64``.
Multi-host runs call ``jax.distributed.initialize()`` when launched with JAX's cluster
environment (``--multihost``); a single process uses all of its local devices.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Training/evaluation config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.")
flags.DEFINE_enum("mode", None, ["train", "eval"], "Run mode: train or eval.")
flags.DEFINE_string("eval_folder", "eval", "Folder under workdir for evaluation outputs.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-process runs).")
flags.mark_flags_as_required(["workdir", "mode"])

# Errors a user can fix from the command line: reported in one line, non-zero exit.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                FloatingPointError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  import jax  # pylint: disable=import-outside-toplevel
  import checkpoints  # pylint: disable=import-outside-toplevel
  import run_lib  # pylint: disable=import-outside-toplevel

  if FLAGS.multihost:
    jax.distributed.initialize()
  config = _load_config()
  try:
    if FLAGS.mode == "train":
      run_lib.train(config, FLAGS.workdir)
    else:
      run_lib.evaluate(config, FLAGS.workdir, FLAGS.eval_folder)
  except _USER_ERRORS + (checkpoints.CheckpointError,) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")


def _load_config():
  """``FLAGS.config``, which config_flags loads lazily; any failure becomes one line."""
  try:
    config = FLAGS.config
  except Exception as e:  # pylint: disable=broad-except
    path = FLAGS["config"].config_filename if hasattr(FLAGS["config"], "config_filename") else ""
    sys.exit(f"error: cannot load config {path!r}: {type(e).__name__}: {e}. "
             "Pass an existing file from configs/ that defines get_config().")
  if config is None:
    sys.exit("error: --config is required, e.g. --config configs/toy/gaussian_mixture.py")
  return config


def run() -> None:
  # A missing or broken config file is reported by the flag parser; keep it to one line.
  try:
    app.run(main)
  except flags.IllegalFlagValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
