"""``--mode fid_stats``: the FID reference statistics of a config's training split, computed
once (:func:`fid_stats`); ``--mode eval`` reads them (:mod:`evaluation.scorers`)."""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections

import datasets
import evaluation
from evaluation import eval_cache
from evaluation import scorers
from infra import outputs
from infra.devices import Devices
from modes import Options

Config = ml_collections.ConfigDict


def fid_stats(config: Config, workdir: str) -> str:
  """Computes the FID reference statistics of the config's training split; returns their path.

  Every training image once, in stored order, without augmentation or dequantization, through
  the Inception network ``eval.inception_weights`` configures: the features' mean and
  covariance and the ``pool_3`` activations KID needs, written to
  ``evaluation.scorers.fid_stats_path``
  (``eval.fid_stats``, else the cache) with the settings they depend on in a ``.json`` beside
  them, which evaluation checks. Features are cached per batch under ``<workdir>/fid_stats``,
  so an interrupted run resumes.

  Raises:
    ValueError: in one line, when no Inception weights are configured or the data are vectors.
  """
  if datasets.is_vector_data(config):
    raise ValueError("--mode fid_stats: FID statistics are for images; this config's data are "
                     f"vectors (data.dim = {config.data.dim}).")
  devices = Devices()
  feature_fn, inception_settings = scorers.build_inception_features(config, devices)
  path = scorers.fid_stats_path(config)
  outputs.check_writable(os.path.dirname(os.path.abspath(path)))
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.data.random_flip, plain.data.uniform_dequantization = False, False
  batch_size = devices.round_batch(int(config.eval.batch_size))
  batches = datasets.get_dataset(plain, split="train", batch_size=batch_size, train=False,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  settings = scorers.reference_settings_of(config, inception_settings)
  logging.info("FID reference statistics of %s's training split (%d examples, batches of %d) "
               "into %s.", config.data.dataset, datasets.num_examples(plain, "train"), batch_size,
               path)
  start = time.monotonic()
  stats = evaluation.reference_statistics(
      feature_fn, batches, cache=eval_cache.EvalCache(os.path.join(workdir, "fid_stats")),
      settings={**settings, "eval.batch_size": batch_size}, name="train")
  if jax.process_index() == 0:
    evaluation.save_statistics(path, {k: stats[k] for k in ("mu", "sigma", "pool_3")})
    outputs.save_json(os.path.splitext(path)[0] + ".json", settings)
  logging.info("%d images in %.0f s: %s", len(stats["pool_3"]), time.monotonic() - start, path)
  return path


def run(config: Config, workdir: str, options: Options) -> str:
  """``--mode fid_stats``."""
  del options  # nothing to choose
  return fid_stats(config, workdir)
