"""A small MNIST classifier trained by this project, and the sample metrics in its feature space.

Inception features describe 28 x 28 digits poorly, and MNIST has no agreed sample metric, so
samples of MNIST models are scored with a classifier the project trains itself, offline:

* the network (:class:`MnistClassifier`): two 3 x 3 convolutions with 2 x 2 max pooling, a
  :data:`FEATURE_DIM`-wide dense layer whose layer-normalised pre-activations are the feature
  space (each feature vector has zero mean and unit variance over its entries), and a 10-way
  head on their ReLU. Input ``x: [B, 28, 28, 1]`` in [0, 1] (the data's ``v / 255``; samples
  are clipped to it).
* training (:func:`train`): Adam with a cosine-decayed learning rate on the 60,000 training
  images, in epochs of a fixed random order drawn from an explicit PRNG key; the test accuracy
  is measured on all 10,000 test images.
* the cache (:func:`load_or_train`): the parameters as Flax msgpack at :func:`default_path`,
  ``$SCORE_SDE_CACHE/mnist_classifier_v<VERSION>.msgpack``, else
  ``~/.cache/score-sde-jax/mnist_classifier_v<VERSION>.msgpack``, with a ``.json`` beside it
  holding the test accuracy and the training settings. Missing, it is trained on first use (several
  minutes on a CPU; the console says so) or, when training is not allowed, a one-line error
  names the command that trains it: ``python -m mnist_classifier [--data_dir D] [--out PATH]
  [--steps N]``. :data:`VERSION` changes with the architecture or training, so an old file is
  never read as a new one.
* metrics (:func:`mnist_metrics`): for sample images against :class:`ReferenceStatistics` of the
  test set, the Frechet distance and KID of the features, the class histogram of the samples'
  predicted labels and its KL divergence from uniform (mode coverage), and the Inception Score
  analogue ``exp E_x KL(p(y|x) || p(y))`` of the classifier's probabilities, each with the number
  of samples it used. The statistics themselves are ``evaluation``'s. Use the whole test set as
  the reference: its first and second 5,000 images come from different writers, and the Frechet
  distance between those halves is about as large as that of a blurred test set.

MNIST is read with the project's numpy readers (``readers.load_idx``), from ``--data_dir`` or,
when none is given, where :func:`lookup.locate` finds the IDX files (``$SCORE_SDE_DATA_DIR``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import evaluation
from datasets import lookup
from datasets import readers
from infra import logs
from infra import outputs

Array = jax.Array
Params = Any
SplitLoader = Callable[[str], readers.SplitData]
"""``load_split(split) -> SplitData``, ``split`` being ``'train'`` or ``'test'``."""

VERSION = 1
ENV_CACHE = outputs.ENV_CACHE
FEATURE_DIM = 128
NUM_CLASSES = 10
COMMAND = "python -m mnist_classifier"
# The shipped command's budget: about 4.3 epochs at batch 128.
DEFAULT_STEPS = 2000
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 2e-3
# Images per jitted call when computing features; the last chunk is padded to it (one compile).
EVAL_BATCH_SIZE = 500


class MnistClassifier(nn.Module):
  """``x: [B, 28, 28, 1]`` in [0, 1] -> ``(features [B, FEATURE_DIM], logits [B, 10])``."""
  channels: Tuple[int, int] = (32, 64)
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    h = x.astype(jnp.float32) * 2.0 - 1.0
    for width in self.channels:
      h = nn.relu(nn.Conv(width, (3, 3))(h))
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    # Features: the dense layer's pre-activations (a ReLU output has dead units, whose covariance
    # is singular), layer-normalised without a learned scale, so each has ``|f|^2 = dim``: Frechet
    # distances are in fixed units and KID's kernel ``(f.g / dim + 1)^3`` sees ``|f.g| <= dim``.
    h = nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1))
    features = nn.LayerNorm(use_bias=False, use_scale=False)(h)
    logits = nn.Dense(NUM_CLASSES)(nn.relu(features))
    return features, logits


_MODEL = MnistClassifier()


class TrainedClassifier(NamedTuple):
  """Parameters and what is known of them.

  Attributes:
    params: the :class:`MnistClassifier` parameters (a plain dict).
    info: ``test_accuracy`` in [0, 1], ``steps``, ``batch_size``, ``learning_rate``,
      ``train_seconds``, ``num_train``, ``num_test``, ``version``, and ``seed`` where
      :func:`train_and_save` trained it.
  """
  params: Params
  info: Dict[str, Any]


class ReferenceStatistics(NamedTuple):
  """The reference set's features, as the metrics need them.

  Attributes:
    mu: float64 ``[FEATURE_DIM]``, the features' mean.
    sigma: float64 ``[FEATURE_DIM, FEATURE_DIM]``, their covariance.
    features: float32 ``[M, FEATURE_DIM]``, for KID.
  """
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray


def init_params(rng: Array) -> Params:
  """Freshly initialised :class:`MnistClassifier` parameters."""
  return _MODEL.init(rng, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


@jax.jit
def features_and_logits(params: Params, images: Array) -> Tuple[Array, Array]:
  """``images: [B, 28, 28, 1]`` in [0, 1] (clipped to it) -> features ``[B, FEATURE_DIM]``,
  logits ``[B, 10]`` (float32); jitted, so one batch shape compiles once."""
  return _MODEL.apply({"params": params}, jnp.clip(images, 0.0, 1.0))


def batched_features_and_logits(params: Params, images: np.ndarray,
                                batch_size: int = EVAL_BATCH_SIZE) -> Tuple[np.ndarray, np.ndarray]:
  """:func:`features_and_logits` over ``images: [N, 28, 28, 1]`` in [0, 1] (or uint8 0..255), in
  chunks of ``batch_size`` on the default device; returns float32 numpy ``[N, FEATURE_DIM]`` and
  ``[N, 10]``."""
  images = _as_unit_float(images)
  feats, logits = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.zeros((batch_size,) + chunk.shape[1:], chunk.dtype)
    padded[:len(chunk)] = chunk
    f, l = features_and_logits(params, padded)
    feats.append(np.asarray(f)[:len(chunk)])
    logits.append(np.asarray(l)[:len(chunk)])
  return (np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM), np.float32),
          np.concatenate(logits) if logits else np.zeros((0, NUM_CLASSES), np.float32))


def _as_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> ``v / 255``; float images as they are. Checks the ``[N, 28, 28, 1]`` shape."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
    raise ValueError(f"the MNIST classifier takes images [N, 28, 28, 1], got {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Training.


def _loss(params: Params, images: Array, labels: Array) -> Array:
  _, logits = _MODEL.apply({"params": params}, images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _train_step(optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
                images: Array, labels: Array) -> Tuple[Params, Any, Array]:
  """One Adam step on uint8 ``images: [B, 28, 28, 1]``, ``labels: [B]``; returns the loss too."""
  loss, grads = jax.value_and_grad(_loss)(params, images.astype(jnp.float32) / 255.0, labels)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def accuracy(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of ``images: [N, 28, 28, 1]`` whose predicted class equals ``labels: [N]``."""
  _, logits = batched_features_and_logits(params, images)
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def _batch_indices(rng: Array, num_examples: int, batch_size: int, steps: int) -> np.ndarray:
  """``[steps, batch_size]`` example indices: epochs of a random order, one key per epoch; the
  remainder of an epoch that does not fill a batch is dropped."""
  per_epoch = num_examples // batch_size
  epochs = -(-steps // per_epoch)
  orders = [np.asarray(jax.random.permutation(k, num_examples))[:per_epoch * batch_size]
            for k in jax.random.split(rng, epochs)]
  return np.concatenate(orders).reshape(-1, batch_size)[:steps]


def train(rng: Array, train_data: readers.SplitData, test_data: readers.SplitData, *,
          steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
          learning_rate: float = DEFAULT_LEARNING_RATE) -> TrainedClassifier:
  """Trains a fresh classifier and measures its test accuracy.

  Args:
    rng: the key for the initialisation and the order of the examples.
    train_data, test_data: uint8 images ``[N, 28, 28, 1]`` with int labels ``[N]``.
    steps: Adam steps; the learning rate decays from ``learning_rate`` to 0 on a cosine.
    batch_size: examples per step (at most the number of training examples).

  Returns:
    the :class:`TrainedClassifier`; its ``info`` records the settings, all but the key.
  """
  if steps < 1 or not 1 <= batch_size <= len(train_data.images):
    raise ValueError(f"need steps >= 1 and 1 <= batch_size <= {len(train_data.images)}, got "
                     f"steps={steps}, batch_size={batch_size}")
  init_rng, order_rng = jax.random.split(rng)
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  params = init_params(init_rng)
  opt_state = optimizer.init(params)
  indices = _batch_indices(order_rng, len(train_data.images), batch_size, steps)
  images, labels = train_data.images, train_data.labels.astype(np.int32)
  start = time.monotonic()
  progress = logs.Progress("mnist classifier", steps)
  try:
    for step, batch in enumerate(indices, 1):
      params, opt_state, loss = _train_step(optimizer, params, opt_state, images[batch],
                                            labels[batch])
      if step % 50 == 0:  # reading the loss waits for the step; not every one
        progress.update(loss=f"{float(loss):.3f}")
      else:
        progress.update()
      if step % 500 == 0 or step == steps:
        progress.report("MNIST classifier step %d: loss %.4f", step, float(loss))
  finally:
    progress.close()
  train_seconds = time.monotonic() - start
  test_accuracy = accuracy(params, test_data.images, test_data.labels)
  info = {"version": VERSION, "test_accuracy": test_accuracy, "steps": steps,
          "batch_size": batch_size, "learning_rate": learning_rate,
          "train_seconds": round(train_seconds, 1), "num_train": len(images),
          "num_test": len(test_data.images)}
  return TrainedClassifier(params, info)


# ------------------------------------------------------------------------------------------------
# The cache.


def default_path() -> str:
  """``mnist_classifier_v<VERSION>.msgpack`` in :func:`outputs.cache_root`
  (``$SCORE_SDE_CACHE``, else ``~/.cache/score-sde-jax``)."""
  return os.path.join(outputs.cache_root(), f"mnist_classifier_v{VERSION}.msgpack")


def info_path(path: str) -> str:
  """The JSON file beside the parameters at ``path`` holding their accuracy and settings."""
  return os.path.splitext(path)[0] + ".json"


def save(path: str, classifier: TrainedClassifier) -> None:
  """Writes the parameters (msgpack) and, first, their info (JSON) atomically."""
  outputs.save_json(info_path(path), classifier.info)
  outputs.atomic_write_bytes(path, flax.serialization.to_bytes(classifier.params))


def load(path: str) -> TrainedClassifier:
  """Reads what :func:`save` wrote.

  Raises:
    FileNotFoundError: in one line naming the command that trains it, if ``path`` is absent.
    ValueError: naming the file, if it does not hold this version's parameters.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no MNIST classifier at {path}; train it once (several minutes on a "
                            f"CPU) with: {_command(path)}")
  target = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  with open(path, "rb") as f:
    data = f.read()
  retrain = f"train it again with: {_command(path)}"
  try:
    state = flax.serialization.msgpack_restore(data)
    params = flax.serialization.from_state_dict(target, state)
  except Exception as e:  # noqa: BLE001 -- any decoding failure means the same to the user
    raise ValueError(f"{path} does not hold MNIST classifier parameters ({type(e).__name__}: "
                     f"{e}); {retrain}") from e
  # from_state_dict checks the names, not the shapes.
  wanted = jax.tree_util.tree_map(lambda a: a.shape, target)
  if jax.tree_util.tree_map(np.shape, params) != wanted:
    raise ValueError(f"{path} holds parameters of another MNIST classifier architecture; "
                     f"{retrain}")
  info_file = info_path(path)
  info = outputs.load_json(info_file) if os.path.isfile(info_file) else {}
  return TrainedClassifier(jax.tree_util.tree_map(jnp.asarray, params), info)


def _command(path: str) -> str:
  return COMMAND if path == default_path() else f"{COMMAND} --out {path}"


def load_mnist(data_dir: str, split: str) -> readers.SplitData:
  """The uint8 MNIST ``split`` from ``data_dir`` or, if empty, where :mod:`datasets.lookup` finds
  the IDX files (``$SCORE_SDE_DATA_DIR``)."""
  if not data_dir:
    data_dir = lookup.locate("mnist", "idx", "", "idx").path
  return readers.load_idx(data_dir, split)


def train_and_save(path: str, load_split: Optional[SplitLoader] = None, *, seed: int = 0,
                   steps: int = DEFAULT_STEPS) -> TrainedClassifier:
  """Trains on real MNIST, logs the test accuracy and saves to ``path``.

  Args:
    load_split: ``split ('train' | 'test') -> SplitData`` of uint8 ``[N, 28, 28, 1]`` images;
      default: :func:`load_mnist` of the IDX files :mod:`datasets.lookup` finds.
  """
  load_split = load_split or functools.partial(load_mnist, "")
  train_data, test_data = load_split("train"), load_split("test")
  classifier = train(jax.random.PRNGKey(seed), train_data, test_data, steps=steps)
  classifier.info["seed"] = seed  # the key train() was given
  save(path, classifier)
  logging.info("MNIST classifier: test accuracy %.2f %% after %d steps (%.0f s); saved to %s",
               100 * classifier.info["test_accuracy"], steps, classifier.info["train_seconds"],
               path)
  return classifier


def load_or_train(path: str = "", load_split: Optional[SplitLoader] = None, *,
                  train_if_missing: bool = True, steps: int = DEFAULT_STEPS) -> TrainedClassifier:
  """The cached classifier at ``path`` (default :func:`default_path`); trained for ``steps`` on
  ``load_split``'s data (see :func:`train_and_save`) and saved there first when missing and
  ``train_if_missing`` (the console says so), else FileNotFoundError naming the command."""
  path = path or default_path()
  if not os.path.isfile(path) and train_if_missing:
    logging.info("MNIST classifier not found at %s: training it now (several minutes on a CPU; "
                 "`%s` does it ahead of time)", path, _command(path))
    return train_and_save(path, load_split, steps=steps)
  return load(path)


# ------------------------------------------------------------------------------------------------
# Metrics.


def reference_statistics(params: Params, images: np.ndarray) -> ReferenceStatistics:
  """The features' mean, covariance and values for reference ``images: [M, 28, 28, 1]``."""
  features, _ = batched_features_and_logits(params, images)
  return statistics_of_features(features)


def statistics_of_features(features: np.ndarray) -> ReferenceStatistics:
  """:class:`ReferenceStatistics` of given ``features: [M, FEATURE_DIM]``."""
  mu, sigma = evaluation.feature_statistics(features)
  return ReferenceStatistics(np.asarray(mu, np.float64), np.asarray(sigma, np.float64),
                             np.asarray(features, np.float32))


def class_histogram(logits: np.ndarray) -> np.ndarray:
  """The fraction of ``logits: [N, 10]`` rows predicting each class: float64 ``[10]``."""
  counts = np.bincount(np.argmax(logits, axis=1), minlength=NUM_CLASSES)
  return counts / max(len(logits), 1)


def kl_from_uniform(histogram: np.ndarray) -> float:
  """``KL(p || uniform) = sum_k p_k log(K p_k)`` in nats (0 log 0 = 0): 0 when every class is
  equally frequent, ``log K`` when one class takes all."""
  p = np.asarray(histogram, np.float64)
  nonzero = p > 0
  return float(np.sum(p[nonzero] * np.log(len(p) * p[nonzero])))


def metrics_from_features(features: np.ndarray, logits: np.ndarray,
                          reference: ReferenceStatistics, *, num_splits: int = 10,
                          kid_subsets: int = 100, kid_subset_size: int = 1000,
                          seed: int = 0) -> Dict[str, Any]:
  """The metrics of samples whose classifier outputs are ``features: [N, FEATURE_DIM]`` and
  ``logits: [N, 10]``; see :func:`mnist_metrics`."""
  features = np.asarray(features, np.float32)
  n = len(features)
  mu, sigma = evaluation.feature_statistics(features)
  fd = evaluation.frechet_distance(mu, sigma, reference.mu, reference.sigma)
  subset_size = min(kid_subset_size, n, len(reference.features))
  kid, kid_std = evaluation.kernel_inception_distance(
      features, reference.features, num_subsets=kid_subsets, subset_size=subset_size, seed=seed)
  score, score_std = evaluation.inception_score(logits, num_splits=num_splits)
  histogram = class_histogram(logits)
  return {"mnist_fd": float(fd), "mnist_kid": float(kid), "mnist_kid_std": float(kid_std),
          "mnist_kid_subset_size": subset_size, "mnist_is": float(score),
          "mnist_is_std": float(score_std), "mnist_class_histogram": histogram.tolist(),
          "mnist_class_kl_from_uniform": kl_from_uniform(histogram), "mnist_num_samples": n,
          "mnist_num_reference": len(reference.features)}


def mnist_metrics(params: Params, images: np.ndarray, reference: ReferenceStatistics,
                  **kwargs: Any) -> Dict[str, Any]:
  """Sample metrics of ``images: [N, 28, 28, 1]`` in [0, 1] against ``reference`` (the test set's).

  Returns a dict of:

  * ``mnist_fd``: the Frechet distance of the features' Gaussians (``evaluation.frechet_distance``).
  * ``mnist_kid``, ``mnist_kid_std``: KID (unbiased, cubic polynomial kernel) over
    ``kid_subsets`` subsets of ``mnist_kid_subset_size`` (``kid_subset_size``, at most N and M).
  * ``mnist_is``, ``mnist_is_std``: ``exp E_x KL(p(y|x) || p(y))`` of the softmax of the logits,
    over ``num_splits`` splits; 10 at most, near it for sharp and balanced predictions.
  * ``mnist_class_histogram``: the fraction of samples predicted as each digit 0..9;
    ``mnist_class_kl_from_uniform``: its KL divergence from uniform in nats (0 .. log 10).
  * ``mnist_num_samples`` (N) and ``mnist_num_reference`` (M).

  ``kwargs`` (``num_splits``, ``kid_subsets``, ``kid_subset_size``, ``seed``) go to
  :func:`metrics_from_features`. FD is biased upwards at finite N (KID is not): compare FDs
  computed from equal N.
  """
  features, logits = batched_features_and_logits(params, images)
  return metrics_from_features(features, logits, reference, **kwargs)
