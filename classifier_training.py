"""``python -m classifier_training --config CONFIG --workdir W [--allow_config_change]``: trains
the noise-conditional classifier of classifier guidance, the same as ``python main.py --config
CONFIG --mode train_classifier --workdir W`` (:mod:`modes.train_classifier`)."""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from infra import logs
from infra.commands import one_line_errors
from modes import train_classifier

FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
  logs.configure_console()
  with one_line_errors():
    train_classifier.train(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Classifier config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for the classifier's checkpoints and logs.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Resume although fields that define the classifier differ from the workdir's "
                    "recorded config.json; the new config is recorded.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
