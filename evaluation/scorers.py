"""How an evaluation scores samples: ``config.eval.sample_metrics`` -> a :class:`SampleScorer`.

Two feature spaces: the FID Inception network (:mod:`evaluation.inception`; FID, IS and KID
against reference statistics of the training split) for images, and the MNIST classifier
(:mod:`evaluation.mnist_classifier`; its Frechet distance, KID, class histogram and
Inception-Score analogue against the test split) for 28 x 28 MNIST. This module says which one a
config gets, where its weights and reference statistics come from (``eval.inception_weights`` or
``$SCORE_SDE_INCEPTION_WEIGHTS``, ``eval.fid_stats`` or the cache that ``--mode fid_stats``
fills) and what they were computed with, so that statistics of other weights or data are never
used; and, for guided samples, which classifier checks their classes
(:func:`build_class_predictor`). Like ``builders``, it reads the config; the statistics
themselves take arrays (:mod:`evaluation.statistics`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import datasets
import exact_scores
import sde_lib
from evaluation import eval_cache
from evaluation import inception
from evaluation import mnist_classifier
from evaluation import statistics
from infra import outputs
from infra.devices import Devices, batch_apply

Config = ml_collections.ConfigDict

SAMPLE_METRICS = ("auto", "inception", "mnist_classifier", "none")
ENV_INCEPTION_WEIGHTS = "SCORE_SDE_INCEPTION_WEIGHTS"


class SampleScorer(NamedTuple):
  """How an evaluation scores image samples (``eval.sample_metrics``).

  Attributes:
    name: ``'inception'`` or ``'mnist_classifier'``; also the name of the cached feature pieces.
    feature_fn: ``batch -> (features: [n, F], logits: [n, K])`` of a process-local batch
      ``{'image': [local_B, H, W, C] in [0, 1], 'mask': [local_B]}``, padding rows dropped
      (``statistics.reference_statistics``' ``feature_fn``).
    metrics: ``(features, logits) -> {name: value}`` against the reference statistics.
    settings: what the features depend on besides the samples (the network's weights), for
      ``eval_cache``.
  """
  name: str
  feature_fn: Callable[[Any], Tuple[Any, Any]]
  metrics: Callable[[Any, Any], dict]
  settings: dict


def _sample_metrics_kind(config: Config) -> str:
  kind = str(config.eval.sample_metrics).lower()
  if kind not in SAMPLE_METRICS:
    raise ValueError(f"eval.sample_metrics = {config.eval.sample_metrics!r}; choose one of "
                     f"{', '.join(SAMPLE_METRICS)}.")
  if kind == "auto" and not datasets.is_vector_data(config):
    return "mnist_classifier" if _is_mnist(config) else "inception"
  return "none" if kind == "auto" else kind


def _is_mnist(config: Config) -> bool:
  """Whether the data are 28 x 28 MNIST digits (what the MNIST classifier reads)."""
  return (not datasets.is_vector_data(config) and str(config.data.dataset).lower() == "mnist"
          and datasets.input_shape(config)[1:] == (28, 28, 1))


def inception_weights_path(config: Config) -> str:
  """``eval.inception_weights``, else ``$SCORE_SDE_INCEPTION_WEIGHTS``; "" when neither is set."""
  return str(config.eval.inception_weights or os.environ.get(ENV_INCEPTION_WEIGHTS, ""))


def fid_stats_path(config: Config) -> str:
  """``eval.fid_stats``, else the cache's ``fid_stats/<dataset>_<H>x<W>x<C>_train.npz`` that
  ``--mode fid_stats`` writes."""
  if config.eval.fid_stats:
    return str(config.eval.fid_stats)
  _, h, w, c = datasets.input_shape(config)
  return os.path.join(outputs.cache_root(), "fid_stats",
                      f"{str(config.data.dataset).lower()}_{h}x{w}x{c}_train.npz")


def file_digest(path: str) -> str:
  """SHA-256 of a file's bytes (first 16 hex digits): which weights a cached result used."""
  sha = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      sha.update(block)
  return sha.hexdigest()[:16]


def _chunked(feature_fn, chunk: int):
  """``feature_fn`` over a local batch in pieces of at most ``chunk`` rows (memory: the
  Inception network holds 299 x 299 activations per image)."""

  def chunked(batch):
    n = len(batch["image"])
    mask = batch.get("mask", np.ones(n, np.float32))
    parts = [feature_fn({"image": batch["image"][i:i + chunk], "mask": mask[i:i + chunk]})
             for i in range(0, n, chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  return chunked


def build_inception_features(config: Config, devices: Devices) -> Tuple[Callable, dict]:
  """The Inception ``feature_fn`` (chunks of ``eval.inception_batch_size``) and its settings.

  Raises:
    ValueError: in one line saying how to configure the weights, when none are configured.
  """
  weights = inception_weights_path(config)
  if not weights:
    raise ValueError(
        "no Inception weights configured: download pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth and pass --config.eval.inception_weights=PATH (or "
        f"set {ENV_INCEPTION_WEIGHTS}); without torch, convert it once where torch is installed: "
        f"{inception.COMMAND} --convert PATH --out inception_fid.npz")
  chunk = devices.round_batch(int(config.eval.inception_batch_size))
  feature_fn = inception.make_feature_fn(inception.load_inception(weights), devices)
  return _chunked(feature_fn, chunk), {"metrics.inception_weights": file_digest(weights)}


def build_sample_scorer(config: Config, devices: Devices) -> Tuple[Optional[SampleScorer], str]:
  """``(scorer, "")``, or ``(None, why)`` with one line saying why samples get no quality
  numbers and how to get them (never an exception for a missing optional file).

  ``eval.sample_metrics``: ``'inception'`` (FID / IS / KID against :func:`fid_stats_path`, with
  ``eval.is_splits``, ``kid_subsets``, ``kid_subset_size``), ``'mnist_classifier'`` (the MNIST
  classifier's Frechet distance, KID, class histogram and Inception-Score analogue against the
  test split; the classifier is trained on first use, ``eval.mnist_classifier`` or the cache),
  ``'auto'`` (the classifier for 28 x 28 MNIST, Inception for other images, nothing for
  vectors) or ``'none'``.
  """
  ev = config.eval
  kind = _sample_metrics_kind(config)
  if kind == "none":
    return None, ""
  kid = dict(kid_subsets=int(ev.kid_subsets), kid_subset_size=int(ev.kid_subset_size),
             seed=int(config.seed))
  if kind == "mnist_classifier":
    # Several processes would each train and write the same file: only a single one trains.
    try:
      trained = mnist_classifier.load_or_train(
          str(ev.mnist_classifier), lambda split: datasets.load_split(config, split),
          train_if_missing=jax.process_count() == 1)
    except FileNotFoundError as e:
      return None, f"MNIST sample metrics not computed: {e}"
    params = trained.params
    test = datasets.load_split(config, "test").images
    reference = mnist_classifier.reference_statistics(params, test)
    feature_fn = batch_apply(mnist_classifier.features_and_logits, params, devices)
    return SampleScorer(
        kind, feature_fn,
        lambda f, l: mnist_classifier.metrics_from_features(
            f, l, reference, num_splits=_splits(ev, l), **kid),
        {"metrics.mnist_classifier": eval_cache.tree_digest(params)}), ""
  try:
    feature_fn, settings = build_inception_features(config, devices)
  except ValueError as e:
    return None, f"FID/IS/KID not computed: {e}"
  stats_path = fid_stats_path(config)
  if not os.path.isfile(stats_path):
    return None, (f"FID/IS/KID not computed: no reference statistics at {stats_path}; compute "
                  "them once with --mode fid_stats (same --config), or pass the authors' "
                  "--config.eval.fid_stats=cifar10_stats.npz")
  reference = statistics.load_statistics(stats_path)
  recorded = reference_settings(stats_path)
  if recorded is not None and recorded != reference_settings_of(config, settings):
    changed = eval_cache.differences(recorded, reference_settings_of(config, settings))
    return None, (f"FID/IS/KID not computed: the reference statistics {stats_path} were computed "
                  f"with other settings ({'; '.join(changed)}); recompute them with --mode "
                  "fid_stats")
  return SampleScorer(
      kind, feature_fn,
      lambda f, l: statistics.inception_metrics(f, l, reference, num_splits=_splits(ev, l),
                                                **kid),
      settings), ""


def build_class_predictor(config: Config) -> Tuple[Optional[Callable[[np.ndarray], np.ndarray]],
                                                   str]:
  """``(predict, "")`` with ``predict(x: [N, ...] in data space) -> int [N]``, the class a
  classifier of the data sees in each example, or ``(None, why)``: what a guided sample of class
  ``k`` is checked against. It exists for 28 x 28 MNIST (the MNIST classifier of
  ``eval.mnist_classifier`` or the cache, 99.3 % test accuracy; trained on first use; images
  read at their 8-bit levels) and for the toy mixtures (the exact posterior over components,
  which are the toys' classes). ``eval.sample_metrics = 'none'`` turns the check off."""
  if _sample_metrics_kind(config) == "none" and not datasets.is_vector_data(config):
    return None, "classes of the samples not checked (eval.sample_metrics = 'none')"
  if datasets.is_vector_data(config):
    if str(config.data.dataset).lower() not in exact_scores.MIXTURE_TOYS:
      return None, ("no classifier to check the samples' classes (MNIST and the toys "
                    f"{', '.join(exact_scores.MIXTURE_TOYS)})")
    # At t = 0 the VP marginal is the data: the exact classifier of the mixture's components.
    log_posterior = exact_scores.gaussian_mixture_log_posterior(
        sde_lib.VPSDE(), *exact_scores.toy_mixture(config.data.dataset))
    return (lambda x: np.argmax(np.asarray(log_posterior(jnp.asarray(x), jnp.zeros(len(x)))),
                                axis=-1).astype(np.int32)), ""
  if not _is_mnist(config):
    return None, "no classifier to check the samples' classes (MNIST and the mixture toys)"
  try:
    trained = mnist_classifier.load_or_train(
        str(config.eval.mnist_classifier), lambda split: datasets.load_split(config, split),
        train_if_missing=jax.process_count() == 1)
  except FileNotFoundError as e:
    return None, f"classes of the samples not checked: {e}"

  def predict(images: np.ndarray) -> np.ndarray:
    images = np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0  # what the PNGs hold
    _, logits = mnist_classifier.batched_features_and_logits(trained.params, images)
    return np.argmax(logits, axis=-1).astype(np.int32)

  return predict, ""


def _splits(ev: Config, logits) -> int:
  """``eval.is_splits``, at most one split per sample (a short evaluation still gets a score)."""
  return max(1, min(int(ev.is_splits), len(logits)))


def reference_settings_of(config: Config, inception_settings: dict) -> dict:
  """What FID reference statistics depend on: the data set, its split and image size, how the
  images were fitted, and the Inception weights."""
  data = config.data
  return eval_cache.canonical({
      "data.dataset": str(data.dataset).lower(), "data.source": str(data.get("source", "")),
      "data.image_size": int(data.image_size), "data.num_channels": int(data.num_channels),
      "split": "train", **inception_settings})


def reference_settings(stats_path: str) -> Optional[dict]:
  """The settings ``--mode fid_stats`` recorded beside ``stats_path`` (None for a file it did
  not write, such as the authors' ``cifar10_stats.npz``)."""
  info = os.path.splitext(stats_path)[0] + ".json"
  return outputs.load_json(info) if os.path.isfile(info) else None
