"""``python -m mnist_classifier [--data_dir D] [--out PATH] [--steps N] [--seed S]``: trains the
MNIST classifier whose feature space scores MNIST samples (:mod:`evaluation.mnist_classifier`),
reports its test accuracy and caches it where evaluation looks for it."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Optional, Sequence

from datasets import lookup
from evaluation import mnist_classifier
from infra import logs


def main(argv: Optional[Sequence[str]] = None) -> mnist_classifier.TrainedClassifier:
  """Trains and saves the classifier; returns it."""

  def fail(message):
    raise ValueError(message)

  parser = argparse.ArgumentParser(prog=mnist_classifier.COMMAND, allow_abbrev=False,
                                   description="Trains the MNIST classifier whose feature space "
                                   "scores MNIST samples, reports its test accuracy and caches it.")
  parser.error = fail
  parser.add_argument("--data_dir", default="",
                      help=f"folder with the MNIST IDX files; default: found from "
                      f"${lookup.ENV_DATA_DIR}")
  parser.add_argument("--out", default="",
                      help=f"parameters file; default: {mnist_classifier.default_path()} "
                      f"(${mnist_classifier.ENV_CACHE} sets the folder)")
  parser.add_argument("--steps", type=int, default=mnist_classifier.DEFAULT_STEPS,
                      help=f"training steps of batch {mnist_classifier.DEFAULT_BATCH_SIZE}")
  parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
  args = parser.parse_args(argv)
  if args.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  try:
    return mnist_classifier.train_and_save(
        args.out or mnist_classifier.default_path(),
        functools.partial(mnist_classifier.load_mnist, args.data_dir), seed=args.seed,
        steps=args.steps)
  except lookup.DataNotFoundError as e:
    # Its ways name the config's field; this command takes the folder as --data_dir.
    raise ValueError(f"{e} Here: pass --data_dir=<folder with the IDX files>.") from e


def run() -> None:
  """The command: log lines on the console, user errors as one line and a non-zero exit."""
  logging.basicConfig(level=logging.INFO)
  logs.configure_console()
  try:
    main()
  except (ValueError, OSError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")


if __name__ == "__main__":
  run()
