"""The runs of ``main.py``, by the authors' name: the mode table and the functions scripts call.

Each mode lives in its own module of :mod:`modes`; this module only maps ``--mode`` to them
(:data:`MODES`) and re-exports what people import::

  import run_lib
  run_lib.train(config, workdir)                      # --mode train
  run_lib.evaluate(config, workdir)                   # --mode eval
  run_lib.sample(config, workdir, num_samples=64)     # --mode sample
  run_lib.controlled_sample(config, workdir, inpaint="left_half")  # --mode sample --inpaint
  run_lib.make_figures(config, workdir)               # --mode figures
  run_lib.fid_stats(config, workdir)                  # --mode fid_stats
  run_lib.train_classifier(config, workdir)           # --mode train_classifier
  run_lib.reflow(config, workdir)                     # --mode reflow
  run_lib.train_dequantizer(config, workdir)          # --mode train_dequantizer

and, where they live now, the helpers it used to hold (``sampler_tag``, ``model_batch``,
``stack_batches``, ``inpainting_mask``, ``INPAINT_REGIONS``, ``guidance_labels``,
``checkpoint_index``, ``describe_result``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import ml_collections

from builders import sampler_tag
from controllable_generation import INPAINT_REGIONS, inpainting_mask
from datasets.batching import model_batch, stack_batches
from modes import Options
from modes import controlled_sample as _controlled_sample
from modes import evaluate as _evaluate
from modes import fid_stats as _fid_stats
from modes import make_figures as _make_figures
from modes import reflow as _reflow
from modes import sample as _sample
from modes import train as _train
from modes import train_classifier as _train_classifier
from modes import train_dequantizer as _train_dequantizer
from modes.controlled_sample import controlled_sample, guidance_labels
from modes.evaluate import checkpoint_index, describe_result, evaluate
from modes.fid_stats import fid_stats
from modes.make_figures import make_figures
from modes.reflow import reflow
from modes.sample import sample
from modes.train import train
from modes.train_classifier import load_classifier
from modes.train_classifier import train as train_classifier
from modes.train_dequantizer import load_dequantizer, train_dequantizer

Config = ml_collections.ConfigDict
ModeFn = Callable[[Config, str, Options], Any]


def _sample_or_control(config: Config, workdir: str, options: Options) -> Any:
  """``--mode sample``: samples, or controlled generation when one of its flags is given."""
  if options.controlled():
    return _controlled_sample.run(config, workdir, options)
  return _sample.run(config, workdir, options)


MODES: Dict[str, ModeFn] = {
    "train": _train.run,
    "eval": _evaluate.run,
    "sample": _sample_or_control,
    "figures": _make_figures.run,
    "fid_stats": _fid_stats.run,
    "train_classifier": _train_classifier.run,
    "reflow": _reflow.run,
    "train_dequantizer": _train_dequantizer.run,
}
"""``--mode`` -> ``run(config, workdir, options)`` of its module (:mod:`modes`)."""


def check(mode: str, options: Options) -> None:
  """One-line ``ValueError`` for an unknown mode or for controlled-generation options given to a
  mode other than ``sample``."""
  if mode not in MODES:
    raise ValueError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}.")
  if mode != "sample" and options.controlled():
    raise ValueError("--inpaint, --colorize, --class_label and the guidance flags belong to "
                     f"--mode sample, not --mode {mode}.")


def run(mode: str, config: Config, workdir: str, options: Options = Options()) -> Any:
  """Runs ``--mode mode`` after :func:`check`."""
  check(mode, options)
  return MODES[mode](config, workdir, options)


__all__ = ["INPAINT_REGIONS", "MODES", "Options", "check", "checkpoint_index", "controlled_sample",
           "describe_result", "evaluate", "fid_stats", "guidance_labels", "inpainting_mask",
           "load_classifier", "load_dequantizer", "make_figures", "model_batch", "reflow", "run",
           "sample", "sampler_tag", "stack_batches", "train", "train_classifier",
           "train_dequantizer"]
